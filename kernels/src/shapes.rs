//! Host-side shape checks, one per launcher. They are plain Rust (no GPU, no feature) so the
//! argument rules are unit-tested everywhere; each launcher runs its check before launching.

use crate::KernelError;

/// Tokens per KV block (the engine's block size).
pub const BLOCK_SIZE: usize = 16;
/// Most alternatives `sample` reports per row (the API's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Head dims the attention kernels are built for.
pub const ATTN_HEAD_DIMS: [usize; 2] = [64, 128];
/// Query heads per KV head that one decode block serves while reading K/V once.
pub const DECODE_HEAD_TILES: [usize; 5] = [8, 4, 3, 2, 1];
/// Tokens per decode split: the most the kernel's shared score buffer holds.
pub const DECODE_MAX_PARTITION: usize = 512;

const GRID_YZ_MAX: usize = 65_535;
const I32_MAX: usize = i32::MAX as usize;

pub(crate) fn ensure(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<(), KernelError> {
    if ok { Ok(()) } else { Err(KernelError::arg(op, msg())) }
}

/// `have >= want` for a buffer length.
fn len_at_least(op: &'static str, what: &str, have: usize, want: Option<usize>) -> Result<(), KernelError> {
    match want {
        Some(w) if have >= w => Ok(()),
        Some(w) => Err(KernelError::arg(op, format!("{what} has {have} elements, needs at least {w}"))),
        None => Err(KernelError::arg(op, format!("{what}: size overflows"))),
    }
}

fn len_exact(op: &'static str, what: &str, have: usize, want: usize) -> Result<(), KernelError> {
    ensure(op, have == want, || format!("{what} has {have} elements, expected {want}"))
}

fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

/// Query/KV head layout of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads.max(1)
    }

    /// Row width of the fused QKV GEMM output: (nh + 2·nkv)·hd.
    pub fn qkv_width(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    fn check_heads(&self, op: &'static str) -> Result<(), KernelError> {
        ensure(op, self.num_kv_heads > 0 && self.num_heads > 0, || "head counts must be positive".into())?;
        ensure(op, self.num_heads.is_multiple_of(self.num_kv_heads), || {
            format!("num_heads {} is not a multiple of num_kv_heads {}", self.num_heads, self.num_kv_heads)
        })?;
        ensure(op, self.num_kv_heads <= GRID_YZ_MAX && self.num_heads <= GRID_YZ_MAX, || "too many heads".into())
    }

    /// The attention kernels: head_dim 64 or 128, any group size that divides, ≤ 64.
    pub fn check_attention(&self, op: &'static str) -> Result<(), KernelError> {
        self.check_heads(op)?;
        ensure(op, ATTN_HEAD_DIMS.contains(&self.head_dim), || {
            format!("head_dim {} is not supported (attention kernels are built for 64 and 128)", self.head_dim)
        })?;
        ensure(op, self.group() <= 64, || format!("group size {} > 64 is not supported", self.group()))
    }
}

/// One layer's K or V pool: `[num_blocks, 16, num_kv_heads, head_dim]` bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    pub fn elems(&self) -> Option<usize> {
        mul(self.num_blocks, BLOCK_SIZE)?.checked_mul(self.num_kv_heads)?.checked_mul(self.head_dim)
    }

    fn check(&self, op: &'static str, shape: &AttnShape, k_len: usize, v_len: usize) -> Result<(), KernelError> {
        ensure(op, self.num_kv_heads == shape.num_kv_heads && self.head_dim == shape.head_dim, || {
            format!("cache shape {self:?} does not match attention shape {shape:?}")
        })?;
        ensure(op, self.num_blocks > 0 && self.num_blocks <= I32_MAX / BLOCK_SIZE, || "num_blocks out of range".into())?;
        let want = self.elems().ok_or_else(|| KernelError::arg(op, "cache size overflows"))?;
        len_exact(op, "k_cache", k_len, want)?;
        len_exact(op, "v_cache", v_len, want)
    }
}

/// Embedding gather.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub num_tokens: usize,
    pub vocab: usize,
    pub hidden: usize,
}

