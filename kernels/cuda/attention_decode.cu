// Paged decode attention (one query token per sequence), split-KV flash-decoding.
//
// Block (split s, kv head kvh, head tile ht, sequence b) handles the KV positions
// [s·P, min((s+1)·P, ctx)) of one KV head for GT query heads of its group at once, so each
// K/V row is read from memory once per block for all GT heads (GT = group size when it is
// 1, 2, 3, 4 or 8; other divisible group sizes run in several head tiles).
//
// Three phases over the split, with the scores kept in shared memory:
//   1. scores: HD/8 threads per key row, one 16-byte load each (LDG.E.128), dot products for
//      the GT heads reduced across those lanes with shuffles;
//   2. softmax statistics per head (max, sum of exp2) over the split;
//   3. P·V: the same 16-byte-per-thread mapping over V rows, f32 accumulators, then a
//      reduction over token lanes (shuffles, then shared memory across warps).
// With one split the block writes the bf16 output; otherwise it writes unnormalised
// partial accumulators and (max, sum) that tf_attn_decode_merge combines.
//
// Scores are kept in the log2 domain (q pre-scaled by scale·log2 e) so exp2f can be used.
#include "common.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPartition = 512;  // tokens per split (multiple of 16)
constexpr float kLog2e = 1.4426950408889634f;
// Key/value rows each thread loads before using any: loads in flight per thread.
constexpr int kUnroll = 4;

template <int HD, int GT>
struct DecodeSmem {
  static constexpr int kScores = GT * kMaxPartition;   // floats
  static constexpr int kReduce = kWarps * GT * HD;      // floats, aliases the scores
  static constexpr int kFloats = kScores > kReduce ? kScores : kReduce;
};

template <int HD, int GT>
TF_DEV void attn_decode(const __nv_bfloat16* __restrict__ q, long long q_stride, const __nv_bfloat16* __restrict__ k_cache,
                        const __nv_bfloat16* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
                        const int* __restrict__ context_lens, int num_pool_blocks, int num_kv_heads, int group, float scale,
                        int partition, int num_splits, __nv_bfloat16* __restrict__ out, long long out_stride,
                        float* __restrict__ part_acc, float* __restrict__ part_ml) {
  constexpr int TPT = HD / 8;           // threads per key row
  constexpr int TPW = 32 / TPT;         // key rows per warp step
  constexpr int NL = kThreads / TPT;    // key rows per block step
  __shared__ __align__(16) float smem[DecodeSmem<HD, GT>::kFloats];
  __shared__ int pages[kMaxPartition / 16];
  __shared__ float stat_m[GT], stat_l[GT];

  const int split = blockIdx.x;
  const int tiles_per_kv = group / GT;
  const int kvh = blockIdx.y / tiles_per_kv;
  const int head0 = kvh * group + (blockIdx.y % tiles_per_kv) * GT;
  const int seq = blockIdx.z;
  const int num_heads = num_kv_heads * group;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int sub = tid % TPT;  // which 8 dims of a row this thread owns

  int ctx = tf::ld_after_wait(context_lens + seq);
  ctx = min(ctx, max_blocks * 16);
  const int start = split * partition;
  const int n = max(0, min(partition, ctx - start));  // keys in this split

  // Page ids of the split; an id outside the pool marks its keys as absent (score -inf,
  // value 0) instead of reading out of bounds.
  for (int i = tid; i < (n + 15) / 16; i += kThreads) {
    const int p = block_tables[(size_t)seq * max_blocks + start / 16 + i];
    pages[i] = (p >= 0 && p < num_pool_blocks) ? p : -1;
  }

  // Query slice of this thread for each head, pre-scaled into the log2 domain.
  float qf[GT][8];
  const float qscale = scale * kLog2e;
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    tf::unpack8(tf::ldg16(q + (size_t)seq * q_stride + (size_t)(head0 + g) * HD + sub * 8), qf[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] *= qscale;
  }
  __syncthreads();

  float* scores = smem;  // [GT][kMaxPartition]
  // Phase 1: scores. kUnroll rows per thread per iteration keep that many 16-byte loads in
  // flight.
  // The loop bound is warp-uniform (the shuffles below need every lane); rows past the end
  // are masked instead.
  for (int wbase = warp * TPW; wbase < n; wbase += kUnroll * kWarps * TPW) {
    const int base = wbase + lane / TPT;
    uint4 kr[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kWarps * TPW;
      const int page = j < n ? pages[j / 16] : -1;
      ok[u] = page >= 0;
      const size_t off = (((size_t)page * 16 + ((start + j) & 15)) * num_kv_heads + kvh) * HD + sub * 8;
      kr[u] = ok[u] ? tf::ldg16(k_cache + off) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kWarps * TPW;
      float kf[8];
      tf::unpack8(kr[u], kf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(qf[g][i], kf[i], s);
#pragma unroll
        for (int o = TPT / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (sub == 0 && j < n) scores[g * kMaxPartition + j] = ok[u] ? s : -INFINITY;
      }
    }
  }
  __syncthreads();

  // Phase 2: per-head max and sum; scores become exp2(s - max).
  for (int g = warp; g < GT; g += kWarps) {
    float* sg = scores + g * kMaxPartition;
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, sg[j]);
    m = tf::warp_max(m);
    const float mu = m == -INFINITY ? 0.f : m;
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float p = exp2f(sg[j] - mu);
      sg[j] = p;
      l += p;
    }
    l = tf::warp_sum(l);
    if (lane == 0) {
      stat_m[g] = m;
      stat_l[g] = l;
    }
  }
  __syncthreads();

  // Phase 3: P·V.
  float acc[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  const int tl = tid / TPT;
  for (int base = tl; base < n; base += kUnroll * NL) {
    uint4 vr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * NL;
      const int page = j < n ? pages[j / 16] : -1;
      const size_t off = (((size_t)page * 16 + ((start + j) & 15)) * num_kv_heads + kvh) * HD + sub * 8;
      vr[u] = page >= 0 ? tf::ldg16(v_cache + off) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * NL;
      if (j < n) {
        float vf[8];
        tf::unpack8(vr[u], vf);
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          const float p = scores[g * kMaxPartition + j];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(p, vf[i], acc[g][i]);
        }
      }
    }
  }
  // Token lanes inside a warp differ in lane bits ≥ log2(TPT).
