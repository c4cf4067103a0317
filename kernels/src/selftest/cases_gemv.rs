//! Self-test cases of the small-batch GEMVs (row pairs on the CUDA cores, 16-row tiles on the
//! tensor cores): every epilogue against an f64 reference, at sizes that exercise the
//! unrolled body, the tail, partial spans and a partial last block, plus the Minitron-4B
//! decode projections (timed: these are the shapes the backend tunes for).

use half::bf16;

use super::reference;
use super::{BF16_TOL, CaseResult, Tester, bf, compare, error_row, row};
use crate::KernelError;
use crate::ops::{GemvArgs, GemvOut};
use crate::shapes::{GemvDims, GemvEpilogue, GemvKernel};

const TIMED: usize = 50;
/// f32 outputs: only the f32 accumulation differs from the f64 reference.
const F32_TOL: f64 = 1e-4;

pub(crate) fn run(t: &mut Tester<'_>) -> Result<(), KernelError> {
    use GemvEpilogue::*;
    use GemvKernel::*;
    // (kernel, t, n, k, epilogue). Row pairs: odd pair counts leave the last block partly
    // empty; k = 1544 and 584 are not multiples of the unrolled stride (32 lanes × 4 chunks ×
    // 8), so the tail runs. Tensor cores: every row count from both MMA n-tiles' edges (1, 5,
    // 8, 9, 12, 13, 16), k = 1544 / 584 / 520 / 1032 end inside a 32-element span, k = 8 is a
    // single partial span, and 49 / 17 / 9 tiles leave the 8 warps' groups uneven.
    let cases = [
        (RowPairs, 1, 770, 1544, Bf16),
        (RowPairs, 3, 770, 1544, F32),
        (RowPairs, 5, 258, 584, Bf16),
        (RowPairs, 8, 2000, 520, SiluMul),
        (RowPairs, 2, 34, 8, F32),
        (RowPairs, 7, 130, 1032, SiluMul),
        (Mma, 1, 784, 1544, Bf16),
        (Mma, 16, 784, 1544, F32),
        (Mma, 9, 272, 584, Bf16),
        (Mma, 12, 2016, 520, SiluMul),
        (Mma, 16, 32, 8, F32),
        (Mma, 13, 144, 1032, SiluMul),
        (Mma, 5, 784, 3080, Bf16),
        (Mma, 8, 272, 1032, F32),
        // Minitron-4B decode shapes: QKV, o_proj, gate|up (fused), down, and an lm_head slice
        // (the full 128k × 3072 head would make the host reference the slow part).
        (RowPairs, 1, 6144, 3072, Bf16),
        (RowPairs, 1, 3072, 4096, Bf16),
        (RowPairs, 1, 18_432, 3072, SiluMul),
        (RowPairs, 1, 3072, 9216, Bf16),
        (RowPairs, 1, 32_768, 3072, F32),
        (RowPairs, 4, 18_432, 3072, SiluMul),
        (RowPairs, 8, 3072, 9216, Bf16),
        (Mma, 1, 6144, 3072, Bf16),
        (Mma, 1, 3072, 4096, Bf16),
        (Mma, 1, 18_432, 3072, SiluMul),
        (Mma, 1, 3072, 9216, Bf16),
        (Mma, 1, 32_768, 3072, F32),
        (Mma, 8, 3072, 9216, Bf16),
        (Mma, 16, 6144, 3072, Bf16),
        (Mma, 16, 18_432, 3072, SiluMul),
        (Mma, 16, 3072, 9216, Bf16),
        (Mma, 16, 8192, 3072, F32),
    ];
    for (kernel, rows, n, k, epilogue) in cases {
        let d = GemvDims { t: rows, n, k, epilogue, kernel };
        let r = gemv_case(t, d);
        t.push(r.unwrap_or_else(|e| error_row(op_name(kernel), &case_name(&d), &e)));
    }
    // The decode shapes again with programmatic launch and the L2 weight prefetch on (sm_90a
    // only): the prefetch is a hint and must leave every output as it was; a prefetch that
    // left its row would fault here. Timed too: the in-graph launches now overlap.
    t.with_programmatic_launch(|t| {
        t.k.set_gemv_prefetch(PREFETCH_BUDGET);
        for (kernel, rows, n, k, epilogue) in
            [(RowPairs, 1, 6144, 3072, Bf16), (RowPairs, 1, 18_432, 3072, SiluMul), (Mma, 16, 3072, 9216, Bf16), (Mma, 16, 8192, 3072, F32)]
        {
            let d = GemvDims { t: rows, n, k, epilogue, kernel };
            let name = format!("{} programmatic+prefetch", case_name(&d));
            let r = gemv_case(t, d).map(|row| row.named(&name));
            t.push(r.unwrap_or_else(|e| error_row(op_name(kernel), &name, &e)));
        }
        t.k.set_gemv_prefetch(0);
    })
}

