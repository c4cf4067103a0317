// Small-batch GEMM on tensor cores for decode steps: out[t, j] = Σ_i x[t, i] · W[j, i] for
// T ≤ 16 activation rows, bf16 inputs, f32 accumulation — the partner of gemv.cu's CUDA-core
// kernel, chosen per shape by the backend's startup tune. Why a second kernel: at T = 9..16
// the CUDA-core kernel needs 8 bytes of activations from L1 and ~10 FP32 instructions per
// weight byte, more than an SM issues at HBM speed. Here one mma.sync m16n8k16 multiplies 16
// weight rows by 8 activation rows over 16 k, so the math is free and every weight byte costs
// at most one byte of (cached) activation traffic.
//
// Layout:
//   - a block owns one tile of 16 weight rows: plain, rows 16b..16b+15; SiLU·mul, gate rows
//     8b..8b+7 and their up rows inter+8b.., so a column's gate and up meet in one thread;
//   - its 8 warps split k: warp w takes the 32-element spans w, w+8, w+16, … so the block
//     reads each row 512 contiguous bytes at a time; each lane has 4 spans' loads in flight;
//   - lane (g = lane / 4, q = lane % 4) loads the 16 bytes at k = 32·span + 8q of the tile's
//     weight rows g and g+8 and of activation rows g (and 8+g). The MMA's k order is then a
//     permutation of the span's 32 k — the same one for A and B, so each dot product is
//     unchanged — chosen so that every fragment comes straight from one 16-byte load, with no
//     shared memory and no ldmatrix: MMA h ∈ {0, 1} of a span takes elements 4h..4h+3 of
//     each lane's chunk, logical k (2q, 2q+1) ↔ physical 8q+4h+(0, 1) and logical k
//     (2q+8, 2q+9) ↔ physical 8q+4h+(2, 3) (fragment layout in common.cuh);
//   - the warps' partial sums meet in shared memory and warp 0 adds them in warp order
//     (deterministic) and applies the epilogue: bf16, f32, or silu(gate)·up → bf16 with the
//     same arithmetic as tf_silu_mul.
#include <type_traits>

#include "common.cuh"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
// Spans of k each lane has in flight before the first MMA.
constexpr int kUnroll = 4;
// k elements one warp covers per span: 4 lanes × 8 bf16.
constexpr int kSpan = 32;

enum Mode { kPlainBf16 = 0, kPlainF32 = 1, kSiluBf16 = 2 };

// Word i of a 16-byte chunk (i is a compile-time constant after unrolling).
TF_DEV uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

template <int T, int MODE>
TF_DEV void gemv_mma(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w, int k, int tiles, int out_cols,
                     void* __restrict__ out, int prefetch_bytes) {
  constexpr int NT = (T + 7) / 8;  // MMA n-tiles of 8 activation rows
  __shared__ float partial[kWarps][NT][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int tile = blockIdx.x;
  // The weight rows behind fragment rows g (lo) and g+8 (hi).
  const int row_lo = MODE == kSiluBf16 ? tile * 8 + g : tile * 16 + g;
  const int row_hi = MODE == kSiluBf16 ? (tiles + tile) * 8 + g : tile * 16 + 8 + g;
  // Row starts: a lane's chunk is at k offset 32·span + 8q, and an absent chunk (past k) is
  // loaded from offset 0 instead, so no address ever leaves its row (k can be 8 < 8q + 8).
  const __nv_bfloat16* w_lo = w + (size_t)row_lo * k;
  const __nv_bfloat16* w_hi = w + (size_t)row_hi * k;
  // The head of each of the tile's 16 weight rows into L2 (lane i < 16 of warp 0 takes
  // fragment row i: lo rows for i < 8, hi rows after) before waiting for the previous kernel;
  // prefetch_bytes is 0 unless programmatic launch is on.
  tf::pdl_launch_dependents();
  if (warp == 0 && lane < 16) {
    const int i = lane & 7;
    const int r = lane < 8 ? (MODE == kSiluBf16 ? tile * 8 + i : tile * 16 + i) : (MODE == kSiluBf16 ? (tiles + tile) * 8 + i : tile * 16 + 8 + i);
    tf::prefetch_l2(w + (size_t)r * k, prefetch_bytes);
  }
  tf::pdl_wait();
  const __nv_bfloat16* xr[NT];
  bool x_in[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    x_in[j] = 8 * j + g < T;  // rows past T multiply as zeros and are never stored
    xr[j] = x + (size_t)(x_in[j] ? 8 * j + g : 0) * k;
  }
  const int spans = (k + kSpan - 1) / kSpan;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  // One group: kUnroll spans (s0, s0 + 8, …) of this warp, every load issued before the first
  // MMA uses one. CHECKED: a chunk past k (the last span when k % 32 ≠ 0, or a span past the
  // end) reads as zero and adds nothing; the loads stay unconditional (an absent chunk is
  // loaded from the row's start, then zeroed) so the compiler can still hoist them all.
  const auto group = [&](const int s0, const auto checked) {
    uint4 a_lo[kUnroll], a_hi[kUnroll], b[kUnroll][NT];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int span = s0 + kWarps * u;
      const bool in = !decltype(checked)::value || (span < spans && span * kSpan + 8 * q < k);
      const int col = in ? span * kSpan + 8 * q : 0;
      a_lo[u] = tf::ldg16(w_lo + col);
      a_hi[u] = tf::ldg16(w_hi + col);
#pragma unroll
      for (int j = 0; j < NT; ++j) b[u][j] = tf::ldg16(xr[j] + col);
      if (!in) a_lo[u] = a_hi[u] = zero;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        if (!x_in[j]) b[u][j] = zero;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t a[4] = {word(a_lo[u], 2 * h), word(a_hi[u], 2 * h), word(a_lo[u], 2 * h + 1), word(a_hi[u], 2 * h + 1)};
#pragma unroll
        for (int j = 0; j < NT; ++j) tf::mma_bf16(acc[j], a, word(b[u][j], 2 * h), word(b[u][j], 2 * h + 1));
      }
    }
  };
  // Groups whose spans all lie inside k, then at most one group that reaches past it.
  const int whole = k / kSpan;
  int s0 = warp;
  for (; s0 + kWarps * (kUnroll - 1) < whole; s0 += kWarps * kUnroll) group(s0, std::false_type{});
  if (s0 < spans) group(s0, std::true_type{});

