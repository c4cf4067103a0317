//! Per-request outcomes and the run's summary, with vLLM `benchmarks/serve` definitions:
//!
//! - TTFT: from sending the request to the first chunk that carries a token.
//! - TPOT (excludes the first token): (e2e latency − TTFT) / (output tokens − 1), per request
//!   with more than one output token; for goodput a request with ≤ 1 token has TPOT 0.
//! - ITL: every gap between consecutive token-carrying chunks, over all requests.
//! - E2EL: from sending the request to its last chunk.
//! - mean, median, population std and percentiles by linear interpolation (numpy's default).
//! - throughputs divide by the whole run's duration; goodput counts completed requests that
//!   meet every given SLO (value ≤ SLO).

use super::args::GoodputSlo;

/// What happened to one request. Times are seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub success: bool,
    pub error: Option<String>,
    pub prompt_len: usize,
    pub output_len: usize,
    pub ttft: f64,
    /// Gaps between consecutive token-carrying chunks.
    pub itl: Vec<f64>,
    pub latency: f64,
    /// When the request was sent, from the start of the run.
    pub start: f64,
    /// Tokens in each token-carrying chunk (the first at `ttft`, then one per `itl` gap).
    pub chunk_tokens: Vec<u32>,
    /// The generated token ids, in order (`--save-detailed` writes them, so two runs of the
    /// same prompts can be compared token for token).
    pub output_ids: Vec<u32>,
}

impl Outcome {
    /// vLLM's per-request TPOT: `None` with fewer than two output tokens.
    pub fn tpot(&self) -> Option<f64> {
        tpot(self.latency, self.ttft, self.output_len)
    }
}

/// (e2e − ttft) / (out − 1); `None` for out ≤ 1.
pub fn tpot(latency: f64, ttft: f64, output_len: usize) -> Option<f64> {
    (output_len > 1).then(|| (latency - ttft) / (output_len - 1) as f64)
}

/// Gaps between consecutive chunk arrival times.
pub fn gaps(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The p-th percentile (0..=100) of sorted values by linear interpolation between closest
/// ranks (numpy's default); 0 for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Distribution summary of one metric, in the unit of its inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    /// (percentile, value) in the order asked.
    pub percentiles: Vec<(f64, f64)>,
}

impl Stats {
    /// All zeros for no values (as vLLM reports an empty metric).
    pub fn of(values: &[f64], ps: &[f64]) -> Stats {
        if values.is_empty() {
            return Stats { percentiles: ps.iter().map(|&p| (p, 0.0)).collect(), ..Default::default() };
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Stats { mean, median: percentile(&v, 50.0), std: var.sqrt(), percentiles: ps.iter().map(|&p| (p, percentile(&v, p))).collect() }
    }

    /// The same summary scaled (e.g. seconds → ms).
    pub fn scaled(&self, k: f64) -> Stats {
        Stats {
            mean: self.mean * k,
            median: self.median * k,
            std: self.std * k,
            percentiles: self.percentiles.iter().map(|&(p, v)| (p, v * k)).collect(),
        }
    }
}

/// Whether a completed request meets every SLO that is set (SLOs in ms, outcome in s).
pub fn is_good(o: &Outcome, slo: &GoodputSlo) -> bool {
    let ok = |limit_ms: Option<f64>, value_s: f64| limit_ms.is_none_or(|l| value_s * 1e3 <= l);
    o.success && ok(slo.ttft_ms, o.ttft) && ok(slo.tpot_ms, o.tpot().unwrap_or(0.0)) && ok(slo.e2el_ms, o.latency)
}

/// Peak output tokens in any whole second of the run, and the most requests active in any
/// second (vLLM's `max_output_tokens_per_s` / `max_concurrent_requests`).
pub fn peaks(outcomes: &[Outcome]) -> (f64, usize) {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.success).collect();
    let Some(t0) = ok.iter().map(|o| o.start).reduce(f64::min) else { return (0.0, 0) };
    let end = ok.iter().map(|o| o.start + o.latency).fold(t0, f64::max);
    let buckets = (end - t0).ceil() as usize + 1;
    let mut tokens = vec![0.0f64; buckets];
    let mut active = vec![0usize; buckets];
    let bucket = |t: f64| ((t - t0).max(0.0) as usize).min(buckets - 1);
    for o in ok {
        let mut t = o.start + o.ttft;
        for (i, &n) in o.chunk_tokens.iter().enumerate() {
            if i > 0 {
                t += o.itl.get(i - 1).copied().unwrap_or(0.0);
            }
            tokens[bucket(t)] += n as f64;
        }
        for a in &mut active[bucket(o.start)..=bucket(o.start + o.latency)] {
            *a += 1;
        }
    }
    (tokens.iter().copied().fold(0.0, f64::max), active.iter().copied().max().unwrap_or(0))
}

