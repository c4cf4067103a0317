//! The CUDA backend: the Llama forward pass on one pinned GPU — cuBLAS for the GEMMs, our
//! kernels (`tokenfleet-kernels`) for everything else, a bf16 paged KV cache, sampling on
//! device so only token ids and logprobs come back. One stream; the only host sync in a
//! step is reading the sampled ids.

mod buffers;
mod forward;
mod gemm;
mod graphs;
mod inflight;
mod timer;
mod weights;

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;
use tokenfleet_kernels::Kernels;
use tokenfleet_kernels::ops::{FeedArgs, SampleParams};
use tokenfleet_kernels::shapes::{AttnShape, KvCacheShape};

use self::buffers::{StepBuffers, StepInputs};
use self::forward::Launch;
use self::gemm::Gemm;
use self::graphs::GraphCache;
use self::inflight::{Launched, Slot};
use self::timer::GpuTime;
use self::weights::{GpuWeights, upload_weights};
use super::cuda_graph_plan::graph_key;
use super::cuda_plan::{self, StepCapacity, TOP_LOGPROBS_STRIDE};
use super::{Backend, BackendError, BackendInfo, StepBatch};
use crate::engine::sampler::Sampled;
use crate::model::rope::RopeTable;
use crate::model::{Model, ModelConfig};

/// How to size the backend.
#[derive(Debug, Clone)]
pub struct CudaConfig {
    /// Device ordinal (after CUDA_VISIBLE_DEVICES).
    pub device: usize,
    /// Fraction of the device's memory the process may use (weights + buffers + KV).
    pub gpu_memory_fraction: f64,
    /// Explicit KV pool size (overrides the fraction).
    pub kv_blocks: Option<usize>,
    pub capacity: StepCapacity,
    /// Time cuBLASLt's candidate algorithms once per decode-sized GEMM shape.
    pub tune_gemms: bool,
    /// Replay decode steps from captured CUDA graphs.
    pub cuda_graphs: bool,
    /// Launch our kernels with programmatic dependent launch (sm_90a image only; refused
    /// with a clear error elsewhere).
    pub programmatic_launch: bool,
    /// With programmatic launch: the GEMVs' L2 weight-prefetch budget in MiB (0: off).
    pub gemv_prefetch_mib: usize,
}

fn dev(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Device(format!("{what}: {e:?}"))
}

fn kern(e: tokenfleet_kernels::KernelError) -> BackendError {
    BackendError::Device(e.to_string())
}

pub struct CudaBackend {
    /// First field, so dropped first: the graphs reference the kernels' modules, the
    /// buffers and the cuBLAS workspaces below.
    graphs: GraphCache,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    gemm: Gemm,
    cfg: ModelConfig,
    w: GpuWeights,
    k_cache: Vec<CudaSlice<bf16>>,
    v_cache: Vec<CudaSlice<bf16>>,
    inv_freq: CudaSlice<f32>,
    bufs: StepBuffers,
    /// KV blocks the engine allocates from; the device pool has one more, the padding block
    /// (id `num_blocks`) that the dummy rows of a padded decode graph write to.
    num_blocks: usize,
    cap: StepCapacity,
    info: BackendInfo,
    use_graphs: bool,
    /// Two in-flight slots (pinned staging, readback, timer), used in turn.
    slots: Vec<Slot>,
    next_slot: usize,
    launched: VecDeque<Launched>,
    gpu_time: GpuTime,
}

