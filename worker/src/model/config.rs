//! `config.json` (+ `generation_config.json`) of a Llama-3.1-family Hugging Face checkpoint.
//!
//! Parsing goes through `serde_json::Value` by hand instead of a derived struct so every
//! problem is reported with the file, the key and what was wrong, and so anything we do not
//! implement (another rope type, attention bias, another activation) is refused by name
//! rather than silently ignored.

use std::path::Path;

use serde_json::{Map, Value};

use super::ModelError;

/// llama3 rope scaling parameters (transformers `_compute_llama3_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The architecture numbers the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Default stop ids: generation_config.json's when present, else config.json's.
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` as written (informational; tensors carry their own dtype).
    pub torch_dtype: Option<String>,
    /// `_name_or_path` when present.
    pub name_or_path: Option<String>,
}

const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM"];

impl ModelConfig {
    /// Reads `dir/config.json` and, when present, `dir/generation_config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut cfg = Self::parse(&text, &path)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let text = std::fs::read_to_string(&gen_path).map_err(|e| ModelError::io(&gen_path, e))?;
            cfg.apply_generation_config(&text, &gen_path)?;
        }
        Ok(cfg)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::invalid(path, format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| ModelError::invalid(path, "top level is not a JSON object"))?;
        let f = Fields { obj, path };

        let architecture = match obj.get("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => {
                let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                match names.iter().find(|n| SUPPORTED_ARCHITECTURES.contains(n)) {
                    Some(n) => (*n).to_string(),
                    None => {
                        return Err(ModelError::unsupported(
                            path,
                            format!("architectures {names:?}: only {SUPPORTED_ARCHITECTURES:?} is supported"),
                        ));
                    }
                }
            }
            _ => match obj.get("model_type").and_then(Value::as_str) {
                Some("llama") => "LlamaForCausalLM".to_string(),
                Some(other) => {
                    return Err(ModelError::unsupported(path, format!("model_type \"{other}\"; only llama is supported")));
                }
                None => {
                    return Err(ModelError::invalid(path, "neither `architectures` nor `model_type` is given"));
                }
            },
        };
        if let Some(mt) = obj.get("model_type").and_then(Value::as_str)
            && mt != "llama"
        {
            return Err(ModelError::unsupported(path, format!("model_type \"{mt}\"; only llama is supported")));
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(ModelError::unsupported(path, format!("hidden_act \"{act}\"; only silu is supported")));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if f.opt_bool(key)? == Some(true) {
                return Err(ModelError::unsupported(path, format!("`{key}: true` (biases are not implemented)")));
            }
        }

        let hidden_size = f.req_usize("hidden_size")?;
        let num_heads = f.req_usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if num_heads == 0 || hidden_size % num_heads != 0 {
                    return Err(ModelError::invalid(
                        path,
                        "hidden_size is not a multiple of num_attention_heads and head_dim is not given",
                    ));
                }
                hidden_size / num_heads
            }
        };
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: f.req_usize("intermediate_size")?,
            num_layers: f.req_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: f.req_usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta: f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            rope_scaling: parse_rope_scaling(obj.get("rope_scaling"), path)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: f.opt_token_id("bos_token_id")?,
            eos_token_ids: f.token_id_list("eos_token_id")?,
            torch_dtype: obj.get("torch_dtype").and_then(Value::as_str).map(str::to_string),
            name_or_path: obj.get("_name_or_path").and_then(Value::as_str).map(str::to_string),
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Overrides bos/eos from generation_config.json (what transformers' generate uses).
    pub fn apply_generation_config(&mut self, text: &str, path: &Path) -> Result<(), ModelError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::invalid(path, format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| ModelError::invalid(path, "top level is not a JSON object"))?;
        let f = Fields { obj, path };
        let eos = f.token_id_list("eos_token_id")?;
        if !eos.is_empty() {
            self.eos_token_ids = eos;
        }
        if let Some(bos) = f.opt_token_id("bos_token_id")? {
            self.bos_token_id = Some(bos);
        }
        for id in &self.eos_token_ids {
            if *id as usize >= self.vocab_size {
                return Err(ModelError::invalid(path, format!("eos_token_id {id} >= vocab_size {}", self.vocab_size)));
            }
        }
        Ok(())
    }

    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::invalid(path, format!("{name} must be > 0")));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ModelError::invalid(
                path,
                format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_heads, self.num_kv_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::invalid(path, format!("head_dim {} must be even for rotary embeddings", self.head_dim)));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(ModelError::invalid(path, "vocab_size does not fit u32 token ids"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(ModelError::invalid(path, "rms_norm_eps must be a positive number"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::invalid(path, "rope_theta must be a positive number"));
        }
        for id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if *id as usize >= self.vocab_size {
                return Err(ModelError::invalid(path, format!("special token id {id} >= vocab_size {}", self.vocab_size)));
            }
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn gqa_group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

fn parse_rope_scaling(v: Option<&Value>, path: &Path) -> Result<Option<Llama3RopeScaling>, ModelError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ModelError::invalid(path, "rope_scaling must be an object or null"));
        }
    };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = Fields { obj, path };
            let get = |k: &str| -> Result<f64, ModelError> {
                f.opt_f64(k)?.ok_or_else(|| ModelError::invalid(path, format!("rope_scaling.{k} is required for llama3 rope")))
            };
            let s = Llama3RopeScaling {
                factor: get("factor")?,
                low_freq_factor: get("low_freq_factor")?,
                high_freq_factor: get("high_freq_factor")?,
                original_max_position_embeddings: get("original_max_position_embeddings")?,
            };
            if !(s.factor > 0.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.original_max_position_embeddings > 0.0)
            {
                return Err(ModelError::invalid(
                    path,
                    "rope_scaling: need factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0",
                ));
            }
            Ok(Some(s))
        }
        other => Err(ModelError::unsupported(path, format!("rope_scaling type \"{other}\"; only llama3 or none is supported"))),
    }
}

