//! `WatchLoad`: a full snapshot first (every cached block hash), then periodic reports with
//! the block events since the previous one. A subscriber that falls behind the event
//! buffer gets a fresh full snapshot instead of a gap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokenfleet_proto::v1;
use tokio::sync::broadcast::error::TryRecvError;
use tonic::Status;

use super::WorkerState;
use crate::engine::handle::LoadStats;
use crate::engine::kv_blocks::{BlockEvent, BlockEventKind};

fn to_proto_event(e: &BlockEvent) -> v1::BlockEvent {
    let kind = match &e.kind {
        BlockEventKind::Stored(h) => v1::block_event::Kind::Stored(v1::BlockHashes { hashes: h.clone() }),
        BlockEventKind::Removed(h) => v1::block_event::Kind::Removed(v1::BlockHashes { hashes: h.clone() }),
    };
    v1::BlockEvent { event_id: e.id, kind: Some(kind) }
}

fn report(state: &WorkerState, load: &LoadStats, tokens_per_second: f32) -> v1::LoadReport {
    let hit_rate = if load.prefix_lookup_tokens > 0 { load.prefix_hit_tokens as f32 / load.prefix_lookup_tokens as f32 } else { 0.0 };
    v1::LoadReport {
        full_snapshot: false,
        health: state.health() as i32,
        waiting: load.waiting,
        running: load.running,
        kv_blocks_total: load.kv_blocks_total,
        kv_blocks_free: load.kv_blocks_free,
        prefix_hit_rate: hit_rate,
        tokens_per_second,
        events: Vec::new(),
        active_tokens: load.active_tokens,
        max_waiting: state.info.max_waiting,
        resumed_requests: load.resumed,
        preemptions: load.preemptions,
        finished_requests: load.finished,
    }
}

/// The report stream of one subscriber.
pub fn load_stream(state: Arc<WorkerState>, interval_ms: u32) -> impl Stream<Item = Result<v1::LoadReport, Status>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        let period = Duration::from_millis(interval_ms as u64);
        let mut events = state.handle.subscribe_events();
        let mut need_snapshot = true;
        let mut last_id = 0u64;
        let mut last_gen = state.handle.load().generated_tokens;
        let mut last_t = Instant::now();
        loop {
            let load = state.handle.load();
            let now = Instant::now();
            let dt = now.duration_since(last_t).as_secs_f32().max(1e-3);
            let tps = load.generated_tokens.saturating_sub(last_gen) as f32 / dt;
            last_gen = load.generated_tokens;
            last_t = now;
            let mut msg = report(&state, &load, tps);
            if need_snapshot {
                // Subscribed before the snapshot, so no event can fall between them.
                let Some(snap) = state.handle.snapshot().await else { break };
                msg.full_snapshot = true;
                msg.events.push(v1::BlockEvent {
                    event_id: snap.last_event_id,
                    kind: Some(v1::block_event::Kind::Stored(v1::BlockHashes { hashes: snap.hashes })),
                });
                last_id = snap.last_event_id;
                need_snapshot = false;
            }
            loop {
                match events.try_recv() {
                    Ok(e) if e.id <= last_id => {}
                    Ok(e) => {
                        last_id = e.id;
                        msg.events.push(to_proto_event(&e));
                    }
                    Err(TryRecvError::Lagged(_)) => {
                        need_snapshot = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if need_snapshot {
                continue;
            }
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
