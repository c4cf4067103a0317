//! `tokenfleet bench`: a serving load generator with vLLM `benchmarks/serve` metric
//! definitions and JSON key names.
//!
//! - [`args`]: the command line, goodput SLOs, request rate.
//! - [`workload`]: synthetic token-id prompts or a JSONL dataset.
//! - [`arrivals`]: Poisson (or all-at-once) send times.
//! - [`target`]: the gateway or worker under load; times one request's stream.
//! - [`runner`]: releases requests by arrival time and concurrency limit, with a progress bar.
//! - [`metrics`]: TTFT / TPOT / ITL / E2EL, percentiles, throughput, goodput.
//! - [`report`]: text summary and JSON.

pub mod args;
pub mod arrivals;
pub mod error;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod target;
pub mod workload;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::json;

pub use args::BenchArgs;
use args::{GoodputSlo, parse_metadata, parse_percentiles};
use report::RunInfo;
use runner::Plan;
use target::{RequestParams, Server};
use workload::{LengthDist, Prompt, RequestSpec, Vocab};

/// `YYYYmmdd-HHMMSS` in UTC (the format of vLLM's `date` field).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Distinct error messages with how often each occurred, most frequent first (at most 10).
fn error_counts(outcomes: &[metrics::Outcome]) -> Vec<serde_json::Value> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in outcomes.iter().filter_map(|o| o.error.as_deref()) {
        match counts.iter_mut().find(|(m, _)| m == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e.to_string(), 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.into_iter().take(10).map(|(m, n)| json!({"error": m, "count": n})).collect()
}

/// Replaces text prompts by token ids (a worker only takes ids).
async fn tokenize_texts(server: &Server, specs: &mut [RequestSpec]) -> anyhow::Result<()> {
    let texts: Vec<String> = specs
        .iter()
        .filter_map(|s| match &s.prompt {
            Prompt::Text(t) => Some(t.clone()),
            Prompt::Ids(_) => None,
        })
        .collect();
    if texts.is_empty() {
        return Ok(());
    }
    let mut ids = server.tokenize_all(&texts).await?.into_iter();
    for s in specs.iter_mut() {
        if matches!(s.prompt, Prompt::Text(_)) {
            s.prompt = Prompt::Ids(ids.next().context("the tokenizer returned fewer prompts than it was given")?);
        }
    }
    Ok(())
}

/// The warm-up and measured requests.
async fn build_workload(a: &BenchArgs, server: &Server, warm_n: usize) -> anyhow::Result<(Vec<RequestSpec>, Vec<RequestSpec>)> {
    let output = LengthDist { mean: a.output_len, range: a.output_len_range };
    let (mut warm, mut measured) = match &a.dataset {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| error::BenchError::DatasetIo { path: path.clone(), source: e })?;
            let lines = workload::parse_dataset(path, &text)?;
            (workload::from_dataset(&lines, warm_n, output, a.seed ^ 1), workload::from_dataset(&lines, a.num_prompts, output, a.seed))
        }
        None => {
            let vocab = Vocab { size: server.facts.vocab_size, avoid: server.facts.special_ids.clone() };
            let input = LengthDist { mean: a.input_len, range: a.input_len_range };
            // Warm-up prompts come from another seed: they must not prime the prefix cache
            // for the measured ones (the shared --prefix-len part aside).
            (
                workload::synthetic(warm_n, &vocab, input, output, a.prefix_len, a.seed.wrapping_add(0x5EED)),
                workload::synthetic(a.num_prompts, &vocab, input, output, a.prefix_len, a.seed),
            )
        }
    };
    if a.target == args::Target::Worker {
        tokenize_texts(server, &mut warm).await?;
        tokenize_texts(server, &mut measured).await?;
    }
    workload::check_vocab(&warm, server.facts.vocab_size)?;
    workload::check_vocab(&measured, server.facts.vocab_size)?;
    Ok((warm, measured))
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    a.validate()?;
    let slo = GoodputSlo::parse(&a.goodput)?;
    let percentiles = parse_percentiles(&a.metric_percentiles)?;
    let metadata = parse_metadata(&a.metadata)?;
    let connections = a.connection_count();
    let server = Arc::new(Server::connect(&a, connections).await?);
    let warm_n = a.warmup.max(1);
    let (warm, measured) = build_workload(&a, &server, warm_n).await?;
    let params = RequestParams {
        ignore_eos: a.ignore_eos,
        temperature: a.temperature,
        timeout: (a.request_timeout_s > 0).then(|| Duration::from_secs(a.request_timeout_s)),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let run_id = format!("bench-{}-{}-", std::process::id(), now.as_millis());
    eprintln!(
        "bench: {} {} ({}), {} request(s), rate {}, concurrency {}, {} connection(s)",
        a.target.backend_name(),
        server.addr,
        server.facts.model_id,
        a.num_prompts,
        if a.request_rate.is_infinite() { "inf".to_string() } else { format!("{}/s", a.request_rate.0) },
        a.concurrency.map(|c| c.to_string()).unwrap_or_else(|| "unbounded".into()),
        connections
    );

    // One request first, so a misconfiguration fails fast with its reason (as vLLM does).
    let probe_plan = Plan { arrivals: vec![0.0], concurrency: None, id_prefix: format!("{run_id}probe-") };
    let hidden = runner::progress(0, "", true);
    let (probe, _) = runner::run(server.clone(), warm.iter().take(1).cloned().collect(), &probe_plan, &params, &hidden).await;
    if let Some(e) = probe.first().and_then(|o| o.error.clone()) {
        bail!("the first test request failed: {e}");
    }
    if a.warmup > 0 {
        let plan = Plan { arrivals: vec![0.0; a.warmup], concurrency: a.concurrency, id_prefix: format!("{run_id}w") };
        let pb = runner::progress(a.warmup, "warm-up", a.disable_progress);
        let (outs, _) = runner::run(server.clone(), warm.into_iter().take(a.warmup).collect(), &plan, &params, &pb).await;
        pb.finish_and_clear();
        let failed = outs.iter().filter(|o| !o.success).count();
        if failed > 0 {
            eprintln!("bench: {failed} of {} warm-up request(s) failed", outs.len());
        }
    }

    let plan = Plan { arrivals: arrivals::schedule(measured.len(), a.request_rate, a.seed), concurrency: a.concurrency, id_prefix: run_id };
    let pb = runner::progress(measured.len(), "bench", a.disable_progress);
    let (outcomes, duration) = runner::run(server.clone(), measured, &plan, &params, &pb).await;
    pb.finish_and_clear();

    let summary = metrics::summarize(&outcomes, duration, &slo, &percentiles);
    let mut extra = vec![
        ("target".to_string(), json!(format!("{:?}", a.target).to_lowercase())),
        ("addr".to_string(), json!(server.addr)),
        ("seed".to_string(), json!(a.seed)),
        ("input_len".to_string(), json!(a.input_len)),
        ("input_len_range".to_string(), json!(a.input_len_range)),
        ("output_len".to_string(), json!(a.output_len)),
        ("output_len_range".to_string(), json!(a.output_len_range)),
        ("prefix_len".to_string(), json!(a.prefix_len)),
        ("dataset".to_string(), json!(a.dataset.as_ref().map(|p| p.display().to_string()))),
        ("ignore_eos".to_string(), json!(a.ignore_eos)),
        ("temperature".to_string(), json!(a.temperature)),
        ("num_warmups".to_string(), json!(a.warmup)),
        ("connections".to_string(), json!(connections)),
        ("goodput_slo_ms".to_string(), json!({"ttft": slo.ttft_ms, "tpot": slo.tpot_ms, "e2el": slo.e2el_ms})),
    ];
    extra.push(("error_counts".to_string(), json!(error_counts(&outcomes))));
    extra.extend(metadata.into_iter().map(|(k, v)| (k, json!(v))));
    let info = RunInfo {
        date: utc_stamp(now.as_secs()),
        backend: a.target.backend_name().to_string(),
        label: a.label.clone(),
        model_id: server.facts.model_id.clone(),
        num_prompts: a.num_prompts,
        request_rate: a.request_rate.0,
        max_concurrency: a.concurrency,
        extra,
    };
    let first_error = outcomes.iter().find_map(|o| o.error.as_deref());
    write!(std::io::stdout().lock(), "{}", report::to_text(&info, &summary, first_error))?;
    if let Some(path) = &a.json {
        let v = report::to_json(&info, &summary, &outcomes, a.save_detailed);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if summary.completed == 0 {
        bail!("every request failed{}", first_error.map(|e| format!(" (first: {e})")).unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_formats_like_vllm() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC
        assert_eq!(utc_stamp(1_709_210_096), "20240229-123456");
        // 2025-12-31 23:59:59 UTC
        assert_eq!(utc_stamp(1_767_225_599), "20251231-235959");
    }
}
