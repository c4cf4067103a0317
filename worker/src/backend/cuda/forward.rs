//! One forward pass and the device sampler, launched from the step buffers: every input is
//! already on the device and every size comes from [`Launch`], so the same launches run
//! eagerly or under CUDA-graph capture (no allocation, no host sync, no host-side data).

use tokenfleet_kernels::ops::{
    AddRmsNormArgs, DecodeArgs, EmbeddingArgs, PagedKv, PrefillArgs, RmsNormArgs, RopeKvArgs, SampleArgs, SampleOutputs, SamplePartials,
    SparseRows,
};
use tokenfleet_kernels::shapes::{AttnRows, DecodeDims, EmbeddingDims, KvCacheShape, NormDims, PrefillDims, RopeDims, SampleDims};

use super::super::cuda_plan::TOP_LOGPROBS_STRIDE;
use super::buffers::StepInputs;
use super::gemm::{GemmDims, GemmIo};
use super::{CudaBackend, dev, kern};
use crate::backend::BackendError;

/// The sizes of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Launch {
    pub t: usize,
    pub num_seqs: usize,
    /// Block-table stride.
    pub table_width: usize,
    pub max_query_len: usize,
    /// Upper bound of the context lengths (sets the split-KV plan).
    pub max_context_len: usize,
}

impl Launch {
    pub fn of(i: &StepInputs) -> Self {
        Launch {
            t: i.num_tokens,
            num_seqs: i.num_seqs,
            table_width: i.table_width,
            max_query_len: i.max_query_len,
            max_context_len: i.max_context_len,
        }
    }
}

