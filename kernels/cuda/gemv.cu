// Small-batch GEMV for decode steps: out[t, j] = Σ_i x[t, i] · W[j, i] for T ≤ 8 activation
// rows, bf16 inputs, f32 accumulation. At these batch sizes a projection is a pure stream of
// its weight (n·k·2 bytes read once, a few FLOPs per byte), so the kernel is built to keep
// the memory system busy:
//   - one warp per PAIR of weight rows; each lane streams 16-byte chunks of both rows
//     (coalesced 512-byte warp accesses, LDG.E.128), 2–4 chunks of each row in flight
//     before the first use;
//   - the activations (T·k bf16, a few KiB to ~150 KiB) are re-read by every warp through the
//     read-only cache; one 16-byte x chunk feeds both rows of the pair;
//   - a fixed-order shuffle reduction per output (deterministic), lane 0 writes.
// Modes: plain (rows 2w and 2w+1 → columns 2w, 2w+1 of `out`, bf16 or f32), and SiLU·mul,
// the epilogue of a fused gate|up weight: rows w (gate) and inter + w (up) of the weight →
// act[t, w] = silu(g)·u with the same f32 arithmetic as tf_silu_mul, one bf16 rounding, so
// the gate/up activations never round-trip through memory.
#include "common.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// Chunks of each weight row in flight per lane: 4 up to T = 4; 2 beyond, where the T
// accumulator pairs would otherwise push the kernel past the register file (spills).

enum Mode { kPlainBf16 = 0, kPlainF32 = 1, kSiluBf16 = 2 };

template <int T, int MODE>
TF_DEV void gemv(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w, int k, int pairs, int out_cols,
                 void* __restrict__ out, int prefetch_bytes) {
  constexpr int kUnroll = T <= 4 ? 4 : 2;
  const int lane = threadIdx.x & 31;
  const int pair = blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int r0 = MODE == kSiluBf16 ? pair : 2 * pair;
  const int r1 = MODE == kSiluBf16 ? pairs + pair : 2 * pair + 1;
  // The head of each of the warp's two weight rows into L2 before waiting for the previous
  // kernel (prefetch_bytes is 0 unless programmatic launch is on).
  tf::pdl_launch_dependents();
  if (pair < pairs && lane < 2) tf::prefetch_l2(w + (size_t)(lane == 0 ? r0 : r1) * k, prefetch_bytes);
  tf::pdl_wait();
  if (pair >= pairs) return;  // whole warps only: no block-level barrier below
  const __nv_bfloat16* w0 = w + (size_t)r0 * k;
  const __nv_bfloat16* w1 = w + (size_t)r1 * k;
  const int chunks = k >> 3;

  float acc0[T], acc1[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = 0.f;

  // Both rows' weights of chunk c against the T activation rows.
  const auto fma_chunk = [&](const uint4 wa4, const uint4 wb4, int c) {
    float wa[8], wb[8];
    tf::unpack8(wa4, wa);
    tf::unpack8(wb4, wb);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float xv[8];
      tf::unpack8(tf::ldg16(x + (size_t)t * k + (size_t)c * 8), xv);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        acc0[t] = fmaf(wa[i], xv[i], acc0[t]);
        acc1[t] = fmaf(wb[i], xv[i], acc1[t]);
      }
    }
  };
  // Full groups of kUnroll chunks per lane, every load issued before the first use...
  int c = lane;
  for (; c + 32 * (kUnroll - 1) < chunks; c += 32 * kUnroll) {
    uint4 a[kUnroll], b[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      a[u] = tf::ldg16(w0 + (size_t)(c + 32 * u) * 8);
      b[u] = tf::ldg16(w1 + (size_t)(c + 32 * u) * 8);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) fma_chunk(a[u], b[u], c + 32 * u);
  }
  // ...then the tail, one chunk at a time.
  for (; c < chunks; c += 32) fma_chunk(tf::ldg16(w0 + (size_t)c * 8), tf::ldg16(w1 + (size_t)c * 8), c);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    acc0[t] = tf::warp_sum(acc0[t]);
    acc1[t] = tf::warp_sum(acc1[t]);
  }
  if (lane != 0) return;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    if (MODE == kPlainF32) {
      float* o = static_cast<float*>(out) + (size_t)t * out_cols;
      o[r0] = acc0[t];
      o[r1] = acc1[t];
    } else if (MODE == kPlainBf16) {
      // Columns 2w, 2w+1 are adjacent: one 4-byte store.
      *reinterpret_cast<uint32_t*>(static_cast<__nv_bfloat16*>(out) + (size_t)t * out_cols + r0) = tf::pack2(acc0[t], acc1[t]);
    } else {
      static_cast<__nv_bfloat16*>(out)[(size_t)t * out_cols + pair] = __float2bfloat16_rn(tf::silu_mul(acc0[t], acc1[t]));
    }
  }
}

}  // namespace

// x [T, k] bf16 (row stride k), w [rows, k] bf16, k % 8 == 0, both 16-byte aligned.
// grid = ⌈pairs / 4⌉, block = 128. Plain: pairs = rows / 2 (rows even), out [T, out_cols =
// rows]. SiLU: pairs = inter = rows / 2, out [T, out_cols = inter] bf16.
// Launch bounds (128 threads, ≥ 1 block per SM): with the default, ptxas kept registers low
// enough for many more blocks and issued only 4 of the 12 loads of a t = 1 group before the
// first FMA, the rest one by one between them (checked in the SASS). The unrolled group is
// meant to be in flight at once; scripts/check-kernels.sh now checks that it is.
#define TF_GEMV(T, MODE, NAME)                                                                                          \
  extern "C" __global__ void __launch_bounds__(kThreads, 1)                                                             \
      tf_gemv_##NAME##_t##T(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w, int k, int pairs, \
                            int out_cols, void* __restrict__ out, int prefetch_bytes) {                                 \
    gemv<T, MODE>(x, w, k, pairs, out_cols, out, prefetch_bytes);                                                       \
  }
TF_ROWS_1_TO_8(TF_GEMV, kPlainBf16, bf16)
TF_ROWS_1_TO_8(TF_GEMV, kPlainF32, f32)
TF_ROWS_1_TO_8(TF_GEMV, kSiluBf16, silu)
