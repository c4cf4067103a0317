//! tokenfleet's CUDA kernels (`kernels/cuda/*.cu`, compiled by nvcc in build.rs) and their
//! checked Rust launchers. See `kernels/KERNELS.md` for the index of ops.
//!
//! Without the `cuda` feature this crate holds only the host-side shape rules ([`shapes`]),
//! so the workspace builds anywhere. With it, [`Kernels`] loads the compiled images for a
//! device and exposes one launcher per op; [`selftest::run_all`] checks every kernel against
//! a CPU reference on a GPU.

mod error;
pub mod module;
pub mod philox;
pub mod shapes;

pub use error::KernelError;

#[cfg(feature = "cuda")]
mod images {
    include!(concat!(env!("OUT_DIR"), "/kernel_images.rs"));
}

#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod runtime;
#[cfg(feature = "cuda")]
pub use runtime::{Kernels, cuda_available};

#[cfg(feature = "cuda")]
pub mod ops;
#[cfg(feature = "cuda")]
pub mod selftest;

/// ptxas's per-kernel register / spill / stack report of the embedded cubins (empty when the
/// kernels were not compiled).
#[cfg(feature = "cuda")]
pub fn ptxas_report() -> &'static str {
    images::PTXAS_REPORT
}

/// Whether device code was compiled into this binary (`Err` says why not).
#[cfg(feature = "cuda")]
pub fn compiled() -> Result<(), KernelError> {
    images::COMPILED.map_err(KernelError::NotCompiled)
}
