// RoPE (llama3-scaled inverse frequencies computed on the host) applied to Q in place and to
// K on its way into the paged cache; V is copied into the cache alongside.
#include "common.cuh"

namespace {

// sin and cos of a float angle, evaluated in f64 and rounded once to f32 like the CPU
// reference's `(a as f64).cos() as f32`. CUDA's own sincos carries a Payne–Hanek slow path
// with a local-memory array (a stack frame the build forbids), so reduce by π/2 with a
// three-part Cody–Waite constant (fdlibm's split: q·PIO2_1 and q·PIO2_2 are exact for
// |q| < 2^20, i.e. |a| < 1.6e6 rad; positions · inv_freq stay far below that) and evaluate
// Taylor polynomials on [-π/4, π/4], whose truncation error (< 1e-19) is below f64 rounding.
TF_DEV void sincos_f64_to_f32(float a, float* s_out, float* c_out) {
  const double PIO2_1 = 1.57079632673412561417e+00;
  const double PIO2_2 = 6.07710050630396597660e-11;
  const double PIO2_2T = 2.02226624879595063154e-21;
  const double x = (double)a;
  const double q = rint(x * 0.63661977236758134308);  // 2/π
  const double r = ((x - q * PIO2_1) - q * PIO2_2) - q * PIO2_2T;
  const double r2 = r * r;
  // sin r = r (1 - r²/3! + r⁴/5! - …), cos r = 1 - r²/2! + r⁴/4! - …
  double ps = 1.0 / 355687428096000.0;              // 1/17!
  ps = fma(ps, -r2, 1.0 / 1307674368000.0);         // 1/15!
  ps = fma(ps, -r2, 1.0 / 6227020800.0);            // 1/13!
  ps = fma(ps, -r2, 1.0 / 39916800.0);              // 1/11!
  ps = fma(ps, -r2, 1.0 / 362880.0);                // 1/9!
  ps = fma(ps, -r2, 1.0 / 5040.0);                  // 1/7!
  ps = fma(ps, -r2, 1.0 / 120.0);                   // 1/5!
  ps = fma(ps, -r2, 1.0 / 6.0);                     // 1/3!
  const double sr = fma(-r * r2, ps, r);
  double pc = 1.0 / 6402373705728000.0;             // 1/18!
  pc = fma(pc, -r2, 1.0 / 20922789888000.0);        // 1/16!
  pc = fma(pc, -r2, 1.0 / 87178291200.0);           // 1/14!
  pc = fma(pc, -r2, 1.0 / 479001600.0);             // 1/12!
  pc = fma(pc, -r2, 1.0 / 3628800.0);               // 1/10!
  pc = fma(pc, -r2, 1.0 / 40320.0);                 // 1/8!
  pc = fma(pc, -r2, 1.0 / 720.0);                   // 1/6!
  pc = fma(pc, -r2, 1.0 / 24.0);                    // 1/4!
  pc = fma(pc, -r2, 0.5);                           // 1/2!
  const double cr = fma(-r2, pc, 1.0);
  const int quadrant = (int)((long long)q & 3);
  double s, c;
  switch (quadrant) {
    case 0: s = sr; c = cr; break;
    case 1: s = cr; c = -sr; break;
    case 2: s = -sr; c = -cr; break;
    default: s = -cr; c = sr; break;
  }
  *s_out = (float)s;
  *c_out = (float)c;
}

}  // namespace

// qkv [tokens, (nh + 2·nkv)·hd] bf16 from the fused QKV GEMM: Q heads, then K heads, then V
// heads. Q is rotated in place (attention reads it with that row stride). K (rotated) and V
// go to slot `slots[t]` of the caches [num_slots, nkv, hd] bf16 (num_slots = blocks · 16);
// a slot < 0 or ≥ num_slots (graph padding) writes nothing to the cache.
//
// Angles follow worker/src/model/rope.rs bit for bit up to the cos/sin: a = pos · inv_freq
// in f32, cos/sin evaluated in f64 and rounded to f32; the rotation is rotate_half (pairs
// i, i + hd/2) with unfused f32 products, like the CPU.
//
// grid = tokens, block = 128; hd % 16 == 0 and hd ≤ 256 (launcher-checked).
extern "C" __global__ void __launch_bounds__(128)
tf_rope_kv_write(__nv_bfloat16* __restrict__ qkv, int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                 const int* __restrict__ positions, const int* __restrict__ slots, long long num_slots,
                 const float* __restrict__ inv_freq, __nv_bfloat16* __restrict__ k_cache,
                 __nv_bfloat16* __restrict__ v_cache) {
  tf::pdl_entry();
  __shared__ float cs[128], sn[128];
  const int t = blockIdx.x;
  if (t >= num_tokens) return;
  const int half = head_dim / 2;
  const float pos = (float)positions[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = __fmul_rn(pos, inv_freq[i]);
    sincos_f64_to_f32(a, &sn[i], &cs[i]);
  }
  __syncthreads();

  const long long slot = slots[t];
  const bool cache_ok = slot >= 0 && slot < num_slots;
  const size_t row_w = (size_t)(num_heads + 2 * num_kv_heads) * head_dim;
  __nv_bfloat16* row = qkv + (size_t)t * row_w;
  const int vec_per_half = half / 8;
  const int rot_items = (num_heads + num_kv_heads) * vec_per_half;
  const int copy_items = num_kv_heads * (head_dim / 8);
  for (int it = threadIdx.x; it < rot_items + copy_items; it += blockDim.x) {
    if (it < rot_items) {
      const int hh = it / vec_per_half;
      const int i0 = (it % vec_per_half) * 8;
      __nv_bfloat16* head = row + (size_t)hh * head_dim;
      float lo[8], hi[8], ro[8], rh[8];
      tf::unpack8(*reinterpret_cast<const uint4*>(head + i0), lo);
      tf::unpack8(*reinterpret_cast<const uint4*>(head + i0 + half), hi);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float c = cs[i0 + j], s = sn[i0 + j];
        ro[j] = __fsub_rn(__fmul_rn(lo[j], c), __fmul_rn(hi[j], s));
        rh[j] = __fadd_rn(__fmul_rn(hi[j], c), __fmul_rn(lo[j], s));
      }
      const uint4 plo = tf::pack8(ro), phi = tf::pack8(rh);
      if (hh < num_heads) {
        *reinterpret_cast<uint4*>(head + i0) = plo;
        *reinterpret_cast<uint4*>(head + i0 + half) = phi;
      } else if (cache_ok) {
        __nv_bfloat16* dst = k_cache + ((size_t)slot * num_kv_heads + (hh - num_heads)) * head_dim;
        *reinterpret_cast<uint4*>(dst + i0) = plo;
        *reinterpret_cast<uint4*>(dst + i0 + half) = phi;
      }
    } else if (cache_ok) {
      const int ci = it - rot_items;
      const int kh = ci / (head_dim / 8);
      const int c8 = (ci % (head_dim / 8)) * 8;
      const __nv_bfloat16* src = row + (size_t)(num_heads + num_kv_heads + kh) * head_dim + c8;
      __nv_bfloat16* dst = v_cache + ((size_t)slot * num_kv_heads + kh) * head_dim + c8;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    }
  }
}
