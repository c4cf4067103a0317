//! The kernels layer's one error type.

/// Everything a launcher or the self-test can fail with. Argument errors are caught on the
/// host before anything is launched; driver errors carry the operation that hit them.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// libcuda could not be loaded (no NVIDIA driver on this machine).
    #[error("no CUDA driver: libcuda could not be loaded")]
    NoDriver,
    /// The crate was built without device code.
    #[error("CUDA kernels were not compiled into this binary: {0}")]
    NotCompiled(&'static str),
    /// The GPU is older than the oldest image shipped (sm_80).
    #[error("unsupported GPU: compute capability {major}.{minor} (kernels need 8.0 or newer)")]
    UnsupportedDevice { major: i32, minor: i32 },
    /// A launcher's shapes, lengths, strides or alignment do not fit the kernel.
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// A CUDA driver call failed.
    #[error("{op}: CUDA driver error: {msg}")]
    Driver { op: &'static str, msg: String },
    /// The GPU self-test could not run (not a failed check: those are rows of the report).
    #[error("self-test: {0}")]
    SelfTest(String),
}

impl KernelError {
    pub(crate) fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        KernelError::InvalidArgument { op, msg: msg.into() }
    }
}
