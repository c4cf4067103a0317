//! Embedding gather (kernels/cuda/embedding.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, PushKernelArg};
use half::bf16;

use crate::KernelError;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::EmbeddingDims;

/// `out[t, :] = f32(table[ids[t], :])`; ids outside `[0, vocab)` give a zero row.
#[derive(Debug)]
pub struct EmbeddingArgs<'a> {
    pub dims: EmbeddingDims,
    /// `[num_tokens]`
    pub ids: CudaView<'a, i32>,
    /// `[vocab, hidden]` bf16, 16-byte aligned.
    pub table: CudaView<'a, bf16>,
    /// `[num_tokens, hidden]` f32 (the residual stream).
    pub out: CudaViewMut<'a, f32>,
}

impl Kernels {
    /// Launches `tf_embedding_gather`: grid (⌈hidden/8/128⌉, tokens), block 128.
    pub fn embedding_gather(&self, stream: &CudaStream, mut a: EmbeddingArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "embedding_gather";
        self.check_stream(OP, stream)?;
        a.dims.check(a.ids.len(), a.table.len(), a.out.len())?;
        check_aligned16(OP, "table", &a.table, stream)?;
        check_aligned16(OP, "out", &a.out, stream)?;
        if a.dims.num_tokens == 0 {
            return Ok(());
        }
        let n = to_i32(OP, "num_tokens", a.dims.num_tokens)?;
        let vocab = to_i32(OP, "vocab", a.dims.vocab)?;
        let hidden = to_i32(OP, "hidden", a.dims.hidden)?;
        let grid = (to_u32(OP, "grid.x", (a.dims.hidden / 8).div_ceil(128))?, n as u32, 1);
        let mut b = stream.launch_builder(&self.f.embedding);
        b.arg(&a.ids).arg(&n).arg(&a.table).arg(&vocab).arg(&hidden).arg(&mut a.out);
        // SAFETY: the argument list matches tf_embedding_gather's signature (int*, int, bf16*,
        // int, int, float*); lengths and alignment were checked above against the grid, and
        // the kernel bounds-checks ids on the device.
        unsafe { b.launch(cfg(grid, 128)) }.map(|_| ()).map_err(drv(OP))
    }
}
