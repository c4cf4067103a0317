//! The scheduler's plans checked with a fake executor (no model): mixing of decodes and
//! chunked prefills, prefix-cache skipping, priorities, bounded queue, and — by property
//! test — that no interleaving of submit / step / abort / finish leaks or double-frees a
//! block.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use proptest::prelude::*;
use tokenfleet_worker::backend::Backend;
use tokenfleet_worker::backend::synthetic::SyntheticBackend;
use tokenfleet_worker::engine::request::EngineRequest;
use tokenfleet_worker::engine::sampler::SamplingConfig;
use tokenfleet_worker::engine::scheduler::{AdmitError, Effect, SchedulerConfig, StepPlan};
use tokenfleet_worker::engine::{FinishReason, Scheduler};

const VOCAB: usize = 1000;

fn sched(blocks: usize, budget: usize, max_running: usize, max_waiting: usize) -> Scheduler {
    Scheduler::new(
        SchedulerConfig {
            max_batch_tokens: budget,
            max_running,
            max_waiting,
            max_context: 4096,
            eos_token_ids: vec![],
            block_hash_seed: 7,
        },
        blocks,
    )
}

fn req(id: &str, prompt: Vec<u32>, max_new: u32, priority: i32) -> EngineRequest {
    EngineRequest {
        id: id.into(),
        prompt,
        generated: vec![],
        sampling: SamplingConfig::greedy(),
        seed: 0,
        max_new_tokens: max_new,
        min_new_tokens: 0,
        stop_token_ids: vec![],
        ignore_eos: true,
        top_logprobs: 0,
        logprobs: false,
        priority,
        arrival: Instant::now(),
    }
}

fn ids(n: usize, base: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (base + i * 7) % VOCAB as u32).collect()
}

/// Plans, executes on the fake backend, resolves.
fn step(s: &mut Scheduler, be: &mut SyntheticBackend) -> Option<(StepPlan, Vec<Effect>)> {
    let plan = s.schedule()?;
    let sampled = be.execute(&plan.batch).unwrap();
    let effects = s.resolve(&plan, &sampled);
    Some((plan, effects))
}

fn fake(blocks: usize) -> SyntheticBackend {
    SyntheticBackend::new(VOCAB, blocks, std::time::Duration::ZERO, vec![])
}

#[test]
fn steps_mix_decodes_with_chunked_prefills() {
    let mut s = sched(64, 24, 8, 16);
    let mut be = fake(64);
    s.add(req("a", ids(5, 1), 50, 0)).unwrap();
    s.add(req("b", ids(6, 2), 50, 0)).unwrap();
    step(&mut s, &mut be).unwrap(); // both prefills fit
    s.add(req("long", ids(100, 3), 5, 0)).unwrap();
    let (plan, _) = step(&mut s, &mut be).unwrap();
    // Two decodes (1 token each) and a 22-token chunk of the long prompt, no sample for it.
    let sizes: Vec<usize> = plan.batch.seqs.iter().map(|c| c.num_tokens).collect();
    assert_eq!(sizes, vec![1, 1, 22]);
    assert_eq!(plan.batch.samples.len(), 2);
    assert_eq!(plan.batch.positions[2], 0);
    // Next step: decodes again plus the next chunk, starting where the last one ended.
    let (plan, _) = step(&mut s, &mut be).unwrap();
    assert_eq!(plan.batch.seqs.iter().map(|c| c.num_tokens).collect::<Vec<_>>(), vec![1, 1, 22]);
    assert_eq!(plan.batch.positions[2], 22);
    assert_eq!(plan.batch.seqs[2].context_len, 44);
}

#[test]
fn prefill_covers_only_what_the_prefix_cache_lacks() {
    let mut s = sched(64, 512, 8, 16);
    let mut be = fake(64);
    let prefix = ids(40, 9);
    s.add(req("first", prefix.clone(), 1, 0)).unwrap();
    while step(&mut s, &mut be).is_some() {}
    let mut follow = prefix.clone();
    follow.extend(ids(10, 500));
    s.add(req("follow", follow, 1, 0)).unwrap();
    let (plan, _) = step(&mut s, &mut be).unwrap();
    // 40 tokens = 2 full blocks cached (32 tokens); the remaining 18 are computed.
    assert_eq!(plan.entries[0].cached_tokens, 32);
    assert_eq!(plan.batch.seqs[0].num_tokens, 18);
    assert_eq!(plan.batch.positions[0], 32);
    assert_eq!(s.blocks.hit_tokens, 32);
}

