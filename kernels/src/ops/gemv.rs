//! Small-batch GEMV with fused epilogues: row pairs on the CUDA cores (kernels/cuda/gemv.cu)
//! or 16-row tiles on the tensor cores (kernels/cuda/gemv_mma.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::{GemvDims, GemvEpilogue, GemvKernel, gemv_prefetch_row_bytes};

/// Output element types of the GEMV.
pub trait GemvOut: DeviceRepr {
    const BYTES: usize;
}

impl GemvOut for bf16 {
    const BYTES: usize = 2;
}

impl GemvOut for f32 {
    const BYTES: usize = 4;
}

/// `out = x · wᵀ` (or the SiLU·mul of a fused gate|up product) for a few rows of `x`.
#[derive(Debug)]
pub struct GemvArgs<'a, O> {
    pub dims: GemvDims,
    /// `[t, k]` bf16, 16-byte aligned.
    pub x: CudaView<'a, bf16>,
    /// `[n, k]` bf16 row-major (a Llama projection weight), 16-byte aligned.
    pub w: CudaView<'a, bf16>,
    /// `[t, out_cols]`: bf16 for `Bf16` / `SiluMul`, f32 for `F32`.
    pub out: CudaViewMut<'a, O>,
}

impl Kernels {
    /// Launches `tf_gemv_{bf16,f32,silu}_t{t}` (grid ⌈(n/2) / 4⌉, block 128) or
    /// `tf_gemv_mma_{bf16,f32,silu}_t{t}` (grid n / 16, block 256), as `dims.kernel` says.
    pub fn gemv<O: GemvOut>(&self, stream: &CudaStream, mut a: GemvArgs<'_, O>) -> Result<(), KernelError> {
        const OP: &str = "gemv";
        self.check_stream(OP, stream)?;
        let d = a.dims;
        d.check(a.x.len(), a.w.len(), a.out.len(), O::BYTES)?;
        check_aligned16(OP, "x", &a.x, stream)?;
        check_aligned16(OP, "w", &a.w, stream)?;
        if d.epilogue == GemvEpilogue::Bf16 && d.kernel == GemvKernel::RowPairs {
            // Pairs of adjacent bf16 outputs are stored as one 4-byte word.
            let (ptr, _r) = cudarc::driver::DevicePtr::device_ptr(&a.out, stream);
            if ptr % 4 != 0 {
                return Err(KernelError::arg(OP, "out is not 4-byte aligned"));
            }
        }
        let mode = match d.epilogue {
            GemvEpilogue::Bf16 => 0,
            GemvEpilogue::F32 => 1,
            GemvEpilogue::SiluMul => 2,
        };
        let k = to_i32(OP, "k", d.k)?;
        let out_cols = to_i32(OP, "out columns", d.out_cols())?;
        // Blocks of 4 warps × a row pair, or of 8 warps on one 16-row tile.
        let blocks = d.n.div_ceil(d.kernel.rows_per_block());
        let (func, threads, units) = match d.kernel {
            GemvKernel::RowPairs => (&self.f.gemv[mode][d.t - 1], 128, d.n / 2),
            GemvKernel::Mma => (&self.f.gemv_mma[mode][d.t - 1], 256, d.n / 16),
        };
        let units = to_i32(OP, "weight row groups", units)?;
        let prefetch = to_i32(OP, "prefetch bytes", gemv_prefetch_row_bytes(self.gemv_prefetch(), d.kernel, d.n, d.k, self.num_sms()))?;
        let grid = (to_u32(OP, "blocks", blocks)?, 1, 1);
        let mut b = self.launch(stream, func);
        b.arg(&a.x).arg(&a.w).arg(&k).arg(&units).arg(&out_cols).arg(&mut a.out).arg(&prefetch);
        // SAFETY: both kernel families take (const bf16* x, const bf16* w, int k, int units,
        // int out_cols, void* out, int prefetch_bytes) with t = d.t, checked within the
        // family's 1..=max_rows; prefetch_bytes ≤ 2k, a multiple of 16, so each row's
        // prefetch stays inside its (16-byte aligned) row.
        // Host checks: x ≥ t·k, w ≥ n·k, out ≥ t·out_cols elements of the epilogue's type;
        // k % 8 == 0 and 16-byte aligned x and w for the 16-byte loads (every row then starts
        // aligned); n a multiple of the family's row group (a pair, or a 16-row tile), so
        // every row a block reads exists. `units` is pairs (n/2) or tiles (n/16), matching
        // the grid above.
        unsafe { b.launch(cfg(grid, threads)) }.map_err(drv(OP))
    }
}
