//! Row-major bf16 GEMMs through cuBLASLt (f32 accumulation): `out[T×N] = x[T×K] · Wᵀ` with W
//! an `[N, K]` row-major weight, as every Llama projection.
//!
//! Each distinct shape (t, n, k, output type) gets its descriptors built and its algorithm
//! chosen once, then cached: a step only calls `cublasLtMatmul`. For decode-sized shapes
//! (t ≤ [`TUNE_MAX_T`]) the heuristic's candidates are timed once with CUDA events and the
//! fastest kept, because that is where cuBLAS's first guess is most often not the best; larger
//! shapes take the heuristic's first choice. A shape cuBLASLt has no algorithm for falls back
//! to `cublasGemmEx`, logged once.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUstreamCaptureStatus};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::backend::BackendError;

/// The output element type of a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutType {
    Bf16,
    F32,
}

/// `t` rows of activations, `n` output features, `k` input features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmDims {
    pub t: usize,
    pub n: usize,
    pub k: usize,
}

/// Shapes with at most this many rows are tuned by timing (decode and small batches).
pub const TUNE_MAX_T: usize = 256;
/// Candidates asked of the heuristic.
const CANDIDATES: usize = 8;
/// Cached shapes before the cache is cleared (chunked prefill makes many distinct `t`).
const MAX_PLANS: usize = 4096;

fn lt_err(what: &'static str) -> impl Fn(lt::CublasError) -> BackendError {
    move |e| BackendError::Device(format!("cuBLASLt {what}: {e:?}"))
}

/// Owns a cuBLASLt handle.
struct LtHandle(ltsys::cublasLtHandle_t);

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate and destroyed only here.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

struct MatmulDesc(ltsys::cublasLtMatmulDesc_t);

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate and destroyed only here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Layout(ltsys::cublasLtMatrixLayout_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate and destroyed only here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Pref(ltsys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate and destroyed only here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

// SAFETY: cuBLASLt handles and descriptors are host-side objects with no thread affinity;
// `Gemm` is used through `&mut self` only, so one thread touches them at a time.
unsafe impl Send for LtHandle {}
unsafe impl Send for MatmulDesc {}
unsafe impl Send for Layout {}

/// The descriptors and chosen algorithm of one shape.
struct LtPlan {
    desc: MatmulDesc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: ltsys::cublasLtMatmulAlgo_t,
}

// SAFETY: the algorithm is an opaque value blob (no pointers).
unsafe impl Send for LtPlan {}

enum Plan {
    Lt(LtPlan),
    /// cuBLASLt offered no algorithm for this shape.
    GemmEx,
}

/// What the cache holds, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmStats {
    pub lt_shapes: usize,
    pub gemm_ex_shapes: usize,
    pub tuned_shapes: usize,
}

type Key = (GemmDims, OutType);

pub struct Gemm {
    lt: LtHandle,
    blas: CudaBlas,
    workspace: CudaSlice<u8>,
    plans: HashMap<Key, Plan>,
    stats: GemmStats,
    tune: bool,
    stream: Arc<CudaStream>,
}

fn c_type(out: OutType) -> ltsys::cudaDataType {
    match out {
        OutType::Bf16 => ltsys::cudaDataType::CUDA_R_16BF,
        OutType::F32 => ltsys::cudaDataType::CUDA_R_32F,
    }
}

fn to_i32(v: usize) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| BackendError::Device(format!("gemm dimension {v} exceeds i32")))
}

