//! The sampler: one definition, the reference every backend must reproduce (DESIGN.md §5).
//!
//! 1. Raw statistics for logprobs: `logprob(v) = l_v − logsumexp(l)` over the raw logits.
//! 2. Penalties, only on the ids listed in [`SampleSpec::penalties`] (prompt ∪ output):
//!    repetition (divide positive / multiply negative logits), then presence and frequency
//!    (subtract `presence + frequency · count` for ids generated `count > 0` times).
//! 3. Suppressed ids (EOS/stop ids before `min_new_tokens`) get −∞.
//! 4. Temperature 0 ⇒ argmax, ties to the lowest id. Otherwise `l / T` (f32).
//! 5. top-k: keep the k largest (ties to the lower id). top-p: order the kept ids by
//!    probability descending (ties by lower id), keep the shortest prefix whose probability
//!    sum is ≥ p. min-p: keep ids with `p ≥ min_p · p_max`.
//! 6. The exponential race: among kept ids pick the argmax of
//!    `(l_v − l_max) − ln(−ln u_v)` (f64) with `u_v` = `tokenfleet_kernels::philox::uniform(seed, t, v)`,
//!    ties to the lowest id. This is an exact draw from the kept distribution (argmax of
//!    `p_v / E_v` with `E_v ~ Exp(1)`), needs no sort, and depends only on (seed, t, v).

use tokenfleet_kernels::philox;

/// Validated sampling parameters (defaults already filled in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        SamplingConfig { temperature: 0.0, ..Default::default() }
    }

    /// Whether any penalty changes logits (so the engine must pass token statistics).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// A token id that occurs in the prompt or the output so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyEntry {
    pub id: u32,
    /// Occurrences among generated tokens (0 = prompt only).
    pub output_count: u32,
}

/// One row to sample: the last token of sequence `seq` of the step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    pub seq: usize,
    pub config: SamplingConfig,
    pub seed: u64,
    /// Index of the token being drawn among the request's generated tokens.
    pub token_index: u32,
    /// Empty unless `config.has_penalties()`.
    pub penalties: Vec<PenaltyEntry>,
    /// Ids forbidden this step.
    pub suppress: Vec<u32>,
    /// Alternatives to report (0..=20).
    pub top_logprobs: u32,
}

/// A sampled token with its raw logprob and the requested alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// (id, logprob), sorted by logprob descending, ties by lower id.
    pub top: Vec<(u32, f32)>,
}

/// `a` ranks before `b` when its value is larger, or equal with a lower id. NaN ranks last.
#[inline]
fn ranks_before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    match (va.is_nan(), vb.is_nan()) {
        (true, _) => false,
        (false, true) => true,
        _ => va > vb || (va == vb && ia < ib),
    }
}

/// Index of the best logit (ties to the lowest id; NaN never wins unless all are NaN).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in logits.iter().enumerate().skip(1) {
        if ranks_before(*v, i as u32, logits[best], best as u32) {
            best = i;
        }
    }
    best as u32
}

/// The `n` best (id, logit) pairs, sorted best first.
pub fn top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &v) in logits.iter().enumerate() {
        let i = i as u32;
        if best.len() == n {
            let (li, lv) = best[n - 1];
            if !ranks_before(v, i, lv, li) {
                continue;
            }
            best.pop();
        }
        let pos = best.partition_point(|&(bi, bv)| ranks_before(bv, bi, v, i));
        best.insert(pos, (i, v));
    }
    best
}

/// ln Σ exp(l): max-shifted, summed in f64 in id order.
pub fn logsumexp(logits: &[f32]) -> f32 {
    let m = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f64 = logits.iter().filter(|v| !v.is_nan()).map(|&v| ((v - m) as f64).exp()).sum();
    (m as f64 + s.ln()) as f32
}

/// Samples one token from a row of raw logits, following the module's definition.
/// `scratch` is reused between calls to avoid allocating a vocab-sized buffer each time.
pub fn sample(raw: &[f32], spec: &SampleSpec, scratch: &mut Vec<f32>) -> Sampled {
    let lse = logsumexp(raw);
    let logprob_of = |id: u32| raw[id as usize] - lse;
    let top: Vec<(u32, f32)> = if spec.top_logprobs > 0 {
        top_n(raw, spec.top_logprobs as usize).into_iter().map(|(i, _)| (i, logprob_of(i))).collect()
    } else {
        Vec::new()
    };
    let cfg = &spec.config;
    let token = if cfg.temperature == 0.0 && spec.penalties.is_empty() && spec.suppress.is_empty() {
        argmax(raw)
    } else {
        scratch.clear();
        scratch.extend_from_slice(raw);
        process_logits(scratch, spec);
        if cfg.temperature == 0.0 { argmax(scratch) } else { draw(scratch, spec) }
    };
    Sampled { token, logprob: logprob_of(token), top }
}

