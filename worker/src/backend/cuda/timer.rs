//! CUDA-event timing of each step's device work (from the first launch after the inputs are
//! uploaded to the last kernel before the ids are read back), so benchmarks can report the
//! GPU's share apart from the host wall clock that also counts scheduling and the sync.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::dev;
use crate::backend::BackendError;

/// The start/end events of one in-flight slot's step.
pub(super) struct StepTimer {
    start: CudaEvent,
    end: CudaEvent,
}

/// Device time of the last timed step, and the sum over all of them.
#[derive(Debug, Default)]
pub(super) struct GpuTime {
    pub last_ns: u64,
    pub total_ns: u64,
    pub steps: u64,
}

impl GpuTime {
    pub fn add(&mut self, ns: u64) {
        self.last_ns = ns;
        self.total_ns += ns;
        self.steps += 1;
    }
}

impl StepTimer {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, BackendError> {
        let ev = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("creating a timing event"));
        Ok(StepTimer { start: ev()?, end: ev()? })
    }

    pub fn start(&self, s: &CudaStream) -> Result<(), BackendError> {
        self.start.record(s).map_err(dev("recording a timing event"))
    }

    pub fn end(&self, s: &CudaStream) -> Result<(), BackendError> {
        self.end.record(s).map_err(dev("recording a timing event"))
    }

    /// Nanoseconds between the events, after the step's results were read back (so both
    /// have completed).
    pub fn elapsed_ns(&self) -> Result<u64, BackendError> {
        let ms = self.start.elapsed_ms(&self.end).map_err(dev("reading a timing event"))?;
        Ok((ms.max(0.0) as f64 * 1e6) as u64)
    }
}
