//! The worker's configuration: built-in defaults < TOML file (`--config`) < environment
//! (`TOKENFLEET_WORKER__KEY`, nested with `__`) < command-line flags. TOML keys are the long
//! flag names with `_` for `-`; `[otel]` and `[tls]` are sections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tokenfleet_proto::runtime::config::{self as layered, ConfigError, Layered};
use tokenfleet_proto::runtime::telemetry::{LogFormat, OtelConfig};

/// Prefix of the worker's environment variables.
pub const ENV_PREFIX: &str = "TOKENFLEET_WORKER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Cuda,
    /// cuda when a GPU and driver are usable, else cpu (with a warning).
    Auto,
    /// No model compute: deterministic tokens (gateway benchmarks and tests).
    Synthetic,
}

/// Optional TLS on the gRPC listener (mTLS when `client_ca` is set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA whose client certificates are required (the gateways').
    pub client_ca: Option<PathBuf>,
}

/// Every setting of `serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Hugging Face model directory (required).
    pub model: PathBuf,
    pub listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub backend: BackendKind,
    pub device: usize,
    pub gpu_memory_fraction: f64,
    /// CUDA: replay decode steps from captured CUDA graphs.
    pub cuda_graphs: bool,
    /// Plan each engine step while the previous one runs (its decode tokens fed on the
    /// device); any backend, a gain only where steps run asynchronously (CUDA).
    pub overlap_steps: bool,
    /// CUDA (H100/H200): launch kernels with programmatic dependent launch, so each one is
    /// scheduled while the previous one finishes.
    pub programmatic_launch: bool,
    /// With programmatic launch: MiB of L2 the small-batch GEMVs may fill with the heads of
    /// their weight rows while the previous kernel finishes (0: off).
    pub gemv_prefetch_mib: usize,
    pub kv_blocks: Option<usize>,
    pub kv_cache_mib: usize,
    pub max_model_len: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_running: usize,
    pub max_waiting: usize,
    pub threads: Option<usize>,
    pub synthetic_step_us: u64,
    pub drain_timeout_s: u64,
    pub stall_timeout_s: u64,
    pub log_format: LogFormat,
    pub otel: OtelConfig,
    pub tls: TlsConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            model: PathBuf::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50061)),
            health_listen: None,
            metrics_listen: None,
            backend: BackendKind::Auto,
            device: 0,
            gpu_memory_fraction: 0.9,
            cuda_graphs: false,
            overlap_steps: false,
            programmatic_launch: false,
            gemv_prefetch_mib: 16,
            kv_blocks: None,
            kv_cache_mib: 1024,
            max_model_len: None,
            max_batch_tokens: 512,
            max_running: 64,
            max_waiting: 256,
            threads: None,
            synthetic_step_us: 0,
            drain_timeout_s: 30,
            stall_timeout_s: 30,
            log_format: LogFormat::Text,
            otel: OtelConfig::for_service("tokenfleet-worker"),
            tls: TlsConfig::default(),
        }
    }
}

/// Command-line flags: each overrides the same key of the lower layers when given.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ServeFlags {
    /// TOML configuration file (layered under the environment and these flags).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Hugging Face model directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// gRPC listen address [default 127.0.0.1:50061].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Plaintext listener with only grpc.health.v1 (for kubelet probes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
    /// Prometheus /metrics listener (HTTP).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// cpu, cuda, auto (cuda if usable, else cpu) or synthetic [default auto].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// CUDA device ordinal (after CUDA_VISIBLE_DEVICES) [default 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<usize>,
    /// CUDA: fraction of GPU memory for weights + buffers + KV cache [default 0.9].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_fraction: Option<f64>,
    /// CUDA: replay decode steps from captured CUDA graphs (true|false) [default false until
    /// a GPU run has proven them equal to eager launches].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_graphs: Option<bool>,
    /// Plan each engine step while the previous one runs on the device (true|false)
    /// [default false until a GPU run has measured it].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_steps: Option<bool>,
    /// CUDA on H100/H200: programmatic dependent launch, each kernel scheduled while the
    /// previous one finishes (true|false) [default false until a GPU run has measured it].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programmatic_launch: Option<bool>,
    /// With --programmatic-launch: MiB of L2 the small-batch GEMVs prefetch their weights into
    /// while the previous kernel finishes (0 turns it off) [default 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemv_prefetch_mib: Option<usize>,
    /// KV cache blocks of 16 tokens (overrides the memory-based sizing).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_blocks: Option<usize>,
    /// CPU: KV cache memory in MiB [default 1024].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_mib: Option<usize>,
    /// Longest prompt + generation (default: the model's, capped by the KV pool; CUDA: ≤ 32k).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// Token budget of one engine step [default 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// Most sequences running at once [default 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    /// Waiting-queue capacity; beyond it RESOURCE_EXHAUSTED [default 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    /// CPU compute threads (default: all cores).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Synthetic backend: delay per step in microseconds [default 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_step_us: Option<u64>,
    /// On SIGTERM, seconds in-flight requests may take to finish [default 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_s: Option<u64>,
    /// NOT_SERVING after this many seconds without engine progress [default 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_timeout_s: Option<u64>,
    /// text or json [default text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub otel: OtelFlags,
}

/// `[otel]` overrides.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct OtelFlags {
    /// OTLP/gRPC collector endpoint for traces (off when unset).
    #[arg(long = "otel-endpoint")]
    #[serde(rename = "endpoint", skip_serializing_if = "Option::is_none")]
    pub otel_endpoint: Option<String>,
}

impl WorkerConfig {
    /// Loads the layers and checks every value.
    pub fn load(flags: &ServeFlags) -> Result<Layered<WorkerConfig>, ConfigError> {
        let l = layered::load::<WorkerConfig, _>(ENV_PREFIX, &[], flags.config.as_deref(), flags)?;
        l.value.validate(&l)?;
        Ok(l)
    }

    fn validate(&self, l: &Layered<WorkerConfig>) -> Result<(), ConfigError> {
        if self.model.as_os_str().is_empty() {
            return Err(ConfigError(format!(
                "`model` is required: --model DIR, `model = \"DIR\"` in the config file, or {ENV_PREFIX}__MODEL"
            )));
        }
        if !(self.gpu_memory_fraction > 0.0 && self.gpu_memory_fraction <= 1.0) {
            return Err(l.range_error("gpu_memory_fraction", format!("= {} must be in (0, 1]", self.gpu_memory_fraction)));
        }
        for (key, v) in [
            ("kv_cache_mib", self.kv_cache_mib),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_running", self.max_running),
            ("max_waiting", self.max_waiting),
        ] {
            if v == 0 {
                return Err(l.range_error(key, "= 0 must be at least 1"));
            }
        }
        for (key, v) in [("kv_blocks", self.kv_blocks), ("max_model_len", self.max_model_len), ("threads", self.threads)] {
            if v == Some(0) {
                return Err(l.range_error(key, "= 0 must be at least 1 (or unset)"));
            }
        }
        if self.stall_timeout_s == 0 {
            return Err(l.range_error("stall_timeout_s", "= 0 must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.otel.sample_ratio) {
            return Err(l.range_error("otel.sample_ratio", format!("= {} must be in [0, 1]", self.otel.sample_ratio)));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(l.range_error("tls.cert", "and tls.key must be set together"));
        }
        Ok(())
    }

    /// The effective configuration as `key = value` lines (nothing secret here).
    pub fn render(&self) -> Result<String, ConfigError> {
        layered::render(self, &[])
    }

    pub fn model_dir(&self) -> &Path {
        &self.model
    }
}
