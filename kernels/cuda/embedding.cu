// Embedding gather: bf16 table rows → the f32 residual stream.
#include "common.cuh"

// grid = (ceil(hidden / 8 / 128), num_tokens), block = 128. Each thread moves one 16-byte
// chunk (8 bf16) and writes 32 bytes of f32. hidden % 8 == 0 and a 16-byte aligned table
// are checked by the launcher. Ids outside [0, vocab) (graph padding) produce zeros rather
// than an out-of-bounds read.
extern "C" __global__ void __launch_bounds__(128)
tf_embedding_gather(const int* __restrict__ ids, int num_tokens, const __nv_bfloat16* __restrict__ table,
                    int vocab, int hidden, float* __restrict__ out) {
  tf::pdl_entry();
  const int t = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tokens || c >= hidden / 8) return;
  const int id = ids[t];
  float4* dst = reinterpret_cast<float4*>(out + (size_t)t * hidden + (size_t)c * 8);
  if (id < 0 || id >= vocab) {
    dst[0] = make_float4(0.f, 0.f, 0.f, 0.f);
    dst[1] = make_float4(0.f, 0.f, 0.f, 0.f);
    return;
  }
  float f[8];
  tf::unpack8(tf::ldg16(table + (size_t)id * hidden + (size_t)c * 8), f);
  dst[0] = make_float4(f[0], f[1], f[2], f[3]);
  dst[1] = make_float4(f[4], f[5], f[6], f[7]);
}

// Fed tokens of a step planned ahead: ids[feed[2k]] = sampled[feed[2k + 1]] for k < n, the
// ids the previous step's sampler drew (still in its output buffer: this step's sampler runs
// later in the same stream). grid = ceil(n / 128), block = 128. Entries outside either array
// are skipped (the launcher checks the lengths; the values come from the host).
extern "C" __global__ void __launch_bounds__(128)
tf_feed_tokens(int* __restrict__ ids, int num_tokens, const int* __restrict__ sampled, int num_sampled,
               const int* __restrict__ feed, int n) {
  tf::pdl_entry();
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n) return;
  const int dst = feed[2 * k];
  const int src = feed[2 * k + 1];
  if (dst < 0 || dst >= num_tokens || src < 0 || src >= num_sampled) return;
  ids[dst] = sampled[src];
}
