//! Iteration-level continuous batching as plan → execute → resolve (DESIGN.md §9).
//!
//! [`Scheduler::schedule`] turns the waiting and running sequences into a plain-data
//! [`StepPlan`]: running sequences first in admission order (decodes get their token before
//! any running prefill chunk takes budget), then waiting ones by (priority, arrival), each
//! admitted sequence starting after its longest cached prefix. When blocks run out the
//! newest running sequence is preempted by recompute. [`Scheduler::resolve`] applies a
//! backend's sampled tokens and returns the effects (tokens to emit, finished requests).

use std::collections::BTreeMap;
use std::time::Instant;

use super::core::FirstToken;
use super::kv_blocks::BlockManager;
use super::request::{EngineRequest, FinishReason};
use super::sampler::Sampled;
use super::sequence::Sequence;
use crate::backend::{BLOCK_SIZE, FedToken, SeqChunk, StepBatch};

/// Scheduling limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most tokens (decodes + prefill chunks) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most sequences waiting; `add` beyond it is refused.
    pub max_waiting: usize,
    pub max_context: usize,
    pub eos_token_ids: Vec<u32>,
    /// Parent hash of a sequence's first block.
    pub block_hash_seed: u64,
}

/// Which sequence a planned chunk belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    pub arrival_no: u64,
    pub num_tokens: usize,
    /// Index into `batch.samples`, when this chunk ends at the sequence's last token.
    pub sample: Option<usize>,
    /// Tokens of this chunk that the prefix cache supplied at admission (0 after).
    pub cached_tokens: usize,
}

/// One step, as plain data.
#[derive(Debug, Clone)]
pub struct StepPlan {
    pub batch: StepBatch,
    pub entries: Vec<PlanEntry>,
    /// Sequences preempted while planning this step.
    pub preempted: Vec<String>,
}