impl Gemm {
    /// `tune`: time the heuristic's candidates for decode-sized shapes (off in tests that
    /// want the heuristic's choice).
    pub fn new(stream: Arc<CudaStream>, tune: bool) -> Result<Self, BackendError> {
        let blas = CudaBlas::new(stream.clone()).map_err(|e| BackendError::Device(format!("cuBLAS: {e:?}")))?;
        let lt = LtHandle(lt::create_handle().map_err(lt_err("handle"))?);
        // NVIDIA's recommended workspace: 32 MiB on Hopper, 4 MiB before.
        let major = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| BackendError::Device(format!("compute capability: {e:?}")))?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream.alloc_zeros::<u8>(size).map_err(|e| BackendError::Device(format!("cuBLASLt workspace: {e:?}")))?;
        Ok(Gemm { lt, blas, workspace, plans: HashMap::new(), stats: GemmStats::default(), tune, stream })
    }

    pub fn stats(&self) -> GemmStats {
        self.stats
    }

    /// `out = x · wᵀ`; `x` holds `t × k` bf16, `w` `n × k` bf16, `out` `t × n` of `out_ty`.
    /// Lengths are checked before the call; cuBLAS reads/writes exactly those extents.
    pub fn run<X, W, T, O>(&mut self, x: &X, w: &W, out: &mut O, out_ty: OutType, d: GemmDims) -> Result<(), BackendError>
    where
        X: DevicePtr<bf16>,
        W: DevicePtr<bf16>,
        O: DevicePtrMut<T>,
    {
        check_extents(x.len(), w.len(), out.len(), std::mem::size_of::<T>(), out_ty, d)?;
        if d.t == 0 || d.n == 0 {
            return Ok(());
        }
        let key = (d, out_ty);
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            let plan = self.plan(x, w, out, out_ty, d)?;
            self.plans.insert(key, plan);
        }
        let (xp, _xr) = x.device_ptr(&self.stream);
        let (wp, _wr) = w.device_ptr(&self.stream);
        let (op, _or) = out.device_ptr_mut(&self.stream);
        match self.plans.get(&key) {
            Some(Plan::Lt(p)) => self.launch_lt(p, &p.algo, wp, xp, op, d),
            _ => self.launch_gemm_ex(wp, xp, op, out_ty, d),
        }
    }

    /// Builds the descriptors of a shape and picks its algorithm.
    fn plan<X, W, T, O>(&mut self, x: &X, w: &W, out: &mut O, out_ty: OutType, d: GemmDims) -> Result<Plan, BackendError>
    where
        X: DevicePtr<bf16>,
        W: DevicePtr<bf16>,
        O: DevicePtrMut<T>,
    {
        // Column-major view: Yᵀ[n×t] = op(A)·B with A = W's buffer as col-major [k×n]
        // (transposed), B = X's buffer as col-major Xᵀ[k×t], D = Yᵀ col-major [n×t].
        let (n, t, k) = (d.n as u64, d.t as u64, d.k as u64);
        let bf = ltsys::cudaDataType::CUDA_R_16BF;
        let a = Layout(lt::create_matrix_layout(bf, k, n, k as i64).map_err(lt_err("layout"))?);
        let b = Layout(lt::create_matrix_layout(bf, k, t, k as i64).map_err(lt_err("layout"))?);
        let c = Layout(lt::create_matrix_layout(c_type(out_ty), n, t, n as i64).map_err(lt_err("layout"))?);
        let desc = MatmulDesc(
            lt::create_matmul_desc(ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F, ltsys::cudaDataType::CUDA_R_32F)
                .map_err(lt_err("matmul desc"))?,
        );
        // cuBLASLt's sys module has no cublasOperation_t of its own; cuBLAS's is the same C enum.
        let trans = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
        // SAFETY: the attribute is a cublasOperation_t read by value during the call.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc.0,
                ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans) as *const _ as *const _,
                std::mem::size_of_val(&trans),
            )
        }
        .map_err(lt_err("transa"))?;
        let candidates = self.candidates(&desc, &a, &b, &c)?;
        let Some(first) = candidates.first() else {
            tracing::warn!(t = d.t, n = d.n, k = d.k, ?out_ty, "cuBLASLt has no algorithm for this GEMM; using cublasGemmEx");
            self.stats.gemm_ex_shapes += 1;
            return Ok(Plan::GemmEx);
        };
        let mut plan = LtPlan { desc, a, b, c, algo: *first };
        if self.tune && d.t <= TUNE_MAX_T && candidates.len() > 1 && !self.capturing() {
            let (xp, _xr) = x.device_ptr(&self.stream);
            let (wp, _wr) = w.device_ptr(&self.stream);
            let (op, _or) = out.device_ptr_mut(&self.stream);
            let mut best = (f32::INFINITY, *first);
            for algo in &candidates {
                if let Ok(ms) = self.time_algo(&plan, algo, wp, xp, op, d)
                    && ms < best.0
                {
                    best = (ms, *algo);
                }
            }
            plan.algo = best.1;
            self.stats.tuned_shapes += 1;
            tracing::debug!(t = d.t, n = d.n, k = d.k, ?out_ty, us = best.0 * 1e3, candidates = candidates.len(), "GEMM tuned");
        }
        self.stats.lt_shapes += 1;
        Ok(Plan::Lt(plan))
    }

    fn capturing(&self) -> bool {
        !matches!(self.stream.capture_status(), Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE))
    }

    /// The heuristic's candidates that fit our workspace, best first.
    fn candidates(&self, desc: &MatmulDesc, a: &Layout, b: &Layout, c: &Layout) -> Result<Vec<ltsys::cublasLtMatmulAlgo_t>, BackendError> {
        let pref = Pref(lt::create_matmul_pref().map_err(lt_err("preference"))?);
        let ws = self.workspace.len();
        // SAFETY: the attribute is a size_t read by value during the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                ltsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const usize as *const _,
                std::mem::size_of::<usize>(),
            )
        }
        .map_err(lt_err("workspace preference"))?;
        let mut results: [MaybeUninit<ltsys::cublasLtMatmulHeuristicResult_t>; CANDIDATES] = [const { MaybeUninit::uninit() }; CANDIDATES];
        let mut count = 0i32;
        // SAFETY: every descriptor is live; the results array holds CANDIDATES entries and
        // cuBLASLt writes `count` ≤ CANDIDATES of them.
        let status = unsafe {
            ltsys::cublasLtMatmulAlgoGetHeuristic(
                self.lt.0,
                desc.0,
                a.0,
                b.0,
                c.0,
                c.0,
                pref.0,
                CANDIDATES as i32,
                results.as_mut_ptr() as *mut ltsys::cublasLtMatmulHeuristicResult_t,
                &mut count,
            )
        };
        if status != ltsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            // NOT_SUPPORTED means "no algorithm": the caller falls back.
            return Ok(Vec::new());
        }
        let count = (count.max(0) as usize).min(CANDIDATES);
        Ok(results[..count]
            .iter()
            // SAFETY: the first `count` entries were written by the call above.
            .map(|r| unsafe { r.assume_init() })
            .filter(|r| r.state == ltsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= ws)
            .map(|r| r.algo)
            .collect())
    }

    /// The least of five timed runs after one warm-up (the least is the least noisy).
    fn time_algo(
        &self,
        p: &LtPlan,
        algo: &ltsys::cublasLtMatmulAlgo_t,
        wp: u64,
        xp: u64,
        op: u64,
        d: GemmDims,
    ) -> Result<f32, BackendError> {
        let ctx = self.stream.context();
        let ev = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| BackendError::Device(format!("event: {e:?}")));
        let (start, end) = (ev()?, ev()?);
        self.launch_lt(p, algo, wp, xp, op, d)?;
        let mut best = f32::INFINITY;
        for _ in 0..5 {
            start.record(&self.stream).map_err(|e| BackendError::Device(format!("event: {e:?}")))?;
            self.launch_lt(p, algo, wp, xp, op, d)?;
            end.record(&self.stream).map_err(|e| BackendError::Device(format!("event: {e:?}")))?;
            let ms = start.elapsed_ms(&end).map_err(|e| BackendError::Device(format!("event: {e:?}")))?;
            best = best.min(ms);
        }
        Ok(best)
    }

    fn launch_lt(
        &self,
        p: &LtPlan,
        algo: &ltsys::cublasLtMatmulAlgo_t,
        wp: u64,
        xp: u64,
        op: u64,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (ws, _wsr) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the pointers come from live allocations whose lengths `run` checked against
        // the shape the layouts describe; the workspace is ours and as large as the
        // preference said; the stream orders the call after the producers of x and w.
        unsafe {
            lt::matmul(
                self.lt.0,
                p.desc.0,
                (&alpha) as *const f32 as *const _,
                (&beta) as *const f32 as *const _,
                wp as *const _,
                p.a.0,
                xp as *const _,
                p.b.0,
                op as *const _,
                p.c.0,
                op as *mut _,
                p.c.0,
                algo,
                ws as *mut _,
                self.workspace.len(),
                self.stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| BackendError::Device(format!("cublasLtMatmul {}x{}x{}: {e:?}", d.t, d.n, d.k)))
    }

    fn launch_gemm_ex(&self, wp: u64, xp: u64, op: u64, out_ty: OutType, d: GemmDims) -> Result<(), BackendError> {
        let (m_, n_, k_) = (to_i32(d.n)?, to_i32(d.t)?, to_i32(d.k)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let c_ty = match out_ty {
            OutType::Bf16 => cudarc::cublas::sys::cudaDataType::CUDA_R_16BF,
            OutType::F32 => cudarc::cublas::sys::cudaDataType::CUDA_R_32F,
        };
        let bf = cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
        // Same column-major view as the cuBLASLt path.
        // SAFETY: as in `launch_lt`; the handle is bound to `self.stream`.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m_,
                n_,
                k_,
                (&alpha) as *const f32 as *const _,
                wp as *const _,
                bf,
                k_,
                xp as *const _,
                bf,
                k_,
                (&beta) as *const f32 as *const _,
                op as *mut _,
                c_ty,
                m_,
                cudarc::cublas::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| BackendError::Device(format!("cublasGemmEx {}x{}x{}: {e:?}", d.t, d.n, d.k)))
    }
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
}
