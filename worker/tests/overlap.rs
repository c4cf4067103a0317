//! Planning each step while the previous one runs (overlap) must not change a single
//! output: the same tokens, logprobs, finish reasons and usage as synchronous steps, on
//! the CPU backend and, by property test, on the synthetic one, through stops, length
//! limits, penalties, preemption, the prefix cache and cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use tokenfleet_worker::backend::cpu::CpuBackend;
use tokenfleet_worker::backend::synthetic::SyntheticBackend;
use tokenfleet_worker::backend::{Backend, BackendError, BackendInfo, StepBatch};
use tokenfleet_worker::engine::request::EngineRequest;
use tokenfleet_worker::engine::sampler::Sampled;
use tokenfleet_worker::engine::sampler::SamplingConfig;
use tokenfleet_worker::engine::scheduler::SchedulerConfig;
use tokenfleet_worker::engine::{EngineCore, FinishReason, RequestOutput, Scheduler};

fn sampled_cfg() -> SamplingConfig {
    SamplingConfig { temperature: 0.9, top_p: 0.95, top_k: 50, ..Default::default() }
}

/// The outcomes without `cached_prompt_tokens`: a prefix-cache statistic that depends on
/// when a request is admitted, and with overlap a request waiting for a free running slot
/// is admitted one step later (the sequence leaving is still running while the next step is
/// planned), by which time more of its prefix may be cached.
fn outputs(o: &HashMap<String, Outcome>) -> HashMap<String, Outcome> {
    o.iter()
        .map(|(id, out)| {
            let mut out = out.clone();
            out.usage.cached_prompt_tokens = 0;
            (id.clone(), out)
        })
        .collect()
}

/// Runs `reqs` to completion with overlap off and on; asserts identical outcomes and a
/// clean pool, and returns the overlapped engine's (planned ahead, plan-ahead refused) counts.
fn same_both_ways(make: impl Fn() -> EngineCore, reqs: Vec<EngineRequest>) -> (HashMap<String, Outcome>, u64, u64) {
    let sync = run_all(&mut make(), reqs.clone());
    let mut core = make().with_overlap(true);
    let overlapped = run_all(&mut core, reqs);
    assert_eq!(outputs(&sync), outputs(&overlapped), "overlap changed an output");
    // A step planned for a sequence that its predecessor's token then stopped may still be
    // in flight; it drains without sending anything.
    let mut drains = 0;
    while core.has_work() {
        assert!(core.step().unwrap().is_some());
        drains += 1;
    }
    assert!(drains <= 1, "at most one step stays in flight ({drains})");
    assert_eq!(core.scheduler.blocks.in_use(), 0, "every block is released");
    core.scheduler.blocks.check_invariants().unwrap();
    (overlapped, core.planned_ahead, core.plan_ahead_refused)
}

#[test]
fn overlap_is_exact_on_the_cpu_backend() {
    let model = tiny_model();
    let make = || engine(&model, 256, 64, 8);
    let mut reqs: Vec<EngineRequest> = (0..6u32)
        .map(|i| {
            let cfg = if i % 2 == 0 { SamplingConfig::greedy() } else { sampled_cfg() };
            request(&format!("r{i}"), prompt(40 + i, 9 + 11 * i as usize), cfg, 7 + i as u64, 10 + 2 * i)
        })
        .collect();
    // Two requests share a 48-token prefix (the second hits the prefix cache).
    let shared = prompt(77, 48);
    let mut p2 = shared.clone();
    p2.extend(prompt(78, 5));
    reqs.push(request("shared-a", shared, SamplingConfig::greedy(), 0, 9));
    reqs.push(request("shared-b", p2, sampled_cfg(), 3, 9));
    // Stops drawn from a synchronous run: each ends its request early, mid-batch.
    let first = run_all(&mut make(), reqs.clone());
    for (i, r) in reqs.iter_mut().enumerate().take(4) {
        let out = &first[&r.id].tokens;
        r.stop_token_ids = vec![out[2 + i].token];
    }
    let (out, ahead, _) = same_both_ways(make, reqs);
    for i in 0..4 {
        assert_eq!(out[&format!("r{i}")].reason, FinishReason::StopToken, "r{i} stops at its stop token");
    }
    assert_eq!(out["r5"].reason, FinishReason::Length);
    assert!(ahead > 10, "steps were planned ahead ({ahead})");
}