impl EmbeddingDims {
    pub fn check(&self, ids_len: usize, table_len: usize, out_len: usize) -> Result<(), KernelError> {
        const OP: &str = "embedding_gather";
        ensure(OP, self.hidden > 0 && self.hidden.is_multiple_of(8), || {
            format!("hidden {} must be a positive multiple of 8", self.hidden)
        })?;
        ensure(OP, self.vocab > 0 && self.vocab <= I32_MAX, || format!("vocab {} out of range", self.vocab))?;
        ensure(OP, self.num_tokens <= GRID_YZ_MAX, || format!("{} tokens > {GRID_YZ_MAX} per launch", self.num_tokens))?;
        len_exact(OP, "ids", ids_len, self.num_tokens)?;
        len_at_least(OP, "table", table_len, mul(self.vocab, self.hidden))?;
        len_at_least(OP, "out", out_len, mul(self.num_tokens, self.hidden))
    }
}

/// RMSNorm, plain or fused with the residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormDims {
    pub rows: usize,
    pub hidden: usize,
}

impl NormDims {
    /// Largest hidden size one block keeps in registers (8 chunks × 256 threads × 8).
    pub const MAX_HIDDEN: usize = 16_384;

    pub fn check(
        &self,
        op: &'static str,
        x_len: usize,
        delta_len: Option<usize>,
        weight_len: usize,
        out_len: usize,
    ) -> Result<(), KernelError> {
        ensure(op, self.hidden > 0 && self.hidden.is_multiple_of(8) && self.hidden <= Self::MAX_HIDDEN, || {
            format!("hidden {} must be a multiple of 8 in [8, {}]", self.hidden, Self::MAX_HIDDEN)
        })?;
        ensure(op, self.rows <= I32_MAX, || "too many rows".into())?;
        let n = mul(self.rows, self.hidden);
        len_at_least(op, "x", x_len, n)?;
        if let Some(d) = delta_len {
            len_at_least(op, "delta", d, n)?;
        }
        len_exact(op, "weight", weight_len, self.hidden)?;
        len_at_least(op, "out", out_len, n)
    }
}

/// RoPE + KV-cache write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeDims {
    pub num_tokens: usize,
    pub shape: AttnShape,
    pub cache: KvCacheShape,
}

/// Buffer lengths handed to [`RopeDims::check`].
#[derive(Debug, Clone, Copy)]
pub struct RopeLens {
    pub qkv: usize,
    pub positions: usize,
    pub slots: usize,
    pub inv_freq: usize,
    pub k_cache: usize,
    pub v_cache: usize,
}

impl RopeDims {
    pub fn check(&self, l: RopeLens) -> Result<(), KernelError> {
        const OP: &str = "rope_kv_write";
        self.shape.check_heads(OP)?;
        let hd = self.shape.head_dim;
        ensure(OP, hd > 0 && hd.is_multiple_of(16) && hd <= 256, || format!("head_dim {hd} must be a multiple of 16 in [16, 256]"))?;
        ensure(OP, self.num_tokens <= I32_MAX, || "too many tokens".into())?;
        self.cache.check(OP, &self.shape, l.k_cache, l.v_cache)?;
        len_at_least(OP, "qkv", l.qkv, mul(self.num_tokens, self.shape.qkv_width()))?;
        len_exact(OP, "positions", l.positions, self.num_tokens)?;
        len_exact(OP, "slots", l.slots, self.num_tokens)?;
        len_exact(OP, "inv_freq", l.inv_freq, hd / 2)
    }
}

/// SiLU(gate)·up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluDims {
    pub num_tokens: usize,
    pub inter: usize,
}

impl SiluDims {
    pub fn check(&self, gate_up_len: usize, out_len: usize) -> Result<(), KernelError> {
        const OP: &str = "silu_mul";
        ensure(OP, self.inter > 0 && self.inter.is_multiple_of(8) && self.inter <= I32_MAX / 2, || {
            format!("intermediate size {} must be a positive multiple of 8", self.inter)
        })?;
        ensure(OP, self.num_tokens <= GRID_YZ_MAX, || format!("{} tokens > {GRID_YZ_MAX} per launch", self.num_tokens))?;
        len_at_least(OP, "gate_up", gate_up_len, mul(self.num_tokens, 2 * self.inter))?;
        len_at_least(OP, "out", out_len, mul(self.num_tokens, self.inter))
    }
}

