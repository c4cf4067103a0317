//! Paged attention: prefill (kernels/cuda/attention_prefill.cu) and split-KV decode with its
//! merge (kernels/cuda/attention_decode.cu).
//!
//! Supported: head_dim 64 or 128; any group size (num_heads / num_kv_heads) that divides,
//! up to 64. Decode reads each K/V row once per block for groups of 1, 2, 3, 4 and 8 heads;
//! other groups run in tiles of the largest of those that divides them (6 → 2 × 3).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{DECODE_TILES, Kernels, cfg, check_aligned16, drv, to_i32, to_u32};
use crate::shapes::{AttnLens, AttnShape, DecodeDims, DecodePlan, KvCacheShape, PrefillDims};

/// The paged cache of one layer and the step's block tables.
#[derive(Debug)]
pub struct PagedKv<'a> {
    /// `[blocks, 16, nkv, hd]` bf16
    pub k_cache: CudaView<'a, bf16>,
    /// `[blocks, 16, nkv, hd]` bf16
    pub v_cache: CudaView<'a, bf16>,
    /// `[num_seqs, max_blocks_per_seq]` i32 physical block ids.
    pub block_tables: CudaView<'a, i32>,
    /// `[num_seqs]` i32: tokens in each sequence's cache after this step's write.
    pub context_lens: CudaView<'a, i32>,
}

/// Causal attention of each sequence's query chunk (positions `[ctx − nq, ctx)`) over its
/// cached keys `≤` each query's position. Device-side invariants (the engine's
/// `StepBatch::validate` guarantees them): `query_starts` non-decreasing with the last
/// entry ≤ `rows.num_tokens`, each chunk length ≤ `max_query_len` and ≤ its context length.
#[derive(Debug)]
pub struct PrefillArgs<'a> {
    pub dims: PrefillDims,
    /// Query rows (bf16, `rows.q_stride` apart; head h at column h·hd).
    pub q: CudaView<'a, bf16>,
    pub kv: PagedKv<'a>,
    /// `[num_seqs + 1]` i32: sequence s owns token rows `[query_starts[s], query_starts[s+1])`.
    pub query_starts: CudaView<'a, i32>,
    /// Output rows (bf16, `rows.out_stride` apart).
    pub out: CudaViewMut<'a, bf16>,
}

/// One query per sequence: row i of `q` / `out` belongs to sequence i.
#[derive(Debug)]
pub struct DecodeArgs<'a> {
    pub dims: DecodeDims,
    pub q: CudaView<'a, bf16>,
    pub kv: PagedKv<'a>,
    pub out: CudaViewMut<'a, bf16>,
    /// f32, at least [`DecodePlan::workspace_acc`] elements (any view when it is 0).
    pub workspace_acc: CudaViewMut<'a, f32>,
    /// f32, at least [`DecodePlan::workspace_ml`] elements (any view when it is 0).
    pub workspace_ml: CudaViewMut<'a, f32>,
}

fn hd_index(shape: &AttnShape) -> usize {
    usize::from(shape.head_dim == 128)
}

fn scale(shape: &AttnShape) -> f32 {
    1.0 / (shape.head_dim as f32).sqrt()
}

fn lens(kv: &PagedKv<'_>, q: usize, query_starts: usize, out: usize) -> AttnLens {
    AttnLens {
        q,
        k_cache: kv.k_cache.len(),
        v_cache: kv.v_cache.len(),
        block_tables: kv.block_tables.len(),
        context_lens: kv.context_lens.len(),
        query_starts,
        out,
    }
}

fn check_kv_aligned(op: &'static str, kv: &PagedKv<'_>, stream: &CudaStream) -> Result<(), KernelError> {
    check_aligned16(op, "k_cache", &kv.k_cache, stream)?;
    check_aligned16(op, "v_cache", &kv.v_cache, stream)
}

impl Kernels {
    /// Launches `tf_attn_prefill_hd{64,128}`: grid (⌈max_query_len / (64/group)⌉, nkv,
    /// num_seqs), block 128, 32 KiB static shared memory (hd 128).
    pub fn attention_prefill(&self, stream: &CudaStream, mut a: PrefillArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "attention_prefill";
        self.check_stream(OP, stream)?;
        let d = a.dims;
        d.check(lens(&a.kv, a.q.len(), a.query_starts.len(), a.out.len()))?;
        check_aligned16(OP, "q", &a.q, stream)?;
        check_kv_aligned(OP, &a.kv, stream)?;
        let q_stride = d.rows.q_stride as i64;
        let out_stride = d.rows.out_stride as i64;
        let max_blocks = to_i32(OP, "max_blocks_per_seq", d.max_blocks_per_seq)?;
        let pool = to_i32(OP, "num_blocks", d.cache.num_blocks)?;
        let nkv = to_i32(OP, "num_kv_heads", d.shape.num_kv_heads)?;
        let group = to_i32(OP, "group", d.shape.group())?;
        let sc = scale(&d.shape);
        let f = &self.f.prefill[hd_index(&d.shape)];
        let mut b = self.launch(stream, f);
        b.arg(&a.q).arg(&q_stride).arg(&a.kv.k_cache).arg(&a.kv.v_cache).arg(&a.kv.block_tables).arg(&max_blocks);
        b.arg(&a.kv.context_lens).arg(&a.query_starts).arg(&pool).arg(&nkv).arg(&group).arg(&sc).arg(&mut a.out).arg(&out_stride);
        // SAFETY: matches tf_attn_prefill_hd*(q, long long, k, v, int*, int, int*, int*, int,
        // int, int, float, out, long long). Host-checked: buffer lengths for num_tokens rows
        // at the given strides, cache and table shapes, 16-byte alignment. The kernel clamps
        // context lengths to the table width and zero-fills keys on blocks outside the pool.
        unsafe { b.launch(cfg(d.grid(), 128)) }.map_err(drv(OP))
    }

