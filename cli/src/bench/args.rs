//! Command-line arguments of `tokenfleet bench` and the small value types they parse into.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, ValueEnum};

use super::error::BenchError;

/// What the load generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A gateway: `tokenfleet.v1.TextGeneration/GenerateStream`.
    Gateway,
    /// A worker directly: `tokenfleet.v1.Worker/Generate` with prompt token ids.
    Worker,
}

impl Target {
    /// The `backend` / `endpoint_type` string of the JSON result.
    pub fn backend_name(self) -> &'static str {
        match self {
            Target::Gateway => "tokenfleet-gateway",
            Target::Worker => "tokenfleet-worker",
        }
    }
}

/// Requests per second: a positive finite number, or `inf` (every request at time 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate(pub f64);

impl RequestRate {
    pub fn is_infinite(self) -> bool {
        self.0.is_infinite()
    }
}

impl FromStr for RequestRate {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("inf") || t.eq_ignore_ascii_case("infinity") {
            return Ok(RequestRate(f64::INFINITY));
        }
        match t.parse::<f64>() {
            Ok(r) if r > 0.0 => Ok(RequestRate(r)),
            _ => Err(BenchError::BadArg(format!("--request-rate must be a positive number or `inf`, got `{s}`"))),
        }
    }
}

/// Service-level objectives for goodput, in milliseconds (vLLM's `--goodput KEY:MS` keys).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GoodputSlo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl GoodputSlo {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Parses `ttft:MS,tpot:MS[,e2el:MS]` items (each flag value may hold several, comma-separated).
    pub fn parse(items: &[String]) -> Result<Self, BenchError> {
        let mut slo = GoodputSlo::default();
        for pair in items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || BenchError::BadArg(format!("--goodput wants KEY:MS pairs (keys ttft, tpot, e2el), got `{pair}`"));
            let (key, value) = pair.split_once(':').ok_or_else(bad)?;
            let ms: f64 = value.trim().parse().map_err(|_| bad())?;
            if !ms.is_finite() || ms < 0.0 {
                return Err(BenchError::BadArg(format!("--goodput {key}: the SLO must be a non-negative number of ms, got `{value}`")));
            }
            match key.trim() {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2el" => slo.e2el_ms = Some(ms),
                _ => return Err(bad()),
            }
        }
        Ok(slo)
    }
}

/// Parses `--metric-percentiles 90,99` into values in (0, 100].
pub fn parse_percentiles(s: &str) -> Result<Vec<f64>, BenchError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match item.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => out.push(p),
            _ => return Err(BenchError::BadArg(format!("--metric-percentiles: `{item}` is not a percentile in (0, 100]"))),
        }
    }
    Ok(out)
}

/// Parses `KEY=VALUE` metadata items.
pub fn parse_metadata(items: &[String]) -> Result<Vec<(String, String)>, BenchError> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(BenchError::BadArg(format!("--metadata wants KEY=VALUE, got `{kv}`"))),
        })
        .collect()
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address: a gateway (default) or, with `--target worker`, a worker.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "TOKENFLEET_ADDR")]
    pub addr: String,
    /// API key for a gateway (sent as `authorization: Bearer KEY`).
    #[arg(long, env = "TOKENFLEET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// What to drive: a gateway's GenerateStream, or a worker's Generate directly.
    #[arg(long, value_enum, default_value = "gateway")]
    pub target: Target,
    /// Requests measured (after the warm-up).
    #[arg(long = "num-prompts", visible_alias = "num-requests", default_value_t = 100)]
    pub num_prompts: usize,
    /// Requests per second, as a Poisson process; `inf` sends every request at time 0.
    #[arg(long, default_value = "inf")]
    pub request_rate: RequestRate,
    /// At most this many requests in flight (a closed loop when the rate is `inf`).
    #[arg(long = "concurrency", visible_alias = "max-concurrency")]
    pub concurrency: Option<usize>,
    /// Seed of the prompt generator and of the arrival process.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt tokens of a synthetic request (the mean when a range is set).
    #[arg(long, default_value_t = 256)]
    pub input_len: usize,
    /// Input lengths are uniform in [len·(1−r), len·(1+r)].
    #[arg(long, default_value_t = 0.0)]
    pub input_len_range: f64,
    /// Tokens to generate per request (the mean when a range is set); a dataset line's `output_len` wins.
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Output lengths are uniform in [len·(1−r), len·(1+r)].
    #[arg(long, default_value_t = 0.0)]
    pub output_len_range: f64,
    /// Token ids shared by every synthetic prompt, before its own random part (prefix-cache workloads).
    #[arg(long, default_value_t = 0)]
    pub prefix_len: usize,
    /// Prompts from a JSONL file instead of synthetic ones: one object per line with `prompt`
    /// (text) or `prompt_ids` (token ids), and optionally `output_len`. Lines are used in order, cycling.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Generate past EOS so every request produces exactly its output length.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature (default 0 = greedy, as vLLM's bench).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Warm-up requests sent (at the same concurrency) before the measured run; not counted.
    #[arg(long = "warmup", visible_alias = "num-warmups", default_value_t = 0)]
    pub warmup: usize,
    /// HTTP/2 connections the requests are spread over (default: one per 100 concurrent requests).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Goodput SLOs, e.g. `ttft:500,tpot:50` or `ttft:500,tpot:50,e2el:5000` (ms).
    #[arg(long)]
    pub goodput: Vec<String>,
    /// Percentiles reported for TTFT, TPOT, ITL and E2EL.
    #[arg(long, default_value = "90,99")]
    pub metric_percentiles: String,
    /// Write the result as JSON (vLLM `bench serve` key names).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write per-request lists to the JSON: input_lens, output_lens, ttfts, itls, errors,
    /// output_token_ids.
    #[arg(long)]
    pub save_detailed: bool,
    /// A label stored in the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Extra `KEY=VALUE` entries stored at the top level of the JSON; repeatable.
    #[arg(long)]
    pub metadata: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub disable_progress: bool,
    /// Per-request timeout in seconds (0 = none).
    #[arg(long, default_value_t = 600)]
    pub request_timeout_s: u64,
}

