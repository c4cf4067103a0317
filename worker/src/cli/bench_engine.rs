//! `bench-engine`: backend step times without the server — prefill of `batch` prompts of
//! `prompt-len` tokens in one step, then `gen-len` decode steps of the whole batch — plus
//! the scheduler's own cost per step with a no-op backend. Medians of several runs after
//! warm-up; JSON with `--json`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::backend::cpu::CpuBackend;
use crate::backend::synthetic::SyntheticBackend;
use crate::backend::{BLOCK_SIZE, Backend, FedToken, SeqChunk, StepBatch};
use crate::engine::launcher::Launcher;
use crate::engine::request::EngineRequest;
use crate::engine::sampler::{SampleSpec, SamplingConfig};
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::{EngineCore, Scheduler};
use crate::model::Model;

#[derive(Debug, Args)]
pub struct BenchEngineArgs {
    /// Model directory.
    #[arg(long, required_unless_present_any = ["scheduler_only", "preset"], conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Instead of --model: a gen-model preset (with --random-weights).
    #[arg(long, requires = "random_weights")]
    preset: Option<String>,
    /// The --preset model gets deterministic random weights (bf16, seed 0), generated once.
    #[arg(long, requires = "preset")]
    random_weights: bool,
    /// Where the --preset model is kept between runs (default: under the system temp dir).
    #[arg(long, requires = "preset")]
    weights_dir: Option<PathBuf>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// Timed prefill repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Backend: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// CUDA: replay decode steps from captured CUDA graphs.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    cuda_graphs: bool,
    /// Decode with step n+1 launched before step n is read back (its tokens fed on the
    /// device), as `serve --overlap-steps true` runs.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    overlap: bool,
    /// CUDA on H100/H200: programmatic dependent launch (`serve --programmatic-launch true`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    programmatic_launch: bool,
    /// With --programmatic-launch: the GEMVs' L2 weight-prefetch budget in MiB (0: off).
    #[arg(long, default_value_t = 16)]
    gemv_prefetch_mib: usize,
    /// Measure only the scheduler with a no-op backend and this many running sequences.
    #[arg(long)]
    scheduler_only: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Random-but-fixed prompts that never repeat across repetitions (no prefix reuse).
fn prompt(vocab: usize, seq: usize, rep: usize, len: usize) -> Vec<u32> {
    let mut x = (seq as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (rep as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

/// A step of `tokens[s]` for each sequence s, each sequence owning a contiguous run of
/// blocks starting at `s * blocks_per_seq`, with positions starting at `start`.
fn step_batch(tokens: &[Vec<u32>], start: usize, blocks_per_seq: usize) -> StepBatch {
    let mut b = StepBatch::default();
    for (s, toks) in tokens.iter().enumerate() {
        let table: Vec<u32> = (0..blocks_per_seq).map(|i| (s * blocks_per_seq + i) as u32).collect();
        let token_start = b.token_ids.len();
        for (j, t) in toks.iter().enumerate() {
            let pos = start + j;
            b.token_ids.push(*t);
            b.positions.push(pos as u32);
            b.slot_mapping.push(table[pos / BLOCK_SIZE] * BLOCK_SIZE as u32 + (pos % BLOCK_SIZE) as u32);
        }
        let context_len = start + toks.len();
        b.seqs.push(SeqChunk {
            token_start,
            num_tokens: toks.len(),
            context_len,
            block_table: table[..context_len.div_ceil(BLOCK_SIZE)].to_vec(),
        });
        b.samples.push(SampleSpec {
            seq: s,
            config: SamplingConfig::greedy(),
            seed: 0,
            token_index: 0,
            penalties: vec![],
            suppress: vec![],
            top_logprobs: 0,
        });
    }
    b
}

pub fn run(a: BenchEngineArgs) -> anyhow::Result<()> {
    let out = match a.scheduler_only {
        Some(n) => scheduler_overhead(n)?,
        None => backend_steps(&a)?,
    };
    let mut stdout = std::io::stdout().lock();
    if a.json {
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

fn backend_steps(a: &BenchEngineArgs) -> anyhow::Result<serde_json::Value> {
    let dir = match (&a.model, &a.preset) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => random_model(p, a.weights_dir.as_deref())?,
        (None, None) => bail!("give --model DIR or --preset NAME"),
    };
    let dir = &dir;
    if a.batch == 0 || a.prompt_len == 0 {
        bail!("--batch and --prompt-len must be at least 1");
    }
    let model = Model::load(dir)?;
    let vocab = model.config.vocab_size;
    let blocks_per_seq = (a.prompt_len + a.gen_len + 3).div_ceil(BLOCK_SIZE);
    let t_load = Instant::now();
    let mut backend = make_backend(
        &a.backend,
        a.device,
        CudaLaunchOptions { graphs: a.cuda_graphs, programmatic_launch: a.programmatic_launch, gemv_prefetch_mib: a.gemv_prefetch_mib },
        &model,
        a.batch * blocks_per_seq,
        a.batch * a.prompt_len,
        a.batch,
        blocks_per_seq * BLOCK_SIZE,
    )?;
    let load_s = t_load.elapsed().as_secs_f64();

    // A prefill of the whole batch, split into steps of at most PREFILL_STEP_TOKENS tokens
    // (as the scheduler's token budget would); its time is the sum of those steps.
    const PREFILL_STEP_TOKENS: usize = 16384;
    let per_step = (PREFILL_STEP_TOKENS / a.prompt_len).max(1);
    let mut prefill = Vec::new();
    let mut prefill_gpu = Vec::new();
    for rep in 0..=a.repeats {
        let prompts: Vec<Vec<u32>> = (0..a.batch).map(|s| prompt(vocab, s, rep, a.prompt_len)).collect();
        let (mut ms, mut gpu_ms) = (0.0, 0.0);
        for (c, group) in prompts.chunks(per_step).enumerate() {
            let mut batch = step_batch(group, 0, blocks_per_seq);
            // Each sequence keeps its own blocks: offset the tables to the group's position.
            let first = c * per_step;
            for seq in batch.seqs.iter_mut() {
                for b in seq.block_table.iter_mut() {
                    *b += (first * blocks_per_seq) as u32;
                }
            }
            for sl in batch.slot_mapping.iter_mut() {
                *sl += (first * blocks_per_seq * BLOCK_SIZE) as u32;
            }
            let t = Instant::now();
            backend.execute(&batch).context("prefill step")?;
            ms += t.elapsed().as_secs_f64() * 1e3;
            gpu_ms += gpu_step_ms(backend.as_ref()).unwrap_or(f64::NAN);
        }
        if rep > 0 {
            prefill.push(ms);
            prefill_gpu.push(gpu_ms);
        }
    }
    // Decode after the last prefill: one token per sequence per step.
    let mut launcher = Launcher::new(backend);
    let (decode, decode_gpu) = if a.overlap {
        decode_overlapped(a, &mut launcher, vocab, blocks_per_seq)?
    } else {
        decode_synchronous(a, &mut launcher, vocab, blocks_per_seq)?
    };
    let backend = launcher.backend();
    let prefill_ms = median(prefill);
    let decode_ms = median(decode);
    // CUDA events around each step's device work (CUDA backend only; null elsewhere).
    let gpu = |v: Vec<f64>| (!v.is_empty() && v.iter().all(|x| x.is_finite())).then(|| median(v));
    let (prefill_gpu_ms, decode_gpu_ms) = (gpu(prefill_gpu), gpu(decode_gpu));
    let info = backend.info();
    let counters: serde_json::Map<String, serde_json::Value> =
        backend.counters().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let programmatic = a.programmatic_launch && info.name == "cuda";
    Ok(json!({
        "backend_counters": counters,
        "backend": info.name, "device": info.device, "dtype": info.dtype, "model": model.id,
        "batch": a.batch, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "cuda_graphs": a.cuda_graphs && info.name == "cuda",
        "overlap": a.overlap,
        "programmatic_launch": programmatic,
        "gemv_prefetch_mib": if programmatic { a.gemv_prefetch_mib } else { 0 },
        "prefill_ms": prefill_ms,
        "prefill_gpu_ms": prefill_gpu_ms,
        "decode_gpu_ms": decode_gpu_ms,
        "prefill_tokens_per_s": (a.batch * a.prompt_len) as f64 / (prefill_ms / 1e3),
        "decode_step_ms": decode_ms,
        "decode_tokens_per_s": a.batch as f64 / (decode_ms / 1e3),
        "threads": rayon::current_num_threads(),
        "backend_load_s": load_s,
        "timing": "*_ms: host wall clock per step after warm-up, each step ending by reading the sampled ids (a device sync; with overlap, the interval between reads while the next step is already queued); *_gpu_ms: CUDA events around the step's device work",
    }))
}

/// Decode steps, each launched after the previous one's ids were read back. Returns the
/// host and device milliseconds of the timed steps.
fn decode_synchronous(a: &BenchEngineArgs, l: &mut Launcher, vocab: usize, blocks_per_seq: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut host, mut gpu) = (Vec::new(), Vec::new());
    let mut last: Vec<Vec<u32>> = (0..a.batch).map(|s| vec![(s as u32 * 7 + 1) % vocab as u32]).collect();
    for i in 0..a.gen_len + 2 {
        let batch = step_batch(&last, a.prompt_len + i, blocks_per_seq);
        let t = Instant::now();
        let sampled = l.run(&batch).context("decode step")?;
        if i >= 2 {
            host.push(t.elapsed().as_secs_f64() * 1e3);
            gpu.extend(gpu_step_ms(l.backend()));
        }
        last = sampled.iter().map(|s| vec![s.token]).collect();
    }
    Ok((host, gpu))
}

/// Decode steps with step i+1 queued (its tokens fed from step i's samples on the device)
/// before step i is read back; a step's time is the interval between two reads.
fn decode_overlapped(a: &BenchEngineArgs, l: &mut Launcher, vocab: usize, blocks_per_seq: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut host, mut gpu) = (Vec::new(), Vec::new());
    let first: Vec<Vec<u32>> = (0..a.batch).map(|s| vec![(s as u32 * 7 + 1) % vocab as u32]).collect();
    l.launch(&step_batch(&first, a.prompt_len, blocks_per_seq)).context("decode step")?;
    let placeholders: Vec<Vec<u32>> = (0..a.batch).map(|_| vec![0]).collect();
    let mut t = Instant::now();
    for i in 1..a.gen_len + 3 {
        let mut batch = step_batch(&placeholders, a.prompt_len + i, blocks_per_seq);
        batch.feed = (0..a.batch).map(|s| FedToken { token: s, from_sample: s }).collect();
        l.launch(&batch).context("decode step")?;
        l.collect().context("decode step")?;
        if i >= 3 {
            host.push(t.elapsed().as_secs_f64() * 1e3);
            gpu.extend(gpu_step_ms(l.backend()));
        }
        t = Instant::now();
    }
    l.collect().context("decode step")?;
    Ok((host, gpu))
}

/// The device time of the backend's last step (CUDA events), when it measures one.
fn gpu_step_ms(b: &dyn Backend) -> Option<f64> {
    b.counters().into_iter().find(|(k, _)| *k == "last_step_gpu_ns").map(|(_, v)| v as f64 / 1e6)
}

/// The directory of a random-weight model of `preset`, generated on first use.
fn random_model(preset: &str, dir: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    use crate::model::DType;
    use crate::model::gen_model::{GenModelSpec, write_random_model};
    use crate::model::presets::Preset;
    let Some(p) = Preset::find(preset) else { bail!("unknown preset `{preset}`") };
    let dir = dir.map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join(format!("tokenfleet-random-{preset}")));
    if !dir.join("config.json").exists() {
        let spec = GenModelSpec { preset: p, layers: p.layers, seed: 0, dtype: DType::BF16, max_shard_bytes: 5 << 30 };
        write_random_model(&spec, &dir, |_| {})?;
    }
    Ok(dir)
}

/// How the CUDA backend launches decode steps (unread in a build without `cuda`).
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct CudaLaunchOptions {
    /// Replay decode steps from CUDA graphs.
    pub graphs: bool,
    /// Programmatic dependent launch (H100/H200).
    pub programmatic_launch: bool,
    /// With programmatic launch: the GEMVs' L2 weight-prefetch budget in MiB.
    pub gemv_prefetch_mib: usize,
}

/// A backend of `kind` with `kv_blocks` blocks, able to run steps of `max_tokens` tokens,
/// `max_seqs` sequences and `max_context` positions.
#[allow(clippy::too_many_arguments)]
pub fn make_backend(
    kind: &str,
    device: usize,
    launch: CudaLaunchOptions,
    model: &Model,
    kv_blocks: usize,
    max_tokens: usize,
    max_seqs: usize,
    max_context: usize,
) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        "cpu" => Ok(Box::new(CpuBackend::new(model, kv_blocks))),
        "cuda" => {
            cuda_backend(device, launch, model, kv_blocks, crate::backend::cuda_plan::StepCapacity { max_tokens, max_seqs, max_context })
        }
        other => bail!("unknown backend `{other}` (cpu or cuda)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_backend(
    device: usize,
    launch: CudaLaunchOptions,
    model: &Model,
    kv_blocks: usize,
    capacity: crate::backend::cuda_plan::StepCapacity,
) -> anyhow::Result<Box<dyn Backend>> {
    use crate::backend::cuda::{CudaBackend, CudaConfig};
    let cfg = CudaConfig {
        device,
        gpu_memory_fraction: 0.9,
        kv_blocks: Some(kv_blocks),
        capacity,
        tune_gemms: true,
        cuda_graphs: launch.graphs,
        programmatic_launch: launch.programmatic_launch,
        gemv_prefetch_mib: launch.gemv_prefetch_mib,
    };
    let mut backend = CudaBackend::new(model, &cfg, &mut |_| {}).map_err(|e| anyhow::anyhow!("CUDA backend: {e}"))?;
    backend.warm_up().map_err(|e| anyhow::anyhow!("CUDA warm-up: {e}"))?;
    Ok(Box::new(backend))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(
    _device: usize,
    _launch: CudaLaunchOptions,
    _model: &Model,
    _kv_blocks: usize,
    _capacity: crate::backend::cuda_plan::StepCapacity,
) -> anyhow::Result<Box<dyn Backend>> {
    bail!("the CUDA backend is not built into this binary (build with `--features cuda`)")
}

/// Time per engine step (plan + resolve + bookkeeping) with `n` running sequences and a
/// backend that computes nothing.
fn scheduler_overhead(n: usize) -> anyhow::Result<serde_json::Value> {
    let blocks = n * 8 + 64;
    let cfg = SchedulerConfig {
        max_batch_tokens: n.max(1) * 64,
        max_running: n.max(1),
        max_waiting: n.max(1),
        max_context: 4096,
        eos_token_ids: vec![],
        block_hash_seed: 1,
    };
    let mut core = EngineCore::new(Scheduler::new(cfg, blocks), Box::new(SyntheticBackend::new(32000, blocks, Duration::ZERO, vec![])));
    let mut rxs = Vec::new();
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let req = EngineRequest {
            id: format!("r{i}"),
            prompt: prompt(32000, i, 0, 32),
            generated: vec![],
            sampling: SamplingConfig::greedy(),
            seed: 0,
            max_new_tokens: 64,
            min_new_tokens: 0,
            stop_token_ids: vec![],
            ignore_eos: true,
            top_logprobs: 0,
            logprobs: false,
            priority: 0,
            arrival: Instant::now(),
        };
        core.submit(req, tx);
        rxs.push(rx);
    }
    core.step().context("prefill step")?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        core.step().context("decode step")?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        for rx in rxs.iter_mut() {
            while rx.try_recv().is_ok() {}
        }
    }
    Ok(json!({"running": n, "scheduler_step_us": median(times), "backend": "synthetic (no compute)"}))
}
