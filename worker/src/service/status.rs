//! The one table that maps worker errors to gRPC status codes.

use tonic::{Code, Status};

use crate::engine::handle::SubmitError;
use crate::engine::request::InvalidRequest;
use crate::engine::scheduler::AdmitError;

/// Every way a worker RPC can fail.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("the worker is draining and accepts no new requests")]
    Draining,
    #[error("the worker is not ready (model loading or warming up)")]
    NotReady,
    #[error("backend failure: {0}")]
    Backend(String),
}

impl WorkerError {
    pub fn code(&self) -> Code {
        match self {
            WorkerError::Invalid(_) => Code::InvalidArgument,
            WorkerError::Admit(AdmitError::QueueFull(_)) => Code::ResourceExhausted,
            WorkerError::Admit(AdmitError::DuplicateId(_)) => Code::AlreadyExists,
            WorkerError::Admit(AdmitError::TooLarge { .. }) => Code::InvalidArgument,
            WorkerError::Submit(SubmitError::Busy) => Code::ResourceExhausted,
            WorkerError::Submit(SubmitError::Stopped) => Code::Unavailable,
            WorkerError::Draining | WorkerError::NotReady => Code::Unavailable,
            WorkerError::Backend(_) => Code::Internal,
        }
    }
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Status {
        let mut s = Status::new(e.code(), e.to_string());
        if e.code() == Code::ResourceExhausted
            && let Ok(v) = "200".parse()
        {
            s.metadata_mut().insert("retry-after-ms", v);
        }
        s
    }
}
