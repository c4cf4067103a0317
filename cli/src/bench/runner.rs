//! Sends the workload: each request is released at its arrival offset, then waits for a
//! concurrency slot (when `--concurrency` is set), then is timed from the moment it is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use super::metrics::Outcome;
use super::target::{RequestParams, Server};
use super::workload::RequestSpec;

/// How requests are released.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Send offsets in seconds (one per request).
    pub arrivals: Vec<f64>,
    /// At most this many in flight.
    pub concurrency: Option<usize>,
    /// Request ids are `{id_prefix}{index}`.
    pub id_prefix: String,
}

/// A progress bar on stderr (hidden when asked or when stderr is not a terminal).
pub fn progress(len: usize, what: &str, hidden: bool) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if hidden {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})") {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Runs every request of `specs` per `plan`. Returns the outcomes in request order and the
/// wall time from the start until the last request ended.
pub async fn run(
    server: Arc<Server>,
    specs: Vec<RequestSpec>,
    plan: &Plan,
    params: &RequestParams,
    pb: &ProgressBar,
) -> (Vec<Outcome>, f64) {
    let specs = Arc::new(specs);
    let limit = plan.concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(specs.len());
    for (i, &offset) in plan.arrivals.iter().enumerate().take(specs.len()) {
        let due = t0 + Duration::from_secs_f64(offset.max(0.0));
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let (server, specs, limit, params, pb) = (server.clone(), specs.clone(), limit.clone(), params.clone(), pb.clone());
        let id = format!("{}{i}", plan.id_prefix);
        handles.push(tokio::spawn(async move {
            let _slot = match &limit {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let outcome = match specs.get(i) {
                Some(spec) => server.send(i, id, spec, &params, t0).await,
                None => Outcome { error: Some("no such request".into()), ..Default::default() },
            };
            pb.inc(1);
            outcome
        }));
    }
    let mut outcomes = Vec::with_capacity(handles.len());
    for h in handles {
        outcomes.push(h.await.unwrap_or_else(|e| Outcome { error: Some(format!("request task failed: {e}")), ..Default::default() }));
    }
    (outcomes, t0.elapsed().as_secs_f64())
}
