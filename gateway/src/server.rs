//! Builds the gateway from its configuration and serves until SIGTERM, then drains.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokenfleet_proto::v1;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::ApiKeys;
use crate::config::{GatewayConfig, GatewayFlags};
use crate::pool::discovery::{DnsTarget, endpoint_uri, run_dns};
use crate::pool::{Pool, PoolConfig};
use crate::service::TextGenerationService;
use crate::state::{Gateway, RequestConfig, Stats};
use crate::validate::RequestLimits;

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn worker_tls(a: &GatewayConfig) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &a.worker_tls.ca else { return Ok(None) };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(c), Some(k)) = (&a.worker_tls.cert, &a.worker_tls.key) {
        tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
    }
    if let Some(d) = &a.worker_tls.domain {
        tls = tls.domain_name(d.clone());
    }
    Ok(Some(tls))
}

/// Builds the shared state and starts discovery.
pub fn build(a: &GatewayConfig) -> anyhow::Result<Arc<Gateway>> {
    let tls = worker_tls(a)?;
    let secure = tls.is_some();
    let pool =
        Pool::new(PoolConfig { watch_interval_ms: a.watch_interval_ms.clamp(10, 10_000), connect_timeout: Duration::from_secs(3), tls });
    for w in &a.workers {
        pool.add(&endpoint_uri(w, secure)).with_context(|| format!("worker address `{w}`"))?;
    }
    let targets = a.worker_dns.iter().map(|d| DnsTarget::parse(d, secure)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    if !targets.is_empty() {
        tokio::spawn(run_dns(pool.clone(), targets, Duration::from_secs(a.dns_refresh_s.max(1))));
    }
    let max_inflight = a.max_inflight.max(1);
    Ok(Arc::new(Gateway {
        cfg: RequestConfig {
            policy: a.policy,
            load_weight: a.load_weight.max(0.0),
            max_attempts: a.max_failovers,
            limits: RequestLimits { max_prompt_tokens: a.max_prompt_tokens, max_new_tokens: a.max_new_tokens },
            stream_buffer: a.stream_buffer.max(1),
        },
        pool,
        inflight: Arc::new(tokio::sync::Semaphore::new(max_inflight)),
        max_inflight,
        draining: Default::default(),
        stats: Stats::default(),
        metrics: Default::default(),
    }))
}

async fn set_health(h: &HealthReporter, serving: bool) {
    let s = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    h.set_service_status("", s).await;
    h.set_service_status("tokenfleet.v1.TextGeneration", s).await;
}

/// `print-config`: the effective configuration after every layer (API keys redacted).
pub fn print_config(flags: &GatewayFlags) -> anyhow::Result<String> {
    Ok(GatewayConfig::load(flags)?.value.render()?)
}

/// Serves until SIGTERM/SIGINT, then drains.
pub async fn serve(a: GatewayConfig) -> anyhow::Result<()> {
    let gw = build(&a)?;
    if let Some(addr) = a.metrics_listen {
        let (metrics, registry) = crate::metrics::GatewayMetrics::register(gw.clone());
        let bound = tokenfleet_proto::runtime::metrics_http::serve(addr, Arc::new(registry), metrics)
            .await
            .with_context(|| format!("binding metrics port {addr}"))?;
        tracing::info!(metrics = %bound, "Prometheus metrics at /metrics");
    }
    let keys = ApiKeys::new(a.api_keys.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;

    // v1 for current tools (grpcurl), v1alpha for clients that only speak it (grpcio's).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tokenfleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().context("building the reflection service")?;
    let reflection_alpha = reflection_builder().build_v1alpha().context("building the reflection service")?;
    let k = keys.clone();
    let api =
        v1::text_generation_server::TextGenerationServer::with_interceptor(TextGenerationService::new(gw.clone()), move |r| k.check(r));
    let mut builder = tonic::transport::Server::builder();
    if let (Some(c), Some(k)) = (&a.tls.cert, &a.tls.key) {
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(read(c)?, read(k)?))).context("TLS configuration")?;
    }
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = builder
        .add_service(api)
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
    let server_task = tokio::spawn(server);
    if let Some(addr) = a.health_listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding health port {addr}"))?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))),
        );
    }
    tracing::info!(listen = %a.listen, policy = a.policy.as_str(), api_keys = keys.enabled(), tls = a.tls.cert.is_some(), "gateway listening");

    // Health follows the pool: SERVING iff at least one worker is healthy.
    let gw_h = gw.clone();
    let health_h = health.clone();
    let health_task = tokio::spawn(async move {
        let mut last = None;
        loop {
            let serving = !gw_h.is_draining() && gw_h.pool.healthy_count() > 0;
            if last != Some(serving) {
                set_health(&health_h, serving).await;
                tracing::info!(serving, healthy_workers = gw_h.pool.healthy_count(), "gateway health");
                last = Some(serving);
            }
            tokio::select! {
                _ = gw_h.pool.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    gw.draining.store(true, Ordering::SeqCst);
    health_task.abort();
    set_health(&health, false).await;
    let deadline = Instant::now() + Duration::from_secs(a.drain_timeout_s);
    tracing::info!(inflight = gw.inflight_now(), "draining");
    while gw.inflight_now() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if gw.inflight_now() > 0 {
        tracing::warn!(inflight = gw.inflight_now(), "drain timeout; exiting with requests in flight");
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), server_task).await;
    Ok(())
}
