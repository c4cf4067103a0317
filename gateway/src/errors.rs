//! The one table that maps gateway errors to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Invalid(String),
    #[error("missing or invalid API key (send `authorization: Bearer <key>`)")]
    Unauthenticated,
    #[error("no healthy worker serves the model")]
    NoHealthyWorker,
    #[error("every worker is saturated; retry later")]
    Saturated,
    #[error("the gateway is at its in-flight limit ({0} requests); retry later")]
    TooManyInFlight(usize),
    #[error("the gateway is draining and accepts no new requests")]
    Draining,
    #[error("the deadline passed")]
    DeadlineExceeded,
    #[error("the generation could not be continued: {0}")]
    FailoverExhausted(String),
    /// A worker refused the request for a reason that another worker would share.
    #[error("{}", .0.message())]
    Worker(Status),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How long a client should wait before retrying a RESOURCE_EXHAUSTED request.
const RETRY_AFTER_MS: &str = "250";

impl GatewayError {
    pub fn code(&self) -> Code {
        match self {
            GatewayError::Invalid(_) => Code::InvalidArgument,
            GatewayError::Unauthenticated => Code::Unauthenticated,
            GatewayError::NoHealthyWorker | GatewayError::Draining | GatewayError::FailoverExhausted(_) => Code::Unavailable,
            GatewayError::Saturated | GatewayError::TooManyInFlight(_) => Code::ResourceExhausted,
            GatewayError::DeadlineExceeded => Code::DeadlineExceeded,
            GatewayError::Worker(s) => s.code(),
            GatewayError::Internal(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        let mut s = Status::new(e.code(), e.to_string());
        if e.code() == Code::ResourceExhausted
            && let Ok(v) = RETRY_AFTER_MS.parse()
        {
            s.metadata_mut().insert("retry-after-ms", v);
        }
        s
    }
}

/// Whether a worker status means "try another worker" rather than "the request is bad".
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::AlreadyExists
    )
}
