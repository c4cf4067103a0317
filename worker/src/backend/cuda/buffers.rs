//! Device buffers of a step, allocated once at the largest step the scheduler can plan,
//! and the host-side packing of a [`StepBatch`] into the kernels' int32 arrays.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use tokenfleet_kernels::ops::SampleParams;
use tokenfleet_kernels::shapes::SAMPLE_STATS_CHUNK;

use super::super::cuda_plan::{StepCapacity, TOP_LOGPROBS_STRIDE};
use super::inflight::{SampleBuffers, UploadStaging};
use super::{dev, sample_params};
use crate::backend::{BackendError, StepBatch};
use crate::model::ModelConfig;

pub struct StepBuffers {
    pub ids: CudaSlice<i32>,
    pub positions: CudaSlice<i32>,
    pub slots: CudaSlice<i32>,
    pub block_tables: CudaSlice<i32>,
    pub context_lens: CudaSlice<i32>,
    pub query_starts: CudaSlice<i32>,
    /// (token, sample row of the previous step) pairs of a step planned ahead.
    pub feed: CudaSlice<i32>,
    /// Residual stream, f32.
    pub x: CudaSlice<f32>,
    /// Normed activations feeding the next GEMM.
    pub h: CudaSlice<bf16>,
    pub qkv: CudaSlice<bf16>,
    pub attn: CudaSlice<bf16>,
    /// Output of o_proj / down_proj, added to the residual by the next norm.
    pub delta: CudaSlice<bf16>,
    pub gate_up: CudaSlice<bf16>,
    pub act: CudaSlice<bf16>,
    pub h_sel: CudaSlice<bf16>,
    pub logits: CudaSlice<f32>,
    pub scratch: CudaSlice<f32>,
    pub out_token: CudaSlice<i32>,
    pub out_logprob: CudaSlice<f32>,
    pub out_top_ids: CudaSlice<i32>,
    pub out_top_lp: CudaSlice<f32>,
    pub ws_acc: CudaSlice<f32>,
    pub ws_ml: CudaSlice<f32>,
    /// The sampler's per-row parameters and sparse penalty / suppression lists. Fixed
    /// device addresses, so a captured graph reads each step's values; the id lists grow
    /// (and captured graphs are dropped) when a step needs more.
    pub params: CudaSlice<SampleParams>,
    pub pen_offsets: CudaSlice<i32>,
    pub pen_ids: CudaSlice<i32>,
    pub pen_counts: CudaSlice<i32>,
    pub sup_offsets: CudaSlice<i32>,
    pub sup_ids: CudaSlice<i32>,
    /// The sampler's split-vocabulary row statistics (max, Σ exp, argmax key per chunk).
    pub part_max: CudaSlice<f32>,
    pub part_sum: CudaSlice<f64>,
    pub part_arg: CudaSlice<u64>,
}

/// Initial entries of the sparse sampler lists per row (distinct context tokens with a
/// penalty, suppressed ids).
const SPARSE_PER_ROW: usize = 256;

