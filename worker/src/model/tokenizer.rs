//! The model's `tokenizer.json`, loaded with the `tokenizers` crate (the same library
//! transformers' fast tokenizers use, so ids match).

use std::path::Path;

use tokenizers::Tokenizer;
use xxhash_rust::xxh3::xxh3_64;

use super::ModelError;

/// A loaded tokenizer plus the bytes it came from (served to gateways by GetTokenizer).
pub struct ModelTokenizer {
    inner: Tokenizer,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelTokenizer({} tokens, hash {})", self.vocab_size(), self.hash_hex())
    }
}

impl ModelTokenizer {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(bytes, path)
    }

    /// Parses tokenizer.json bytes; `path` only names the source in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::invalid(path, format!("cannot load tokenizer: {e}")))?;
        Ok(ModelTokenizer { inner, bytes })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.inner.encode(text, add_special_tokens).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| e.to_string())
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn hash_hex(&self) -> String {
        format!("{:016x}", xxh3_64(&self.bytes))
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
