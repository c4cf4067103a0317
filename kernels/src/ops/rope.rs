//! RoPE (llama3 inverse frequencies) + paged KV-cache write (kernels/cuda/rope_kv.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::{BLOCK_SIZE, RopeDims, RopeLens};

/// Rotates Q in place and writes rotated K and plain V at each token's cache slot.
#[derive(Debug)]
pub struct RopeKvArgs<'a> {
    pub dims: RopeDims,
    /// `[tokens, (nh + 2·nkv)·hd]` bf16 (fused QKV output; Q rotated in place).
    pub qkv: CudaViewMut<'a, bf16>,
    /// `[tokens]` positions.
    pub positions: CudaView<'a, i32>,
    /// `[tokens]` cache slots `block·16 + pos % 16`; a negative slot skips the cache write.
    pub slots: CudaView<'a, i32>,
    /// `[hd / 2]` f32 inverse frequencies, computed on the host like
    /// worker/src/model/rope.rs (llama3 scaling included).
    pub inv_freq: CudaView<'a, f32>,
    /// `[blocks, 16, nkv, hd]` bf16
    pub k_cache: CudaViewMut<'a, bf16>,
    /// `[blocks, 16, nkv, hd]` bf16
    pub v_cache: CudaViewMut<'a, bf16>,
}

impl Kernels {
    /// Launches `tf_rope_kv_write`: grid tokens, block 128.
    pub fn rope_kv_write(&self, stream: &CudaStream, mut a: RopeKvArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "rope_kv_write";
        self.check_stream(OP, stream)?;
        a.dims.check(RopeLens {
            qkv: a.qkv.len(),
            positions: a.positions.len(),
            slots: a.slots.len(),
            inv_freq: a.inv_freq.len(),
            k_cache: a.k_cache.len(),
            v_cache: a.v_cache.len(),
        })?;
        check_aligned16(OP, "qkv", &a.qkv, stream)?;
        check_aligned16(OP, "k_cache", &a.k_cache, stream)?;
        check_aligned16(OP, "v_cache", &a.v_cache, stream)?;
        if a.dims.num_tokens == 0 {
            return Ok(());
        }
        let s = a.dims.shape;
        let n = to_i32(OP, "num_tokens", a.dims.num_tokens)?;
        let nh = to_i32(OP, "num_heads", s.num_heads)?;
        let nkv = to_i32(OP, "num_kv_heads", s.num_kv_heads)?;
        let hd = to_i32(OP, "head_dim", s.head_dim)?;
        let num_slots = (a.dims.cache.num_blocks * BLOCK_SIZE) as i64;
        let grid = (to_u32(OP, "num_tokens", a.dims.num_tokens)?, 1, 1);
        let mut b = self.launch(stream, &self.f.rope_kv);
        b.arg(&mut a.qkv).arg(&n).arg(&nh).arg(&nkv).arg(&hd).arg(&a.positions).arg(&a.slots).arg(&num_slots);
        b.arg(&a.inv_freq).arg(&mut a.k_cache).arg(&mut a.v_cache);
        // SAFETY: matches tf_rope_kv_write(bf16*, int, int, int, int, const int*, const int*,
        // long long, const float*, bf16*, bf16*); qkv holds tokens × (nh + 2·nkv)·hd, the
        // caches num_slots × nkv × hd, and the kernel skips slots outside [0, num_slots).
        unsafe { b.launch(cfg(grid, 128)) }.map_err(drv(OP))
    }
}
