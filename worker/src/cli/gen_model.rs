//! `gen-model`: deterministic random weights of an exact architecture.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::model::presets::{LLAMA31_TOKENIZER_JSON, PRESETS, Preset};
use crate::model::random_init::{generate, init_for};
use crate::model::writer::{TensorSpec, encode_f32, write_checkpoint, write_json};
use crate::model::{DType, ModelConfig, llama};

#[derive(Debug, Args)]
pub struct GenModelArgs {
    /// Architecture preset: minitron-4b, tiny, tiny-tied.
    #[arg(long)]
    preset: String,
    /// Override the number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight dtype: bf16 (default, like Minitron), f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Split into shards of at most this many MiB (with model.safetensors.index.json).
    #[arg(long, default_value_t = 5120)]
    shard_mib: u64,
    /// Output directory.
    outdir: PathBuf,
}

pub fn run(a: GenModelArgs) -> anyhow::Result<()> {
    let Some(preset) = Preset::find(&a.preset) else {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        bail!("unknown preset `{}`; choose one of {names:?}", a.preset);
    };
    let Some(dtype) = DType::parse(&a.dtype) else {
        bail!("unknown --dtype `{}`; use bf16, f16 or f32", a.dtype)
    };
    let layers = a.layers.unwrap_or(preset.layers);
    if layers == 0 {
        bail!("--layers must be at least 1");
    }
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
    };
    std::fs::create_dir_all(&a.outdir)
        .with_context(|| format!("creating {}", a.outdir.display()))?;
    let config = preset.config_json(layers, torch_dtype);
    write_json(&a.outdir.join("config.json"), &config)?;
    write_json(
        &a.outdir.join("generation_config.json"),
        &preset.generation_config_json(),
    )?;
    std::fs::write(a.outdir.join("tokenizer.json"), LLAMA31_TOKENIZER_JSON)
        .context("writing tokenizer.json")?;
    let cfg = ModelConfig::parse(&config.to_string(), &a.outdir.join("config.json"))?;

    let specs: Vec<TensorSpec> = llama::tensor_manifest(&cfg)
        .into_iter()
        .map(|(name, shape)| TensorSpec { name, dtype, shape })
        .collect();
    let total: u64 = specs.iter().map(TensorSpec::nbytes).sum();
    let pb = super::progress_bar(total, "gen-model");
    let mut values = Vec::new();
    write_checkpoint(
        &a.outdir,
        &specs,
        a.shard_mib.max(1) << 20,
        |_, spec, buf| {
            let numel = spec.shape.iter().product();
            generate(
                a.seed,
                &spec.name,
                numel,
                init_for(&spec.name, &spec.shape, cfg.hidden_size),
                &mut values,
            );
            encode_f32(&values, spec.dtype, buf);
            Ok(())
        },
        |n| pb.inc(n),
    )?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ({}, {layers} layers, {} MB, seed {})",
        a.outdir.display(),
        preset.name,
        total / 1_000_000,
        a.seed
    );
    Ok(())
}
