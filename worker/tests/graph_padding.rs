//! The CUDA backend's graph padding, checked against the CPU oracle: decode steps padded to
//! their graph bucket with dummy rows on a spare KV block (exactly as
//! `backend::cuda_graph_plan` prescribes) must leave every real request's tokens, logprobs
//! and alternatives bit-identical, whatever the batch composition, preemption or sampling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use tokenfleet_worker::backend::cpu::CpuBackend;
use tokenfleet_worker::backend::cuda_graph_plan::{graph_key, pad_decode};
use tokenfleet_worker::backend::cuda_plan::StepCapacity;
use tokenfleet_worker::backend::{Backend, BackendError, BackendInfo, StepBatch};
use tokenfleet_worker::engine::EngineCore;
use tokenfleet_worker::engine::sampler::{Sampled, SamplingConfig};
use tokenfleet_worker::model::Model;

/// A CPU backend run the way the CUDA backend runs graph steps: one pool block more than
/// the engine sees, graphable steps padded, dummy results dropped.
struct Padded {
    inner: CpuBackend,
    blocks: usize,
    cap: StepCapacity,
    padded_steps: Arc<AtomicUsize>,
    dummy_rows: Arc<AtomicUsize>,
}

impl Backend for Padded {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn kv_blocks(&self) -> usize {
        self.blocks
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        batch.validate(self.blocks, self.inner.vocab_size())?;
        let Some(key) = graph_key(batch, &self.cap) else { return self.inner.execute(batch) };
        let real = batch.seqs.len();
        let padded = pad_decode(batch, key, self.blocks as u32);
        self.padded_steps.fetch_add(1, Ordering::Relaxed);
        self.dummy_rows.fetch_add(key.batch - real, Ordering::Relaxed);
        let mut out = self.inner.execute(&padded)?;
        assert_eq!(out.len(), key.batch, "every padded row is sampled");
        out.truncate(real);
        Ok(out)
    }
}

fn padded_engine(model: &Model, blocks: usize, budget: usize, running: usize) -> (EngineCore, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (steps, rows) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let cap = StepCapacity { max_tokens: budget, max_seqs: running, max_context: model.config.max_position_embeddings };
    let backend = Padded { inner: CpuBackend::new(model, blocks + 1), blocks, cap, padded_steps: steps.clone(), dummy_rows: rows.clone() };
    (engine_with(model, blocks, budget, running, Box::new(backend)), steps, rows)
}

#[test]
fn padded_decode_steps_change_nothing_for_the_real_rows() {
    let model = tiny_model();
    // Five requests of mixed sampling and lengths: as they finish, the decode batch shrinks
    // through 5, 4, 3, 2, 1 real rows (buckets 8, 4, 4, 2, 1), mostly padded.
    let reqs: Vec<_> = (0..5u32)
        .map(|i| {
            let cfg =
                if i % 2 == 0 { SamplingConfig::greedy() } else { SamplingConfig { temperature: 0.8, top_k: 40, ..Default::default() } };
            request(&format!("r{i}"), prompt(30 + i, 9 + 11 * i as usize), cfg, 1000 + i as u64, 6 + 5 * i)
        })
        .collect();
    let plain = run_all(&mut engine(&model, 128, 256, 8), reqs.clone());
    let (mut core, steps, rows) = padded_engine(&model, 128, 256, 8);
    let padded = run_all(&mut core, reqs);
    assert_eq!(plain, padded, "bit-identical tokens, logprobs and alternatives");
    assert!(steps.load(Ordering::Relaxed) >= 20, "most decode steps went through padding");
    assert!(rows.load(Ordering::Relaxed) > 0, "some steps had dummy rows");
    assert_eq!(core.scheduler.blocks.in_use(), 0, "the engine never saw the padding block");
}

#[test]
fn padding_survives_preemption_in_a_small_pool() {
    let model = tiny_model();
    let reqs: Vec<_> =
        (0..6u32).map(|i| request(&format!("p{i}"), prompt(50 + i, 18 + 3 * i as usize), SamplingConfig::greedy(), i as u64, 30)).collect();
    let plain = run_all(&mut engine(&model, 512, 512, 8), reqs.clone());
    let (mut core, steps, _) = padded_engine(&model, 12, 512, 8);
    let padded = run_all(&mut core, reqs);
    assert!(core.scheduler.counters.preemptions > 0, "the small pool must force preemption");
    assert!(steps.load(Ordering::Relaxed) > 0);
    assert_eq!(plain, padded);
}