#pragma unroll
  for (int g = 0; g < GT; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int o = TPT; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
  __syncthreads();  // scores are dead; reuse the buffer for the cross-warp reduction
  float* red = smem;  // [kWarps][GT][HD]
  if (lane < TPT) {
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float4* dst = reinterpret_cast<float4*>(red + ((size_t)warp * GT + g) * HD + sub * 8);
      dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    }
  }
  __syncthreads();

  for (int e = tid; e < GT * HD; e += kThreads) {
    const int g = e / HD, d = e % HD;
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) a += red[(w * GT + g) * HD + d];
    const int h = head0 + g;
    if (num_splits == 1) {
      const float l = stat_l[g];
      const float o = l > 0.f ? a / l : 0.f;
      out[(size_t)seq * out_stride + (size_t)h * HD + d] = __float2bfloat16_rn(o);
    } else {
      const size_t ps = ((size_t)seq * num_heads + h) * num_splits + split;
      part_acc[ps * HD + d] = a;
      if (d == 0) {
        part_ml[ps * 2] = stat_m[g];
        part_ml[ps * 2 + 1] = stat_l[g];
      }
    }
  }
}

template <int HD>
TF_DEV void attn_decode_merge(const float* __restrict__ part_acc, const float* __restrict__ part_ml, int num_splits,
                              __nv_bfloat16* __restrict__ out, long long out_stride) {
  const int h = blockIdx.x, seq = blockIdx.y, num_heads = gridDim.x;
  const size_t base = ((size_t)seq * num_heads + h) * num_splits;
  float m = -INFINITY;
  for (int s = 0; s < num_splits; ++s) m = fmaxf(m, part_ml[(base + s) * 2]);
  const float mu = m == -INFINITY ? 0.f : m;
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float a = 0.f, l = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float ls = part_ml[(base + s) * 2 + 1];
      if (ls > 0.f) {  // empty splits (past the context) hold m = -inf, l = 0
        const float w = exp2f(part_ml[(base + s) * 2] - mu);
        a = fmaf(w, part_acc[(base + s) * HD + d], a);
        l = fmaf(w, ls, l);
      }
    }
    out[(size_t)seq * out_stride + (size_t)h * HD + d] = __float2bfloat16_rn(l > 0.f ? a / l : 0.f);
  }
}

}  // namespace

// grid = (num_splits, num_kv_heads · group / GT, num_seqs), block = 128.
// q [num_seqs, q_stride] bf16 (head h at column h·HD); caches [blocks·16, nkv, HD] bf16;
// block_tables [num_seqs, max_blocks] i32; context_lens [num_seqs] i32;
// out [num_seqs, out_stride] bf16; part_acc [num_seqs, nh, num_splits, HD] f32 and
// part_ml [num_seqs, nh, num_splits, 2] f32 (used when num_splits > 1).
#define TF_DECODE_KERNEL(HD, GT)                                                                                           \
  extern "C" __global__ void __launch_bounds__(kThreads) tf_attn_decode_hd##HD##_g##GT(                                  \
      const __nv_bfloat16* q, long long q_stride, const __nv_bfloat16* k_cache, const __nv_bfloat16* v_cache,               \
      const int* block_tables, int max_blocks, const int* context_lens, int num_pool_blocks, int num_kv_heads, int group, \
      float scale, int partition, int num_splits, __nv_bfloat16* out, long long out_stride, float* part_acc,              \
      float* part_ml) {                                                                                                     \
    tf::pdl_entry();                                                                                                     \
    attn_decode<HD, GT>(q, q_stride, k_cache, v_cache, block_tables, max_blocks, context_lens, num_pool_blocks,          \
                        num_kv_heads, group, scale, partition, num_splits, out, out_stride, part_acc, part_ml);             \
  }

TF_DECODE_KERNEL(64, 1)
TF_DECODE_KERNEL(64, 2)
TF_DECODE_KERNEL(64, 3)
TF_DECODE_KERNEL(64, 4)
TF_DECODE_KERNEL(64, 8)
TF_DECODE_KERNEL(128, 1)
TF_DECODE_KERNEL(128, 2)
TF_DECODE_KERNEL(128, 3)
TF_DECODE_KERNEL(128, 4)
TF_DECODE_KERNEL(128, 8)

// grid = (num_heads, num_seqs), block = HD. Combines the splits' partial results:
// out = Σ_s 2^(m_s − M) acc_s / Σ_s 2^(m_s − M) l_s.
extern "C" __global__ void __launch_bounds__(128) tf_attn_decode_merge_hd64(const float* part_acc, const float* part_ml,
                                                                            int num_splits, __nv_bfloat16* out,
                                                                            long long out_stride) {
  tf::pdl_entry();
  attn_decode_merge<64>(part_acc, part_ml, num_splits, out, out_stride);
}
extern "C" __global__ void __launch_bounds__(128) tf_attn_decode_merge_hd128(const float* part_acc, const float* part_ml,
                                                                             int num_splits, __nv_bfloat16* out,
                                                                             long long out_stride) {
  tf::pdl_entry();
  attn_decode_merge<128>(part_acc, part_ml, num_splits, out, out_stride);
}
