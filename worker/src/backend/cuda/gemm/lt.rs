//! The cuBLASLt side of [`super::Gemm`]: RAII descriptors, the per-shape plan, the
//! heuristic's candidates, and the launch (plus `cublasGemmEx` for shapes cuBLASLt has no
//! algorithm for).

use std::mem::MaybeUninit;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::CudaStream;

use super::{GemmDims, OutType};
use crate::backend::BackendError;

/// Candidates asked of the heuristic.
const CANDIDATES: usize = 8;

fn lt_err(what: &'static str) -> impl Fn(lt::CublasError) -> BackendError {
    move |e| BackendError::Device(format!("cuBLASLt {what}: {e:?}"))
}

/// Owns a cuBLASLt handle.
pub(super) struct LtHandle(ltsys::cublasLtHandle_t);

impl LtHandle {
    pub fn new() -> Result<Self, BackendError> {
        Ok(LtHandle(lt::create_handle().map_err(lt_err("handle"))?))
    }
}

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

pub(super) type Algo = ltsys::cublasLtMatmulAlgo_t;

/// The descriptors of one shape and its chosen algorithm.
pub(super) struct LtPlan {
    desc: MatmulDesc,
    a: Layout,
    b: Layout,
    c: Layout,
    pub algo: Algo,
}

// SAFETY: as the descriptors above; the algorithm is an opaque value blob (no pointers).
unsafe impl Send for LtPlan {}

fn c_type(out: OutType) -> ltsys::cudaDataType {
    match out {
        OutType::Bf16 => ltsys::cudaDataType::CUDA_R_16BF,
        OutType::F32 => ltsys::cudaDataType::CUDA_R_32F,
    }
}

/// Raw device addresses of one GEMM's operands (taken from live views whose lengths were
/// checked against the shape).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ptrs {
    pub x: u64,
    pub w: u64,
    pub out: u64,
}

impl LtPlan {
    /// The descriptors of `d` and the heuristic's candidates that fit `workspace` bytes,
    /// best first; `None` when cuBLASLt has no algorithm.
    pub fn new(h: &LtHandle, d: GemmDims, out: OutType, workspace: usize) -> Result<Option<(LtPlan, Vec<Algo>)>, BackendError> {
        // Column-major view: Yᵀ[n×t] = op(A)·B with A = W's buffer as col-major [k×n]
        // (transposed), B = X's buffer as col-major Xᵀ[k×t], D = Yᵀ col-major [n×t].
        let (n, t, k) = (d.n as u64, d.t as u64, d.k as u64);
        let bf = ltsys::cudaDataType::CUDA_R_16BF;
        let a = Layout(lt::create_matrix_layout(bf, k, n, k as i64).map_err(lt_err("layout"))?);
        let b = Layout(lt::create_matrix_layout(bf, k, t, k as i64).map_err(lt_err("layout"))?);
        let c = Layout(lt::create_matrix_layout(c_type(out), n, t, n as i64).map_err(lt_err("layout"))?);
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
        // SAFETY: cublasLtMatmulAlgo_t is a plain struct of u64 words, so all-zero is a valid
        // value; it is replaced by a heuristic result below before any use.
        let mut plan = LtPlan { desc, a, b, c, algo: unsafe { std::mem::zeroed() } };
        let candidates = plan.candidates(h, workspace)?;
        match candidates.first() {
            Some(first) => {
                plan.algo = *first;
                Ok(Some((plan, candidates)))
            }
            None => Ok(None),
        }
    }

    fn candidates(&self, h: &LtHandle, workspace: usize) -> Result<Vec<Algo>, BackendError> {
        let pref = Pref(lt::create_matmul_pref().map_err(lt_err("preference"))?);
        // SAFETY: the attribute is a size_t read by value during the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                ltsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace) as *const usize as *const _,
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
                h.0,
                self.desc.0,
                self.a.0,
                self.b.0,
                self.c.0,
                self.c.0,
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
            .filter(|r| r.state == ltsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= workspace)
            .map(|r| r.algo)
            .collect())
    }

    /// One `cublasLtMatmul` with `algo` on `stream`.
    pub fn launch(
        &self,
        h: &LtHandle,
        algo: &Algo,
        p: Ptrs,
        ws: (u64, usize),
        stream: &Arc<CudaStream>,
        d: GemmDims,
    ) -> Result<(), BackendError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the pointers come from live allocations whose lengths the caller checked
        // against the shape the layouts describe; the workspace is as large as the preference
        // said; the stream orders the call after the producers of x and w.
        unsafe {
            lt::matmul(
                h.0,
                self.desc.0,
                (&alpha) as *const f32 as *const _,
                (&beta) as *const f32 as *const _,
                p.w as *const _,
                self.a.0,
                p.x as *const _,
                self.b.0,
                p.out as *const _,
                self.c.0,
                p.out as *mut _,
                self.c.0,
                algo,
                ws.0 as *mut _,
                ws.1,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| BackendError::Device(format!("cublasLtMatmul {}x{}x{}: {e:?}", d.t, d.n, d.k)))
    }
}

fn to_i32(v: usize) -> Result<i32, BackendError> {
    i32::try_from(v).map_err(|_| BackendError::Device(format!("gemm dimension {v} exceeds i32")))
}

/// `cublasGemmEx` with the same column-major view as the cuBLASLt path.
pub(super) fn launch_gemm_ex(blas: &CudaBlas, p: Ptrs, out: OutType, d: GemmDims) -> Result<(), BackendError> {
    let (m_, n_, k_) = (to_i32(d.n)?, to_i32(d.t)?, to_i32(d.k)?);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let c_ty = match out {
        OutType::Bf16 => cudarc::cublas::sys::cudaDataType::CUDA_R_16BF,
        OutType::F32 => cudarc::cublas::sys::cudaDataType::CUDA_R_32F,
    };
    let bf = cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    // SAFETY: as in `LtPlan::launch`; the handle is bound to the backend's stream.
    unsafe {
        blas::gemm_ex(
            *blas.handle(),
            cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
            cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            m_,
            n_,
            k_,
            (&alpha) as *const f32 as *const _,
            p.w as *const _,
            bf,
            k_,
            p.x as *const _,
            bf,
            k_,
            (&beta) as *const f32 as *const _,
            p.out as *mut _,
            c_ty,
            m_,
            cudarc::cublas::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| BackendError::Device(format!("cublasGemmEx {}x{}x{}: {e:?}", d.t, d.n, d.k)))
}
