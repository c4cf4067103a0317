//! The CPU reference backend: the Llama forward pass over a paged f32 KV cache, weights in
//! their checkpoint dtype (widened per panel, f32 accumulation), rayon across cores.
//!
//! It is the oracle the CUDA kernels are tested against, so it favours exactness and a
//! fixed reduction order (see [`simd`]) over the last bit of speed: a token's logits are
//! bit-identical in prefill or decode, alone or batched.

pub mod attention;
pub mod matmul;
pub mod simd;

use attention::{AttnShape, KvPool, paged_attention};
use matmul::{WeightMatrix, matmul, matmul_many};

use super::{Backend, BackendError, BackendInfo, StepBatch};
use crate::engine::sampler::{self, Sampled};
use crate::model::rope::{RopeTable, apply_rotary};
use crate::model::{Model, ModelConfig, TensorRef};

struct Layer {
    input_norm: Vec<f32>,
    q: WeightMatrix,
    k: WeightMatrix,
    v: WeightMatrix,
    o: WeightMatrix,
    post_norm: Vec<f32>,
    gate: WeightMatrix,
    up: WeightMatrix,
    down: WeightMatrix,
    k_cache: KvPool,
    v_cache: KvPool,
}

/// The CPU backend.
pub struct CpuBackend {
    cfg: ModelConfig,
    embed: TensorRef,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: WeightMatrix,
    rope: RopeTable,
    num_blocks: usize,
    dtype: String,
    sample_scratch: Vec<f32>,
}

