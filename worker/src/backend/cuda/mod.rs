//! The CUDA backend: the Llama forward pass on one pinned GPU — cuBLAS for the GEMMs, our
//! kernels (`tokenfleet-kernels`) for everything else, a bf16 paged KV cache, sampling on
//! device so only token ids and logprobs come back. One stream; the only host sync in a
//! step is reading the sampled ids.

mod buffers;
mod gemm;
mod weights;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;
use tokenfleet_kernels::Kernels;
use tokenfleet_kernels::ops::{
    AddRmsNormArgs, DecodeArgs, EmbeddingArgs, PagedKv, PrefillArgs, RmsNormArgs, RopeKvArgs, SampleArgs, SampleOutputs, SampleParams,
    SiluMulArgs, SparseRows,
};
use tokenfleet_kernels::shapes::{
    AttnRows, AttnShape, DecodeDims, EmbeddingDims, KvCacheShape, NormDims, PrefillDims, RopeDims, SampleDims, SiluDims,
};

use self::buffers::{StepBuffers, StepInputs};
use self::gemm::{Gemm, GemmDims, OutType};
use self::weights::{GpuWeights, upload_weights};
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
}

fn dev(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Device(format!("{what}: {e:?}"))
}

fn kern(e: tokenfleet_kernels::KernelError) -> BackendError {
    BackendError::Device(e.to_string())
}

