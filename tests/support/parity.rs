//! Paths and fixtures of the parity tests (tests/parity/*.rs): goldens made by
//! tests/reference/*.py with Hugging Face transformers, committed under tests/fixtures/.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// A file under tests/fixtures/.
pub fn fixture_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// Parses a JSON fixture under tests/fixtures/.
pub fn read_fixture<T: serde::de::DeserializeOwned>(rel: &str) -> anyhow::Result<T> {
    let path = fixture_path(rel);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The vendored Llama-3.1 tokenizer.json.
pub fn llama31_tokenizer_path() -> PathBuf {
    workspace_root().join("worker/assets/llama-3.1-tokenizer.json")
}

/// The converted SmolLM2-135M-Instruct directory: `$TOKENFLEET_SMOLLM2_DIR`, else
/// `models/smollm2-135m`. An error (never a silent skip) when it is not there.
pub fn smollm2_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TOKENFLEET_SMOLLM2_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("models/smollm2-135m"),
    };
    if !dir.join("config.json").is_file() || !dir.join("tokenizer.json").is_file() {
        anyhow::bail!(
            "SmolLM2-135M-Instruct is not at {} (set TOKENFLEET_SMOLLM2_DIR or run `cargo build -p tokenfleet-worker && \
             scripts/fetch-smollm2.sh`, which downloads and converts it)",
            dir.display()
        );
    }
    Ok(dir)
}
