//! Embedding gather (kernels/cuda/embedding.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::{EmbeddingDims, ensure};

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
        let mut b = self.launch(stream, &self.f.embedding);
        b.arg(&a.ids).arg(&n).arg(&a.table).arg(&vocab).arg(&hidden).arg(&mut a.out);
        // SAFETY: the argument list matches tf_embedding_gather's signature (int*, int, bf16*,
        // int, int, float*); lengths and alignment were checked above against the grid, and
        // the kernel bounds-checks ids on the device.
        unsafe { b.launch(cfg(grid, 128)) }.map_err(drv(OP))
    }
}

/// `ids[feed[2k]] = sampled[feed[2k + 1]]` for `k < count`: a step planned ahead takes its
/// decode tokens from the previous step's sampled ids without a trip through the host.
#[derive(Debug)]
pub struct FeedArgs<'a> {
    /// The step's token ids, `[num_tokens]`.
    pub ids: CudaViewMut<'a, i32>,
    /// The previous step's sampled ids.
    pub sampled: CudaView<'a, i32>,
    /// `count` (destination token, source sample row) pairs.
    pub feed: CudaView<'a, i32>,
    pub count: usize,
}

impl Kernels {
    /// Launches `tf_feed_tokens`: grid ⌈count/128⌉, block 128.
    pub fn feed_tokens(&self, stream: &CudaStream, mut a: FeedArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "feed_tokens";
        self.check_stream(OP, stream)?;
        ensure(OP, a.feed.len() >= 2 * a.count, || format!("feed holds {} ints for {} pairs", a.feed.len(), a.count))?;
        if a.count == 0 {
            return Ok(());
        }
        let n = to_i32(OP, "count", a.count)?;
        let num_tokens = to_i32(OP, "ids", a.ids.len())?;
        let num_sampled = to_i32(OP, "sampled", a.sampled.len())?;
        let grid = (to_u32(OP, "grid.x", a.count.div_ceil(128))?, 1, 1);
        let mut b = self.launch(stream, &self.f.feed_tokens);
        b.arg(&mut a.ids).arg(&num_tokens).arg(&a.sampled).arg(&num_sampled).arg(&a.feed).arg(&n);
        // SAFETY: the argument list matches tf_feed_tokens's signature (int*, int, int*, int,
        // int*, int); `feed` holds 2·count ints (checked above) and the kernel bounds-checks
        // every index it reads from it against the two lengths passed.
        unsafe { b.launch(cfg(grid, 128)) }.map_err(drv(OP))
    }
}