/// Which small-batch GEMV kernel runs a [`GemvDims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemvKernel {
    /// `gemv.cu`: one warp per pair of weight rows on the CUDA cores, `t ≤ 8`, `n` even.
    RowPairs,
    /// `gemv_mma.cu`: 16 weight rows per block on the tensor cores (mma.sync m16n8k16),
    /// `t ≤ 16`, `n % 16 == 0`.
    Mma,
}

impl GemvKernel {
    pub const ALL: [GemvKernel; 2] = [GemvKernel::RowPairs, GemvKernel::Mma];

    /// Most activation rows the kernel handles (one instantiation per row count).
    pub const fn max_rows(self) -> usize {
        match self {
            GemvKernel::RowPairs => 8,
            GemvKernel::Mma => 16,
        }
    }

    /// Weight rows must be a multiple of this (a row pair, or an MMA tile of 16).
    pub const fn row_multiple(self) -> usize {
        match self {
            GemvKernel::RowPairs => 2,
            GemvKernel::Mma => 16,
        }
    }

    /// Weight rows one block reads (4 warps × a pair, or one MMA tile).
    pub const fn rows_per_block(self) -> usize {
        match self {
            GemvKernel::RowPairs => 8,
            GemvKernel::Mma => 16,
        }
    }

    /// Blocks of this kernel an SM holds at once, from its registers (ptxas: ≤ 137 per thread
    /// × 128 threads, ≤ 101 × 256): a lower bound, for sizing the L2 prefetch.
    pub const fn blocks_per_sm(self) -> usize {
        match self {
            GemvKernel::RowPairs => 3,
            GemvKernel::Mma => 2,
        }
    }
}

/// Bytes at the head of each weight row a GEMV block asks L2 to prefetch before it waits for
/// the previous kernel (programmatic launch): the blocks that can be resident at once share
/// `budget` bytes, so the prefetched lines fit in L2 until they are read; never more than
/// the row, always whole 16-byte units; 0 turns it off.
pub fn gemv_prefetch_row_bytes(budget: usize, kernel: GemvKernel, n: usize, k: usize, num_sms: usize) -> usize {
    let rows = kernel.rows_per_block();
    let blocks = n.div_ceil(rows);
    let resident = blocks.min(num_sms.saturating_mul(kernel.blocks_per_sm())).max(1);
    let per_row = budget / (rows * resident);
    per_row.min(k.saturating_mul(2)) / 16 * 16
}

/// Most activation rows any small-batch GEMV kernel handles.
pub const GEMV_MAX_ROWS: usize = GemvKernel::Mma.max_rows();

/// What the small-batch GEMV writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemvEpilogue {
    /// `out[t, j]` bf16.
    Bf16,
    /// `out[t, j]` f32.
    F32,
    /// The weight is a fused gate|up (`n = 2·inter` rows): `out[t, j] = silu(gate_j)·up_j`,
    /// bf16, `inter` columns.
    SiluMul,
}

/// `out = x · Wᵀ` for a few rows of `x [t, k]` and `W [n, k]`, by `kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvDims {
    pub t: usize,
    pub n: usize,
    pub k: usize,
    pub epilogue: GemvEpilogue,
    pub kernel: GemvKernel,
}

impl GemvDims {
    /// Whether the kernel handles these sizes at all (callers fall back to a GEMM). `k` stays
    /// below half the i32 range so the kernels' k offsets (past the end by at most a few
    /// spans) cannot overflow.
    pub fn supported(&self) -> bool {
        let rows = self.kernel.row_multiple();
        (1..=self.kernel.max_rows()).contains(&self.t)
            && self.k > 0
            && self.k.is_multiple_of(8)
            && self.n >= rows
            && self.n.is_multiple_of(rows)
            && self.n <= I32_MAX
            && self.k <= I32_MAX / 2
    }

