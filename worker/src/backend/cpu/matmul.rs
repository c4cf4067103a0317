//! `out[T×N] = x[T×K] · Wᵀ` with W an `[N, K]` weight kept in its checkpoint dtype.
//!
//! Work is split over panels of weight rows (rayon); each panel is widened to f32 once into
//! a per-thread scratch buffer and then multiplied with every token in 4-row × 3-token
//! register tiles. Every output element is one canonical-order dot product (see
//! [`super::simd`]), so the tiling never changes a value.

use rayon::prelude::*;

use super::simd::{self, DIRECT_ROWS, RowType, TILE_ROWS, TILE_TOKENS};
use crate::model::{DType, TensorRef};

/// Weight rows widened per task. 16 rows × K floats stay in L2 for K up to ~16k.
const PANEL_ROWS: usize = 16;

/// A 2-D weight `[rows, cols]` in memory-mapped checkpoint bytes.
#[derive(Debug, Clone)]
pub struct WeightMatrix {
    pub rows: usize,
    pub cols: usize,
    tensor: TensorRef,
}

impl WeightMatrix {
    /// Wraps a 2-D tensor. The caller has checked its shape against the config.
    pub fn new(tensor: TensorRef) -> Self {
        let rows = tensor.shape.first().copied().unwrap_or(0);
        let cols = tensor.shape.get(1).copied().unwrap_or(0);
        WeightMatrix { rows, cols, tensor }
    }

    pub fn dtype(&self) -> DType {
        self.tensor.dtype
    }

    /// The raw row-major little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        self.tensor.bytes()
    }

    /// Widens rows `[r0, r0 + n)` into `dst` (`n * cols` floats).
    pub fn rows_to_f32(&self, r0: usize, n: usize, dst: &mut [f32]) {
        let es = self.tensor.dtype.size();
        let bytes = &self.tensor.bytes()[r0 * self.cols * es..(r0 + n) * self.cols * es];
        let dst = &mut dst[..n * self.cols];
        match self.tensor.dtype {
            DType::F16 => simd::f16_to_f32(bytes, dst),
            DType::BF16 => simd::bf16_to_f32(bytes, dst),
            DType::F32 => simd::le_f32(bytes, dst),
        }
    }
}

/// Up to this many tokens, weights are read directly (decode); beyond, panels are widened
/// once and reused across tokens (prefill).
const DIRECT_MAX_TOKENS: usize = 4;
/// Weight rows per task on the direct path.
const DIRECT_TASK_ROWS: usize = 64;

/// `out[t * N + n] = Σ_k x[t * K + k] · W[n, k]` for `t < tokens`.
pub fn matmul(x: &[f32], tokens: usize, w: &WeightMatrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() >= tokens * k && out.len() >= tokens * n, "matmul buffers too small");
    if tokens == 0 || n == 0 {
        return;
    }
    if tokens <= DIRECT_MAX_TOKENS {
        return matmul_direct(x, tokens, w, out);
    }
    let panels = n.div_ceil(PANEL_ROWS);
    // Each panel returns its [rows × tokens] results; they are scattered afterwards so no
    // two threads ever write the same output buffer.
    let results: Vec<Vec<f32>> = (0..panels)
        .into_par_iter()
        .map_init(Vec::new, |scratch: &mut Vec<f32>, p| {
            let r0 = p * PANEL_ROWS;
            let rows = PANEL_ROWS.min(n - r0);
            scratch.resize(PANEL_ROWS * k, 0.0);
            w.rows_to_f32(r0, rows, scratch);
            let mut res = vec![0.0f32; rows * tokens];
            panel_times_tokens(&scratch[..rows * k], rows, x, tokens, k, &mut res);
            res
        })
        .collect();
    scatter(&results, PANEL_ROWS, tokens, n, out);
}

