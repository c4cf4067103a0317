//! Row-major bf16 GEMMs (f32 accumulation): `out[T×N] = x[T×K] · Wᵀ` with W an `[N, K]`
//! row-major weight, as every Llama projection — through cuBLASLt, or for ≤ 16 rows through
//! one of our small-batch GEMVs (`tokenfleet-kernels`' `gemv`: row pairs on the CUDA cores
//! for t ≤ 8, 16-row tiles on the tensor cores for t ≤ 16; both fuse the SiLU·mul epilogue
//! into the gate|up projection) where that is faster.
//!
//! Each distinct shape (t, n, k, output type, fused or not) gets its descriptors built and
//! its path chosen once, then cached: a step only launches. For decode-sized shapes (t ≤ 16,
//! and the decode batch buckets up to [`TUNE_MAX_T`]) the heuristic's candidates are timed
//! once with CUDA events and the fastest kept (cuBLAS's first guess is most often off
//! there). Each GEMV kernel that handles the shape is then timed against that winner; the
//! fastest one that beats it is taken only if its output matches cuBLASLt's on the same
//! inputs (a kernel that disagrees is a bug: logged, and that kernel is never used again in
//! this process; the next fastest is checked). Other shapes take the heuristic's first
//! choice. A shape cuBLASLt has no algorithm for falls back to `cublasGemmEx`, logged.
//! Nothing is timed under graph capture.

mod lt;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUstreamCaptureStatus};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::bf16;
use tokenfleet_kernels::Kernels;
use tokenfleet_kernels::ops::{GemvArgs, GemvOut, SiluMulArgs};
use tokenfleet_kernels::shapes::{GEMV_MAX_ROWS, GemvDims, GemvEpilogue, GemvKernel, SiluDims};

use self::lt::{LtHandle, LtPlan, Ptrs, launch_gemm_ex};
use crate::backend::BackendError;
use crate::backend::cuda_graph_plan::batch_bucket;

/// The output element type of a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutType {
    Bf16,
    F32,
}

/// A GEMM output element: bf16 or f32.
pub trait OutElem: GemvOut + Copy + Default {
    const TYPE: OutType;
    fn to_f32(self) -> f32;
    /// The output as bf16 (the gate|up product feeding SiLU·mul is bf16).
    fn as_bf16<'b>(v: &'b CudaViewMut<'_, Self>) -> Option<CudaView<'b, bf16>>;
}

impl OutElem for bf16 {
    const TYPE: OutType = OutType::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn as_bf16<'b>(v: &'b CudaViewMut<'_, Self>) -> Option<CudaView<'b, bf16>> {
        Some(v.as_view())
    }
}

impl OutElem for f32 {
    const TYPE: OutType = OutType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn as_bf16<'b>(_: &'b CudaViewMut<'_, Self>) -> Option<CudaView<'b, bf16>> {
        None
    }
}

/// `t` rows of activations, `n` output features, `k` input features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmDims {
    pub t: usize,
    pub n: usize,
    pub k: usize,
}

/// The buffers of one GEMM call.
pub struct GemmIo<'a, T> {
    pub x: CudaView<'a, bf16>,
    pub w: CudaView<'a, bf16>,
    pub out: CudaViewMut<'a, T>,
}

/// Shapes with at most this many rows may be tuned by timing (decode and small batches).
pub const TUNE_MAX_T: usize = 256;

/// Row counts whose shapes are tuned by timing: 1..=16 (where our GEMVs compete) and the
/// decode batch buckets up to [`TUNE_MAX_T`] (the shapes CUDA graphs replay, tuned by the
/// warm-up). Any other row count — a chunked-prefill or mixed step can have any — takes the
/// heuristic's first choice, so serving never pauses to time a new shape.
fn tuned_rows(t: usize) -> bool {
    t <= TUNE_MAX_T && (t <= GEMV_MAX_ROWS || batch_bucket(t, TUNE_MAX_T) == Some(t))
}
/// Cached shapes before the cache is cleared (chunked prefill makes many distinct `t`).
const MAX_PLANS: usize = 4096;
/// Largest relative L2 difference between our GEMV and cuBLASLt on the same inputs that is
/// still rounding (two bf16 roundings of O(1) outputs ≈ 6e-3).
const GEMV_AGREEMENT: f64 = 2e-2;

