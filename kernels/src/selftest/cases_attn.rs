//! Self-test cases of paged attention (prefill and decode) against the f64 reference.
//!
//! Pools are scattered: each sequence's blocks are a random, non-contiguous subset of the
//! pool. Every slot no sequence has written (unused blocks, and slots past a sequence's
//! context in its last block) holds NaN, so a read of anything the kernel must not read
//! poisons the output and fails the case.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::reference::{self, RefSeq};
use super::{BF16_TOL, CaseResult, Tester, bf, compare, error_row, row};
use crate::KernelError;
use crate::ops::{DecodeArgs, PagedKv, PrefillArgs};
use crate::shapes::{AttnRows, AttnShape, BLOCK_SIZE, DecodeDims, KvCacheShape, PrefillDims};

const MINITRON: AttnShape = AttnShape { num_heads: 32, num_kv_heads: 8, head_dim: 128 };
const SMOL: AttnShape = AttnShape { num_heads: 9, num_kv_heads: 3, head_dim: 64 };
const G2: AttnShape = AttnShape { num_heads: 4, num_kv_heads: 2, head_dim: 64 };
const G6: AttnShape = AttnShape { num_heads: 12, num_kv_heads: 2, head_dim: 128 };
const MHA: AttnShape = AttnShape { num_heads: 8, num_kv_heads: 8, head_dim: 128 };
const TIMED: usize = 10;

