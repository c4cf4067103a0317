//! Steps in flight: each launch takes one of two slots, each with pinned host memory for
//! its uploads and for its sampled outputs, and a timer. With pinned memory every copy is
//! a real asynchronous DMA in stream order (a copy from pageable memory may make the driver
//! wait for the stream), so `launch` returns while the device still runs the step before,
//! and `collect` waits only for the step it reads.
//!
//! Slot reuse is safe because at most two steps are in flight: when step n+2 takes step
//! n's slot, step n was collected, i.e. its readback (the last thing queued for it, after
//! its uploads) completed. The uploads also record an event, checked before the staging
//! area is written again, so the invariant does not rest on the caller alone.

use std::sync::Arc;

use cudarc::driver::sys::{CU_MEMHOSTALLOC_PORTABLE, CU_MEMHOSTALLOC_WRITECOMBINED, CUevent_flags};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};
use tokenfleet_kernels::ops::SampleParams;

use super::super::cuda_plan::TOP_LOGPROBS_STRIDE;
use super::dev;
use super::timer::StepTimer;
use crate::backend::BackendError;
use crate::engine::sampler::Sampled;

/// One launched step, until collected.
#[derive(Debug)]
pub(super) struct Launched {
    pub slot: usize,
    /// Sampled rows of the step (padding rows excluded).
    pub rows: usize,
    /// Alternatives asked per row.
    pub top_logprobs: Vec<u32>,
}

/// Pinned memory of one slot.
pub(super) struct Slot {
    pub up: UploadStaging,
    pub out: Readback,
    pub timer: StepTimer,
}

impl Slot {
    pub fn new(ctx: &Arc<CudaContext>, outputs: &SampleBuffers<'_>) -> Result<Self, BackendError> {
        Ok(Slot { up: UploadStaging::new(ctx)?, out: Readback::new(ctx, outputs)?, timer: StepTimer::new(ctx)? })
    }
}

/// Allocates `len` elements of page-locked host memory.
fn pinned<T: DeviceRepr>(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<PinnedHostSlice<T>, BackendError> {
    // SAFETY: the memory is uninitialised; every user writes a prefix before copying it
    // (uploads) or reads only what a completed device copy wrote (readback).
    unsafe { ctx.alloc_pinned_with_flags::<T>(len.max(1), flags) }.map_err(dev("allocating pinned host memory"))
}

/// Write-combined pinned memory for the host→device copies of a step's inputs.
pub(super) struct UploadStaging {
    ctx: Arc<CudaContext>,
    ints: PinnedHostSlice<i32>,
    params: PinnedHostSlice<SampleParams>,
    /// Recorded after the copies out of this staging area.
    copied: CudaEvent,
}

impl UploadStaging {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self, BackendError> {
        Ok(UploadStaging {
            ctx: ctx.clone(),
            ints: pinned(ctx, 4096, CU_MEMHOSTALLOC_WRITECOMBINED)?,
            params: pinned(ctx, 64, CU_MEMHOSTALLOC_WRITECOMBINED)?,
            copied: ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(dev("creating an upload event"))?,
        })
    }

    /// Room for `ints` ints and `params` rows, once the copies queued from this area
    /// before have run.
    pub fn begin(&mut self, ints: usize, params: usize) -> Result<StagedUpload<'_>, BackendError> {
        self.copied.synchronize().map_err(dev("waiting for an earlier upload"))?;
        if self.ints.len() < ints {
            self.ints = pinned(&self.ctx, ints.next_power_of_two(), CU_MEMHOSTALLOC_WRITECOMBINED)?;
        }
        if self.params.len() < params {
            self.params = pinned(&self.ctx, params.next_power_of_two(), CU_MEMHOSTALLOC_WRITECOMBINED)?;
        }
        let ints = self.ints.as_mut_slice().map_err(dev("staging inputs"))?;
        let params = self.params.as_mut_slice().map_err(dev("staging inputs"))?;
        Ok(StagedUpload { ints, ints_used: 0, params, copied: &self.copied })
    }
}

/// The copies of one step out of an [`UploadStaging`].
pub(super) struct StagedUpload<'a> {
    ints: &'a mut [i32],
    ints_used: usize,
    params: &'a mut [SampleParams],
    copied: &'a CudaEvent,
}

impl StagedUpload<'_> {
    /// Queues the copy of `src` into the start of `dst` (through the pinned area).
    pub fn ints(&mut self, s: &Arc<CudaStream>, src: &[i32], dst: &mut CudaSlice<i32>) -> Result<(), BackendError> {
        if src.len() > dst.len() {
            return Err(BackendError::InvalidBatch(format!("{} ints for a device buffer of {}", src.len(), dst.len())));
        }
        let (a, b) = (self.ints_used, self.ints_used + src.len());
        let staged = self.ints.get_mut(a..b).ok_or_else(|| BackendError::Device("upload staging too small".into()))?;
        staged.copy_from_slice(src);
        self.ints_used = b;
        if src.is_empty() {
            return Ok(());
        }
        // A plain slice of pinned memory: the copy is asynchronous, and this area is not
        // written again before `copied` (recorded in `finish`) has completed.
        s.memcpy_htod(&*staged, &mut dst.slice_mut(..src.len())).map_err(dev("uploading step inputs"))
    }

    pub fn params(&mut self, s: &Arc<CudaStream>, src: &[SampleParams], dst: &mut CudaSlice<SampleParams>) -> Result<(), BackendError> {
        if src.len() > dst.len() {
            return Err(BackendError::InvalidBatch(format!("{} sampling rows for a device buffer of {}", src.len(), dst.len())));
        }
        let staged = self.params.get_mut(..src.len()).ok_or_else(|| BackendError::Device("upload staging too small".into()))?;
        staged.copy_from_slice(src);
        if src.is_empty() {
            return Ok(());
        }
        s.memcpy_htod(&*staged, &mut dst.slice_mut(..src.len())).map_err(dev("uploading sampling parameters"))
    }

    /// Marks the end of this step's copies.
    pub fn finish(self, s: &Arc<CudaStream>) -> Result<(), BackendError> {
        self.copied.record(s).map_err(dev("recording an upload event"))
    }
}

