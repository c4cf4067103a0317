//! The gateway's configuration: built-in defaults < TOML file (`--config`) < environment
//! (`TOKENFLEET_GATEWAY__KEY`, nested with `__`, lists comma-separated) < flags. TOML keys
//! are the long flag names with `_` for `-`; `[tls]`, `[worker_tls]`, `[otel]` are sections.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};
use tokenfleet_proto::runtime::config::{self as layered, ConfigError, Layered};
use tokenfleet_proto::runtime::telemetry::{LogFormat, OtelConfig};

use crate::routing::Policy;

pub const ENV_PREFIX: &str = "TOKENFLEET_GATEWAY";

/// TLS of the public listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// TLS (or mTLS) to the workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerTlsConfig {
    /// CA that signed the workers' certificates; setting it turns TLS on.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Server name the workers' certificates carry (default: each address's host).
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// Static worker addresses (`host:port` or `http[s]://host:port`).
    pub workers: Vec<String>,
    /// DNS names resolved to workers (`host:port`, e.g. a headless Service).
    pub worker_dns: Vec<String>,
    pub dns_refresh_s: u64,
    pub policy: Policy,
    pub load_weight: f64,
    pub max_inflight: usize,
    pub max_failovers: u32,
    pub max_prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub stream_buffer: usize,
    pub watch_interval_ms: u32,
    /// Accepted API keys (secret; redacted by print-config).
    pub api_keys: Vec<String>,
    pub drain_timeout_s: u64,
    pub log_format: LogFormat,
    pub tls: TlsConfig,
    pub worker_tls: WorkerTlsConfig,
    pub otel: OtelConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            health_listen: None,
            metrics_listen: None,
            workers: Vec::new(),
            worker_dns: Vec::new(),
            dns_refresh_s: 5,
            policy: Policy::PrefixAware,
            load_weight: 32.0,
            max_inflight: 1024,
            max_failovers: 3,
            max_prompt_tokens: 0,
            max_new_tokens: 0,
            stream_buffer: 32,
            watch_interval_ms: 100,
            api_keys: Vec::new(),
            drain_timeout_s: 30,
            log_format: LogFormat::Text,
            tls: TlsConfig::default(),
            worker_tls: WorkerTlsConfig::default(),
            otel: OtelConfig::for_service("tokenfleet-gateway"),
        }
    }
}

/// Command-line flags: each overrides the same key of the lower layers when given.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct GatewayFlags {
    /// TOML configuration file (layered under the environment and these flags).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Public gRPC listen address [default 127.0.0.1:50051].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Plaintext listener with only grpc.health.v1 (kubelet probes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
    /// Prometheus /metrics listener (HTTP).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// A worker address (`host:port` or `http[s]://host:port`); repeatable.
    #[arg(long = "worker")]
    #[serde(rename = "workers", skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// A DNS name resolved to workers (`host:port`, e.g. a headless Service); repeatable.
    #[arg(long = "worker-dns")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worker_dns: Vec<String>,
    /// Seconds between DNS re-resolutions [default 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_refresh_s: Option<u64>,
    /// Routing policy [default prefix-aware].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Prefix-aware routing: prompt tokens of cache one queued-or-running request is worth [default 32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_weight: Option<f64>,
    /// Requests in flight at once; beyond it RESOURCE_EXHAUSTED [default 1024].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    /// Extra workers tried when one fails or breaks mid-stream [default 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failovers: Option<u32>,
    /// Longest prompt in tokens (0 = the model's context) [default 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
    /// Largest max_new_tokens (0 = up to the model's context) [default 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Chunks buffered per stream or session before its worker stream is paused [default 32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_buffer: Option<usize>,
    /// WatchLoad report interval requested from workers, ms [default 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_interval_ms: Option<u32>,
    /// An accepted API key (clients send `authorization: Bearer KEY`); repeatable.
    #[arg(long = "api-key", hide_env_values = true)]
    #[serde(rename = "api_keys", skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// On SIGTERM, seconds in-flight requests may take to finish [default 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_s: Option<u64>,
    /// text or json [default text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub tls: TlsFlags,
    #[command(flatten)]
    pub worker_tls: WorkerTlsFlags,
    #[command(flatten)]
    pub otel: OtelFlags,
}

