//! CUDA-event timing of each step's device work (from the first launch after the inputs are
//! uploaded to the last kernel before the ids are read back), so benchmarks can report the
//! GPU's share apart from the host wall clock that also counts scheduling and the sync.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::dev;
use crate::backend::BackendError;

pub(super) struct StepTimer {
    start: CudaEvent,
    end: CudaEvent,
    /// Device time of the last timed step, and the sum over all of them.
    pub last_ns: u64,
    pub total_ns: u64,
    pub steps: u64,
}

impl StepTimer {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, BackendError> {
        let ev = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(dev("creating a timing event"));
        Ok(StepTimer { start: ev()?, end: ev()?, last_ns: 0, total_ns: 0, steps: 0 })
    }

    pub fn start(&self, s: &CudaStream) -> Result<(), BackendError> {
        self.start.record(s).map_err(dev("recording a timing event"))
    }

    pub fn end(&self, s: &CudaStream) -> Result<(), BackendError> {
        self.end.record(s).map_err(dev("recording a timing event"))
    }

    /// After the step's results were read back (so both events have completed).
    pub fn collect(&mut self) -> Result<(), BackendError> {
        let ms = self.start.elapsed_ms(&self.end).map_err(dev("reading a timing event"))?;
        self.last_ns = (ms.max(0.0) as f64 * 1e6) as u64;
        self.total_ns += self.last_ns;
        self.steps += 1;
        Ok(())
    }
}
