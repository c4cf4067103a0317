//! Client commands against a gateway.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use tokenfleet_proto::v1;
use tokenfleet_proto::v1::text_generation_client::TextGenerationClient;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Gateway address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "TOKENFLEET_ADDR")]
    pub addr: String,
    /// API key (sent as `authorization: Bearer KEY`).
    #[arg(long, env = "TOKENFLEET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: u32,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string; repeatable.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Prompt text.
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// A prompt; repeatable — each becomes one generation in the session.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    pub text: String,
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = TextGenerationClient<InterceptedService<Channel, Auth>>;

pub async fn connect(c: &ConnectArgs) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(c.addr.clone())
        .with_context(|| format!("bad address `{}`", c.addr))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", c.addr))?;
    let auth = match &c.api_key {
        Some(k) => Some(format!("Bearer {k}").parse().context("the API key is not valid header text")?),
        None => None,
    };
    Ok(TextGenerationClient::with_interceptor(channel, Auth(auth)))
}

pub fn request(prompt: &str, s: &SamplingArgs) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Text(prompt.to_string())),
        sampling: Some(v1::SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            ..Default::default()
        }),
        stopping: Some(v1::StoppingCriteria {
            max_new_tokens: s.max_new_tokens,
            stop: s.stop.clone(),
            ignore_eos: s.ignore_eos,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reason(f: i32) -> &'static str {
    tokenfleet_proto::finish_reason_str(v1::FinishReason::try_from(f).unwrap_or(v1::FinishReason::Unspecified))
}

pub async fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.conn).await?;
    let r = c.generate(request(&a.prompt, &a.sampling)).await.map_err(status_err)?.into_inner();
    let mut out = std::io::stdout().lock();
    if a.json {
        let usage = r.usage.unwrap_or_default();
        let v = serde_json::json!({
            "request_id": r.request_id, "token_ids": r.token_ids, "text": r.text, "finish_reason": reason(r.finish_reason),
            "seed": r.seed, "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens},
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", r.text)?;
    }
    Ok(())
}

pub async fn stream(a: GenerateArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.conn).await?;
    let mut s = c.generate_stream(request(&a.prompt, &a.sampling)).await.map_err(status_err)?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(m) = s.next().await {
        let m = m.map_err(status_err)?;
        write!(out, "{}", m.text)?;
        out.flush()?;
        if let Some(f) = m.finish_reason {
            writeln!(out)?;
            if a.json {
                let u = m.usage.unwrap_or_default();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"finish_reason": reason(f), "completion_tokens": u.completion_tokens, "seed": m.seed})
                )?;
            }
        }
    }
    Ok(())
}

pub async fn session(a: SessionArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.conn).await?;
    let starts: Vec<v1::SessionRequest> = a
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| v1::SessionRequest {
            kind: Some(v1::session_request::Kind::Start(v1::StartGeneration {
                request_id: format!("g{i}"),
                request: Some(request(p, &a.sampling)),
            })),
        })
        .collect();
    let mut s = c.session(tokio_stream::iter(starts)).await.map_err(status_err)?.into_inner();
    let mut texts = vec![String::new(); a.prompts.len()];
    let mut out = std::io::stdout().lock();
    while let Some(m) = s.next().await {
        let m = m.map_err(status_err)?;
        let idx: usize = m.request_id.trim_start_matches('g').parse().unwrap_or(0);
        match m.kind {
            Some(v1::session_response::Kind::Chunk(ch)) => {
                if let Some(t) = texts.get_mut(idx) {
                    t.push_str(&ch.text);
                }
                if let Some(f) = ch.finish_reason {
                    writeln!(out, "[{}] ({}) {}", m.request_id, reason(f), texts.get(idx).map(String::as_str).unwrap_or(""))?;
                }
            }
            Some(v1::session_response::Kind::Error(e)) => writeln!(out, "[{}] error {}: {}", m.request_id, e.code, e.message)?,
            None => {}
        }
    }
    Ok(())
}

pub async fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    let mut c = connect(&a.conn).await?;
    let r = c.tokenize(v1::TokenizeRequest { text: a.text, add_special_tokens: None }).await.map_err(status_err)?.into_inner();
    writeln!(std::io::stdout().lock(), "{}", serde_json::json!({"ids": r.ids, "tokens": r.tokens}))?;
    Ok(())
}

pub async fn info(a: ConnectArgs) -> anyhow::Result<()> {
    let mut c = connect(&a).await?;
    let i = c.model_info(v1::ModelInfoRequest {}).await.map_err(status_err)?.into_inner();
    let v = serde_json::json!({
        "model_id": i.model_id, "model_hash": i.model_hash, "architecture": i.architecture, "vocab_size": i.vocab_size,
        "max_context": i.max_context, "eos_token_ids": i.eos_token_ids, "bos_token_id": i.bos_token_id,
        "healthy_workers": i.healthy_workers, "dtype": i.dtype,
    });
    writeln!(std::io::stdout().lock(), "{v}")?;
    Ok(())
}

pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
