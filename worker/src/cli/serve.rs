//! `serve`: load the model, warm up, and serve `tokenfleet.v1.Worker` (plus grpc.health.v1
//! and reflection) until SIGTERM, then drain.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokenfleet_proto::v1;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tokenfleet_proto::runtime::telemetry;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::synthetic::SyntheticBackend;
use crate::config::{BackendKind, ServeFlags, WorkerConfig};
use crate::engine::request::EngineRequest;
use crate::engine::sampler::SamplingConfig;
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::{EngineCore, EngineHandle, RequestOutput, Scheduler};
use crate::model::Model;
use crate::offline::model_limits;
use crate::service::metrics::WorkerMetrics;
use crate::service::{WorkerService, WorkerState};
use tokenfleet_proto::runtime::metrics_http;

fn build_backend(a: &WorkerConfig, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    let cfg = &model.config;
    match a.backend {
        BackendKind::Cuda => build_cuda(a, model),
        BackendKind::Auto => match cuda_probe(a.device) {
            Ok(()) => build_cuda(a, model),
            Err(reason) => {
                tracing::warn!(%reason, "--backend auto: no usable GPU, falling back to the CPU backend");
                build_cpu(a, model)
            }
        },
        BackendKind::Cpu => build_cpu(a, model),
        BackendKind::Synthetic => {
            let blocks = a.kv_blocks.unwrap_or(4096);
            let step = Duration::from_micros(a.synthetic_step_us);
            Ok((Box::new(SyntheticBackend::new(cfg.vocab_size, blocks, step, cfg.eos_token_ids.clone())), blocks))
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_probe(device: usize) -> Result<(), String> {
    crate::backend::cuda::probe(device).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_probe(_device: usize) -> Result<(), String> {
    Err("the CUDA backend is not built into this binary (build with `--features cuda`)".into())
}

#[cfg(feature = "cuda")]
fn build_cuda(a: &WorkerConfig, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    use crate::backend::cuda::{CudaBackend, CudaConfig};
    use crate::backend::cuda_plan::StepCapacity;
    if !(a.gpu_memory_fraction > 0.0 && a.gpu_memory_fraction <= 1.0) {
        bail!("--gpu-memory-fraction must be in (0, 1], got {}", a.gpu_memory_fraction);
    }
    let max_context = cuda_max_context(a, model);
    let cfg = CudaConfig {
        device: a.device,
        gpu_memory_fraction: a.gpu_memory_fraction,
        kv_blocks: a.kv_blocks,
        capacity: StepCapacity { max_tokens: a.max_batch_tokens.max(1), max_seqs: a.max_running.max(1), max_context },
        tune_gemms: true,
        cuda_graphs: a.cuda_graphs,
        programmatic_launch: a.programmatic_launch,
        gemv_prefetch_mib: a.gemv_prefetch_mib,
    };
    let pb = super::progress_bar(crate::backend::cuda_plan::weight_bytes(&model.config) as u64, "loading weights to the GPU");
    let mut backend = CudaBackend::new(model, &cfg, &mut |n| pb.inc(n)).map_err(|e| anyhow::anyhow!("CUDA backend: {e}"))?;
    pb.finish_and_clear();
    backend.warm_up().map_err(|e| anyhow::anyhow!("CUDA warm-up: {e}"))?;
    let blocks = backend.kv_blocks();
    Ok((Box::new(backend), blocks))
}

/// The CUDA backend sizes its block tables for this many positions; requests are limited
/// to it too (default: the model's context, capped at 32k to keep step buffers small).
fn cuda_max_context(a: &WorkerConfig, model: &Model) -> usize {
    a.max_model_len.unwrap_or(model.config.max_position_embeddings.min(32768))
}

#[cfg(not(feature = "cuda"))]
fn build_cuda(a: &WorkerConfig, _model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    Err(anyhow::anyhow!(cuda_probe(a.device).err().unwrap_or_default()))
}

fn build_cpu(a: &WorkerConfig, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    let per_block = CpuBackend::bytes_per_block(&model.config);
    let blocks = a.kv_blocks.unwrap_or((a.kv_cache_mib << 20) / per_block.max(1));
    if blocks == 0 {
        bail!("the KV cache has 0 blocks: raise --kv-cache-mib (one block needs {per_block} bytes) or set --kv-blocks");
    }
    Ok((Box::new(CpuBackend::new(model, blocks)), blocks))
}

/// `print-config`: the effective configuration after every layer.
pub fn print_config(flags: ServeFlags) -> anyhow::Result<()> {
    let cfg = WorkerConfig::load(&flags)?;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, cfg.value.render()?.as_bytes())?;
    std::io::Write::write_all(&mut out, b"\n")?;
    Ok(())
}

pub fn run(flags: ServeFlags) -> anyhow::Result<()> {
    let a = WorkerConfig::load(&flags)?.value;
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("configuring compute threads")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let _telemetry = telemetry::init(a.log_format, "info", &a.otel)?;
        serve(a).await
    })
}

async fn serve(a: WorkerConfig) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let t0 = Instant::now();
    let model = Model::load(a.model_dir())?;
    let (backend, kv_blocks) = build_backend(&a, &model)?;
    let bi = backend.info();
    let mut limits = model_limits(&model);
    let pool_tokens = kv_blocks * crate::backend::BLOCK_SIZE;
    let default_len = if bi.name == "cuda" { cuda_max_context(&a, &model) } else { limits.max_context };
    limits.max_context = a.max_model_len.unwrap_or(default_len).min(limits.max_context).min(pool_tokens);
    if a.max_model_len.is_some_and(|m| m > pool_tokens) {
        bail!("--max-model-len {} exceeds the KV pool ({} blocks = {pool_tokens} tokens)", a.max_model_len.unwrap_or(0), kv_blocks);
    }
    tracing::info!(model = %model.id, hash = %model.content_hash, backend = %bi.name, device = %bi.device, kv_blocks, max_context = limits.max_context, overlap_steps = a.overlap_steps, "model loaded in {:.2}s", t0.elapsed().as_secs_f64());

    let sched_cfg = SchedulerConfig {
        max_batch_tokens: a.max_batch_tokens.max(1),
        max_running: a.max_running.max(1),
        max_waiting: a.max_waiting.max(1),
        max_context: limits.max_context,
        eos_token_ids: limits.eos_token_ids.clone(),
        block_hash_seed: model.block_hash_seed(),
    };
    let core = EngineCore::new(Scheduler::new(sched_cfg, kv_blocks), backend).with_overlap(a.overlap_steps);
    let (handle, engine_thread) = EngineHandle::spawn(core, a.max_waiting.max(1) + 64).context("starting the engine thread")?;
    if let Some(addr) = a.metrics_listen {
        let (metrics, registry) = WorkerMetrics::register(handle.clone(), kv_blocks, crate::backend::BLOCK_SIZE, &model.id);
        let m = metrics.clone();
        let _ = handle.shared.step_observer.set(Box::new(move |seqs, secs| m.observe_step(seqs, secs)));
        let bound = metrics_http::serve(addr, Arc::new(registry), metrics).await.with_context(|| format!("binding metrics port {addr}"))?;
        tracing::info!(metrics = %bound, "Prometheus metrics at /metrics");
    }

    let c = &model.config;
    let info = v1::InfoResponse {
        model_id: model.id.clone(),
        model_hash: model.content_hash.clone(),
        architecture: c.architecture.clone(),
        vocab_size: c.vocab_size as u32,
        hidden_size: c.hidden_size as u32,
        num_layers: c.num_layers as u32,
        num_attention_heads: c.num_heads as u32,
        num_kv_heads: c.num_kv_heads as u32,
        head_dim: c.head_dim as u32,
        max_context: limits.max_context as u32,
        block_size: crate::backend::BLOCK_SIZE as u32,
        kv_blocks: kv_blocks as u32,
        dtype: bi.dtype.clone(),
        backend: bi.name.clone(),
        device: bi.device.clone(),
        tokenizer_hash: model.tokenizer.hash_hex(),
        eos_token_ids: c.eos_token_ids.clone(),
        bos_token_id: c.bos_token_id,
        block_hash_seed: model.block_hash_seed(),
        max_waiting: a.max_waiting as u32,
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(WorkerState {
        handle: handle.clone(),
        info,
        limits,
        tokenizer_json: Arc::new(model.tokenizer.bytes().to_vec()),
        ready: Default::default(),
        draining: Default::default(),
        stalled: Default::default(),
        shutdown: shutdown_rx,
    });

    // v1 for current tools (grpcurl), v1alpha for clients that only speak it (grpcio's).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tokenfleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().context("building the reflection service")?;
    let reflection_alpha = reflection_builder().build_v1alpha().context("building the reflection service")?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&a.tls.cert, &a.tls.key) {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &a.tls.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    let server = builder
        .add_service(v1::worker_server::WorkerServer::new(WorkerService::new(state.clone())))
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
    let server_task = tokio::spawn(server);
    if let Some(addr) = a.health_listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding health port {addr}"))?;
        let hs = health_service.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(hs)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))),
        );
    }

    warm_up(&handle, &model).await?;
    state.ready.store(true, Ordering::SeqCst);
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(listen = %a.listen, "SERVING ({:.2}s after start)", t0.elapsed().as_secs_f64());

    let exit = supervise(&a, &state, &health).await;
    // Stop serving: WatchLoad streams end, the server stops, the engine thread stops.
    let _ = shutdown_tx.send(true);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), server_task).await;
    handle.shutdown();
    drop(engine_thread);
    exit
}