#[test]
fn priority_then_fcfs_and_bounded_queue() {
    let mut s = sched(64, 512, 1, 3);
    let mut be = fake(64);
    s.add(req("low", ids(4, 1), 1, 5)).unwrap();
    s.add(req("high1", ids(4, 2), 1, -1)).unwrap();
    s.add(req("high2", ids(4, 3), 1, -1)).unwrap();
    assert_eq!(s.add(req("over", ids(4, 4), 1, 0)), Err(AdmitError::QueueFull(3)));
    let mut order = Vec::new();
    while let Some((_, effects)) = step(&mut s, &mut be) {
        for e in effects {
            if let Effect::Finished { request_id, .. } = e {
                order.push(request_id);
            }
        }
    }
    assert_eq!(order, vec!["high1", "high2", "low"]);
}

#[test]
fn abort_frees_blocks_within_the_step() {
    let mut s = sched(16, 512, 4, 4);
    let mut be = fake(16);
    s.add(req("x", ids(40, 1), 100, 0)).unwrap();
    step(&mut s, &mut be).unwrap();
    assert!(s.blocks.in_use() > 0);
    let e = s.abort("x").unwrap();
    assert!(matches!(e, Effect::Finished { reason: FinishReason::Cancelled, .. }));
    assert_eq!(s.blocks.in_use(), 0);
    assert!(s.abort("x").is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Submit { len: usize, max_new: u32, shared_prefix: bool, priority: i32 },
    Step,
    Abort(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..70, 1u32..30, any::<bool>(), -2i32..3).prop_map(|(len, max_new, shared_prefix, priority)| Op::Submit {
            len,
            max_new,
            shared_prefix,
            priority
        }),
        Just(Op::Step),
        Just(Op::Step),
        Just(Op::Step),
        (0usize..20).prop_map(Op::Abort),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn no_interleaving_leaks_or_double_frees(ops in proptest::collection::vec(op(), 1..80), blocks in 8usize..40, budget in 1usize..64) {
        let mut s = sched(blocks, budget, 6, 8);
        let mut be = fake(blocks);
        let mut submitted = 0usize;
        let mut live: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Submit { len, max_new, shared_prefix, priority } => {
                    let mut p = if shared_prefix { ids(32, 77) } else { Vec::new() };
                    p.extend(ids(len, submitted as u32 * 31));
                    let id = format!("r{submitted}");
                    submitted += 1;
                    if s.add(req(&id, p, max_new, priority)).is_ok() {
                        live.push(id);
                    }
                }
                Op::Step => {
                    if let Some((_, effects)) = step(&mut s, &mut be) {
                        for e in effects {
                            if let Effect::Finished { request_id, .. } = e {
                                live.retain(|l| *l != request_id);
                            }
                        }
                    }
                }
                Op::Abort(i) => {
                    if !live.is_empty() {
                        let id = live.remove(i % live.len());
                        prop_assert!(s.abort(&id).is_some());
                    }
                }
            }
            s.blocks.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert_eq!(s.blocks.in_use(), s.referenced_blocks_distinct());
        }
        // Drain: everything finishes, and every block comes back.
        let mut guard = 0;
        while step(&mut s, &mut be).is_some() {
            guard += 1;
            prop_assert!(guard < 10_000, "scheduler does not converge");
            s.blocks.check_invariants().map_err(TestCaseError::fail)?;
        }
        prop_assert!(!s.has_work());
        prop_assert_eq!(s.blocks.in_use(), 0);
        prop_assert_eq!(s.blocks.available(), blocks);
        prop_assert!(s.blocks.hit_tokens <= s.blocks.lookup_tokens);
    }
}
