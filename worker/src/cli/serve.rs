//! `serve`: load the model, warm up, and serve `tokenfleet.v1.Worker` (plus grpc.health.v1
//! and reflection) until SIGTERM, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tokenfleet_proto::v1;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::synthetic::SyntheticBackend;
use crate::engine::request::EngineRequest;
use crate::engine::sampler::SamplingConfig;
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::{EngineCore, EngineHandle, RequestOutput, Scheduler};
use crate::model::Model;
use crate::offline::model_limits;
use crate::service::{WorkerService, WorkerState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Cpu,
    Cuda,
    /// cuda when a GPU and driver are usable, else cpu (with a warning).
    Auto,
    /// No model compute: deterministic tokens (gateway benchmarks and tests).
    Synthetic,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// Plaintext listener with only grpc.health.v1 (for kubelet probes).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// CUDA device ordinal (after CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// CUDA backend: fraction of the GPU's memory for weights + buffers + KV cache.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_fraction: f64,
    /// KV cache blocks of 16 tokens (overrides --kv-cache-mib).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// KV cache memory on the CPU backend, MiB.
    #[arg(long, default_value_t = 1024)]
    pub kv_cache_mib: usize,
    /// Longest prompt + generation (default: the model's max_position_embeddings, capped by the KV pool).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Token budget of one engine step (decodes + prefill chunks).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,
    /// Waiting-queue capacity; beyond it requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256)]
    pub max_waiting: usize,
    /// Compute threads of the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Synthetic backend: delay per engine step, microseconds.
    #[arg(long, default_value_t = 0)]
    pub synthetic_step_us: u64,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// The engine counts as stalled (NOT_SERVING) after this long without progress.
    #[arg(long, default_value_t = 30)]
    pub stall_timeout_s: u64,
}

fn build_backend(a: &ServeArgs, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
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
fn build_cuda(a: &ServeArgs, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
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
    };
    let pb = super::progress_bar(crate::backend::cuda_plan::weight_bytes(&model.config) as u64, "loading weights to the GPU");
    let backend = CudaBackend::new(model, &cfg, &mut |n| pb.inc(n)).map_err(|e| anyhow::anyhow!("CUDA backend: {e}"))?;
    pb.finish_and_clear();
    let blocks = backend.kv_blocks();
    Ok((Box::new(backend), blocks))
}

/// The CUDA backend sizes its block tables for this many positions; requests are limited
/// to it too (default: the model's context, capped at 32k to keep step buffers small).
fn cuda_max_context(a: &ServeArgs, model: &Model) -> usize {
    a.max_model_len.unwrap_or(model.config.max_position_embeddings.min(32768))
}

#[cfg(not(feature = "cuda"))]
fn build_cuda(a: &ServeArgs, _model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    Err(anyhow::anyhow!(cuda_probe(a.device).err().unwrap_or_default()))
}

fn build_cpu(a: &ServeArgs, model: &Model) -> anyhow::Result<(Box<dyn Backend>, usize)> {
    let per_block = CpuBackend::bytes_per_block(&model.config);
    let blocks = a.kv_blocks.unwrap_or((a.kv_cache_mib << 20) / per_block.max(1));
    if blocks == 0 {
        bail!("the KV cache has 0 blocks: raise --kv-cache-mib (one block needs {per_block} bytes) or set --kv-blocks");
    }
    Ok((Box::new(CpuBackend::new(model, blocks)), blocks))
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("configuring compute threads")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the async runtime")?;
    rt.block_on(serve(a))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let t0 = Instant::now();
    let model = Model::load(&a.model)?;
    let (backend, kv_blocks) = build_backend(&a, &model)?;
    let bi = backend.info();
    let mut limits = model_limits(&model);
    let pool_tokens = kv_blocks * crate::backend::BLOCK_SIZE;
    let default_len = if bi.name == "cuda" { cuda_max_context(&a, &model) } else { limits.max_context };
    limits.max_context = a.max_model_len.unwrap_or(default_len).min(limits.max_context).min(pool_tokens);
    if a.max_model_len.is_some_and(|m| m > pool_tokens) {
        bail!("--max-model-len {} exceeds the KV pool ({} blocks = {pool_tokens} tokens)", a.max_model_len.unwrap_or(0), kv_blocks);
    }
    tracing::info!(model = %model.id, hash = %model.content_hash, backend = %bi.name, device = %bi.device, kv_blocks, max_context = limits.max_context, "model loaded in {:.2}s", t0.elapsed().as_secs_f64());

    let sched_cfg = SchedulerConfig {
        max_batch_tokens: a.max_batch_tokens.max(1),
        max_running: a.max_running.max(1),
        max_waiting: a.max_waiting.max(1),
        max_context: limits.max_context,
        eos_token_ids: limits.eos_token_ids.clone(),
        block_hash_seed: model.block_hash_seed(),
    };
    let core = EngineCore::new(Scheduler::new(sched_cfg, kv_blocks), backend);
    let (handle, engine_thread) = EngineHandle::spawn(core, a.max_waiting.max(1) + 64).context("starting the engine thread")?;

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
    let server = tonic::transport::Server::builder()
        .add_service(v1::worker_server::WorkerServer::new(WorkerService::new(state.clone())))
        .add_service(health_service.clone())
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
    let server_task = tokio::spawn(server);
    if let Some(addr) = a.health_listen {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding health port {addr}"))?;
        let hs = health_service.clone();
        tokio::spawn(
            tonic::transport::Server::builder().add_service(hs).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
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
async fn supervise(a: &ServeArgs, state: &Arc<WorkerState>, health: &HealthReporter) -> anyhow::Result<()> {
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
