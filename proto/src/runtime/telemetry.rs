//! Logs and traces of a tokenfleet process: a `tracing` subscriber (text or JSON on
//! stderr, span fields such as `request_id` on every line), optionally an OTLP/gRPC span
//! exporter, and W3C `traceparent` propagation through gRPC metadata so a worker's spans
//! join the gateway's trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format (also a command-line value: `--log-format text|json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `[otel]` section of a service's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317`. Unset: no export.
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of new traces sampled (a sampled parent is always followed).
    pub sample_ratio: f64,
}

impl OtelConfig {
    pub fn for_service(name: &str) -> Self {
        OtelConfig { endpoint: None, service_name: name.to_string(), sample_ratio: 1.0 }
    }
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self::for_service("tokenfleet")
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(pub String);

/// Keeps the exporter alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once, inside the tokio runtime when an OTLP
/// endpoint is configured (the exporter's channel lives on it).
pub fn init(format: LogFormat, default_level: &str, otel: &OtelConfig) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (provider, otel_layer) = match &otel.endpoint {
        Some(ep) if !ep.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(ep.clone())
                .build()
                .map_err(|e| TelemetryError(format!("OTLP exporter for {ep}: {e}")))?;
            // The tonic exporter needs the tokio runtime, so batch on it rather than on the
            // SDK's own thread.
            let batch = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(otel.sample_ratio.clamp(0.0, 1.0)))))
                .with_resource(Resource::builder().with_service_name(otel.service_name.clone()).build())
                .build();
            let tracer = provider.tracer(otel.service_name.clone());
            (Some(provider), Some(tracing_opentelemetry::layer().with_tracer(tracer)))
        }
        _ => (None, None),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr))
            .try_init(),
    };
    res.map_err(|e| TelemetryError(format!("installing the log subscriber: {e}")))?;
    Ok(Telemetry { provider })
}

struct MetadataReader<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataWriter<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the trace context in incoming metadata (`traceparent`), if any.
pub fn adopt_remote_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataReader(metadata));
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context into outgoing metadata (`traceparent`, `tracestate`).
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataWriter(metadata));
}
