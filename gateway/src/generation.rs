//! One generation through the worker pool: route, stream tokens, detokenize, match stop
//! strings, and — when a worker stream breaks before its end — continue on another
//! worker from prompt + tokens so far. With the workers' keyed RNG the client sees exactly
//! the stream a fault-free run gives.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokenfleet_proto::block_hash::full_block_hashes;
use tokenfleet_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::errors::{GatewayError, retryable};
use crate::pool::{ModelGroup, WorkerEntry};
use crate::routing;
use crate::state::Gateway;
use crate::text::detok::Detokenizer;
use crate::text::stop::StopMatcher;
use crate::validate::ValidGenerate;

/// Decrements a worker's in-flight count when a routed request ends.
struct InflightGuard(Arc<WorkerEntry>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the client receives: chunks, the last one with finish_reason set, or an error.
pub type ChunkSender = mpsc::Sender<Result<v1::GenerateStreamResponse, Status>>;

/// How a generation ended on the gateway side.
pub enum Ended {
    Finished,
    /// The client went away (its receiver closed).
    ClientGone,
}

struct Progress<'g> {
    generated: Vec<u32>,
    last_chunk: Option<Instant>,
    detok: Detokenizer<'g>,
    stop: StopMatcher,
    first_token: Option<Instant>,
    cached_prompt_tokens: u32,
}

/// Where a generation came from, for metrics and traces.
pub struct Origin {
    /// The RPC ("Generate", "GenerateStream", "Session").
    pub method: &'static str,
    /// The request's span (already a child of the caller's trace context, if any).
    pub span: tracing::Span,
    pub started: Instant,
}

/// Runs `req` to its end, sending chunks to `out`. `deadline` bounds the whole call.
pub async fn run(
    gw: Arc<Gateway>,
    group: Arc<ModelGroup>,
    req: ValidGenerate,
    out: ChunkSender,
    deadline: Option<Instant>,
    origin: Origin,
) -> Ended {
    let span = origin.span.clone();
    span.record("request_id", req.request_id.as_str());
    span.record("prompt_tokens", req.prompt_ids.len());
    gw.metrics.tokens_in.inc_by(req.prompt_ids.len() as u64);
    let result = drive(&gw, &group, &req, &out, deadline, origin.started, &span).await;
    let (ended, code) = match result {
        Ok(Ended::Finished) => (Ended::Finished, tonic::Code::Ok),
        Ok(Ended::ClientGone) => (Ended::ClientGone, tonic::Code::Cancelled),
        Err(e) => {
            span.in_scope(|| tracing::info!(error = %e, "generation failed"));
            gw.stats.failed.fetch_add(1, Ordering::Relaxed);
            let code = e.code();
            let ended = if out.send(Err(e.into())).await.is_err() { Ended::ClientGone } else { Ended::Finished };
            (ended, code)
        }
    };
    gw.metrics.record_rpc(origin.method, code);
    if code == tonic::Code::Ok {
        gw.metrics.e2e.observe(origin.started.elapsed().as_secs_f64());
    }
    ended
}

