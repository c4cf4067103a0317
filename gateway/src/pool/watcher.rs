//! One task per worker: Info (+ the tokenizer of a model hash not seen yet), then the
//! WatchLoad stream, applying its snapshot and block events. Any failure takes the
//! worker out of rotation and retries with exponential backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokenfleet_proto::v1;
use tokio_stream::StreamExt;

use super::{ModelGroup, Pool, WorkerEntry};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker silent for this many report intervals counts as failed.
const SILENCE_INTERVALS: u32 = 30;

pub async fn watch(pool: Arc<Pool>, w: Arc<WorkerEntry>) {
    let mut backoff = BACKOFF_MIN;
    while !w.removed.load(Ordering::SeqCst) {
        match session(&pool, &w).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                let failures = w.view.lock().map(|mut v| {
                    v.consecutive_failures += 1;
                    v.consecutive_failures
                });
                if failures.unwrap_or(1) <= 1 {
                    tracing::warn!(worker = %w.endpoint, error = %e, "worker unreachable; out of rotation");
                } else {
                    tracing::debug!(worker = %w.endpoint, error = %e, "worker still unreachable");
                }
            }
        }
        set_healthy(&pool, &w, false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn set_healthy(pool: &Pool, w: &WorkerEntry, healthy: bool) {
    let changed = w
        .view
        .lock()
        .map(|mut v| {
            let c = v.healthy != healthy;
            v.healthy = healthy;
            if healthy {
                v.consecutive_failures = 0;
            }
            c
        })
        .unwrap_or(false);
    if changed {
        tracing::info!(worker = %w.endpoint, healthy, "worker health changed");
        pool.changed.notify_waiters();
    }
}

/// One connected period; returns when the stream ends or fails.
async fn session(pool: &Pool, w: &WorkerEntry) -> Result<(), String> {
    let mut client = w.client.clone();
    let timeout = pool.config().connect_timeout.max(Duration::from_secs(1));
    let info = tokio::time::timeout(timeout, client.info(v1::InfoRequest {}))
        .await
        .map_err(|_| "Info timed out".to_string())?
        .map_err(|s| format!("Info: {}", s.message()))?
        .into_inner();
    if pool.model(&info.model_hash).is_none() {
        let tok = fetch_tokenizer(&mut client, &info).await?;
        pool.insert_model(ModelGroup { hash: info.model_hash.clone(), info: info.clone(), tokenizer: tok });
        tracing::info!(model = %info.model_id, hash = %info.model_hash, "model registered");
    }
    if let Ok(mut v) = w.view.lock() {
        v.info = Some(info);
    }
    let interval = pool.config().watch_interval_ms;
    let mut stream = client
        .watch_load(v1::WatchLoadRequest { interval_ms: interval })
        .await
        .map_err(|s| format!("WatchLoad: {}", s.message()))?
        .into_inner();
    let silence = Duration::from_millis(interval as u64 * SILENCE_INTERVALS as u64).max(Duration::from_secs(3));
    loop {
        if w.removed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let next = tokio::time::timeout(silence, stream.next()).await.map_err(|_| "no load report in time".to_string())?;
        let report = match next {
            None => return Err("load stream ended".into()),
            Some(Err(s)) => return Err(format!("load stream: {}", s.message())),
            Some(Ok(r)) => r,
        };
        let serving = report.health == v1::WorkerHealth::Serving as i32;
        apply(w, report);
        set_healthy(pool, w, serving);
    }
}

fn apply(w: &WorkerEntry, mut report: v1::LoadReport) {
    let Ok(mut v) = w.view.lock() else { return };
    if report.full_snapshot {
        v.cached.clear();
    }
    for e in std::mem::take(&mut report.events) {
        match e.kind {
            Some(v1::block_event::Kind::Stored(h)) => v.cached.extend(h.hashes),
            Some(v1::block_event::Kind::Removed(h)) => {
                for x in h.hashes {
                    v.cached.remove(&x);
                }
            }
            None => {}
        }
        v.last_event_id = v.last_event_id.max(e.event_id);
    }
    v.load = report;
    v.last_report = Some(Instant::now());
}

async fn fetch_tokenizer(
    client: &mut v1::worker_client::WorkerClient<tonic::transport::Channel>,
    info: &v1::InfoResponse,
) -> Result<tokenizers::Tokenizer, String> {
    let mut stream =
        client.get_tokenizer(v1::GetTokenizerRequest {}).await.map_err(|s| format!("GetTokenizer: {}", s.message()))?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let c = chunk.map_err(|s| format!("GetTokenizer: {}", s.message()))?;
        if c.total_size > 256 << 20 {
            return Err(format!("tokenizer of {} bytes is implausibly large", c.total_size));
        }
        bytes.extend_from_slice(&c.data);
    }
    let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
    if hash != info.tokenizer_hash {
        return Err(format!("tokenizer hash {hash} does not match the worker's Info ({})", info.tokenizer_hash));
    }
    tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| format!("parsing the worker's tokenizer: {e}"))
}