/// Everything the report prints and writes.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub duration: f64,
    pub completed: usize,
    pub failed: usize,
    pub total_input: usize,
    pub total_output: usize,
    pub request_throughput: f64,
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_output_tokens_per_s: f64,
    pub max_concurrent_requests: usize,
    /// In milliseconds.
    pub ttft_ms: Stats,
    pub tpot_ms: Stats,
    pub itl_ms: Stats,
    pub e2el_ms: Stats,
}

/// Summarizes a run of `duration` seconds.
pub fn summarize(outcomes: &[Outcome], duration: f64, slo: &GoodputSlo, ps: &[f64]) -> Summary {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.success).collect();
    let ttfts: Vec<f64> = ok.iter().map(|o| o.ttft).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|o| o.tpot()).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|o| o.itl.iter().copied()).collect();
    let e2els: Vec<f64> = ok.iter().map(|o| o.latency).collect();
    let total_input: usize = ok.iter().map(|o| o.prompt_len).sum();
    let total_output: usize = ok.iter().map(|o| o.output_len).sum();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let good = ok.iter().filter(|o| is_good(o, slo)).count();
    let (max_tok, max_conc) = peaks(outcomes);
    Summary {
        duration,
        completed: ok.len(),
        failed: outcomes.len() - ok.len(),
        total_input,
        total_output,
        request_throughput: per_s(ok.len() as f64),
        request_goodput: (!slo.is_empty()).then(|| per_s(good as f64)),
        output_throughput: per_s(total_output as f64),
        total_token_throughput: per_s((total_input + total_output) as f64),
        max_output_tokens_per_s: max_tok,
        max_concurrent_requests: max_conc,
        ttft_ms: Stats::of(&ttfts, ps).scaled(1e3),
        tpot_ms: Stats::of(&tpots, ps).scaled(1e3),
        itl_ms: Stats::of(&itls, ps).scaled(1e3),
        e2el_ms: Stats::of(&e2els, ps).scaled(1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [50, 90, 99, 100, 0]) = 2.5, 3.7, 3.97, 4, 1
        assert!(close(percentile(&v, 50.0), 2.5));
        assert!(close(percentile(&v, 90.0), 3.7));
        assert!(close(percentile(&v, 99.0), 3.97));
        assert!(close(percentile(&v, 100.0), 4.0));
        assert!(close(percentile(&v, 0.0), 1.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn stats_mean_median_population_std() {
        let s = Stats::of(&[4.0, 2.0, 8.0, 6.0], &[90.0, 99.0]);
        assert!(close(s.mean, 5.0));
        assert!(close(s.median, 5.0));
        // numpy.std([2,4,6,8]) = sqrt(5)
        assert!(close(s.std, 5f64.sqrt()));
        assert!(close(s.percentiles[0].1, 7.4));
        assert!(close(s.percentiles[1].1, 7.94));
        let e = Stats::of(&[], &[99.0]);
        assert_eq!((e.mean, e.median, e.std, e.percentiles.clone()), (0.0, 0.0, 0.0, vec![(99.0, 0.0)]));
        assert!(close(s.scaled(1e3).percentiles[0].1, 7400.0));
    }

    #[test]
    fn tpot_excludes_the_first_token() {
        // 11 tokens: first at 0.2 s, last at 1.2 s → 10 gaps over 1.0 s.
        assert!(close(tpot(1.2, 0.2, 11).unwrap_or(f64::NAN), 0.1));
        assert_eq!(tpot(1.0, 0.5, 1), None);
        assert_eq!(tpot(1.0, 0.5, 0), None);
    }

    #[test]
    fn itl_is_every_gap_between_chunks() {
        let g = gaps(&[0.1, 0.15, 0.35, 0.4]);
        assert_eq!(g.len(), 3);
        assert!(close(g[0], 0.05) && close(g[1], 0.2) && close(g[2], 0.05));
        assert!(gaps(&[0.3]).is_empty());
    }

    fn outcome(start: f64, ttft: f64, itl: &[f64], tokens: usize) -> Outcome {
        Outcome {
            success: true,
            prompt_len: 10,
            output_len: tokens,
            ttft,
            itl: itl.to_vec(),
            latency: ttft + itl.iter().sum::<f64>(),
            start,
            chunk_tokens: vec![1; itl.len() + 1],
            output_ids: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let fast = outcome(0.0, 0.1, &[0.02; 9], 10); // ttft 100 ms, tpot 20 ms, e2el 280 ms
        let slow_first = outcome(0.0, 0.6, &[0.02; 9], 10); // ttft 600 ms
        let slow_decode = outcome(0.0, 0.1, &[0.08; 9], 10); // tpot 80 ms
        let one_token = outcome(0.0, 0.1, &[], 1); // tpot counts as 0
        let failed = Outcome { success: false, error: Some("x".into()), ..Default::default() };
        let slo = GoodputSlo { ttft_ms: Some(500.0), tpot_ms: Some(50.0), e2el_ms: None };
        assert!(is_good(&fast, &slo));
        assert!(!is_good(&slow_first, &slo));
        assert!(!is_good(&slow_decode, &slo));
        assert!(is_good(&one_token, &slo));
        assert!(!is_good(&failed, &slo));
        assert!(!is_good(&fast, &GoodputSlo { e2el_ms: Some(200.0), ..Default::default() }));
        let all = [fast, slow_first, slow_decode, one_token, failed];
        let s = summarize(&all, 2.0, &slo, &[99.0]);
        assert_eq!((s.completed, s.failed), (4, 1));
        assert!(close(s.request_goodput.unwrap_or(f64::NAN), 1.0)); // 2 good / 2 s
        assert!(close(s.request_throughput, 2.0));
        assert_eq!(s.total_output, 31);
        assert!(close(s.output_throughput, 15.5));
        assert!(close(s.total_token_throughput, (40.0 + 31.0) / 2.0));
        assert_eq!(summarize(&all, 2.0, &GoodputSlo::default(), &[99.0]).request_goodput, None);
    }

    #[test]
    fn summary_metrics_follow_the_definitions() {
        let a = outcome(0.0, 0.1, &[0.01, 0.03], 3);
        let b = outcome(0.5, 0.3, &[0.02], 2);
        let s = summarize(&[a, b], 1.0, &GoodputSlo::default(), &[50.0]);
        assert!(close(s.ttft_ms.mean, 200.0));
        // TPOTs: (0.04)/2 = 20 ms and 0.02/1 = 20 ms.
        assert!(close(s.tpot_ms.mean, 20.0) && close(s.tpot_ms.std, 0.0));
        // ITLs: 10, 30, 20 ms.
        assert!(close(s.itl_ms.mean, 20.0) && close(s.itl_ms.median, 20.0));
        assert!(close(s.e2el_ms.mean, (140.0 + 320.0) / 2.0));
        assert_eq!(s.max_concurrent_requests, 2);
        assert!(close(s.max_output_tokens_per_s, 5.0));
    }

    #[test]
    fn peaks_bucket_tokens_per_second() {
        let a = outcome(0.0, 0.5, &[0.3, 0.3, 0.3], 4); // tokens at 0.5, 0.8 | 1.1, 1.4
        let b = outcome(1.2, 0.1, &[0.1], 2); // tokens at 1.3, 1.4
        let (tok, conc) = peaks(&[a, b]);
        assert!(close(tok, 4.0));
        assert_eq!(conc, 2);
        assert_eq!(peaks(&[]), (0.0, 0));
    }
}
