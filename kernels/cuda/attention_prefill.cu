// Paged prefill attention: causal flash attention (online softmax) over a sequence's query
// chunk at positions [ctx − nq, ctx), reading every key ≤ its position from the paged cache
// through the block table. Tensor cores via mma.sync m16n8k16 (bf16 in, f32 accumulate).
//
// GQA: a block serves one KV head and packs the `group` query heads of that KV head into
// the 64 rows of its tile (row r = token r / group, head r % group), so every K/V tile it
// loads serves all heads of the group. Tokens per tile = 64 / group (63 rows used for a
// group of 3).
//
// Per block: 4 warps × 16 rows. The Q tile goes through shared memory into registers once
// (A fragments); K and V tiles of 64 keys (4 pages) are loaded with cp.async (16-byte,
// zero-filled past the end) into XOR-swizzled shared memory so ldmatrix is conflict-free.
// Loads of the next K tile and of the current V tile overlap the S = QKᵀ and softmax work.
// P is converted to bf16 in registers (the S accumulator layout equals the A operand layout)
// for O += P·V. Scores are kept in the log2 domain.
#include "common.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kRows = 64;  // query rows (token × head) per block
constexpr int kKeys = 64;  // keys per K/V tile
constexpr float kLog2e = 1.4426950408889634f;

TF_DEV uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

TF_DEV void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;  // 0 source bytes ⇒ the 16 destination bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
TF_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
TF_DEV void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

TF_DEV void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
TF_DEV void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows][HD] bf16 tile.
template <int HD>
TF_DEV uint32_t swz(int r, int c) {
  return (uint32_t)(r * (HD / 8) + (c ^ (r & 7))) * 16u;
}

// One K or V tile: keys [kv0, kv0 + 64) of KV head kvh, zero rows at and past kv_len or on a
// page id outside the pool.
template <int HD>
TF_DEV void load_kv_tile(uint32_t s_base, const __nv_bfloat16* __restrict__ cache, const int* __restrict__ table,
                         int kv0, int kv_len, int num_pool_blocks, int num_kv_heads, int kvh) {
  constexpr int CPR = HD / 8;  // 16-byte chunks per row
#pragma unroll
  for (int i = 0; i < kKeys * CPR / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx / CPR, c = idx % CPR;
    const int kpos = kv0 + r;
    int page = kpos < kv_len ? __ldg(table + kpos / 16) : -1;
    const bool ok = page >= 0 && page < num_pool_blocks;
    page = ok ? page : 0;
    const __nv_bfloat16* src = cache + (((size_t)page * 16 + (kpos & 15)) * num_kv_heads + kvh) * HD + c * 8;
    cp_async16(s_base + swz<HD>(r, c), src, ok);
  }
}

