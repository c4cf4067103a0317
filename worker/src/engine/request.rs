//! Validation is a type: a raw `WorkerGenerateRequest` becomes an [`EngineRequest`] (every
//! default filled, every limit checked) before the engine sees it.

use std::time::Instant;

use tokenfleet_proto::v1;

use super::sampler::SamplingConfig;

use tokenfleet_proto::limits;
pub use tokenfleet_proto::limits::{MAX_REQUEST_ID_BYTES, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS};

/// What the served model allows.
#[derive(Debug, Clone)]
pub struct ModelLimits {
    pub vocab_size: usize,
    /// Prompt + generated tokens must fit.
    pub max_context: usize,
    pub eos_token_ids: Vec<u32>,
}

/// Why a request was refused before reaching the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// Why a generation ended (engine side; maps 1:1 to the proto enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    Eos,
    StopToken,
    Cancelled,
}

impl FinishReason {
    pub fn to_proto(self) -> v1::FinishReason {
        match self {
            FinishReason::Length => v1::FinishReason::Length,
            FinishReason::Eos => v1::FinishReason::Eos,
            FinishReason::StopToken => v1::FinishReason::StopToken,
            FinishReason::Cancelled => v1::FinishReason::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        tokenfleet_proto::finish_reason_str(self.to_proto())
    }
}

/// A checked request, ready for the scheduler.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub id: String,
    pub prompt: Vec<u32>,
    /// Already generated elsewhere (resume): context, RNG position, penalties, limits.
    pub generated: Vec<u32>,
    pub sampling: SamplingConfig,
    pub seed: u64,
    /// Total generated tokens allowed, counting `generated`.
    pub max_new_tokens: u32,
    pub min_new_tokens: u32,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub top_logprobs: u32,
    pub logprobs: bool,
    pub priority: i32,
    pub arrival: Instant,
}

