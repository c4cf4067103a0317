//! Self-test cases of the device sampler against the ported CPU sampler.
//!
//! A drawn id must equal the CPU's, except where the CPU race's two best scores are within
//! 1e-6 (relative): there f64 exp/log rounding on either side may flip the winner. Greedy
//! ids, logprobs and the top-n lists must match (logprobs within 1e-4).

use cudarc::driver::CudaSlice;

use super::sampler_ref::{self, RefSpec};
use super::{CaseResult, Tester, error_row};
use crate::KernelError;
use crate::ops::{SampleArgs, SampleOutputs, SampleParams, SamplePartials, SparseRows};
use crate::shapes::{MAX_TOP_LOGPROBS, SampleDims};

const BIG_VOCAB: usize = 128_256;
const NEAR_TIE: f64 = 1e-6;
const LOGPROB_TOL: f32 = 1e-4;

#[derive(Clone, Copy, PartialEq)]
enum Logits {
    /// N(0, 3²) f32 values: ties are rare.
    Normal,
    /// Rounded to bf16 (many exact ties, like a bf16 lm_head), with the max planted twice.
    Bf16Ties,
}

struct Case {
    name: &'static str,
    vocab: usize,
    rows: usize,
    logits: Logits,
    params: SampleParams,
    penalties: usize,
    suppress: usize,
    timed: bool,
}

