//! Validation is a type: a public `GenerateRequest` becomes a [`ValidGenerate`] (prompt
//! tokenized, seed drawn, every limit checked) before routing sees it.

use tokenfleet_proto::limits;
use tokenfleet_proto::v1;

use crate::errors::GatewayError;
use crate::pool::ModelGroup;

/// Limits of this gateway on top of the model's.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Longest prompt in tokens (0 = the model's context).
    pub max_prompt_tokens: usize,
    /// Largest max_new_tokens (0 = the model's context).
    pub max_new_tokens: usize,
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct ValidGenerate {
    pub request_id: String,
    pub prompt_ids: Vec<u32>,
    /// With the seed always set.
    pub sampling: v1::SamplingParams,
    /// Token-level criteria for workers (max_new_tokens resolved, stop strings removed).
    pub stopping: v1::StoppingCriteria,
    pub stop_strings: Vec<String>,
    pub top_logprobs: u32,
    pub logprobs: bool,
    pub priority: i32,
    pub skip_special_tokens: bool,
    pub seed: u64,
}

fn invalid(m: impl Into<String>) -> GatewayError {
    GatewayError::Invalid(m.into())
}

/// Checks `r` against the protocol limits, the model and the gateway's limits.
pub fn validate(r: v1::GenerateRequest, group: &ModelGroup, lim: &RequestLimits) -> Result<ValidGenerate, GatewayError> {
    let vocab = group.info.vocab_size as usize;
    let request_id = if r.request_id.is_empty() { format!("gw-{:016x}", rand::random::<u64>()) } else { r.request_id.clone() };
    if request_id.len() > limits::MAX_REQUEST_ID_BYTES {
        return Err(invalid(format!("request_id must be at most {} bytes", limits::MAX_REQUEST_ID_BYTES)));
    }
    let add_special = r.add_special_tokens.unwrap_or(true);
    let prompt_ids = match r.input {
        None => return Err(invalid("the prompt is missing: set `text` or `tokens`")),
        Some(v1::generate_request::Input::Text(t)) => {
            if t.is_empty() {
                return Err(invalid("the prompt text is empty"));
            }
            if t.len() > limits::MAX_TEXT_BYTES {
                return Err(invalid(format!("the prompt text is {} bytes; at most {} are allowed", t.len(), limits::MAX_TEXT_BYTES)));
            }
            group.tokenizer.encode(t, add_special).map_err(|e| invalid(format!("cannot tokenize the prompt: {e}")))?.get_ids().to_vec()
        }
        Some(v1::generate_request::Input::Tokens(t)) => {
            if t.ids.is_empty() {
                return Err(invalid("the prompt token list is empty"));
            }
            limits::check_token_ids("tokens.ids", &t.ids, vocab).map_err(invalid)?;
            t.ids
        }
    };
    if prompt_ids.is_empty() {
        return Err(invalid("the prompt tokenizes to no tokens"));
    }
    let max_context = group.info.max_context as usize;
    let max_prompt = if lim.max_prompt_tokens == 0 { max_context } else { lim.max_prompt_tokens.min(max_context) };
    if prompt_ids.len() >= max_prompt.max(1) {
        return Err(invalid(format!(
            "the prompt has {} tokens; at most {} fit (max context {max_context})",
            prompt_ids.len(),
            max_prompt.saturating_sub(1)
        )));
    }
    let mut sampling = r.sampling.unwrap_or_default();
    limits::check_sampling(&sampling, vocab).map_err(invalid)?;
    let seed = *sampling.seed.get_or_insert_with(rand::random);
    let mut stopping = r.stopping.unwrap_or_default();
    limits::check_stopping(&stopping, vocab).map_err(invalid)?;
    let room = max_context - prompt_ids.len();
    let cap = if lim.max_new_tokens == 0 { room } else { lim.max_new_tokens.min(room) };
    if stopping.max_new_tokens as usize > cap {
        return Err(invalid(format!(
            "max_new_tokens {} is too large: the prompt has {} tokens, the context is {max_context}, the limit is {cap}",
            stopping.max_new_tokens,
            prompt_ids.len()
        )));
    }
    if stopping.max_new_tokens == 0 {
        stopping.max_new_tokens = cap as u32;
    }
    if stopping.min_new_tokens > stopping.max_new_tokens {
        return Err(invalid(format!("min_new_tokens ({}) exceeds max_new_tokens ({})", stopping.min_new_tokens, stopping.max_new_tokens)));
    }
    if r.top_logprobs > limits::MAX_TOP_LOGPROBS {
        return Err(invalid(format!("top_logprobs must be at most {}, got {}", limits::MAX_TOP_LOGPROBS, r.top_logprobs)));
    }
    if !limits::PRIORITY_RANGE.contains(&r.priority) {
        return Err(invalid(format!("priority must be in [-1000, 1000], got {}", r.priority)));
    }
    let stop_strings = std::mem::take(&mut stopping.stop);
    Ok(ValidGenerate {
        request_id,
        prompt_ids,
        sampling,
        stopping,
        stop_strings,
        top_logprobs: r.top_logprobs,
        logprobs: r.logprobs || r.top_logprobs > 0,
        priority: r.priority,
        skip_special_tokens: r.skip_special_tokens.unwrap_or(true),
        seed,
    })
}
