//! The gateway's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::routing::Policy;

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Public gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Plaintext listener with only grpc.health.v1 (kubelet probes).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// A worker address (`host:port` or `http[s]://host:port`); repeatable.
    #[arg(long = "worker")]
    pub workers: Vec<String>,
    /// A DNS name resolved to workers (`host:port`, e.g. a headless Service); repeatable.
    #[arg(long = "worker-dns")]
    pub worker_dns: Vec<String>,
    /// Seconds between DNS re-resolutions.
    #[arg(long, default_value_t = 5)]
    pub dns_refresh_s: u64,
    /// Routing policy.
    #[arg(long, value_enum, default_value = "prefix-aware")]
    pub policy: Policy,
    /// Prefix-aware routing: prompt tokens of cache one queued-or-running request is worth.
    #[arg(long, default_value_t = 32.0)]
    pub load_weight: f64,
    /// Requests in flight at once; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    pub max_inflight: usize,
    /// Extra workers tried when one fails or breaks mid-stream.
    #[arg(long, default_value_t = 3)]
    pub max_failovers: u32,
    /// Longest prompt in tokens (0 = the model's context).
    #[arg(long, default_value_t = 0)]
    pub max_prompt_tokens: usize,
    /// Largest max_new_tokens (0 = up to the model's context).
    #[arg(long, default_value_t = 0)]
    pub max_new_tokens: usize,
    /// Chunks buffered per stream or session before its worker stream is paused.
    #[arg(long, default_value_t = 32)]
    pub stream_buffer: usize,
    /// WatchLoad report interval requested from workers (ms).
    #[arg(long, default_value_t = 100)]
    pub watch_interval_ms: u32,
    /// An accepted API key (clients send `authorization: Bearer KEY`); repeatable.
    #[arg(long = "api-key", env = "TOKENFLEET_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// TLS certificate (PEM) of the public listener.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the public listener.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signed the workers' certificates: enables TLS to workers.
    #[arg(long)]
    pub worker_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS to workers.
    #[arg(long, requires = "worker_tls_key")]
    pub worker_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "worker_tls_cert")]
    pub worker_tls_key: Option<PathBuf>,
    /// Server name the workers' certificates carry (default: the host of each address).
    #[arg(long)]
    pub worker_tls_domain: Option<String>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
}