/// Penalties and suppression, in place.
fn process_logits(l: &mut [f32], spec: &SampleSpec) {
    let cfg = &spec.config;
    for e in &spec.penalties {
        let Some(v) = l.get_mut(e.id as usize) else {
            continue;
        };
        if cfg.repetition_penalty != 1.0 {
            *v = if *v > 0.0 { *v / cfg.repetition_penalty } else { *v * cfg.repetition_penalty };
        }
        if e.output_count > 0 {
            *v -= cfg.presence_penalty + cfg.frequency_penalty * e.output_count as f32;
        }
    }
    for &id in &spec.suppress {
        if let Some(v) = l.get_mut(id as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Temperature, truncation and the keyed exponential race over processed logits.
fn draw(l: &mut [f32], spec: &SampleSpec) -> u32 {
    let cfg = &spec.config;
    for v in l.iter_mut() {
        *v /= cfg.temperature;
    }
    let vocab = l.len();
    // Candidates as (id, logit), excluding -inf and NaN.
    let mut cand: Vec<(u32, f32)> = if cfg.top_k > 0 && (cfg.top_k as usize) < vocab {
        top_n(l, cfg.top_k as usize)
    } else {
        l.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect()
    };
    cand.retain(|(_, v)| *v > f32::NEG_INFINITY && !v.is_nan());
    if cand.is_empty() {
        // Everything suppressed: fall back to the best raw-processed logit.
        return argmax(l);
    }
    let lmax = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    if cfg.top_p < 1.0 {
        cand.sort_by(|a, b| if ranks_before(a.1, a.0, b.1, b.0) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        let probs: Vec<f64> = cand.iter().map(|c| ((c.1 - lmax) as f64).exp()).collect();
        let z: f64 = probs.iter().sum();
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p / z;
            if cum >= cfg.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    if cfg.min_p > 0.0 {
        let min_p = cfg.min_p as f64;
        cand.retain(|c| ((c.1 - lmax) as f64).exp() >= min_p);
    }
    let mut best: Option<(u32, f64)> = None;
    for &(id, v) in &cand {
        let u = philox::uniform(spec.seed, spec.token_index, id);
        let score = (v - lmax) as f64 - (-u.ln()).ln();
        best = match best {
            Some((bi, bs)) if bs > score || (bs == score && bi < id) => Some((bi, bs)),
            _ => Some((id, score)),
        };
    }
    best.map(|b| b.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: SamplingConfig) -> SampleSpec {
        SampleSpec { seq: 0, config, seed: 1234, token_index: 0, penalties: vec![], suppress: vec![], top_logprobs: 0 }
    }

    #[test]
    fn greedy_breaks_ties_to_lowest_id_and_reports_raw_logprobs() {
        let logits = [1.0, 3.0, 3.0, -2.0];
        let mut s = spec(SamplingConfig::greedy());
        s.top_logprobs = 3;
        let out = sample(&logits, &s, &mut Vec::new());
        assert_eq!(out.token, 1);
        let lse = (1f64.exp() + 2.0 * 3f64.exp() + (-2f64).exp()).ln() as f32;
        assert!((out.logprob - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn penalties_follow_the_definition() {
        let logits = [2.0, -2.0, 1.0, 1.5];
        let mut s =
            spec(SamplingConfig { repetition_penalty: 2.0, presence_penalty: 0.25, frequency_penalty: 0.5, ..SamplingConfig::greedy() });
        s.penalties =
            vec![PenaltyEntry { id: 0, output_count: 0 }, PenaltyEntry { id: 1, output_count: 2 }, PenaltyEntry { id: 3, output_count: 1 }];
        let mut l = logits.to_vec();
        process_logits(&mut l, &s);
        assert_eq!(l, vec![1.0, -4.0 - 0.25 - 1.0, 1.0, 0.75 - 0.75]);
        // With penalties the greedy pick moves from id 0 to the tie 0/2 → lowest id 0.
        assert_eq!(sample(&logits, &s, &mut Vec::new()).token, 0);
    }

    #[test]
    fn suppression_and_top_k_restrict_the_draw() {
        let logits = [5.0, 4.9, 4.8, 0.0, -1.0];
        let mut s = spec(SamplingConfig { top_k: 2, ..Default::default() });
        s.suppress = vec![0];
        for seed in 0..200 {
            s.seed = seed;
            let t = sample(&logits, &s, &mut Vec::new()).token;
            assert!(t == 1 || t == 2, "top-2 after suppressing 0 leaves {{1,2}}, got {t}");
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]
        let logits = [2.0, 1.0, 0.0, -1.0];
        let mut s = spec(SamplingConfig { top_p: 0.8, ..Default::default() });
        let mut seen = [0; 4];
        for seed in 0..500 {
            s.seed = seed;
            seen[sample(&logits, &s, &mut Vec::new()).token as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0, "{seen:?}");
        let mut s = spec(SamplingConfig { min_p: 0.3, ..Default::default() });
        let mut seen = [0; 4];
        for seed in 0..500 {
            s.seed = seed;
            seen[sample(&logits, &s, &mut Vec::new()).token as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0, "{seen:?}");
    }

    #[test]
    fn race_samples_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()]; // p = 0.1, 0.2, 0.7
        let mut s = spec(SamplingConfig::default());
        let n = 20000;
        let mut seen = [0usize; 3];
        for t in 0..n {
            s.token_index = t;
            seen[sample(&logits, &s, &mut Vec::new()).token as usize] += 1;
        }
        let freq: Vec<f64> = seen.iter().map(|c| *c as f64 / n as f64).collect();
        for (f, p) in freq.iter().zip([0.1, 0.2, 0.7]) {
            assert!((f - p).abs() < 0.015, "{freq:?}");
        }
    }

    #[test]
    fn draws_are_keyed_by_seed_and_index_only() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.1).sin()).collect();
        let s = SampleSpec { token_index: 7, ..spec(SamplingConfig { temperature: 0.7, ..Default::default() }) };
        let a = sample(&logits, &s, &mut Vec::new());
        let b = sample(&logits, &s, &mut vec![9.0; 3]);
        assert_eq!(a, b);
    }
}