/// Checks libcuda can be loaded and the device exists, without panicking (cudarc panics
/// when libcuda is missing).
pub fn probe(device: usize) -> Result<String, BackendError> {
    tokenfleet_kernels::cuda_available()
        .map_err(|e| BackendError::Device(format!("{e} (libcuda.so from the NVIDIA driver, 580 or newer)")))?;
    tokenfleet_kernels::compiled().map_err(kern)?;
    // cudarc panics when a library it needs cannot be loaded: check each one first.
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(BackendError::Device(
            "libcublas (cuBLAS 13) could not be loaded: install the CUDA 13 runtime libraries or the nvidia-cublas wheel and set LD_LIBRARY_PATH".into(),
        ));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(BackendError::Device(
            "libcublasLt (cuBLAS 13) could not be loaded: install the CUDA 13 runtime libraries or the nvidia-cublas wheel and set LD_LIBRARY_PATH".into(),
        ));
    }
    // libnvrtc is never loaded: the kernels are embedded as cubins and PTX and go through
    // the driver's module loader.
    let mut version = 0i32;
    // SAFETY: libcuda is present (checked above); the call writes one int.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if rc != cudarc::driver::sys::CUresult::CUDA_SUCCESS || version < 13000 {
        return Err(BackendError::Device(format!(
            "libcuda reports CUDA {}.{} (driver API {version}); tokenfleet needs CUDA 13.0, i.e. NVIDIA driver 580 or newer",
            version / 1000,
            (version % 1000) / 10
        )));
    }
    let n = CudaContext::device_count().map_err(dev("cuDeviceGetCount"))?;
    if device >= n.max(0) as usize {
        return Err(BackendError::Device(format!(
            "CUDA device {device} does not exist ({n} visible; CUDA_VISIBLE_DEVICES={:?})",
            std::env::var("CUDA_VISIBLE_DEVICES").ok()
        )));
    }
    Ok(format!("{n} CUDA device(s)"))
}