impl CpuBackend {
    /// Builds the backend with a KV pool of `num_blocks` blocks.
    pub fn new(model: &Model, num_blocks: usize) -> Self {
        let cfg = model.config.clone();
        let w = &model.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| Layer {
                input_norm: l.input_norm.to_f32_vec(),
                q: WeightMatrix::new(l.q_proj.clone()),
                k: WeightMatrix::new(l.k_proj.clone()),
                v: WeightMatrix::new(l.v_proj.clone()),
                o: WeightMatrix::new(l.o_proj.clone()),
                post_norm: l.post_attn_norm.to_f32_vec(),
                gate: WeightMatrix::new(l.gate_proj.clone()),
                up: WeightMatrix::new(l.up_proj.clone()),
                down: WeightMatrix::new(l.down_proj.clone()),
                k_cache: KvPool::new(num_blocks, cfg.num_kv_heads, cfg.head_dim),
                v_cache: KvPool::new(num_blocks, cfg.num_kv_heads, cfg.head_dim),
            })
            .collect();
        CpuBackend {
            rope: RopeTable::new(&cfg),
            embed: w.embed_tokens.clone(),
            final_norm: w.final_norm.to_f32_vec(),
            lm_head: WeightMatrix::new(w.lm_head.clone()),
            layers,
            num_blocks,
            dtype: model.dtype.name().to_string(),
            cfg,
            sample_scratch: Vec::new(),
        }
    }

    /// Bytes of KV cache one block takes on this backend (f32 K and V, every layer).
    pub fn bytes_per_block(cfg: &ModelConfig) -> usize {
        2 * cfg.num_layers * super::BLOCK_SIZE * cfg.num_kv_heads * cfg.head_dim * 4
    }

    /// Runs the forward pass and returns the final-norm hidden states of the rows listed
    /// in `rows` (indices into the step's tokens), `[rows.len(), hidden]`.
    fn forward(&mut self, batch: &StepBatch, rows: &[usize]) -> Vec<f32> {
        let cfg = &self.cfg;
        let t = batch.num_tokens();
        let (hd, nh, nkv) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let h = cfg.hidden_size;
        let (qw, kvw, inter) = (nh * hd, nkv * hd, cfg.intermediate_size);

        let mut x = vec![0.0f32; t * h];
        let es = self.embed.dtype.size();
        let row_bytes = h * es;
        let embed_bytes = self.embed.bytes();
        for (i, &tok) in batch.token_ids.iter().enumerate() {
            let src = &embed_bytes[tok as usize * row_bytes..][..row_bytes];
            widen(self.embed.dtype, src, &mut x[i * h..(i + 1) * h]);
        }

        // cos/sin per token, shared by every layer.
        let half = self.rope.half_dim();
        let mut cos = vec![0.0f32; t * half];
        let mut sin = vec![0.0f32; t * half];
        for (i, &p) in batch.positions.iter().enumerate() {
            self.rope.angles(p, &mut cos[i * half..(i + 1) * half], &mut sin[i * half..(i + 1) * half]);
        }

        let mut normed = vec![0.0f32; t * h];
        let mut q = vec![0.0f32; t * qw];
        let mut k = vec![0.0f32; t * kvw];
        let mut v = vec![0.0f32; t * kvw];
        let mut attn = vec![0.0f32; t * qw];
        let mut proj = vec![0.0f32; t * h];
        let mut gate = vec![0.0f32; t * inter];
        let mut up = vec![0.0f32; t * inter];
        let shape = AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd };
        let eps = cfg.rms_norm_eps;

        for layer in &mut self.layers {
            rms_norm_rows(&x, &layer.input_norm, eps, &mut normed);
            matmul_many(&normed, t, &mut [(&layer.q, &mut q), (&layer.k, &mut k), (&layer.v, &mut v)]);
            for i in 0..t {
                let (c, s) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
                for head in q[i * qw..(i + 1) * qw].chunks_exact_mut(hd) {
                    apply_rotary(head, c, s);
                }
                for head in k[i * kvw..(i + 1) * kvw].chunks_exact_mut(hd) {
                    apply_rotary(head, c, s);
                }
            }
            layer.k_cache.write(&k, &batch.slot_mapping);
            layer.v_cache.write(&v, &batch.slot_mapping);
            paged_attention(&q, &layer.k_cache, &layer.v_cache, &batch.seqs, shape, &mut attn);
            matmul(&attn, t, &layer.o, &mut proj);
            add_in_place(&mut x, &proj);

            rms_norm_rows(&x, &layer.post_norm, eps, &mut normed);
            matmul_many(&normed, t, &mut [(&layer.gate, &mut gate), (&layer.up, &mut up)]);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = silu(*g) * u;
            }
            matmul(&gate, t, &layer.down, &mut proj);
            add_in_place(&mut x, &proj);
        }

        let mut out = vec![0.0f32; rows.len() * h];
        for (o, &r) in rows.iter().enumerate() {
            rms_norm_rows(&x[r * h..(r + 1) * h], &self.final_norm, eps, &mut out[o * h..(o + 1) * h]);
        }
        out
    }

    /// Raw logits `[samples, vocab]` of the step's sampled rows (tests and tools).
    pub fn logits(&mut self, batch: &StepBatch) -> Result<Vec<f32>, BackendError> {
        batch.validate(self.num_blocks, self.cfg.vocab_size)?;
        let rows: Vec<usize> = batch.samples.iter().map(|s| last_row(batch, s.seq)).collect();
        let hidden = self.forward(batch, &rows);
        let mut logits = vec![0.0f32; rows.len() * self.cfg.vocab_size];
        matmul(&hidden, rows.len(), &self.lm_head, &mut logits);
        Ok(logits)
    }
}

fn last_row(batch: &StepBatch, seq: usize) -> usize {
    let s = &batch.seqs[seq];
    s.token_start + s.num_tokens - 1
}

impl Backend for CpuBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "cpu".into(), device: format!("cpu ({} threads)", rayon::current_num_threads()), dtype: self.dtype.clone() }
    }

    fn kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        let logits = self.logits(batch)?;
        let v = self.cfg.vocab_size;
        let mut scratch = std::mem::take(&mut self.sample_scratch);
        let out = batch.samples.iter().enumerate().map(|(i, s)| sampler::sample(&logits[i * v..(i + 1) * v], s, &mut scratch)).collect();
        self.sample_scratch = scratch;
        Ok(out)
    }
}

fn widen(dtype: crate::model::DType, src: &[u8], dst: &mut [f32]) {
    match dtype {
        crate::model::DType::F16 => simd::f16_to_f32(src, dst),
        crate::model::DType::BF16 => simd::bf16_to_f32(src, dst),
        crate::model::DType::F32 => simd::le_f32(src, dst),
    }
}

/// RMSNorm of every row of `x` (f32 statistics, then × weight), like transformers.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ss = simd::dot(xr, xr);
        let inv = 1.0 / (ss / h as f32 + eps).sqrt();
        for ((o, xv), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (xv * inv);
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
