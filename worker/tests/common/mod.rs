//! Shared helpers of the worker's integration tests: a cached random model and a
//! synchronous driver of the engine core.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use tokenfleet_worker::backend::Backend;
use tokenfleet_worker::backend::cpu::CpuBackend;
use tokenfleet_worker::engine::request::EngineRequest;
use tokenfleet_worker::engine::sampler::{Sampled, SamplingConfig};
use tokenfleet_worker::engine::scheduler::{SchedulerConfig, UsageInfo};
use tokenfleet_worker::engine::{EngineCore, FinishReason, RequestOutput, Scheduler};
use tokenfleet_worker::model::gen_model::{GenModelSpec, write_random_model};
use tokenfleet_worker::model::presets::Preset;
use tokenfleet_worker::model::{DType, Model};

/// The `tiny` preset (seed 1), generated once into the target dir and reused.
pub fn tiny_model() -> Model {
    model_for("tiny", 1)
}

pub fn model_for(preset: &str, seed: u64) -> Model {
    Model::load(&model_dir(preset, seed)).unwrap()
}

/// Bumped whenever gen-model's weights change, so cached test models are remade.
const GEN_VERSION: u32 = 2;

/// The directory of a cached 2-layer random model (made on first use).
pub fn model_dir(preset: &str, seed: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("models/{preset}-s{seed}-v{GEN_VERSION}"));
    if !dir.join("model.safetensors").exists() {
        // Write into a private dir and rename, so parallel test binaries never see half a model.
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let spec = GenModelSpec { preset: Preset::find(preset).unwrap(), layers: 2, seed, dtype: DType::BF16, max_shard_bytes: u64::MAX };
        write_random_model(&spec, &tmp, |_| {}).unwrap();
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

pub fn request(id: &str, prompt: Vec<u32>, sampling: SamplingConfig, seed: u64, max_new: u32) -> EngineRequest {
    EngineRequest {
        id: id.into(),
        prompt,
        generated: vec![],
        sampling,
        seed,
        max_new_tokens: max_new,
        min_new_tokens: 0,
        stop_token_ids: vec![],
        ignore_eos: true,
        top_logprobs: 3,
        logprobs: true,
        priority: 0,
        arrival: Instant::now(),
    }
}

pub fn engine(model: &Model, kv_blocks: usize, max_batch_tokens: usize, max_running: usize) -> EngineCore {
    engine_with(model, kv_blocks, max_batch_tokens, max_running, Box::new(CpuBackend::new(model, kv_blocks)))
}

/// [`engine`] over any backend (one that sees `kv_blocks` blocks).
pub fn engine_with(model: &Model, kv_blocks: usize, max_batch_tokens: usize, max_running: usize, backend: Box<dyn Backend>) -> EngineCore {
    let cfg = SchedulerConfig {
        max_batch_tokens,
        max_running,
        max_waiting: 1024,
        max_context: model.config.max_position_embeddings,
        eos_token_ids: model.config.eos_token_ids.clone(),
        block_hash_seed: model.block_hash_seed(),
    };
    EngineCore::new(Scheduler::new(cfg, kv_blocks), backend)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<Sampled>,
    pub reason: FinishReason,
    pub usage: UsageInfo,
}

/// Submits every request, steps until all finish, returns each request's outcome.
pub fn run_all(core: &mut EngineCore, reqs: Vec<EngineRequest>) -> HashMap<String, Outcome> {
    let mut rxs = Vec::new();
    for r in reqs {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let id = r.id.clone();
        assert!(core.submit(r, tx));
        rxs.push((id, rx, Vec::new()));
    }
    let mut done = HashMap::new();
    while done.len() < rxs.len() {
        let progressed = core.step().unwrap().is_some();
        for (id, rx, toks) in rxs.iter_mut() {
            while let Ok(out) = rx.try_recv() {
                match out {
                    RequestOutput::Token { sampled, .. } => toks.push(sampled),
                    RequestOutput::Finished { reason, usage, .. } => {
                        done.insert(id.clone(), Outcome { tokens: std::mem::take(toks), reason, usage });
                    }
                    other => panic!("{id}: unexpected {other:?}"),
                }
            }
        }
        assert!(progressed || done.len() == rxs.len(), "engine went idle with requests unfinished");
    }
    done
}

/// Distinct pseudo-random prompts of Llama-3.1 ids.
pub fn prompt(seed: u32, len: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1000 + x % 100_000
        })
        .collect()
}
