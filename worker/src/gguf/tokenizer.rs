//! Rebuilds a Hugging Face `tokenizer.json` from a GGUF's `tokenizer.ggml.*` metadata, the
//! way transformers' GGUF loader does for byte-level BPE (`gpt2`) vocabularies: BPE over the
//! vocab and merges, ByteLevel pre-tokenizer (regex on, no prefix space) and decoder,
//! control tokens as special added tokens, BOS only when `add_bos_token` says so.

use serde_json::{Map, Value as Json, json};

use super::{GgufError, GgufFile, Value};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn meta_err(g: &GgufFile, m: impl Into<String>) -> GgufError {
    GgufError { path: g.path.clone(), message: m.into() }
}

/// The tokenizer.json text for a GGUF's vocabulary.
pub fn tokenizer_json(g: &GgufFile) -> Result<Json, GgufError> {
    let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(meta_err(g, format!("tokenizer.ggml.model = \"{model}\": only byte-level BPE (gpt2) vocabularies can be rebuilt")));
    }
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| meta_err(g, "missing tokenizer.ggml.tokens"))?
        .iter()
        .map(|v| v.as_str().ok_or_else(|| meta_err(g, "tokenizer.ggml.tokens holds a non-string")))
        .collect::<Result<_, _>>()?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| if let Value::I64(i) = v { *i } else { v.as_u64().unwrap_or(1) as i64 }).collect(),
        None => vec![1; tokens.len()],
    };
    let merges: Vec<Json> = g
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| meta_err(g, "missing tokenizer.ggml.merges"))?
        .iter()
        .map(|v| {
            let s = v.as_str().ok_or_else(|| meta_err(g, "tokenizer.ggml.merges holds a non-string"))?;
            let (a, b) = s.split_once(' ').ok_or_else(|| meta_err(g, format!("merge `{s}` is not two space-separated parts")))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_, GgufError>>()?;

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert((*t).to_string(), json!(i));
        let ty = types.get(i).copied().unwrap_or(1);
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == TOKEN_TYPE_USER_DEFINED, "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let bos = g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64);
    let post_processor = match (add_bos, bos) {
        (true, Some(b)) => {
            let bos_tok =
                tokens.get(b as usize).copied().ok_or_else(|| meta_err(g, format!("bos_token_id {b} is not in the vocabulary")))?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_tok: {"id": bos_tok, "ids": [b], "tokens": [bos_tok]}},
            })
        }
        _ => json!({
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        }),
    };
    let add_prefix_space = g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(false);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}