impl CudaBackend {
    /// Loads the model onto `cfg.device` and sizes the KV pool. `on_bytes` reports upload
    /// progress in checkpoint bytes.
    pub fn new(model: &Model, cfg: &CudaConfig, on_bytes: &mut dyn FnMut(u64)) -> Result<Self, BackendError> {
        probe(cfg.device)?;
        let (ctx, k) = Kernels::open(cfg.device).map_err(kern)?;
        // One stream: cudarc's cross-stream event tracking would only add overhead.
        // SAFETY: this backend never uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        k.set_programmatic_launch(cfg.programmatic_launch).map_err(kern)?;
        k.set_gemv_prefetch(cfg.gemv_prefetch_mib.saturating_mul(1 << 20));
        // A stream of our own, not cudarc's default (the legacy NULL stream): CUDA-graph
        // capture is refused on the NULL stream, and a non-blocking stream is not serialised
        // against other users of the context either.
        let stream = ctx.new_stream().map_err(dev("creating the CUDA stream"))?;
        let mc = model.config.clone();
        let shape = AttnShape { num_heads: mc.num_heads, num_kv_heads: mc.num_kv_heads, head_dim: mc.head_dim };
        shape.check_attention("cuda backend").map_err(kern)?;
        let gemm = Gemm::new(stream.clone(), cfg.tune_gemms)?;
        let w = upload_weights(&stream, &model.weights, mc.tie_word_embeddings, on_bytes)?;
        let rope = RopeTable::new(&mc);
        let inv_freq = stream.clone_htod(rope.inv_freq()).map_err(dev("inv_freq"))?;
        let bufs = StepBuffers::new(&stream, &mc, &cfg.capacity)?;
        stream.synchronize().map_err(dev("synchronize"))?;
        let pool_blocks = match cfg.kv_blocks {
            Some(n) => n + 1,
            None => {
                let (free, total) = cudarc::driver::result::mem_get_info().map_err(dev("cuMemGetInfo"))?;
                cuda_plan::kv_blocks_for(&mc, total, free, cfg.gpu_memory_fraction).ok_or_else(|| {
                    BackendError::Device(format!(
                        "no room for the KV cache: {} MiB free of {} MiB after weights and buffers at --gpu-memory-fraction {}",
                        free >> 20,
                        total >> 20,
                        cfg.gpu_memory_fraction
                    ))
                })?
            }
        };
        let num_blocks = pool_blocks.saturating_sub(1);
        if num_blocks == 0 {
            return Err(BackendError::Device("the KV pool has room for one block only: raise --gpu-memory-fraction or --kv-blocks".into()));
        }
        let cache = KvCacheShape { num_blocks: pool_blocks, num_kv_heads: mc.num_kv_heads, head_dim: mc.head_dim };
        let elems = cache.elems().ok_or_else(|| BackendError::Device("KV cache size overflows".into()))?;
        let mut k_cache = Vec::with_capacity(mc.num_layers);
        let mut v_cache = Vec::with_capacity(mc.num_layers);
        for _ in 0..mc.num_layers {
            k_cache.push(stream.alloc_zeros::<bf16>(elems).map_err(dev("allocating the KV cache"))?);
            v_cache.push(stream.alloc_zeros::<bf16>(elems).map_err(dev("allocating the KV cache"))?);
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let info = BackendInfo { name: "cuda".into(), device: format!("{name} (ordinal {})", cfg.device), dtype: "bf16".into() };
        tracing::info!(
            device = %info.device,
            kv_blocks = num_blocks,
            weights_mib = cuda_plan::weight_bytes(&mc) >> 20,
            cuda_graphs = cfg.cuda_graphs,
            programmatic_launch = cfg.programmatic_launch,
            gemv_prefetch_mib = if cfg.programmatic_launch { cfg.gemv_prefetch_mib } else { 0 },
            "CUDA backend ready"
        );
        let slots = vec![Slot::new(&ctx, &bufs.sample_outputs())?, Slot::new(&ctx, &bufs.sample_outputs())?];
        Ok(CudaBackend {
            _ctx: ctx,
            stream,
            k,
            gemm,
            cfg: mc,
            w,
            k_cache,
            v_cache,
            inv_freq,
            bufs,
            num_blocks,
            cap: cfg.capacity,
            info,
            use_graphs: cfg.cuda_graphs,
            graphs: GraphCache::default(),
            slots,
            next_slot: 0,
            launched: VecDeque::new(),
            gpu_time: GpuTime::default(),
        })
    }

    /// Blocks in the device pool: the engine's plus the padding block.
    fn pool_blocks(&self) -> usize {
        self.num_blocks + 1
    }

    fn shape(&self) -> AttnShape {
        AttnShape { num_heads: self.cfg.num_heads, num_kv_heads: self.cfg.num_kv_heads, head_dim: self.cfg.head_dim }
    }

    /// Queues one step on the next slot: packed, staged and uploaded, its fed tokens
    /// copied in, then replayed from a captured decode graph or launched eagerly, and its
    /// samples copied back. Nothing here waits for the device.
    fn enqueue(&mut self, batch: &StepBatch) -> Result<(), BackendError> {
        if self.launched.len() >= self.slots.len() {
            return Err(BackendError::InvalidBatch(format!("more than {} steps in flight", self.slots.len())));
        }
        let slot = self.next_slot;
        let launched = match graph_key(batch, &self.cap).filter(|_| self.use_graphs) {
            Some(key) => self.enqueue_padded(batch, key, true, slot)?,
            None => {
                let inputs = StepInputs::build(batch, &self.cap, 1)?;
                self.stage(&inputs, slot)?;
                self.slots[slot].timer.start(&self.stream)?;
                self.forward(&Launch::of(&inputs), &inputs.sample_rows)?;
                self.slots[slot].timer.end(&self.stream)?;
                self.finish_enqueue(&inputs, batch.samples.len(), slot)?
            }
        };
        self.next_slot = (slot + 1) % self.slots.len();
        self.launched.push_back(launched);
        Ok(())
    }

    /// Uploads a step's inputs through `slot`'s pinned staging, then copies its fed tokens
    /// in from the previous step's samples (still in the sampler's output buffer: this
    /// step's sampler runs later in the stream). Drops the captured graphs when a buffer
    /// had to move.
    fn stage(&mut self, inputs: &StepInputs, slot: usize) -> Result<(), BackendError> {
        let s = &self.stream;
        if self.bufs.upload(s, inputs, &mut self.slots[slot].up)? {
            self.graphs.clear();
        }
        let pairs = inputs.feed.len() / 2;
        if pairs > 0 {
            let b = &mut self.bufs;
            self.k
                .feed_tokens(
                    s,
                    FeedArgs {
                        ids: b.ids.slice_mut(..inputs.num_tokens),
                        sampled: b.out_token.slice(..),
                        feed: b.feed.slice(..2 * pairs),
                        count: pairs,
                    },
                )
                .map_err(kern)?;
        }
        Ok(())
    }

    /// Queues the readback of the first `rows` samples into `slot`.
    fn finish_enqueue(&mut self, inputs: &StepInputs, rows: usize, slot: usize) -> Result<Launched, BackendError> {
        let top_logprobs: Vec<u32> = inputs.params.iter().take(rows).map(|p| p.top_logprobs).collect();
        let want_top = top_logprobs.iter().any(|n| *n > 0);
        let outputs = self.bufs.sample_outputs();
        self.slots[slot].out.enqueue(&self.stream, outputs, want_top)?;
        Ok(Launched { slot, rows, top_logprobs })
    }
}

impl Drop for CudaBackend {
    /// Steps may still be in flight (the engine stopped between a launch and its collect):
    /// their copies target the pinned slots and their kernels the buffers freed below, so
    /// wait for the stream first.
    fn drop(&mut self) {
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!(error = ?e, "CUDA stream failed while shutting the backend down");
        }
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn execute(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        if !self.launched.is_empty() || !batch.feed.is_empty() {
            return Err(BackendError::InvalidBatch("a synchronous step while steps are in flight".into()));
        }
        self.launch(batch)?;
        self.collect()
    }

