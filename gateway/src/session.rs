//! The bidirectional `Session`: many generations multiplexed by request_id over one
//! stream. A failing generation reports a `SessionError` for its id and the session goes
//! on. All generations share one bounded output buffer, so a client that stops reading
//! pauses its own generations (and, through HTTP/2 flow control, their workers) instead of
//! growing the gateway's memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokenfleet_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use crate::errors::GatewayError;
use crate::service::start;
use crate::state::Gateway;

type Out = mpsc::Sender<Result<v1::SessionResponse, Status>>;
/// Running generations by id: (start serial, cancel).
type Running = HashMap<String, (u64, oneshot::Sender<()>)>;
type Done = mpsc::UnboundedSender<(String, u64)>;

fn error_msg(id: &str, e: &Status) -> v1::SessionResponse {
    v1::SessionResponse {
        request_id: id.to_string(),
        kind: Some(v1::session_response::Kind::Error(v1::SessionError { code: e.code() as i32, message: e.message().to_string() })),
    }
}

fn chunk_msg(id: &str, c: v1::GenerateStreamResponse) -> v1::SessionResponse {
    v1::SessionResponse { request_id: id.to_string(), kind: Some(v1::session_response::Kind::Chunk(c)) }
}

/// Starts the session task; the returned receiver is the response stream.
pub fn run(
    gw: Arc<Gateway>,
    mut inbound: Streaming<v1::SessionRequest>,
    deadline: Option<Instant>,
    span: tracing::Span,
) -> mpsc::Receiver<Result<v1::SessionResponse, Status>> {
    let (out, rx) = mpsc::channel(gw.cfg.stream_buffer.max(1));
    tokio::spawn(async move {
        let mut running: Running = HashMap::new();
        let mut serial = 0u64;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u64)>();
        let mut inbound_open = true;
        loop {
            if !inbound_open && running.is_empty() {
                break;
            }
            tokio::select! {
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(m)) => {
                        serial += 1;
                        handle(&gw, m, &out, &mut running, (&done_tx, serial), (deadline, &span)).await
                    }
                    Ok(None) => inbound_open = false,
                    Err(s) => {
                        tracing::debug!(error = %s, "session inbound failed");
                        inbound_open = false;
                    }
                },
                Some((id, n)) = done_rx.recv() => {
                    if running.get(&id).is_some_and(|(s, _)| *s == n) {
                        running.remove(&id);
                    }
                }
                _ = out.closed() => break,
            }
        }
        // Dropping the cancel senders of anything still running cancels it.
    });
    rx
}

async fn handle(
    gw: &Arc<Gateway>,
    m: v1::SessionRequest,
    out: &Out,
    running: &mut Running,
    (done, serial): (&Done, u64),
    (deadline, span): (Option<Instant>, &tracing::Span),
) {
    match m.kind {
        Some(v1::session_request::Kind::Start(s)) => {
            let id = s.request_id.clone();
            let refuse = |e: GatewayError| error_msg(&id, &Status::from(e));
            if id.is_empty() || id.len() > tokenfleet_proto::limits::MAX_REQUEST_ID_BYTES {
                let _ = out.send(Ok(refuse(GatewayError::Invalid("start.request_id must be 1..=128 bytes".into())))).await;
                return;
            }
            if running.contains_key(&id) {
                let _ = out.send(Ok(refuse(GatewayError::Invalid(format!("request_id `{id}` is already running in this session"))))).await;
                return;
            }
            let Some(mut req) = s.request else {
                let _ = out.send(Ok(refuse(GatewayError::Invalid("start.request is missing".into())))).await;
                return;
            };
            req.request_id = id.clone();
            let origin = crate::generation::Origin {
                method: "Session",
                span: crate::service::request_span(Some(span), None),
                started: Instant::now(),
            };
            match start(gw, req, deadline, origin) {
                Err(e) => {
                    let _ = out.send(Ok(refuse(e))).await;
                }
                Ok((rx, valid)) => {
                    let (cancel_tx, cancel_rx) = oneshot::channel();
                    running.insert(id.clone(), (serial, cancel_tx));
                    tokio::spawn(forward(
                        id,
                        rx,
                        cancel_rx,
                        out.clone(),
                        (done.clone(), serial),
                        valid.prompt_ids.len() as u32,
                        valid.seed,
                    ));
                }
            }
        }
        Some(v1::session_request::Kind::Cancel(c)) => {
            if let Some((_, tx)) = running.remove(&c.request_id) {
                let _ = tx.send(());
            }
        }
        None => {
            let _ = out.send(Ok(error_msg("", &Status::invalid_argument("empty SessionRequest: set start or cancel")))).await;
        }
    }
}

/// Forwards one generation's chunks into the session, or ends it as CANCELLED.
async fn forward(
    id: String,
    mut rx: mpsc::Receiver<Result<v1::GenerateStreamResponse, Status>>,
    mut cancel: oneshot::Receiver<()>,
    out: Out,
    (done, serial): (Done, u64),
    prompt_tokens: u32,
    seed: u64,
) {
    let mut completion = 0u32;
    loop {
        tokio::select! {
            c = rx.recv() => match c {
                Some(Ok(c)) => {
                    completion += c.token_ids.len() as u32;
                    let last = c.finish_reason.is_some();
                    if out.send(Ok(chunk_msg(&id, c))).await.is_err() || last {
                        break;
                    }
                }
                Some(Err(s)) => {
                    let _ = out.send(Ok(error_msg(&id, &s))).await;
                    break;
                }
                None => break,
            },
            r = &mut cancel => {
                // A dropped sender (session ending) cancels silently; an explicit cancel
                // gets its final message.
                if r.is_ok() {
                    drop(rx);
                    let last = v1::GenerateStreamResponse {
                        request_id: id.clone(),
                        finish_reason: Some(v1::FinishReason::Cancelled as i32),
                        usage: Some(v1::Usage { prompt_tokens, completion_tokens: completion, cached_prompt_tokens: 0 }),
                        seed: Some(seed),
                        ..Default::default()
                    };
                    let _ = out.send(Ok(chunk_msg(&id, last))).await;
                }
                break;
            }
        }
    }
    let _ = done.send((id, serial));
}
