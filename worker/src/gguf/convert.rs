//! GGUF (Llama architecture) → Hugging Face directory: config.json,
//! generation_config.json, tokenizer.json and model.safetensors.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so each head's rotary
//! pairs are interleaved (`[h][i][2]` instead of HF's rotate_half `[h][2][i]`); we undo
//! that here, exactly as transformers' GGUF loader does.

use std::path::Path;

use serde_json::{Value as Json, json};

use super::{GgufError, GgufFile, TensorInfo, Value};
use crate::model::writer::{TensorSpec, encode_f32, write_checkpoint, write_json};
use crate::model::{DType, ModelConfig, ModelError, llama};

/// Conversion failures.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn err(g: &GgufFile, m: impl Into<String>) -> ConvertError {
    ConvertError::Gguf(GgufError { path: g.path.clone(), message: m.into() })
}

fn meta_u64(g: &GgufFile, key: &str) -> Result<u64, ConvertError> {
    g.get(key).and_then(Value::as_u64).ok_or_else(|| err(g, format!("missing or non-integer metadata `{key}`")))
}

/// The HF config.json equivalent of a llama GGUF's metadata.
pub fn config_json(g: &GgufFile, torch_dtype: &str) -> Result<Json, ConvertError> {
    let arch = g.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if arch != "llama" {
        return Err(err(g, format!("general.architecture = \"{arch}\": only llama is supported")));
    }
    if g.tensor("rope_freqs.weight").is_some() || g.get("llama.rope.scaling.type").and_then(Value::as_str).is_some_and(|t| t != "none") {
        return Err(err(g, "unsupported: rope scaling in GGUF (rope_freqs / llama.rope.scaling.*) cannot be mapped to a config yet"));
    }
    let hidden = meta_u64(g, "llama.embedding_length")?;
    let heads = meta_u64(g, "llama.attention.head_count")?;
    let kv_heads = g.get("llama.attention.head_count_kv").and_then(Value::as_u64).unwrap_or(heads);
    let head_dim = g
        .get("llama.attention.key_length")
        .or_else(|| g.get("llama.rope.dimension_count"))
        .and_then(Value::as_u64)
        .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
    let vocab = match g.get("llama.vocab_size").and_then(Value::as_u64) {
        Some(v) => v,
        None => g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len() as u64).ok_or_else(|| err(g, "no vocab size"))?,
    };
    let tied = g.tensor("output.weight").is_none();
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": g.get("general.name").and_then(Value::as_str).unwrap_or("gguf-model"),
        "hidden_size": hidden,
        "intermediate_size": meta_u64(g, "llama.feed_forward_length")?,
        "num_hidden_layers": meta_u64(g, "llama.block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": g.get("llama.attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
        "rope_theta": g.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0),
        "rope_scaling": null,
        "max_position_embeddings": g.get("llama.context_length").and_then(Value::as_u64).unwrap_or(2048),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": torch_dtype,
    });
    if let Some(b) = g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64) {
        cfg["bos_token_id"] = json!(b);
    }
    if let Some(e) = g.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
        cfg["eos_token_id"] = json!(e);
    }
    Ok(cfg)
}

/// The GGUF tensor that holds an HF tensor, and whether its rows need un-permuting
/// (`Some(heads)`).
fn source_of(hf: &str, cfg: &ModelConfig) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let (g, perm) = match name {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(cfg.num_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(cfg.num_kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{g}"), perm))
}

/// Undoes llama.cpp's Q/K row permutation: GGUF row `h·d + 2i + j` is HF row
/// `h·d + j·d/2 + i`, for a `[heads·d, cols]` matrix.
pub fn unpermute_rows(src: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = src.len() / cols;
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; src.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = h * d + 2 * i + j;
                let to = h * d + j * half + i;
                out[to * cols..(to + 1) * cols].copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Writes the HF directory for `g` into `outdir`. `on_bytes` reports progress.
pub fn convert(g: &GgufFile, outdir: &Path, dtype: DType, on_bytes: impl FnMut(u64)) -> Result<(), ConvertError> {
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
    };
    std::fs::create_dir_all(outdir).map_err(|e| ModelError::io(outdir, e))?;
    let cfg_json = config_json(g, torch_dtype)?;
    let cfg_path = outdir.join("config.json");
    let cfg = ModelConfig::parse(&cfg_json.to_string(), &cfg_path)?;
    let tok = super::tokenizer::tokenizer_json(g)?;
    write_json(&cfg_path, &cfg_json)?;
    let mut gen_cfg = json!({"do_sample": false});
    if let Some(b) = cfg.bos_token_id {
        gen_cfg["bos_token_id"] = json!(b);
    }
    if let Some(e) = cfg.eos_token_ids.first() {
        gen_cfg["eos_token_id"] = json!(e);
    }
    write_json(&outdir.join("generation_config.json"), &gen_cfg)?;
    write_json(&outdir.join("tokenizer.json"), &tok)?;

    let manifest = llama::tensor_manifest(&cfg);
    let mut sources: Vec<(&TensorInfo, Option<usize>)> = Vec::with_capacity(manifest.len());
    for (name, shape) in &manifest {
        let (gname, perm) = source_of(name, &cfg).ok_or_else(|| err(g, format!("internal: no GGUF name for `{name}`")))?;
        let t = g.tensor(&gname).ok_or_else(|| err(g, format!("missing tensor `{gname}` (for {name})")))?;
        if t.torch_shape() != *shape {
            return Err(err(g, format!("tensor `{gname}` has shape {:?}, expected {shape:?} for {name}", t.torch_shape())));
        }
        sources.push((t, perm));
    }
    let specs: Vec<TensorSpec> = manifest.into_iter().map(|(name, shape)| TensorSpec { name, dtype, shape }).collect();
    write_checkpoint(
        outdir,
        &specs,
        u64::MAX,
        |i, spec, buf| {
            let (t, perm) = sources[i];
            let mut values = g.dequantize(t);
            if let Some(heads) = perm {
                values = unpermute_rows(&values, heads, spec.shape[1]);
            }
            encode_f32(&values, spec.dtype, buf);
            Ok(())
        },
        on_bytes,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, d, cols) = (2usize, 8usize, 3usize);
        let orig: Vec<f32> = (0..heads * d * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0.0; orig.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + j * (d / 2) + i; // [h][j][i]
                    let dst = h * d + i * 2 + j; // [h][i][j]
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&orig[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, heads, cols), orig);
    }
}
