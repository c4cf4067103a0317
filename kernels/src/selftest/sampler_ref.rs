//! The CPU reference for the device sampler: the algorithm of worker/src/engine/sampler.rs,
//! ported step for step (this crate cannot depend on the worker; both share
//! [`crate::philox`]), plus the race's winning margin so near-ties can be told apart from
//! real mismatches.

use crate::ops::SampleParams;
use crate::philox::uniform;

/// One row to sample.
#[derive(Debug, Clone)]
pub struct RefSpec {
    pub params: SampleParams,
    /// (id, output count), ids unique.
    pub penalties: Vec<(u32, u32)>,
    pub suppress: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefSampled {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
    /// |best − second| / max(|best|, 1) of the race scores (None: no race, or one candidate).
    pub race_margin: Option<f64>,
}

fn ranks_before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    match (va.is_nan(), vb.is_nan()) {
        (true, _) => false,
        (false, true) => true,
        _ => va > vb || (va == vb && ia < ib),
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in l.iter().enumerate().skip(1) {
        if ranks_before(*v, i as u32, l[best], best as u32) {
            best = i;
        }
    }
    best as u32
}

pub fn top_n(l: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect();
    all.sort_by(|a, b| if ranks_before(a.1, a.0, b.1, b.0) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
    all.truncate(n.min(l.len()));
    all
}

pub fn logsumexp(l: &[f32]) -> f32 {
    let m = l.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if m == f32::NEG_INFINITY {
        return m;
    }
    let s: f64 = l.iter().filter(|v| !v.is_nan()).map(|&v| ((v - m) as f64).exp()).sum();
    (m as f64 + s.ln()) as f32
}

pub fn sample(raw: &[f32], spec: &RefSpec) -> RefSampled {
    let p = &spec.params;
    let lse = logsumexp(raw);
    let lp = |id: u32| raw[id as usize] - lse;
    let top =
        if p.top_logprobs > 0 { top_n(raw, p.top_logprobs as usize).into_iter().map(|(i, _)| (i, lp(i))).collect() } else { Vec::new() };
    let (token, race_margin) = if p.temperature == 0.0 && spec.penalties.is_empty() && spec.suppress.is_empty() {
        (argmax(raw), None)
    } else {
        let mut l = raw.to_vec();
        for &(id, count) in &spec.penalties {
            let Some(v) = l.get_mut(id as usize) else { continue };
            if p.repetition_penalty != 1.0 {
                *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
            }
            if count > 0 {
                *v -= p.presence_penalty + p.frequency_penalty * count as f32;
            }
        }
        for &id in &spec.suppress {
            if let Some(v) = l.get_mut(id as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        if p.temperature == 0.0 { (argmax(&l), None) } else { draw(&mut l, p) }
    };
    RefSampled { token, logprob: lp(token), top, race_margin }
}

fn draw(l: &mut [f32], p: &SampleParams) -> (u32, Option<f64>) {
    for v in l.iter_mut() {
        *v /= p.temperature;
    }
    let vocab = l.len();
    let mut cand: Vec<(u32, f32)> = if p.top_k > 0 && (p.top_k as usize) < vocab {
        top_n(l, p.top_k as usize)
    } else {
        l.iter().enumerate().map(|(i, v)| (i as u32, *v)).collect()
    };
    cand.retain(|(_, v)| *v > f32::NEG_INFINITY && !v.is_nan());
    if cand.is_empty() {
        return (argmax(l), None);
    }
    let lmax = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    if p.top_p < 1.0 {
        cand.sort_by(|a, b| if ranks_before(a.1, a.0, b.1, b.0) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        let probs: Vec<f64> = cand.iter().map(|c| ((c.1 - lmax) as f64).exp()).collect();
        let z: f64 = probs.iter().sum();
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (i, pr) in probs.iter().enumerate() {
            cum += pr / z;
            if cum >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    if p.min_p > 0.0 {
        let min_p = p.min_p as f64;
        cand.retain(|c| ((c.1 - lmax) as f64).exp() >= min_p);
    }
    let mut best: Option<(u32, f64)> = None;
    let mut second = f64::NEG_INFINITY;
    for &(id, v) in &cand {
        let u = uniform(p.seed, p.token_index, id);
        let score = (v - lmax) as f64 - (-u.ln()).ln();
        best = match best {
            Some((bi, bs)) if bs > score || (bs == score && bi < id) => {
                second = second.max(score);
                Some((bi, bs))
            }
            Some((_, bs)) => {
                second = second.max(bs);
                Some((id, score))
            }
            None => Some((id, score)),
        };
    }
    match best {
        Some((id, bs)) => (id, (second > f64::NEG_INFINITY).then(|| (bs - second).abs() / bs.abs().max(1.0))),
        None => (0, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_ties_go_to_the_lowest_id_and_top_is_ordered() {
        let spec = RefSpec {
            params: SampleParams { temperature: 0.0, top_logprobs: 3, ..Default::default() },
            penalties: vec![],
            suppress: vec![],
        };
        let out = sample(&[1.0, 3.0, 3.0, -2.0], &spec);
        assert_eq!(out.token, 1);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn penalties_then_suppression() {
        let p = SampleParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            presence_penalty: 0.25,
            frequency_penalty: 0.5,
            ..Default::default()
        };
        let spec = RefSpec { params: p, penalties: vec![(0, 0), (1, 2), (3, 1)], suppress: vec![] };
        assert_eq!(sample(&[2.0, -2.0, 1.0, 1.5], &spec).token, 0);
        let spec = RefSpec { suppress: vec![0], ..spec };
        assert_eq!(sample(&[2.0, -2.0, 1.0, 1.5], &spec).token, 2);
    }
}
