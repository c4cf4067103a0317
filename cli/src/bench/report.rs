//! The run's report: a vLLM-style text summary, and a JSON object with the key names
//! `vllm bench serve` writes (`completed`, `request_throughput`, `mean_ttft_ms`,
//! `p99_itl_ms`, `request_goodput`, `max_concurrency`, ...) plus a few of our own.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::metrics::{Outcome, Stats, Summary};

/// The settings recorded next to the numbers.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub date: String,
    pub backend: String,
    pub label: Option<String>,
    pub model_id: String,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub max_concurrency: Option<usize>,
    pub extra: Vec<(String, Value)>,
}

/// `99` → "99", `99.9` → "99.9" (vLLM's `p{p_word}_..._ms` keys).
pub fn percentile_word(p: f64) -> String {
    if p.fract() == 0.0 { format!("{}", p as i64) } else { format!("{p}") }
}

/// The metric keys in vLLM's spelling, e.g. `mean_ttft_ms`, `median_ttft_ms`, `std_ttft_ms`, `p99_ttft_ms`.
fn put_stats(m: &mut Map<String, Value>, name: &str, s: &Stats) {
    m.insert(format!("mean_{name}_ms"), json!(s.mean));
    m.insert(format!("median_{name}_ms"), json!(s.median));
    m.insert(format!("std_{name}_ms"), json!(s.std));
    for (p, v) in &s.percentiles {
        m.insert(format!("p{}_{name}_ms", percentile_word(*p)), json!(v));
    }
}

/// The JSON result. With `detailed`, the per-request lists vLLM's `--save-detailed` adds
/// (`input_lens`, `output_lens`, `ttfts` and `itls` in seconds, `errors`), plus
/// `output_token_ids` (vLLM keeps `generated_texts`; a worker target has no text).
pub fn to_json(info: &RunInfo, s: &Summary, outcomes: &[Outcome], detailed: bool) -> Value {
    let mut m = Map::new();
    m.insert("date".into(), json!(info.date));
    m.insert("endpoint_type".into(), json!(info.backend));
    m.insert("backend".into(), json!(info.backend));
    m.insert("label".into(), json!(info.label));
    m.insert("model_id".into(), json!(info.model_id));
    m.insert("tokenizer_id".into(), json!(info.model_id));
    m.insert("num_prompts".into(), json!(info.num_prompts));
    m.insert("request_rate".into(), if info.request_rate.is_finite() { json!(info.request_rate) } else { json!("inf") });
    m.insert("burstiness".into(), json!(1.0));
    m.insert("max_concurrency".into(), json!(info.max_concurrency));
    m.insert("duration".into(), json!(s.duration));
    m.insert("completed".into(), json!(s.completed));
    m.insert("failed".into(), json!(s.failed));
    m.insert("total_input_tokens".into(), json!(s.total_input));
    m.insert("total_output_tokens".into(), json!(s.total_output));
    m.insert("request_throughput".into(), json!(s.request_throughput));
    m.insert("request_goodput".into(), json!(s.request_goodput));
    m.insert("output_throughput".into(), json!(s.output_throughput));
    m.insert("total_token_throughput".into(), json!(s.total_token_throughput));
    m.insert("max_output_tokens_per_s".into(), json!(s.max_output_tokens_per_s));
    m.insert("max_concurrent_requests".into(), json!(s.max_concurrent_requests));
    put_stats(&mut m, "ttft", &s.ttft_ms);
    put_stats(&mut m, "tpot", &s.tpot_ms);
    put_stats(&mut m, "itl", &s.itl_ms);
    put_stats(&mut m, "e2el", &s.e2el_ms);
    if detailed {
        m.insert("input_lens".into(), json!(outcomes.iter().map(|o| o.prompt_len).collect::<Vec<_>>()));
        m.insert("output_lens".into(), json!(outcomes.iter().map(|o| if o.success { o.output_len } else { 0 }).collect::<Vec<_>>()));
        m.insert("ttfts".into(), json!(outcomes.iter().map(|o| o.ttft).collect::<Vec<_>>()));
        m.insert("itls".into(), json!(outcomes.iter().map(|o| o.itl.clone()).collect::<Vec<_>>()));
        m.insert("errors".into(), json!(outcomes.iter().map(|o| o.error.clone().unwrap_or_default()).collect::<Vec<_>>()));
        m.insert("output_token_ids".into(), json!(outcomes.iter().map(|o| o.output_ids.clone()).collect::<Vec<_>>()));
    }
    for (k, v) in &info.extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<40} {value:<10}");
}

/// `title` centred in a 50-column rule of `fill` (Python's `"{:-^50}"`).
fn rule(title: &str, fill: char) -> String {
    let t = format!(" {title} ");
    let pad = 50usize.saturating_sub(t.chars().count());
    let left = pad / 2;
    format!("{}{t}{}", fill.to_string().repeat(left), fill.to_string().repeat(pad - left))
}

fn section(out: &mut String, title: &str, name: &str, s: &Stats) {
    let _ = writeln!(out, "{}", rule(title, '-'));
    line(out, &format!("Mean {name} (ms):"), format!("{:.2}", s.mean));
    line(out, &format!("Median {name} (ms):"), format!("{:.2}", s.median));
    line(out, &format!("Std {name} (ms):"), format!("{:.2}", s.std));
    for (p, v) in &s.percentiles {
        line(out, &format!("P{} {name} (ms):", percentile_word(*p)), format!("{v:.2}"));
    }
}

