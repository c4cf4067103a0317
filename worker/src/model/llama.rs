//! The tensors of a Llama model, bound by name and checked against the config's shapes.

use super::{Checkpoint, ModelConfig, ModelError, TensorRef};

/// One decoder layer's parameters (HF names under `model.layers.{i}.`).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: TensorRef,
    pub q_proj: TensorRef,
    pub k_proj: TensorRef,
    pub v_proj: TensorRef,
    pub o_proj: TensorRef,
    pub post_attn_norm: TensorRef,
    pub gate_proj: TensorRef,
    pub up_proj: TensorRef,
    pub down_proj: TensorRef,
}

/// Every parameter of the model.
#[derive(Debug, Clone)]
pub struct LlamaWeights {
    pub embed_tokens: TensorRef,
    pub layers: Vec<LayerWeights>,
    pub final_norm: TensorRef,
    /// `lm_head.weight`, or the embedding when the config ties them.
    pub lm_head: TensorRef,
}

impl LlamaWeights {
    /// Finds every tensor the config implies and checks its shape.
    pub fn bind(cfg: &ModelConfig, ck: &Checkpoint) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        let i = cfg.intermediate_size;
        let embed_tokens = ck.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            layers.push(LayerWeights {
                input_norm: ck.get(&p("input_layernorm.weight"), &[h])?,
                q_proj: ck.get(&p("self_attn.q_proj.weight"), &[q, h])?,
                k_proj: ck.get(&p("self_attn.k_proj.weight"), &[kv, h])?,
                v_proj: ck.get(&p("self_attn.v_proj.weight"), &[kv, h])?,
                o_proj: ck.get(&p("self_attn.o_proj.weight"), &[h, q])?,
                post_attn_norm: ck.get(&p("post_attention_layernorm.weight"), &[h])?,
                gate_proj: ck.get(&p("mlp.gate_proj.weight"), &[i, h])?,
                up_proj: ck.get(&p("mlp.up_proj.weight"), &[i, h])?,
                down_proj: ck.get(&p("mlp.down_proj.weight"), &[h, i])?,
            });
        }
        let final_norm = ck.get("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings { embed_tokens.clone() } else { ck.get("lm_head.weight", &[cfg.vocab_size, h])? };
        Ok(LlamaWeights { embed_tokens, layers, final_norm, lm_head })
    }
}

/// The names and shapes of every tensor of a Llama checkpoint, in file order (what
/// `gen-model` and `convert-gguf` write).
pub fn tensor_manifest(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let q = cfg.num_heads * cfg.head_dim;
    let kv = cfg.num_kv_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        out.push((p("input_layernorm.weight"), vec![h]));
        out.push((p("self_attn.q_proj.weight"), vec![q, h]));
        out.push((p("self_attn.k_proj.weight"), vec![kv, h]));
        out.push((p("self_attn.v_proj.weight"), vec![kv, h]));
        out.push((p("self_attn.o_proj.weight"), vec![h, q]));
        out.push((p("post_attention_layernorm.weight"), vec![h]));
        out.push((p("mlp.gate_proj.weight"), vec![i, h]));
        out.push((p("mlp.up_proj.weight"), vec![i, h]));
        out.push((p("mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}
