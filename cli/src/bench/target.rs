//! The server under load: a gateway (`TextGeneration/GenerateStream`) or a worker
//! (`Worker/Generate`), reached over a small pool of HTTP/2 connections. One call sends one
//! request and times its stream.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokenfleet_proto::v1;
use tokenfleet_proto::v1::text_generation_client::TextGenerationClient;
use tokenfleet_proto::v1::worker_client::WorkerClient;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

use super::args::{BenchArgs, Target};
use super::metrics::{Outcome, gaps};
use super::workload::{Prompt, RequestSpec};

/// Adds `authorization: Bearer KEY` to every gateway call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type GatewayClient = TextGenerationClient<InterceptedService<Channel, Bearer>>;

/// What the benchmark needs to know about the served model.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub model_id: String,
    pub vocab_size: u32,
    /// EOS and BOS ids: kept out of synthetic prompts.
    pub special_ids: Vec<u32>,
}

/// Per-request settings shared by the whole run.
#[derive(Debug, Clone)]
pub struct RequestParams {
    pub ignore_eos: bool,
    pub temperature: f32,
    pub timeout: Option<Duration>,
}

enum Clients {
    Gateway(Vec<GatewayClient>),
    Worker(Vec<WorkerClient<Channel>>),
}

pub struct Server {
    clients: Clients,
    pub facts: ModelFacts,
    pub addr: String,
}

