//! A backend that computes nothing: it emits a deterministic function of each sequence's
//! last token and position, optionally after a fixed delay per step. Used to measure the
//! gateway and the serving path without model compute, and as the engine's fake executor.

use std::time::Duration;

use super::{Backend, BackendError, BackendInfo, StepBatch};
use crate::engine::sampler::Sampled;

pub struct SyntheticBackend {
    vocab: usize,
    num_blocks: usize,
    step_delay: Duration,
    /// Ids the synthetic output never produces (EOS), so lengths are predictable.
    avoid: Vec<u32>,
}

impl SyntheticBackend {
    pub fn new(vocab: usize, num_blocks: usize, step_delay: Duration, avoid: Vec<u32>) -> Self {
        SyntheticBackend { vocab, num_blocks, step_delay, avoid }
    }

    /// The token that follows `last` at position `pos`.
    pub fn next_token(&self, last: u32, pos: u32) -> u32 {
        let v = self.vocab.max(1) as u64;
        let mut t = ((last as u64).wrapping_mul(1_103_515_245).wrapping_add(12_345 + pos as u64 * 7)) % v;
        while self.avoid.contains(&(t as u32)) {
            t = (t + 1) % v;
        }
        t as u32
    }
}

impl Backend for SyntheticBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo { name: "synthetic".into(), device: "none (no model compute)".into(), dtype: "none".into() }
    }

    fn kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        batch.validate(self.num_blocks, self.vocab)?;
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        Ok(batch
            .samples
            .iter()
            .map(|s| {
                let seq = &batch.seqs[s.seq];
                let last = seq.token_start + seq.num_tokens - 1;
                let token = self.next_token(batch.token_ids[last], batch.positions[last]);
                Sampled { token, logprob: 0.0, top: Vec::new() }
            })
            .collect())
    }
}
