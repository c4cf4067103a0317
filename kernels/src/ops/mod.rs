//! Checked launchers, one module per op family. Each launcher validates shapes, lengths,
//! strides and alignment on the host ([`crate::shapes`]) and returns
//! [`KernelError::InvalidArgument`](crate::KernelError) before anything is launched; a
//! failed launch comes back as [`KernelError::Driver`](crate::KernelError). Launches are
//! asynchronous: errors raised while a kernel runs surface at the next synchronisation.
//!
//! Buffers are passed as cudarc views (`slice.as_view()`, `slice.slice(a..b)`,
//! `slice.as_view_mut()`), bf16 as `half::bf16`.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod gemv;
pub mod norm;
pub mod rope;
pub mod sampling;

pub use activation::SiluMulArgs;
pub use attention::{DecodeArgs, PagedKv, PrefillArgs};
pub use embedding::{EmbeddingArgs, FeedArgs};
pub use gemv::{GemvArgs, GemvOut};
pub use norm::{AddRmsNormArgs, RmsNormArgs};
pub use rope::RopeKvArgs;
pub use sampling::{SampleArgs, SampleOutputs, SampleParams, SamplePartials, SparseRows};