/// One case in the output element its epilogue writes.
fn gemv_case(t: &mut Tester<'_>, d: GemvDims) -> Result<CaseResult, KernelError> {
    match d.epilogue {
        GemvEpilogue::F32 => gemv::<f32>(t, d),
        _ => gemv::<bf16>(t, d),
    }
}

/// The prefetch budget of the programmatic-launch cases (the backend's default).
const PREFETCH_BUDGET: usize = 16 << 20;

/// The report's op for a kernel family (gpu-check's step census looks both up).
fn op_name(kernel: GemvKernel) -> &'static str {
    match kernel {
        GemvKernel::RowPairs => "gemv",
        GemvKernel::Mma => "gemv_mma",
    }
}

fn case_name(d: &GemvDims) -> String {
    format!("t{} n{} k{} {:?}", d.t, d.n, d.k, d.epilogue)
}

trait Poison: GemvOut + Copy + Default {
    const POISON: Self;
    fn widen(v: Self) -> f32;
}

impl Poison for bf16 {
    const POISON: Self = bf::NAN;
    fn widen(v: Self) -> f32 {
        v.to_f32()
    }
}

impl Poison for f32 {
    const POISON: Self = f32::NAN;
    fn widen(v: Self) -> f32 {
        v
    }
}

fn gemv<O: Poison>(t: &mut Tester<'_>, d: GemvDims) -> Result<CaseResult, KernelError> {
    let (x_h, x_f) = bf::random(&mut t.rng, d.t * d.k, 1.0);
    // Unit-gain weights (std 1/√k) keep the outputs O(1) as in a real projection.
    let (w_h, w_f) = bf::random(&mut t.rng, d.n * d.k, 1.0 / (d.k as f32).sqrt());
    let x = t.up(&x_h)?;
    let w = t.up(&w_h)?;
    let cols = d.out_cols();
    let mut out = t.up(&vec![O::POISON; d.t * cols])?;
    let (k, stream) = (t.k, t.stream.clone());
    let mut launch = || k.gemv(&stream, GemvArgs { dims: d, x: x.as_view(), w: w.as_view(), out: out.as_view_mut() });
    launch()?;
    t.sync()?;
    let time = t.time(TIMED, &mut launch)?;
    let got: Vec<f32> = t.down(&out)?.into_iter().map(O::widen).collect();
    let dot = |r: usize, j: usize| -> f64 { (0..d.k).map(|i| x_f[r * d.k + i] as f64 * w_f[j * d.k + i] as f64).sum() };
    let mut want = Vec::with_capacity(d.t * cols);
    for r in 0..d.t {
        for j in 0..cols {
            want.push(match d.epilogue {
                GemvEpilogue::SiluMul => reference::silu_mul(dot(r, j) as f32, dot(r, cols + j) as f32),
                _ => dot(r, j),
            });
        }
    }
    let m = compare(&got, &want);
    let tol = if d.epilogue == GemvEpilogue::F32 { F32_TOL } else { BF16_TOL };
    let bytes = (2 * (d.n * d.k + d.t * d.k) + d.out_elem() * d.t * cols) as u64;
    let flops = (2 * d.t * d.n * d.k) as u64;
    Ok(row(op_name(d.kernel), &case_name(&d), &m, tol, format!("{:?} out vs f64 reference", d.epilogue)).timed(Some(time), bytes, flops))
}
