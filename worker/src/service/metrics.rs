//! The worker's Prometheus metrics: `tokenfleet_worker_*` families, plus the `vllm:*` names
//! that the Kubernetes Gateway API Inference Extension / llm-d endpoint pickers scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokenfleet_proto::runtime::metrics_http::Collect;

use crate::engine::EngineHandle;

/// vLLM labels its request and KV gauges with the served model's name; endpoint pickers
/// (Gateway API Inference Extension, llm-d) may select series by it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheConfigLabels {
    block_size: String,
    num_gpu_blocks: String,
}

/// A counter that mirrors a cumulative engine statistic (adds the difference on scrape).
#[derive(Default)]
struct Mirror {
    counter: Counter,
    last: AtomicU64,
}

impl Mirror {
    fn set_total(&self, total: u64) {
        let prev = self.last.swap(total, Ordering::Relaxed);
        self.counter.inc_by(total.saturating_sub(prev));
    }
}

/// Every metric of a worker, refreshed from the engine at scrape time; step histograms are
/// fed by the engine thread as steps finish.
pub struct WorkerMetrics {
    handle: EngineHandle,
    waiting: Gauge,
    running: Gauge,
    kv_total: Gauge,
    kv_used: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    prefix_hit_rate: Gauge<f64, AtomicU64>,
    preemptions: Mirror,
    planned_ahead: Mirror,
    plan_ahead_refused: Mirror,
    prompt_tokens: Mirror,
    generation_tokens: Mirror,
    finished: Mirror,
    resumed: Mirror,
    prefix_lookup_tokens: Mirror,
    prefix_hit_tokens: Mirror,
    pub step_seconds: Histogram,
    pub batch_size: Histogram,
    vllm_waiting: Gauge,
    vllm_running: Gauge,
    vllm_kv_usage: Gauge<f64, AtomicU64>,
}

/// One gauge of a labelled family: the family is what gets registered, the gauge is set.
fn labelled<G: Clone + Default + prometheus_client::metrics::TypedMetric + prometheus_client::encoding::EncodeMetric>(
    label: &ModelLabel,
) -> (Family<ModelLabel, G>, G) {
    let family: Family<ModelLabel, G> = Family::default();
    let gauge = family.get_or_create(label).clone();
    (family, gauge)
}