impl StepBuffers {
    pub fn new(s: &Arc<CudaStream>, c: &ModelConfig, cap: &StepCapacity) -> Result<Self, BackendError> {
        let (t, n, h, i, v) = (cap.max_tokens.max(1), cap.max_seqs.max(1), c.hidden_size, c.intermediate_size, c.vocab_size);
        let q = c.num_heads * c.head_dim;
        let qkv = q + 2 * c.num_kv_heads * c.head_dim;
        let a = dev("allocating step buffers");
        Ok(StepBuffers {
            ids: s.alloc_zeros(t).map_err(&a)?,
            positions: s.alloc_zeros(t).map_err(&a)?,
            slots: s.alloc_zeros(t).map_err(&a)?,
            block_tables: s.alloc_zeros(n * cap.max_blocks_per_seq()).map_err(&a)?,
            context_lens: s.alloc_zeros(n).map_err(&a)?,
            query_starts: s.alloc_zeros(n + 1).map_err(&a)?,
            feed: s.alloc_zeros(2 * t).map_err(&a)?,
            x: s.alloc_zeros(t * h).map_err(&a)?,
            h: s.alloc_zeros(t * h).map_err(&a)?,
            qkv: s.alloc_zeros(t * qkv).map_err(&a)?,
            attn: s.alloc_zeros(t * q).map_err(&a)?,
            delta: s.alloc_zeros(t * h).map_err(&a)?,
            gate_up: s.alloc_zeros(t * 2 * i).map_err(&a)?,
            act: s.alloc_zeros(t * i).map_err(&a)?,
            h_sel: s.alloc_zeros(n * h).map_err(&a)?,
            logits: s.alloc_zeros(n * v).map_err(&a)?,
            scratch: s.alloc_zeros(n * v).map_err(&a)?,
            out_token: s.alloc_zeros(n).map_err(&a)?,
            out_logprob: s.alloc_zeros(n).map_err(&a)?,
            out_top_ids: s.alloc_zeros(n * TOP_LOGPROBS_STRIDE).map_err(&a)?,
            out_top_lp: s.alloc_zeros(n * TOP_LOGPROBS_STRIDE).map_err(&a)?,
            ws_acc: s.alloc_zeros(1).map_err(&a)?,
            ws_ml: s.alloc_zeros(1).map_err(&a)?,
            params: s.clone_htod(&vec![SampleParams::default(); n]).map_err(&a)?,
            pen_offsets: s.alloc_zeros(n + 1).map_err(&a)?,
            pen_ids: s.alloc_zeros(n * SPARSE_PER_ROW).map_err(&a)?,
            pen_counts: s.alloc_zeros(n * SPARSE_PER_ROW).map_err(&a)?,
            sup_offsets: s.alloc_zeros(n + 1).map_err(&a)?,
            sup_ids: s.alloc_zeros(n * SPARSE_PER_ROW).map_err(&a)?,
            part_max: s.alloc_zeros(n * v.div_ceil(SAMPLE_STATS_CHUNK)).map_err(&a)?,
            part_sum: s.alloc_zeros(n * v.div_ceil(SAMPLE_STATS_CHUNK)).map_err(&a)?,
            part_arg: s.alloc_zeros(n * v.div_ceil(SAMPLE_STATS_CHUNK)).map_err(&a)?,
        })
    }

    /// Grows the split-KV decode workspace when a longer context needs more splits; `true`
    /// when a buffer moved (captured graphs then point at freed memory).
    pub fn ensure_workspace(&mut self, s: &Arc<CudaStream>, acc: usize, ml: usize) -> Result<bool, BackendError> {
        let mut moved = false;
        if self.ws_acc.len() < acc {
            self.ws_acc = s.alloc_zeros(acc).map_err(dev("decode workspace"))?;
            moved = true;
        }
        if self.ws_ml.len() < ml {
            self.ws_ml = s.alloc_zeros(ml).map_err(dev("decode workspace"))?;
            moved = true;
        }
        Ok(moved)
    }

    /// Queues the copies of a step's inputs through `staging` (pinned); `true` when a
    /// sparse sampler list had to grow (its buffer moved, so captured graphs are stale).
    pub fn upload(&mut self, s: &Arc<CudaStream>, i: &StepInputs, staging: &mut UploadStaging) -> Result<bool, BackendError> {
        let mut moved = false;
        for (buf, need) in
            [(&mut self.pen_ids, i.pen_ids.len()), (&mut self.pen_counts, i.pen_counts.len()), (&mut self.sup_ids, i.sup_ids.len())]
        {
            if buf.len() < need {
                *buf = s.alloc_zeros(need.next_power_of_two()).map_err(dev("growing the sampler lists"))?;
                moved = true;
            }
        }
        // Every int array of the step with its device buffer: the one list both the staging
        // size and the copies come from.
        let ints: [(&[i32], &mut CudaSlice<i32>); 12] = [
            (&i.ids, &mut self.ids),
            (&i.positions, &mut self.positions),
            (&i.slots, &mut self.slots),
            (&i.block_tables, &mut self.block_tables),
            (&i.context_lens, &mut self.context_lens),
            (&i.query_starts, &mut self.query_starts),
            (&i.feed, &mut self.feed),
            (&i.pen_offsets, &mut self.pen_offsets),
            (&i.pen_ids, &mut self.pen_ids),
            (&i.pen_counts, &mut self.pen_counts),
            (&i.sup_offsets, &mut self.sup_offsets),
            (&i.sup_ids, &mut self.sup_ids),
        ];
        let mut up = staging.begin(ints.iter().map(|(src, _)| src.len()).sum(), i.params.len())?;
        for (src, dst) in ints {
            up.ints(s, src, dst)?;
        }
        up.params(s, &i.params, &mut self.params)?;
        up.finish(s)?;
        Ok(moved)
    }

    /// The sampler's output buffers (read back whole).
    pub fn sample_outputs(&self) -> SampleBuffers<'_> {
        SampleBuffers { token: &self.out_token, logprob: &self.out_logprob, top_ids: &self.out_top_ids, top_lp: &self.out_top_lp }
    }
}

