//! `gpu-selftest`: the GPU checks, built into the release binary because the GPU machine
//! has no Rust toolchain (GPU-CHECK.md). Tiers: `kernels` (every kernel vs a CPU
//! reference), `parity` (the CUDA backend vs the CPU backend; 16 concurrent requests vs
//! each alone), `bandwidth` (device-to-device copy rate, the decode floor's denominator).
//! Each writes JSON to `--out`; a failed check exits non-zero.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tokenfleet_proto::v1;

use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{CudaBackend, CudaConfig};
use crate::backend::cuda_plan::StepCapacity;
use crate::engine::request::validate_worker_request;
use crate::engine::sampler::Sampled;
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::{EngineCore, RequestOutput, Scheduler};
use crate::model::Model;
use crate::offline::model_limits;

#[derive(Debug, Args)]
pub struct GpuSelftestArgs {
    #[command(subcommand)]
    tier: Tier,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, global = true)]
    device: usize,
    /// Where to write the JSON report.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Tier {
    /// Every kernel against its CPU reference on random inputs.
    Kernels,
    /// The CUDA backend against the CPU backend on the given models.
    Parity {
        /// Model directory; repeatable.
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// Tokens generated per prompt.
        #[arg(long, default_value_t = 24)]
        steps: u32,
    },
    /// Device-to-device copy bandwidth (GB/s).
    Bandwidth,
}

pub fn run(a: GpuSelftestArgs) -> anyhow::Result<()> {
    let require = std::env::var("TOKENFLEET_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if let Err(e) = crate::backend::cuda::probe(a.device) {
        if require {
            bail!("TOKENFLEET_REQUIRE_GPU=1 but no GPU is usable: {e}");
        }
        writeln!(std::io::stdout().lock(), "SKIP: no GPU ({e})")?;
        return Ok(());
    }
    let (report, ok) = match a.tier {
        Tier::Kernels => kernels(a.device)?,
        Tier::Parity { models, steps } => parity(a.device, &models, steps)?,
        Tier::Bandwidth => (bandwidth(a.device)?, true),
    };
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.out {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    writeln!(std::io::stdout().lock(), "{text}")?;
    if !ok {
        bail!("GPU self-test failed (see the report)");
    }
    Ok(())
}

fn kernels(device: usize) -> anyhow::Result<(serde_json::Value, bool)> {
    let report = tokenfleet_kernels::selftest::run_all(device).map_err(|e| anyhow::anyhow!("kernel self-test: {e}"))?;
    eprintln!("{}", report.table());
    let ok = report.all_passed();
    Ok((serde_json::to_value(&report)?, ok))
}

/// Whether the device's kernel image may be launched programmatically.
fn programmatic_launch_supported(device: usize) -> anyhow::Result<bool> {
    let ctx = cudarc::driver::CudaContext::new(device).map_err(|e| anyhow::anyhow!("CUDA context: {e:?}"))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| anyhow::anyhow!("compute capability: {e:?}"))?;
    Ok(tokenfleet_kernels::module::ImageKind::for_compute_capability(major, minor).is_ok_and(|i| i.supports_programmatic_launch()))
}

fn bandwidth(device: usize) -> anyhow::Result<serde_json::Value> {
    let (ctx, _k) = tokenfleet_kernels::Kernels::open(device).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s = ctx.default_stream();
    let n = 256usize << 20; // 1 GiB of f32
    let src = s.alloc_zeros::<f32>(n).context("alloc")?;
    let mut dst = s.alloc_zeros::<f32>(n).context("alloc")?;
    for _ in 0..3 {
        s.memcpy_dtod(&src, &mut dst).context("copy")?;
    }
    s.synchronize().context("sync")?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        s.memcpy_dtod(&src, &mut dst).context("copy")?;
    }
    s.synchronize().context("sync")?;
    let secs = t.elapsed().as_secs_f64();
    // A copy reads and writes every byte.
    let gbs = (2 * 4 * n * reps) as f64 / secs / 1e9;
    Ok(json!({"d2d_copy_gb_per_s": gbs, "bytes_per_copy": 4 * n, "copies": reps, "device": ctx.name().unwrap_or_default()}))
}