/// The human summary, laid out like vLLM's "Serving Benchmark Result".
pub fn to_text(info: &RunInfo, s: &Summary, first_error: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", rule("Serving Benchmark Result", '='));
    line(&mut out, "Target:", &info.backend);
    line(&mut out, "Successful requests:", s.completed);
    line(&mut out, "Failed requests:", s.failed);
    if let Some(c) = info.max_concurrency {
        line(&mut out, "Maximum request concurrency:", c);
    }
    if info.request_rate.is_finite() {
        line(&mut out, "Request rate configured (RPS):", format!("{:.2}", info.request_rate));
    }
    line(&mut out, "Benchmark duration (s):", format!("{:.2}", s.duration));
    line(&mut out, "Total input tokens:", s.total_input);
    line(&mut out, "Total generated tokens:", s.total_output);
    line(&mut out, "Request throughput (req/s):", format!("{:.2}", s.request_throughput));
    if let Some(g) = s.request_goodput {
        line(&mut out, "Request goodput (req/s):", format!("{g:.2}"));
    }
    line(&mut out, "Output token throughput (tok/s):", format!("{:.2}", s.output_throughput));
    line(&mut out, "Peak output token throughput (tok/s):", format!("{:.2}", s.max_output_tokens_per_s));
    line(&mut out, "Peak concurrent requests:", s.max_concurrent_requests);
    line(&mut out, "Total Token throughput (tok/s):", format!("{:.2}", s.total_token_throughput));
    section(&mut out, "Time to First Token", "TTFT", &s.ttft_ms);
    section(&mut out, "Time per Output Token (excl. 1st token)", "TPOT", &s.tpot_ms);
    section(&mut out, "Inter-token Latency", "ITL", &s.itl_ms);
    section(&mut out, "End-to-end Latency", "E2EL", &s.e2el_ms);
    let _ = writeln!(out, "{}", "=".repeat(50));
    if let Some(e) = first_error {
        let _ = writeln!(out, "first error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::GoodputSlo;
    use crate::bench::metrics::summarize;

    fn info() -> RunInfo {
        RunInfo {
            date: "20250101-000000".into(),
            backend: "tokenfleet-gateway".into(),
            label: None,
            model_id: "m".into(),
            num_prompts: 1,
            request_rate: f64::INFINITY,
            max_concurrency: Some(4),
            extra: vec![("machine".into(), json!("x"))],
        }
    }

    #[test]
    fn json_uses_vllm_key_names() {
        let o = Outcome {
            success: true,
            prompt_len: 5,
            output_len: 3,
            ttft: 0.1,
            itl: vec![0.01, 0.02],
            latency: 0.13,
            chunk_tokens: vec![1, 1, 1],
            output_ids: vec![7, 8, 9],
            ..Default::default()
        };
        let s = summarize(std::slice::from_ref(&o), 1.0, &GoodputSlo { ttft_ms: Some(200.0), ..Default::default() }, &[90.0, 99.0, 99.9]);
        let v = to_json(&info(), &s, &[o], true);
        for k in [
            "date",
            "backend",
            "model_id",
            "num_prompts",
            "request_rate",
            "burstiness",
            "max_concurrency",
            "duration",
            "completed",
            "failed",
            "total_input_tokens",
            "total_output_tokens",
            "request_throughput",
            "request_goodput",
            "output_throughput",
            "total_token_throughput",
            "max_output_tokens_per_s",
            "max_concurrent_requests",
            "mean_ttft_ms",
            "median_ttft_ms",
            "std_ttft_ms",
            "p90_ttft_ms",
            "p99_ttft_ms",
            "p99.9_ttft_ms",
            "mean_tpot_ms",
            "p99_tpot_ms",
            "mean_itl_ms",
            "median_itl_ms",
            "p99_itl_ms",
            "mean_e2el_ms",
            "p99_e2el_ms",
            "input_lens",
            "output_lens",
            "ttfts",
            "itls",
            "errors",
            "output_token_ids",
            "machine",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["request_rate"], json!("inf"));
        assert_eq!(v["max_concurrency"], json!(4));
        assert_eq!(v["total_output_tokens"], json!(3));
        assert_eq!(v["output_token_ids"], json!([[7, 8, 9]]));
        assert!((v["mean_ttft_ms"].as_f64().unwrap_or(0.0) - 100.0).abs() < 1e-9);
        assert!((v["request_goodput"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-9);
        let text = to_text(&info(), &s, None);
        assert!(text.contains("Mean TTFT (ms):") && text.contains("P99.9 ITL (ms):"));
    }

    #[test]
    fn no_goodput_is_null() {
        let s = summarize(&[], 1.0, &GoodputSlo::default(), &[99.0]);
        let v = to_json(&info(), &s, &[], false);
        assert_eq!(v["request_goodput"], Value::Null);
        assert!(v.get("ttfts").is_none());
        assert_eq!(percentile_word(99.0), "99");
        assert_eq!(percentile_word(99.9), "99.9");
    }
}
