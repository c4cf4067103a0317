//! Offline generation through the engine core (no server, no threads): what the
//! `generate` command and the parity tests run. It uses the same scheduler, KV block
//! manager and sampler as `serve`.

use tokenfleet_proto::v1;

use crate::backend::{BLOCK_SIZE, Backend};
use crate::engine::request::{InvalidRequest, ModelLimits, validate_worker_request};
use crate::engine::sampler::Sampled;
use crate::engine::scheduler::{SchedulerConfig, UsageInfo};
use crate::engine::{EngineCore, FinishReason, RequestOutput, Scheduler};
use crate::model::Model;

/// The result of one offline generation.
#[derive(Debug, Clone)]
pub struct OfflineOutput {
    pub prompt_ids: Vec<u32>,
    /// One entry per generated token (with its raw logprob and requested alternatives).
    pub tokens: Vec<Sampled>,
    pub finish_reason: FinishReason,
    pub usage: UsageInfo,
    pub seed: u64,
}

impl OfflineOutput {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|s| s.token).collect()
    }
}

/// Why an offline generation failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    #[error("request refused: {0}")]
    Rejected(String),
    #[error("backend failed: {0}")]
    Backend(String),
}

/// The limits a model imposes on requests.
pub fn model_limits(model: &Model) -> ModelLimits {
    let c = &model.config;
    ModelLimits { vocab_size: c.vocab_size, max_context: c.max_position_embeddings, eos_token_ids: c.eos_token_ids.clone() }
}

/// Generates one request to completion on `backend`. `default_seed` applies when the
/// request has none.
pub fn generate(
    model: &Model,
    backend: Box<dyn Backend>,
    request: &v1::WorkerGenerateRequest,
    default_seed: u64,
) -> Result<OfflineOutput, OfflineError> {
    let limits = model_limits(model);
    let req = validate_worker_request(request, &limits, default_seed)?;
    let seed = req.seed;
    let kv_blocks = backend.kv_blocks();
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_batch_tokens: 2048,
            max_running: 1,
            max_waiting: 1,
            max_context: limits.max_context,
            eos_token_ids: limits.eos_token_ids.clone(),
            block_hash_seed: model.block_hash_seed(),
        },
        kv_blocks,
    );
    let mut core = EngineCore::new(scheduler, backend);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    core.submit(req, tx);
    let mut tokens = Vec::new();
    loop {
        core.step().map_err(|e| OfflineError::Backend(e.to_string()))?;
        while let Ok(out) = rx.try_recv() {
            match out {
                RequestOutput::Token { sampled, .. } => tokens.push(sampled),
                RequestOutput::Finished { reason, usage, .. } => {
                    return Ok(OfflineOutput { prompt_ids: request.prompt_ids.clone(), tokens, finish_reason: reason, usage, seed });
                }
                RequestOutput::Rejected(e) => return Err(OfflineError::Rejected(e.to_string())),
                RequestOutput::Failed(e) => return Err(OfflineError::Backend(e)),
            }
        }
        if !core.has_work() {
            return Err(OfflineError::Backend("engine went idle before the request finished".into()));
        }
    }
}

/// KV blocks that hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_SIZE)
}