#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct TlsFlags {
    /// TLS certificate (PEM) of the public listener.
    #[arg(long = "tls-cert")]
    #[serde(rename = "cert", skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the public listener.
    #[arg(long = "tls-key")]
    #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct WorkerTlsFlags {
    /// CA (PEM) that signed the workers' certificates: enables TLS to workers.
    #[arg(long = "worker-tls-ca")]
    #[serde(rename = "ca", skip_serializing_if = "Option::is_none")]
    pub worker_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS to workers.
    #[arg(long = "worker-tls-cert")]
    #[serde(rename = "cert", skip_serializing_if = "Option::is_none")]
    pub worker_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS to workers.
    #[arg(long = "worker-tls-key")]
    #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
    pub worker_tls_key: Option<PathBuf>,
    /// Server name the workers' certificates carry.
    #[arg(long = "worker-tls-domain")]
    #[serde(rename = "domain", skip_serializing_if = "Option::is_none")]
    pub worker_tls_domain: Option<String>,
}

#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct OtelFlags {
    /// OTLP/gRPC collector endpoint for traces (off when unset).
    #[arg(long = "otel-endpoint")]
    #[serde(rename = "endpoint", skip_serializing_if = "Option::is_none")]
    pub otel_endpoint: Option<String>,
}

impl GatewayConfig {
    pub fn load(flags: &GatewayFlags) -> Result<Layered<GatewayConfig>, ConfigError> {
        let l = layered::load::<GatewayConfig, _>(ENV_PREFIX, &["workers", "worker_dns", "api_keys"], flags.config.as_deref(), flags)?;
        l.value.validate(&l)?;
        Ok(l)
    }

    fn validate(&self, l: &Layered<GatewayConfig>) -> Result<(), ConfigError> {
        if self.workers.is_empty() && self.worker_dns.is_empty() {
            return Err(ConfigError(format!(
                "no workers configured: --worker HOST:PORT / --worker-dns HOST:PORT, `workers = [...]` / `worker_dns = [...]` in the config file, or {ENV_PREFIX}__WORKERS"
            )));
        }
        for (key, v) in [("max_inflight", self.max_inflight), ("stream_buffer", self.stream_buffer)] {
            if v == 0 {
                return Err(l.range_error(key, "= 0 must be at least 1"));
            }
        }
        if self.dns_refresh_s == 0 {
            return Err(l.range_error("dns_refresh_s", "= 0 must be at least 1"));
        }
        if !(10..=10_000).contains(&self.watch_interval_ms) {
            return Err(l.range_error("watch_interval_ms", format!("= {} must be in [10, 10000]", self.watch_interval_ms)));
        }
        if !(self.load_weight.is_finite() && self.load_weight >= 0.0) {
            return Err(l.range_error("load_weight", format!("= {} must be a number ≥ 0", self.load_weight)));
        }
        if !(0.0..=1.0).contains(&self.otel.sample_ratio) {
            return Err(l.range_error("otel.sample_ratio", format!("= {} must be in [0, 1]", self.otel.sample_ratio)));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(l.range_error("tls.cert", "and tls.key must be set together"));
        }
        if self.worker_tls.cert.is_some() != self.worker_tls.key.is_some() {
            return Err(l.range_error("worker_tls.cert", "and worker_tls.key must be set together"));
        }
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(l.range_error("api_keys", "must not contain empty keys"));
        }
        Ok(())
    }

    /// `key = value` lines with the API keys redacted.
    pub fn render(&self) -> Result<String, ConfigError> {
        layered::render(self, &["api_keys"])
    }
}
