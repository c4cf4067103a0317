//! The engine: scheduler + backend + per-request output channels. One call of
//! [`EngineCore::step`] is one iteration of continuous batching. Used directly by the
//! offline `generate` command and wrapped in a thread by [`super::handle`] for serving.
//!
//! With overlap on, a step is launched before the previous one's ids are read: the host
//! plans step n+1 (its decode tokens fed from step n's samples on the device) while the
//! device computes step n, so the device never waits for the scheduler, the uploads or the
//! launch. When planning ahead is not safe (a preemption or a penalty needs the real ids),
//! the engine waits for the step in flight first.

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;

use super::launcher::Launcher;
use super::request::{EngineRequest, FinishReason};
use super::sampler::Sampled;
use super::scheduler::{AdmitError, Effect, Scheduler, StepPlan, TimingInfo, UsageInfo};
use crate::backend::{Backend, BackendError};

/// What a request's output channel carries. At most `max_new_tokens` tokens plus one
/// final message are ever sent, so the unbounded channel is bounded by the request itself
/// and the engine never waits on a slow reader.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutput {
    Token {
        sampled: Sampled,
        /// Set on the request's first token.
        first: Option<FirstToken>,
    },
    Finished {
        reason: FinishReason,
        usage: UsageInfo,
        timings: TimingInfo,
    },
    /// Refused at admission (queue full, duplicate id, too large for the pool).
    Rejected(AdmitError),
    /// The backend failed; the worker is going down.
    Failed(String),
}

/// What is known when a request's first token appears (trace events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstToken {
    pub prompt_tokens: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u32,
    pub queue_ms: f64,
    pub first_token_ms: f64,
}

/// Counts of one step, for statistics and tracing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepReport {
    pub sequences: usize,
    pub tokens: usize,
    pub sampled: usize,
}

pub struct EngineCore {
    pub scheduler: Scheduler,
    launcher: Launcher,
    outputs: HashMap<String, UnboundedSender<RequestOutput>>,
    overlap: bool,
    /// The launched step whose samples are not applied yet (overlap only).
    in_flight: Option<StepPlan>,
    /// Steps planned ahead, and times planning ahead was refused (a preemption or a penalty
    /// needed the real ids).
    pub planned_ahead: u64,
    pub plan_ahead_refused: u64,
}

impl EngineCore {
    pub fn new(scheduler: Scheduler, backend: Box<dyn Backend>) -> Self {
        EngineCore {
            scheduler,
            launcher: Launcher::new(backend),
            outputs: HashMap::new(),
            overlap: false,
            in_flight: None,
            planned_ahead: 0,
            plan_ahead_refused: 0,
        }
    }

    /// Plans each step while the previous one runs (see the module comment).
    pub fn with_overlap(mut self, on: bool) -> Self {
        self.overlap = on;
        self
    }

    pub fn backend(&self) -> &dyn Backend {
        self.launcher.backend()
    }

    /// Queues a request whose outputs go to `out`. A refusal is sent to `out` as well.
    pub fn submit(&mut self, req: EngineRequest, out: UnboundedSender<RequestOutput>) -> bool {
        let id = req.id.clone();
        match self.scheduler.add(req) {
            Ok(()) => {
                self.outputs.insert(id, out);
                true
            }
            Err(e) => {
                let _ = out.send(RequestOutput::Rejected(e));
                false
            }
        }
    }

    /// Cancels a request; true when it was known.
    pub fn abort(&mut self, id: &str) -> bool {
        match self.scheduler.abort(id) {
            Some(effect) => {
                self.dispatch(effect);
                true
            }
            None => false,
        }
    }

    pub fn has_work(&self) -> bool {
        self.in_flight.is_some() || self.scheduler.has_work()
    }

    /// Runs one step. `Ok(None)` when there was nothing to do. A backend error is fatal:
    /// every request is told, and the error is returned.
    pub fn step(&mut self) -> Result<Option<StepReport>, BackendError> {
        // Requests whose receiver is gone (client dropped the stream) are aborted first.
        let gone: Vec<String> = self.outputs.iter().filter(|(_, tx)| tx.is_closed()).map(|(id, _)| id.clone()).collect();
        for id in gone {
            self.scheduler.abort(&id);
            self.outputs.remove(&id);
        }
        let result = if self.overlap { self.step_overlapped() } else { self.step_synchronous() };
        if let Err(e) = &result {
            for (_, tx) in self.outputs.drain() {
                let _ = tx.send(RequestOutput::Failed(e.to_string()));
            }
        }
        result
    }

    fn step_synchronous(&mut self) -> Result<Option<StepReport>, BackendError> {
        let Some(plan) = self.scheduler.schedule() else {
            return Ok(None);
        };
        let sampled = self.launcher.run(&plan.batch)?;
        self.apply(&plan, &sampled, true).map(Some)
    }

    /// Launches step n+1 (when it can be planned ahead), then waits for step n.
    fn step_overlapped(&mut self) -> Result<Option<StepReport>, BackendError> {
        let current = match self.in_flight.take() {
            Some(plan) => plan,
            None => {
                let Some(plan) = self.scheduler.schedule() else {
                    return Ok(None);
                };
                self.launcher.launch(&plan.batch)?;
                self.scheduler.advance(&plan);
                plan
            }
        };
        let next = if self.scheduler.can_plan_ahead() {
            self.scheduler.schedule()
        } else {
            self.plan_ahead_refused += 1;
            None
        };
        if let Some(plan) = &next {
            self.launcher.launch(&plan.batch)?;
            self.scheduler.advance(plan);
            self.planned_ahead += 1;
        }
        let sampled = self.launcher.collect()?;
        let report = self.apply(&current, &sampled, false)?;
        self.in_flight = next;
        Ok(Some(report))
    }

    /// Applies a finished step's samples (`advance` first when it was not booked at launch).
    fn apply(&mut self, plan: &StepPlan, sampled: &[Sampled], advance: bool) -> Result<StepReport, BackendError> {
        if sampled.len() != plan.batch.samples.len() {
            return Err(BackendError::Device(format!("backend returned {} samples for {} rows", sampled.len(), plan.batch.samples.len())));
        }
        let report = StepReport { sequences: plan.batch.seqs.len(), tokens: plan.batch.num_tokens(), sampled: sampled.len() };
        if advance {
            self.scheduler.advance(plan);
        }
        for effect in self.scheduler.resolve_samples(plan, sampled) {
            self.dispatch(effect);
        }
        Ok(report)
    }

    fn dispatch(&mut self, effect: Effect) {
        match effect {
            Effect::Token { request_id, sampled, first } => {
                let alive = self.outputs.get(&request_id).is_some_and(|tx| tx.send(RequestOutput::Token { sampled, first }).is_ok());
                if !alive {
                    // The reader went away mid-step: free its blocks now.
                    self.outputs.remove(&request_id);
                    self.scheduler.abort(&request_id);
                }
            }
            Effect::Finished { request_id, reason, usage, timings } => {
                if let Some(tx) = self.outputs.remove(&request_id) {
                    let _ = tx.send(RequestOutput::Finished { reason, usage, timings });
                }
            }
        }
    }
}
