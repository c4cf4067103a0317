//! `generate`: one completion offline, through the same engine `serve` runs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde_json::json;
use tokenfleet_proto::v1;

use crate::backend::cpu::CpuBackend;
use crate::model::Model;
use crate::offline;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (tokenized with the model's tokenizer.json, BOS as its post-processor says).
    #[arg(long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt token ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: u32,
    #[arg(long, default_value_t = 0)]
    min_new_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    presence_penalty: Option<f32>,
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// RNG seed (random when omitted; printed in the JSON).
    #[arg(long)]
    seed: Option<u64>,
    /// Alternatives per generated token in the JSON output.
    #[arg(long, default_value_t = 0)]
    top_logprobs: u32,
    /// Extra stop token ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    stop_token_ids: Vec<u32>,
    #[arg(long)]
    ignore_eos: bool,
    /// KV blocks of 16 tokens (default: just enough for this request).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.model)?;
    let prompt_ids = match (&a.prompt, &a.prompt_ids) {
        (Some(text), _) => model.tokenizer.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let request = v1::WorkerGenerateRequest {
        request_id: "generate".into(),
        prompt_ids: prompt_ids.clone(),
        generated_ids: vec![],
        sampling: Some(v1::SamplingParams {
            temperature: Some(a.temperature),
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
        }),
        stopping: Some(v1::StoppingCriteria {
            max_new_tokens: a.max_new_tokens,
            min_new_tokens: a.min_new_tokens,
            stop: vec![],
            stop_token_ids: a.stop_token_ids.clone(),
            ignore_eos: a.ignore_eos,
        }),
        top_logprobs: a.top_logprobs,
        priority: 0,
        logprobs: true,
    };
    let kv_blocks = a.kv_blocks.unwrap_or_else(|| offline::blocks_for(prompt_ids.len() + a.max_new_tokens as usize).max(1));
    let backend = CpuBackend::new(&model, kv_blocks);
    let out = offline::generate(&model, Box::new(backend), &request, rand::random())?;
    let tokens = out.token_ids();
    let logprobs: Vec<Vec<serde_json::Value>> =
        out.tokens.iter().map(|s| s.top.iter().map(|(id, lp)| json!({"id": id, "logprob": lp})).collect()).collect();
    let seed = out.seed;
    let reason = out.finish_reason.as_str();
    let text = model.tokenizer.decode(&tokens, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    if a.json {
        let out = json!({
            "prompt_ids": prompt_ids,
            "token_ids": tokens,
            "text": text,
            "finish_reason": reason,
            "top_logprobs": logprobs,
            "seed": seed,
        });
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout, "{text}")?;
    }
    Ok(())
}