async fn set_health(h: &HealthReporter, s: ServingStatus) {
    h.set_service_status("", s).await;
    h.set_service_status("tokenfleet.v1.Worker", s).await;
}

/// One real step through the whole engine before we report SERVING.
async fn warm_up(handle: &EngineHandle, model: &Model) -> anyhow::Result<()> {
    let prompt = vec![model.config.bos_token_id.unwrap_or(0)];
    let req = EngineRequest {
        id: "warmup".into(),
        prompt,
        generated: vec![],
        sampling: SamplingConfig::greedy(),
        seed: 0,
        max_new_tokens: 1,
        min_new_tokens: 0,
        stop_token_ids: vec![],
        ignore_eos: true,
        top_logprobs: 0,
        logprobs: false,
        priority: 0,
        arrival: Instant::now(),
    };
    let mut rx = handle.submit(req).map_err(|e| anyhow::anyhow!("warm-up: {e}"))?;
    while let Some(out) = rx.recv().await {
        match out {
            RequestOutput::Finished { .. } => return Ok(()),
            RequestOutput::Rejected(e) => bail!("warm-up refused: {e}"),
            RequestOutput::Failed(e) => bail!("warm-up failed: {e}"),
            RequestOutput::Token { .. } => {}
        }
    }
    bail!("warm-up: the engine stopped")
}

