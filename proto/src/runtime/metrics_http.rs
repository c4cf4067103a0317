//! The Prometheus scrape endpoint: `GET /metrics` in the text exposition format, encoded
//! by `prometheus-client` from a registry, on its own listener (separate from gRPC).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Something that can refresh gauges right before a scrape (e.g. read engine stats).
pub trait Collect: Send + Sync + 'static {
    fn collect(&self);
}

/// Serves `/metrics` on `addr` until the process ends. Returns once the listener is bound.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>, refresh: Arc<dyn Collect>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            let refresh = refresh.clone();
            async move {
                refresh.collect();
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => {
                        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
                    }
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