impl WorkerMetrics {
    /// Registers everything; `kv_blocks` feeds `vllm:cache_config_info`, `model_name` labels
    /// the `vllm:*` request and KV gauges.
    pub fn register(handle: EngineHandle, kv_blocks: usize, block_size: usize, model_name: &str) -> (Arc<Self>, Registry) {
        let label = ModelLabel { model_name: model_name.to_string() };
        let (waiting_family, vllm_waiting) = labelled::<Gauge>(&label);
        let (running_family, vllm_running) = labelled::<Gauge>(&label);
        let (kv_family, vllm_kv_usage) = labelled::<Gauge<f64, AtomicU64>>(&label);
        let m = Arc::new(WorkerMetrics {
            handle,
            waiting: Gauge::default(),
            running: Gauge::default(),
            kv_total: Gauge::default(),
            kv_used: Gauge::default(),
            kv_usage: Gauge::default(),
            prefix_hit_rate: Gauge::default(),
            preemptions: Mirror::default(),
            planned_ahead: Mirror::default(),
            plan_ahead_refused: Mirror::default(),
            prompt_tokens: Mirror::default(),
            generation_tokens: Mirror::default(),
            finished: Mirror::default(),
            resumed: Mirror::default(),
            prefix_lookup_tokens: Mirror::default(),
            prefix_hit_tokens: Mirror::default(),
            step_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            vllm_waiting,
            vllm_running,
            vllm_kv_usage,
        });
        let mut root = Registry::default();
        {
            let r = root.sub_registry_with_prefix("tokenfleet_worker");
            r.register("requests_waiting", "Requests admitted but not yet scheduled", m.waiting.clone());
            r.register("requests_running", "Requests being generated", m.running.clone());
            r.register("kv_blocks", "KV cache blocks in the pool", m.kv_total.clone());
            r.register("kv_blocks_used", "KV cache blocks held by running requests", m.kv_used.clone());
            r.register("kv_cache_usage_ratio", "Fraction of KV blocks held by running requests", m.kv_usage.clone());
            r.register(
                "prefix_cache_hit_ratio",
                "Prompt tokens served from the prefix cache / prompt tokens looked up",
                m.prefix_hit_rate.clone(),
            );
            r.register("preemptions", "Requests preempted by recompute", m.preemptions.counter.clone());
            r.register(
                "steps_planned_ahead",
                "Engine steps planned while the previous step ran (--overlap-steps)",
                m.planned_ahead.counter.clone(),
            );
            r.register(
                "steps_plan_ahead_refused",
                "Times the engine waited for the step in flight instead (a preemption or a penalty needed the real ids)",
                m.plan_ahead_refused.counter.clone(),
            );
            r.register("prompt_tokens", "Prompt tokens admitted", m.prompt_tokens.counter.clone());
            r.register("generation_tokens", "Tokens generated", m.generation_tokens.counter.clone());
            r.register("requests_finished", "Requests finished (any reason)", m.finished.counter.clone());
            r.register("requests_resumed", "Requests resumed from generated_ids (failover continuations)", m.resumed.counter.clone());
            r.register(
                "prefix_cache_queries_tokens",
                "Prompt tokens looked up in the prefix cache",
                m.prefix_lookup_tokens.counter.clone(),
            );
            r.register("prefix_cache_hits_tokens", "Prompt tokens served from the prefix cache", m.prefix_hit_tokens.counter.clone());
            r.register("step_duration_seconds", "Engine step wall time", m.step_seconds.clone());
            r.register("batch_size_sequences", "Sequences per engine step", m.batch_size.clone());
        }
        root.register("vllm:num_requests_waiting", "Number of requests waiting to be processed (vLLM-compatible)", waiting_family);
        root.register("vllm:num_requests_running", "Number of requests in model execution batches (vLLM-compatible)", running_family);
        root.register("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100% (vLLM-compatible)", kv_family);
        let info: Family<CacheConfigLabels, Gauge> = Family::default();
        info.get_or_create(&CacheConfigLabels { block_size: block_size.to_string(), num_gpu_blocks: kv_blocks.to_string() }).set(1);
        root.register("vllm:cache_config_info", "Information of the KV cache configuration (vLLM-compatible)", info);
        (m, root)
    }

    /// Records one engine step (called from the engine thread).
    pub fn observe_step(&self, sequences: usize, seconds: f64) {
        self.step_seconds.observe(seconds);
        self.batch_size.observe(sequences as f64);
    }
}

impl Collect for WorkerMetrics {
    fn collect(&self) {
        let l = self.handle.load();
        self.waiting.set(l.waiting as i64);
        self.running.set(l.running as i64);
        self.kv_total.set(l.kv_blocks_total as i64);
        let used = l.kv_blocks_total.saturating_sub(l.kv_blocks_free);
        self.kv_used.set(used as i64);
        let usage = if l.kv_blocks_total > 0 { used as f64 / l.kv_blocks_total as f64 } else { 0.0 };
        self.kv_usage.set(usage);
        let hit = if l.prefix_lookup_tokens > 0 { l.prefix_hit_tokens as f64 / l.prefix_lookup_tokens as f64 } else { 0.0 };
        self.prefix_hit_rate.set(hit);
        self.preemptions.set_total(l.preemptions);
        self.planned_ahead.set_total(l.planned_ahead);
        self.plan_ahead_refused.set_total(l.plan_ahead_refused);
        self.prompt_tokens.set_total(l.prompt_tokens);
        self.generation_tokens.set_total(l.generated_tokens);
        self.finished.set_total(l.finished);
        self.resumed.set_total(l.resumed);
        self.prefix_lookup_tokens.set_total(l.prefix_lookup_tokens);
        self.prefix_hit_tokens.set_total(l.prefix_hit_tokens);
        self.vllm_waiting.set(l.waiting as i64);
        self.vllm_running.set(l.running as i64);
        self.vllm_kv_usage.set(usage);
    }
}