/// A [`StepBatch`] packed for the kernels.
#[derive(Debug, Default)]
pub struct StepInputs {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub ids: Vec<i32>,
    pub positions: Vec<i32>,
    pub slots: Vec<i32>,
    /// `[num_seqs, table_width]`, padded with 0 (never read past context_len).
    pub block_tables: Vec<i32>,
    pub table_width: usize,
    pub context_lens: Vec<i32>,
    pub query_starts: Vec<i32>,
    pub max_query_len: usize,
    pub max_context_len: usize,
    /// Row (token index) of each sampled sequence's last token, in sample order.
    pub sample_rows: Vec<usize>,
    pub params: Vec<SampleParams>,
    pub pen_offsets: Vec<i32>,
    pub pen_ids: Vec<i32>,
    pub pen_counts: Vec<i32>,
    pub sup_offsets: Vec<i32>,
    pub sup_ids: Vec<i32>,
    /// Flattened (token, previous sample row) pairs.
    pub feed: Vec<i32>,
}

fn i32_of(v: usize, what: &str) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| BackendError::InvalidBatch(format!("{what} {v} exceeds i32")))
}

impl StepInputs {
    /// Packs `b` with block tables at least `min_width` wide, refusing a step larger than
    /// the buffers (an engine bug: the scheduler's budget and the backend's capacity come
    /// from the same configuration).
    pub fn build(b: &StepBatch, cap: &StepCapacity, min_width: usize) -> Result<Self, BackendError> {
        let t = b.num_tokens();
        let n = b.seqs.len();
        if t == 0 || n == 0 {
            return Err(BackendError::InvalidBatch("empty step".into()));
        }
        if t > cap.max_tokens || n > cap.max_seqs || b.samples.len() > cap.max_seqs {
            return Err(BackendError::InvalidBatch(format!("step of {t} tokens / {n} sequences exceeds the capacity {cap:?}")));
        }
        let width = b.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(1).max(min_width).max(1);
        if width > cap.max_blocks_per_seq() {
            return Err(BackendError::InvalidBatch(format!("a block table of {width} blocks exceeds the capacity {cap:?}")));
        }
        let mut i = StepInputs { num_tokens: t, num_seqs: n, table_width: width, ..Default::default() };
        for (&id, (&p, &sl)) in b.token_ids.iter().zip(b.positions.iter().zip(&b.slot_mapping)) {
            i.ids.push(i32_of(id as usize, "token id")?);
            i.positions.push(i32_of(p as usize, "position")?);
            i.slots.push(i32_of(sl as usize, "slot")?);
        }
        i.query_starts.push(0);
        for s in &b.seqs {
            let mut row: Vec<i32> = s.block_table.iter().map(|x| *x as i32).collect();
            row.resize(width, 0);
            i.block_tables.extend(row);
            i.context_lens.push(i32_of(s.context_len, "context length")?);
            i.query_starts.push(i32_of(s.token_start + s.num_tokens, "token offset")?);
            i.max_query_len = i.max_query_len.max(s.num_tokens);
            i.max_context_len = i.max_context_len.max(s.context_len);
        }
        if b.feed.len() > t {
            return Err(BackendError::InvalidBatch(format!("{} fed tokens in a step of {t}", b.feed.len())));
        }
        for f in &b.feed {
            i.feed.push(i32_of(f.token, "fed token")?);
            i.feed.push(i32_of(f.from_sample, "fed sample row")?);
        }
        i.pen_offsets.push(0);
        i.sup_offsets.push(0);
        for spec in &b.samples {
            let seq = &b.seqs[spec.seq];
            i.sample_rows.push(seq.token_start + seq.num_tokens - 1);
            i.params.push(sample_params(spec));
            for e in &spec.penalties {
                i.pen_ids.push(i32_of(e.id as usize, "penalty id")?);
                i.pen_counts.push(i32_of(e.output_count as usize, "penalty count")?);
            }
            i.pen_offsets.push(i32_of(i.pen_ids.len(), "penalty entries")?);
            for id in &spec.suppress {
                i.sup_ids.push(i32_of(*id as usize, "suppressed id")?);
            }
            i.sup_offsets.push(i32_of(i.sup_ids.len(), "suppressed ids")?);
        }
        // cudarc cannot copy zero-length host slices into a device buffer it then reads;
        // keep the sparse lists non-empty (the offsets say nothing is there).
        if i.pen_ids.is_empty() {
            i.pen_ids.push(0);
            i.pen_counts.push(0);
        }
        if i.sup_ids.is_empty() {
            i.sup_ids.push(0);
        }
        Ok(i)
    }
}