template <int HD>
TF_DEV void attn_prefill(const __nv_bfloat16* __restrict__ q, long long q_stride, const __nv_bfloat16* __restrict__ k_cache,
                         const __nv_bfloat16* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
                         const int* __restrict__ context_lens, const int* __restrict__ query_starts, int num_pool_blocks,
                         int num_kv_heads, int group, float scale, __nv_bfloat16* __restrict__ out, long long out_stride) {
  constexpr int CPR = HD / 8;
  __shared__ __align__(128) uint4 sK[kKeys * CPR];  // also stages the Q tile at the start
  __shared__ __align__(128) uint4 sV[kKeys * CPR];
  const uint32_t sk = smem_u32(sK), sv = smem_u32(sV);

  const int seq = blockIdx.z, kvh = blockIdx.y;
  const int q_start = query_starts[seq];
  const int nq = query_starts[seq + 1] - q_start;
  const int ctx = min(context_lens[seq], max_blocks * 16);
  const int tpt = kRows / group;  // tokens per tile
  const int tile = gridDim.x - 1 - blockIdx.x;  // heaviest (latest) tiles are scheduled first
  const int tok0 = tile * tpt;
  if (tok0 >= nq) return;  // block-uniform, before any barrier
  const int ntok = min(tpt, nq - tok0);
  const int kv_len = max(0, ctx - nq + tok0 + ntok);  // keys the last token of the tile sees
  const int* table = block_tables + (size_t)seq * max_blocks;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // The two rows this thread holds in every accumulator fragment, and their positions
  // (-1 for padding rows: fully masked, never written).
  int pos[2], row_tok[2], row_head[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + (lane >> 2) + h * 8;
    const int t = r / group;
    const bool valid = t < ntok;
    row_tok[h] = t;
    row_head[h] = kvh * group + r % group;
    pos[h] = valid ? ctx - nq + tok0 + t : -1;
  }

  // Q tile → shared (staged in sK) → A fragments in registers.
#pragma unroll
  for (int i = 0; i < kRows * CPR / kThreads; ++i) {
    const int idx = tid + i * kThreads;
    const int r = idx / CPR, c = idx % CPR;
    const int t = r / group;
    const bool ok = t < ntok;
    const __nv_bfloat16* src =
        ok ? q + (size_t)(q_start + tok0 + t) * q_stride + (size_t)(kvh * group + r % group) * HD + c * 8 : q;
    cp_async16(sk + swz<HD>(r, c), src, ok);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qa[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) ldsm_x4(sk + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), qa[kk]);
  __syncthreads();

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float qscale = scale * kLog2e;
  const int n_tiles = (kv_len + kKeys - 1) / kKeys;

  load_kv_tile<HD>(sk, k_cache, table, 0, kv_len, num_pool_blocks, num_kv_heads, kvh);
  cp_async_commit();
  for (int it = 0; it < n_tiles; ++it) {
    const int kv0 = it * kKeys;
    load_kv_tile<HD>(sv, v_cache, table, kv0, kv_len, num_pool_blocks, num_kv_heads, kvh);
    cp_async_commit();
    cp_async_wait<1>();  // K(it) has landed; V(it) may still be in flight
    __syncthreads();

    float s[kKeys / 8][4];
#pragma unroll
    for (int i = 0; i < kKeys / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kKeys / 16; ++np) {
        uint32_t b[4];
        ldsm_x4(sk + swz<HD>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)), b);
        tf::mma_bf16(s[2 * np], qa[kk], b[0], b[1]);
        tf::mma_bf16(s[2 * np + 1], qa[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with sK
    const bool more = it + 1 < n_tiles;
    if (more) {
      load_kv_tile<HD>(sk, k_cache, table, kv0 + kKeys, kv_len, num_pool_blocks, num_kv_heads, kvh);
      cp_async_commit();
    }

    // Causal mask, scale, online softmax. Element e of n-tile nt is row (e < 2 ? 0 : 1),
    // key kv0 + 8·nt + 2·(lane % 4) + (e & 1).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kv0 + nt * 8 + (lane & 3) * 2 + (e & 1);
        const float v = key <= pos[e >> 1] ? s[nt][e] * qscale : -INFINITY;
        s[nt][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    float alpha[2], mu[2], rs[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mn = fmaxf(m[h], mx[h]);
      mu[h] = mn == -INFINITY ? 0.f : mn;  // a row with nothing visible yet stays at zero
      alpha[h] = exp2f(m[h] - mu[h]);
      m[h] = mn;
    }
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[nt][e] - mu[e >> 1]);
        s[nt][e] = p;
        rs[e >> 1] += p;
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + rs[h];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }

    if (more) {
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // V(it) visible to every warp
#pragma unroll
    for (int ks = 0; ks < kKeys / 16; ++ks) {
      uint32_t a[4];
      a[0] = tf::pack2(s[2 * ks][0], s[2 * ks][1]);
      a[1] = tf::pack2(s[2 * ks][2], s[2 * ks][3]);
      a[2] = tf::pack2(s[2 * ks + 1][0], s[2 * ks + 1][1]);
      a[3] = tf::pack2(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t b[4];
        ldsm_x4_t(sv + swz<HD>(ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 2 + (lane >> 4)), b);
        tf::mma_bf16(o[2 * dp], a, b[0], b[1]);
        tf::mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with sV before the next tile overwrites it
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (pos[h] < 0) continue;
    const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
    __nv_bfloat16* dst = out + (size_t)(q_start + tok0 + row_tok[h]) * out_stride + (size_t)row_head[h] * HD + (lane & 3) * 2;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i)
      *reinterpret_cast<uint32_t*>(dst + i * 8) = tf::pack2(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
  }
}

}  // namespace

// grid = (max tiles per sequence = ceil(max_nq / (64 / group)), num_kv_heads, num_seqs),
// block = 128. q / out: token rows at query_starts[seq] + i with the given row strides,
// head h at column h·HD; caches [blocks·16, nkv, HD]; block_tables [num_seqs, max_blocks];
// context_lens [num_seqs]; query_starts [num_seqs + 1] (absolute token rows).
#define TF_PREFILL_KERNEL(HD)                                                                                            \
  extern "C" __global__ void __launch_bounds__(kThreads) tf_attn_prefill_hd##HD(                                         \
      const __nv_bfloat16* q, long long q_stride, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,             \
      const int* block_tables, int max_blocks, const int* context_lens, const int* query_starts, int num_pool_blocks,    \
      int num_kv_heads, int group, float scale, __nv_bfloat16* out, long long out_stride) {                              \
    tf::pdl_entry();                                                                                                    \
    attn_prefill<HD>(q, q_stride, k_cache, v_cache, block_tables, max_blocks, context_lens, query_starts,               \
                     num_pool_blocks, num_kv_heads, group, scale, out, out_stride);                                      \
  }

TF_PREFILL_KERNEL(64)
TF_PREFILL_KERNEL(128)
