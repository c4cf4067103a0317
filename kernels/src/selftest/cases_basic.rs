//! Self-test cases of the element-wise families: embedding, fed tokens, (add+)RMSNorm,
//! SiLU·mul, RoPE+KV.

use half::bf16;

use super::reference::{self, LLAMA31_SCALING};
use super::{BF16_TOL, CaseResult, Tester, bf, compare, error_row, row};
use crate::KernelError;
use crate::ops::{AddRmsNormArgs, EmbeddingArgs, FeedArgs, RmsNormArgs, RopeKvArgs, SiluMulArgs};
use crate::shapes::{AttnShape, BLOCK_SIZE, EmbeddingDims, KvCacheShape, NormDims, RopeDims, SiluDims};

const TIMED: usize = 20;

pub(crate) fn run(t: &mut Tester<'_>) -> Result<(), KernelError> {
    for (tokens, vocab, hidden) in [(1, 1000, 3072), (17, 1000, 3072), (1000, 32_000, 3072), (15, 49_152, 576)] {
        let case = format!("t{tokens} v{vocab} h{hidden}");
        let r = embedding(t, tokens, vocab, hidden).unwrap_or_else(|e| error_row("embedding_gather", &case, &e));
        t.push(r);
    }
    for (tokens, pairs) in [(1, 1), (64, 40), (300, 256)] {
        let case = format!("t{tokens} pairs{pairs}");
        let r = feed(t, tokens, pairs).unwrap_or_else(|e| error_row("feed_tokens", &case, &e));
        t.push(r);
    }
    for (rows, hidden) in [(1, 3072), (15, 3072), (64, 3072), (1000, 3072), (17, 576), (3, 8192)] {
        for fused in [false, true] {
            let op = if fused { "add_rmsnorm" } else { "rmsnorm" };
            let case = format!("rows{rows} h{hidden}");
            let r = rmsnorm(t, rows, hidden, fused).unwrap_or_else(|e| error_row(op, &case, &e));
            t.push(r);
        }
    }
    // A one-row norm is almost all launch gap inside a graph: the same case with programmatic
    // launch (sm_90a only) measures what that gap becomes when each launch may start while
    // the previous one finishes, and checks the outputs stay right.
    t.with_programmatic_launch(|t| {
        for fused in [false, true] {
            let op = if fused { "add_rmsnorm" } else { "rmsnorm" };
            let case = "rows1 h3072 programmatic";
            let r = rmsnorm(t, 1, 3072, fused).map(|row| row.named(case)).unwrap_or_else(|e| error_row(op, case, &e));
            t.push(r);
        }
    })?;
    for (tokens, inter) in [(1, 9216), (17, 9216), (1000, 9216), (15, 1536)] {
        let case = format!("t{tokens} inter{inter}");
        let r = silu(t, tokens, inter).unwrap_or_else(|e| error_row("silu_mul", &case, &e));
        t.push(r);
    }
    let minitron = AttnShape { num_heads: 32, num_kv_heads: 8, head_dim: 128 };
    let smol = AttnShape { num_heads: 9, num_kv_heads: 3, head_dim: 64 };
    let tiny = AttnShape { num_heads: 4, num_kv_heads: 2, head_dim: 32 };
    for (shape, tokens, max_pos, theta, scaled) in [
        (minitron, 1, 131_072, 500_000.0, true),
        (minitron, 17, 8192, 500_000.0, true),
        (minitron, 1000, 131_072, 500_000.0, true),
        (smol, 15, 8192, 100_000.0, false),
        (tiny, 16, 2048, 10_000.0, false),
    ] {
        let case = format!("nh{} nkv{} hd{} t{tokens}", shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let r = rope(t, shape, tokens, max_pos, theta, scaled).unwrap_or_else(|e| error_row("rope_kv_write", &case, &e));
        t.push(r);
    }
    Ok(())
}

/// Fed tokens land exactly where the pairs say; every other id is untouched, and pairs
/// out of range are skipped.
fn feed(t: &mut Tester<'_>, tokens: usize, pairs: usize) -> Result<CaseResult, KernelError> {
    let ids: Vec<i32> = (0..tokens).map(|i| 1_000_000 + i as i32).collect();
    let sampled: Vec<i32> = (0..pairs).map(|_| t.rng.below(128_256) as i32).collect();
    let mut feed = Vec::with_capacity(2 * (pairs + 1));
    let mut want: Vec<f64> = ids.iter().map(|v| *v as f64).collect();
    for k in 0..pairs {
        // Distinct destinations, spread over the step (a decode row per sequence).
        let dst = (k * tokens / pairs.max(1)).min(tokens - 1);
        let src = (k * 7) % pairs;
        feed.extend([dst as i32, src as i32]);
        want[dst] = sampled[src] as f64;
    }
    feed.extend([tokens as i32, 0]); // out of range: skipped
    let mut ids_d = t.up(&ids)?;
    let sampled_d = t.up(&sampled)?;
    let feed_d = t.up(&feed)?;
    t.k.feed_tokens(
        &t.stream,
        FeedArgs { ids: ids_d.as_view_mut(), sampled: sampled_d.as_view(), feed: feed_d.as_view(), count: pairs + 1 },
    )?;
    t.sync()?;
    let got: Vec<f32> = t.down(&ids_d)?.iter().map(|v| *v as f32).collect();
    let m = compare(&got, &want);
    let exact = got.iter().zip(&want).all(|(g, w)| *g as f64 == *w);
    let mut r = row("feed_tokens", &format!("t{tokens} pairs{pairs}"), &m, 0.0, "exact ids expected".into());
    r.passed &= exact;
    Ok(r)
}

fn embedding(t: &mut Tester<'_>, tokens: usize, vocab: usize, hidden: usize) -> Result<CaseResult, KernelError> {
    let (table_h, table_f) = bf::random(&mut t.rng, vocab * hidden, 1.0);
    let mut ids: Vec<i32> = (0..tokens).map(|_| t.rng.below(vocab) as i32).collect();
    ids[0] = vocab as i32 - 1;
    if tokens > 2 {
        ids[1] = -1; // out of range: the kernel must write zeros
    }
    let ids_d = t.up(&ids)?;
    let table = t.up(&table_h)?;
    let mut out = t.up(&vec![f32::NAN; tokens * hidden])?;
    let dims = EmbeddingDims { num_tokens: tokens, vocab, hidden };
    let k = t.k;
    let stream = t.stream.clone();
    let mut launch =
        || k.embedding_gather(&stream, EmbeddingArgs { dims, ids: ids_d.as_view(), table: table.as_view(), out: out.as_view_mut() });
    launch()?;
    t.sync()?;
    let time = t.time(TIMED, &mut launch)?;
    let got = t.down(&out)?;
    let mut want = vec![0.0f64; tokens * hidden];
    for (i, &id) in ids.iter().enumerate() {
        if id >= 0 && (id as usize) < vocab {
            for j in 0..hidden {
                want[i * hidden + j] = table_f[id as usize * hidden + j] as f64;
            }
        }
    }
    let m = compare(&got, &want);
    let bytes = (tokens * hidden * (2 + 4) + tokens * 4) as u64;
    Ok(row("embedding_gather", &format!("t{tokens} v{vocab} h{hidden}"), &m, 0.0, "exact copy expected".into()).timed(Some(time), bytes, 0))
}

fn rmsnorm(t: &mut Tester<'_>, rows: usize, hidden: usize, fused: bool) -> Result<CaseResult, KernelError> {
    let eps = 1e-5f32;
    let x0: Vec<f32> = (0..rows * hidden).map(|_| t.rng.normal() * 2.0).collect();
    let (w_h, w_f): (Vec<bf16>, Vec<f32>) = {
        let b: Vec<bf16> = (0..hidden).map(|_| bf16::from_f32(1.0 + 0.2 * t.rng.normal())).collect();
        let f = bf::widen(&b);
        (b, f)
    };
    let (d_h, d_f) = bf::random(&mut t.rng, rows * hidden, 0.5);
    let mut x = t.up(&x0)?;
    let w = t.up(&w_h)?;
    let delta = t.up(&d_h)?;
    let mut out = t.up(&vec![bf::NAN; rows * hidden])?;
    let dims = NormDims { rows, hidden };
    let (k, stream) = (t.k, t.stream.clone());
    if fused {
        k.add_rmsnorm(
            &stream,
            AddRmsNormArgs { dims, eps, x: x.as_view_mut(), delta: delta.as_view(), weight: w.as_view(), out: out.as_view_mut() },
        )?;
    } else {
        k.rmsnorm(&stream, RmsNormArgs { dims, eps, x: x.as_view(), weight: w.as_view(), out: out.as_view_mut() })?;
    }
    t.sync()?;
    let got_out = bf::widen(&t.down(&out)?);
    let got_x = t.down(&x)?;
    // Reference: the residual after the add (f32, as the kernel does it) and its norm.
    let x_new: Vec<f32> = if fused { x0.iter().zip(&d_f).map(|(a, b)| a + b).collect() } else { x0.clone() };
    let mut want = Vec::with_capacity(rows * hidden);
    for r in 0..rows {
        want.extend(reference::rmsnorm_row(&x_new[r * hidden..(r + 1) * hidden], &w_f, eps));
    }
    let mut m = compare(&got_out, &want);
    let mut detail = String::from("bf16 out vs f64 reference");
    if fused {
        let mx = compare(&got_x, &x_new.iter().map(|v| *v as f64).collect::<Vec<_>>());
        detail = format!("out rel_l2 {:.2e}; residual x rel_l2 {:.2e} (must be 0)", m.rel_l2, mx.rel_l2);
        if mx.rel_l2 > 0.0 || mx.nonfinite > 0 {
            m.rel_l2 = f64::INFINITY;
        }
        m.nonfinite += mx.nonfinite;
    }
    // Timing: the fused kernel keeps adding delta into x, which stays finite for 23 calls.
    let time = if fused {
        t.time(TIMED, || {
            k.add_rmsnorm(
                &stream,
                AddRmsNormArgs { dims, eps, x: x.as_view_mut(), delta: delta.as_view(), weight: w.as_view(), out: out.as_view_mut() },
            )
        })?
    } else {
        t.time(TIMED, || k.rmsnorm(&stream, RmsNormArgs { dims, eps, x: x.as_view(), weight: w.as_view(), out: out.as_view_mut() }))?
    };
    let n = (rows * hidden) as u64;
    let bytes = if fused { n * (4 + 2 + 4 + 2) } else { n * (4 + 2) } + 2 * hidden as u64;
    let op = if fused { "add_rmsnorm" } else { "rmsnorm" };
    Ok(row(op, &format!("rows{rows} h{hidden}"), &m, BF16_TOL, detail).timed(Some(time), bytes, 4 * n))
}

fn silu(t: &mut Tester<'_>, tokens: usize, inter: usize) -> Result<CaseResult, KernelError> {
    let (gu_h, gu_f) = bf::random(&mut t.rng, tokens * 2 * inter, 2.0);
    let gu = t.up(&gu_h)?;
    let mut out = t.up(&vec![bf::NAN; tokens * inter])?;
    let dims = SiluDims { num_tokens: tokens, inter };
    let (k, stream) = (t.k, t.stream.clone());
    let mut launch = || k.silu_mul(&stream, SiluMulArgs { dims, gate_up: gu.as_view(), out: out.as_view_mut() });
    launch()?;
    t.sync()?;
    let time = t.time(TIMED, &mut launch)?;
    let got = bf::widen(&t.down(&out)?);
    let mut want = Vec::with_capacity(tokens * inter);
    for r in 0..tokens {
        for i in 0..inter {
            want.push(reference::silu_mul(gu_f[r * 2 * inter + i], gu_f[r * 2 * inter + inter + i]));
        }
    }
    let m = compare(&got, &want);
    let n = (tokens * inter) as u64;
    Ok(row("silu_mul", &format!("t{tokens} inter{inter}"), &m, BF16_TOL, "bf16 out vs f64 reference".into()).timed(
        Some(time),
        n * 6,
        n * 5,
    ))
}

fn rope(t: &mut Tester<'_>, shape: AttnShape, tokens: usize, max_pos: usize, theta: f32, scaled: bool) -> Result<CaseResult, KernelError> {
    let AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: hd } = shape;
    let width = shape.qkv_width();
    let num_blocks = tokens.div_ceil(BLOCK_SIZE) * 2 + 3;
    let cache = KvCacheShape { num_blocks, num_kv_heads: nkv, head_dim: hd };
    let inv = reference::rope_inv_freq(hd, theta, scaled.then_some(LLAMA31_SCALING));
    let positions: Vec<i32> = (0..tokens).map(|i| if i == 0 { max_pos as i32 - 1 } else { t.rng.below(max_pos) as i32 }).collect();
    // Distinct slots scattered over the pool; token 1 (if any) is graph padding (slot -1).
    let mut all: Vec<i32> = (0..(num_blocks * BLOCK_SIZE) as i32).collect();
    t.rng.shuffle(&mut all);
    let mut slots: Vec<i32> = all[..tokens].to_vec();
    if tokens > 2 {
        slots[1] = -1;
    }
    let (qkv_h, qkv_f) = bf::random(&mut t.rng, tokens * width, 1.0);
    let cache_elems = num_blocks * BLOCK_SIZE * nkv * hd;
    let mut qkv = t.up(&qkv_h)?;
    let pos_d = t.up(&positions)?;
    let slots_d = t.up(&slots)?;
    let inv_d = t.up(&inv)?;
    let mut kc = t.up(&vec![bf::NAN; cache_elems])?;
    let mut vc = t.up(&vec![bf::NAN; cache_elems])?;
    let dims = RopeDims { num_tokens: tokens, shape, cache };
    let (k, stream) = (t.k, t.stream.clone());
    k.rope_kv_write(
        &stream,
        RopeKvArgs {
            dims,
            qkv: qkv.as_view_mut(),
            positions: pos_d.as_view(),
            slots: slots_d.as_view(),
            inv_freq: inv_d.as_view(),
            k_cache: kc.as_view_mut(),
            v_cache: vc.as_view_mut(),
        },
    )?;
    t.sync()?;
    let got_qkv = bf::widen(&t.down(&qkv)?);
    let got_k = bf::widen(&t.down(&kc)?);
    let got_v = bf::widen(&t.down(&vc)?);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for i in 0..tokens {
        let row_f = &qkv_f[i * width..(i + 1) * width];
        for h in 0..nh {
            let mut x = row_f[h * hd..(h + 1) * hd].to_vec();
            reference::rope_head(&mut x, positions[i], &inv);
            want.extend(x.iter().map(|v| *v as f64));
            got.extend_from_slice(&got_qkv[i * width + h * hd..][..hd]);
        }
        if slots[i] < 0 {
            continue;
        }
        let s = slots[i] as usize;
        for h in 0..nkv {
            let mut x = row_f[(nh + h) * hd..(nh + h + 1) * hd].to_vec();
            reference::rope_head(&mut x, positions[i], &inv);
            want.extend(x.iter().map(|v| *v as f64));
            got.extend_from_slice(&got_k[(s * nkv + h) * hd..][..hd]);
            want.extend(row_f[(nh + nkv + h) * hd..][..hd].iter().map(|v| *v as f64));
            got.extend_from_slice(&got_v[(s * nkv + h) * hd..][..hd]);
        }
    }
    let m = compare(&got, &want);
    // Timing rotates Q again each call (still finite), so it comes after the check.
    let time = t.time(TIMED, || {
        k.rope_kv_write(
            &stream,
            RopeKvArgs {
                dims,
                qkv: qkv.as_view_mut(),
                positions: pos_d.as_view(),
                slots: slots_d.as_view(),
                inv_freq: inv_d.as_view(),
                k_cache: kc.as_view_mut(),
                v_cache: vc.as_view_mut(),
            },
        )
    })?;
    let bytes = (tokens * (width * 2 + (nh + 2 * nkv) * hd * 2 + 8)) as u64;
    let flops = (tokens * (nh + nkv) * hd * 3) as u64;
    let case = format!("nh{nh} nkv{nkv} hd{hd} t{tokens}");
    Ok(row("rope_kv_write", &case, &m, BF16_TOL, format!("max position {}", max_pos - 1)).timed(Some(time), bytes, flops))
}