enum Plan {
    Lt(LtPlan),
    /// cuBLASLt offered no algorithm for this shape.
    GemmEx,
    /// One of our small-batch GEMVs: faster than cuBLASLt here, and agreeing with it.
    Gemv(GemvKernel),
}

/// What the cache holds, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmStats {
    pub lt_shapes: usize,
    pub gemm_ex_shapes: usize,
    pub tuned_shapes: usize,
    /// Shapes run by the row-pair GEMV.
    pub gemv_shapes: usize,
    /// Shapes run by the tensor-core GEMV.
    pub gemv_mma_shapes: usize,
    /// GEMV kernels that disagreed with cuBLASLt (each is then disabled).
    pub gemv_rejected: usize,
}

/// Shape, output type, and whether the SiLU·mul epilogue follows (gate|up).
type Key = (GemmDims, OutType, bool);

pub struct Gemm {
    lt: LtHandle,
    blas: CudaBlas,
    workspace: CudaSlice<u8>,
    plans: HashMap<Key, Plan>,
    stats: GemmStats,
    tune: bool,
    /// Per [`GemvKernel::ALL`]: cleared for good when that kernel ever disagrees with cuBLASLt.
    gemv_ok: [bool; GemvKernel::ALL.len()],
    stream: Arc<CudaStream>,
}

fn kern(e: tokenfleet_kernels::KernelError) -> BackendError {
    BackendError::Device(e.to_string())
}