pub struct CudaBackend {
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
    num_blocks: usize,
    cap: StepCapacity,
    info: BackendInfo,
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
        let stream = ctx.default_stream();
        let mc = model.config.clone();
        let shape = AttnShape { num_heads: mc.num_heads, num_kv_heads: mc.num_kv_heads, head_dim: mc.head_dim };
        shape.check_attention("cuda backend").map_err(kern)?;
        let gemm = Gemm::new(stream.clone())?;
        let w = upload_weights(&stream, &model.weights, mc.tie_word_embeddings, on_bytes)?;
        let rope = RopeTable::new(&mc);
        let inv_freq = stream.clone_htod(rope.inv_freq()).map_err(dev("inv_freq"))?;
        let bufs = StepBuffers::new(&stream, &mc, &cfg.capacity)?;
        stream.synchronize().map_err(dev("synchronize"))?;
        let num_blocks = match cfg.kv_blocks {
            Some(n) => n,
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
        let cache = KvCacheShape { num_blocks, num_kv_heads: mc.num_kv_heads, head_dim: mc.head_dim };
        let elems = cache.elems().ok_or_else(|| BackendError::Device("KV cache size overflows".into()))?;
        let mut k_cache = Vec::with_capacity(mc.num_layers);
        let mut v_cache = Vec::with_capacity(mc.num_layers);
        for _ in 0..mc.num_layers {
            k_cache.push(stream.alloc_zeros::<bf16>(elems).map_err(dev("allocating the KV cache"))?);
            v_cache.push(stream.alloc_zeros::<bf16>(elems).map_err(dev("allocating the KV cache"))?);
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let info = BackendInfo { name: "cuda".into(), device: format!("{name} (ordinal {})", cfg.device), dtype: "bf16".into() };
        tracing::info!(device = %info.device, kv_blocks = num_blocks, weights_mib = cuda_plan::weight_bytes(&mc) >> 20, "CUDA backend ready");
        Ok(CudaBackend { _ctx: ctx, stream, k, gemm, cfg: mc, w, k_cache, v_cache, inv_freq, bufs, num_blocks, cap: cfg.capacity, info })
    }

    fn shape(&self) -> AttnShape {
        AttnShape { num_heads: self.cfg.num_heads, num_kv_heads: self.cfg.num_kv_heads, head_dim: self.cfg.head_dim }
    }

    /// The forward pass and the sampler for one step.
    fn step(&mut self, batch: &StepBatch) -> Result<Vec<Sampled>, BackendError> {
        let inputs = StepInputs::build(batch, &self.cap)?;
        self.bufs.upload(&self.stream, &inputs)?;
        let c = &self.cfg;
        let t = inputs.num_tokens;
        let (h, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let shape = self.shape();
        let qw = shape.qkv_width();
        let attn_w = c.num_heads * c.head_dim;
        let cache = KvCacheShape { num_blocks: self.num_blocks, num_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let s = &self.stream;
        let b = &mut self.bufs;
        let k = &self.k;
        let eps = c.rms_norm_eps;

        k.embedding_gather(
            s,
            EmbeddingArgs {
                dims: EmbeddingDims { num_tokens: t, vocab, hidden: h },
                ids: b.ids.slice(..t),
                table: self.w.embed.as_view(),
                out: b.x.slice_mut(..t * h),
            },
        )
        .map_err(kern)?;
        let norm = NormDims { rows: t, hidden: h };
        k.rmsnorm(
            s,
            RmsNormArgs {
                dims: norm,
                eps,
                x: b.x.slice(..t * h),
                weight: self.w.layers[0].input_norm.as_view(),
                out: b.h.slice_mut(..t * h),
            },
        )
        .map_err(kern)?;
        // Pure decode steps use split-KV decode attention (its workspace sized once per step).
        let rows = AttnRows { num_tokens: t, q_stride: qw, out_stride: attn_w };
        let decode_dims = (inputs.max_query_len == 1).then_some(DecodeDims {
            shape,
            cache,
            rows,
            max_blocks_per_seq: inputs.table_width,
            max_context_len: inputs.max_context_len,
        });
        if let Some(d) = &decode_dims {
            let plan = k.decode_plan(d);
            b.ensure_workspace(s, plan.workspace_acc, plan.workspace_ml)?;
        }
        let n_layers = self.w.layers.len();
        for li in 0..n_layers {
            let layer = &self.w.layers[li];
            self.gemm.run(&b.h.slice(..t * h), &layer.qkv, &mut b.qkv.slice_mut(..t * qw), OutType::Bf16, GemmDims { t, n: qw, k: h })?;
            k.rope_kv_write(
                s,
                RopeKvArgs {
                    dims: RopeDims { num_tokens: t, shape, cache },
                    qkv: b.qkv.slice_mut(..t * qw),
                    positions: b.positions.slice(..t),
                    slots: b.slots.slice(..t),
                    inv_freq: self.inv_freq.as_view(),
                    k_cache: self.k_cache[li].as_view_mut(),
                    v_cache: self.v_cache[li].as_view_mut(),
                },
            )
            .map_err(kern)?;
            let kv = PagedKv {
                k_cache: self.k_cache[li].as_view(),
                v_cache: self.v_cache[li].as_view(),
                block_tables: b.block_tables.slice(..inputs.num_seqs * inputs.table_width),
                context_lens: b.context_lens.slice(..inputs.num_seqs),
            };
            if let Some(dims) = decode_dims {
                k.attention_decode(
                    s,
                    DecodeArgs {
                        dims,
                        q: b.qkv.slice(..t * qw),
                        kv,
                        out: b.attn.slice_mut(..t * attn_w),
                        workspace_acc: b.ws_acc.slice_mut(..),
                        workspace_ml: b.ws_ml.slice_mut(..),
                    },
                )
                .map_err(kern)?;
            } else {
                let rows = AttnRows { num_tokens: t, q_stride: qw, out_stride: attn_w };
                let dims = PrefillDims {
                    shape,
                    cache,
                    rows,
                    num_seqs: inputs.num_seqs,
                    max_blocks_per_seq: inputs.table_width,
                    max_query_len: inputs.max_query_len,
                };
                k.attention_prefill(
                    s,
                    PrefillArgs {
                        dims,
                        q: b.qkv.slice(..t * qw),
                        kv,
                        query_starts: b.query_starts.slice(..inputs.num_seqs + 1),
                        out: b.attn.slice_mut(..t * attn_w),
                    },
                )
                .map_err(kern)?;
            }
            self.gemm.run(
                &b.attn.slice(..t * attn_w),
                &layer.o,
                &mut b.delta.slice_mut(..t * h),
                OutType::Bf16,
                GemmDims { t, n: h, k: attn_w },
            )?;
            k.add_rmsnorm(
                s,
                AddRmsNormArgs {
                    dims: norm,
                    eps,
                    x: b.x.slice_mut(..t * h),
                    delta: b.delta.slice(..t * h),
                    weight: layer.post_norm.as_view(),
                    out: b.h.slice_mut(..t * h),
                },
            )
            .map_err(kern)?;
            self.gemm.run(
                &b.h.slice(..t * h),
                &layer.gate_up,
                &mut b.gate_up.slice_mut(..t * 2 * inter),
                OutType::Bf16,
                GemmDims { t, n: 2 * inter, k: h },
            )?;
            k.silu_mul(
                s,
                SiluMulArgs {
                    dims: SiluDims { num_tokens: t, inter },
                    gate_up: b.gate_up.slice(..t * 2 * inter),
                    out: b.act.slice_mut(..t * inter),
                },
            )
            .map_err(kern)?;
            self.gemm.run(
                &b.act.slice(..t * inter),
                &layer.down,
                &mut b.delta.slice_mut(..t * h),
                OutType::Bf16,
                GemmDims { t, n: h, k: inter },
            )?;
            let next_norm = if li + 1 < n_layers { &self.w.layers[li + 1].input_norm } else { &self.w.final_norm };
            k.add_rmsnorm(
                s,
                AddRmsNormArgs {
                    dims: norm,
                    eps,
                    x: b.x.slice_mut(..t * h),
                    delta: b.delta.slice(..t * h),
                    weight: next_norm.as_view(),
                    out: b.h.slice_mut(..t * h),
                },
            )
            .map_err(kern)?;
        }

        // The sampled rows (each sequence's last token), gathered unless they are all rows.
        let rows = inputs.sample_rows.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let all_rows = inputs.sample_rows.iter().enumerate().all(|(i, r)| *r == i) && rows == t;
        if !all_rows {
            for (i, r) in inputs.sample_rows.iter().enumerate() {
                let src = b.h.slice(r * h..(r + 1) * h);
                s.memcpy_dtod(&src, &mut b.h_sel.slice_mut(i * h..(i + 1) * h)).map_err(dev("gathering sampled rows"))?;
            }
        }
        let hs = if all_rows { b.h.slice(..rows * h) } else { b.h_sel.slice(..rows * h) };
        self.gemm.run(
            &hs,
            self.w.lm_head(),
            &mut b.logits.slice_mut(..rows * vocab),
            OutType::F32,
            GemmDims { t: rows, n: vocab, k: h },
        )?;
        let params = s.clone_htod(&inputs.params).map_err(dev("sampling params"))?;
        let pen_off = s.clone_htod(&inputs.pen_offsets).map_err(dev("penalties"))?;
        let pen_ids = s.clone_htod(&inputs.pen_ids).map_err(dev("penalties"))?;
        let pen_counts = s.clone_htod(&inputs.pen_counts).map_err(dev("penalties"))?;
        let sup_off = s.clone_htod(&inputs.sup_offsets).map_err(dev("suppressed ids"))?;
        let sup_ids = s.clone_htod(&inputs.sup_ids).map_err(dev("suppressed ids"))?;
        k.sample(
            s,
            SampleArgs {
                dims: SampleDims { rows, vocab, logits_stride: vocab },
                logits: b.logits.slice(..rows * vocab),
                params: params.as_view(),
                penalties: SparseRows { offsets: pen_off.as_view(), ids: pen_ids.as_view() },
                penalty_counts: pen_counts.as_view(),
                suppress: SparseRows { offsets: sup_off.as_view(), ids: sup_ids.as_view() },
                scratch: b.scratch.slice_mut(..rows * vocab),
                out: SampleOutputs {
                    token: b.out_token.slice_mut(..rows),
                    logprob: b.out_logprob.slice_mut(..rows),
                    top_ids: b.out_top_ids.slice_mut(..rows * TOP_LOGPROBS_STRIDE),
                    top_logprobs: b.out_top_lp.slice_mut(..rows * TOP_LOGPROBS_STRIDE),
                },
            },
        )
        .map_err(kern)?;
        let tokens = s.clone_dtoh(&b.out_token.slice(..rows)).map_err(dev("reading sampled ids"))?;
        let logprobs = s.clone_dtoh(&b.out_logprob.slice(..rows)).map_err(dev("reading logprobs"))?;
        let want_top = inputs.params.iter().any(|p| p.top_logprobs > 0);
        let (top_ids, top_lp) = if want_top {
            (
                s.clone_dtoh(&b.out_top_ids.slice(..rows * TOP_LOGPROBS_STRIDE)).map_err(dev("reading top ids"))?,
                s.clone_dtoh(&b.out_top_lp.slice(..rows * TOP_LOGPROBS_STRIDE)).map_err(dev("reading top logprobs"))?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let mut out = Vec::with_capacity(rows);
        for i in 0..rows {
            let n = inputs.params[i].top_logprobs as usize;
            let top = (0..n).filter_map(|j| {
                let id = *top_ids.get(i * TOP_LOGPROBS_STRIDE + j)?;
                Some((u32::try_from(id).ok()?, *top_lp.get(i * TOP_LOGPROBS_STRIDE + j)?))
            });
            let token = u32::try_from(tokens[i]).map_err(|_| BackendError::Device(format!("the sampler returned token {}", tokens[i])))?;
            if token as usize >= vocab {
                return Err(BackendError::Device(format!("the sampler returned token {token} >= vocab {vocab}")));
            }
            out.push(Sampled { token, logprob: logprobs[i], top: top.collect() });
        }
        Ok(out)
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
        batch.validate(self.num_blocks, self.cfg.vocab_size)?;
        self.step(batch)
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