pub(crate) fn run(t: &mut Tester<'_>) -> Result<(), KernelError> {
    let d = SampleParams::default();
    let cases = [
        Case {
            name: "greedy top5",
            vocab: BIG_VOCAB,
            rows: 8,
            logits: Logits::Bf16Ties,
            params: SampleParams { temperature: 0.0, top_logprobs: 5, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
        Case {
            name: "greedy penalties suppress",
            vocab: BIG_VOCAB,
            rows: 8,
            logits: Logits::Normal,
            params: SampleParams {
                temperature: 0.0,
                repetition_penalty: 1.3,
                presence_penalty: 0.4,
                frequency_penalty: 0.3,
                top_logprobs: 3,
                ..d
            },
            penalties: 500,
            suppress: 3,
            timed: false,
        },
        // One greedy row over Minitron-4B's 128k vocabulary: the sampler's share of a bs1
        // decode step (gpu-check's step census).
        Case {
            name: "greedy bs1 v128256",
            vocab: BIG_VOCAB,
            rows: 1,
            logits: Logits::Normal,
            params: SampleParams { temperature: 0.0, ..d },
            penalties: 0,
            suppress: 0,
            timed: true,
        },
        Case {
            name: "temp 0.8 bs64",
            vocab: BIG_VOCAB,
            rows: 64,
            logits: Logits::Normal,
            params: SampleParams { temperature: 0.8, ..d },
            penalties: 0,
            suppress: 0,
            timed: true,
        },
        Case {
            name: "top_k 50",
            vocab: BIG_VOCAB,
            rows: 16,
            logits: Logits::Bf16Ties,
            params: SampleParams { top_k: 50, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
        Case {
            name: "top_p 0.9 temp 0.7",
            vocab: BIG_VOCAB,
            rows: 16,
            logits: Logits::Bf16Ties,
            params: SampleParams { top_p: 0.9, temperature: 0.7, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
        Case {
            name: "min_p 0.05 temp 1.2",
            vocab: BIG_VOCAB,
            rows: 16,
            logits: Logits::Normal,
            params: SampleParams { min_p: 0.05, temperature: 1.2, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
        Case {
            name: "combo k200 p0.8 minp pen top20",
            vocab: BIG_VOCAB,
            rows: 16,
            logits: Logits::Bf16Ties,
            params: SampleParams {
                temperature: 0.9,
                top_k: 200,
                top_p: 0.8,
                min_p: 0.02,
                repetition_penalty: 1.1,
                presence_penalty: 0.2,
                frequency_penalty: 0.1,
                top_logprobs: 20,
                ..d
            },
            penalties: 300,
            suppress: 2,
            timed: true,
        },
        Case {
            name: "v1000 ties k10 p0.5",
            vocab: 1000,
            rows: 16,
            logits: Logits::Bf16Ties,
            params: SampleParams { top_k: 10, top_p: 0.5, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
        Case {
            name: "v5000 all but 3 suppressed",
            vocab: 5000,
            rows: 4,
            logits: Logits::Normal,
            params: d,
            penalties: 0,
            suppress: 4997,
            timed: false,
        },
        Case {
            name: "min_p 1.5 (empty set)",
            vocab: 777,
            rows: 2,
            logits: Logits::Normal,
            params: SampleParams { min_p: 1.5, ..d },
            penalties: 0,
            suppress: 0,
            timed: false,
        },
    ];
    for c in &cases {
        let r = sample_case(t, c).unwrap_or_else(|e| error_row("sample", c.name, &e));
        t.push(r);
    }
    Ok(())
}

fn sample_case(t: &mut Tester<'_>, c: &Case) -> Result<CaseResult, KernelError> {
    let (vocab, rows) = (c.vocab, c.rows);
    let stride = vocab + 3; // exercise the row stride
    let mut logits = vec![0.0f32; rows * stride];
    let mut specs = Vec::with_capacity(rows);
    let (mut pen_off, mut pen_ids, mut pen_cnt) = (vec![0i32], Vec::new(), Vec::new());
    let (mut sup_off, mut sup_ids) = (vec![0i32], Vec::new());
    for r in 0..rows {
        let row = &mut logits[r * stride..r * stride + vocab];
        for v in row.iter_mut() {
            *v = t.rng.normal() * 3.0;
        }
        if c.logits == Logits::Bf16Ties {
            for v in row.iter_mut() {
                *v = half::bf16::from_f32(*v).to_f32();
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 0.5;
            let (a, b) = (t.rng.below(vocab), t.rng.below(vocab));
            row[a] = m;
            row[b] = m;
        }
        let params = SampleParams { seed: t.rng.next_u64(), token_index: t.rng.below(5000) as u32, ..c.params };
        // Penalised ids: unique, with output counts 0..3.
        let mut ids: Vec<u32> = (0..vocab as u32).collect();
        t.rng.shuffle(&mut ids);
        let penalties: Vec<(u32, u32)> = ids[..c.penalties.min(vocab)].iter().map(|&i| (i, t.rng.below(4) as u32)).collect();
        // Suppressed ids: for the big case, everything but three ids; otherwise the row's
        // best ids first (so suppression changes the outcome).
        let suppress: Vec<u32> = if c.suppress >= vocab.saturating_sub(3) {
            ids[3..].to_vec()
        } else {
            let mut best: Vec<u32> = sampler_ref::top_n(row, c.suppress).into_iter().map(|p| p.0).collect();
            best.truncate(c.suppress);
            best
        };
        for &(i, n) in &penalties {
            pen_ids.push(i as i32);
            pen_cnt.push(n as i32);
        }
        pen_off.push(pen_ids.len() as i32);
        sup_ids.extend(suppress.iter().map(|i| *i as i32));
        sup_off.push(sup_ids.len() as i32);
        specs.push(RefSpec { params, penalties, suppress });
    }
    let params: Vec<SampleParams> = specs.iter().map(|s| s.params).collect();
    // Zero-length lists still need a device allocation: pad with one unused element.
    let pad = |v: &Vec<i32>| if v.is_empty() { vec![0i32] } else { v.clone() };
    let logits_d = t.up(&logits)?;
    let params_d = t.up(&params)?;
    let (po, pi, pc) = (t.up(&pen_off)?, t.up(&pad(&pen_ids))?, t.up(&pad(&pen_cnt))?);
    let (so, si) = (t.up(&sup_off)?, t.up(&pad(&sup_ids))?);
    let mut scratch = t.up(&vec![f32::NAN; rows * vocab])?;
    let mut tok = t.up(&vec![-7i32; rows])?;
    let mut lp = t.up(&vec![f32::NAN; rows])?;
    let mut top_i = t.up(&vec![-7i32; rows * MAX_TOP_LOGPROBS])?;
    let mut top_l = t.up(&vec![f32::NAN; rows * MAX_TOP_LOGPROBS])?;
    let dims = SampleDims { rows, vocab, logits_stride: stride };
    // Poisoned: tf_sample_stats must write every partial tf_sample reads.
    let np = dims.partials_len();
    let mut parts = (t.up(&vec![f32::NAN; np])?, t.up(&vec![f64::NAN; np])?, t.up(&vec![u64::MAX; np])?);
    let (k, stream) = (t.k, t.stream.clone());
    let (n_pen, n_sup) = (pen_ids.len(), sup_ids.len());
    type Parts = (CudaSlice<f32>, CudaSlice<f64>, CudaSlice<u64>);
    let launch = |scratch: &mut CudaSlice<f32>,
                  parts: &mut Parts,
                  tok: &mut CudaSlice<i32>,
                  lp: &mut CudaSlice<f32>,
                  top_i: &mut CudaSlice<i32>,
                  top_l: &mut CudaSlice<f32>| {
        k.sample(
            &stream,
            SampleArgs {
                dims,
                logits: logits_d.as_view(),
                params: params_d.as_view(),
                penalties: SparseRows { offsets: po.as_view(), ids: pi.slice(..n_pen) },
                penalty_counts: pc.slice(..n_pen),
                suppress: SparseRows { offsets: so.as_view(), ids: si.slice(..n_sup) },
                scratch: scratch.as_view_mut(),
                partials: SamplePartials { max: parts.0.as_view_mut(), sum: parts.1.as_view_mut(), arg: parts.2.as_view_mut() },
                out: SampleOutputs {
                    token: tok.as_view_mut(),
                    logprob: lp.as_view_mut(),
                    top_ids: top_i.as_view_mut(),
                    top_logprobs: top_l.as_view_mut(),
                },
            },
        )
    };
    launch(&mut scratch, &mut parts, &mut tok, &mut lp, &mut top_i, &mut top_l)?;
    t.sync()?;
    let (g_tok, g_lp, g_ti, g_tl) = (t.down(&tok)?, t.down(&lp)?, t.down(&top_i)?, t.down(&top_l)?);
    let time =
        if c.timed { Some(t.time(20, || launch(&mut scratch, &mut parts, &mut tok, &mut lp, &mut top_i, &mut top_l))?) } else { None };

    let (mut mismatches, mut near_ties, mut max_lp_err, mut bad_top) = (0usize, 0usize, 0.0f32, 0usize);
    for r in 0..rows {
        let want = sampler_ref::sample(&logits[r * stride..r * stride + vocab], &specs[r]);
        if g_tok[r] != want.token as i32 {
            if want.race_margin.is_some_and(|m| m <= NEAR_TIE) {
                near_ties += 1;
            } else {
                mismatches += 1;
            }
        } else {
            let e = (g_lp[r] - want.logprob).abs();
            max_lp_err = if e.is_nan() { f32::INFINITY } else { max_lp_err.max(e) };
        }
        for j in 0..MAX_TOP_LOGPROBS {
            let (gi, gl) = (g_ti[r * MAX_TOP_LOGPROBS + j], g_tl[r * MAX_TOP_LOGPROBS + j]);
            let ok = match want.top.get(j) {
                Some(&(id, l)) => gi == id as i32 && (gl - l).abs() <= LOGPROB_TOL,
                None => gi == -1 && gl == f32::NEG_INFINITY,
            };
            bad_top += usize::from(!ok);
        }
    }
    let passed = mismatches == 0 && bad_top == 0 && max_lp_err <= LOGPROB_TOL;
    let bytes = (rows * vocab * 4) as u64;
    Ok(CaseResult {
        op: "sample".into(),
        case: c.name.into(),
        passed,
        rel_l2: None,
        tolerance: LOGPROB_TOL as f64,
        nonfinite: 0,
        detail: format!(
            "rows {rows} vocab {vocab}: id mismatches {mismatches}, near-ties {near_ties}, bad top-n entries {bad_top}, max logprob err {max_lp_err:.2e}"
        ),
        time_us: time,
        bytes,
        flops: 0,
        achieved_gbps: time.map(|us| bytes as f64 / (us * 1e3)),
        achieved_tflops: None,
    })
}