    fn launches_async(&self) -> bool {
        true
    }

    fn launch(&mut self, batch: &StepBatch) -> Result<(), BackendError> {
        batch.validate(self.num_blocks, self.cfg.vocab_size)?;
        if !batch.feed.is_empty() && self.launched.is_empty() {
            return Err(BackendError::InvalidBatch("fed tokens but no step in flight to feed them".into()));
        }
        self.enqueue(batch)
    }

    fn collect(&mut self) -> Result<Vec<Sampled>, BackendError> {
        let l = self.launched.pop_front().ok_or_else(|| BackendError::InvalidBatch("collect with no step in flight".into()))?;
        let slot = &self.slots[l.slot];
        let out = slot.out.read(&l, self.cfg.vocab_size)?;
        self.gpu_time.add(slot.timer.elapsed_ns()?);
        Ok(out)
    }

    fn warm_up(&mut self) -> Result<(), BackendError> {
        let t0 = std::time::Instant::now();
        let steps = self.warm_up_buckets()?;
        let g = self.gemm.stats();
        tracing::info!(
            steps,
            seconds = t0.elapsed().as_secs_f64(),
            gemm_shapes = g.lt_shapes + g.gemm_ex_shapes,
            gemv_shapes = g.gemv_shapes,
            gemv_mma_shapes = g.gemv_mma_shapes,
            gemv_rejected = g.gemv_rejected,
            graphs = self.graphs.len(),
            "CUDA warm-up done"
        );
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = self.gemm.stats();
        vec![
            ("gemm_cublaslt_shapes", g.lt_shapes as u64),
            ("gemm_tuned_shapes", g.tuned_shapes as u64),
            ("gemm_fallback_shapes", g.gemm_ex_shapes as u64),
            ("gemv_shapes", g.gemv_shapes as u64),
            ("gemv_mma_shapes", g.gemv_mma_shapes as u64),
            ("gemv_rejected", g.gemv_rejected as u64),
            ("graph_captures", self.graphs.captures),
            ("graph_replays", self.graphs.replays),
            ("graphs_held", self.graphs.len() as u64),
            ("last_step_gpu_ns", self.gpu_time.last_ns),
            ("gpu_ns_total", self.gpu_time.total_ns),
            ("timed_steps", self.gpu_time.steps),
        ]
    }
}

/// The device sampler's parameter block of one row.
pub(crate) fn sample_params(s: &crate::engine::sampler::SampleSpec) -> SampleParams {
    let c = &s.config;
    SampleParams {
        temperature: c.temperature,
        top_p: c.top_p,
        min_p: c.min_p,
        repetition_penalty: c.repetition_penalty,
        presence_penalty: c.presence_penalty,
        frequency_penalty: c.frequency_penalty,
        top_k: c.top_k,
        token_index: s.token_index,
        seed: s.seed,
        top_logprobs: s.top_logprobs.min(TOP_LOGPROBS_STRIDE as u32),
        reserved: 0,
    }
}
