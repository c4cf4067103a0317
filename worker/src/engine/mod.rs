//! The backend-independent engine core: requests, paged KV block manager with prefix
//! cache, continuous-batching scheduler, sampler, and the engine thread.

pub mod core;
pub mod handle;
pub mod kv_blocks;
pub mod launcher;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod sequence;

pub use self::core::{EngineCore, RequestOutput};
pub use handle::{EngineHandle, LoadStats};
pub use request::{EngineRequest, FinishReason, ModelLimits};
pub use scheduler::{Scheduler, SchedulerConfig};
