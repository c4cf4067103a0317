//! `convert-gguf`: a Llama GGUF file → Hugging Face model directory.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::gguf::GgufFile;
use crate::gguf::convert::convert;
use crate::model::DType;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Output weight dtype: f16 (default: closest to the f32 transformers computes in for
    /// quantized inputs), bf16 or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// The .gguf file.
    input: PathBuf,
    /// Output directory.
    outdir: PathBuf,
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let Some(dtype) = DType::parse(&a.dtype) else { bail!("unknown --dtype `{}`; use f16, bf16 or f32", a.dtype) };
    let g = GgufFile::open(&a.input)?;
    let total: u64 = g.tensors.iter().map(|t| t.numel() as u64 * dtype.size() as u64).sum();
    let pb = super::progress_bar(total, "convert-gguf");
    convert(&g, &a.outdir, dtype, |n| pb.inc(n))?;
    pb.finish_and_clear();
    eprintln!("wrote {} ({} tensors, {} weights)", a.outdir.display(), g.tensors.len(), dtype.name());
    Ok(())
}
