//! The gateway's soft state about its workers, rebuilt entirely from each worker's `Info`,
//! `GetTokenizer` and `WatchLoad` streams — nothing here needs to survive a restart or be
//! shared between gateway replicas.

pub mod discovery;
pub mod watcher;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokenfleet_proto::v1;
use tokenfleet_proto::v1::worker_client::WorkerClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// What the gateway knows about one worker.
#[derive(Debug, Default)]
pub struct WorkerView {
    /// Reachable, reporting SERVING, and its model's tokenizer is loaded.
    pub healthy: bool,
    pub info: Option<v1::InfoResponse>,
    /// The latest load report (its events already applied to `cached`).
    pub load: v1::LoadReport,
    /// Block hashes the worker reported as cached, plus hashes this gateway routed there
    /// since (predicted; confirmed or replaced by the next full snapshot).
    pub cached: HashSet<u64>,
    pub last_event_id: u64,
    pub last_report: Option<Instant>,
    pub consecutive_failures: u32,
}

/// One worker endpoint.
pub struct WorkerEntry {
    pub endpoint: String,
    /// The control connection (Info, WatchLoad, GetTokenizer).
    pub client: WorkerClient<Channel>,
    /// Connections for generation streams. HTTP/2 budgets small DATA frames per connection
    /// (h2 answers a reader that falls behind with GOAWAY ENHANCE_YOUR_CALM), and every
    /// token is one small frame, so streams are spread over several connections.
    stream_clients: Vec<WorkerClient<Channel>>,
    pub view: Mutex<WorkerView>,
    /// Requests this gateway has in flight on the worker.
    pub inflight: AtomicU32,
    /// Requests this gateway routed to the worker since it started.
    pub routed: AtomicU64,
    /// Set when discovery dropped the worker; its watcher exits.
    pub removed: std::sync::atomic::AtomicBool,
}

impl WorkerEntry {
    pub fn model_hash(&self) -> Option<String> {
        self.view.lock().ok()?.info.as_ref().map(|i| i.model_hash.clone())
    }

    pub fn is_healthy(&self) -> bool {
        self.view.lock().map(|v| v.healthy).unwrap_or(false)
    }

    /// A connection for one more generation stream (round robin over the pool).
    pub fn stream_client(&self) -> WorkerClient<Channel> {
        let i = self.routed.load(Ordering::Relaxed) as usize % self.stream_clients.len().max(1);
        self.stream_clients.get(i).cloned().unwrap_or_else(|| self.client.clone())
    }
}

/// A model served by one or more workers (grouped by content hash).
pub struct ModelGroup {
    pub hash: String,
    pub info: v1::InfoResponse,
    pub tokenizer: tokenizers::Tokenizer,
}

/// HTTP/2 connections per worker for generation streams.
const STREAM_CONNECTIONS: usize = 4;

/// Settings of worker connections.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub watch_interval_ms: u32,
    pub connect_timeout: Duration,
    pub tls: Option<ClientTlsConfig>,
}

/// Every known worker and model.
pub struct Pool {
    cfg: PoolConfig,
    workers: RwLock<HashMap<String, Arc<WorkerEntry>>>,
    models: RwLock<HashMap<String, Arc<ModelGroup>>>,
    pub round_robin: AtomicU64,
    /// Notified when a worker becomes healthy or unhealthy.
    pub changed: tokio::sync::Notify,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Arc<Self> {
        Arc::new(Pool {
            cfg,
            workers: RwLock::new(HashMap::new()),
            models: RwLock::new(HashMap::new()),
            round_robin: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Adds a worker (if new) and starts watching it.
    pub fn add(self: &Arc<Self>, endpoint: &str) -> Result<(), tonic::transport::Error> {
        if self.workers.read().map(|w| w.contains_key(endpoint)).unwrap_or(true) {
            return Ok(());
        }
        let mut ep = Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.cfg.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        let client = WorkerClient::new(ep.connect_lazy()).max_decoding_message_size(16 << 20);
        let stream_clients =
            (0..STREAM_CONNECTIONS).map(|_| WorkerClient::new(ep.connect_lazy()).max_decoding_message_size(16 << 20)).collect();
        let entry = Arc::new(WorkerEntry {
            endpoint: endpoint.to_string(),
            client,
            stream_clients,
            view: Mutex::new(WorkerView::default()),
            inflight: AtomicU32::new(0),
            routed: AtomicU64::new(0),
            removed: Default::default(),
        });
        if let Ok(mut w) = self.workers.write() {
            w.insert(endpoint.to_string(), entry.clone());
        }
        tracing::info!(worker = endpoint, "worker added");
        tokio::spawn(watcher::watch(self.clone(), entry));
        Ok(())
    }

    /// Forgets a worker (its in-flight requests keep their connection).
    pub fn remove(&self, endpoint: &str) {
        let removed = self.workers.write().ok().and_then(|mut w| w.remove(endpoint));
        if let Some(e) = removed {
            e.removed.store(true, Ordering::SeqCst);
            tracing::info!(worker = endpoint, "worker removed");
            self.changed.notify_waiters();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.workers.read().map(|w| w.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn all(&self) -> Vec<Arc<WorkerEntry>> {
        let mut v: Vec<_> = self.workers.read().map(|w| w.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        v
    }

    pub fn model(&self, hash: &str) -> Option<Arc<ModelGroup>> {
        self.models.read().ok()?.get(hash).cloned()
    }

    pub fn insert_model(&self, group: ModelGroup) {
        if let Ok(mut m) = self.models.write() {
            m.entry(group.hash.clone()).or_insert_with(|| Arc::new(group));
        }
    }

    /// Healthy workers serving `model_hash`, sorted by endpoint.
    pub fn healthy_for(&self, model_hash: &str) -> Vec<Arc<WorkerEntry>> {
        self.all().into_iter().filter(|w| w.is_healthy() && w.model_hash().as_deref() == Some(model_hash)).collect()
    }

    /// The model new requests go to: the one with the most healthy workers (ties to the
    /// lexicographically larger hash, so every gateway replica picks the same one).
    pub fn primary(&self) -> Option<(Arc<ModelGroup>, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for w in self.all() {
            if w.is_healthy()
                && let Some(h) = w.model_hash()
            {
                *counts.entry(h).or_default() += 1;
            }
        }
        let (hash, n) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)))?;
        Some((self.model(&hash)?, n))
    }

    pub fn healthy_count(&self) -> usize {
        self.all().iter().filter(|w| w.is_healthy()).count()
    }
}