/// Checks and fills in sampling parameters.
pub fn sampling_config(p: Option<&v1::SamplingParams>, vocab_size: usize) -> Result<SamplingConfig, InvalidRequest> {
    let d = SamplingConfig::default();
    let Some(p) = p else { return Ok(d) };
    limits::check_sampling(p, vocab_size).map_err(InvalidRequest)?;
    Ok(SamplingConfig {
        temperature: p.temperature.unwrap_or(d.temperature),
        top_k: p.top_k.unwrap_or(d.top_k),
        top_p: p.top_p.unwrap_or(d.top_p),
        min_p: p.min_p.unwrap_or(d.min_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: p.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(d.frequency_penalty),
    })
}

/// Turns a worker request into an [`EngineRequest`]. `default_seed` is used when the
/// request carries none.
pub fn validate_worker_request(
    r: &v1::WorkerGenerateRequest,
    model: &ModelLimits,
    default_seed: u64,
) -> Result<EngineRequest, InvalidRequest> {
    if r.request_id.is_empty() || r.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(InvalidRequest(format!("request_id must be 1..={MAX_REQUEST_ID_BYTES} bytes")));
    }
    if r.prompt_ids.is_empty() {
        return Err(InvalidRequest("prompt_ids is empty".into()));
    }
    limits::check_token_ids("prompt_ids", &r.prompt_ids, model.vocab_size).map_err(InvalidRequest)?;
    limits::check_token_ids("generated_ids", &r.generated_ids, model.vocab_size).map_err(InvalidRequest)?;
    let sampling = sampling_config(r.sampling.as_ref(), model.vocab_size)?;
    let stopping = r.stopping.clone().unwrap_or_default();
    if stopping.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(InvalidRequest(format!("at most {MAX_STOP_TOKEN_IDS} stop_token_ids, got {}", stopping.stop_token_ids.len())));
    }
    limits::check_token_ids("stop_token_ids", &stopping.stop_token_ids, model.vocab_size).map_err(InvalidRequest)?;
    if r.top_logprobs > MAX_TOP_LOGPROBS {
        return Err(InvalidRequest(format!("top_logprobs must be <= {MAX_TOP_LOGPROBS}, got {}", r.top_logprobs)));
    }
    if !(-1000..=1000).contains(&r.priority) {
        return Err(InvalidRequest(format!("priority must be in [-1000, 1000], got {}", r.priority)));
    }
    let context = r.prompt_ids.len() + r.generated_ids.len();
    if context >= model.max_context {
        return Err(InvalidRequest(format!(
            "prompt ({} tokens) + generated_ids ({}) leaves no room in the model's context of {} tokens",
            r.prompt_ids.len(),
            r.generated_ids.len(),
            model.max_context
        )));
    }
    let room = (model.max_context - r.prompt_ids.len()) as u64;
    let max_new = if stopping.max_new_tokens == 0 { room } else { stopping.max_new_tokens as u64 };
    if max_new > room {
        return Err(InvalidRequest(format!(
            "prompt ({} tokens) + max_new_tokens ({max_new}) exceeds the model's context of {} tokens",
            r.prompt_ids.len(),
            model.max_context
        )));
    }
    if (r.generated_ids.len() as u64) > max_new {
        return Err(InvalidRequest(format!("generated_ids ({}) already exceed max_new_tokens ({max_new})", r.generated_ids.len())));
    }
    if stopping.min_new_tokens as u64 > max_new {
        return Err(InvalidRequest(format!("min_new_tokens ({}) exceeds max_new_tokens ({max_new})", stopping.min_new_tokens)));
    }
    Ok(EngineRequest {
        id: r.request_id.clone(),
        prompt: r.prompt_ids.clone(),
        generated: r.generated_ids.clone(),
        sampling,
        seed: r.sampling.as_ref().and_then(|s| s.seed).unwrap_or(default_seed),
        max_new_tokens: max_new as u32,
        min_new_tokens: stopping.min_new_tokens,
        stop_token_ids: stopping.stop_token_ids,
        ignore_eos: stopping.ignore_eos,
        top_logprobs: r.top_logprobs,
        logprobs: r.logprobs || r.top_logprobs > 0,
        priority: r.priority,
        arrival: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ModelLimits {
        ModelLimits { vocab_size: 100, max_context: 64, eos_token_ids: vec![2] }
    }

    fn req() -> v1::WorkerGenerateRequest {
        v1::WorkerGenerateRequest { request_id: "r".into(), prompt_ids: vec![1, 5, 7], ..Default::default() }
    }

    #[test]
    fn defaults_fill_in() {
        let r = validate_worker_request(&req(), &limits(), 9).unwrap();
        assert_eq!(r.seed, 9);
        assert_eq!(r.max_new_tokens, 61);
        assert_eq!(r.sampling, SamplingConfig::default());
    }

    #[test]
    fn every_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut v1::WorkerGenerateRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.prompt_ids.clear()), "prompt_ids"),
            (Box::new(|r| r.prompt_ids.push(100)), "prompt_ids[3]"),
            (Box::new(|r| r.request_id.clear()), "request_id"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { temperature: Some(f32::NAN), ..Default::default() })), "temperature"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { temperature: Some(-1.0), ..Default::default() })), "temperature"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { top_p: Some(0.0), ..Default::default() })), "top_p"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { top_p: Some(1.5), ..Default::default() })), "top_p"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { top_k: Some(101), ..Default::default() })), "top_k"),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { min_p: Some(2.0), ..Default::default() })), "min_p"),
            (
                Box::new(|r| r.sampling = Some(v1::SamplingParams { repetition_penalty: Some(0.0), ..Default::default() })),
                "repetition_penalty",
            ),
            (Box::new(|r| r.sampling = Some(v1::SamplingParams { presence_penalty: Some(3.0), ..Default::default() })), "presence_penalty"),
            (
                Box::new(|r| r.sampling = Some(v1::SamplingParams { frequency_penalty: Some(-3.0), ..Default::default() })),
                "frequency_penalty",
            ),
            (Box::new(|r| r.stopping = Some(v1::StoppingCriteria { max_new_tokens: 62, ..Default::default() })), "max_new_tokens"),
            (Box::new(|r| r.stopping = Some(v1::StoppingCriteria { stop_token_ids: vec![1; 65], ..Default::default() })), "stop_token_ids"),
            (
                Box::new(|r| r.stopping = Some(v1::StoppingCriteria { max_new_tokens: 3, min_new_tokens: 4, ..Default::default() })),
                "min_new_tokens",
            ),
            (Box::new(|r| r.top_logprobs = 21), "top_logprobs"),
            (Box::new(|r| r.priority = 5000), "priority"),
        ];
        for (mutate, needle) in cases {
            let mut r = req();
            mutate(&mut r);
            let err = validate_worker_request(&r, &limits(), 0).unwrap_err().0;
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }
}