    /// The split plan `attention_decode` will use for these dims on this device (size the
    /// workspace from it).
    pub fn decode_plan(&self, dims: &DecodeDims) -> DecodePlan {
        dims.plan(self.num_sms())
    }

    /// Launches `tf_attn_decode_hd{64,128}_g{GT}`: grid (num_splits, nkv·group/GT,
    /// num_seqs), block 128; then, with more than one split, `tf_attn_decode_merge_hd*`:
    /// grid (nh, num_seqs), block hd.
    pub fn attention_decode(&self, stream: &CudaStream, mut a: DecodeArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "attention_decode";
        self.check_stream(OP, stream)?;
        let d = a.dims;
        let plan = self.decode_plan(&d);
        d.check(lens(&a.kv, a.q.len(), 0, a.out.len()), &plan, a.workspace_acc.len(), a.workspace_ml.len())?;
        check_aligned16(OP, "q", &a.q, stream)?;
        check_kv_aligned(OP, &a.kv, stream)?;
        let tile_idx = DECODE_TILES
            .iter()
            .position(|t| *t == plan.head_tile)
            .ok_or_else(|| KernelError::arg(OP, format!("no decode kernel for a head tile of {}", plan.head_tile)))?;
        let q_stride = d.rows.q_stride as i64;
        let out_stride = d.rows.out_stride as i64;
        let max_blocks = to_i32(OP, "max_blocks_per_seq", d.max_blocks_per_seq)?;
        let pool = to_i32(OP, "num_blocks", d.cache.num_blocks)?;
        let nkv = to_i32(OP, "num_kv_heads", d.shape.num_kv_heads)?;
        let group = to_i32(OP, "group", d.shape.group())?;
        let partition = to_i32(OP, "partition", plan.partition)?;
        let splits = to_i32(OP, "num_splits", plan.num_splits)?;
        let sc = scale(&d.shape);
        let grid = (
            to_u32(OP, "num_splits", plan.num_splits)?,
            to_u32(OP, "head tiles", d.shape.num_kv_heads * (d.shape.group() / plan.head_tile))?,
            to_u32(OP, "num_seqs", d.num_seqs())?,
        );
        let hd = hd_index(&d.shape);
        let mut b = self.launch(stream, &self.f.decode[hd][tile_idx]);
        b.arg(&a.q).arg(&q_stride).arg(&a.kv.k_cache).arg(&a.kv.v_cache).arg(&a.kv.block_tables).arg(&max_blocks);
        b.arg(&a.kv.context_lens).arg(&pool).arg(&nkv).arg(&group).arg(&sc).arg(&partition).arg(&splits);
        b.arg(&mut a.out).arg(&out_stride).arg(&mut a.workspace_acc).arg(&mut a.workspace_ml);
        // SAFETY: matches tf_attn_decode_hd*_g*(q, long long, k, v, int*, int, int*, int, int,
        // int, float, int, int, out, long long, float*, float*). Host-checked lengths, the
        // workspace against the plan, partition ≤ 512 and a multiple of 16 (plan), head tile
        // dividing the group. The kernel clamps contexts to the table width and skips blocks
        // outside the pool.
        unsafe { b.launch(cfg(grid, 128)) }.map_err(drv(OP))?;
        if plan.num_splits > 1 {
            let mgrid = (to_u32(OP, "num_heads", d.shape.num_heads)?, grid.2, 1);
            let mut m = self.launch(stream, &self.f.decode_merge[hd]);
            let (acc, ml) = (a.workspace_acc.as_view(), a.workspace_ml.as_view());
            m.arg(&acc).arg(&ml).arg(&splits).arg(&mut a.out).arg(&out_stride);
            // SAFETY: matches tf_attn_decode_merge_hd*(const float*, const float*, int, bf16*,
            // long long); the workspaces hold num_seqs × nh × num_splits × (hd | 2) floats,
            // written by the launch above on the same stream.
            unsafe { m.launch(cfg(mgrid, d.shape.head_dim as u32)) }.map_err(drv(OP))?;
        }
        Ok(())
    }
}

/// The cache shape of an attention shape with `num_blocks` blocks.
pub fn cache_shape(shape: &AttnShape, num_blocks: usize) -> KvCacheShape {
    KvCacheShape { num_blocks, num_kv_heads: shape.num_kv_heads, head_dim: shape.head_dim }
}
