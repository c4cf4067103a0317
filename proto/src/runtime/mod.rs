//! What both services share at runtime: layered configuration ([`config`]), telemetry —
//! logs, OTLP traces and W3C trace-context propagation over gRPC metadata ([`telemetry`]) —
//! and the Prometheus `/metrics` endpoint ([`metrics_http`]).

pub mod config;
pub mod metrics_http;
pub mod telemetry;