/// A backend with the CUDA backend's contract: `launch` only queues, and a step runs when
/// it is collected, in launch order, its fed tokens taken from the step before it. So step
/// n+1 is planned and launched while step n has not computed anything yet.
struct Deferred {
    inner: CpuBackend,
    queued: VecDeque<StepBatch>,
    last: Vec<Sampled>,
}

impl Backend for Deferred {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn kv_blocks(&self) -> usize {
        self.inner.kv_blocks()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        assert!(self.queued.is_empty() && batch.feed.is_empty(), "a synchronous step behind queued ones");
        self.inner.execute(batch)
    }
    fn launches_async(&self) -> bool {
        true
    }
    fn launch(&mut self, batch: &StepBatch) -> Result<(), BackendError> {
        assert!(self.queued.len() < 2, "at most two steps in flight");
        self.queued.push_back(batch.clone());
        Ok(())
    }
    fn collect(&mut self) -> Result<Vec<Sampled>, BackendError> {
        let mut b = self.queued.pop_front().expect("a launched step");
        for f in std::mem::take(&mut b.feed) {
            b.token_ids[f.token] = self.last[f.from_sample].token;
        }
        self.last = self.inner.execute(&b)?;
        Ok(self.last.clone())
    }
}

#[test]
fn overlap_is_exact_when_launches_only_queue() {
    let model = tiny_model();
    let make = || {
        let backend = Deferred { inner: CpuBackend::new(&model, 128), queued: VecDeque::new(), last: Vec::new() };
        engine_with(&model, 128, 64, 8, Box::new(backend))
    };
    let reqs: Vec<EngineRequest> = (0..6u32)
        .map(|i| {
            let cfg = if i % 2 == 0 { SamplingConfig::greedy() } else { sampled_cfg() };
            let mut r = request(&format!("d{i}"), prompt(60 + i, 7 + 9 * i as usize), cfg, 3 + i as u64, 9 + i);
            r.min_new_tokens = 2;
            r
        })
        .collect();
    let (_, ahead, _) = same_both_ways(make, reqs);
    assert!(ahead > 5, "steps were planned ahead ({ahead})");
}

#[test]
fn penalties_and_preemption_wait_for_the_step_in_flight() {
    let model = tiny_model();
    let penalised = SamplingConfig { repetition_penalty: 1.3, frequency_penalty: 0.4, ..sampled_cfg() };
    let mut reqs: Vec<EngineRequest> =
        (0..5u32).map(|i| request(&format!("p{i}"), prompt(10 + i, 20 + 3 * i as usize), sampled_cfg(), 100 + i as u64, 40)).collect();
    reqs.push(request("pen", prompt(31, 12), penalised, 5, 12));
    // 12 blocks for six 40-token generations force preemption by recompute.
    let make = || engine(&model, 12, 512, 8);
    let (_, _, refused) = same_both_ways(make, reqs.clone());
    assert!(refused > 0, "preemption or penalties must make some steps wait");
    let mut probe = make().with_overlap(true);
    run_all(&mut probe, reqs);
    assert!(probe.scheduler.counters.preemptions > 0, "the small pool must force preemption");
}

