//! When each request is sent: all at time 0 for an infinite rate, else a Poisson process
//! (exponential gaps) at `rate`. As in vLLM's bench, the sampled offsets are rescaled so the
//! last request is sent at exactly `n / rate`, which keeps throughput comparable across seeds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::args::RequestRate;

/// Send offsets in seconds from the start of the run, non-decreasing, one per request.
pub fn schedule(n: usize, rate: RequestRate, seed: u64) -> Vec<f64> {
    if rate.is_infinite() || n == 0 {
        return vec![0.0; n];
    }
    // A stream of its own, so the arrival times do not change with the prompt generator.
    let mut rng = StdRng::seed_from_u64(seed ^ 0xA5A5_5A5A_C3C3_3C3C);
    let mut t = 0.0;
    let mut offsets: Vec<f64> = (0..n)
        .map(|_| {
            // Inverse CDF of Exp(rate); 1 − u is in (0, 1] so the log is finite.
            let u: f64 = rng.random();
            t += -(1.0 - u).ln() / rate.0;
            t
        })
        .collect();
    let last = offsets.last().copied().unwrap_or(0.0);
    if last > 0.0 {
        let scale = (n as f64 / rate.0) / last;
        for o in offsets.iter_mut() {
            *o *= scale;
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        assert_eq!(schedule(4, RequestRate(f64::INFINITY), 0), vec![0.0; 4]);
        assert!(schedule(0, RequestRate(3.0), 0).is_empty());
    }

    #[test]
    fn poisson_is_deterministic_per_seed_and_ends_at_n_over_rate() {
        let a = schedule(1000, RequestRate(20.0), 7);
        let b = schedule(1000, RequestRate(20.0), 7);
        let c = schedule(1000, RequestRate(20.0), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a[0] > 0.0);
        assert!((a[999] - 50.0).abs() < 1e-9);
    }

    #[test]
    fn poisson_gaps_look_exponential() {
        // Exponential gaps have a coefficient of variation of 1 (a fixed rate would have 0).
        let a = schedule(20_000, RequestRate(100.0), 3);
        let gaps: Vec<f64> = std::iter::once(a[0]).chain(a.windows(2).map(|w| w[1] - w[0])).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.01).abs() < 1e-9, "mean gap {mean}");
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.05, "coefficient of variation {cv}");
    }
}
