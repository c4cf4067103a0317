//! Validation is a type: a raw `WorkerGenerateRequest` becomes an [`EngineRequest`] (every
//! default filled, every limit checked) before the engine sees it.

use std::time::Instant;

use tokenfleet_proto::v1;

use super::sampler::SamplingConfig;

/// Most alternatives per token.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most extra stop token ids.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Longest request id.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

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

fn check_range(name: &str, v: f32, lo: f32, lo_inclusive: bool, hi: f32) -> Result<f32, InvalidRequest> {
    let ok_lo = if lo_inclusive { v >= lo } else { v > lo };
    if v.is_nan() || !ok_lo || v > hi {
        let bracket = if lo_inclusive { '[' } else { '(' };
        return Err(InvalidRequest(format!("{name} must be in {bracket}{lo}, {hi}], got {v}")));
    }
    Ok(v)
}

/// Checks and fills in sampling parameters (shared with the gateway's validation).
pub fn sampling_config(p: Option<&v1::SamplingParams>, vocab_size: usize) -> Result<SamplingConfig, InvalidRequest> {
    let mut c = SamplingConfig::default();
    let Some(p) = p else { return Ok(c) };
    if let Some(t) = p.temperature {
        c.temperature = check_range("temperature", t, 0.0, true, 100.0)?;
    }
    if let Some(k) = p.top_k {
        if k as usize > vocab_size {
            return Err(InvalidRequest(format!("top_k must be in [0, {vocab_size}], got {k}")));
        }
        c.top_k = k;
    }
    if let Some(v) = p.top_p {
        c.top_p = check_range("top_p", v, 0.0, false, 1.0)?;
    }
    if let Some(v) = p.min_p {
        c.min_p = check_range("min_p", v, 0.0, true, 1.0)?;
    }
    if let Some(v) = p.repetition_penalty {
        c.repetition_penalty = check_range("repetition_penalty", v, 0.0, false, 10.0)?;
    }
    if let Some(v) = p.presence_penalty {
        c.presence_penalty = check_range("presence_penalty", v, -2.0, true, 2.0)?;
    }
    if let Some(v) = p.frequency_penalty {
        c.frequency_penalty = check_range("frequency_penalty", v, -2.0, true, 2.0)?;
    }
    Ok(c)
}

fn check_ids(name: &str, ids: &[u32], vocab: usize) -> Result<(), InvalidRequest> {
    if let Some((i, t)) = ids.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
        return Err(InvalidRequest(format!("{name}[{i}] = {t} is not a token id (vocab_size {vocab})")));
    }
    Ok(())
}

/// Turns a worker request into an [`EngineRequest`]. `default_seed` is used when the
/// request carries none.
pub fn validate_worker_request(
    r: &v1::WorkerGenerateRequest,
    limits: &ModelLimits,
    default_seed: u64,
) -> Result<EngineRequest, InvalidRequest> {
    if r.request_id.is_empty() || r.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(InvalidRequest(format!("request_id must be 1..={MAX_REQUEST_ID_BYTES} bytes")));
    }
    if r.prompt_ids.is_empty() {
        return Err(InvalidRequest("prompt_ids is empty".into()));
    }
    check_ids("prompt_ids", &r.prompt_ids, limits.vocab_size)?;
    check_ids("generated_ids", &r.generated_ids, limits.vocab_size)?;
    let sampling = sampling_config(r.sampling.as_ref(), limits.vocab_size)?;
    let stopping = r.stopping.clone().unwrap_or_default();
    if stopping.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(InvalidRequest(format!("at most {MAX_STOP_TOKEN_IDS} stop_token_ids, got {}", stopping.stop_token_ids.len())));
    }
    check_ids("stop_token_ids", &stopping.stop_token_ids, limits.vocab_size)?;
    if r.top_logprobs > MAX_TOP_LOGPROBS {
        return Err(InvalidRequest(format!("top_logprobs must be <= {MAX_TOP_LOGPROBS}, got {}", r.top_logprobs)));
    }
    if !(-1000..=1000).contains(&r.priority) {
        return Err(InvalidRequest(format!("priority must be in [-1000, 1000], got {}", r.priority)));
    }
    let context = r.prompt_ids.len() + r.generated_ids.len();
    if context >= limits.max_context {
        return Err(InvalidRequest(format!(
            "prompt ({} tokens) + generated_ids ({}) leaves no room in the model's context of {} tokens",
            r.prompt_ids.len(),
            r.generated_ids.len(),
            limits.max_context
        )));
    }
    let room = (limits.max_context - r.prompt_ids.len()) as u64;
    let max_new = if stopping.max_new_tokens == 0 { room } else { stopping.max_new_tokens as u64 };
    if max_new > room {
        return Err(InvalidRequest(format!(
            "prompt ({} tokens) + max_new_tokens ({max_new}) exceeds the model's context of {} tokens",
            r.prompt_ids.len(),
            limits.max_context
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
        let cases: Vec<(Box<dyn Fn(&mut v1::WorkerGenerateRequest)>, &str)> = vec![
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
