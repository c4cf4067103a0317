//! Naive CPU references for the self-test: f64 accumulation over the same bf16-rounded
//! inputs the GPU sees, written for clarity, not speed (attention runs on all cores).

use crate::shapes::{AttnShape, BLOCK_SIZE};

/// Llama-3 rope scaling parameters (config.json `rope_scaling`).
#[derive(Debug, Clone, Copy)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position: f32,
}

/// Minitron-4B / Llama-3.1's scaling.
pub const LLAMA31_SCALING: Llama3Scaling =
    Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192.0 };

/// Inverse frequencies exactly as worker/src/model/rope.rs computes them (f32 throughout):
/// the host table the RoPE kernel takes.
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    let d = head_dim;
    let mut inv: Vec<f32> = (0..d / 2).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32)).collect();
    if let Some(s) = scaling {
        let low_wl = s.original_max_position / s.low_freq_factor;
        let high_wl = s.original_max_position / s.high_freq_factor;
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            let scaled = if wavelen > low_wl { *f / s.factor } else { *f };
            let medium = wavelen >= high_wl && wavelen <= low_wl;
            *f = if medium {
                let smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * scaled / s.factor + smooth * scaled
            } else {
                scaled
            };
        }
    }
    inv
}

/// rotate_half RoPE of one head in place, f32 like the CPU backend (angles pos·f in f32,
/// cos/sin through f64).
pub fn rope_head(x: &mut [f32], pos: i32, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for i in 0..half {
        let a = pos as f32 * inv_freq[i];
        let (c, s) = ((a as f64).cos() as f32, (a as f64).sin() as f32);
        let (lo, hi) = (x[i], x[i + half]);
        x[i] = lo * c - hi * s;
        x[i + half] = hi * c + lo * s;
    }
}

/// RMSNorm of one row in f64: w · x / sqrt(mean(x²) + eps).
pub fn rmsnorm_row(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let ss: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let inv = 1.0 / (ss / x.len() as f64 + eps as f64).sqrt();
    x.iter().zip(w).map(|(v, w)| *w as f64 * (*v as f64 * inv)).collect()
}

pub fn silu_mul(g: f32, u: f32) -> f64 {
    let g = g as f64;
    g / (1.0 + (-g).exp()) * u as f64
}

/// One sequence of an attention call: query rows `[q_start, q_start + nq)` at positions
/// `[ctx − nq, ctx)`, keys through `blocks`.
#[derive(Debug, Clone)]
pub struct RefSeq {
    pub q_start: usize,
    pub nq: usize,
    pub ctx: usize,
    pub blocks: Vec<i32>,
}

/// Causal paged attention in f64. `q` rows are `q_stride` apart; pools are
/// `[blocks, 16, nkv, hd]`; the result is `[rows, nh·hd]` for every row any sequence owns
/// (other rows stay 0).
pub fn paged_attention(q: &[f32], q_stride: usize, k: &[f32], v: &[f32], shape: AttnShape, seqs: &[RefSeq], rows: usize) -> Vec<f64> {
    let AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd } = shape;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut jobs: Vec<(usize, usize)> = Vec::new(); // (seq, j)
    for (si, s) in seqs.iter().enumerate() {
        for j in 0..s.nq {
            jobs.push((si, j));
        }
    }
    let mut out = vec![0.0f64; rows * nh * hd];
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).min(32);
    let per = jobs.len().div_ceil(threads).max(1);
    let results: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = jobs
            .chunks(per)
            .map(|chunk| {
                sc.spawn(move || {
                    let mut res = Vec::with_capacity(chunk.len());
                    let mut scores = Vec::new();
                    for &(si, j) in chunk {
                        let s = &seqs[si];
                        let row = s.q_start + j;
                        let pos = s.ctx - s.nq + j;
                        let mut o = vec![0.0f64; nh * hd];
                        for h in 0..nh {
                            let kvh = h / group;
                            let qrow = &q[row * q_stride + h * hd..][..hd];
                            scores.clear();
                            for key in 0..=pos {
                                let slot = s.blocks[key / BLOCK_SIZE] as usize * BLOCK_SIZE + key % BLOCK_SIZE;
                                let kr = &k[(slot * nkv + kvh) * hd..][..hd];
                                let d: f64 = qrow.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                                scores.push(d * scale);
                            }
                            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let mut sum = 0.0;
                            for sc in scores.iter_mut() {
                                *sc = (*sc - m).exp();
                                sum += *sc;
                            }
                            let oh = &mut o[h * hd..(h + 1) * hd];
                            for (key, p) in scores.iter().enumerate() {
                                let slot = s.blocks[key / BLOCK_SIZE] as usize * BLOCK_SIZE + key % BLOCK_SIZE;
                                let vr = &v[(slot * nkv + kvh) * hd..][..hd];
                                for (acc, x) in oh.iter_mut().zip(vr) {
                                    *acc += p * *x as f64;
                                }
                            }
                            for acc in oh.iter_mut() {
                                *acc /= sum;
                            }
                        }
                        res.push((row, o));
                    }
                    res
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    for (row, o) in results.into_iter().flatten() {
        out[row * nh * hd..(row + 1) * nh * hd].copy_from_slice(&o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_inv_freq_keeps_high_and_divides_low_frequencies() {
        let plain = rope_inv_freq(128, 500000.0, None);
        let scaled = rope_inv_freq(128, 500000.0, Some(LLAMA31_SCALING));
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() <= f32::EPSILON * plain[63]);
    }

    #[test]
    fn attention_of_one_key_returns_its_value() {
        let shape = AttnShape { num_heads: 2, num_kv_heads: 1, head_dim: 4 };
        let q = vec![1.0f32; 8];
        let mut k = vec![0.0f32; 16 * 4];
        let mut v = vec![0.0f32; 16 * 4];
        k[..4].copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        v[..4].copy_from_slice(&[5.0, 6.0, 7.0, 8.0]);
        let seqs = [RefSeq { q_start: 0, nq: 1, ctx: 1, blocks: vec![0] }];
        let out = paged_attention(&q, 8, &k, &v, shape, &seqs, 1);
        assert_eq!(out, vec![5.0, 6.0, 7.0, 8.0, 5.0, 6.0, 7.0, 8.0]);
    }
}
