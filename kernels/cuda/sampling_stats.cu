// Split-vocabulary row statistics for the sampler (tf_sample in sampling.cu merges them):
// one 128k–256k-logit row streamed by a single block runs at a few GB/s (latency-bound), so
// each row is cut into chunks of 4096 ids, one block each, every thread keeping its 16 loads
// in flight at once.
#include "common.cuh"

namespace {

// 256 threads × 16 logits per block (must match SAMPLE_STATS_CHUNK in kernels/src/shapes.rs).
constexpr int kStatThreads = 256;
constexpr int kStatPer = 16;
constexpr int kStatChunk = kStatThreads * kStatPer;
static_assert(kStatChunk == 4096, "SAMPLE_STATS_CHUNK");

// Argmax key of logit `v` at id `i`: larger is better, ties to the lower id.
TF_DEV unsigned long long arg_key(float v, int i) {
  return ((unsigned long long)tf::order_key(v) << 32) | (0xffffffffu - (unsigned)i);
}

}  // namespace

// grid = (⌈vocab / 4096⌉, rows), block = 256. Per (row, chunk of 4096 ids): the max over
// non-NaN logits (−inf when none), Σ exp(v − that max) over non-NaN v (f32 subtraction and
// accurate expf per term, f64 sum, in a fixed order), and the best argmax key (NaN ranks
// last, ties to the lower id). Each thread keeps its 16 loads in flight at once.
extern "C" __global__ void __launch_bounds__(kStatThreads)
tf_sample_stats(const float* __restrict__ logits, long long logits_stride, int vocab, float* __restrict__ part_max,
                double* __restrict__ part_sum, unsigned long long* __restrict__ part_arg) {
  tf::pdl_entry();
  __shared__ float red_f[kStatThreads / 32];
  __shared__ double red_d[kStatThreads / 32];
  __shared__ unsigned long long red_u[kStatThreads / 32];
  const int row = blockIdx.y, chunk = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* raw = logits + (size_t)row * logits_stride;
  const int base = chunk * kStatChunk + threadIdx.x;
  float v[kStatPer];
#pragma unroll
  for (int j = 0; j < kStatPer; ++j) {
    const int i = base + j * kStatThreads;
    v[j] = i < vocab ? raw[i] : 0.f;
  }
  float m = -INFINITY;
  unsigned long long best = 0;
#pragma unroll
  for (int j = 0; j < kStatPer; ++j) {
    const int i = base + j * kStatThreads;
    if (i < vocab) {
      m = fmaxf(m, v[j]);  // fmaxf skips NaN
      const unsigned long long c = arg_key(v[j], i);
      best = c > best ? c : best;
    }
  }
  m = tf::warp_max(m);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long t = __shfl_xor_sync(0xffffffffu, best, o);
    best = t > best ? t : best;
  }
  if (lane == 0) {
    red_f[warp] = m;
    red_u[warp] = best;
  }
  __syncthreads();
  m = -INFINITY;
  best = 0;
#pragma unroll
  for (int w = 0; w < kStatThreads / 32; ++w) {
    m = fmaxf(m, red_f[w]);
    best = red_u[w] > best ? red_u[w] : best;
  }
  double s = 0.0;
  if (m != -INFINITY) {
#pragma unroll
    for (int j = 0; j < kStatPer; ++j) {
      const int i = base + j * kStatThreads;
      if (i < vocab && v[j] == v[j]) s += (double)expf(__fsub_rn(v[j], m));
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) red_d[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kStatThreads / 32; ++w) total += red_d[w];
    const size_t at = (size_t)row * gridDim.x + chunk;
    part_max[at] = m;
    part_sum[at] = total;
    part_arg[at] = best;
  }
}