/// An effect of resolving a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new token of a request.
    Token { request_id: String, sampled: Sampled, first: Option<FirstToken> },
    /// A request ended; its blocks are already released.
    Finished { request_id: String, reason: FinishReason, usage: UsageInfo, timings: TimingInfo },
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UsageInfo {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_prompt_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimingInfo {
    pub queue_ms: f64,
    pub first_token_ms: f64,
    pub total_ms: f64,
}

/// Why `add` refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the waiting queue is full ({0} requests)")]
    QueueFull(usize),
    #[error("a request with id `{0}` is already running")]
    DuplicateId(String),
    #[error("the request needs {needed} KV blocks but the pool has only {total}")]
    TooLarge { needed: usize, total: usize },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerCounters {
    pub preemptions: u64,
    pub finished: u64,
    pub resumed: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pub blocks: BlockManager,
    waiting: BTreeMap<(i32, u64), Sequence>,
    /// Running sequences in admission order (oldest first).
    running: Vec<Sequence>,
    next_arrival: u64,
    pub counters: SchedulerCounters,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, num_blocks: usize) -> Self {
        Scheduler {
            cfg,
            blocks: BlockManager::new(num_blocks),
            waiting: BTreeMap::new(),
            running: Vec::new(),
            next_arrival: 0,
            counters: SchedulerCounters::default(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Tokens held by running sequences.
    pub fn active_tokens(&self) -> usize {
        self.running.iter().map(|s| s.tokens.len()).sum()
    }

    fn contains(&self, id: &str) -> bool {
        self.running.iter().any(|s| s.req.id == id) || self.waiting.values().any(|s| s.req.id == id)
    }

    /// Queues a validated request.
    pub fn add(&mut self, req: EngineRequest) -> Result<(), AdmitError> {
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AdmitError::QueueFull(self.cfg.max_waiting));
        }
        if self.contains(&req.id) {
            return Err(AdmitError::DuplicateId(req.id));
        }
        let needed = (req.prompt.len() + req.max_new_tokens as usize).div_ceil(BLOCK_SIZE);
        if needed > self.blocks.num_blocks() {
            return Err(AdmitError::TooLarge { needed, total: self.blocks.num_blocks() });
        }
        if !req.generated.is_empty() {
            self.counters.resumed += 1;
        }
        let no = self.next_arrival;
        self.next_arrival += 1;
        self.waiting.insert((req.priority, no), Sequence::new(req, no));
        Ok(())
    }

    /// Removes a request wherever it is; its blocks are released at once.
    pub fn abort(&mut self, id: &str) -> Option<Effect> {
        let seq = if let Some(i) = self.running.iter().position(|s| s.req.id == id) {
            self.running.remove(i)
        } else {
            let key = *self.waiting.iter().find(|(_, s)| s.req.id == id)?.0;
            self.waiting.remove(&key)?
        };
        Some(self.finish(seq, FinishReason::Cancelled))
    }

    fn finish(&mut self, mut seq: Sequence, reason: FinishReason) -> Effect {
        self.blocks.release(&seq.blocks);
        seq.drop_placeholders();
        seq.reset_for_recompute();
        self.counters.finished += 1;
        let now = Instant::now();
        let ms = |t: Option<Instant>| t.map(|t| t.duration_since(seq.req.arrival).as_secs_f64() * 1e3).unwrap_or(0.0);
        Effect::Finished {
            request_id: seq.req.id.clone(),
            reason,
            usage: UsageInfo {
                prompt_tokens: seq.prompt_len as u32,
                completion_tokens: seq.generated() as u32,
                cached_prompt_tokens: seq.cached_prompt_tokens as u32,
            },
            timings: TimingInfo { queue_ms: ms(seq.first_scheduled), first_token_ms: ms(seq.first_token), total_ms: ms(Some(now)) },
        }
    }

    /// Moves the newest running sequence back to the waiting queue, releasing its blocks.
    fn preempt_newest(&mut self) -> Option<String> {
        let mut seq = self.running.pop()?;
        self.blocks.release(&seq.blocks);
        seq.reset_for_recompute();
        self.counters.preemptions += 1;
        let id = seq.req.id.clone();
        self.waiting.insert((seq.req.priority, seq.arrival_no), seq);
        Some(id)
    }

    /// Plans the next step, or None when there is nothing to run.
    pub fn schedule(&mut self) -> Option<StepPlan> {
        let mut budget = self.cfg.max_batch_tokens;
        let mut plan = StepPlan { batch: StepBatch::default(), entries: Vec::new(), preempted: Vec::new() };

        // Running sequences, oldest first. A running prefill may not take the budget that
        // the decodes behind it need.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            // A sequence whose in-flight token is its last (by length) ends when that step
            // resolves: planning it again would only compute a row to throw away.
            if self.running[i].leaves_when_resolved(self.cfg.max_context) {
                i += 1;
                continue;
            }
            let decodes_behind = self.running[i + 1..].iter().filter(|s| s.pending() == 1).count();
            let pending = self.running[i].pending();
            let allowance = if pending == 1 { budget } else { budget.saturating_sub(decodes_behind) };
            let n = pending.min(allowance);
            if n == 0 {
                i += 1;
                continue;
            }
            let short = self.running[i].blocks_short_of(self.running[i].num_computed + n);
            let mut self_preempted = false;
            let new_blocks = loop {
                if let Some(b) = self.blocks.allocate_n(short) {
                    break Some(b);
                }
                let victim_is_self = self.running.len() == i + 1;
                if let Some(id) = self.preempt_newest() {
                    plan.preempted.push(id);
                }
                if victim_is_self {
                    self_preempted = true;
                    break None;
                }
            };
            if self_preempted {
                break;
            }
            let Some(new_blocks) = new_blocks else { break };
            self.running[i].blocks.extend(new_blocks);
            self.plan_chunk(i, n, 0, &mut plan);
            budget -= n;
            i += 1;
        }

        // Admit waiting sequences while budget and room remain — but not in a step that
        // had to preempt: the freed blocks belong to the sequences that are running.
        // A sequence whose in-flight token ends it by length leaves when that step resolves:
        // its running slot goes to a waiting request now (as it would without overlap), so
        // the step holds at most `max_running` sequences either way.
        let leaving = self.running.iter().filter(|s| s.leaves_when_resolved(self.cfg.max_context)).count();
        while budget > 0 && self.running.len() - leaving < self.cfg.max_running && plan.preempted.is_empty() {
            let Some((&key, _)) = self.waiting.iter().next() else {
                break;
            };
            let Some(mut seq) = self.waiting.remove(&key) else {
                break;
            };
            let seed = self.cfg.block_hash_seed;
            // Reuse every full block of the longest cached prefix, but always compute at
            // least the last token (its logits are needed).
            let lookup_blocks = (seq.tokens.len() - 1) / BLOCK_SIZE;
            let hashes = seq.block_hashes(seed, lookup_blocks).to_vec();
            let hit = self.blocks.acquire_prefix(&hashes);
            let hit_tokens = hit.len() * BLOCK_SIZE;
            let n = (seq.tokens.len() - hit_tokens).min(budget);
            let short = (hit_tokens + n).div_ceil(BLOCK_SIZE) - hit.len();
            let Some(new_blocks) = self.blocks.allocate_n(short) else {
                self.blocks.release(&hit);
                self.waiting.insert(key, seq);
                break;
            };
            if !seq.admitted_once {
                seq.admitted_once = true;
                seq.cached_prompt_tokens = hit_tokens.min(seq.prompt_len);
                self.blocks.record_lookup(seq.prompt_len, seq.cached_prompt_tokens);
                self.counters.prompt_tokens += seq.prompt_len as u64;
            }
            seq.registered = hit.len();
            seq.num_computed = hit_tokens;
            seq.blocks = hit;
            seq.blocks.extend(new_blocks);
            self.running.push(seq);
            let idx = self.running.len() - 1;
            self.plan_chunk(idx, n, hit_tokens, &mut plan);
            budget -= n;
        }

        (!plan.entries.is_empty()).then_some(plan)
    }

    fn plan_chunk(&mut self, idx: usize, n: usize, cached_tokens: usize, plan: &mut StepPlan) {
        let eos = &self.cfg.eos_token_ids;
        let seq = &mut self.running[idx];
        if seq.first_scheduled.is_none() {
            seq.first_scheduled = Some(Instant::now());
        }
        let b = &mut plan.batch;
        let start = seq.num_computed;
        let token_start = b.token_ids.len();
        for pos in start..start + n {
            if pos >= seq.resolved {
                // A placeholder: the step in flight samples it, and the device feeds it in.
                if let Some(from_sample) = seq.fed_from {
                    b.feed.push(FedToken { token: b.token_ids.len(), from_sample });
                }
            }
            b.token_ids.push(seq.tokens[pos]);
            b.positions.push(pos as u32);
            b.slot_mapping.push(seq.blocks[pos / BLOCK_SIZE] * BLOCK_SIZE as u32 + (pos % BLOCK_SIZE) as u32);
        }
        let context_len = start + n;
        let seq_index = b.seqs.len();
        b.seqs.push(SeqChunk {
            token_start,
            num_tokens: n,
            context_len,
            block_table: seq.blocks[..context_len.div_ceil(BLOCK_SIZE)].to_vec(),
        });
        let sample = (context_len == seq.tokens.len()).then(|| {
            b.samples.push(seq.sample_spec(seq_index, eos));
            b.samples.len() - 1
        });
        plan.entries.push(PlanEntry { arrival_no: seq.arrival_no, num_tokens: n, sample, cached_tokens });
    }

    /// Applies a step's results (a step run synchronously): [`Self::advance`], then
    /// [`Self::resolve_samples`].
    pub fn resolve(&mut self, plan: &StepPlan, sampled: &[Sampled]) -> Vec<Effect> {
        self.advance(plan);
        self.resolve_samples(plan, sampled)
    }

    /// Books a launched step as computed: its tokens' K/V are (or will be, in stream order)
    /// in the cache, and each sampled sequence gets a placeholder for the token the step
    /// draws. The next step can then be planned before this one's ids are known.
    pub fn advance(&mut self, plan: &StepPlan) {
        let seed = self.cfg.block_hash_seed;
        for entry in &plan.entries {
            let Some(seq) = self.running.iter_mut().find(|s| s.arrival_no == entry.arrival_no) else {
                continue;
            };
            seq.num_computed += entry.num_tokens;
            register_full_blocks(&mut self.blocks, seq, seed);
            if let Some(si) = entry.sample {
                seq.push_placeholder(si);
            }
        }
    }

    /// Gives the placeholders of an advanced step their sampled ids, in launch order: emits
    /// the tokens, registers blocks that became full and known, and finishes sequences that
    /// are done. A sequence that ended meanwhile (cancelled, or stopped by an earlier step's
    /// token) is skipped: its row in this step was computed for nothing.
    pub fn resolve_samples(&mut self, plan: &StepPlan, sampled: &[Sampled]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut done: Vec<(u64, FinishReason)> = Vec::new();
        let seed = self.cfg.block_hash_seed;
        for entry in &plan.entries {
            let Some(si) = entry.sample else { continue };
            let Some(s) = sampled.get(si) else { continue };
            let Some(seq) = self.running.iter_mut().find(|s| s.arrival_no == entry.arrival_no) else {
                continue;
            };
            if !seq.fill_placeholder(s.token) {
                continue;
            }
            register_full_blocks(&mut self.blocks, seq, seed);
            let first = if seq.first_token.is_none() {
                let now = Instant::now();
                seq.first_token = Some(now);
                let ms = |t: Instant| t.duration_since(seq.req.arrival).as_secs_f64() * 1e3;
                Some(FirstToken {
                    prompt_tokens: seq.prompt_len as u32,
                    cached_prompt_tokens: seq.cached_prompt_tokens as u32,
                    queue_ms: seq.first_scheduled.map(ms).unwrap_or(0.0),
                    first_token_ms: ms(now),
                })
            } else {
                None
            };
            self.counters.generated_tokens += 1;
            effects.push(Effect::Token { request_id: seq.req.id.clone(), sampled: s.clone(), first });
            let reason = if seq.req.stop_token_ids.contains(&s.token) {
                Some(FinishReason::StopToken)
            } else if !seq.req.ignore_eos && self.cfg.eos_token_ids.contains(&s.token) {
                Some(FinishReason::Eos)
            } else if seq.reaches_length(seq.resolved, self.cfg.max_context) {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(r) = reason {
                done.push((seq.arrival_no, r));
            }
        }
        for (no, reason) in done {
            if let Some(i) = self.running.iter().position(|s| s.arrival_no == no) {
                let seq = self.running.remove(i);
                effects.push(self.finish(seq, reason));
            }
        }
        effects
    }

    /// Whether the next step can be planned while the launched one is still sampling: no
    /// running sequence may need preempting (a placeholder cannot be recomputed), and no
    /// sampling row may depend on the unknown ids (penalties count the output). When this
    /// is false the engine waits for the step in flight and plans from known tokens.
    pub fn can_plan_ahead(&self) -> bool {
        let mut short = 0;
        for seq in &self.running {
            if seq.unresolved() > 1 || seq.needs_resolved_tokens() {
                return false;
            }
            short += seq.blocks_short_of(seq.tokens.len());
        }
        short <= self.blocks.available()
    }

    /// Distinct blocks referenced by running sequences; equals `blocks.in_use()` unless a
    /// block leaked (tests).
    pub fn referenced_blocks_distinct(&self) -> usize {
        let mut all: Vec<u32> = self.running.iter().flat_map(|s| s.blocks.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// Registers the blocks of `seq` that are full of computed, known tokens in the prefix
/// cache (a block holding a placeholder waits until its id is known).
fn register_full_blocks(blocks: &mut BlockManager, seq: &mut Sequence, seed: u64) {
    let full = seq.num_computed.min(seq.resolved) / BLOCK_SIZE;
    if full > seq.registered {
        let hashes = seq.block_hashes(seed, full).to_vec();
        for (block, hash) in seq.blocks[seq.registered..full].iter().zip(&hashes[seq.registered..full]) {
            blocks.register(*block, *hash);
        }
        seq.registered = full;
    }
}
