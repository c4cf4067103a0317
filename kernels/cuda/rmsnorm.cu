// RMSNorm over the f32 residual stream, output bf16 for the next GEMM; optionally fused with
// the residual add (x += delta) that precedes every norm after the first.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;
// Chunks of 8 elements per thread held in registers: hidden ≤ 8 · 256 · 8 = 16384.
constexpr int kMaxRounds = 8;

// One row per block. Values stay in registers between the sum of squares and the scaling,
// so x is read once (and written once when fused). The arithmetic mirrors the CPU
// reference: inv = 1 / sqrt(ss / h + eps), out = w · (x · inv), all f32 and unfused.
template <bool kAdd>
TF_DEV void rmsnorm_row(float* __restrict__ x, const __nv_bfloat16* __restrict__ delta,
                        const __nv_bfloat16* __restrict__ weight, __nv_bfloat16* __restrict__ out, int hidden,
                        float eps) {
  __shared__ float red[kThreads / 32];
  const int chunks = hidden / 8;
  float v[kMaxRounds][8];
  float ss = 0.f;
#pragma unroll
  for (int r = 0; r < kMaxRounds; ++r) {
    const int c = threadIdx.x + r * kThreads;
    if (c < chunks) {
      float4* xp = reinterpret_cast<float4*>(x + (size_t)c * 8);
      const float4 a = xp[0], b = xp[1];
      v[r][0] = a.x; v[r][1] = a.y; v[r][2] = a.z; v[r][3] = a.w;
      v[r][4] = b.x; v[r][5] = b.y; v[r][6] = b.z; v[r][7] = b.w;
      if (kAdd) {
        float d[8];
        tf::unpack8(tf::ldg16(delta + (size_t)c * 8), d);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[r][i] = __fadd_rn(v[r][i], d[i]);
        xp[0] = make_float4(v[r][0], v[r][1], v[r][2], v[r][3]);
        xp[1] = make_float4(v[r][4], v[r][5], v[r][6], v[r][7]);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) ss = fmaf(v[r][i], v[r][i], ss);
    }
  }
  ss = tf::block_sum<kThreads>(ss, red);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)hidden), eps)));
#pragma unroll
  for (int r = 0; r < kMaxRounds; ++r) {
    const int c = threadIdx.x + r * kThreads;
    if (c < chunks) {
      float w[8], o[8];
      tf::unpack8(tf::ldg16(weight + (size_t)c * 8), w);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = __fmul_rn(w[i], __fmul_rn(v[r][i], inv));
      *reinterpret_cast<uint4*>(out + (size_t)c * 8) = tf::pack8(o);
    }
  }
}

}  // namespace

// grid = num_rows, block = 256. x [rows, hidden] f32, out [rows, hidden] bf16.
extern "C" __global__ void __launch_bounds__(kThreads)
tf_rmsnorm(const float* __restrict__ x, const __nv_bfloat16* __restrict__ weight, __nv_bfloat16* __restrict__ out,
           int hidden, float eps) {
  tf::pdl_entry();
  const size_t row = blockIdx.x;
  rmsnorm_row<false>(const_cast<float*>(x) + row * hidden, nullptr, weight, out + row * hidden, hidden, eps);
}

// grid = num_rows, block = 256. x [rows, hidden] f32 (updated in place: x += delta),
// delta [rows, hidden] bf16 (a GEMM output), out [rows, hidden] bf16.
extern "C" __global__ void __launch_bounds__(kThreads)
tf_add_rmsnorm(float* __restrict__ x, const __nv_bfloat16* __restrict__ delta, const __nv_bfloat16* __restrict__ weight,
               __nv_bfloat16* __restrict__ out, int hidden, float eps) {
  tf::pdl_entry();
  const size_t row = blockIdx.x;
  rmsnorm_row<true>(x + row * hidden, delta + row * hidden, weight, out + row * hidden, hidden, eps);
}
