//! Greedy generation parity with Hugging Face transformers (float32), against the goldens
//! in tests/fixtures/goldens/ made by tests/reference/make_goldens.py.
//!
//! The rule (issue 2, part 6): per prompt, greedy ids must be identical up to the first
//! step whose golden top-1/top-2 logit margin is < 0.02 (that step and the rest of the
//! prompt are not compared: the choice there is legitimately ambiguous); on every compared
//! step the top-1 logprob may differ by at most 1e-3 for the random bf16 checkpoints and
//! 1e-2 for SmolLM2 (f16 weights, DESIGN.md §3). At least 80% of all golden steps must be
//! compared, so the test cannot pass by skipping. On compared steps the alternatives are
//! checked too: every golden top-5 id that is clearly inside the top 5 (more than 0.02 above
//! the golden 5th) must be among ours, and (random models) every id both lists hold must
//! agree within the same tolerance. For SmolLM2 the golden also holds transformers' numbers
//! for the same weights rounded to f16 (what `convert-gguf` writes), and our top-1 and
//! alternatives must match those within 1e-3.
//!
//! The random models are regenerated with the worker library (`write_random_model`) into
//! `<target>/test-models/`, reused while their config and weights' sha256 match the golden.
//! SmolLM2 comes from `$TOKENFLEET_SMOLLM2_DIR` or `models/smollm2-135m`
//! (scripts/fetch-smollm2.sh); the test fails, never skips, when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Deserialize;
use tokenfleet_proto::v1;
use tokenfleet_tests::parity;
use tokenfleet_worker::backend::cpu::CpuBackend;
use tokenfleet_worker::engine::sampler::Sampled;
use tokenfleet_worker::model::gen_model::{GenModelSpec, spec_config, write_random_model};
use tokenfleet_worker::model::presets::Preset;
use tokenfleet_worker::model::{DType, Model};
use tokenfleet_worker::offline::{self, OfflineOutput};

const NEAR_TIE: f32 = 0.02;
const MIN_COMPARED_FRACTION: f64 = 0.8;
/// Random bf16 checkpoints: transformers upcasts the very same weights.
const TOL_BF16: Tolerance = Tolerance { top1: 1e-3, alternatives: Some(1e-3), f16_reference: None };
/// SmolLM2: the golden ran on the GGUF's f32 dequantisation, we run its f16 rounding; that
/// rounding alone moves top-1 logprobs by up to 3e-3 and alternatives by up to 1.2e-2
/// (measured in transformers itself), so alternatives are checked against the golden's f16
/// reference (transformers on the same weights rounded to f16) at 1e-3 instead.
const TOL_SMOLLM2: Tolerance = Tolerance { top1: 1e-2, alternatives: None, f16_reference: Some(1e-3) };

/// Tolerances on logprobs for the compared steps.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    /// Top-1 logprob vs the float32 golden.
    top1: f32,
    /// Alternatives vs the float32 golden (None: only that clear top-5 members are present).
    alternatives: Option<f32>,
    /// Top-1 and alternatives vs the golden's f16-weights reference, where it has one.
    f16_reference: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct Golden {
    name: String,
    model: GoldenModel,
    prompts: Vec<GoldenPrompt>,
}