/// Typed access to a JSON object's keys with errors that name the key.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn req_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::invalid(self.path, format!("missing required key `{key}`")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| ModelError::invalid(self.path, format!("`{key}` must be a non-negative integer, got {v}"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelError::invalid(self.path, format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| ModelError::invalid(self.path, format!("`{key}` must be true or false, got {v}")))
            }
        }
    }

    fn opt_token_id(&self, key: &str) -> Result<Option<u32>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                as_token_id(v).map(Some).ok_or_else(|| ModelError::invalid(self.path, format!("`{key}` must be a token id, got {v}")))
            }
        }
    }

    /// A token id or a list of them (eos_token_id may be either).
    fn token_id_list(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        let bad = |v: &Value| ModelError::invalid(self.path, format!("`{key}` must be a token id or a list of token ids, got {v}"));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| as_token_id(v).ok_or_else(|| bad(v))).collect(),
            Some(v) => as_token_id(v).map(|id| vec![id]).ok_or_else(|| bad(v)),
        }
    }
}

fn as_token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minitron_json() -> String {
        r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":3072,"intermediate_size":9216,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":128,"vocab_size":128256,
        "rms_norm_eps":1e-5,"rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},"max_position_embeddings":131072,
        "tie_word_embeddings":false,"bos_token_id":128000,"eos_token_id":128001,"torch_dtype":"bfloat16","hidden_act":"silu"}"#
            .to_string()
    }

    #[test]
    fn parses_minitron_with_explicit_head_dim() {
        let c = ModelConfig::parse(&minitron_json(), Path::new("config.json")).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.gqa_group(), 4);
        assert_eq!(c.eos_token_ids, vec![128001]);
        assert_eq!(c.rope_scaling.as_ref().unwrap().factor, 8.0);
    }

    #[test]
    fn eos_list_and_generation_config_override() {
        let mut c =
            ModelConfig::parse(&minitron_json().replace("\"eos_token_id\":128001", "\"eos_token_id\":[128001,128009]"), Path::new("c"))
                .unwrap();
        assert_eq!(c.eos_token_ids, vec![128001, 128009]);
        c.apply_generation_config(r#"{"eos_token_id":[128008]}"#, Path::new("g")).unwrap();
        assert_eq!(c.eos_token_ids, vec![128008]);
    }

    #[test]
    fn refuses_unsupported_things_by_name() {
        let cases = [
            (minitron_json().replace("\"rope_type\":\"llama3\"", "\"rope_type\":\"yarn\""), "yarn"),
            (minitron_json().replace("LlamaForCausalLM", "MixtralForCausalLM"), "MixtralForCausalLM"),
            (minitron_json().replace("\"hidden_act\":\"silu\"", "\"hidden_act\":\"gelu\""), "gelu"),
            (minitron_json().replace("\"num_key_value_heads\":8", "\"num_key_value_heads\":5"), "multiple"),
            (minitron_json().replace("\"hidden_size\":3072,", ""), "hidden_size"),
            (minitron_json().replace("\"vocab_size\":128256", "\"vocab_size\":\"big\""), "vocab_size"),
            ("[1,2]".to_string(), "object"),
            ("{".to_string(), "JSON"),
        ];
        for (text, needle) in cases {
            let err = ModelConfig::parse(&text, Path::new("/m/config.json")).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
            assert!(err.contains("/m/config.json"), "{err} should name the file");
        }
    }
}