#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) partial[warp][j][e][lane] = acc[j][e];
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float s = 0.f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) s += partial[v][j][e][lane];
      acc[j][e] = s;
    }
  }
  // acc[j][e] and acc[j][2 + e] are rows lo and hi of activation row t = 8j + 2q + e.
#pragma unroll
  for (int j = 0; j < NT; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int t = 8 * j + 2 * q + e;
      if (t >= T) continue;
      const float lo = acc[j][e], hi = acc[j][2 + e];
      if (MODE == kPlainF32) {
        float* o = static_cast<float*>(out) + (size_t)t * out_cols;
        o[row_lo] = lo;
        o[row_hi] = hi;
      } else if (MODE == kPlainBf16) {
        __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out) + (size_t)t * out_cols;
        o[row_lo] = __float2bfloat16_rn(lo);
        o[row_hi] = __float2bfloat16_rn(hi);
      } else {
        static_cast<__nv_bfloat16*>(out)[(size_t)t * out_cols + row_lo] = __float2bfloat16_rn(tf::silu_mul(lo, hi));
      }
    }
  }
}

}  // namespace

// x [T, k] bf16 (row stride k), w [rows, k] bf16, k % 8 == 0, both 16-byte aligned, rows % 16
// == 0. grid = tiles = rows / 16, block = 256. Plain: out [T, out_cols = rows]. SiLU: w is a
// fused gate|up of 2·inter rows, out [T, out_cols = inter] bf16.
// Launch bounds (256 threads, ≥ 1 block per SM): with the default, ptxas caps registers for
// 3 blocks per SM and sinks each span's loads down to its MMAs, leaving 4 of the group's 16
// loads in flight (checked in the SASS). Decode grids are a few hundred blocks, so occupancy
// is set by the grid, not the registers: let the whole group's loads be outstanding.
#define TF_GEMV_MMA(T, MODE, NAME)                                                                               \
  extern "C" __global__ void __launch_bounds__(kThreads, 1)                                                      \
      tf_gemv_mma_##NAME##_t##T(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w, int k, \
                                int tiles, int out_cols, void* __restrict__ out, int prefetch_bytes) {           \
    gemv_mma<T, MODE>(x, w, k, tiles, out_cols, out, prefetch_bytes);                                            \
  }
TF_ROWS_1_TO_16(TF_GEMV_MMA, kPlainBf16, bf16)
TF_ROWS_1_TO_16(TF_GEMV_MMA, kPlainF32, f32)
TF_ROWS_1_TO_16(TF_GEMV_MMA, kSiluBf16, silu)
