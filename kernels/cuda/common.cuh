// Shared device helpers for tokenfleet's kernels. Everything here is force-inlined: the build
// fails on any stack frame, so no helper may become a real call.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#define TF_DEV __device__ __forceinline__

// Instantiates X(t, args...) for every activation row count t = 1..8 (or 1..16): the
// small-batch kernels are compiled once per row count so their per-row loops unroll.
#define TF_ROWS_1_TO_8(X, ...) \
  X(1, __VA_ARGS__) X(2, __VA_ARGS__) X(3, __VA_ARGS__) X(4, __VA_ARGS__) X(5, __VA_ARGS__) X(6, __VA_ARGS__) X(7, __VA_ARGS__) X(8, __VA_ARGS__)
#define TF_ROWS_1_TO_16(X, ...)                                                                                    \
  TF_ROWS_1_TO_8(X, __VA_ARGS__)                                                                                   \
  X(9, __VA_ARGS__) X(10, __VA_ARGS__) X(11, __VA_ARGS__) X(12, __VA_ARGS__) X(13, __VA_ARGS__) X(14, __VA_ARGS__) \
      X(15, __VA_ARGS__) X(16, __VA_ARGS__)

namespace tf {

// Programmatic dependent launch (Hopper and newer; nothing on sm_80). Every kernel starts
// with this. launch_dependents lets the next kernel in the stream be scheduled once all of
// this grid's blocks have started; wait blocks until the previous kernel has completed and
// its writes are visible. So with the launch attribute on (Kernels::set_programmatic_launch)
// only launch latency and block scheduling overlap, never memory; without it, both are no-ops.
// The wait comes before any early return, so a grid always completes after its predecessor
// and ordering stays transitive along the stream.
TF_DEV void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
TF_DEV void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
TF_DEV void pdl_entry() {
  pdl_launch_dependents();
  pdl_wait();
}

// Asks L2 to fetch `bytes` (a multiple of 16, 16-byte aligned) from global memory ahead of
// use, with no registers and nothing to wait for (sm_90 bulk prefetch; nothing on sm_80).
// Only for data no earlier kernel writes (weights): the GEMVs issue it before pdl_wait(), so
// with programmatic launch their weights stream in while the previous kernel finishes.
TF_DEV void prefetch_l2(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (bytes > 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// A plain (coherent) 32-bit load that stays after pdl_entry(): ptxas may move read-only
// (ld.global.nc) loads above griddepcontrol.wait, as it did with a decode kernel's first
// load of its context length. scripts/check-kernels.sh fails any sm_90a kernel whose first
// global access comes before the wait.
TF_DEV int ld_after_wait(const int* p) {
  int v;
  asm volatile("ld.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// 16-byte read-only load. `ld.global.nc.v4` keeps weight/KV streams out of L1 thrash and is
// what the SASS check looks for (LDG.E.128.CONSTANT); callers guarantee 16-byte alignment.
TF_DEV uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// bf16 → f32 is a 16-bit shift; the low half of a 32-bit word is the lower-indexed element.
TF_DEV float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
TF_DEV float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

TF_DEV void unpack8(const uint4 v, float (&f)[8]) {
  f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x);
  f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
  f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z);
  f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
}

// Round-to-nearest-even pack of two floats, element `a` in the low half.
TF_DEV uint32_t pack2(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

TF_DEV uint4 pack8(const float (&f)[8]) {
  uint4 v;
  v.x = pack2(f[0], f[1]); v.y = pack2(f[2], f[3]);
  v.z = pack2(f[4], f[5]); v.w = pack2(f[6], f[7]);
  return v;
}

TF_DEV float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

TF_DEV float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; `scratch` holds one float per warp. Every thread gets the result.
// Ends with a barrier so `scratch` can be reused at once.
template <int THREADS>
TF_DEV float block_sum(float v, float* scratch) {
  constexpr int WARPS = THREADS / 32;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < WARPS ? scratch[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// A 32-bit key monotone in the float value, NaN lowest and −0 = +0: "ranks before" in the
// sampler is (key desc, id asc), exactly the CPU's `ranks_before`.
TF_DEV unsigned order_key(float v) {
  if (v != v) return 0u;  // NaN ranks last
  if (v == 0.f) v = 0.f;  // −0 ties with +0
  const unsigned b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// silu(g)·u in f32 exactly as the CPU reference computes it: g / (1 + e^-g) with the accurate
// expf, each step rounded to nearest (no contraction into an FMA).
TF_DEV float silu_mul(float g, float u) { return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u); }

// d += A·B on tensor cores, mma.sync m16n8k16 (bf16 in, f32 accumulate). With g = lane / 4
// and q = lane % 4, the fragments are (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
//   a[0]: A[g][2q, 2q+1]     a[1]: A[g+8][2q, 2q+1]
//   a[2]: A[g][2q+8, 2q+9]   a[3]: A[g+8][2q+8, 2q+9]
//   b0:   B[2q, 2q+1][g]     b1:   B[2q+8, 2q+9][g]
//   d[0], d[1]: D[g][2q, 2q+1]   d[2], d[3]: D[g+8][2q, 2q+1]
// (each 32-bit register holds two bf16, the lower-indexed element in the low half).
TF_DEV void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace tf
