//! The requests of a run: synthetic token-id prompts with configurable input/output length
//! distributions, or prompts read from a JSONL dataset. Deterministic for a given seed.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::error::BenchError;

/// A prompt as sent: token ids (used exactly as given) or text (tokenized by the server).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Ids(Vec<u32>),
    Text(String),
}

/// One request of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    pub prompt: Prompt,
    /// max_new_tokens (exact with `--ignore-eos`).
    pub output_len: u32,
}

impl RequestSpec {
    /// Prompt tokens when known before sending (token-id prompts).
    pub fn prompt_len(&self) -> Option<usize> {
        match &self.prompt {
            Prompt::Ids(ids) => Some(ids.len()),
            Prompt::Text(_) => None,
        }
    }
}

/// Lengths uniform in [mean·(1−range), mean·(1+range)] (vLLM's random-dataset `range_ratio`), at least 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthDist {
    pub mean: usize,
    pub range: f64,
}

impl LengthDist {
    #[cfg(test)]
    pub fn fixed(mean: usize) -> Self {
        LengthDist { mean, range: 0.0 }
    }

    /// The inclusive bounds of the distribution.
    pub fn bounds(&self) -> (usize, usize) {
        let lo = (self.mean as f64 * (1.0 - self.range)).floor() as usize;
        let hi = (self.mean as f64 * (1.0 + self.range)).floor() as usize;
        (lo, hi.max(lo))
    }

    pub fn sample(&self, rng: &mut StdRng) -> usize {
        let (lo, hi) = self.bounds();
        if lo == hi { lo } else { rng.random_range(lo..=hi) }
    }
}

/// The token ids a synthetic prompt may use: `[0, size)` minus `avoid` (EOS / BOS ids).
#[derive(Debug, Clone)]
pub struct Vocab {
    pub size: u32,
    pub avoid: Vec<u32>,
}

impl Vocab {
    fn draw(&self, rng: &mut StdRng) -> u32 {
        let mut t = rng.random_range(0..self.size.max(1));
        // Skip forbidden ids; `avoid` is tiny, so this ends after a few steps.
        for _ in 0..=self.avoid.len() {
            if !self.avoid.contains(&t) {
                break;
            }
            t = (t + 1) % self.size.max(1);
        }
        t
    }
}

/// `n` synthetic requests: a shared random prefix of `prefix_len` ids, then `input` random
/// ids of the request's own; `output` tokens to generate.
pub fn synthetic(n: usize, vocab: &Vocab, input: LengthDist, output: LengthDist, prefix_len: usize, seed: u64) -> Vec<RequestSpec> {
    let mut rng = StdRng::seed_from_u64(seed);
    let prefix: Vec<u32> = (0..prefix_len).map(|_| vocab.draw(&mut rng)).collect();
    (0..n)
        .map(|_| {
            let in_len = input.sample(&mut rng);
            let out_len = output.sample(&mut rng).max(1);
            let mut ids = prefix.clone();
            ids.extend((0..in_len).map(|_| vocab.draw(&mut rng)));
            if ids.is_empty() {
                ids.push(vocab.draw(&mut rng));
            }
            RequestSpec { prompt: Prompt::Ids(ids), output_len: out_len as u32 }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetLine {
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    output_len: Option<u32>,
}

/// Reads a JSONL dataset: each non-empty line `{"prompt": TEXT}` or `{"prompt_ids": [..]}`,
/// optionally with `"output_len": N` (else drawn from `output`).
pub fn parse_dataset(path: &Path, text: &str) -> Result<Vec<(Prompt, Option<u32>)>, BenchError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| BenchError::DatasetLine { path: path.to_path_buf(), line: i + 1, msg };
        let l: DatasetLine = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let prompt = match (l.prompt, l.prompt_ids) {
            (Some(t), None) if !t.is_empty() => Prompt::Text(t),
            (None, Some(ids)) if !ids.is_empty() => Prompt::Ids(ids),
            _ => return Err(err("needs exactly one non-empty `prompt` (text) or `prompt_ids` (token ids)".into())),
        };
        if l.output_len == Some(0) {
            return Err(err("`output_len` must be at least 1".into()));
        }
        out.push((prompt, l.output_len));
    }
    if out.is_empty() {
        return Err(BenchError::DatasetEmpty(path.to_path_buf()));
    }
    Ok(out)
}

/// `n` requests from dataset lines in order (cycling when there are fewer lines).
pub fn from_dataset(lines: &[(Prompt, Option<u32>)], n: usize, output: LengthDist, seed: u64) -> Vec<RequestSpec> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .filter_map(|i| lines.get(i % lines.len().max(1)))
        .map(|(p, out)| RequestSpec { prompt: p.clone(), output_len: out.unwrap_or_else(|| output.sample(&mut rng).max(1) as u32) })
        .collect()
}