fn normalize(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_string())
        .with_context(|| format!("bad address `{addr}`"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

impl Server {
    /// Opens `connections` channels and asks the server what model it serves.
    pub async fn connect(a: &BenchArgs, connections: usize) -> anyhow::Result<Server> {
        let addr = normalize(&a.addr);
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            channels.push(channel(&addr).await?);
        }
        let (clients, facts) = match a.target {
            Target::Gateway => {
                let auth = match &a.api_key {
                    Some(k) => Some(format!("Bearer {k}").parse().context("the API key is not valid header text")?),
                    None => None,
                };
                let clients: Vec<GatewayClient> =
                    channels.into_iter().map(|c| TextGenerationClient::with_interceptor(c, Bearer(auth.clone()))).collect();
                let mut c = clients.first().cloned().context("no connection")?;
                let i = c.model_info(v1::ModelInfoRequest {}).await.map_err(status_err).context("ModelInfo")?.into_inner();
                if i.healthy_workers == 0 {
                    bail!("the gateway at {addr} has no healthy worker");
                }
                let special = i.eos_token_ids.iter().copied().chain(i.bos_token_id).collect();
                (Clients::Gateway(clients), ModelFacts { model_id: i.model_id, vocab_size: i.vocab_size, special_ids: special })
            }
            Target::Worker => {
                let clients: Vec<WorkerClient<Channel>> = channels.into_iter().map(WorkerClient::new).collect();
                let mut c = clients.first().cloned().context("no connection")?;
                let i = c.info(v1::InfoRequest {}).await.map_err(status_err).context("Worker.Info")?.into_inner();
                let special = i.eos_token_ids.iter().copied().chain(i.bos_token_id).collect();
                (Clients::Worker(clients), ModelFacts { model_id: i.model_id, vocab_size: i.vocab_size, special_ids: special })
            }
        };
        Ok(Server { clients, facts, addr })
    }

    /// Token ids of `text` with the served model's tokenizer: the gateway's Tokenize, or the
    /// worker's tokenizer.json (workers do not tokenize).
    pub async fn tokenize_all(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<u32>>> {
        match &self.clients {
            Clients::Gateway(cs) => {
                let mut c = cs.first().cloned().context("no connection")?;
                let mut out = Vec::with_capacity(texts.len());
                for t in texts {
                    let r = c
                        .tokenize(v1::TokenizeRequest { text: t.clone(), add_special_tokens: None })
                        .await
                        .map_err(status_err)
                        .context("Tokenize")?;
                    out.push(r.into_inner().ids);
                }
                Ok(out)
            }
            Clients::Worker(cs) => {
                let mut c = cs.first().cloned().context("no connection")?;
                let mut s = c.get_tokenizer(v1::GetTokenizerRequest {}).await.map_err(status_err).context("GetTokenizer")?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = s.next().await {
                    bytes.extend(chunk.map_err(status_err).context("GetTokenizer")?.data);
                }
                let tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("the worker's tokenizer.json: {e}"))?;
                texts
                    .iter()
                    .map(|t| {
                        tok.encode(t.as_str(), true).map(|e| e.get_ids().to_vec()).map_err(|e| anyhow::anyhow!("tokenizing a prompt: {e}"))
                    })
                    .collect()
            }
        }
    }

    /// Sends one request on connection `conn % connections` and times its stream. `t0` is the
    /// start of the run; failures are returned as unsuccessful outcomes, never as errors.
    pub async fn send(&self, conn: usize, id: String, spec: &RequestSpec, p: &RequestParams, t0: Instant) -> Outcome {
        let sent = Instant::now();
        let mut rec = Recorder::new(sent);
        let result = match &self.clients {
            Clients::Gateway(cs) => match cs.get(conn % cs.len().max(1)) {
                Some(c) => gateway_stream(c.clone(), id, spec, p, &mut rec).await,
                None => Err("no connection".to_string()),
            },
            Clients::Worker(cs) => match cs.get(conn % cs.len().max(1)) {
                Some(c) => worker_stream(c.clone(), id, spec, p, &mut rec).await,
                None => Err("no connection".to_string()),
            },
        };
        rec.finish(result, spec, sent.duration_since(t0).as_secs_f64())
    }
}

pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Arrival times of token-carrying chunks and the final accounting of one stream.
struct Recorder {
    sent: Instant,
    chunk_times: Vec<f64>,
    chunk_tokens: Vec<u32>,
    ids: Vec<u32>,
    end: Option<f64>,
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
}

impl Recorder {
    fn new(sent: Instant) -> Self {
        Recorder {
            sent,
            chunk_times: Vec::new(),
            chunk_tokens: Vec::new(),
            ids: Vec::new(),
            end: None,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    fn chunk(&mut self, ids: &[u32], last: bool, usage: Option<&v1::Usage>) {
        let now = self.sent.elapsed().as_secs_f64();
        if !ids.is_empty() {
            self.chunk_times.push(now);
            self.chunk_tokens.push(ids.len() as u32);
            self.ids.extend_from_slice(ids);
        }
        if last {
            self.end = Some(now);
            if let Some(u) = usage {
                self.prompt_tokens = Some(u.prompt_tokens as usize);
                self.completion_tokens = Some(u.completion_tokens as usize);
            }
        }
    }

    fn finish(self, result: Result<(), String>, spec: &RequestSpec, start: f64) -> Outcome {
        let received: usize = self.chunk_tokens.iter().map(|&n| n as usize).sum();
        let prompt_len = self.prompt_tokens.or(spec.prompt_len()).unwrap_or(0);
        let error = match (&result, self.end, self.chunk_times.first()) {
            (Err(e), _, _) => Some(e.clone()),
            (Ok(()), None, _) => Some("the stream ended without a final message".to_string()),
            (Ok(()), Some(_), None) => Some("the request finished without producing a token".to_string()),
            (Ok(()), Some(_), Some(_)) => None,
        };
        Outcome {
            success: error.is_none(),
            error,
            prompt_len,
            output_len: self.completion_tokens.unwrap_or(received).max(received),
            ttft: self.chunk_times.first().copied().unwrap_or(0.0),
            itl: gaps(&self.chunk_times),
            latency: self.end.unwrap_or_else(|| self.sent.elapsed().as_secs_f64()),
            start,
            chunk_tokens: self.chunk_tokens,
            output_ids: self.ids,
        }
    }
}

fn sampling(p: &RequestParams) -> v1::SamplingParams {
    v1::SamplingParams { temperature: Some(p.temperature), ..Default::default() }
}

fn stopping(spec: &RequestSpec, p: &RequestParams) -> v1::StoppingCriteria {
    v1::StoppingCriteria { max_new_tokens: spec.output_len, ignore_eos: p.ignore_eos, ..Default::default() }
}

async fn gateway_stream(mut c: GatewayClient, id: String, spec: &RequestSpec, p: &RequestParams, rec: &mut Recorder) -> Result<(), String> {
    let input = match &spec.prompt {
        Prompt::Ids(ids) => v1::generate_request::Input::Tokens(v1::TokenIds { ids: ids.clone() }),
        Prompt::Text(t) => v1::generate_request::Input::Text(t.clone()),
    };
    let req = v1::GenerateRequest {
        request_id: id,
        input: Some(input),
        sampling: Some(sampling(p)),
        stopping: Some(stopping(spec, p)),
        ..Default::default()
    };
    let mut req = tonic::Request::new(req);
    if let Some(t) = p.timeout {
        req.set_timeout(t);
    }
    let mut s = c.generate_stream(req).await.map_err(|e| status_text(&e))?.into_inner();
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| status_text(&e))?;
        let last = m.finish_reason.is_some();
        rec.chunk(&m.token_ids, last, m.usage.as_ref());
        if last {
            break;
        }
    }
    Ok(())
}

async fn worker_stream(
    mut c: WorkerClient<Channel>,
    id: String,
    spec: &RequestSpec,
    p: &RequestParams,
    rec: &mut Recorder,
) -> Result<(), String> {
    let Prompt::Ids(ids) = &spec.prompt else {
        return Err("a worker takes token ids: text prompts must be tokenized first".to_string());
    };
    let req = v1::WorkerGenerateRequest {
        request_id: id,
        prompt_ids: ids.clone(),
        sampling: Some(sampling(p)),
        stopping: Some(stopping(spec, p)),
        ..Default::default()
    };
    let mut req = tonic::Request::new(req);
    if let Some(t) = p.timeout {
        req.set_timeout(t);
    }
    let mut s = c.generate(req).await.map_err(|e| status_text(&e))?.into_inner();
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| status_text(&e))?;
        let last = m.finish_reason.is_some();
        rec.chunk(&m.token_ids, last, m.usage.as_ref());
        if last {
            break;
        }
    }
    Ok(())
}
