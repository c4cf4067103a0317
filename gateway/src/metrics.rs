//! The gateway's Prometheus metrics (`tokenfleet_gateway_*`), with vLLM's latency
//! definitions: TTFT (arrival → first token sent), inter-token latency (gap between
//! consecutive chunks), end-to-end latency, and queue time (the worker's, from admission to
//! its first scheduled step).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokenfleet_proto::runtime::metrics_http::Collect;

use crate::state::Gateway;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    worker: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// Per-request measurements, recorded as requests run.
pub struct RequestMetrics {
    pub requests: Family<RpcLabels, Counter>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
}

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            ttft: latency_buckets(),
            itl: latency_buckets(),
            e2e: latency_buckets(),
            queue: latency_buckets(),
            tokens_in: Counter::default(),
            tokens_out: Counter::default(),
        }
    }
}

impl RequestMetrics {
    pub fn record_rpc(&self, method: &str, code: tonic::Code) {
        self.requests.get_or_create(&RpcLabels { method: method.to_string(), code: format!("{code:?}") }).inc();
    }
}

/// Gauges and counters that mirror the gateway's state at scrape time.
pub struct GatewayMetrics {
    gw: Arc<Gateway>,
    inflight: Gauge,
    failovers: Counter,
    failovers_seen: std::sync::atomic::AtomicU64,
    prefix_hits: Counter,
    prefix_seen: std::sync::atomic::AtomicU64,
    routes: Family<RouteLabels, Counter>,
    routes_seen: std::sync::Mutex<std::collections::HashMap<(String, &'static str), u64>>,
    worker_healthy: Family<WorkerLabels, Gauge>,
}

impl GatewayMetrics {
    pub fn register(gw: Arc<Gateway>) -> (Arc<Self>, Registry) {
        let m = Arc::new(GatewayMetrics {
            gw: gw.clone(),
            inflight: Gauge::default(),
            failovers: Counter::default(),
            failovers_seen: Default::default(),
            prefix_hits: Counter::default(),
            prefix_seen: Default::default(),
            routes: Family::default(),
            routes_seen: Default::default(),
            worker_healthy: Family::default(),
        });
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("tokenfleet_gateway");
        let rm = &gw.metrics;
        r.register("requests", "RPCs by method and final gRPC status", rm.requests.clone());
        r.register("time_to_first_token_seconds", "Arrival to the first token sent (vLLM TTFT)", rm.ttft.clone());
        r.register("inter_token_latency_seconds", "Gap between consecutive streamed chunks (vLLM ITL)", rm.itl.clone());
        r.register("e2e_request_latency_seconds", "Arrival to the final message (vLLM E2EL)", rm.e2e.clone());
        r.register("request_queue_time_seconds", "Time in the worker's queue before the first step", rm.queue.clone());
        r.register("prompt_tokens", "Prompt tokens of routed requests", rm.tokens_in.clone());
        r.register("generation_tokens", "Tokens streamed to clients", rm.tokens_out.clone());
        r.register("requests_in_flight", "Requests holding an in-flight slot", m.inflight.clone());
        r.register("failovers", "Generations continued on another worker after a stream broke", m.failovers.clone());
        r.register("prefix_hit_predictions", "Routing decisions to a worker believed to hold the prompt's prefix", m.prefix_hits.clone());
        r.register("routing_decisions", "Requests routed, by worker and policy", m.routes.clone());
        r.register("worker_healthy", "1 when the worker is in rotation", m.worker_healthy.clone());
        (m, root)
    }
}

fn mirror(c: &Counter, seen: &std::sync::atomic::AtomicU64, total: u64) {
    let prev = seen.swap(total, Ordering::Relaxed);
    c.inc_by(total.saturating_sub(prev));
}

impl Collect for GatewayMetrics {
    fn collect(&self) {
        let s = &self.gw.stats;
        self.inflight.set(self.gw.inflight_now() as i64);
        mirror(&self.failovers, &self.failovers_seen, s.failovers.load(Ordering::Relaxed));
        mirror(&self.prefix_hits, &self.prefix_seen, s.prefix_hit_predictions.load(Ordering::Relaxed));
        if let (Ok(routes), Ok(mut seen)) = (s.routes.lock(), self.routes_seen.lock()) {
            for ((worker, policy), n) in routes.iter() {
                let prev = seen.insert((worker.clone(), policy), *n).unwrap_or(0);
                self.routes
                    .get_or_create(&RouteLabels { worker: worker.clone(), policy: policy.to_string() })
                    .inc_by(n.saturating_sub(prev));
            }
        }
        for w in self.gw.pool.all() {
            self.worker_healthy.get_or_create(&WorkerLabels { worker: w.endpoint.clone() }).set(i64::from(w.is_healthy()));
        }
    }
}