/// Watches for signals, backend failure and stalls. Returns when the process should exit.
async fn supervise(a: &WorkerConfig, state: &Arc<WorkerState>, health: &HealthReporter) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let stall = Duration::from_secs(a.stall_timeout_s.max(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let fatal = state.handle.shared.fatal.lock().ok().and_then(|f| f.clone());
                if let Some(e) = fatal {
                    set_health(health, ServingStatus::NotServing).await;
                    bail!("the backend failed, refusing to serve: {e}");
                }
                let load = state.handle.load();
                let busy = load.running + load.waiting > 0;
                let stalled = busy && state.handle.shared.since_heartbeat() > stall;
                if stalled != state.stalled.swap(stalled, Ordering::SeqCst) {
                    if stalled {
                        tracing::error!("the engine made no progress for {:?}: NOT_SERVING", stall);
                        set_health(health, ServingStatus::NotServing).await;
                    } else {
                        tracing::warn!("the engine is making progress again: SERVING");
                        set_health(health, ServingStatus::Serving).await;
                    }
                }
            }
        }
    }
    // Drain: refuse new work, let in-flight requests finish.
    state.draining.store(true, Ordering::SeqCst);
    set_health(health, ServingStatus::NotServing).await;
    let deadline = Instant::now() + Duration::from_secs(a.drain_timeout_s);
    tracing::info!("draining (up to {}s)", a.drain_timeout_s);
    while Instant::now() < deadline {
        let l = state.handle.load();
        if l.running == 0 && l.waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = state.handle.load();
    if l.running + l.waiting > 0 {
        tracing::warn!(running = l.running, waiting = l.waiting, "drain timeout reached; exiting with requests in flight");
    } else {
        tracing::info!("drained");
    }
    // Give the last responses a moment to flush to clients.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