impl Gemm {
    /// `tune`: time the candidates of decode-sized shapes (and our GEMV against them).
    pub fn new(stream: Arc<CudaStream>, tune: bool) -> Result<Self, BackendError> {
        let blas = CudaBlas::new(stream.clone()).map_err(|e| BackendError::Device(format!("cuBLAS: {e:?}")))?;
        let lt = LtHandle::new()?;
        // NVIDIA's recommended workspace: 32 MiB on Hopper, 4 MiB before.
        let major = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| BackendError::Device(format!("compute capability: {e:?}")))?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(size).map_err(|e| BackendError::Device(format!("cuBLASLt workspace: {e:?}")))?;
        Ok(Gemm {
            lt,
            blas,
            workspace,
            plans: HashMap::new(),
            stats: GemmStats::default(),
            tune,
            gemv_ok: [true; GemvKernel::ALL.len()],
            stream,
        })
    }

    pub fn stats(&self) -> GemmStats {
        self.stats
    }

    /// `out = x · wᵀ`; `x` holds `t × k` bf16, `w` `n × k` bf16, `out` `t × n`. Lengths are
    /// checked before anything is launched.
    pub fn run<T: OutElem>(&mut self, k: &Kernels, mut io: GemmIo<'_, T>, d: GemmDims) -> Result<(), BackendError> {
        check_extents(io.x.len(), io.w.len(), io.out.len(), T::BYTES, T::TYPE, d)?;
        if d.t == 0 || d.n == 0 {
            return Ok(());
        }
        let key = (d, T::TYPE, false);
        if !self.plans.contains_key(&key) {
            let plan = self.plan(k, &mut io, None, d)?;
            self.insert(key, plan);
        }
        self.launch(k, key, &mut io, None, d)
    }

    /// The gate|up projection and its SiLU·mul: `act = silu(x·Wgᵀ) · (x·Wuᵀ)` with `w` the
    /// fused `[2·inter, k]` weight. Either our GEMV writes `act` directly, or cuBLASLt writes
    /// `io.out` (`t × 2·inter`) and `tf_silu_mul` reads it.
    pub fn run_gate_up(
        &mut self,
        k: &Kernels,
        mut io: GemmIo<'_, bf16>,
        mut act: CudaViewMut<'_, bf16>,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        check_extents(io.x.len(), io.w.len(), io.out.len(), 2, OutType::Bf16, d)?;
        if !d.n.is_multiple_of(2) || act.len() < d.t * (d.n / 2) {
            return Err(BackendError::Device(format!("gate|up {}x{}x{}: act too small or odd width", d.t, d.n, d.k)));
        }
        if d.t == 0 || d.n == 0 {
            return Ok(());
        }
        let key = (d, OutType::Bf16, true);
        if !self.plans.contains_key(&key) {
            let plan = self.plan(k, &mut io, Some(&mut act), d)?;
            self.insert(key, plan);
        }
        self.launch(k, key, &mut io, Some(&mut act), d)
    }

    fn insert(&mut self, key: Key, plan: Plan) {
        if self.plans.len() >= MAX_PLANS {
            self.plans.clear();
        }
        self.plans.insert(key, plan);
    }

    fn capturing(&self) -> bool {
        !matches!(self.stream.capture_status(), Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE))
    }

    fn ptrs<T>(&self, io: &mut GemmIo<'_, T>) -> Ptrs {
        let (x, _xr) = io.x.device_ptr(&self.stream);
        let (w, _wr) = io.w.device_ptr(&self.stream);
        let (out, _or) = io.out.device_ptr_mut(&self.stream);
        Ptrs { x, w, out }
    }

    fn workspace(&self) -> (u64, usize) {
        let (p, _r) = self.workspace.device_ptr(&self.stream);
        (p, self.workspace.len())
    }

    /// Runs the cached plan of `key`; with `act`, SiLU·mul follows (or is fused).
    fn launch<T: OutElem>(
        &self,
        k: &Kernels,
        key: Key,
        io: &mut GemmIo<'_, T>,
        act: Option<&mut CudaViewMut<'_, bf16>>,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        match self.plans.get(&key) {
            Some(Plan::Gemv(kernel)) => self.launch_gemv(k, *kernel, io, act, d),
            Some(Plan::Lt(p)) => {
                let ptrs = self.ptrs(io);
                p.launch(&self.lt, &p.algo, ptrs, self.workspace(), &self.stream, d)?;
                self.then_silu(k, io, act, d)
            }
            Some(Plan::GemmEx) => {
                let ptrs = self.ptrs(io);
                launch_gemm_ex(&self.blas, ptrs, T::TYPE, d)?;
                self.then_silu(k, io, act, d)
            }
            None => Err(BackendError::Device("GEMM plan missing".into())),
        }
    }

    /// SiLU·mul over the bf16 gate|up product in `io.out`, into `act` (when given).
    fn then_silu<T: OutElem>(
        &self,
        k: &Kernels,
        io: &GemmIo<'_, T>,
        act: Option<&mut CudaViewMut<'_, bf16>>,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        let Some(act) = act else { return Ok(()) };
        let gate_up = T::as_bf16(&io.out).ok_or_else(|| BackendError::Device("gate|up output must be bf16".into()))?;
        let dims = SiluDims { num_tokens: d.t, inter: d.n / 2 };
        k.silu_mul(&self.stream, SiluMulArgs { dims, gate_up, out: act.slice_mut(..d.t * (d.n / 2)) }).map_err(kern)
    }

    fn launch_gemv<T: OutElem>(
        &self,
        k: &Kernels,
        kernel: GemvKernel,
        io: &mut GemmIo<'_, T>,
        act: Option<&mut CudaViewMut<'_, bf16>>,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        let (x, w) = (io.x.slice(..), io.w.slice(..));
        let dims = gemv_dims::<T>(kernel, d, act.is_some());
        match act {
            Some(act) => k.gemv(&self.stream, GemvArgs { dims, x, w, out: act.slice_mut(..) }),
            None => k.gemv(&self.stream, GemvArgs { dims, x, w, out: io.out.slice_mut(..) }),
        }
        .map_err(kern)
    }

    /// Builds the plan of a shape: cuBLASLt's descriptors and (tuned) algorithm, or our
    /// GEMV where it wins and agrees.
    fn plan<T: OutElem>(
        &mut self,
        k: &Kernels,
        io: &mut GemmIo<'_, T>,
        mut act: Option<&mut CudaViewMut<'_, bf16>>,
        d: GemmDims,
    ) -> Result<Plan, BackendError> {
        let Some((mut plan, candidates)) = LtPlan::new(&self.lt, d, T::TYPE, self.workspace.len())? else {
            tracing::warn!(t = d.t, n = d.n, k = d.k, out = ?T::TYPE, "cuBLASLt has no algorithm for this GEMM; using cublasGemmEx");
            self.stats.gemm_ex_shapes += 1;
            return Ok(Plan::GemmEx);
        };
        self.stats.lt_shapes += 1;
        if !self.tune || !tuned_rows(d.t) || self.capturing() {
            return Ok(Plan::Lt(plan));
        }
        let ptrs = self.ptrs(io);
        let ws = self.workspace();
        let mut best = (f32::INFINITY, plan.algo);
        for algo in &candidates {
            if let Ok(ms) = self.time(|g| plan.launch(&g.lt, algo, ptrs, ws, &g.stream, d))
                && ms < best.0
            {
                best = (ms, *algo);
            }
        }
        plan.algo = best.1;
        self.stats.tuned_shapes += 1;
        let fused = act.is_some();
        let kernels: Vec<GemvKernel> =
            GemvKernel::ALL.into_iter().filter(|&g| self.gemv_ok[kernel_index(g)] && gemv_dims::<T>(g, d, fused).supported()).collect();
        if kernels.is_empty() {
            return Ok(Plan::Lt(plan));
        }
        // cuBLASLt's time includes the SiLU·mul kernel wherever the GEMV would fuse it.
        let lt_ms = self.time(|g| {
            plan.launch(&g.lt, &plan.algo, ptrs, ws, &g.stream, d)?;
            g.then_silu(k, io, act.as_deref_mut(), d)
        })?;
        let mut timed = Vec::with_capacity(kernels.len());
        for kernel in kernels {
            let ms = self.time(|g| g.launch_gemv(k, kernel, io, act.as_deref_mut(), d))?;
            tracing::debug!(t = d.t, n = d.n, k = d.k, fused, ?kernel, lt_us = lt_ms * 1e3, gemv_us = ms * 1e3, "GEMV vs cuBLASLt");
            timed.push((ms, kernel));
        }
        let faster = faster_than(lt_ms, timed);
        if faster.is_empty() {
            return Ok(Plan::Lt(plan));
        }
        // The same inputs through both paths must agree to rounding.
        plan.launch(&self.lt, &plan.algo, ptrs, ws, &self.stream, d)?;
        self.then_silu(k, io, act.as_deref_mut(), d)?;
        let reference = self.download_result(io, act.as_deref_mut())?;
        for kernel in faster {
            self.launch_gemv(k, kernel, io, act.as_deref_mut(), d)?;
            let diff = rel_l2(&self.download_result(io, act.as_deref_mut())?, &reference);
            if agrees(diff) {
                match kernel {
                    GemvKernel::RowPairs => self.stats.gemv_shapes += 1,
                    GemvKernel::Mma => self.stats.gemv_mma_shapes += 1,
                }
                return Ok(Plan::Gemv(kernel));
            }
            tracing::error!(
                t = d.t,
                n = d.n,
                k = d.k,
                fused,
                ?kernel,
                rel_l2 = diff,
                "our GEMV disagrees with cuBLASLt: disabled for this process"
            );
            self.gemv_ok[kernel_index(kernel)] = false;
            self.stats.gemv_rejected += 1;
        }
        // Every faster kernel disagreed; `io` / `act` now hold a rejected result, which the
        // caller's launch overwrites.
        Ok(Plan::Lt(plan))
    }

    /// The call's result on the host: `act` when given, else `io.out`.
    fn download_result<T: OutElem>(&self, io: &GemmIo<'_, T>, act: Option<&mut CudaViewMut<'_, bf16>>) -> Result<Vec<f32>, BackendError> {
        let err = |e: cudarc::driver::DriverError| BackendError::Device(format!("GEMM check: {e:?}"));
        Ok(match act {
            Some(a) => self.stream.clone_dtoh(&a.as_view()).map_err(err)?.into_iter().map(bf16::to_f32).collect(),
            None => self.stream.clone_dtoh(&io.out.as_view()).map_err(err)?.into_iter().map(OutElem::to_f32).collect(),
        })
    }

    /// The least of five timed runs of `f` after one warm-up (the least is the least noisy).
    fn time(&self, mut f: impl FnMut(&Self) -> Result<(), BackendError>) -> Result<f32, BackendError> {
        let ctx = self.stream.context();
        let err = |e: cudarc::driver::DriverError| BackendError::Device(format!("event: {e:?}"));
        let ev = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err);
        let (start, end) = (ev()?, ev()?);
        f(self)?;
        let mut best = f32::INFINITY;
        for _ in 0..5 {
            start.record(&self.stream).map_err(err)?;
            f(self)?;
            end.record(&self.stream).map_err(err)?;
            best = best.min(start.elapsed_ms(&end).map_err(err)?);
        }
        Ok(best)
    }
}

