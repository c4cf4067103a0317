//! The `tokenfleet.v1.Worker` gRPC service over the engine thread.

pub mod metrics;
pub mod status;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use tokenfleet_proto::v1;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::{Request, Response, Status};

use tokenfleet_proto::runtime::telemetry;

use crate::engine::core::RequestOutput;
use crate::engine::handle::EngineHandle;
use crate::engine::request::{ModelLimits, validate_worker_request};
use crate::engine::sampler::Sampled;
use status::WorkerError;

/// Tokenizer chunks stay well under gRPC's 4 MiB default message limit.
const TOKENIZER_CHUNK: usize = 1 << 20;

/// Everything the RPC handlers share.
pub struct WorkerState {
    pub handle: EngineHandle,
    pub info: v1::InfoResponse,
    pub limits: ModelLimits,
    pub tokenizer_json: Arc<Vec<u8>>,
    /// Loaded and warmed up.
    pub ready: AtomicBool,
    /// SIGTERM received: refuse new work, finish in-flight.
    pub draining: AtomicBool,
    /// The engine loop stopped making progress.
    pub stalled: AtomicBool,
    /// Becomes true when the process is about to exit (ends WatchLoad streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl WorkerState {
    pub fn serving(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst) && !self.stalled.load(Ordering::SeqCst)
    }

    pub fn health(&self) -> v1::WorkerHealth {
        if self.serving() { v1::WorkerHealth::Serving } else { v1::WorkerHealth::NotServing }
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct WorkerService {
    state: Arc<WorkerState>,
}

impl WorkerService {
    pub fn new(state: Arc<WorkerState>) -> Self {
        WorkerService { state }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn logprobs_of(s: &Sampled) -> v1::TokenLogprobs {
    v1::TokenLogprobs {
        id: s.token,
        logprob: s.logprob,
        top: s.top.iter().map(|(id, lp)| v1::TopLogprob { id: *id, logprob: *lp }).collect(),
    }
}

/// Turns the engine's per-request outputs into the response stream: tokens already
/// waiting are coalesced into one message, the first message carries the seed. The stream
/// owns the engine receiver, so a client that goes away drops it and the engine aborts the
/// request at its next step.
fn response_stream(
    rx: UnboundedReceiver<RequestOutput>,
    seed: u64,
    want_logprobs: bool,
    span: tracing::Span,
) -> BoxStream<v1::WorkerGenerateResponse> {
    struct St {
        rx: UnboundedReceiver<RequestOutput>,
        first: bool,
        done: bool,
        seed: u64,
        want_logprobs: bool,
        span: tracing::Span,
    }
    let init = St { rx, first: true, done: false, seed, want_logprobs, span };
    Box::pin(futures::stream::unfold(init, |mut st| async move {
        if st.done {
            return None;
        }
        let out = st.rx.recv().await?;
        let mut msg = v1::WorkerGenerateResponse::default();
        if st.first {
            msg.seed = Some(st.seed);
            st.first = false;
        }
        let mut next = Some(out);
        while let Some(out) = next.take() {
            match out {
                RequestOutput::Token { sampled, first } => {
                    if let Some(f) = first {
                        st.span.in_scope(|| {
                            tracing::info!(
                                prompt_tokens = f.prompt_tokens,
                                cached_tokens = f.cached_prompt_tokens,
                                queue_ms = f.queue_ms,
                                "prefill done"
                            );
                            tracing::info!(first_token_ms = f.first_token_ms, "first token");
                        });
                    }
                    msg.token_ids.push(sampled.token);
                    if st.want_logprobs {
                        msg.logprobs.push(logprobs_of(&sampled));
                    }
                    next = st.rx.try_recv().ok();
                }
                RequestOutput::Finished { reason, usage, timings } => {
                    st.span.in_scope(|| {
                        tracing::info!(
                            reason = reason.as_str(),
                            completion_tokens = usage.completion_tokens,
                            total_ms = timings.total_ms,
                            "finished"
                        )
                    });
                    msg.finish_reason = Some(reason.to_proto() as i32);
                    msg.usage = Some(v1::Usage {
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cached_prompt_tokens: usage.cached_prompt_tokens,
                    });
                    msg.timings = Some(v1::Timings {
                        queue_ms: timings.queue_ms,
                        first_token_ms: timings.first_token_ms,
                        total_ms: timings.total_ms,
                    });
                    st.done = true;
                }
                RequestOutput::Rejected(e) => {
                    st.done = true;
                    return Some((Err(WorkerError::Admit(e).into()), st));
                }
                RequestOutput::Failed(e) => {
                    st.done = true;
                    return Some((Err(WorkerError::Backend(e).into()), st));
                }
            }
        }
        Some((Ok(msg), st))
    }))
}

#[tonic::async_trait]
impl v1::worker_server::Worker for WorkerService {
    type GenerateStream = BoxStream<v1::WorkerGenerateResponse>;
    type WatchLoadStream = BoxStream<v1::LoadReport>;
    type GetTokenizerStream = BoxStream<v1::TokenizerChunk>;

    async fn generate(&self, request: Request<v1::WorkerGenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let st = &self.state;
        if st.draining.load(Ordering::SeqCst) {
            return Err(WorkerError::Draining.into());
        }
        if !st.ready.load(Ordering::SeqCst) {
            return Err(WorkerError::NotReady.into());
        }
        // Refuse at once when the queue is full, rather than after the stream started.
        let load = st.handle.load();
        if load.waiting >= st.info.max_waiting {
            return Err(WorkerError::Admit(crate::engine::scheduler::AdmitError::QueueFull(st.info.max_waiting as usize)).into());
        }
        let span = tracing::info_span!(
            "worker.generate",
            request_id = tracing::field::Empty,
            prompt_tokens = tracing::field::Empty,
            resumed = tracing::field::Empty
        );
        telemetry::adopt_remote_parent(&span, request.metadata());
        let r = request.into_inner();
        let req = validate_worker_request(&r, &st.limits, rand::random()).map_err(WorkerError::from)?;
        span.record("request_id", req.id.as_str());
        span.record("prompt_tokens", req.prompt.len());
        span.record("resumed", req.generated.len());
        span.in_scope(|| tracing::info!(waiting = st.handle.load().waiting, "queued"));
        let seed = req.seed;
        let want = req.logprobs;
        let rx = st.handle.submit(req).map_err(WorkerError::from)?;
        Ok(Response::new(response_stream(rx, seed, want, span)))
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        let id = request.into_inner().request_id;
        let found = self.state.handle.abort(&id).await;
        Ok(Response::new(v1::AbortResponse { found }))
    }

    async fn watch_load(&self, request: Request<v1::WatchLoadRequest>) -> Result<Response<Self::WatchLoadStream>, Status> {
        let interval = request.into_inner().interval_ms;
        if interval != 0 && !(10..=10_000).contains(&interval) {
            return Err(Status::invalid_argument(format!("interval_ms must be 0 or in [10, 10000], got {interval}")));
        }
        let interval = if interval == 0 { 100 } else { interval };
        Ok(Response::new(Box::pin(watch::load_stream(self.state.clone(), interval))))
    }

    async fn info(&self, _request: Request<v1::InfoRequest>) -> Result<Response<v1::InfoResponse>, Status> {
        Ok(Response::new(self.state.info.clone()))
    }

    async fn get_tokenizer(&self, _request: Request<v1::GetTokenizerRequest>) -> Result<Response<Self::GetTokenizerStream>, Status> {
        let bytes = self.state.tokenizer_json.clone();
        let total = bytes.len() as u64;
        let chunks: Vec<Result<v1::TokenizerChunk, Status>> =
            bytes.chunks(TOKENIZER_CHUNK).map(|c| Ok(v1::TokenizerChunk { data: c.to_vec(), total_size: total })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
