//! Which worker serves a request. `prefix_aware` (default) weighs the prompt tokens a
//! worker already holds in its prefix cache against how busy it is; `least_load` and
//! `round_robin` ignore the cache.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::pool::WorkerEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    RoundRobin,
    LeastLoad,
    PrefixAware,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastLoad => "least_load",
            Policy::PrefixAware => "prefix_aware",
        }
    }
}

/// A routing decision.
#[derive(Clone)]
pub struct Choice {
    pub worker: Arc<WorkerEntry>,
    /// Leading prompt blocks the worker is believed to hold.
    pub cached_blocks: usize,
}

/// Why no worker could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoWorker {
    /// No healthy worker serves the model.
    NoneHealthy,
    /// Every candidate is at capacity.
    AllSaturated,
}

/// A worker's load as the gateway sees it: its reported queue and running requests plus
/// the requests this gateway sent since the last report (reports lag by an interval).
fn load_of(w: &WorkerEntry) -> (f64, bool) {
    let inflight = w.inflight.load(Ordering::Relaxed) as f64;
    let Ok(v) = w.view.lock() else { return (f64::MAX, true) };
    let l = &v.load;
    let queued = l.waiting as f64;
    let saturated = l.max_waiting > 0 && l.waiting >= l.max_waiting;
    (inflight.max(l.running as f64 + queued), saturated)
}

fn cached_prefix(w: &WorkerEntry, hashes: &[u64]) -> usize {
    let Ok(v) = w.view.lock() else { return 0 };
    hashes.iter().take_while(|h| v.cached.contains(h)).count()
}

/// Picks a worker among `candidates` (healthy, same model), skipping `exclude`d endpoints.
/// `hashes` are the request's full-block hashes; `load_weight` is how many prompt tokens of
/// cache one queued-or-running request is worth.
pub fn choose(
    policy: Policy,
    candidates: &[Arc<WorkerEntry>],
    hashes: &[u64],
    exclude: &[String],
    rr: u64,
    load_weight: f64,
) -> Result<Choice, NoWorker> {
    let live: Vec<&Arc<WorkerEntry>> = candidates.iter().filter(|w| !exclude.contains(&w.endpoint)).collect();
    if live.is_empty() {
        return Err(NoWorker::NoneHealthy);
    }
    let scored: Vec<(&Arc<WorkerEntry>, f64, usize)> = live
        .iter()
        .filter_map(|w| {
            let (load, saturated) = load_of(w);
            (!saturated).then(|| (*w, load, if policy == Policy::PrefixAware { cached_prefix(w, hashes) } else { 0 }))
        })
        .collect();
    if scored.is_empty() {
        return Err(NoWorker::AllSaturated);
    }
    let pick = match policy {
        Policy::RoundRobin => scored[(rr % scored.len() as u64) as usize],
        Policy::LeastLoad => *scored
            .iter()
            .enumerate()
            .min_by(|(ia, a), (ib, b)| a.1.total_cmp(&b.1).then(rotate(*ia, rr, scored.len()).cmp(&rotate(*ib, rr, scored.len()))))
            .map(|(_, s)| s)
            .ok_or(NoWorker::AllSaturated)?,
        Policy::PrefixAware => {
            let block = tokenfleet_proto::block_hash::BLOCK_SIZE as f64;
            *scored
                .iter()
                .enumerate()
                .max_by(|(ia, a), (ib, b)| {
                    let sa = a.2 as f64 * block - load_weight * a.1;
                    let sb = b.2 as f64 * block - load_weight * b.1;
                    sa.total_cmp(&sb).then(rotate(*ib, rr, scored.len()).cmp(&rotate(*ia, rr, scored.len())))
                })
                .map(|(_, s)| s)
                .ok_or(NoWorker::AllSaturated)?
        }
    };
    Ok(Choice { worker: pick.0.clone(), cached_blocks: pick.2 })
}

/// Tie-break order that rotates with `rr`, so equal workers share load.
fn rotate(i: usize, rr: u64, n: usize) -> usize {
    (i + n - (rr as usize % n)) % n
}

/// Records that `hashes` were sent to `w`: its cache will hold them once the prefill runs,
/// and the next request with that prefix should follow before the report arrives.
pub fn predict_cached(w: &WorkerEntry, hashes: &[u64]) {
    if let Ok(mut v) = w.view.lock() {
        v.cached.extend(hashes.iter().copied());
    }
}
