//! Deterministic random weights for `gen-model`: our own generator (SplitMix64 seeding +
//! xoshiro256** + Box-Muller) so the bytes of a model depend only on (seed, tensor name,
//! shape) — forever, on any machine, at any thread count.
//!
//! Scales: an untrained model at the usual 0.02 init has near-uniform logits (top-1/top-2
//! gaps far below 0.02 everywhere), which makes greedy parity meaningless. Here every
//! projection has unit-gain scale (std 1/√fan_in) and the lm_head gives logits of std ≈ 4,
//! so the gap between the two best of 128k logits is typically ≈ 0.8 (measured on `tiny`:
//! median 0.64, about 3% of steps below 0.02). With tied embeddings the embedding *is* the
//! lm_head, so it gets the lm_head's scale (4/√hidden): at std 1 the logits would have
//! std ≈ √hidden and the model would only ever repeat its input token (measured: argmax =
//! input at 100% of positions, top-1 logprob ≈ 0), which makes greedy parity vacuous.

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

const CHUNK: usize = 1 << 16;

struct Xoshiro256 {
    s: [u64; 4],
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        Xoshiro256 { s: [splitmix(&mut x), splitmix(&mut x), splitmix(&mut x), splitmix(&mut x)] }
    }

    fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// N(mean, std²).
    Normal { mean: f32, std: f32 },
}

/// Standard deviation of the logits the output projection produces.
pub const LOGIT_STD: f32 = 4.0;

/// The init of a Llama tensor by name (`tied`: the embedding doubles as the lm_head).
pub fn init_for(name: &str, shape: &[usize], hidden: usize, tied: bool) -> Init {
    let fan_in = shape.get(1).copied().unwrap_or(1) as f32;
    let head_std = LOGIT_STD / (hidden as f32).sqrt();
    if name.ends_with("norm.weight") {
        Init::Normal { mean: 1.0, std: 0.1 }
    } else if name == "model.embed_tokens.weight" {
        Init::Normal { mean: 0.0, std: if tied { head_std } else { 1.0 } }
    } else if name == "lm_head.weight" {
        Init::Normal { mean: 0.0, std: head_std }
    } else {
        Init::Normal { mean: 0.0, std: 1.0 / fan_in.sqrt() }
    }
}

/// Fills `out` with `numel` values of tensor `name` under `seed`.
pub fn generate(seed: u64, name: &str, numel: usize, init: Init, out: &mut Vec<f32>) {
    out.clear();
    out.resize(numel, 0.0);
    let key = seed ^ xxh3_64(name.as_bytes());
    let Init::Normal { mean, std } = init;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = Xoshiro256::new(key ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut i = 0;
        while i < chunk.len() {
            let (u1, u2) = (rng.uniform(), rng.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            chunk[i] = mean + std * (r * th.cos()) as f32;
            if i + 1 < chunk.len() {
                chunk[i + 1] = mean + std * (r * th.sin()) as f32;
            }
            i += 2;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_roughly_normal() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate(7, "x", 200_001, Init::Normal { mean: 0.0, std: 2.0 }, &mut a);
        generate(7, "x", 200_001, Init::Normal { mean: 0.0, std: 2.0 }, &mut b);
        assert_eq!(a, b);
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.02 && (var.sqrt() - 2.0).abs() < 0.02, "mean {mean} std {}", var.sqrt());
        generate(8, "x", 10, Init::Normal { mean: 0.0, std: 1.0 }, &mut b);
        assert_ne!(a[..10], b[..10]);
    }
}
