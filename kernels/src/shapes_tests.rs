use super::*;

const MINITRON: AttnShape = AttnShape { num_heads: 32, num_kv_heads: 8, head_dim: 128 };

fn cache(blocks: usize, s: AttnShape) -> KvCacheShape {
    KvCacheShape { num_blocks: blocks, num_kv_heads: s.num_kv_heads, head_dim: s.head_dim }
}

fn is_arg_err<T: std::fmt::Debug>(r: Result<T, KernelError>, needle: &str) -> bool {
    match r {
        Err(KernelError::InvalidArgument { msg, .. }) => msg.contains(needle),
        other => panic!("expected an argument error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn embedding_checks_alignment_and_lengths() {
    let d = EmbeddingDims { num_tokens: 3, vocab: 10, hidden: 16 };
    assert!(d.check(3, 160, 48).is_ok());
    assert!(is_arg_err(d.check(2, 160, 48), "ids"));
    assert!(is_arg_err(d.check(3, 159, 48), "table"));
    assert!(is_arg_err(d.check(3, 160, 47), "out"));
    assert!(is_arg_err(EmbeddingDims { hidden: 12, ..d }.check(3, 120, 36), "multiple of 8"));
    assert!(is_arg_err(EmbeddingDims { num_tokens: 70_000, ..d }.check(70_000, 160, 70_000 * 16), "per launch"));
}

#[test]
fn norm_rejects_odd_and_huge_hidden() {
    let d = NormDims { rows: 2, hidden: 3072 };
    assert!(d.check("rmsnorm", 6144, None, 3072, 6144).is_ok());
    assert!(d.check("add_rmsnorm", 6144, Some(6144), 3072, 6144).is_ok());
    assert!(is_arg_err(d.check("add_rmsnorm", 6144, Some(6000), 3072, 6144), "delta"));
    assert!(is_arg_err(d.check("rmsnorm", 6144, None, 3000, 6144), "weight"));
    assert!(is_arg_err(NormDims { rows: 1, hidden: 32_768 }.check("rmsnorm", 32_768, None, 32_768, 32_768), "multiple of 8"));
}

#[test]
fn rope_requires_matching_cache_and_head_dim_multiple_of_16() {
    let c = cache(4, MINITRON);
    let d = RopeDims { num_tokens: 5, shape: MINITRON, cache: c };
    let n = c.elems().unwrap_or(0);
    let lens = RopeLens { qkv: 5 * MINITRON.qkv_width(), positions: 5, slots: 5, inv_freq: 64, k_cache: n, v_cache: n };
    assert!(d.check(lens).is_ok());
    assert!(is_arg_err(d.check(RopeLens { inv_freq: 63, ..lens }), "inv_freq"));
    assert!(is_arg_err(d.check(RopeLens { v_cache: n - 1, ..lens }), "v_cache"));
    let odd = AttnShape { head_dim: 24, ..MINITRON };
    assert!(is_arg_err(RopeDims { shape: odd, cache: cache(4, odd), ..d }.check(lens), "multiple of 16"));
    let bad_group = AttnShape { num_heads: 30, ..MINITRON };
    assert!(is_arg_err(RopeDims { shape: bad_group, ..d }.check(lens), "not a multiple"));
}

#[test]
fn attention_accepts_64_and_128_only() {
    for hd in [32, 96, 256] {
        let s = AttnShape { head_dim: hd, ..MINITRON };
        assert!(is_arg_err(s.check_attention("x"), "head_dim"));
    }
    for hd in [64, 128] {
        assert!(AttnShape { head_dim: hd, ..MINITRON }.check_attention("x").is_ok());
    }
    // Group sizes 3 and 2 (the small test models) and 1 (MHA) are fine.
    for (nh, nkv) in [(9, 3), (4, 2), (8, 8)] {
        assert!(AttnShape { num_heads: nh, num_kv_heads: nkv, head_dim: 64 }.check_attention("x").is_ok());
    }
}

#[test]
fn prefill_grid_and_lengths() {
    let c = cache(100, MINITRON);
    let n = c.elems().unwrap_or(0);
    let rows = AttnRows { num_tokens: 40, q_stride: MINITRON.qkv_width(), out_stride: 4096 };
    let d = PrefillDims { shape: MINITRON, cache: c, rows, num_seqs: 3, max_blocks_per_seq: 8, max_query_len: 17 };
    assert_eq!(d.tokens_per_tile(), 16);
    assert_eq!(d.grid(), (2, 8, 3));
    let lens = AttnLens { q: 40 * 6144, k_cache: n, v_cache: n, block_tables: 24, context_lens: 3, query_starts: 4, out: 40 * 4096 };
    assert!(d.check(lens).is_ok());
    assert!(is_arg_err(d.check(AttnLens { query_starts: 3, ..lens }), "query_starts"));
    assert!(is_arg_err(d.check(AttnLens { q: 40 * 6144 - 2048 - 1, ..lens }), "q has"));
    let bad_stride = PrefillDims { rows: AttnRows { q_stride: 4100, ..rows }, ..d };
    assert!(is_arg_err(bad_stride.check(lens), "q_stride"));
    assert!(is_arg_err(PrefillDims { max_query_len: 41, ..d }.check(lens), "max_query_len"));
    let g3 = AttnShape { num_heads: 9, num_kv_heads: 3, head_dim: 64 };
    assert_eq!(PrefillDims { shape: g3, ..d }.tokens_per_tile(), 21);
}

#[test]
fn decode_plan_splits_long_contexts_and_sizes_the_workspace() {
    let c = cache(1000, MINITRON);
    let rows = AttnRows { num_tokens: 1, q_stride: 4096, out_stride: 4096 };
    let d = DecodeDims { shape: MINITRON, cache: c, rows, max_blocks_per_seq: 512, max_context_len: 512 };
    let p = d.plan(132);
    assert_eq!((p.head_tile, p.partition, p.num_splits), (4, 64, 8));
    assert_eq!(p.workspace_acc, 32 * 8 * 128);
    assert_eq!(p.workspace_ml, 32 * 8 * 2);
    // A large batch needs no split.
    let big = DecodeDims { rows: AttnRows { num_tokens: 64, ..rows }, ..d };
    let p = big.plan(132);
    assert_eq!((p.num_splits, p.workspace_acc), (1, 0));
    // 8k context stays within the 512-token partition limit.
    let long = DecodeDims { max_context_len: 8192, ..d };
    let p = long.plan(132);
    assert!(p.partition <= DECODE_MAX_PARTITION && p.partition * p.num_splits >= 8192);
    // Group 6 runs as two tiles of 3, group 5 as five tiles of 1.
    let g6 = AttnShape { num_heads: 12, num_kv_heads: 2, head_dim: 64 };
    assert_eq!(DecodeDims { shape: g6, cache: cache(10, g6), ..d }.plan(132).head_tile, 3);
    let g5 = AttnShape { num_heads: 10, num_kv_heads: 2, head_dim: 64 };
    assert_eq!(DecodeDims { shape: g5, cache: cache(10, g5), ..d }.plan(132).head_tile, 1);
    let n = c.elems().unwrap_or(0);
    let lens = AttnLens { q: 4096, k_cache: n, v_cache: n, block_tables: 512, context_lens: 1, query_starts: 0, out: 4096 };
    let p = d.plan(132);
    assert!(d.check(lens, &p, p.workspace_acc, p.workspace_ml).is_ok());
    assert!(is_arg_err(d.check(lens, &p, p.workspace_acc - 1, p.workspace_ml), "workspace_acc"));
    assert!(is_arg_err(DecodeDims { max_context_len: 512 * 16 + 1, ..d }.check(lens, &p, 1 << 30, 1 << 30), "max_context_len"));
}

#[test]
fn sample_lengths() {
    let d = SampleDims { rows: 2, vocab: 100, logits_stride: 128 };
    let l = SampleLens {
        logits: 228,
        params: 2,
        pen_offsets: 3,
        pen_ids: 5,
        pen_counts: 5,
        sup_offsets: 3,
        sup_ids: 0,
        scratch: 200,
        out_token: 2,
        out_logprob: 2,
        out_top_ids: 40,
        out_top_logprobs: 40,
        partials: 2,
    };
    assert!(d.check(l).is_ok());
    assert!(is_arg_err(d.check(SampleLens { partials: 1, ..l }), "partials"));
    // 128256 ids: 32 chunks of 4096 per row (the last one partial).
    let big = SampleDims { rows: 3, vocab: 128_256, logits_stride: 128_256 };
    assert_eq!((big.stat_chunks(), big.partials_len()), (32, 96));
    assert!(is_arg_err(d.check(SampleLens { logits: 227, ..l }), "logits"));
    assert!(is_arg_err(d.check(SampleLens { pen_counts: 4, ..l }), "pen_counts"));
    assert!(is_arg_err(d.check(SampleLens { out_top_ids: 39, ..l }), "out_top_ids"));
    assert!(is_arg_err(SampleDims { logits_stride: 99, ..d }.check(l), "logits_stride"));
}

#[test]
fn gemv_kernels_take_only_the_rows_and_widths_they_are_built_for() {
    use GemvKernel::*;
    let d = |kernel, t, n, k| GemvDims { t, n, k, epilogue: GemvEpilogue::Bf16, kernel };
    // Row pairs: 1..=8 rows, any even width.
    assert!(d(RowPairs, 8, 34, 8).supported());
    assert!(!d(RowPairs, 9, 34, 8).supported());
    assert!(!d(RowPairs, 1, 33, 8).supported());
    // Tensor cores: 1..=16 rows, whole 16-row tiles.
    assert!(d(Mma, 16, 32, 8).supported() && d(Mma, 1, 128_256, 3072).supported());
    assert!(!d(Mma, 17, 32, 8).supported());
    assert!(!d(Mma, 4, 34, 8).supported());
    // Both: no empty rows, k a positive multiple of 8 below half the i32 range.
    for kernel in GemvKernel::ALL {
        assert!(!d(kernel, 0, 32, 8).supported());
        assert!(!d(kernel, 1, 32, 0).supported() && !d(kernel, 1, 32, 12).supported());
        assert!(!d(kernel, 1, 32, 1 << 30).supported());
    }
    assert_eq!(GEMV_MAX_ROWS, 16);
}

#[test]
fn gemv_prefetch_shares_its_budget_among_resident_blocks_and_stays_in_the_row() {
    use GemvKernel::*;
    const MIB: usize = 1 << 20;
    // o_proj on an H100 (132 SMs): 192 tiles, all resident; 16 MiB over 192 × 16 rows is
    // 5461 B, cut to whole 16-byte units, below the 6144-byte row.
    assert_eq!(gemv_prefetch_row_bytes(16 * MIB, Mma, 3072, 3072, 132), 5456);
    // gate|up: 1152 tiles, 264 resident at once: 16 MiB / (264 × 16) = 3971.9 → 3968.
    assert_eq!(gemv_prefetch_row_bytes(16 * MIB, Mma, 18_432, 3072, 132), 3968);
    // A small weight is prefetched whole and no further.
    assert_eq!(gemv_prefetch_row_bytes(16 * MIB, Mma, 32, 40, 132), 80);
    assert_eq!(gemv_prefetch_row_bytes(16 * MIB, RowPairs, 34, 8, 132), 16);
    // Off, or too small a budget for one 16-byte unit per row.
    assert_eq!(gemv_prefetch_row_bytes(0, Mma, 3072, 3072, 132), 0);
    assert_eq!(gemv_prefetch_row_bytes(1000, RowPairs, 128_256, 3072, 132), 0);
    // Row pairs: 8 rows per block, 3 blocks per SM, so 396 resident: 16 MiB / (396 × 8) =
    // 5295.8 → 5280.
    assert_eq!(gemv_prefetch_row_bytes(16 * MIB, RowPairs, 128_256, 3072, 132), 5280);
}

#[test]
fn gemv_checks_lengths_output_width_and_element() {
    let d = GemvDims { t: 12, n: 64, k: 40, epilogue: GemvEpilogue::SiluMul, kernel: GemvKernel::Mma };
    assert_eq!(d.out_cols(), 32);
    assert!(d.check(480, 2560, 384, 2).is_ok());
    assert!(is_arg_err(d.check(479, 2560, 384, 2), "x"));
    assert!(is_arg_err(d.check(480, 2559, 384, 2), "w"));
    assert!(is_arg_err(d.check(480, 2560, 383, 2), "out"));
    assert!(is_arg_err(d.check(480, 2560, 384, 4), "bytes"));
    let f32_out = GemvDims { epilogue: GemvEpilogue::F32, ..d };
    assert!(f32_out.check(480, 2560, 768, 4).is_ok());
    assert!(is_arg_err(GemvDims { t: 13, kernel: GemvKernel::RowPairs, ..d }.check(520, 2560, 416, 2), "RowPairs"));
}
