//! Errors of the benchmark's own inputs (arguments, datasets). Transport and server
//! failures of single requests are not errors of the run: they are counted as `failed`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    BadArg(String),
    #[error("reading the dataset {path}: {source}")]
    DatasetIo { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {msg}")]
    DatasetLine { path: PathBuf, line: usize, msg: String },
    #[error("{0} holds no prompts")]
    DatasetEmpty(PathBuf),
    #[error("prompt token id {id} is not below the model's vocab size {vocab}")]
    TokenOutOfVocab { id: u32, vocab: u32 },
}
