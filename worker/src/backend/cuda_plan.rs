//! Host-side memory planning of the CUDA backend: how many bytes the weights, the step
//! buffers and one KV block take, and how many blocks fit. Pure arithmetic, so it is
//! unit-tested in CI without a GPU.

use crate::backend::BLOCK_SIZE;
use crate::model::ModelConfig;

/// Most alternatives per sampled row the device sampler writes.
pub const TOP_LOGPROBS_STRIDE: usize = 20;

/// Sizes of one step's device buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCapacity {
    /// Most tokens in one step (the scheduler's token budget).
    pub max_tokens: usize,
    /// Most sequences in one step (and sampled rows).
    pub max_seqs: usize,
    /// Longest context: sets the block-table width.
    pub max_context: usize,
}

impl StepCapacity {
    pub fn max_blocks_per_seq(&self) -> usize {
        self.max_context.div_ceil(BLOCK_SIZE).max(1)
    }
}

/// Bytes of bf16 weights on the device (QKV and gate/up fused; a tied head is not stored twice).
pub fn weight_bytes(c: &ModelConfig) -> usize {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let per_layer = 2 * h + (q + 2 * kv) * h + h * q + 2 * i * h + h * i;
    let head = if c.tie_word_embeddings { 0 } else { v * h };
    2 * (v * h + c.num_layers * per_layer + h + head)
}

/// Bytes of K and V for one block across all layers (bf16).
pub fn kv_bytes_per_block(c: &ModelConfig) -> usize {
    2 * c.num_layers * BLOCK_SIZE * c.num_kv_heads * c.head_dim * 2
}

/// Bytes of the step buffers at `cap`: activations sized for `max_tokens`, logits and
/// sampler scratch for `max_seqs` rows, tables, and the split-KV decode workspace.
pub fn activation_bytes(c: &ModelConfig, cap: &StepCapacity) -> usize {
    let (t, s, h, i, v) = (cap.max_tokens, cap.max_seqs, c.hidden_size, c.intermediate_size, c.vocab_size);
    let q = c.num_heads * c.head_dim;
    let qkv = q + 2 * c.num_kv_heads * c.head_dim;
    let bf16_elems = t * (h + qkv + q + h + 2 * i + i) + s * h;
    // Logits and sampler scratch, top-n outputs, and the sampler's per-4096-id partials (f32
    // max + f64 sum + u64 argmax key: 5 words each).
    let f32_elems = t * h + 2 * s * v + s * TOP_LOGPROBS_STRIDE + s + 5 * s * v.div_ceil(4096);
    let ints = 3 * t + 2 * s + 1 + s * cap.max_blocks_per_seq() + s * (TOP_LOGPROBS_STRIDE + 1);
    // Split-KV workspace: at most DECODE_MAX splits of 64 tokens per sequence and head.
    let splits = cap.max_context.div_ceil(64).max(1);
    let workspace = s * c.num_heads * splits * (c.head_dim + 2);
    2 * bf16_elems + 4 * (f32_elems + ints + workspace)
}

/// The KV pool a device can give after weights and step buffers, at `fraction` of its
/// `total` memory, when `free` bytes are free now (weights and buffers already allocated).
/// `None` when not even one block fits.
pub fn kv_blocks_for(c: &ModelConfig, total: usize, free: usize, fraction: f64) -> Option<usize> {
    let reserve = ((1.0 - fraction.clamp(0.0, 1.0)) * total as f64) as usize;
    let usable = free.checked_sub(reserve)?;
    let blocks = usable / kv_bytes_per_block(c).max(1);
    (blocks > 0).then_some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Llama3RopeScaling;

    fn minitron() -> ModelConfig {
        ModelConfig {
            architecture: "LlamaForCausalLM".into(),
            hidden_size: 3072,
            intermediate_size: 9216,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 128256,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001],
            torch_dtype: None,
            name_or_path: None,
        }
    }

    #[test]
    fn minitron_numbers_match_the_design_facts() {
        let c = minitron();
        // 4.51 B parameters, 9.03 GB bf16.
        let w = weight_bytes(&c);
        assert!((9.0e9..9.06e9).contains(&(w as f64)), "{w}");
        // 128 KiB of KV per token.
        assert_eq!(kv_bytes_per_block(&c), 16 * 128 * 1024);
    }

    #[test]
    fn kv_pool_respects_the_fraction() {
        let c = minitron();
        let gib = 1usize << 30;
        // 80 GiB card, 60 GiB free after weights/buffers, 90%: 52 GiB usable = 26624 blocks of 2 MiB.
        assert_eq!(kv_blocks_for(&c, 80 * gib, 60 * gib, 0.9), Some(26624));
        assert_eq!(kv_blocks_for(&c, 80 * gib, 4 * gib, 0.9), None);
        let cap = StepCapacity { max_tokens: 8192, max_seqs: 256, max_context: 8192 };
        let a = activation_bytes(&c, &cap);
        assert!(a > 500 << 20 && a < 4 << 30, "{a}");
    }
}