/// (name, shape, [(query tokens, context length)] per sequence)
type PrefillCase = (&'static str, AttnShape, Vec<(usize, usize)>);

pub(crate) fn run(t: &mut Tester<'_>) -> Result<(), KernelError> {
    let prefill_cases: Vec<PrefillCase> = vec![
        ("prompts 1,15,16,17,1000", MINITRON, vec![(1, 1), (15, 15), (16, 16), (17, 17), (1000, 1000)]),
        ("chunks at ctx 50..8192", MINITRON, vec![(17, 50), (64, 300), (100, 8192), (1, 4097)]),
        ("g3 hd64 mixed", SMOL, vec![(1, 1), (15, 40), (100, 100), (33, 33), (21, 1000)]),
        ("g2 hd64 mixed", G2, vec![(17, 17), (64, 200), (3, 3)]),
        ("g6 hd128", G6, vec![(30, 30), (11, 500)]),
        ("mha hd128", MHA, vec![(65, 65), (2, 130)]),
        ("minitron 2048 prompt", MINITRON, vec![(2048, 2048)]),
    ];
    for (name, shape, specs) in prefill_cases {
        let r = prefill(t, shape, &specs, name).unwrap_or_else(|e| error_row("attention_prefill", name, &e));
        t.push(r);
    }
    let mut bs64: Vec<usize> = (0..64).map(|_| 1 + t.rng.below(2048)).collect();
    bs64[0] = 1;
    bs64[1] = 2048;
    let decode_cases: Vec<(String, AttnShape, Vec<usize>)> = vec![
        ("bs1 ctx512".into(), MINITRON, vec![512]),
        ("bs1 ctx8192".into(), MINITRON, vec![8192]),
        ("bs7 ctx 1..8192".into(), MINITRON, vec![1, 15, 16, 17, 1000, 4097, 8192]),
        ("bs64 ctx 1..2048".into(), MINITRON, bs64),
        ("bs64 ctx512".into(), MINITRON, vec![512; 64]),
        ("g3 hd64 bs5".into(), SMOL, vec![1, 17, 300, 2999, 64]),
        ("g2 hd64 bs3".into(), G2, vec![5, 700, 16]),
        ("g6 hd128 bs2 (2 tiles)".into(), G6, vec![33, 1500]),
        ("mha hd128 bs2".into(), MHA, vec![1, 777]),
    ];
    for (name, shape, ctxs) in decode_cases {
        let r = decode(t, shape, &ctxs, &name).unwrap_or_else(|e| error_row("attention_decode", &name, &e));
        t.push(r);
    }
    Ok(())
}

/// A scattered pool holding the sequences' contexts.
struct Pool {
    cache: KvCacheShape,
    k_h: Vec<bf16>,
    v_h: Vec<bf16>,
    k_f: Vec<f32>,
    v_f: Vec<f32>,
    tables: Vec<i32>,
    max_blocks: usize,
    blocks: Vec<Vec<i32>>,
}

fn pool(t: &mut Tester<'_>, shape: AttnShape, ctxs: &[usize]) -> Pool {
    let (nkv, hd) = (shape.num_kv_heads, shape.head_dim);
    let need: Vec<usize> = ctxs.iter().map(|c| c.div_ceil(BLOCK_SIZE)).collect();
    let total: usize = need.iter().sum();
    let num_blocks = total + total / 4 + 3;
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    t.rng.shuffle(&mut ids);
    let row = nkv * hd;
    let n = num_blocks * BLOCK_SIZE * row;
    let mut k_f = vec![f32::NAN; n];
    let mut v_f = vec![f32::NAN; n];
    let max_blocks = need.iter().copied().max().unwrap_or(1).max(1) + 1;
    let mut tables = vec![0i32; ctxs.len() * max_blocks];
    let mut blocks = Vec::new();
    let mut next = 0;
    for (s, (&ctx, &nb)) in ctxs.iter().zip(&need).enumerate() {
        let mine: Vec<i32> = ids[next..next + nb].to_vec();
        next += nb;
        for pos in 0..ctx {
            let slot = mine[pos / BLOCK_SIZE] as usize * BLOCK_SIZE + pos % BLOCK_SIZE;
            for e in 0..row {
                k_f[slot * row + e] = bf16::from_f32(t.rng.normal()).to_f32();
                v_f[slot * row + e] = bf16::from_f32(t.rng.normal()).to_f32();
            }
        }
        tables[s * max_blocks..s * max_blocks + nb].copy_from_slice(&mine);
        // Entries past the context point at a block of another sequence: never read.
        for e in nb..max_blocks {
            tables[s * max_blocks + e] = ids[0];
        }
        blocks.push(mine);
    }
    let k_h = k_f.iter().map(|v| bf16::from_f32(*v)).collect();
    let v_h = v_f.iter().map(|v| bf16::from_f32(*v)).collect();
    Pool { cache: KvCacheShape { num_blocks, num_kv_heads: nkv, head_dim: hd }, k_h, v_h, k_f, v_f, tables, max_blocks, blocks }
}

fn attn_flops(shape: AttnShape, seqs: &[RefSeq]) -> u64 {
    let keys: usize = seqs.iter().map(|s| (0..s.nq).map(|j| s.ctx - s.nq + j + 1).sum::<usize>()).sum();
    (4 * keys * shape.num_heads * shape.head_dim) as u64
}

fn attn_bytes(shape: AttnShape, seqs: &[RefSeq], rows: usize) -> u64 {
    let kv: usize = seqs.iter().map(|s| s.ctx).sum::<usize>() * shape.num_kv_heads * shape.head_dim * 2 * 2;
    (kv + rows * shape.num_heads * shape.head_dim * 2 * 2) as u64
}

fn prefill(t: &mut Tester<'_>, shape: AttnShape, specs: &[(usize, usize)], name: &str) -> Result<CaseResult, KernelError> {
    let ctxs: Vec<usize> = specs.iter().map(|s| s.1).collect();
    let p = pool(t, shape, &ctxs);
    let rows: usize = specs.iter().map(|s| s.0).sum();
    let q_stride = shape.qkv_width();
    let w = shape.num_heads * shape.head_dim;
    let (q_h, q_f) = bf::random(&mut t.rng, rows * q_stride, 1.0);
    let mut seqs = Vec::new();
    let mut starts = vec![0i32];
    for (i, &(nq, ctx)) in specs.iter().enumerate() {
        seqs.push(RefSeq { q_start: starts[i] as usize, nq, ctx, blocks: p.blocks[i].clone() });
        starts.push(starts[i] + nq as i32);
    }
    let ctx_lens: Vec<i32> = ctxs.iter().map(|c| *c as i32).collect();
    let q = t.up(&q_h)?;
    let kc = t.up(&p.k_h)?;
    let vc = t.up(&p.v_h)?;
    let tables = t.up(&p.tables)?;
    let ctx_d = t.up(&ctx_lens)?;
    let starts_d = t.up(&starts)?;
    let mut out = t.up(&vec![bf::NAN; rows * w])?;
    let dims = PrefillDims {
        shape,
        cache: p.cache,
        rows: AttnRows { num_tokens: rows, q_stride, out_stride: w },
        num_seqs: specs.len(),
        max_blocks_per_seq: p.max_blocks,
        max_query_len: specs.iter().map(|s| s.0).max().unwrap_or(1),
    };
    let (k, stream) = (t.k, t.stream.clone());
    let launch = |out: &mut CudaSlice<bf16>| {
        let kv = PagedKv { k_cache: kc.as_view(), v_cache: vc.as_view(), block_tables: tables.as_view(), context_lens: ctx_d.as_view() };
        k.attention_prefill(&stream, PrefillArgs { dims, q: q.as_view(), kv, query_starts: starts_d.as_view(), out: out.as_view_mut() })
    };
    launch(&mut out)?;
    t.sync()?;
    let got = bf::widen(&t.down(&out)?);
    let want = reference::paged_attention(&q_f, q_stride, &p.k_f, &p.v_f, shape, &seqs, rows);
    let m = compare(&got, &want);
    let time = t.time(TIMED, || launch(&mut out))?;
    let detail = format!("nh{} nkv{} hd{}; (nq, ctx) = {:?}", shape.num_heads, shape.num_kv_heads, shape.head_dim, specs);
    Ok(row("attention_prefill", name, &m, BF16_TOL, detail).timed(Some(time), attn_bytes(shape, &seqs, rows), attn_flops(shape, &seqs)))
}

fn decode(t: &mut Tester<'_>, shape: AttnShape, ctxs: &[usize], name: &str) -> Result<CaseResult, KernelError> {
    let p = pool(t, shape, ctxs);
    let n = ctxs.len();
    let q_stride = shape.qkv_width();
    let w = shape.num_heads * shape.head_dim;
    let (q_h, q_f) = bf::random(&mut t.rng, n * q_stride, 1.0);
    let seqs: Vec<RefSeq> =
        ctxs.iter().enumerate().map(|(i, &ctx)| RefSeq { q_start: i, nq: 1, ctx, blocks: p.blocks[i].clone() }).collect();
    let ctx_lens: Vec<i32> = ctxs.iter().map(|c| *c as i32).collect();
    let dims = DecodeDims {
        shape,
        cache: p.cache,
        rows: AttnRows { num_tokens: n, q_stride, out_stride: w },
        max_blocks_per_seq: p.max_blocks,
        max_context_len: ctxs.iter().copied().max().unwrap_or(1),
    };
    let plan = t.k.decode_plan(&dims);
    let q = t.up(&q_h)?;
    let kc = t.up(&p.k_h)?;
    let vc = t.up(&p.v_h)?;
    let tables = t.up(&p.tables)?;
    let ctx_d = t.up(&ctx_lens)?;
    let mut out = t.up(&vec![bf::NAN; n * w])?;
    let mut acc = t.up(&vec![f32::NAN; plan.workspace_acc.max(1)])?;
    let mut ml = t.up(&vec![f32::NAN; plan.workspace_ml.max(1)])?;
    let (k, stream) = (t.k, t.stream.clone());
    let launch = |out: &mut CudaSlice<bf16>, acc: &mut CudaSlice<f32>, ml: &mut CudaSlice<f32>| {
        let kv = PagedKv { k_cache: kc.as_view(), v_cache: vc.as_view(), block_tables: tables.as_view(), context_lens: ctx_d.as_view() };
        k.attention_decode(
            &stream,
            DecodeArgs {
                dims,
                q: q.as_view(),
                kv,
                out: out.as_view_mut(),
                workspace_acc: acc.as_view_mut(),
                workspace_ml: ml.as_view_mut(),
            },
        )
    };
    launch(&mut out, &mut acc, &mut ml)?;
    t.sync()?;
    let got = bf::widen(&t.down(&out)?);
    let want = reference::paged_attention(&q_f, q_stride, &p.k_f, &p.v_f, shape, &seqs, n);
    let m = compare(&got, &want);
    let time = t.time(TIMED, || launch(&mut out, &mut acc, &mut ml))?;
    let detail = format!(
        "nh{} nkv{} hd{}; head tile {}, partition {}, splits {}",
        shape.num_heads, shape.num_kv_heads, shape.head_dim, plan.head_tile, plan.partition, plan.num_splits
    );
    Ok(row("attention_decode", name, &m, BF16_TOL, detail).timed(Some(time), attn_bytes(shape, &seqs, n), attn_flops(shape, &seqs)))
}