/// The GEMV launch of a GEMM shape: SiLU·mul into `act` when fused, else the output type's
/// plain epilogue.
fn gemv_dims<T: OutElem>(kernel: GemvKernel, d: GemmDims, fused: bool) -> GemvDims {
    let epilogue = match (fused, T::TYPE) {
        (true, _) => GemvEpilogue::SiluMul,
        (false, OutType::F32) => GemvEpilogue::F32,
        (false, OutType::Bf16) => GemvEpilogue::Bf16,
    };
    GemvDims { t: d.t, n: d.n, k: d.k, epilogue, kernel }
}

/// The GEMV kernels faster than cuBLASLt's `lt_ms`, fastest first (a NaN time never is).
fn faster_than(lt_ms: f32, mut timed: Vec<(f32, GemvKernel)>) -> Vec<GemvKernel> {
    timed.retain(|(ms, _)| *ms < lt_ms);
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    timed.into_iter().map(|(_, kernel)| kernel).collect()
}

/// The position of `kernel` in [`GemvKernel::ALL`].
fn kernel_index(kernel: GemvKernel) -> usize {
    match kernel {
        GemvKernel::RowPairs => 0,
        GemvKernel::Mma => 1,
    }
}

/// Whether a GEMV-vs-cuBLASLt difference is rounding (NaN never is).
fn agrees(rel_l2: f64) -> bool {
    rel_l2.is_finite() && rel_l2 <= GEMV_AGREEMENT
}