/// Deterministic Llama-vocabulary prompts of several lengths.
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    [9usize, 17, 64, 300]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut x = 0x2545_F491u32.wrapping_mul(i as u32 + 1);
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    1000 + x % (vocab - 2000)
                })
                .collect()
        })
        .collect()
}

fn core_for(model: &Model, backend: Box<dyn Backend>, max_running: usize) -> EngineCore {
    let l = model_limits(model);
    let blocks = backend.kv_blocks();
    let cfg = SchedulerConfig {
        max_batch_tokens: 4096,
        max_running,
        max_waiting: 64,
        max_context: l.max_context.min(blocks * 16),
        eos_token_ids: l.eos_token_ids,
        block_hash_seed: model.block_hash_seed(),
    };
    EngineCore::new(Scheduler::new(cfg, blocks), backend)
}

/// Runs requests together to the end; outputs by id.
fn run_requests(core: &mut EngineCore, model: &Model, reqs: &[v1::WorkerGenerateRequest]) -> anyhow::Result<HashMap<String, Vec<Sampled>>> {
    let limits = model_limits(model);
    let mut rxs = Vec::new();
    for r in reqs {
        let req = validate_worker_request(r, &limits, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        core.submit(req, tx);
        rxs.push((r.request_id.clone(), rx, Vec::new(), false));
    }
    while rxs.iter().any(|r| !r.3) {
        core.step().map_err(|e| anyhow::anyhow!("step: {e}"))?;
        for (id, rx, toks, done) in rxs.iter_mut() {
            while let Ok(o) = rx.try_recv() {
                match o {
                    RequestOutput::Token { sampled, .. } => toks.push(sampled),
                    RequestOutput::Finished { .. } => *done = true,
                    RequestOutput::Rejected(e) => bail!("{id}: refused: {e}"),
                    RequestOutput::Failed(e) => bail!("{id}: {e}"),
                }
            }
        }
    }
    // With overlap, a step planned for a sequence that then stopped may still be in flight.
    while core.has_work() {
        core.step().map_err(|e| anyhow::anyhow!("step: {e}"))?;
    }
    Ok(rxs.into_iter().map(|(id, _, t, _)| (id, t)).collect())
}

fn greedy(id: String, prompt: Vec<u32>, steps: u32, seed: Option<u64>) -> v1::WorkerGenerateRequest {
    let temperature = if seed.is_some() { 0.8 } else { 0.0 };
    v1::WorkerGenerateRequest {
        request_id: id,
        prompt_ids: prompt,
        sampling: Some(v1::SamplingParams { temperature: Some(temperature), seed, ..Default::default() }),
        stopping: Some(v1::StoppingCriteria { max_new_tokens: steps, ignore_eos: true, ..Default::default() }),
        top_logprobs: 5,
        logprobs: true,
        ..Default::default()
    }
}

/// Compares `got` against `reference` by the parity rule: ids equal until the reference's
/// top-1/top-2 margin drops below `tie`; top-1 logprob within `tol` on compared steps.
fn compare(reference: &[Sampled], got: &[Sampled], tie: f32, tol: f32) -> serde_json::Value {
    let mut compared = 0;
    let mut max_delta = 0f32;
    let mut failure = None;
    let mut stopped_at_tie = None;
    for (i, (r, g)) in reference.iter().zip(got).enumerate() {
        let margin = match (r.top.first(), r.top.get(1)) {
            (Some(a), Some(b)) => a.1 - b.1,
            _ => f32::INFINITY,
        };
        let (Some(rt), Some(gt)) = (r.top.first(), g.top.first()) else { break };
        let delta = (rt.1 - gt.1).abs();
        if r.token != g.token {
            if margin < tie {
                stopped_at_tie = Some(i);
            } else {
                failure = Some(format!("step {i}: token {} vs reference {} (margin {margin})", g.token, r.token));
            }
            break;
        }
        compared += 1;
        max_delta = max_delta.max(delta);
        if delta > tol || delta.is_nan() {
            failure = Some(format!("step {i}: top-1 logprob differs by {delta}"));
            break;
        }
        if margin < tie {
            stopped_at_tie = Some(i);
            break;
        }
    }
    json!({"compared_steps": compared, "max_top1_delta": max_delta, "stopped_at_near_tie": stopped_at_tie, "failure": failure})
}

fn parity(device: usize, models: &[PathBuf], steps: u32) -> anyhow::Result<(serde_json::Value, bool)> {
    let mut out = Vec::new();
    let mut ok = true;
    for dir in models {
        let model = Model::load(dir)?;
        let vocab = model.config.vocab_size as u32;
        let ps = prompts(vocab);
        let reqs: Vec<_> = ps.iter().enumerate().map(|(i, p)| greedy(format!("p{i}"), p.clone(), steps, None)).collect();
        let blocks = 64 * 40;
        let mut cpu = core_for(&model, Box::new(CpuBackend::new(&model, blocks)), 8);
        let cap = StepCapacity { max_tokens: 4096, max_seqs: 64, max_context: 640 };
        let t = Instant::now();
        let cuda_cfg = |cuda_graphs| CudaConfig {
            device,
            gpu_memory_fraction: 0.9,
            kv_blocks: Some(blocks),
            capacity: cap,
            tune_gemms: true,
            cuda_graphs,
            programmatic_launch: false,
            gemv_prefetch_mib: 16,
        };
        let cuda = CudaBackend::new(&model, &cuda_cfg(false), &mut |_| {}).map_err(|e| anyhow::anyhow!("CUDA backend: {e}"))?;
        let load_s = t.elapsed().as_secs_f64();
        let mut gpu = core_for(&model, Box::new(cuda), 64);
        // The same backend replaying decode steps from CUDA graphs (padded batches, bucketed
        // split-KV plans): it must give what the eager launches give.
        let mut graphed =
            CudaBackend::new(&model, &cuda_cfg(true), &mut |_| {}).map_err(|e| anyhow::anyhow!("CUDA backend (graphs): {e}"))?;
        // As `serve` does: every decode bucket tuned and captured before the first request.
        graphed.warm_up().map_err(|e| anyhow::anyhow!("CUDA warm-up (graphs): {e}"))?;
        let mut gpu_graphs = core_for(&model, Box::new(graphed), 64);
        let mut cases = Vec::new();
        let mut cuda_outputs = Vec::new();
        for r in &reqs {
            let c = run_requests(&mut cpu, &model, std::slice::from_ref(r))?;
            let g = run_requests(&mut gpu, &model, std::slice::from_ref(r))?;
            let gg = run_requests(&mut gpu_graphs, &model, std::slice::from_ref(r))?;
            let (c, g, gg) = (&c[&r.request_id], &g[&r.request_id], &gg[&r.request_id]);
            let cmp = compare(c, g, 0.02, 2e-2);
            let graphs_vs_eager = compare(g, gg, 0.02, 2e-2);
            let graphs_vs_cpu = compare(c, gg, 0.02, 2e-2);
            ok &= cmp["failure"].is_null() && graphs_vs_eager["failure"].is_null();
            cases.push(json!({"prompt_len": r.prompt_ids.len(), "vs_cpu": cmp, "graphs_vs_eager": graphs_vs_eager, "graphs_vs_cpu": graphs_vs_cpu}));
            cuda_outputs.push(json!({
                "prompt_ids": r.prompt_ids,
                "token_ids": g.iter().map(|s| s.token).collect::<Vec<_>>(),
                "top_logprobs": g.iter().map(|s| s.top.iter().map(|(i, l)| json!([i, l])).collect::<Vec<_>>()).collect::<Vec<_>>(),
            }));
        }
        // 16 concurrent requests vs each alone, on the GPU.
        let long = &ps[ps.len() - 1];
        let batch: Vec<_> = (0..16usize).map(|i| greedy(format!("b{i}"), long[7 * i..7 * i + 8 + i].to_vec(), steps, None)).collect();
        let together = run_requests(&mut gpu, &model, &batch)?;
        let together_graphs = run_requests(&mut gpu_graphs, &model, &batch)?;
        // The same 16 with each step planned while the previous one runs, its tokens fed
        // from the previous step's samples on the device (`--overlap-steps true`). Same
        // kernels and batches, so the outputs should be bitwise those of synchronous steps
        // (a request that stops on EOS adds one wasted row, which may change GEMM shapes).
        let mut gpu_overlap = gpu_graphs.with_overlap(true);
        let together_overlap = run_requests(&mut gpu_overlap, &model, &batch)?;
        let overlap_bitwise = together_overlap == together_graphs;
        let overlap_cases: Vec<_> =
            batch.iter().map(|r| compare(&together_graphs[&r.request_id], &together_overlap[&r.request_id], 0.02, 2e-2)).collect();
        ok &= overlap_cases.iter().all(|c| c["failure"].is_null());
        let planned_ahead = gpu_overlap.planned_ahead;
        // The same 16 through graphs captured with programmatic dependent launch (H100/H200
        // only): the kernels only start earlier, each waits for its predecessor before it
        // touches memory, so the outputs match ordinary launches — bitwise, unless this second
        // backend's GEMM tune timed its way to other cuBLASLt algorithms (reported). A race
        // would show as outputs outside the tolerance, or as a difference between two runs.
        let pdl = if programmatic_launch_supported(device)? {
            let cfg = CudaConfig { programmatic_launch: true, ..cuda_cfg(true) };
            let mut b =
                CudaBackend::new(&model, &cfg, &mut |_| {}).map_err(|e| anyhow::anyhow!("CUDA backend (programmatic launch): {e}"))?;
            b.warm_up().map_err(|e| anyhow::anyhow!("CUDA warm-up (programmatic launch): {e}"))?;
            let mut core = core_for(&model, Box::new(b), 64);
            let first = run_requests(&mut core, &model, &batch)?;
            let again = run_requests(&mut core, &model, &batch)?;
            let cases: Vec<_> = batch.iter().map(|r| compare(&together_graphs[&r.request_id], &first[&r.request_id], 0.02, 2e-2)).collect();
            ok &= cases.iter().all(|c| c["failure"].is_null()) && first == again;
            json!({"bitwise_identical": first == together_graphs, "repeat_bitwise_identical": first == again, "cases": cases})
        } else {
            json!({"skipped": "programmatic dependent launch needs the sm_90a image (compute capability 9.0)"})
        };
        let mut batch_cases = Vec::new();
        let mut batch_graph_cases = Vec::new();
        for r in &batch {
            let alone = run_requests(&mut gpu, &model, std::slice::from_ref(r))?;
            // The rule here is the tokens (up to near-ties): batching changes GEMM shapes and
            // so the rounding; the logprob drift is reported, not judged.
            let cmp = compare(&alone[&r.request_id], &together[&r.request_id], 0.02, f32::INFINITY);
            let cmp_graphs = compare(&alone[&r.request_id], &together_graphs[&r.request_id], 0.02, f32::INFINITY);
            ok &= cmp["failure"].is_null() && cmp_graphs["failure"].is_null();
            batch_cases.push(cmp);
            batch_graph_cases.push(cmp_graphs);
        }
        out.push(json!({
            "model": dir.display().to_string(), "config": {"hidden": model.config.hidden_size, "layers": model.config.num_layers,
            "head_dim": model.config.head_dim, "tied": model.config.tie_word_embeddings}, "cuda_load_s": load_s,
            "cuda_vs_cpu": cases, "batch16_vs_alone": batch_cases, "batch16_graphs_vs_alone_eager": batch_graph_cases,
            "batch16_overlap_vs_synchronous": {"bitwise_identical": overlap_bitwise, "steps_planned_ahead": planned_ahead, "cases": overlap_cases},
            "batch16_programmatic_launch_vs_ordinary": pdl,
            "cuda_outputs": cuda_outputs,
        }));
    }
    Ok((json!({"tier": "parity", "models": out, "passed": ok}), ok))
}
