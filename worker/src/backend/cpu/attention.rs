//! Paged causal attention over the CPU KV pool, with a fixed reduction order per query:
//! scores in key order, softmax max/sum in key order, values accumulated in key order. A
//! query's output therefore depends only on its own row and the cache, never on the batch.

use rayon::prelude::*;

use super::simd;
use crate::backend::{BLOCK_SIZE, SeqChunk};

/// One layer's K or V pool: `[num_blocks, BLOCK_SIZE, kv_heads, head_dim]` f32.
#[derive(Debug)]
pub struct KvPool {
    pub data: Vec<f32>,
    kv_heads: usize,
    head_dim: usize,
}

impl KvPool {
    pub fn new(num_blocks: usize, kv_heads: usize, head_dim: usize) -> Self {
        KvPool { data: vec![0.0; num_blocks * BLOCK_SIZE * kv_heads * head_dim], kv_heads, head_dim }
    }

    /// Row offset of (slot, kv head).
    #[inline]
    fn offset(&self, slot: usize, head: usize) -> usize {
        (slot * self.kv_heads + head) * self.head_dim
    }

    /// Stores every token's `[kv_heads * head_dim]` row at its slot.
    pub fn write(&mut self, rows: &[f32], slots: &[u32]) {
        let w = self.kv_heads * self.head_dim;
        for (t, &slot) in slots.iter().enumerate() {
            let o = self.offset(slot as usize, 0);
            self.data[o..o + w].copy_from_slice(&rows[t * w..(t + 1) * w]);
        }
    }

    #[inline]
    fn row(&self, slot: usize, head: usize) -> &[f32] {
        let o = self.offset(slot, head);
        &self.data[o..o + self.head_dim]
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// `out[t, h, :] = softmax(q[t,h]·K[0..=pos]ᵀ / √d) · V[0..=pos]` for every token of every
/// sequence, reading K/V through each sequence's block table.
pub fn paged_attention(q: &[f32], k_pool: &KvPool, v_pool: &KvPool, seqs: &[SeqChunk], shape: AttnShape, out: &mut [f32]) {
    let AttnShape { num_heads, num_kv_heads, head_dim } = shape;
    let group = num_heads / num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let qw = num_heads * head_dim;
    // One task per (token, head); results are written to disjoint chunks of `out`.
    let mut jobs: Vec<(usize, usize)> = Vec::new(); // (seq index, token index in step)
    for (si, s) in seqs.iter().enumerate() {
        for j in 0..s.num_tokens {
            jobs.push((si, s.token_start + j));
        }
    }
    out[..jobs.len() * qw].par_chunks_mut(head_dim).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (idx, o)| {
        let (job, h) = (idx / num_heads, idx % num_heads);
        let (si, t) = jobs[job];
        let s = &seqs[si];
        let pos = s.context_len - s.num_tokens + (t - s.token_start);
        let kvh = h / group;
        let qrow = &q[t * qw + h * head_dim..][..head_dim];
        let n = pos + 1;
        scores.clear();
        scores.reserve(n);
        for j in 0..n {
            let slot = s.block_table[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE;
            scores.push(simd::dot(qrow, k_pool.row(slot, kvh)) * scale);
        }
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - m).exp();
            sum += *sc;
        }
        o.fill(0.0);
        for (j, p) in scores.iter().enumerate() {
            let slot = s.block_table[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE;
            simd::axpy(*p, v_pool.row(slot, kvh), o);
        }
        let inv = 1.0 / sum;
        for acc in o.iter_mut() {
            *acc *= inv;
        }
    });
}
