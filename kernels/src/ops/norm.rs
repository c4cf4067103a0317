//! RMSNorm and fused residual-add + RMSNorm (kernels/cuda/rmsnorm.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::NormDims;

/// `out = bf16(weight · x / sqrt(mean(x²) + eps))` per row.
#[derive(Debug)]
pub struct RmsNormArgs<'a> {
    pub dims: NormDims,
    pub eps: f32,
    /// `[rows, hidden]` f32
    pub x: CudaView<'a, f32>,
    /// `[hidden]` bf16
    pub weight: CudaView<'a, bf16>,
    /// `[rows, hidden]` bf16
    pub out: CudaViewMut<'a, bf16>,
}

/// `x += delta` (f32 residual stream), then `out = RMSNorm(x)`.
#[derive(Debug)]
pub struct AddRmsNormArgs<'a> {
    pub dims: NormDims,
    pub eps: f32,
    /// `[rows, hidden]` f32, updated in place.
    pub x: CudaViewMut<'a, f32>,
    /// `[rows, hidden]` bf16 (the o_proj / down_proj GEMM output).
    pub delta: CudaView<'a, bf16>,
    /// `[hidden]` bf16
    pub weight: CudaView<'a, bf16>,
    /// `[rows, hidden]` bf16
    pub out: CudaViewMut<'a, bf16>,
}

fn check_eps(op: &'static str, eps: f32) -> Result<(), KernelError> {
    if eps.is_finite() && eps >= 0.0 { Ok(()) } else { Err(KernelError::arg(op, format!("eps {eps} must be finite and ≥ 0"))) }
}

impl Kernels {
    /// Launches `tf_rmsnorm`: grid rows, block 256.
    pub fn rmsnorm(&self, stream: &CudaStream, mut a: RmsNormArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "rmsnorm";
        self.check_stream(OP, stream)?;
        check_eps(OP, a.eps)?;
        a.dims.check(OP, a.x.len(), None, a.weight.len(), a.out.len())?;
        check_aligned16(OP, "x", &a.x, stream)?;
        check_aligned16(OP, "weight", &a.weight, stream)?;
        check_aligned16(OP, "out", &a.out, stream)?;
        if a.dims.rows == 0 {
            return Ok(());
        }
        let hidden = to_i32(OP, "hidden", a.dims.hidden)?;
        let grid = (to_u32(OP, "rows", a.dims.rows)?, 1, 1);
        let mut b = self.launch(stream, &self.f.rmsnorm);
        b.arg(&a.x).arg(&a.weight).arg(&mut a.out).arg(&hidden).arg(&a.eps);
        // SAFETY: matches tf_rmsnorm(const float*, const bf16*, bf16*, int, float); one block
        // per row, every buffer checked to hold rows × hidden (weight: hidden) elements.
        unsafe { b.launch(cfg(grid, 256)) }.map_err(drv(OP))
    }

    /// Launches `tf_add_rmsnorm`: grid rows, block 256.
    pub fn add_rmsnorm(&self, stream: &CudaStream, mut a: AddRmsNormArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "add_rmsnorm";
        self.check_stream(OP, stream)?;
        check_eps(OP, a.eps)?;
        a.dims.check(OP, a.x.len(), Some(a.delta.len()), a.weight.len(), a.out.len())?;
        check_aligned16(OP, "x", &a.x, stream)?;
        check_aligned16(OP, "delta", &a.delta, stream)?;
        check_aligned16(OP, "weight", &a.weight, stream)?;
        check_aligned16(OP, "out", &a.out, stream)?;
        if a.dims.rows == 0 {
            return Ok(());
        }
        let hidden = to_i32(OP, "hidden", a.dims.hidden)?;
        let grid = (to_u32(OP, "rows", a.dims.rows)?, 1, 1);
        let mut b = self.launch(stream, &self.f.add_rmsnorm);
        b.arg(&mut a.x).arg(&a.delta).arg(&a.weight).arg(&mut a.out).arg(&hidden).arg(&a.eps);
        // SAFETY: matches tf_add_rmsnorm(float*, const bf16*, const bf16*, bf16*, int, float);
        // lengths checked as for rmsnorm; x and out are distinct views (one &mut each).
        unsafe { b.launch(cfg(grid, 256)) }.map_err(drv(OP))
    }
}