async fn drive(
    gw: &Gateway,
    group: &ModelGroup,
    req: &ValidGenerate,
    out: &ChunkSender,
    deadline: Option<Instant>,
    started: Instant,
    span: &tracing::Span,
) -> Result<Ended, GatewayError> {
    let hashes = full_block_hashes(group.info.block_hash_seed, &req.prompt_ids);
    let mut p = Progress {
        generated: Vec::new(),
        last_chunk: None,
        detok: Detokenizer::new(&group.tokenizer, req.skip_special_tokens),
        stop: StopMatcher::new(req.stop_strings.clone()),
        first_token: None,
        cached_prompt_tokens: 0,
    };
    let mut excluded: Vec<String> = Vec::new();
    let mut attempt = 0u32;
    // Workers that refused for capacity (not failure): all of them ⇒ RESOURCE_EXHAUSTED.
    let mut saturated = 0u32;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(GatewayError::DeadlineExceeded);
        }
        let candidates = gw.pool.healthy_for(&group.hash);
        let rr = gw.pool.round_robin.fetch_add(1, Ordering::Relaxed);
        let choice = match routing::choose(gw.cfg.policy, &candidates, &hashes, &excluded, rr, gw.cfg.load_weight) {
            Ok(c) => c,
            Err(routing::NoWorker::AllSaturated) if p.generated.is_empty() => return Err(GatewayError::Saturated),
            Err(routing::NoWorker::NoneHealthy) if p.generated.is_empty() && saturated > 0 => return Err(GatewayError::Saturated),
            Err(routing::NoWorker::NoneHealthy) if p.generated.is_empty() && attempt == 0 => return Err(GatewayError::NoHealthyWorker),
            Err(e) => {
                return Err(GatewayError::FailoverExhausted(format!("no worker left to continue on ({e:?}) after {attempt} attempts")));
            }
        };
        let w = choice.worker.clone();
        w.inflight.fetch_add(1, Ordering::Relaxed);
        w.routed.fetch_add(1, Ordering::Relaxed);
        let _guard = InflightGuard(w.clone());
        routing::predict_cached(&w, &hashes);
        gw.stats.record_route(&w.endpoint, gw.cfg.policy, choice.cached_blocks > 0);
        span.in_scope(
            || tracing::debug!(worker = %w.endpoint, cached_blocks = choice.cached_blocks, resumed = p.generated.len(), "routed"),
        );
        if !p.generated.is_empty() {
            gw.stats.failovers.fetch_add(1, Ordering::Relaxed);
        }
        let wreq = v1::WorkerGenerateRequest {
            request_id: req.request_id.clone(),
            prompt_ids: req.prompt_ids.clone(),
            generated_ids: p.generated.clone(),
            sampling: Some(req.sampling),
            stopping: Some(req.stopping.clone()),
            top_logprobs: req.top_logprobs,
            priority: req.priority,
            logprobs: req.logprobs,
        };
        let mut request = tonic::Request::new(wreq);
        if let Some(d) = deadline {
            request.set_timeout(d.saturating_duration_since(Instant::now()));
        }
        tokenfleet_proto::runtime::telemetry::inject(span, request.metadata_mut());
        let mut client = w.stream_client();
        let mut stream = match client.generate(request).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                if !retryable(s.code()) {
                    return Err(GatewayError::Worker(s));
                }
                span.in_scope(
                    || tracing::warn!(worker = %w.endpoint, code = ?s.code(), msg = s.message(), "worker refused; trying another"),
                );
                // Exclude the worker for this request only: its health is the watcher's call,
                // and one refused stream (e.g. a connection being replaced) must not take a
                // healthy worker out of rotation for everyone.
                if s.code() == tonic::Code::ResourceExhausted {
                    saturated += 1;
                }
                excluded.push(w.endpoint.clone());
                attempt += 1;
                if attempt > gw.cfg.max_attempts {
                    return Err(GatewayError::FailoverExhausted(s.message().to_string()));
                }
                continue;
            }
        };
        // Stream until the end, a break, the client leaving or the deadline.
        let tokens_before = p.generated.len();
        let broke: Status = loop {
            let next = tokio::select! {
                m = stream.next() => m,
                _ = out.closed() => return Ok(Ended::ClientGone),
                _ = sleep_until(deadline) => return Err(GatewayError::DeadlineExceeded),
            };
            match next {
                Some(Ok(m)) => {
                    if let Some(done) = forward(gw, req, &mut p, m, out, started).await {
                        return Ok(done);
                    }
                }
                Some(Err(s)) => break s,
                None => break Status::unavailable("worker stream ended before the generation finished"),
            }
        };
        if !retryable(broke.code()) {
            return Err(GatewayError::Worker(broke));
        }
        if broke.code() == tonic::Code::ResourceExhausted && p.generated.len() == tokens_before {
            // Refused at admission (its queue is full): another worker may have room.
            saturated += 1;
        } else {
            span.in_scope(|| tracing::warn!(worker = %w.endpoint, code = ?broke.code(), msg = broke.message(), tokens = p.generated.len(), "worker stream broke; failing over"));
        }
        excluded.push(w.endpoint.clone());
        attempt += 1;
        if attempt > gw.cfg.max_attempts {
            if p.generated.is_empty() && saturated > 0 {
                return Err(GatewayError::Saturated);
            }
            return Err(GatewayError::FailoverExhausted(broke.message().to_string()));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends one worker message on as a client chunk. Returns `Some` when the generation is
/// over (finished, stop string, or the client left).
async fn forward(
    gw: &Gateway,
    req: &ValidGenerate,
    p: &mut Progress<'_>,
    m: v1::WorkerGenerateResponse,
    out: &ChunkSender,
    started: Instant,
) -> Option<Ended> {
    let worker_queue_ms = m.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
    let now = Instant::now();
    if !m.token_ids.is_empty() {
        match p.last_chunk {
            None => gw.metrics.ttft.observe(now.duration_since(started).as_secs_f64()),
            Some(t) => gw.metrics.itl.observe(now.duration_since(t).as_secs_f64()),
        }
        p.last_chunk = Some(now);
        gw.metrics.tokens_out.inc_by(m.token_ids.len() as u64);
    }
    if !m.token_ids.is_empty() && p.first_token.is_none() {
        p.first_token = Some(now);
    }
    p.generated.extend_from_slice(&m.token_ids);
    gw.stats.tokens_out.fetch_add(m.token_ids.len() as u64, Ordering::Relaxed);
    let text = p.detok.push(&m.token_ids);
    let mut stop = p.stop.push(&text);
    let mut chunk = v1::GenerateStreamResponse {
        token_ids: m.token_ids,
        logprobs: m.logprobs,
        request_id: req.request_id.clone(),
        ..Default::default()
    };
    let finish = if stop.matched {
        Some(v1::FinishReason::StopSequence)
    } else if let Some(f) = m.finish_reason {
        let tail = p.detok.flush();
        let more = p.stop.push(&tail);
        stop.emit.push_str(&more.emit);
        if more.matched {
            Some(v1::FinishReason::StopSequence)
        } else {
            stop.emit.push_str(&p.stop.flush());
            Some(v1::FinishReason::try_from(f).unwrap_or(v1::FinishReason::Unspecified))
        }
    } else {
        None
    };
    if let Some(u) = &m.usage {
        p.cached_prompt_tokens = u.cached_prompt_tokens;
    }
    chunk.text = stop.emit;
    if let Some(f) = finish {
        let now = Instant::now();
        let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1e3;
        chunk.finish_reason = Some(f as i32);
        chunk.usage = Some(v1::Usage {
            prompt_tokens: req.prompt_ids.len() as u32,
            completion_tokens: p.generated.len() as u32,
            cached_prompt_tokens: p.cached_prompt_tokens,
        });
        chunk.timings =
            Some(v1::Timings { queue_ms: worker_queue_ms, first_token_ms: p.first_token.map(ms).unwrap_or(0.0), total_ms: ms(now) });
        chunk.seed = Some(req.seed);
        gw.stats.finished.fetch_add(1, Ordering::Relaxed);
        return Some(if out.send(Ok(chunk)).await.is_err() { Ended::ClientGone } else { Ended::Finished });
    }
    if chunk.token_ids.is_empty() && chunk.text.is_empty() {
        return None;
    }
    if out.send(Ok(chunk)).await.is_err() {
        return Some(Ended::ClientGone);
    }
    None
}