impl CudaBackend {
    /// Launches the model and the sampler over the inputs in the step buffers; the sampled
    /// ids land in `bufs.out_*` for the rows `sample_rows` (token indices, in order).
    pub(super) fn forward(&mut self, l: &Launch, sample_rows: &[usize]) -> Result<(), BackendError> {
        let c = &self.cfg;
        let t = l.t;
        let (h, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let shape = self.shape();
        let qw = shape.qkv_width();
        let attn_w = c.num_heads * c.head_dim;
        let cache = KvCacheShape { num_blocks: self.pool_blocks(), num_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let s = &self.stream;
        let b = &mut self.bufs;
        let k = &self.k;
        let eps = c.rms_norm_eps;

        k.embedding_gather(
            s,
            EmbeddingArgs {
                dims: EmbeddingDims { num_tokens: t, vocab, hidden: h },
                ids: b.ids.slice(..t),
                table: self.w.embed.as_view(),
                out: b.x.slice_mut(..t * h),
            },
        )
        .map_err(kern)?;
        let norm = NormDims { rows: t, hidden: h };
        k.rmsnorm(
            s,
            RmsNormArgs {
                dims: norm,
                eps,
                x: b.x.slice(..t * h),
                weight: self.w.layers[0].input_norm.as_view(),
                out: b.h.slice_mut(..t * h),
            },
        )
        .map_err(kern)?;
        // Pure decode steps use split-KV decode attention (its workspace sized once per step).
        let rows = AttnRows { num_tokens: t, q_stride: qw, out_stride: attn_w };
        let decode_dims = (l.max_query_len == 1).then_some(DecodeDims {
            shape,
            cache,
            rows,
            max_blocks_per_seq: l.table_width,
            max_context_len: l.max_context_len,
        });
        if let Some(d) = &decode_dims {
            let plan = k.decode_plan(d);
            if b.ensure_workspace(s, plan.workspace_acc, plan.workspace_ml)? {
                self.graphs.clear();
            }
        }
        let n_layers = self.w.layers.len();
        for li in 0..n_layers {
            let layer = &self.w.layers[li];
            self.gemm.run(
                k,
                GemmIo { x: b.h.slice(..t * h), w: layer.qkv.as_view(), out: b.qkv.slice_mut(..t * qw) },
                GemmDims { t, n: qw, k: h },
            )?;
            k.rope_kv_write(
                s,
                RopeKvArgs {
                    dims: RopeDims { num_tokens: t, shape, cache },
                    qkv: b.qkv.slice_mut(..t * qw),
                    positions: b.positions.slice(..t),
                    slots: b.slots.slice(..t),
                    inv_freq: self.inv_freq.as_view(),
                    k_cache: self.k_cache[li].as_view_mut(),
                    v_cache: self.v_cache[li].as_view_mut(),
                },
            )
            .map_err(kern)?;
            let kv = PagedKv {
                k_cache: self.k_cache[li].as_view(),
                v_cache: self.v_cache[li].as_view(),
                block_tables: b.block_tables.slice(..l.num_seqs * l.table_width),
                context_lens: b.context_lens.slice(..l.num_seqs),
            };
            if let Some(dims) = decode_dims {
                k.attention_decode(
                    s,
                    DecodeArgs {
                        dims,
                        q: b.qkv.slice(..t * qw),
                        kv,
                        out: b.attn.slice_mut(..t * attn_w),
                        workspace_acc: b.ws_acc.slice_mut(..),
                        workspace_ml: b.ws_ml.slice_mut(..),
                    },
                )
                .map_err(kern)?;
            } else {
                let rows = AttnRows { num_tokens: t, q_stride: qw, out_stride: attn_w };
                let dims = PrefillDims {
                    shape,
                    cache,
                    rows,
                    num_seqs: l.num_seqs,
                    max_blocks_per_seq: l.table_width,
                    max_query_len: l.max_query_len,
                };
                k.attention_prefill(
                    s,
                    PrefillArgs {
                        dims,
                        q: b.qkv.slice(..t * qw),
                        kv,
                        query_starts: b.query_starts.slice(..l.num_seqs + 1),
                        out: b.attn.slice_mut(..t * attn_w),
                    },
                )
                .map_err(kern)?;
            }
            self.gemm.run(
                k,
                GemmIo { x: b.attn.slice(..t * attn_w), w: layer.o.as_view(), out: b.delta.slice_mut(..t * h) },
                GemmDims { t, n: h, k: attn_w },
            )?;
            k.add_rmsnorm(
                s,
                AddRmsNormArgs {
                    dims: norm,
                    eps,
                    x: b.x.slice_mut(..t * h),
                    delta: b.delta.slice(..t * h),
                    weight: layer.post_norm.as_view(),
                    out: b.h.slice_mut(..t * h),
                },
            )
            .map_err(kern)?;
            self.gemm.run_gate_up(
                k,
                GemmIo { x: b.h.slice(..t * h), w: layer.gate_up.as_view(), out: b.gate_up.slice_mut(..t * 2 * inter) },
                b.act.slice_mut(..t * inter),
                GemmDims { t, n: 2 * inter, k: h },
            )?;
            self.gemm.run(
                k,
                GemmIo { x: b.act.slice(..t * inter), w: layer.down.as_view(), out: b.delta.slice_mut(..t * h) },
                GemmDims { t, n: h, k: inter },
            )?;
            let next_norm = if li + 1 < n_layers { &self.w.layers[li + 1].input_norm } else { &self.w.final_norm };
            k.add_rmsnorm(
                s,
                AddRmsNormArgs {
                    dims: norm,
                    eps,
                    x: b.x.slice_mut(..t * h),
                    delta: b.delta.slice(..t * h),
                    weight: next_norm.as_view(),
                    out: b.h.slice_mut(..t * h),
                },
            )
            .map_err(kern)?;
        }

        // The sampled rows (each sequence's last token), gathered unless they are all rows.
        let rows = sample_rows.len();
        if rows == 0 {
            return Ok(());
        }
        let all_rows = sample_rows.iter().enumerate().all(|(i, r)| *r == i) && rows == t;
        if !all_rows {
            for (i, r) in sample_rows.iter().enumerate() {
                let src = b.h.slice(r * h..(r + 1) * h);
                s.memcpy_dtod(&src, &mut b.h_sel.slice_mut(i * h..(i + 1) * h)).map_err(dev("gathering sampled rows"))?;
            }
        }
        let hs = if all_rows { b.h.slice(..rows * h) } else { b.h_sel.slice(..rows * h) };
        self.gemm.run(
            k,
            GemmIo { x: hs, w: self.w.lm_head().as_view(), out: b.logits.slice_mut(..rows * vocab) },
            GemmDims { t: rows, n: vocab, k: h },
        )?;
        k.sample(
            s,
            SampleArgs {
                dims: SampleDims { rows, vocab, logits_stride: vocab },
                logits: b.logits.slice(..rows * vocab),
                params: b.params.slice(..rows),
                penalties: SparseRows { offsets: b.pen_offsets.slice(..rows + 1), ids: b.pen_ids.slice(..) },
                penalty_counts: b.pen_counts.slice(..),
                suppress: SparseRows { offsets: b.sup_offsets.slice(..rows + 1), ids: b.sup_ids.slice(..) },
                scratch: b.scratch.slice_mut(..rows * vocab),
                partials: SamplePartials { max: b.part_max.slice_mut(..), sum: b.part_sum.slice_mut(..), arg: b.part_arg.slice_mut(..) },
                out: SampleOutputs {
                    token: b.out_token.slice_mut(..rows),
                    logprob: b.out_logprob.slice_mut(..rows),
                    top_ids: b.out_top_ids.slice_mut(..rows * TOP_LOGPROBS_STRIDE),
                    top_logprobs: b.out_top_lp.slice_mut(..rows * TOP_LOGPROBS_STRIDE),
                },
            },
        )
        .map_err(kern)?;
        Ok(())
    }
}