#[test]
fn a_cancelled_request_frees_its_blocks_while_a_step_is_in_flight() {
    let model = tiny_model();
    let mut core = engine(&model, 64, 512, 4).with_overlap(true);
    let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
    core.submit(request("a", prompt(1, 20), SamplingConfig::greedy(), 0, 50), tx_a);
    core.submit(request("b", prompt(2, 20), SamplingConfig::greedy(), 0, 6), tx_b);
    for _ in 0..3 {
        core.step().unwrap();
    }
    assert!(core.abort("a"));
    while core.has_work() {
        core.step().unwrap();
    }
    let mut a_tokens = 0;
    let mut a_end = None;
    while let Ok(o) = rx_a.try_recv() {
        match o {
            RequestOutput::Token { .. } => a_tokens += 1,
            RequestOutput::Finished { reason, usage, .. } => a_end = Some((reason, usage.completion_tokens)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (reason, completion) = a_end.expect("a finished");
    assert_eq!(reason, FinishReason::Cancelled);
    assert_eq!(completion as usize, a_tokens, "usage counts the tokens sent, not a step in flight");
    let mut b_tokens = 0;
    while let Ok(o) = rx_b.try_recv() {
        if matches!(o, RequestOutput::Token { .. }) {
            b_tokens += 1;
        }
    }
    assert_eq!(b_tokens, 6);
    assert_eq!(core.scheduler.blocks.in_use(), 0);
}

#[test]
fn planning_ahead_is_refused_while_a_penalised_sequence_waits_for_its_token() {
    let cfg = sched_cfg(256, 4, vec![]);
    let penalised = SamplingConfig { repetition_penalty: 1.2, ..SamplingConfig::greedy() };
    for (sampling, ahead) in [(SamplingConfig::greedy(), true), (penalised, false)] {
        let mut s = Scheduler::new(cfg.clone(), 32);
        s.add(request("r", prompt(5, 20), sampling, 0, 8)).unwrap();
        assert!(s.can_plan_ahead(), "nothing is in flight yet");
        let plan = s.schedule().unwrap();
        s.advance(&plan);
        // The sampled token is a placeholder now: penalties would count the wrong ids.
        assert_eq!(s.can_plan_ahead(), ahead, "{sampling:?}");
        if ahead {
            let next = s.schedule().unwrap();
            assert_eq!(next.batch.feed.len(), 1, "the decode token is fed from the step in flight");
            assert_eq!(next.batch.feed[0].from_sample, 0);
        }
    }
}

#[test]
fn planning_ahead_is_refused_when_a_preemption_could_follow() {
    let cfg = sched_cfg(256, 4, vec![]);
    // Two 16-token prompts take a block each of a 3-block pool; their next tokens need two
    // more, and only one is left, so the next step would preempt.
    let mut s = Scheduler::new(cfg, 3);
    s.add(request("a", prompt(6, 16), SamplingConfig::greedy(), 0, 32)).unwrap();
    s.add(request("b", prompt(7, 16), SamplingConfig::greedy(), 0, 32)).unwrap();
    let plan = s.schedule().unwrap();
    s.advance(&plan);
    assert!(!s.can_plan_ahead());
}

fn sched_cfg(budget: usize, max_running: usize, eos: Vec<u32>) -> SchedulerConfig {
    SchedulerConfig { max_batch_tokens: budget, max_running, max_waiting: 1024, max_context: 4096, eos_token_ids: eos, block_hash_seed: 3 }
}

fn synthetic_engine(blocks: usize, budget: usize, max_running: usize, eos: Vec<u32>) -> EngineCore {
    let cfg = sched_cfg(budget, max_running, eos);
    EngineCore::new(Scheduler::new(cfg, blocks), Box::new(SyntheticBackend::new(64, blocks, Duration::ZERO, vec![])))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    /// Random request mixes over a small vocabulary (so the synthetic backend hits EOS and
    /// stop ids often) and a small pool (so preemption happens): overlap never changes an
    /// outcome and never leaks a block.
    #[test]
    fn overlap_matches_synchronous_steps(
        reqs in prop::collection::vec((1usize..40, 1u32..24, any::<bool>(), any::<bool>(), 0u32..64), 1..10),
        blocks in 8usize..40,
        budget in 4usize..64,
        max_running in 1usize..6,
    ) {
        let reqs: Vec<EngineRequest> = reqs
            .into_iter()
            .enumerate()
            .map(|(i, (len, max_new, honour_eos, stop, stop_id))| {
                // Prompts share their first tokens now and then (prefix-cache hits).
                let p: Vec<u32> = (0..len as u32).map(|j| (j * 5 + (i as u32 % 3)) % 64).collect();
                let mut r = request(&format!("s{i}"), p, SamplingConfig::greedy(), 0, max_new);
                r.ignore_eos = !honour_eos;
                if stop {
                    r.stop_token_ids = vec![stop_id];
                }
                r
            })
            .filter(|r| (r.prompt.len() + r.max_new_tokens as usize).div_ceil(16) <= blocks)
            .collect();
        let make = || synthetic_engine(blocks, budget, max_running, vec![1, 2]);
        same_both_ways(make, reqs);
    }
}