/// Every id of a token-id prompt must be in the vocabulary.
pub fn check_vocab(specs: &[RequestSpec], vocab_size: u32) -> Result<(), BenchError> {
    for s in specs {
        if let Prompt::Ids(ids) = &s.prompt
            && let Some(&id) = ids.iter().find(|&&id| id >= vocab_size)
        {
            return Err(BenchError::TokenOutOfVocab { id, vocab: vocab_size });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        Vocab { size: 100, avoid: vec![0, 1, 2] }
    }

    #[test]
    fn fixed_lengths_are_exact_and_prompts_avoid_special_ids() {
        let specs = synthetic(20, &vocab(), LengthDist::fixed(50), LengthDist::fixed(7), 0, 1);
        for s in &specs {
            let Prompt::Ids(ids) = &s.prompt else { panic!("synthetic prompts are ids") };
            assert_eq!(ids.len(), 50);
            assert!(ids.iter().all(|&t| (3..100).contains(&t)));
            assert_eq!(s.output_len, 7);
        }
    }

    #[test]
    fn ranged_lengths_stay_in_bounds_and_vary() {
        let d = LengthDist { mean: 1000, range: 0.1 };
        assert_eq!(d.bounds(), (900, 1100));
        let specs = synthetic(200, &vocab(), d, LengthDist { mean: 10, range: 0.5 }, 0, 2);
        let lens: Vec<usize> = specs.iter().filter_map(RequestSpec::prompt_len).collect();
        assert!(lens.iter().all(|l| (900..=1100).contains(l)));
        assert!(lens.iter().min() != lens.iter().max());
        assert!(specs.iter().all(|s| (5..=15).contains(&s.output_len)));
    }

    #[test]
    fn same_seed_same_workload_and_shared_prefix() {
        let a = synthetic(5, &vocab(), LengthDist::fixed(8), LengthDist::fixed(4), 16, 42);
        let b = synthetic(5, &vocab(), LengthDist::fixed(8), LengthDist::fixed(4), 16, 42);
        let c = synthetic(5, &vocab(), LengthDist::fixed(8), LengthDist::fixed(4), 16, 43);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let ids = |s: &RequestSpec| match &s.prompt {
            Prompt::Ids(v) => v.clone(),
            Prompt::Text(_) => vec![],
        };
        assert_eq!(ids(&a[0]).len(), 24);
        assert_eq!(ids(&a[0])[..16], ids(&a[4])[..16]);
        assert_ne!(ids(&a[0])[16..], ids(&a[4])[16..]);
    }

    #[test]
    fn dataset_lines_parse_cycle_and_reject_bad_input() {
        let p = Path::new("d.jsonl");
        let lines = parse_dataset(p, "{\"prompt\": \"hi\", \"output_len\": 3}\n\n{\"prompt_ids\": [5, 6]}\n").unwrap();
        assert_eq!(lines.len(), 2);
        let specs = from_dataset(&lines, 5, LengthDist::fixed(9), 0);
        assert_eq!(specs.len(), 5);
        assert_eq!(specs[0], RequestSpec { prompt: Prompt::Text("hi".into()), output_len: 3 });
        assert_eq!(specs[1], RequestSpec { prompt: Prompt::Ids(vec![5, 6]), output_len: 9 });
        assert_eq!(specs[2], specs[0]);
        assert!(parse_dataset(p, "").is_err());
        assert!(parse_dataset(p, "{\"prompt\": \"a\", \"prompt_ids\": [1]}").is_err());
        assert!(parse_dataset(p, "{\"prompt\": \"\"}").is_err());
        assert!(parse_dataset(p, "not json").is_err());
        assert!(parse_dataset(p, "{\"prompt\": \"a\", \"output_len\": 0}").is_err());
        assert!(check_vocab(&specs, 7).is_ok());
        assert!(check_vocab(&specs, 6).is_err());
    }
}
