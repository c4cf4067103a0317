//! Writes a model directory with deterministic random weights of a preset architecture
//! (`tokenfleet-worker gen-model`; also used by tests to make their models).

use std::path::Path;

use super::presets::{LLAMA31_TOKENIZER_JSON, Preset};
use super::random_init::{generate, init_for};
use super::writer::{TensorSpec, encode_f32, write_checkpoint, write_json};
use super::{DType, ModelConfig, ModelError, llama};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenModelSpec<'a> {
    pub preset: &'a Preset,
    pub layers: usize,
    pub seed: u64,
    pub dtype: DType,
    /// Largest shard in bytes (more ⇒ sharded with an index).
    pub max_shard_bytes: u64,
}

/// Total bytes of weights `spec` produces.
pub fn weight_bytes(spec: &GenModelSpec, cfg: &ModelConfig) -> u64 {
    llama::tensor_manifest(cfg).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * spec.dtype.size() as u64).sum()
}

/// The config of a spec.
pub fn spec_config(spec: &GenModelSpec, outdir: &Path) -> Result<(serde_json::Value, ModelConfig), ModelError> {
    let torch_dtype = match spec.dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
    };
    let json = spec.preset.config_json(spec.layers, torch_dtype);
    let cfg = ModelConfig::parse(&json.to_string(), &outdir.join("config.json"))?;
    Ok((json, cfg))
}

/// Writes config.json, generation_config.json, tokenizer.json and the weights.
pub fn write_random_model(spec: &GenModelSpec, outdir: &Path, mut on_bytes: impl FnMut(u64)) -> Result<ModelConfig, ModelError> {
    std::fs::create_dir_all(outdir).map_err(|e| ModelError::io(outdir, e))?;
    let (json, cfg) = spec_config(spec, outdir)?;
    write_json(&outdir.join("config.json"), &json)?;
    write_json(&outdir.join("generation_config.json"), &spec.preset.generation_config_json())?;
    let tok = outdir.join("tokenizer.json");
    std::fs::write(&tok, LLAMA31_TOKENIZER_JSON).map_err(|e| ModelError::io(&tok, e))?;
    let specs: Vec<TensorSpec> =
        llama::tensor_manifest(&cfg).into_iter().map(|(name, shape)| TensorSpec { name, dtype: spec.dtype, shape }).collect();
    let mut values = Vec::new();
    write_checkpoint(
        outdir,
        &specs,
        spec.max_shard_bytes,
        |_, t, buf| {
            let numel = t.shape.iter().product();
            generate(spec.seed, &t.name, numel, init_for(&t.name, &t.shape, cfg.hidden_size, cfg.tie_word_embeddings), &mut values);
            encode_f32(&values, t.dtype, buf);
            Ok(())
        },
        &mut on_bytes,
    )?;
    Ok(cfg)
}
