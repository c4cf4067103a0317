// SiLU(gate) · up over the output of a fused gate|up GEMM.
#include "common.cuh"

// gate_up [tokens, 2·inter] bf16 with gate in columns [0, inter) and up in [inter, 2·inter);
// out [tokens, inter] bf16. grid = (ceil(inter / 8 / 256), tokens), block = 256, one 16-byte
// chunk per thread. silu(g) = g / (1 + e^-g) in f32 like the CPU reference (accurate expf,
// IEEE division), then × up, then one rounding to bf16.
extern "C" __global__ void __launch_bounds__(256)
tf_silu_mul(const __nv_bfloat16* __restrict__ gate_up, int inter, int num_tokens, __nv_bfloat16* __restrict__ out) {
  tf::pdl_entry();
  const int t = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tokens || c >= inter / 8) return;
  const __nv_bfloat16* row = gate_up + (size_t)t * 2 * inter;
  float g[8], u[8], o[8];
  tf::unpack8(tf::ldg16(row + (size_t)c * 8), g);
  tf::unpack8(tf::ldg16(row + inter + (size_t)c * 8), u);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = tf::silu_mul(g[i], u[i]);
  *reinterpret_cast<uint4*>(out + (size_t)t * inter + (size_t)c * 8) = tf::pack8(o);
}
