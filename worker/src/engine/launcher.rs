//! Launches steps on a backend in order, one or two in flight.
//!
//! A device backend ([`Backend::launches_async`]) queues a step and returns at once; the
//! engine then plans the next step while the device computes, and the next step's fed
//! tokens are copied from the previous step's sampled ids on the device. A backend that
//! computes on the calling thread (CPU, synthetic) gets the same interface here: a launch
//! runs the step at once, substituting fed tokens from the previous step's results, and
//! keeps the samples until they are collected. Both orders give the same tokens, which is
//! what the overlap tests check on the CPU.

use std::collections::VecDeque;

use crate::backend::{Backend, BackendError, StepBatch};
use crate::engine::sampler::Sampled;

/// Steps that may be launched and not yet collected.
pub const MAX_IN_FLIGHT: usize = 2;

pub struct Launcher {
    backend: Box<dyn Backend>,
    /// Samples of steps run synchronously but not collected yet (emulation only).
    ready: VecDeque<Vec<Sampled>>,
    in_flight: usize,
}

impl Launcher {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Launcher { backend, ready: VecDeque::new(), in_flight: 0 }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Runs one step and waits for it (nothing may be in flight).
    pub fn run(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        if self.in_flight > 0 || !batch.feed.is_empty() {
            return Err(BackendError::InvalidBatch("a synchronous step while steps are in flight".into()));
        }
        self.backend.execute(batch)
    }

    /// Queues a step whose fed tokens come from the step launched just before it.
    pub fn launch(&mut self, batch: &StepBatch) -> Result<(), BackendError> {
        if self.in_flight >= MAX_IN_FLIGHT {
            return Err(BackendError::InvalidBatch(format!("more than {MAX_IN_FLIGHT} steps in flight")));
        }
        if !batch.feed.is_empty() && self.in_flight == 0 {
            return Err(BackendError::InvalidBatch("fed tokens but no step in flight to feed them".into()));
        }
        if self.backend.launches_async() {
            self.backend.launch(batch)?;
        } else {
            let samples = match self.ready.back() {
                Some(prev) if !batch.feed.is_empty() => self.backend.execute(&fed(batch, prev)?)?,
                _ => self.backend.execute(batch)?,
            };
            self.ready.push_back(samples);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for the oldest step in flight and returns its samples.
    pub fn collect(&mut self) -> Result<Vec<Sampled>, BackendError> {
        if self.in_flight == 0 {
            return Err(BackendError::InvalidBatch("collect with no step in flight".into()));
        }
        let out = if self.backend.launches_async() {
            self.backend.collect()?
        } else {
            self.ready.pop_front().ok_or_else(|| BackendError::InvalidBatch("launched step lost its samples".into()))?
        };
        self.in_flight -= 1;
        Ok(out)
    }
}

/// `batch` with its fed tokens replaced by the ids `prev` sampled.
fn fed(batch: &StepBatch, prev: &[Sampled]) -> Result<StepBatch, BackendError> {
    let mut b = batch.clone();
    for f in std::mem::take(&mut b.feed) {
        let s = prev
            .get(f.from_sample)
            .ok_or_else(|| BackendError::InvalidBatch(format!("fed from sample row {} of {}", f.from_sample, prev.len())))?;
        let slot =
            b.token_ids.get_mut(f.token).ok_or_else(|| BackendError::InvalidBatch(format!("fed token {} outside the step", f.token)))?;
        *slot = s.token;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FedToken;
    use crate::backend::synthetic::SyntheticBackend;

    fn sampled(token: u32) -> Sampled {
        Sampled { token, logprob: 0.0, top: Vec::new() }
    }

    #[test]
    fn fed_tokens_take_the_previous_samples() {
        let batch = StepBatch {
            token_ids: vec![5, 0, 7, 0],
            feed: vec![FedToken { token: 1, from_sample: 1 }, FedToken { token: 3, from_sample: 0 }],
            ..Default::default()
        };
        let b = fed(&batch, &[sampled(11), sampled(22)]).unwrap();
        assert_eq!(b.token_ids, vec![5, 22, 7, 11]);
        assert!(b.feed.is_empty());
        assert!(fed(&batch, &[sampled(11)]).is_err(), "a missing sample row is an error");
    }

    #[test]
    fn launch_order_and_limits_are_enforced() {
        let mut l = Launcher::new(Box::new(SyntheticBackend::new(100, 4, std::time::Duration::ZERO, vec![])));
        assert!(l.collect().is_err(), "nothing in flight");
        let fed_batch = StepBatch { feed: vec![FedToken { token: 0, from_sample: 0 }], ..Default::default() };
        assert!(l.launch(&fed_batch).is_err(), "fed tokens need a step in flight");
        let empty = StepBatch::default();
        l.launch(&empty).unwrap();
        l.launch(&empty).unwrap();
        assert!(l.launch(&empty).is_err(), "a third step in flight");
        assert!(l.run(&empty).is_err(), "a synchronous step behind steps in flight");
        assert_eq!(l.in_flight(), 2);
        l.collect().unwrap();
        l.collect().unwrap();
        assert_eq!(l.in_flight(), 0);
    }
}
