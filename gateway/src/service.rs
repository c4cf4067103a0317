//! `tokenfleet.v1.TextGeneration`: the public API.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::Stream;
use tokenfleet_proto::v1;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Request, Response, Status, Streaming};

use crate::errors::GatewayError;
use crate::generation;
use crate::pool::ModelGroup;
use crate::state::Gateway;
use crate::validate::{ValidGenerate, validate};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct TextGenerationService {
    gw: Arc<Gateway>,
}

impl TextGenerationService {
    pub fn new(gw: Arc<Gateway>) -> Self {
        TextGenerationService { gw }
    }
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub fn deadline_of(md: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let t = parse_grpc_timeout(md.get("grpc-timeout")?.to_str().ok()?)?;
    Instant::now().checked_add(t)
}

/// Admission: not draining, a model is served, and an in-flight slot is free.
pub fn admit(gw: &Gateway) -> Result<(OwnedSemaphorePermit, Arc<ModelGroup>), GatewayError> {
    if gw.is_draining() {
        return Err(GatewayError::Draining);
    }
    let (group, _) = gw.pool.primary().ok_or(GatewayError::NoHealthyWorker)?;
    let permit = gw.inflight.clone().try_acquire_owned().map_err(|_| GatewayError::TooManyInFlight(gw.max_inflight))?;
    gw.stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok((permit, group))
}

/// A span for one generation, child of `parent` (or of the remote context in `md`).
pub fn request_span(parent: Option<&tracing::Span>, md: Option<&tonic::metadata::MetadataMap>) -> tracing::Span {
    let span = match parent {
        Some(p) => {
            tracing::info_span!(parent: p, "gateway.generate", request_id = tracing::field::Empty, prompt_tokens = tracing::field::Empty)
        }
        None => tracing::info_span!("gateway.generate", request_id = tracing::field::Empty, prompt_tokens = tracing::field::Empty),
    };
    if let Some(md) = md {
        tokenfleet_proto::runtime::telemetry::adopt_remote_parent(&span, md);
    }
    span
}

/// The chunks of a started generation, and the validated request.
pub type Started = (mpsc::Receiver<Result<v1::GenerateStreamResponse, Status>>, ValidGenerate);

/// Validates and starts a generation whose chunks arrive on the returned receiver.
pub fn start(
    gw: &Arc<Gateway>,
    r: v1::GenerateRequest,
    deadline: Option<Instant>,
    origin: generation::Origin,
) -> Result<Started, GatewayError> {
    let admitted = admit(gw).and_then(|(permit, group)| Ok((permit, validate(r, &group, &gw.cfg.limits)?, group)));
    let (permit, valid, group) = match admitted {
        Ok(v) => v,
        Err(e) => {
            gw.metrics.record_rpc(origin.method, e.code());
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(gw.cfg.stream_buffer.max(1));
    let gw2 = gw.clone();
    let v2 = valid.clone();
    tokio::spawn(async move {
        let _permit = permit;
        generation::run(gw2, group, v2, tx, deadline, origin).await;
    });
    Ok((rx, valid))
}

fn origin(method: &'static str, md: &tonic::metadata::MetadataMap) -> generation::Origin {
    generation::Origin { method, span: request_span(None, Some(md)), started: Instant::now() }
}

#[tonic::async_trait]
impl v1::text_generation_server::TextGeneration for TextGenerationService {
    type GenerateStreamStream = BoxStream<v1::GenerateStreamResponse>;
    type SessionStream = BoxStream<v1::SessionResponse>;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<v1::GenerateResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let o = origin("Generate", request.metadata());
        let (mut rx, valid) = start(&self.gw, request.into_inner(), deadline, o)?;
        let mut resp = v1::GenerateResponse { request_id: valid.request_id, seed: valid.seed, ..Default::default() };
        while let Some(chunk) = rx.recv().await {
            let c = chunk?;
            resp.token_ids.extend(c.token_ids);
            resp.text.push_str(&c.text);
            resp.logprobs.extend(c.logprobs);
            if let Some(f) = c.finish_reason {
                resp.finish_reason = f;
                resp.usage = c.usage;
                resp.timings = c.timings;
                return Ok(Response::new(resp));
            }
        }
        Err(GatewayError::Internal("the generation ended without a final message".into()).into())
    }

    async fn generate_stream(&self, request: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let o = origin("GenerateStream", request.metadata());
        let (rx, _) = start(&self.gw, request.into_inner(), deadline, o)?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn session(&self, request: Request<Streaming<v1::SessionRequest>>) -> Result<Response<Self::SessionStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let span = tracing::info_span!("gateway.session");
        tokenfleet_proto::runtime::telemetry::adopt_remote_parent(&span, request.metadata());
        let rx = crate::session::run(self.gw.clone(), request.into_inner(), deadline, span);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn tokenize(&self, request: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        let res = self.tokenize_inner(request.into_inner());
        self.gw.metrics.record_rpc("Tokenize", res.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code()));
        res
    }

    async fn model_info(&self, _request: Request<v1::ModelInfoRequest>) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let res = self.model_info_inner();
        self.gw.metrics.record_rpc("ModelInfo", res.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|e| e.code()));
        res
    }
}

impl TextGenerationService {
    fn tokenize_inner(&self, r: v1::TokenizeRequest) -> Result<Response<v1::TokenizeResponse>, Status> {
        if r.text.len() > tokenfleet_proto::limits::MAX_TEXT_BYTES {
            return Err(GatewayError::Invalid(format!(
                "text is {} bytes; at most {} are allowed",
                r.text.len(),
                tokenfleet_proto::limits::MAX_TEXT_BYTES
            ))
            .into());
        }
        let (group, _) = self.gw.pool.primary().ok_or(GatewayError::NoHealthyWorker)?;
        let enc = group
            .tokenizer
            .encode(r.text, r.add_special_tokens.unwrap_or(true))
            .map_err(|e| GatewayError::Invalid(format!("cannot tokenize: {e}")))?;
        Ok(Response::new(v1::TokenizeResponse { ids: enc.get_ids().to_vec(), tokens: enc.get_tokens().to_vec() }))
    }

    fn model_info_inner(&self) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let (group, healthy) = self.gw.pool.primary().ok_or(GatewayError::NoHealthyWorker)?;
        let i = &group.info;
        Ok(Response::new(v1::ModelInfoResponse {
            model_id: i.model_id.clone(),
            model_hash: i.model_hash.clone(),
            architecture: i.architecture.clone(),
            vocab_size: i.vocab_size,
            max_context: i.max_context,
            eos_token_ids: i.eos_token_ids.clone(),
            bos_token_id: i.bos_token_id,
            healthy_workers: healthy as u32,
            dtype: i.dtype.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5Q"), None);
    }
}
