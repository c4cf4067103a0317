//! The one contract between the engine core and whatever runs the model.
//!
//! A step is plain data: the tokens of every scheduled sequence concatenated, their
//! positions, where each token's K/V goes in the paged cache (slot mapping), each
//! sequence's block table, and which sequences need a sampled token. Backends know nothing
//! about requests; the engine knows nothing about devices.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_graph_plan;
pub mod cuda_plan;
pub mod synthetic;

use crate::engine::sampler::{SampleSpec, Sampled};

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = tokenfleet_proto::block_hash::BLOCK_SIZE;

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqChunk {
    /// Index of this sequence's first token in [`StepBatch::token_ids`].
    pub token_start: usize,
    /// Tokens of this sequence in the step (1 for a decode, more for a prefill chunk).
    pub num_tokens: usize,
    /// Tokens in this sequence's KV cache once the step has run
    /// (= position of its last token in the step + 1).
    pub context_len: usize,
    /// Physical KV blocks holding positions `[16·i, 16·i + 16)`, covering `context_len`.
    pub block_table: Vec<u32>,
}

/// Everything a backend needs to run one forward step.
#[derive(Debug, Clone, Default)]
pub struct StepBatch {
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// Cache slot of each token's K/V: `block_id * BLOCK_SIZE + position % BLOCK_SIZE`.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqChunk>,
    /// Sequences whose last token's logits are sampled this step (a prefill chunk that
    /// does not reach the end of its prompt samples nothing).
    pub samples: Vec<SampleSpec>,
    /// Tokens whose ids the previous step is still sampling (planned ahead, see
    /// [`Backend::launch`]); their `token_ids` entries are placeholders.
    pub feed: Vec<FedToken>,
}

/// `token_ids[token]` is the id that the previously launched step draws in its sample row
/// `from_sample`; a backend copies it in on the device, so the host never waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FedToken {
    pub token: usize,
    pub from_sample: usize,
}

impl StepBatch {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Checks the invariants every backend relies on; a violation is an engine bug, so it
    /// is reported instead of indexing out of bounds.
    pub fn validate(&self, num_blocks: usize, vocab: usize) -> Result<(), BackendError> {
        let n = self.token_ids.len();
        if self.positions.len() != n || self.slot_mapping.len() != n {
            return Err(BackendError::InvalidBatch("token_ids, positions and slot_mapping differ in length".into()));
        }
        if let Some(t) = self.token_ids.iter().find(|t| **t as usize >= vocab) {
            return Err(BackendError::InvalidBatch(format!("token id {t} >= vocab {vocab}")));
        }
        let mut next = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.token_start != next || s.num_tokens == 0 || s.token_start + s.num_tokens > n {
                return Err(BackendError::InvalidBatch(format!("sequence {i} does not tile the token array")));
            }
            next += s.num_tokens;
            if s.context_len < s.num_tokens || s.block_table.len() * BLOCK_SIZE < s.context_len {
                return Err(BackendError::InvalidBatch(format!("sequence {i}: block table too short for its context")));
            }
            if s.block_table.iter().any(|b| *b as usize >= num_blocks) {
                return Err(BackendError::InvalidBatch(format!("sequence {i}: block id out of range")));
            }
            for j in 0..s.num_tokens {
                let pos = self.positions[s.token_start + j] as usize;
                let expect_pos = s.context_len - s.num_tokens + j;
                let slot = self.slot_mapping[s.token_start + j] as usize;
                let expect_slot = s.block_table[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE;
                if pos != expect_pos || slot != expect_slot {
                    return Err(BackendError::InvalidBatch(format!("sequence {i}: position/slot of token {j} inconsistent")));
                }
            }
        }
        if next != n {
            return Err(BackendError::InvalidBatch("sequences do not cover every token".into()));
        }
        if self.samples.iter().any(|s| s.seq >= self.seqs.len()) {
            return Err(BackendError::InvalidBatch("sample refers to a missing sequence".into()));
        }
        if self.feed.iter().any(|f| f.token >= n) {
            return Err(BackendError::InvalidBatch("a fed token lies outside the step".into()));
        }
        Ok(())
    }
}

/// What a backend is, for Info / logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// "cpu", "cuda", "synthetic".
    pub name: String,
    /// Human-readable device description.
    pub device: String,
    /// Weight dtype as computed ("bf16", "f16", "f32").
    pub dtype: String,
}

/// A backend failure. `InvalidBatch` is an engine bug; `Device` is fatal for the process.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid step batch: {0}")]
    InvalidBatch(String),
    #[error("device error: {0}")]
    Device(String),
}

/// Runs forward steps over a paged KV cache it owns.
pub trait Backend: Send {
    fn info(&self) -> BackendInfo;
    /// Blocks in the KV pool (block ids are `0..kv_blocks()`).
    fn kv_blocks(&self) -> usize;
    /// Vocabulary size (logit rows).
    fn vocab_size(&self) -> usize;
    /// Runs one step: writes every token's K/V at its slot, then samples one token per
    /// entry of `batch.samples`, in order.
    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError>;
    /// Whether [`Self::launch`] returns before the step has run (a device backend), so the
    /// engine can plan the next step while this one computes. Backends that compute on the
    /// calling thread leave this false and get [`crate::engine::launcher::Launcher`]'s
    /// in-order emulation.
    fn launches_async(&self) -> bool {
        false
    }
    /// Queues a step (at most two in flight) and returns without waiting for it; its
    /// `feed` refers to the step launched before it. Only called when
    /// [`Self::launches_async`] is true.
    fn launch(&mut self, _batch: &StepBatch) -> Result<(), BackendError> {
        Err(BackendError::InvalidBatch("this backend runs steps synchronously only".into()))
    }
    /// Waits for the oldest launched step and returns its samples.
    fn collect(&mut self) -> Result<Vec<Sampled>, BackendError> {
        Err(BackendError::InvalidBatch("this backend runs steps synchronously only".into()))
    }
    /// Counters of the backend's own machinery (CUDA: GEMM plans, graph captures and
    /// replays), for benchmarks and logs.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// One-time work before serving (CUDA: GEMM tuning and graph capture for every decode
    /// batch bucket), so the first requests do not pay for it.
    fn warm_up(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}