/// Several products of the same activations (Q|K|V, gate|up) in one parallel region: on
/// the decode path a region costs about as much as a small matmul, so fusing them matters.
pub fn matmul_many(x: &[f32], tokens: usize, jobs: &mut [(&WeightMatrix, &mut [f32])]) {
    if tokens > DIRECT_MAX_TOKENS {
        for (w, out) in jobs.iter_mut() {
            matmul(x, tokens, w, out);
        }
        return;
    }
    let tasks: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, (w, _))| (0..w.rows.div_ceil(DIRECT_TASK_ROWS)).map(move |t| (j, t * DIRECT_TASK_ROWS)))
        .collect();
    for (w, out) in jobs.iter() {
        assert!(x.len() >= tokens * w.cols && out.len() >= tokens * w.rows, "matmul buffers too small");
    }
    let weights: Vec<&WeightMatrix> = jobs.iter().map(|(w, _)| *w).collect();
    let results: Vec<Vec<f32>> = tasks.par_iter().map(|&(j, r0)| direct_rows(x, tokens, weights[j], r0)).collect();
    for (&(j, r0), res) in tasks.iter().zip(&results) {
        let (w, out) = &mut jobs[j];
        for r in 0..res.len() / tokens {
            for t in 0..tokens {
                out[t * w.rows + r0 + r] = res[r * tokens + t];
            }
        }
    }
}

/// The decode path: every weight is read once, straight from the checkpoint bytes.
fn matmul_direct(x: &[f32], tokens: usize, w: &WeightMatrix, out: &mut [f32]) {
    let tasks = w.rows.div_ceil(DIRECT_TASK_ROWS);
    let results: Vec<Vec<f32>> = (0..tasks).into_par_iter().map(|task| direct_rows(x, tokens, w, task * DIRECT_TASK_ROWS)).collect();
    scatter(&results, DIRECT_TASK_ROWS, tokens, w.rows, out);
}

/// `[rows × tokens]` results of up to DIRECT_TASK_ROWS rows from `r0`.
fn direct_rows(x: &[f32], tokens: usize, w: &WeightMatrix, r0: usize) -> Vec<f32> {
    let (n, k) = (w.rows, w.cols);
    let ty = match w.dtype() {
        DType::F16 => RowType::F16,
        DType::BF16 => RowType::BF16,
        DType::F32 => RowType::F32,
    };
    let es = w.dtype().size();
    let bytes = w.bytes();
    let row = |r: usize| &bytes[r.min(n - 1) * k * es..][..k * es];
    let rows = DIRECT_TASK_ROWS.min(n - r0);
    let mut res = vec![0.0f32; rows * tokens];
    let mut r = 0;
    while r < rows {
        let g: [&[u8]; DIRECT_ROWS] = std::array::from_fn(|i| row(r0 + r + i));
        for t in 0..tokens {
            let d = simd::rows_dot(g, ty, &x[t * k..(t + 1) * k], k);
            for (dr, v) in d.iter().enumerate().take(rows - r) {
                res[(r + dr) * tokens + t] = *v;
            }
        }
        r += DIRECT_ROWS;
    }
    res
}

fn scatter(results: &[Vec<f32>], rows_per_task: usize, tokens: usize, n: usize, out: &mut [f32]) {
    for (p, res) in results.iter().enumerate() {
        let r0 = p * rows_per_task;
        for r in 0..res.len() / tokens {
            for t in 0..tokens {
                out[t * n + r0 + r] = res[r * tokens + t];
            }
        }
    }
}

/// `res[r * tokens + t] = dot(panel[r], x[t])` for a widened panel.
fn panel_times_tokens(panel: &[f32], rows: usize, x: &[f32], tokens: usize, k: usize, res: &mut [f32]) {
    let mut tile = [[0.0f32; TILE_TOKENS]; TILE_ROWS];
    let row = |r: usize| &panel[r.min(rows - 1) * k..][..k];
    let tok = |t: usize| &x[t.min(tokens - 1) * k..][..k];
    let mut t0 = 0;
    while t0 < tokens {
        let xs = [tok(t0), tok(t0 + 1), tok(t0 + 2)];
        let mut r0 = 0;
        while r0 < rows {
            simd::tile_dots([row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)], xs, k, &mut tile);
            for (dr, tr) in tile.iter().enumerate() {
                let r = r0 + dr;
                if r >= rows {
                    break;
                }
                for (dt, v) in tr.iter().enumerate() {
                    let t = t0 + dt;
                    if t < tokens {
                        res[r * tokens + t] = *v;
                    }
                }
            }
            r0 += TILE_ROWS;
        }
        t0 += TILE_TOKENS;
    }
}