/// Pinned (cached, readable) host memory the sampler's outputs are copied into.
pub(super) struct Readback {
    token: PinnedHostSlice<i32>,
    logprob: PinnedHostSlice<f32>,
    top_ids: PinnedHostSlice<i32>,
    top_lp: PinnedHostSlice<f32>,
    /// Recorded after the copies. cudarc's own per-buffer events are off (the backend
    /// disables event tracking), so this is what a read waits for.
    ready: CudaEvent,
}

/// The device buffers a step's samples are read from (full capacity each).
pub(super) struct SampleBuffers<'a> {
    pub token: &'a CudaSlice<i32>,
    pub logprob: &'a CudaSlice<f32>,
    pub top_ids: &'a CudaSlice<i32>,
    pub top_lp: &'a CudaSlice<f32>,
}

impl Readback {
    /// Pinned twins of the device buffers (same lengths: a copy moves a whole buffer).
    fn new(ctx: &Arc<CudaContext>, src: &SampleBuffers<'_>) -> Result<Self, BackendError> {
        Ok(Readback {
            token: pinned(ctx, src.token.len(), CU_MEMHOSTALLOC_PORTABLE)?,
            logprob: pinned(ctx, src.logprob.len(), CU_MEMHOSTALLOC_PORTABLE)?,
            top_ids: pinned(ctx, src.top_ids.len(), CU_MEMHOSTALLOC_PORTABLE)?,
            top_lp: pinned(ctx, src.top_lp.len(), CU_MEMHOSTALLOC_PORTABLE)?,
            ready: ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(dev("creating a readback event"))?,
        })
    }

    /// Queues the copies of the sampler's outputs (the alternatives only when asked for).
    /// cudarc records an event on each pinned buffer, which [`Self::read`] waits for.
    pub fn enqueue(&mut self, s: &Arc<CudaStream>, src: SampleBuffers<'_>, want_top: bool) -> Result<(), BackendError> {
        copy_back(s, src.token, &mut self.token)?;
        copy_back(s, src.logprob, &mut self.logprob)?;
        if want_top {
            copy_back(s, src.top_ids, &mut self.top_ids)?;
            copy_back(s, src.top_lp, &mut self.top_lp)?;
        }
        self.ready.record(s).map_err(dev("recording a readback event"))
    }

    /// Waits for the copies of `l`'s step and decodes its rows.
    pub fn read(&self, l: &Launched, vocab: usize) -> Result<Vec<Sampled>, BackendError> {
        let d = dev("waiting for a step's samples");
        self.ready.synchronize().map_err(&d)?;
        let tokens = self.token.as_slice().map_err(&d)?;
        let logprobs = self.logprob.as_slice().map_err(&d)?;
        let want_top = l.top_logprobs.iter().any(|n| *n > 0);
        let (top_ids, top_lp): (&[i32], &[f32]) =
            if want_top { (self.top_ids.as_slice().map_err(&d)?, self.top_lp.as_slice().map_err(&d)?) } else { (&[], &[]) };
        let mut out = Vec::with_capacity(l.rows);
        for i in 0..l.rows {
            let raw = *tokens.get(i).ok_or_else(|| BackendError::Device(format!("sample row {i} beyond the readback buffer")))?;
            let token = u32::try_from(raw).map_err(|_| BackendError::Device(format!("the sampler returned token {raw}")))?;
            if token as usize >= vocab {
                return Err(BackendError::Device(format!("the sampler returned token {token} >= vocab {vocab}")));
            }
            let n = l.top_logprobs.get(i).copied().unwrap_or(0) as usize;
            let top = (0..n).filter_map(|j| {
                let id = *top_ids.get(i * TOP_LOGPROBS_STRIDE + j)?;
                Some((u32::try_from(id).ok()?, *top_lp.get(i * TOP_LOGPROBS_STRIDE + j)?))
            });
            out.push(Sampled { token, logprob: logprobs.get(i).copied().unwrap_or(f32::NAN), top: top.collect() });
        }
        Ok(out)
    }
}

/// A whole device buffer into its pinned twin. cudarc copies the destination's length, so
/// a source shorter than its twin (a buffer that grew) is refused instead of over-read.
fn copy_back<T: DeviceRepr + ValidAsZeroBits>(
    s: &Arc<CudaStream>,
    src: &CudaSlice<T>,
    dst: &mut PinnedHostSlice<T>,
) -> Result<(), BackendError> {
    if src.len() < dst.len() {
        return Err(BackendError::Device(format!("readback of {} elements into {} pinned", src.len(), dst.len())));
    }
    s.memcpy_dtoh(&src.slice(..dst.len()), &mut *dst).map_err(dev("reading back sampled ids"))
}
