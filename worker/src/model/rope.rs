//! Rotary position embeddings exactly as transformers computes them for Llama:
//! `inv_freq_i = 1 / θ^(2i/d)` in f32, optionally rescaled by the llama3 rule, angles
//! `pos · inv_freq` in f32, and rotate_half pairing (i, i + d/2).

use super::ModelConfig;

/// Per-pair inverse frequencies of a model (length head_dim / 2).
#[derive(Debug, Clone)]
pub struct RopeTable {
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim;
        let theta = cfg.rope_theta as f32;
        // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in f32.
        let mut inv: Vec<f32> = (0..d / 2).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32)).collect();
        if let Some(s) = &cfg.rope_scaling {
            let factor = s.factor as f32;
            let low_ff = s.low_freq_factor as f32;
            let high_ff = s.high_freq_factor as f32;
            let old_ctx = s.original_max_position_embeddings as f32;
            let low_wl = old_ctx / low_ff;
            let high_wl = old_ctx / high_ff;
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                let scaled = if wavelen > low_wl { *f / factor } else { *f };
                let medium = wavelen >= high_wl && wavelen <= low_wl;
                *f = if medium {
                    let smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                };
            }
        }
        RopeTable { inv_freq: inv }
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin of every pair's angle at `pos`, written into `cos`/`sin` (len half_dim).
    pub fn angles(&self, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
        let p = pos as f32;
        for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let a = p * f;
            *c = (a as f64).cos() as f32;
            *s = (a as f64).sin() as f32;
        }
    }
}

/// Rotates one head vector in place with precomputed cos/sin of its position.
#[inline]
pub fn apply_rotary(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = x.split_at_mut(half);
    for i in 0..half {
        let a = lo[i];
        let b = hi[i];
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Llama3RopeScaling;

    fn cfg(scaling: bool) -> ModelConfig {
        ModelConfig {
            architecture: "LlamaForCausalLM".into(),
            hidden_size: 3072,
            intermediate_size: 9216,
            num_layers: 1,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: scaling.then_some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            torch_dtype: None,
            name_or_path: None,
        }
    }

    #[test]
    fn llama3_keeps_high_freqs_divides_low_and_blends_the_middle() {
        let plain = RopeTable::new(&cfg(false));
        let scaled = RopeTable::new(&cfg(true));
        // Highest frequency (wavelength 2π < 8192/4): unchanged.
        assert_eq!(plain.inv_freq()[0], scaled.inv_freq()[0]);
        // Lowest frequency (wavelength > 8192): divided by the factor.
        let last = plain.half_dim() - 1;
        assert!((scaled.inv_freq()[last] - plain.inv_freq()[last] / 8.0).abs() <= f32::EPSILON * plain.inv_freq()[last]);
        // Somewhere in between lies strictly between the two.
        let mid = (0..plain.half_dim())
            .find(|&i| {
                let wl = 2.0 * std::f32::consts::PI / plain.inv_freq()[i];
                wl > 2048.0 && wl < 8192.0
            })
            .unwrap();
        let (p, s) = (plain.inv_freq()[mid], scaled.inv_freq()[mid]);
        assert!(s < p && s > p / 8.0);
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let t = RopeTable::new(&cfg(true));
        let mut c = vec![0.0; 64];
        let mut s = vec![0.0; 64];
        t.angles(0, &mut c, &mut s);
        let orig: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut x = orig.clone();
        apply_rotary(&mut x, &c, &s);
        assert_eq!(x, orig);
        t.angles(1234, &mut c, &mut s);
        apply_rotary(&mut x, &c, &s);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3 * n0);
        assert_ne!(x, orig);
    }
}
