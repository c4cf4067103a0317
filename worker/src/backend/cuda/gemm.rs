//! Row-major bf16 GEMMs through cuBLAS (`cublasGemmEx`, f32 accumulation):
//! `out[T×N] = x[T×K] · Wᵀ` with W an `[N, K]` row-major weight, as every Llama projection.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas, sys};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::backend::BackendError;

/// The output element type of a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    Bf16,
    F32,
}

/// `t` rows of activations, `n` output features, `k` input features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmDims {
    pub t: usize,
    pub n: usize,
    pub k: usize,
}

pub struct Gemm {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, BackendError> {
        let blas = CudaBlas::new(stream.clone()).map_err(|e| BackendError::Device(format!("cuBLAS: {e:?}")))?;
        Ok(Gemm { blas, stream })
    }

    /// `out = x · wᵀ`; `x` holds `t × k` bf16, `w` `n × k` bf16, `out` `t × n` of `out_ty`.
    /// Lengths are checked before the call; cuBLAS reads/writes exactly those extents.
    pub fn run<X, W, T, O>(&self, x: &X, w: &W, out: &mut O, out_ty: OutType, d: GemmDims) -> Result<(), BackendError>
    where
        X: DevicePtr<bf16>,
        W: DevicePtr<bf16>,
        O: DevicePtrMut<T>,
    {
        let GemmDims { t, n, k } = d;
        let bad = |what: &str| BackendError::Device(format!("gemm {t}x{n}x{k}: {what} too small"));
        let out_elem = if out_ty == OutType::F32 { 4 } else { 2 };
        if std::mem::size_of::<T>() != out_elem {
            return Err(BackendError::Device(format!(
                "gemm output element is {} bytes, {out_ty:?} needs {out_elem}",
                std::mem::size_of::<T>()
            )));
        }
        if x.len() < t * k {
            return Err(bad("x"));
        }
        if w.len() < n * k {
            return Err(bad("w"));
        }
        if out.len() < t * n {
            return Err(bad("out"));
        }
        if t == 0 || n == 0 {
            return Ok(());
        }
        let to_i = |v: usize| i32::try_from(v).map_err(|_| BackendError::Device(format!("gemm dimension {v} exceeds i32")));
        let (m_, n_, k_) = (to_i(n)?, to_i(t)?, to_i(k)?);
        let alpha = 1.0f32;
        let beta = 0.0f32;
        let (xp, _xr) = x.device_ptr(&self.stream);
        let (wp, _wr) = w.device_ptr(&self.stream);
        let (op, _or) = out.device_ptr_mut(&self.stream);
        let c_type = match out_ty {
            OutType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType::CUDA_R_32F,
        };
        // Column-major view: Yᵀ[n×t] = W[n×k] · Xᵀ[k×t]; W's buffer is col-major Wᵀ[k×n]
        // (transposed op), X's is col-major Xᵀ[k×t] as is.
        // SAFETY: pointers come from live device allocations of at least the checked
        // extents; the handle is bound to `self.stream`, which orders the call.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m_,
                n_,
                k_,
                (&alpha) as *const f32 as *const _,
                wp as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                k_,
                xp as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                k_,
                (&beta) as *const f32 as *const _,
                op as *mut _,
                c_type,
                m_,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| BackendError::Device(format!("cublasGemmEx {t}x{n}x{k}: {e:?}")))
    }
}