    /// Columns of the output.
    pub fn out_cols(&self) -> usize {
        if self.epilogue == GemvEpilogue::SiluMul { self.n / 2 } else { self.n }
    }

    /// Bytes of one output element.
    pub fn out_elem(&self) -> usize {
        if self.epilogue == GemvEpilogue::F32 { 4 } else { 2 }
    }

    pub fn check(&self, x_len: usize, w_len: usize, out_len: usize, out_elem: usize) -> Result<(), KernelError> {
        const OP: &str = "gemv";
        ensure(OP, self.supported(), || {
            format!(
                "{:?}: t = {} (1..={}), n = {} (a multiple of {}), k = {} (a multiple of 8) unsupported",
                self.kernel,
                self.t,
                self.kernel.max_rows(),
                self.n,
                self.kernel.row_multiple(),
                self.k
            )
        })?;
        ensure(OP, out_elem == self.out_elem(), || format!("output element of {out_elem} bytes for {:?}", self.epilogue))?;
        len_at_least(OP, "x", x_len, mul(self.t, self.k))?;
        len_at_least(OP, "w", w_len, mul(self.n, self.k))?;
        len_at_least(OP, "out", out_len, mul(self.t, self.out_cols()))
    }
}

/// Row layout of the query input and the output of an attention launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnRows {
    /// Rows (tokens) in `q` and `out`.
    pub num_tokens: usize,
    /// Elements between consecutive token rows of `q` (≥ nh·hd; the QKV width when q is
    /// read in place from the fused QKV output).
    pub q_stride: usize,
    pub out_stride: usize,
}

impl AttnRows {
    fn check(&self, op: &'static str, shape: &AttnShape, q_len: usize, out_len: usize) -> Result<(), KernelError> {
        let w = shape.num_heads * shape.head_dim;
        ensure(op, self.q_stride >= w && self.q_stride.is_multiple_of(8), || {
            format!("q_stride {} must be ≥ {w} and a multiple of 8", self.q_stride)
        })?;
        ensure(op, self.out_stride >= w && self.out_stride.is_multiple_of(8), || {
            format!("out_stride {} must be ≥ {w} and a multiple of 8", self.out_stride)
        })?;
        ensure(op, self.num_tokens > 0, || "no tokens".into())?;
        let need = |stride: usize| mul(self.num_tokens - 1, stride).and_then(|v| v.checked_add(w));
        len_at_least(op, "q", q_len, need(self.q_stride))?;
        len_at_least(op, "out", out_len, need(self.out_stride))
    }
}

/// Paged prefill attention over `num_seqs` sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillDims {
    pub shape: AttnShape,
    pub cache: KvCacheShape,
    pub rows: AttnRows,
    pub num_seqs: usize,
    pub max_blocks_per_seq: usize,
    /// Largest query chunk among the sequences (sets the grid; larger chunks are cut off).
    pub max_query_len: usize,
}

/// Buffer lengths handed to [`PrefillDims::check`] / [`DecodeDims::check`].
#[derive(Debug, Clone, Copy)]
pub struct AttnLens {
    pub q: usize,
    pub k_cache: usize,
    pub v_cache: usize,
    pub block_tables: usize,
    pub context_lens: usize,
    /// Prefill only (`num_seqs + 1`); ignored by decode.
    pub query_starts: usize,
    pub out: usize,
}

impl PrefillDims {
    /// Query tokens per block tile (64 rows / group).
    pub fn tokens_per_tile(&self) -> usize {
        64 / self.shape.group().max(1)
    }

    /// (grid.x, grid.y, grid.z) of the launch.
    pub fn grid(&self) -> (u32, u32, u32) {
        let tiles = self.max_query_len.div_ceil(self.tokens_per_tile().max(1));
        (tiles as u32, self.shape.num_kv_heads as u32, self.num_seqs as u32)
    }

