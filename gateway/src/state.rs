//! The gateway's shared state: configuration, the worker pool, the in-flight limit, the
//! drain flag and counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::pool::Pool;
use crate::routing::Policy;
use crate::validate::RequestLimits;

/// Settings the request path reads.
#[derive(Debug, Clone)]
pub struct RequestConfig {
    pub policy: Policy,
    /// Prompt tokens of cache one queued-or-running request is worth when routing.
    pub load_weight: f64,
    /// Workers tried per request before giving up (first try included in the count + 1).
    pub max_attempts: u32,
    pub limits: RequestLimits,
    /// Chunks buffered per stream (and per session) before the worker stream is paused.
    pub stream_buffer: usize,
}

/// Counters (the Prometheus families of issue 8 read these).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    pub failovers: AtomicU64,
    pub tokens_out: AtomicU64,
    pub prefix_hit_predictions: AtomicU64,
    /// Routing decisions by (worker, policy).
    pub routes: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Stats {
    pub fn record_route(&self, worker: &str, policy: Policy, predicted_hit: bool) {
        if predicted_hit {
            self.prefix_hit_predictions.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut r) = self.routes.lock() {
            *r.entry((worker.to_string(), policy.as_str())).or_default() += 1;
        }
    }
}

pub struct Gateway {
    pub cfg: RequestConfig,
    pub pool: Arc<Pool>,
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub max_inflight: usize,
    pub draining: AtomicBool,
    pub stats: Stats,
    pub metrics: crate::metrics::RequestMetrics,
}

impl Gateway {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests currently holding an in-flight permit.
    pub fn inflight_now(&self) -> usize {
        self.max_inflight - self.inflight.available_permits()
    }
}
