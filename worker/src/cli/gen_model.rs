//! `gen-model`: deterministic random weights of an exact architecture.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::model::DType;
use crate::model::gen_model::{GenModelSpec, spec_config, weight_bytes, write_random_model};
use crate::model::presets::{PRESETS, Preset};

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
    let Some(dtype) = DType::parse(&a.dtype) else { bail!("unknown --dtype `{}`; use bf16, f16 or f32", a.dtype) };
    let layers = a.layers.unwrap_or(preset.layers);
    if layers == 0 {
        bail!("--layers must be at least 1");
    }
    let spec = GenModelSpec { preset, layers, seed: a.seed, dtype, max_shard_bytes: a.shard_mib.max(1) << 20 };
    let (_, cfg) = spec_config(&spec, &a.outdir)?;
    let total = weight_bytes(&spec, &cfg);
    let pb = super::progress_bar(total, "gen-model");
    write_random_model(&spec, &a.outdir, |n| pb.inc(n))?;
    pb.finish_and_clear();
    eprintln!("wrote {} ({}, {layers} layers, {} MB, seed {})", a.outdir.display(), preset.name, total / 1_000_000, a.seed);
    Ok(())
}