    pub fn check(&self, l: AttnLens) -> Result<(), KernelError> {
        const OP: &str = "attention_prefill";
        self.shape.check_attention(OP)?;
        self.cache.check(OP, &self.shape, l.k_cache, l.v_cache)?;
        self.rows.check(OP, &self.shape, l.q, l.out)?;
        ensure(OP, self.num_seqs > 0 && self.num_seqs <= GRID_YZ_MAX, || format!("num_seqs {} out of [1, {GRID_YZ_MAX}]", self.num_seqs))?;
        ensure(OP, self.max_blocks_per_seq > 0 && self.max_blocks_per_seq <= I32_MAX / BLOCK_SIZE, || {
            "max_blocks_per_seq out of range".into()
        })?;
        ensure(OP, self.max_query_len > 0 && self.max_query_len <= self.rows.num_tokens, || {
            format!("max_query_len {} must be in [1, num_tokens {}]", self.max_query_len, self.rows.num_tokens)
        })?;
        len_exact(OP, "block_tables", l.block_tables, self.num_seqs * self.max_blocks_per_seq)?;
        len_exact(OP, "context_lens", l.context_lens, self.num_seqs)?;
        len_exact(OP, "query_starts", l.query_starts, self.num_seqs + 1)
    }
}

/// Paged decode attention: one query row per sequence (row i = sequence i).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeDims {
    pub shape: AttnShape,
    pub cache: KvCacheShape,
    pub rows: AttnRows,
    pub max_blocks_per_seq: usize,
    /// Upper bound of every context length in the batch: sets the number of splits. Keys
    /// past `num_splits · partition` are not read, so this must not be an underestimate (an
    /// overestimate only adds empty splits, useful for CUDA-graph buckets).
    pub max_context_len: usize,
}

/// How a decode launch is split; depends on the shapes and the device's SM count only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePlan {
    /// Query heads per block (GT): the largest of 8, 4, 3, 2, 1 dividing the group.
    pub head_tile: usize,
    /// Tokens per split (multiple of 16, ≤ 512).
    pub partition: usize,
    pub num_splits: usize,
    /// f32 elements of the partial-accumulator workspace (0 when `num_splits == 1`).
    pub workspace_acc: usize,
    /// f32 elements of the partial (max, sum) workspace.
    pub workspace_ml: usize,
}

impl DecodeDims {
    pub fn num_seqs(&self) -> usize {
        self.rows.num_tokens
    }

    /// Picks the split so that about two blocks per SM are in flight, with splits of 64 to
    /// 512 tokens.
    pub fn plan(&self, num_sms: usize) -> DecodePlan {
        let group = self.shape.group().max(1);
        let head_tile = DECODE_HEAD_TILES.iter().copied().find(|t| group.is_multiple_of(*t)).unwrap_or(1);
        let base_blocks = (self.num_seqs() * self.shape.num_kv_heads * (group / head_tile)).max(1);
        let want_splits = (2 * num_sms.max(1)).div_ceil(base_blocks).max(1);
        let ctx = self.max_context_len.max(1);
        let partition = ctx.div_ceil(want_splits).next_multiple_of(BLOCK_SIZE).clamp(64, DECODE_MAX_PARTITION);
        let num_splits = ctx.div_ceil(partition);
        let (workspace_acc, workspace_ml) = if num_splits > 1 {
            let per = self.num_seqs() * self.shape.num_heads * num_splits;
            (per * self.shape.head_dim, per * 2)
        } else {
            (0, 0)
        };
        DecodePlan { head_tile, partition, num_splits, workspace_acc, workspace_ml }
    }

