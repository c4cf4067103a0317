//! A Llama-3.1-family Hugging Face model directory: config, memory-mapped weights,
//! tokenizer, and the identity hashes the gateway groups workers by.

pub mod config;
pub mod gen_model;
pub mod llama;
pub mod presets;
pub mod random_init;
pub mod rope;
pub mod tokenizer;
pub mod weights;
pub mod writer;

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

pub use config::ModelConfig;
pub use llama::LlamaWeights;
pub use weights::{Checkpoint, DType, TensorRef};

/// Why a model directory could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Missing { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: unsupported: {message}")]
    Unsupported { path: PathBuf, message: String },
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return ModelError::Missing { path: path.to_path_buf(), message: "file not found".into() };
        }
        ModelError::Io { path: path.to_path_buf(), source }
    }
    pub fn missing(path: &Path, message: impl Into<String>) -> Self {
        ModelError::Missing { path: path.to_path_buf(), message: message.into() }
    }
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        ModelError::Invalid { path: path.to_path_buf(), message: message.into() }
    }
    pub fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        ModelError::Unsupported { path: path.to_path_buf(), message: message.into() }
    }
}

/// A loaded model directory.
pub struct Model {
    pub dir: PathBuf,
    /// Short name: config `_name_or_path`, else the directory name.
    pub id: String,
    pub config: ModelConfig,
    pub weights: LlamaWeights,
    pub tokenizer: tokenizer::ModelTokenizer,
    /// Hex xxh3-128 of config.json, every safetensors header, and a sample of the data.
    pub content_hash: String,
    pub dtype: DType,
}

impl Model {
    /// Loads and checks everything: config, every expected tensor and its shape, tokenizer.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::missing(dir, "model directory does not exist or is not a directory"));
        }
        let config = ModelConfig::load(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let weights = LlamaWeights::bind(&config, &checkpoint)?;
        let tokenizer = tokenizer::ModelTokenizer::load(&dir.join("tokenizer.json"))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::invalid(
                &dir.join("tokenizer.json"),
                format!("tokenizer has {} tokens but the model's vocab_size is {}", tokenizer.vocab_size(), config.vocab_size),
            ));
        }
        let content_hash = content_hash(dir, &checkpoint)?;
        let id = config
            .name_or_path
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        Ok(Model { dir: dir.to_path_buf(), id, dtype: checkpoint.dominant_dtype(), config, weights, tokenizer, content_hash })
    }

    /// The parent hash of this model's first KV block.
    pub fn block_hash_seed(&self) -> u64 {
        tokenfleet_proto::block_hash::seed_for_model(&self.content_hash)
    }
}

/// Identity of a checkpoint without reading all of it: config.json, each file's header
/// (names, dtypes, shapes, offsets), each file's length, and 4 KiB of data every 8 MiB.
/// Two checkpoints that differ anywhere in their structure or, in practice, in their
/// values (random or trained) hash differently; reading 9 GB just to name it would cost
/// seconds of startup.
fn content_hash(dir: &Path, ck: &Checkpoint) -> Result<String, ModelError> {
    let mut h = Xxh3::new();
    let cfg = dir.join("config.json");
    h.update(&std::fs::read(&cfg).map_err(|e| ModelError::io(&cfg, e))?);
    for (file, header) in ck.files().iter().zip(ck.headers()) {
        h.update(header);
        let f = std::fs::File::open(file).map_err(|e| ModelError::io(file, e))?;
        let len = f.metadata().map_err(|e| ModelError::io(file, e))?.len();
        h.update(&len.to_le_bytes());
        sample_file(&f, len, &mut h).map_err(|e| ModelError::io(file, e))?;
    }
    Ok(format!("{:032x}", h.digest128()))
}

fn sample_file(f: &std::fs::File, len: u64, h: &mut Xxh3) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const STRIDE: u64 = 8 << 20;
    const WINDOW: usize = 4096;
    let mut buf = vec![0u8; WINDOW];
    let mut off = 0;
    while off < len {
        let n = WINDOW.min((len - off) as usize);
        f.read_exact_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += STRIDE;
    }
    // The tail always counts, so a change at the end of a small file shows.
    let tail = WINDOW.min(len as usize) as u64;
    let n = tail as usize;
    f.read_exact_at(&mut buf[..n], len - tail)?;
    h.update(&buf[..n]);
    Ok(())
}
