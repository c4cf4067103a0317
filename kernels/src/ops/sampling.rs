//! Logits processing + sampling on the device (kernels/cuda/sampling.cu), exactly per
//! worker/src/engine/sampler.rs.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr};

use crate::KernelError;
use crate::launch::PushArg;
use crate::runtime::{Kernels, cfg, drv, to_i32, to_u32};
use crate::shapes::{SampleDims, SampleLens};

/// Per-row sampling parameters; mirrors `SampleParams` in sampling.cu (`#[repr(C)]`, 48
/// bytes). Fields follow `SamplingConfig` + `SampleSpec` of the engine's sampler.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 0 = off.
    pub top_k: u32,
    /// Index of the token being drawn among the request's generated tokens.
    pub token_index: u32,
    pub seed: u64,
    /// Alternatives to report (0..=20).
    pub top_logprobs: u32,
    /// Must be 0 (padding).
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<SampleParams>() == 48);

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams {
            temperature: 1.0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            top_k: 0,
            token_index: 0,
            seed: 0,
            top_logprobs: 0,
            reserved: 0,
        }
    }
}

// SAFETY: a #[repr(C)] struct of plain numbers with no padding the device reads (48 bytes,
// same field order and types as the CUDA struct, which static_asserts the same size).
unsafe impl DeviceRepr for SampleParams {}

// SAFETY: every field is a plain number, so the all-zero bit pattern is a valid value (the
// backend stages rows in pinned host memory, which cudarc hands out only for such types).
unsafe impl cudarc::driver::ValidAsZeroBits for SampleParams {}

/// A sparse per-row list in CSR form: row r's entries are `[offsets[r], offsets[r+1])`.
#[derive(Debug)]
pub struct SparseRows<'a> {
    /// `[rows + 1]`
    pub offsets: CudaView<'a, i32>,
    /// Token ids (unique within a row for penalties, as the engine's map produces).
    pub ids: CudaView<'a, i32>,
}

/// Where the sampler writes; only these go back to the host.
#[derive(Debug)]
pub struct SampleOutputs<'a> {
    /// `[rows]` drawn ids.
    pub token: CudaViewMut<'a, i32>,
    /// `[rows]` raw logprob of the drawn id.
    pub logprob: CudaViewMut<'a, f32>,
    /// `[rows, 20]` best raw alternatives (ties to the lower id); -1 past `top_logprobs`.
    pub top_ids: CudaViewMut<'a, i32>,
    /// `[rows, 20]` their logprobs; -inf past `top_logprobs`.
    pub top_logprobs: CudaViewMut<'a, f32>,
}

/// One launch samples every row of `logits`.
/// Per-(row, chunk of [`crate::shapes::SAMPLE_STATS_CHUNK`] ids) partial statistics that
/// `tf_sample_stats` writes and `tf_sample` merges: each at least
/// `rows × SampleDims::stat_chunks()` long.
#[derive(Debug)]
pub struct SamplePartials<'a> {
    pub max: CudaViewMut<'a, f32>,
    pub sum: CudaViewMut<'a, f64>,
    pub arg: CudaViewMut<'a, u64>,
}

#[derive(Debug)]
pub struct SampleArgs<'a> {
    pub dims: SampleDims,
    /// `[rows, logits_stride]` f32 raw logits.
    pub logits: CudaView<'a, f32>,
    /// `[rows]`
    pub params: CudaView<'a, SampleParams>,
    /// Prompt ∪ output ids per row (`ids`) with their output counts (`counts`, same length).
    pub penalties: SparseRows<'a>,
    pub penalty_counts: CudaView<'a, i32>,
    /// Ids forbidden this step, per row.
    pub suppress: SparseRows<'a>,
    /// `[rows, vocab]` f32 workspace for the processed logits.
    pub scratch: CudaViewMut<'a, f32>,
    pub partials: SamplePartials<'a>,
    pub out: SampleOutputs<'a>,
}

impl Kernels {
    /// Launches `tf_sample`: grid rows, block 512 (one block per row).
    pub fn sample(&self, stream: &CudaStream, mut a: SampleArgs<'_>) -> Result<(), KernelError> {
        const OP: &str = "sample";
        self.check_stream(OP, stream)?;
        let d = a.dims;
        d.check(SampleLens {
            logits: a.logits.len(),
            params: a.params.len(),
            pen_offsets: a.penalties.offsets.len(),
            pen_ids: a.penalties.ids.len(),
            pen_counts: a.penalty_counts.len(),
            sup_offsets: a.suppress.offsets.len(),
            sup_ids: a.suppress.ids.len(),
            scratch: a.scratch.len(),
            out_token: a.out.token.len(),
            out_logprob: a.out.logprob.len(),
            out_top_ids: a.out.top_ids.len(),
            out_top_logprobs: a.out.top_logprobs.len(),
            partials: a.partials.max.len().min(a.partials.sum.len()).min(a.partials.arg.len()),
        })?;
        let stride = d.logits_stride as i64;
        let vocab = to_i32(OP, "vocab", d.vocab)?;
        let pen_nnz = to_i32(OP, "penalty entries", a.penalties.ids.len())?;
        let sup_nnz = to_i32(OP, "suppressed ids", a.suppress.ids.len())?;
        let chunks = to_i32(OP, "stat chunks", d.stat_chunks())?;
        let rows = to_u32(OP, "rows", d.rows)?;
        let mut st = self.launch(stream, &self.f.sample_stats);
        st.arg(&a.logits).arg(&stride).arg(&vocab).arg(&mut a.partials.max).arg(&mut a.partials.sum).arg(&mut a.partials.arg);
        // SAFETY: matches tf_sample_stats(const float*, long long, int, float*, double*,
        // unsigned long long*); grid (chunks, rows) reads ids < vocab of each checked logits
        // row and writes rows × chunks partials, which `check` verified fit.
        unsafe { st.launch(cfg((chunks as u32, rows, 1), 256)) }.map_err(drv(OP))?;
        let grid = (rows, 1, 1);
        let mut b = self.launch(stream, &self.f.sample);
        b.arg(&a.logits).arg(&stride).arg(&vocab).arg(&a.params);
        b.arg(&a.penalties.offsets).arg(&a.penalties.ids).arg(&a.penalty_counts).arg(&pen_nnz);
        b.arg(&a.suppress.offsets).arg(&a.suppress.ids).arg(&sup_nnz).arg(&mut a.scratch);
        b.arg(&mut a.out.token).arg(&mut a.out.logprob).arg(&mut a.out.top_ids).arg(&mut a.out.top_logprobs);
        let (pmax, psum, parg) = (a.partials.max.as_view(), a.partials.sum.as_view(), a.partials.arg.as_view());
        b.arg(&pmax).arg(&psum).arg(&parg).arg(&chunks);
        // SAFETY: matches tf_sample(const float*, long long, int, const SampleParams*, int*,
        // int*, int*, int, int*, int*, int, float*, int*, float*, int*, float*, const float*,
        // const double*, const unsigned long long*, int). Lengths are host-checked (rows ×
        // stride logits, rows + 1 offsets, rows × vocab scratch, rows × 20 top outputs, rows ×
        // chunks partials written by the launch above on the same stream); the kernel clamps
        // CSR offsets to the lists and skips ids outside the vocabulary.
        unsafe { b.launch(cfg(grid, 512)) }.map_err(drv(OP))
    }
}