impl BenchArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.num_prompts == 0 {
            return Err(BenchError::BadArg("--num-prompts must be at least 1".into()));
        }
        if self.concurrency == Some(0) {
            return Err(BenchError::BadArg("--concurrency must be at least 1".into()));
        }
        if self.connections == Some(0) {
            return Err(BenchError::BadArg("--connections must be at least 1".into()));
        }
        for (name, r) in [("--input-len-range", self.input_len_range), ("--output-len-range", self.output_len_range)] {
            if !(0.0..1.0).contains(&r) {
                return Err(BenchError::BadArg(format!("{name} must be in [0, 1), got {r}")));
            }
        }
        if self.dataset.is_none() && self.input_len + self.prefix_len == 0 {
            return Err(BenchError::BadArg("--input-len (+ --prefix-len) must be at least 1".into()));
        }
        if self.output_len == 0 {
            return Err(BenchError::BadArg("--output-len must be at least 1".into()));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(BenchError::BadArg(format!("--temperature must be >= 0, got {}", self.temperature)));
        }
        Ok(())
    }

    /// Connections to open: `--connections`, else one per 100 requests that may be in flight.
    pub fn connection_count(&self) -> usize {
        let inflight = self.concurrency.unwrap_or(self.num_prompts.max(self.warmup));
        self.connections.unwrap_or_else(|| inflight.div_ceil(100).clamp(1, 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rate_parses_inf_and_positive_numbers() {
        assert!("inf".parse::<RequestRate>().unwrap().is_infinite());
        assert!("INF".parse::<RequestRate>().unwrap().is_infinite());
        assert_eq!("2.5".parse::<RequestRate>().unwrap(), RequestRate(2.5));
        assert!("0".parse::<RequestRate>().is_err());
        assert!("-1".parse::<RequestRate>().is_err());
        assert!("fast".parse::<RequestRate>().is_err());
    }

    #[test]
    fn goodput_parses_pairs_in_one_or_many_values() {
        let slo = GoodputSlo::parse(&["ttft:500,tpot:50".into(), "e2el:2000".into()]).unwrap();
        assert_eq!(slo, GoodputSlo { ttft_ms: Some(500.0), tpot_ms: Some(50.0), e2el_ms: Some(2000.0) });
        assert!(GoodputSlo::parse(&[]).unwrap().is_empty());
        assert!(GoodputSlo::parse(&["itl:5".into()]).is_err());
        assert!(GoodputSlo::parse(&["ttft".into()]).is_err());
        assert!(GoodputSlo::parse(&["ttft:-1".into()]).is_err());
        assert!(GoodputSlo::parse(&["ttft:abc".into()]).is_err());
    }

    #[test]
    fn percentiles_and_metadata_parse() {
        assert_eq!(parse_percentiles("90, 99,99.9").unwrap(), vec![90.0, 99.0, 99.9]);
        assert!(parse_percentiles("0").is_err());
        assert!(parse_percentiles("101").is_err());
        assert_eq!(parse_metadata(&["machine=x=y".into()]).unwrap(), vec![("machine".into(), "x=y".into())]);
        assert!(parse_metadata(&["novalue".into()]).is_err());
    }
}
