//! One request's state inside the scheduler.

use std::collections::BTreeMap;
use std::time::Instant;

use tokenfleet_proto::block_hash;

use super::request::EngineRequest;
use super::sampler::{PenaltyEntry, SampleSpec};
use crate::backend::BLOCK_SIZE;

#[derive(Debug)]
pub struct Sequence {
    pub req: EngineRequest,
    /// Admission order; also the FCFS key within a priority.
    pub arrival_no: u64,
    /// Prompt followed by every generated token (resumed ones included). With steps in
    /// flight the tail may hold placeholders: tokens a launched step is still sampling.
    pub tokens: Vec<u32>,
    /// Leading tokens that are known; the rest of `tokens` are placeholders.
    pub resolved: usize,
    /// Sample row, in the step launched last, that draws the last placeholder (the device
    /// feeds it to the next step).
    pub fed_from: Option<usize>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    /// Physical blocks, covering at least `num_computed` tokens.
    pub blocks: Vec<u32>,
    /// Chained hashes of the full blocks of `tokens` (extended lazily).
    hashes: Vec<u64>,
    /// Leading blocks already registered in (or taken from) the prefix cache.
    pub registered: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_prompt_tokens: usize,
    /// Occurrences in the output per id, prompt ids with 0 (only when penalties are on).
    penalty_counts: Option<BTreeMap<u32, u32>>,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub admitted_once: bool,
}

impl Sequence {
    pub fn new(req: EngineRequest, arrival_no: u64) -> Self {
        let mut tokens = req.prompt.clone();
        tokens.extend_from_slice(&req.generated);
        let penalty_counts = req.sampling.has_penalties().then(|| {
            let mut m: BTreeMap<u32, u32> = req.prompt.iter().map(|t| (*t, 0)).collect();
            for t in &req.generated {
                *m.entry(*t).or_insert(0) += 1;
            }
            m
        });
        Sequence {
            prompt_len: req.prompt.len(),
            req,
            arrival_no,
            resolved: tokens.len(),
            tokens,
            fed_from: None,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            registered: 0,
            cached_prompt_tokens: 0,
            penalty_counts,
            first_scheduled: None,
            first_token: None,
            admitted_once: false,
        }
    }

    /// Generated tokens so far, resumed ones and placeholders included.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Placeholders at the tail of `tokens`.
    pub fn unresolved(&self) -> usize {
        self.tokens.len() - self.resolved
    }

    /// Tokens still to be computed before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Hashes of the first `n` full blocks (n ≤ resolved / 16: a placeholder has no id to
    /// hash yet).
    pub fn block_hashes(&mut self, seed: u64, n: usize) -> &[u64] {
        let n = n.min(self.resolved / BLOCK_SIZE);
        while self.hashes.len() < n {
            let b = self.hashes.len();
            let parent = if b == 0 { seed } else { self.hashes[b - 1] };
            self.hashes.push(block_hash::chain(parent, &self.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE]));
        }
        &self.hashes[..n]
    }

    /// Blocks needed to hold `tokens` tokens beyond those already owned.
    pub fn blocks_short_of(&self, tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_SIZE).saturating_sub(self.blocks.len())
    }

    /// Appends the placeholder of a token that sample row `sample` of the step just
    /// launched will draw.
    pub fn push_placeholder(&mut self, sample: usize) {
        self.tokens.push(0);
        self.fed_from = Some(sample);
    }

    /// Gives the oldest placeholder its sampled id (steps resolve in launch order). False
    /// when there is none (an engine bug the caller reports).
    pub fn fill_placeholder(&mut self, token: u32) -> bool {
        let Some(slot) = self.tokens.get_mut(self.resolved) else {
            return false;
        };
        *slot = token;
        self.resolved += 1;
        if self.resolved == self.tokens.len() {
            self.fed_from = None;
        }
        if let Some(m) = &mut self.penalty_counts {
            *m.entry(token).or_insert(0) += 1;
        }
        true
    }

    /// Forgets the placeholders (the sequence ended; a step in flight drew them for
    /// nothing).
    pub fn drop_placeholders(&mut self) {
        self.tokens.truncate(self.resolved);
        self.fed_from = None;
    }

    /// Whether a sequence of `len` tokens has reached its length limit (`max_new_tokens`
    /// generated, or the context limit).
    pub fn reaches_length(&self, len: usize, max_context: usize) -> bool {
        len - self.prompt_len >= self.req.max_new_tokens as usize || len >= max_context
    }

    /// Whether the sequence ends by length when its in-flight token resolves, whatever its
    /// id: nothing more to plan for it, and its running slot is as good as free.
    pub fn leaves_when_resolved(&self, max_context: usize) -> bool {
        self.unresolved() > 0 && self.reaches_length(self.tokens.len(), max_context)
    }

    /// Whether this sequence's next sample depends on ids it does not know yet (penalties
    /// count the output tokens).
    pub fn needs_resolved_tokens(&self) -> bool {
        self.unresolved() > 0 && self.penalty_counts.is_some()
    }

    /// The sampling row for this sequence's next token.
    pub fn sample_spec(&self, step_index: usize, eos: &[u32]) -> SampleSpec {
        let generated = self.generated();
        let mut suppress = Vec::new();
        if (generated as u32) < self.req.min_new_tokens {
            if !self.req.ignore_eos {
                suppress.extend_from_slice(eos);
            }
            suppress.extend_from_slice(&self.req.stop_token_ids);
        }
        SampleSpec {
            seq: step_index,
            config: self.req.sampling,
            seed: self.req.seed,
            token_index: generated as u32,
            penalties: self
                .penalty_counts
                .as_ref()
                .map(|m| m.iter().map(|(&id, &output_count)| PenaltyEntry { id, output_count }).collect())
                .unwrap_or_default(),
            suppress,
            top_logprobs: self.req.top_logprobs,
        }
    }

    /// Forgets computed KV (preemption by recompute); the caller released the blocks.
    pub fn reset_for_recompute(&mut self) {
        self.blocks.clear();
        self.num_computed = 0;
        self.registered = 0;
    }
}