/// ‖a − b‖ / ‖b‖ (NaN anywhere makes it NaN, which fails every comparison).
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d = *x as f64 - *y as f64;
        num += d * d;
        den += *y as f64 * *y as f64;
    }
    if den > 0.0 { (num / den).sqrt() } else { num.sqrt() }
}

/// Refuses buffers shorter than the shape needs, or an output element of the wrong width.
pub fn check_extents(x: usize, w: usize, out: usize, out_elem: usize, out_ty: OutType, d: GemmDims) -> Result<(), BackendError> {
    let GemmDims { t, n, k } = d;
    let bad = |what: &str| BackendError::Device(format!("gemm {t}x{n}x{k}: {what} too small"));
    let want_elem = if out_ty == OutType::F32 { 4 } else { 2 };
    if out_elem != want_elem {
        return Err(BackendError::Device(format!("gemm output element is {out_elem} bytes, {out_ty:?} needs {want_elem}")));
    }
    let need = |a: usize, b: usize| a.checked_mul(b).ok_or_else(|| BackendError::Device(format!("gemm {t}x{n}x{k}: size overflows")));
    if x < need(t, k)? {
        return Err(bad("x"));
    }
    if w < need(n, k)? {
        return Err(bad("w"));
    }
    if out < need(t, n)? {
        return Err(bad("out"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_checked_before_any_launch() {
        let d = GemmDims { t: 3, n: 5, k: 7 };
        assert!(check_extents(21, 35, 15, 2, OutType::Bf16, d).is_ok());
        assert!(check_extents(21, 35, 15, 4, OutType::F32, d).is_ok());
        assert!(check_extents(20, 35, 15, 2, OutType::Bf16, d).is_err());
        assert!(check_extents(21, 34, 15, 2, OutType::Bf16, d).is_err());
        assert!(check_extents(21, 35, 14, 2, OutType::Bf16, d).is_err());
        assert!(check_extents(21, 35, 15, 2, OutType::F32, d).is_err());
        let huge = GemmDims { t: usize::MAX, n: 2, k: 2 };
        assert!(check_extents(1, 4, 1, 2, OutType::Bf16, huge).is_err());
    }

    #[test]
    fn only_small_and_bucket_row_counts_are_timed() {
        let tuned: Vec<usize> = (1..=300).filter(|t| tuned_rows(*t)).collect();
        assert_eq!(&tuned[..18], &(1..=16).chain([24, 32]).collect::<Vec<_>>()[..]);
        assert!(tuned_rows(64) && tuned_rows(80) && tuned_rows(256));
        assert!(!tuned_rows(17) && !tuned_rows(37) && !tuned_rows(65) && !tuned_rows(257) && !tuned_rows(288));
    }

    #[test]
    fn gemv_kernels_are_tried_fastest_first_and_only_when_faster() {
        use GemvKernel::*;
        assert_eq!(faster_than(10.0, vec![(9.0, RowPairs), (4.0, Mma)]), vec![Mma, RowPairs]);
        assert_eq!(faster_than(10.0, vec![(3.0, RowPairs), (4.0, Mma)]), vec![RowPairs, Mma]);
        assert_eq!(faster_than(5.0, vec![(9.0, RowPairs), (4.0, Mma)]), vec![Mma]);
        assert_eq!(faster_than(5.0, vec![(5.0, RowPairs), (f32::NAN, Mma)]), Vec::<GemvKernel>::new());
        assert_eq!(GemvKernel::ALL.map(kernel_index), [0, 1]);
    }

    #[test]
    fn gemv_launch_dims_follow_the_output_and_the_fusion() {
        let d = GemmDims { t: 12, n: 64, k: 40 };
        assert_eq!(gemv_dims::<bf16>(GemvKernel::Mma, d, true).epilogue, GemvEpilogue::SiluMul);
        assert_eq!(gemv_dims::<bf16>(GemvKernel::Mma, d, false).epilogue, GemvEpilogue::Bf16);
        assert_eq!(gemv_dims::<f32>(GemvKernel::RowPairs, d, false).epilogue, GemvEpilogue::F32);
        let g = gemv_dims::<f32>(GemvKernel::Mma, d, false);
        assert_eq!((g.t, g.n, g.k, g.kernel), (12, 64, 40, GemvKernel::Mma));
        // 12 rows: only the tensor-core kernel takes them.
        assert!(g.supported() && !gemv_dims::<f32>(GemvKernel::RowPairs, d, false).supported());
    }

    #[test]
    fn agreement_measure_catches_disagreement_and_nan() {
        let a = [1.0f32, 2.0, 3.0];
        assert_eq!(rel_l2(&a, &a), 0.0);
        assert!(agrees(rel_l2(&[1.0, 2.0, 3.03], &a)));
        assert!(!agrees(rel_l2(&[1.0, 2.0, 4.0], &a)));
        assert!(!agrees(rel_l2(&[1.0, f32::NAN, 3.0], &a)));
        assert!(!agrees(rel_l2(&[1.0, 2.0], &a)));
    }
}
