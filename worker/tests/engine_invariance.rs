//! The engine's exactness guarantees on the CPU backend: a request's tokens and logprobs do
//! not depend on its batch neighbours, on chunked prefill, on preemption, on the prefix
//! cache, or on being resumed from its first k tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tokenfleet_worker::engine::sampler::SamplingConfig;

fn sampled_cfg() -> SamplingConfig {
    SamplingConfig { temperature: 0.9, top_p: 0.95, top_k: 50, ..Default::default() }
}

#[test]
fn batch_invariance_alone_vs_among_seven_others() {
    let model = tiny_model();
    let target = request("target", prompt(1, 37), sampled_cfg(), 42, 12);
    let alone = run_all(&mut engine(&model, 256, 512, 16), vec![target.clone()]);

    let mut reqs = vec![target];
    for i in 0..7u32 {
        let cfg = if i % 2 == 0 { SamplingConfig::greedy() } else { sampled_cfg() };
        reqs.push(request(&format!("other{i}"), prompt(100 + i, 5 + 13 * i as usize), cfg, i as u64, 6 + i));
    }
    let batched = run_all(&mut engine(&model, 256, 512, 16), reqs);
    // Bitwise: tokens, logprobs and alternatives.
    assert_eq!(alone["target"], batched["target"]);
    assert_eq!(alone["target"].tokens.len(), 12);
}

#[test]
fn chunked_prefill_gives_identical_results() {
    let model = tiny_model();
    let r = request("r", prompt(2, 75), sampled_cfg(), 7, 8);
    let whole = run_all(&mut engine(&model, 64, 2048, 4), vec![r.clone()]);
    // A 7-token budget splits the prompt into 11 chunks.
    let chunked = run_all(&mut engine(&model, 64, 7, 4), vec![r]);
    assert_eq!(whole, chunked);
}

#[test]
fn preemption_by_recompute_changes_nothing() {
    let model = tiny_model();
    let reqs: Vec<_> =
        (0..6u32).map(|i| request(&format!("p{i}"), prompt(10 + i, 20 + 3 * i as usize), sampled_cfg(), 100 + i as u64, 40)).collect();
    let big = run_all(&mut engine(&model, 512, 512, 8), reqs.clone());
    let mut small_engine = engine(&model, 12, 512, 8);
    let small = run_all(&mut small_engine, reqs);
    assert!(small_engine.scheduler.counters.preemptions > 0, "the small pool must force preemption");
    assert_eq!(big, small);
    assert_eq!(small_engine.scheduler.blocks.in_use(), 0, "every block is released");
}

#[test]
fn resume_from_prompt_plus_k_continues_exactly() {
    let model = tiny_model();
    let p = prompt(3, 29);
    let full = run_all(&mut engine(&model, 64, 512, 4), vec![request("full", p.clone(), sampled_cfg(), 99, 16)]);
    let full = &full["full"].tokens;
    for k in [1usize, 5, 15] {
        let mut r = request("resumed", p.clone(), sampled_cfg(), 99, 16);
        r.generated = full[..k].iter().map(|s| s.token).collect();
        let resumed = run_all(&mut engine(&model, 64, 512, 4), vec![r]);
        assert_eq!(resumed["resumed"].tokens, full[k..].to_vec(), "resume after {k} tokens");
        assert_eq!(resumed["resumed"].usage.completion_tokens, 16);
    }
}

#[test]
fn resume_keeps_penalties_intact() {
    let model = tiny_model();
    let cfg = SamplingConfig { repetition_penalty: 1.3, presence_penalty: 0.5, frequency_penalty: 0.4, ..sampled_cfg() };
    let p = prompt(4, 21);
    let full = run_all(&mut engine(&model, 64, 512, 4), vec![request("full", p.clone(), cfg, 5, 14)]);
    let mut r = request("resumed", p, cfg, 5, 14);
    r.generated = full["full"].tokens[..6].iter().map(|s| s.token).collect();
    let resumed = run_all(&mut engine(&model, 64, 512, 4), vec![r]);
    assert_eq!(resumed["resumed"].tokens, full["full"].tokens[6..].to_vec());
}

#[test]
fn prefix_cache_hits_are_counted_and_exact() {
    let model = tiny_model();
    let mut core = engine(&model, 128, 512, 4);
    let shared = prompt(5, 48);
    let mut second = shared.clone();
    second.extend(prompt(6, 9));
    let a = run_all(&mut core, vec![request("a", shared.clone(), SamplingConfig::greedy(), 0, 4)]);
    let b = run_all(&mut core, vec![request("b", second.clone(), SamplingConfig::greedy(), 0, 4)]);
    assert_eq!(a["a"].usage.cached_prompt_tokens, 0);
    // The 48-token prefix is three full blocks.
    assert_eq!(b["b"].usage.cached_prompt_tokens, 48);
    let fresh = run_all(&mut engine(&model, 128, 512, 4), vec![request("b", second, SamplingConfig::greedy(), 0, 4)]);
    assert_eq!(fresh["b"].tokens, b["b"].tokens);
    // Same prompt again: everything but the last block is reused.
    let c = run_all(&mut core, vec![request("c", shared, SamplingConfig::greedy(), 0, 4)]);
    assert_eq!(c["c"].usage.cached_prompt_tokens, 32);
    assert_eq!(c["c"].tokens, a["a"].tokens);
}
