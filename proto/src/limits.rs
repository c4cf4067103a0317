//! The request limits documented in the .proto files, checked identically by the gateway
//! (to fail fast, before tokenizing or routing) and by the worker (its own defence).

use crate::v1;

/// Longest request id in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Largest text prompt in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Most alternatives per generated token.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most extra stop token ids.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Most stop strings.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 256;
/// Priority range.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

fn check_f32(name: &str, v: Option<f32>, lo: f32, lo_inclusive: bool, hi: f32) -> Result<(), String> {
    let Some(v) = v else { return Ok(()) };
    let ok_lo = if lo_inclusive { v >= lo } else { v > lo };
    if v.is_nan() || !ok_lo || v > hi {
        let bracket = if lo_inclusive { '[' } else { '(' };
        return Err(format!("{name} must be in {bracket}{lo}, {hi}], got {v}"));
    }
    Ok(())
}

/// Checks every set field of `p` against its documented range.
pub fn check_sampling(p: &v1::SamplingParams, vocab_size: usize) -> Result<(), String> {
    check_f32("temperature", p.temperature, 0.0, true, 100.0)?;
    if let Some(k) = p.top_k
        && k as usize > vocab_size
    {
        return Err(format!("top_k must be in [0, {vocab_size}], got {k}"));
    }
    check_f32("top_p", p.top_p, 0.0, false, 1.0)?;
    check_f32("min_p", p.min_p, 0.0, true, 1.0)?;
    check_f32("repetition_penalty", p.repetition_penalty, 0.0, false, 10.0)?;
    check_f32("presence_penalty", p.presence_penalty, -2.0, true, 2.0)?;
    check_f32("frequency_penalty", p.frequency_penalty, -2.0, true, 2.0)?;
    Ok(())
}

/// Checks token ids against the vocabulary; the message names the field and index.
pub fn check_token_ids(name: &str, ids: &[u32], vocab_size: usize) -> Result<(), String> {
    match ids.iter().enumerate().find(|(_, t)| **t as usize >= vocab_size) {
        Some((i, t)) => Err(format!("{name}[{i}] = {t} is not a token id (vocab_size {vocab_size})")),
        None => Ok(()),
    }
}

/// Checks the parts of a stopping criteria that do not depend on the prompt.
pub fn check_stopping(s: &v1::StoppingCriteria, vocab_size: usize) -> Result<(), String> {
    if s.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(format!("at most {MAX_STOP_TOKEN_IDS} stop_token_ids, got {}", s.stop_token_ids.len()));
    }
    check_token_ids("stop_token_ids", &s.stop_token_ids, vocab_size)?;
    if s.stop.len() > MAX_STOP_STRINGS {
        return Err(format!("at most {MAX_STOP_STRINGS} stop strings, got {}", s.stop.len()));
    }
    if let Some((i, _)) = s.stop.iter().enumerate().find(|(_, x)| x.is_empty() || x.len() > MAX_STOP_STRING_BYTES) {
        return Err(format!("stop[{i}] must be 1..={MAX_STOP_STRING_BYTES} bytes"));
    }
    if s.max_new_tokens > 0 && s.min_new_tokens > s.max_new_tokens {
        return Err(format!("min_new_tokens ({}) exceeds max_new_tokens ({})", s.min_new_tokens, s.max_new_tokens));
    }
    Ok(())
}
