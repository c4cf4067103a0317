//! Small-batch GEMV with fused epilogues (kernels/cuda/gemv.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use half::bf16;

use crate::KernelError;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::{GemvDims, GemvEpilogue};

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

/// `out = x · wᵀ` (or the SiLU·mul of a fused gate|up product) for ≤ 8 rows of `x`.
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

/// Weight-row pairs per block (4 warps, one pair per warp).
const PAIRS_PER_BLOCK: usize = 4;

impl Kernels {
    /// Launches `tf_gemv_{bf16,f32,silu}_t{t}`: grid ⌈pairs / 4⌉, block 128.
    pub fn gemv<O: GemvOut>(&self, stream: &CudaStream, mut a: GemvArgs<'_, O>) -> Result<(), KernelError> {
        const OP: &str = "gemv";
        self.check_stream(OP, stream)?;
        let d = a.dims;
        d.check(a.x.len(), a.w.len(), a.out.len(), O::BYTES)?;
        check_aligned16(OP, "x", &a.x, stream)?;
        check_aligned16(OP, "w", &a.w, stream)?;
        if d.epilogue == GemvEpilogue::Bf16 {
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
        let pairs = d.n / 2;
        let k = to_i32(OP, "k", d.k)?;
        let pairs_i = to_i32(OP, "pairs", pairs)?;
        let out_cols = to_i32(OP, "out columns", d.out_cols())?;
        let grid = (to_u32(OP, "blocks", pairs.div_ceil(PAIRS_PER_BLOCK))?, 1, 1);
        let mut b = stream.launch_builder(&self.f.gemv[mode][d.t - 1]);
        b.arg(&a.x).arg(&a.w).arg(&k).arg(&pairs_i).arg(&out_cols).arg(&mut a.out);
        // SAFETY: matches tf_gemv_*_t{t}(const bf16*, const bf16*, int, int, int, void*) with
        // t = d.t (checked 1..=8). Host checks: x ≥ t·k, w ≥ n·k, out ≥ t·out_cols elements of
        // the epilogue's type; k % 8 == 0 and 16-byte aligned x and w for the 16-byte loads
        // (every row then starts aligned); n even, so the last warp's pair exists.
        unsafe { b.launch(cfg(grid, 128)) }.map(|_| ()).map_err(drv(OP))
    }
}