    pub fn check(&self, l: AttnLens, plan: &DecodePlan, acc_len: usize, ml_len: usize) -> Result<(), KernelError> {
        const OP: &str = "attention_decode";
        self.shape.check_attention(OP)?;
        self.cache.check(OP, &self.shape, l.k_cache, l.v_cache)?;
        self.rows.check(OP, &self.shape, l.q, l.out)?;
        ensure(OP, self.num_seqs() <= GRID_YZ_MAX, || format!("{} sequences > {GRID_YZ_MAX}", self.num_seqs()))?;
        ensure(OP, self.max_blocks_per_seq > 0 && self.max_blocks_per_seq <= I32_MAX / BLOCK_SIZE, || {
            "max_blocks_per_seq out of range".into()
        })?;
        ensure(OP, self.max_context_len > 0 && self.max_context_len <= self.max_blocks_per_seq * BLOCK_SIZE, || {
            format!(
                "max_context_len {} must be in [1, max_blocks_per_seq·16 = {}]",
                self.max_context_len,
                self.max_blocks_per_seq * BLOCK_SIZE
            )
        })?;
        len_exact(OP, "block_tables", l.block_tables, self.num_seqs() * self.max_blocks_per_seq)?;
        len_exact(OP, "context_lens", l.context_lens, self.num_seqs())?;
        len_at_least(OP, "workspace_acc", acc_len, Some(plan.workspace_acc))?;
        len_at_least(OP, "workspace_ml", ml_len, Some(plan.workspace_ml))
    }
}

/// Logit ids per block of `tf_sample_stats` (the split of each row's raw statistics).
pub const SAMPLE_STATS_CHUNK: usize = 4096;

/// Logits processing + sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleDims {
    pub rows: usize,
    pub vocab: usize,
    /// Elements between consecutive logit rows (≥ vocab).
    pub logits_stride: usize,
}

/// Buffer lengths handed to [`SampleDims::check`].
#[derive(Debug, Clone, Copy)]
pub struct SampleLens {
    pub logits: usize,
    pub params: usize,
    pub pen_offsets: usize,
    pub pen_ids: usize,
    pub pen_counts: usize,
    pub sup_offsets: usize,
    pub sup_ids: usize,
    pub scratch: usize,
    pub out_token: usize,
    pub out_logprob: usize,
    pub out_top_ids: usize,
    pub out_top_logprobs: usize,
    /// The shortest of the three partial-statistics buffers.
    pub partials: usize,
}

impl SampleDims {
    /// Chunks of [`SAMPLE_STATS_CHUNK`] ids per row.
    pub fn stat_chunks(&self) -> usize {
        self.vocab.div_ceil(SAMPLE_STATS_CHUNK).max(1)
    }

    /// Elements each partial-statistics buffer needs.
    pub fn partials_len(&self) -> usize {
        self.rows * self.stat_chunks()
    }

    pub fn check(&self, l: SampleLens) -> Result<(), KernelError> {
        const OP: &str = "sample";
        ensure(OP, self.rows > 0 && self.rows <= I32_MAX, || "rows out of range".into())?;
        ensure(OP, self.vocab > 0 && self.vocab <= I32_MAX, || "vocab out of range".into())?;
        ensure(OP, self.logits_stride >= self.vocab, || format!("logits_stride {} < vocab {}", self.logits_stride, self.vocab))?;
        len_at_least(OP, "logits", l.logits, mul(self.rows - 1, self.logits_stride).and_then(|v| v.checked_add(self.vocab)))?;
        len_exact(OP, "params", l.params, self.rows)?;
        len_exact(OP, "pen_offsets", l.pen_offsets, self.rows + 1)?;
        len_exact(OP, "pen_counts", l.pen_counts, l.pen_ids)?;
        len_exact(OP, "sup_offsets", l.sup_offsets, self.rows + 1)?;
        ensure(OP, l.pen_ids <= I32_MAX && l.sup_ids <= I32_MAX, || "sparse lists too long".into())?;
        len_at_least(OP, "scratch", l.scratch, mul(self.rows, self.vocab))?;
        len_at_least(OP, "out_token", l.out_token, Some(self.rows))?;
        len_at_least(OP, "out_logprob", l.out_logprob, Some(self.rows))?;
        len_at_least(OP, "out_top_ids", l.out_top_ids, mul(self.rows, MAX_TOP_LOGPROBS))?;
        len_at_least(OP, "out_top_logprobs", l.out_top_logprobs, mul(self.rows, MAX_TOP_LOGPROBS))?;
        ensure(OP, self.stat_chunks() <= GRID_YZ_MAX, || "vocabulary too large".into())?;
        len_at_least(OP, "partials", l.partials, mul(self.rows, self.stat_chunks()))
    }
}

#[cfg(test)]
#[path = "shapes_tests.rs"]
mod tests;