#[derive(Debug, Deserialize)]
struct GoldenModel {
    kind: String,
    preset: Option<String>,
    seed: Option<u64>,
    layers: Option<usize>,
    dtype: Option<String>,
    #[serde(rename = "model.safetensors sha256")]
    weights_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GoldenPrompt {
    name: String,
    text: Option<String>,
    ids: Vec<u32>,
    steps: Vec<GoldenStep>,
    /// transformers' decode of the greedy ids (SmolLM2 only).
    completion: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GoldenStep {
    id: u32,
    logprob: f32,
    margin: f32,
    top: Vec<(u32, f32)>,
    /// transformers with the weights rounded to f16, teacher-forced along the golden ids.
    f16_logprob: Option<f32>,
    f16_top: Option<Vec<(u32, f32)>>,
}

/// What one golden file's comparison found.
#[derive(Debug, Default)]
struct Report {
    steps: usize,
    compared: usize,
    near_ties: usize,
    alternatives_compared: usize,
    max_top1_delta: f32,
    max_alternative_delta: f32,
    f16_compared: usize,
    max_f16_delta: f32,
    failures: Vec<String>,
}

fn load_golden(name: &str) -> Golden {
    let g: Golden = parity::read_fixture(&format!("goldens/{name}.json")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(g.name, name);
    assert!(!g.prompts.is_empty(), "{name}: golden has no prompts");
    g
}

fn greedy(model: &Model, prompt: &[u32], steps: usize) -> OfflineOutput {
    let request = v1::WorkerGenerateRequest {
        request_id: "parity".into(),
        prompt_ids: prompt.to_vec(),
        sampling: Some(v1::SamplingParams { temperature: Some(0.0), seed: Some(0), ..Default::default() }),
        stopping: Some(v1::StoppingCriteria { max_new_tokens: steps as u32, ignore_eos: true, ..Default::default() }),
        top_logprobs: 5,
        logprobs: true,
        ..Default::default()
    };
    let backend = CpuBackend::new(model, offline::blocks_for(prompt.len() + steps).max(1));
    offline::generate(model, Box::new(backend), &request, 0).unwrap_or_else(|e| panic!("generation failed: {e}"))
}

/// Compares every prompt of `golden` under the rule; returns the figures and the failures.
fn compare(model: &Model, golden: &Golden, tol: Tolerance) -> (Report, Vec<OfflineOutput>) {
    let mut r = Report::default();
    let mut outputs = Vec::new();
    for p in &golden.prompts {
        r.steps += p.steps.len();
        let out = greedy(model, &p.ids, p.steps.len());
        let ours = &out.tokens;
        let ctx = |i: usize| format!("{} prompt `{}` ({} tokens) step {i}", golden.name, p.name, p.ids.len());
        if ours.len() != p.steps.len() {
            r.failures.push(format!("{}: generated {} tokens, golden has {}", ctx(0), ours.len(), p.steps.len()));
        }
        for (i, (g, o)) in p.steps.iter().zip(ours).enumerate() {
            if g.margin < NEAR_TIE {
                r.near_ties += 1;
                break;
            }
            r.compared += 1;
            if o.token != g.id {
                let ours_ids: Vec<u32> = ours.iter().map(|s| s.token).collect();
                let golden_ids: Vec<u32> = p.steps.iter().map(|s| s.id).collect();
                r.failures.push(format!(
                    "{}: greedy id {} != golden {} (golden margin {:.4}; our top {:?}, golden top {:?})\n  ours:   {ours_ids:?}\n  golden: {golden_ids:?}",
                    ctx(i),
                    o.token,
                    g.id,
                    g.margin,
                    o.top,
                    g.top
                ));
                break;
            }
            let d = (o.logprob - g.logprob).abs();
            r.max_top1_delta = r.max_top1_delta.max(d);
            if d > tol.top1 || !d.is_finite() {
                r.failures.push(format!(
                    "{}: top-1 logprob {} vs golden {} (|Δ| {d:.2e} > {:.0e})",
                    ctx(i),
                    o.logprob,
                    g.logprob,
                    tol.top1
                ));
            }
            check_alternatives(&g.top, o, tol.alternatives, &mut r, &ctx(i));
            if let Some(t) = tol.f16_reference {
                check_f16_reference(g, o, t, &mut r, &ctx(i));
            }
        }
        outputs.push(out);
    }
    (r, outputs)
}

/// Every golden top-5 id clearly inside the top 5 (more than 0.02 above the golden 5th)
/// must be among ours; with `tol`, the logprobs of ids both lists hold must agree.
fn check_alternatives(golden_top: &[(u32, f32)], o: &Sampled, tol: Option<f32>, r: &mut Report, ctx: &str) {
    if o.top.len() != golden_top.len() {
        r.failures.push(format!("{ctx}: {} alternatives, golden has {}", o.top.len(), golden_top.len()));
        return;
    }
    let fifth = golden_top.last().map_or(f32::NEG_INFINITY, |t| t.1);
    for &(id, glp) in golden_top {
        match o.top.iter().find(|t| t.0 == id) {
            Some(&(_, olp)) => {
                let d = (olp - glp).abs();
                r.alternatives_compared += 1;
                r.max_alternative_delta = r.max_alternative_delta.max(d);
                if let Some(tol) = tol
                    && (d > tol || !d.is_finite())
                {
                    r.failures.push(format!("{ctx}: logprob of alternative {id} is {olp}, golden {glp} (|Δ| {d:.2e} > {tol:.0e})"));
                }
            }
            None if glp > fifth + NEAR_TIE => {
                r.failures.push(format!("{ctx}: golden alternative {id} ({glp}) is missing from our top {:?}", o.top));
            }
            None => {}
        }
    }
}

/// Ours against transformers run on the same f16 weights: top-1 and every shared alternative.
fn check_f16_reference(g: &GoldenStep, o: &Sampled, tol: f32, r: &mut Report, ctx: &str) {
    let (Some(lp), Some(top)) = (g.f16_logprob, g.f16_top.as_ref()) else {
        r.failures.push(format!("{ctx}: golden step has no f16 reference"));
        return;
    };
    let mut check = |what: String, ours: f32, reference: f32| {
        let d = (ours - reference).abs();
        r.f16_compared += 1;
        r.max_f16_delta = r.max_f16_delta.max(d);
        if d > tol || !d.is_finite() {
            r.failures.push(format!("{ctx}: {what} logprob {ours} vs f16 reference {reference} (|Δ| {d:.2e} > {tol:.0e})"));
        }
    };
    check(format!("top-1 {}", o.token), o.logprob, lp);
    for &(id, reference) in top {
        if let Some(&(_, ours)) = o.top.iter().find(|t| t.0 == id) {
            check(format!("alternative {id}"), ours, reference);
        }
    }
}

fn finish(golden: &Golden, r: &Report, tol: Tolerance, started: Instant) {
    let frac = r.compared as f64 / r.steps.max(1) as f64;
    eprintln!(
        "parity {}: {} prompts, {}/{} steps compared ({:.1}%), {} near-ties, max |Δ| top-1 logprob {:.2e}, \
         max |Δ| alternatives {:.2e} over {}, max |Δ| vs f16 reference {:.2e} over {} ({tol:?}), {:.1} s",
        golden.name,
        golden.prompts.len(),
        r.compared,
        r.steps,
        100.0 * frac,
        r.near_ties,
        r.max_top1_delta,
        r.max_alternative_delta,
        r.alternatives_compared,
        r.max_f16_delta,
        r.f16_compared,
        started.elapsed().as_secs_f64()
    );
    assert!(r.failures.is_empty(), "{}: {} parity failures:\n{}", golden.name, r.failures.len(), r.failures.join("\n"));
    assert!(r.steps > 0);
    assert!(
        frac >= MIN_COMPARED_FRACTION,
        "{}: only {}/{} golden steps were compared ({:.1}% < {:.0}%): too many near-ties in the goldens",
        golden.name,
        r.compared,
        r.steps,
        100.0 * frac,
        100.0 * MIN_COMPARED_FRACTION
    );
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The golden's random model, regenerated with the library into `<target>/test-models/`
/// (reused while config.json and the weights' sha256 still match).
fn random_model(g: &GoldenModel) -> Model {
    assert_eq!(g.kind, "gen-model");
    let preset_name = g.preset.as_deref().expect("golden model has no preset");
    let preset = Preset::find(preset_name).unwrap_or_else(|| panic!("unknown preset `{preset_name}`"));
    let dtype_name = g.dtype.as_deref().expect("golden model has no dtype");
    let dtype = DType::parse(dtype_name).unwrap_or_else(|| panic!("unknown dtype `{dtype_name}`"));
    let seed = g.seed.expect("golden model has no seed");
    let want_sha = g.weights_sha256.as_deref().expect("golden model has no weights sha256");
    let spec = GenModelSpec { preset, layers: g.layers.unwrap_or(preset.layers), seed, dtype, max_shard_bytes: u64::MAX };

    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    let dir = target.join("test-models").join(format!("{preset_name}-s{seed}-l{}-{dtype_name}", spec.layers));
    let (want_cfg, _) = spec_config(&spec, &dir).unwrap_or_else(|e| panic!("{e}"));
    let current = || -> bool {
        let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
        let cfg_ok = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|c| c == want_cfg);
        cfg_ok && dir.join("model.safetensors").is_file() && sha256_file(&dir.join("model.safetensors")) == want_sha
    };
    if !current() {
        // Write privately and rename, so parallel tests never read half a model.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmp = dir.with_extension(format!("tmp{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&tmp);
        write_random_model(&spec, &tmp, |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let got = sha256_file(&tmp.join("model.safetensors"));
        if got != want_sha {
            let _ = std::fs::remove_dir_all(&tmp);
            panic!(
                "gen-model --preset {preset_name} --seed {seed} --dtype {dtype_name} now writes weights with sha256 {got}, but the \
                 goldens were made from {want_sha}: the random init changed. If that was intended, remake the goldens with \
                 tests/reference/make_goldens.py"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test got there first; its copy is checked below.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(current(), "{}: regenerated model does not match the golden", dir.display());
    }
    Model::load(&dir).unwrap_or_else(|e| panic!("{e}"))
}

fn random_model_parity(name: &str) {
    let started = Instant::now();
    let golden = load_golden(name);
    let model = random_model(&golden.model);
    assert!(golden.prompts.iter().any(|p| p.ids.len() > 300), "{name}: no prompt longer than 300 tokens");
    let (report, _) = compare(&model, &golden, TOL_BF16);
    finish(&golden, &report, TOL_BF16, started);
}

/// `tiny`: Minitron's traits (head_dim 64 ≠ 192/6, GQA 3:1, llama3 rope, untied head).
#[test]
fn tiny_matches_transformers() {
    random_model_parity("tiny");
}

/// `tiny-tied`: tied embeddings, plain rope.
#[test]
fn tiny_tied_matches_transformers() {
    random_model_parity("tiny-tied");
}

/// SmolLM2-135M-Instruct from the GGUF, converted by `convert-gguf` (f16).
#[test]
fn smollm2_matches_transformers() {
    let started = Instant::now();
    let golden = load_golden("smollm2");
    assert_eq!(golden.model.kind, "gguf");
    let dir = parity::smollm2_dir().unwrap_or_else(|e| panic!("{e:#}"));
    let model = Model::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let c = &model.config;
    assert_eq!(
        (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size, c.tie_word_embeddings),
        (576, 30, 9, 3, 49152, true),
        "{} does not hold SmolLM2-135M",
        dir.display()
    );
    // The prompts were tokenized by transformers; ours must give the same ids.
    let mut texts = 0;
    for p in &golden.prompts {
        if let Some(text) = &p.text {
            let ids = model.tokenizer.encode(text, true).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ids, p.ids, "prompt `{}` tokenizes differently from transformers", p.name);
            texts += 1;
        }
    }
    assert_eq!(texts, golden.prompts.len());

    let (report, outputs) = compare(&model, &golden, TOL_SMOLLM2);
    // Where every step matched, our detokenized text equals transformers' decode.
    let mut full_matches = 0;
    for (p, out) in golden.prompts.iter().zip(&outputs) {
        let ids = out.token_ids();
        if ids == p.steps.iter().map(|s| s.id).collect::<Vec<_>>() {
            let text = model.tokenizer.decode(&ids, true).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Some(&text), p.completion.as_ref(), "prompt `{}`: decoded text differs from transformers'", p.name);
            full_matches += 1;
        }
        if p.name == "capital" {
            let text = model.tokenizer.decode(&ids, true).unwrap_or_else(|e| panic!("{e}"));
            assert!(text.starts_with(" Paris"), "\"The capital of France is\" continued with {text:?}, not \" Paris\"");
            eprintln!("parity smollm2: \"The capital of France is\" →{text:?}");
        }
    }
    assert!(golden.prompts.iter().any(|p| p.name == "capital"), "golden lacks the capital prompt");
    eprintln!("parity smollm2: {full_matches}/{} prompts identical over all their steps", golden.prompts.len());
    finish(&golden, &report, TOL_SMOLLM2, started);
}
