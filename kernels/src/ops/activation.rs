//! SiLU(gate) · up (kernels/cuda/silu_mul.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::SiluDims;

/// `out[t, i] = silu(gate_up[t, i]) · gate_up[t, inter + i]`.
#[derive(Debug)]
pub struct SiluMulArgs<'a> {
    pub dims: SiluDims,
    /// `[tokens, 2·inter]` bf16: gate columns first, then up (a fused gate|up GEMM).
    pub gate_up: CudaView<'a, bf16>,
    /// `[tokens, inter]` bf16
    pub out: CudaViewMut<'a, bf16>,
}

impl Kernels {
    /// Launches `tf_silu_mul`: grid (⌈inter/8/256⌉, tokens), block 256.
    pub fn silu_mul(&self, stream: &CudaStream, mut a: SiluMulArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "silu_mul";
        self.check_stream(OP, stream)?;
        a.dims.check(a.gate_up.len(), a.out.len())?;
        check_aligned16(OP, "gate_up", &a.gate_up, stream)?;
        check_aligned16(OP, "out", &a.out, stream)?;
        if a.dims.num_tokens == 0 {
            return Ok(());
        }
        let inter = to_i32(OP, "inter", a.dims.inter)?;
        let n = to_i32(OP, "num_tokens", a.dims.num_tokens)?;
        let grid = (to_u32(OP, "grid.x", (a.dims.inter / 8).div_ceil(256))?, n as u32, 1);
        let mut b = self.launch(stream, &self.f.silu_mul);
        b.arg(&a.gate_up).arg(&inter).arg(&n).arg(&mut a.out);
        // SAFETY: matches tf_silu_mul(const bf16*, int, int, bf16*); lengths checked for
        // tokens × 2·inter in and tokens × inter out, inter % 8 == 0 for the 16-byte chunks.
        unsafe { b.launch(cfg(grid, 256)) }.map_err(drv(OP))
    }
}
