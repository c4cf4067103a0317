// Logits processing and sampling on the device, exactly per worker/src/engine/sampler.rs:
// raw log-softmax statistics and top-n logprobs, penalties (sparse per-row CSR list),
// suppression, temperature (0 ⇒ argmax, ties to the lowest id), top-k, top-p, min-p, then
// the Philox4x32-10 keyed exponential race. Only ids and logprobs leave the device.
//
// The raw statistics every row needs (max, Σ exp, argmax) come from tf_sample_stats
// (sampling_stats.cu), which
// splits each row over many blocks (a single block per row streams the 128k–256k logits at
// a few GB/s: latency-bound); tf_sample merges its per-chunk partials, so a greedy row never
// reads its logits again. The rest runs in one block of 512 threads per row. Orderings use a 32-bit key that is monotone in the
// float value with NaN lowest and −0 = +0, so "rank before" = (key desc, id asc) as in the
// CPU's `ranks_before`. Every "k best" / "smallest prefix with mass ≥ p" set is found by a
// 4-pass radix select over the keys (count or f64-mass histograms) and then the id cutoff
// inside the tie group at the threshold key, so ties at the boundary resolve to lower ids
// exactly as the CPU's stable ordering does. The arithmetic that decides membership or a
// draw mirrors the CPU's: f32 subtraction `v − lmax` widened to f64, f64 exp/log, IEEE
// division for temperature and penalties (explicit _rn intrinsics so nothing is contracted
// into an FMA). Only sums of many terms (logsumexp, top-p mass) are accumulated in another
// order, in f64.
#include <float.h>

#include "common.cuh"

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxTop = 20;  // top logprobs per row (the API's limit)
// Relative width of the band of f32 race scores re-scored exactly in f64: orders of
// magnitude above the f32 scores' error (≈ 1e-6 relative) and still only a few ids wide.
constexpr float kRaceBand = 1e-3f;

// Mirrors `SampleParams` in kernels/src/sampling.rs (#[repr(C)], 48 bytes).
struct SampleParams {
  float temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
  unsigned top_k, token_index;
  unsigned long long seed;
  unsigned top_logprobs, pad;
};
static_assert(sizeof(SampleParams) == 48, "SampleParams layout");

struct Shared {
  double hist_d[256];
  unsigned hist_u[256];
  double red_d[kWarps];
  float red_f[kWarps];
  unsigned long long red_u64[kWarps];
  int red_i[kWarps];
  // select results (written by one thread, read by all after a barrier)
  int sel_digit, sel_found, cut;
  double sel_above, sel_bin;
  // top-n gather
  int top_count;
  unsigned top_key[kMaxTop];
  int top_id[kMaxTop];
};

using tf::order_key;
TF_DEV float key_value(unsigned k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

// ---- block reductions (block-uniform calls; each ends with a barrier) ----
TF_DEV float block_max_f(float v, Shared& sh) {
  v = tf::warp_max(v);
  if ((threadIdx.x & 31) == 0) sh.red_f[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r = fmaxf(r, sh.red_f[w]);
  __syncthreads();
  return r;
}
TF_DEV double block_sum_d(double v, Shared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) sh.red_d[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r += sh.red_d[w];
  __syncthreads();
  return r;
}
TF_DEV unsigned long long block_max_u64(unsigned long long v, Shared& sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long t = __shfl_xor_sync(0xffffffffu, v, o);
    v = t > v ? t : v;
  }
  if ((threadIdx.x & 31) == 0) sh.red_u64[threadIdx.x >> 5] = v;
  __syncthreads();
  unsigned long long r = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r = sh.red_u64[w] > r ? sh.red_u64[w] : r;
  __syncthreads();
  return r;
}
// Exclusive prefix sum of per-thread counts in thread order.
TF_DEV int block_excl_scan(int v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += t;
  }
  if (lane == 31) sh.red_i[warp] = inc;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w) before += sh.red_i[w];
  __syncthreads();
  return before + inc - v;
}

// Id of the best element by (key desc, id asc); NaN only wins when everything is NaN, and
// then id 0, like the CPU's `argmax`.
TF_DEV int block_argmax(const float* row, int vocab, Shared& sh) {
  unsigned long long best = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const unsigned long long c = ((unsigned long long)order_key(row[i]) << 32) | (0xffffffffu - (unsigned)i);
    best = c > best ? c : best;
  }
  best = block_max_u64(best, sh);
  return (int)(0xffffffffu - (unsigned)(best & 0xffffffffu));
}

// Threshold of the top set by (key desc, id asc) among the elements where `pred` holds,
// whose weight (1 each, or `wt(v)` in mass mode) first reaches `target` (> 0):
// member ⇔ key > *K || (key == *K && id ≤ *C). If the whole set weighs less than the
// target (rounding), everything passing `pred` is kept (*K = 0, *C = INT_MAX).
template <bool kMass, class Pred, class Wt>
TF_DEV void block_select(const float* row, int vocab, Pred pred, Wt wt, double target, Shared& sh, unsigned* K, int* C) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned prefix = 0, pmask = 0;
  double above = 0.0, bin_w = 0.0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += kThreads) {
      sh.hist_d[d] = 0.0;
      sh.hist_u[d] = 0u;
    }
    __syncthreads();
    // Warp-uniform loop so lanes falling in the same bin can be aggregated (the top digits
    // of real logits crowd into a handful of bins).
    for (int base = warp * 32; base < vocab; base += kThreads) {
      const int i = base + lane;
      int bin = 256;  // none
      double w = 0.0;
      if (i < vocab) {
        const float v = row[i];
        const unsigned k = order_key(v);
        if ((k & pmask) == prefix && pred(i, v, k)) {
          bin = (int)((k >> shift) & 255u);
          if (kMass) w = wt(v);
        }
      }
      // Most warps of a later pass (or of a sparse predicate) have nothing to count.
      if (__ballot_sync(0xffffffffu, bin < 256) == 0u) continue;
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256) {  // uniform within `peers`: they share the bin
        if (kMass) {
          double sum = 0.0;
          for (unsigned m = peers; m; m &= m - 1) sum += __shfl_sync(peers, w, __ffs(m) - 1);
          w = sum;
        }
        if (lane == __ffs(peers) - 1) {
          if (kMass) {
            atomicAdd(&sh.hist_d[bin], w);
          } else {
            atomicAdd(&sh.hist_u[bin], (unsigned)__popc(peers));
          }
        }
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns digits 255 − 8l … 248 − 8l (descending order = rank order).
      double loc = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int d = 255 - 8 * lane - j;
        loc += kMass ? sh.hist_d[d] : (double)sh.hist_u[d];
      }
      double inc = loc;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, above + inc >= target);
      if (hit == 0u) {
        if (lane == 0) sh.sel_found = 0;
      } else if (lane == __ffs(hit) - 1) {
        double cum = above + inc - loc;
        int pick = 248 - 8 * lane;
        double pick_w = 0.0;
        for (int j = 0; j < 8; ++j) {
          const int d = 255 - 8 * lane - j;
          const double h = kMass ? sh.hist_d[d] : (double)sh.hist_u[d];
          if (cum + h >= target) {
            pick = d;
            pick_w = h;
            break;
          }
          cum += h;
        }
        sh.sel_found = 1;
        sh.sel_digit = pick;
        sh.sel_above = cum;
        sh.sel_bin = pick_w;
      }
    }
    __syncthreads();
    if (!sh.sel_found) {
      *K = 0u;
      *C = INT_MAX;
      __syncthreads();
      return;
    }
    prefix |= (unsigned)sh.sel_digit << shift;
    pmask |= 255u << shift;
    above = sh.sel_above;
    bin_w = sh.sel_bin;
    __syncthreads();
  }
  // Elements of the tie group (key == prefix) to include, in id order.
  long long need;
  if (kMass) {
    const double q = wt(key_value(prefix));
    need = q > 0.0 ? (long long)ceil((target - above) / q) : (long long)(bin_w > 0.0);
  } else {
    need = (long long)(target - above + 0.5);
  }
  need = max(need, 1LL);
  // The need-th tie element in id order: contiguous id ranges per thread, prefix-scanned.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = threadIdx.x * chunk, hi = min(lo + chunk, vocab);
  int cnt = 0;
  for (int i = lo; i < hi; ++i) {
    const float v = row[i];
    const unsigned k = order_key(v);
    cnt += (k == prefix && pred(i, v, k)) ? 1 : 0;
  }
  if (threadIdx.x == 0) sh.cut = INT_MAX;
  const long long excl = block_excl_scan(cnt, sh);
  if (excl < need && need <= excl + cnt) {
    long long r = excl;
    for (int i = lo; i < hi; ++i) {
      const float v = row[i];
      const unsigned k = order_key(v);
      if (k == prefix && pred(i, v, k) && ++r == need) {
        sh.cut = i;
        break;
      }
    }
  }
  __syncthreads();
  *K = prefix;
  *C = sh.cut;
  __syncthreads();
}

// Philox4x32-10, first output word, counter (c0, c1, 0, 0) and key (k0, k1); the same
// constants and round structure as worker/src/engine/philox.rs.
TF_DEV unsigned philox_x0(unsigned c0, unsigned c1, unsigned k0, unsigned k1) {
  unsigned c2 = 0u, c3 = 0u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const unsigned hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const unsigned hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return c0;
}

// Temperature, top-k, top-p, min-p and the race over the processed row `w` (already divided
// by the temperature). Returns the drawn id.
TF_DEV int draw(const float* w, int vocab, const SampleParams& p, Shared& sh) {
  const float lm = [&] {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += kThreads) m = fmaxf(m, w[i]);  // fmaxf skips NaN
    return block_max_f(m, sh);
  }();
  if (lm == -INFINITY) return block_argmax(w, vocab, sh);  // nothing finite: CPU falls back to argmax

  unsigned kk = 0u;
  int ck = INT_MAX;
  if (p.top_k > 0u && p.top_k < (unsigned)vocab) {
    block_select<false>(w, vocab, [](int, float, unsigned) { return true; }, [](float) { return 1.0; },
                        (double)p.top_k, sh, &kk, &ck);
  }
  const auto cand = [=](int i, float v, unsigned k) {
    return (k > kk || (k == kk && i <= ck)) && v > -INFINITY && v == v;
  };
  const auto mass = [=](float v) { return exp((double)__fsub_rn(v, lm)); };

  unsigned kp = 0u;
  int cp = INT_MAX;
  if (p.top_p < 1.0f) {
    double z = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float v = w[i];
      if (cand(i, v, order_key(v))) z += mass(v);
    }
    z = block_sum_d(z, sh);
    double target = (double)p.top_p * z;
    if (!(target > 0.0)) target = DBL_MIN;  // top_p ≤ 0 keeps the single best, like the CPU
    block_select<true>(w, vocab, cand, mass, target, sh, &kp, &cp);
  }

  // The race, in two passes so that f64 transcendentals run on a handful of ids instead
  // of the whole vocabulary: (1) every kept id's score in f32 (accurate logf/log1pf, error
  // far below 1e-5 for the scores that can win) and its block maximum M; (2) the exact f64
  // score of the CPU, only for ids whose f32 score is within kRaceBand of M. An id outside
  // the band cannot be the exact winner, so the exact argmax over the band is the CPU's.
  const double min_p = (double)p.min_p;
  const double ln_min_p = min_p > 0.0 ? log(min_p) : -INFINITY;
  const unsigned k0 = (unsigned)p.seed, k1 = (unsigned)(p.seed >> 32);
  const auto kept = [&](int i, float v, unsigned k) {
    if (!cand(i, v, k) || !(k > kp || (k == kp && i <= cp))) return false;
    if (min_p > 0.0) {
      // exp(d) ≥ min_p decided in f64 like the CPU; far from the boundary the log test agrees.
      const double d = (double)__fsub_rn(v, lm);
      if (d < ln_min_p - 1e-6) return false;
      if (d <= ln_min_p + 1e-6 && !(exp(d) >= min_p)) return false;
    }
    return true;
  };
  const auto score32 = [&](int i, float v) {
    const unsigned x = philox_x0(p.token_index, (unsigned)i, k0, k1);
    // t = −ln u, u = (x + 0.5) / 2^32; near u = 1 through log1p of the exact small gap.
    const float t = x < 0x80000000u ? -logf(((float)x + 0.5f) * 2.3283064365386963e-10f)
                                    : -log1pf(-((float)(0xffffffffu - x) + 0.5f) * 2.3283064365386963e-10f);
    return __fsub_rn(v, lm) - logf(t);
  };
  float m32 = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = w[i];
    if (kept(i, v, order_key(v))) m32 = fmaxf(m32, score32(i, v));
  }
  m32 = block_max_f(m32, sh);
  const float band = kRaceBand * fmaxf(1.0f, fabsf(m32));
  double best_s = -INFINITY;
  int best_i = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = w[i];
    if (!kept(i, v, order_key(v)) || score32(i, v) < m32 - band) continue;
    const double d = (double)__fsub_rn(v, lm);
    const unsigned x = philox_x0(p.token_index, (unsigned)i, k0, k1);
    const double u = ((double)x + 0.5) / 4294967296.0;
    const double s = d - log(-log(u));
    if (s > best_s || (s == best_s && i < best_i)) {
      best_s = s;
      best_i = i;
    }
  }
  // Block argmax of (score desc, id asc).
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double ts = __shfl_xor_sync(0xffffffffu, best_s, o);
    const int ti = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ts > best_s || (ts == best_s && ti < best_i)) {
      best_s = ts;
      best_i = ti;
    }
  }
  if ((threadIdx.x & 31) == 0) {
    sh.red_d[threadIdx.x >> 5] = best_s;
    sh.red_i[threadIdx.x >> 5] = best_i;
  }
  __syncthreads();
  double bs = -INFINITY;
  int bi = INT_MAX;
  for (int w2 = 0; w2 < kWarps; ++w2) {
    if (sh.red_d[w2] > bs || (sh.red_d[w2] == bs && sh.red_i[w2] < bi)) {
      bs = sh.red_d[w2];
      bi = sh.red_i[w2];
    }
  }
  __syncthreads();
  return bi == INT_MAX ? 0 : bi;  // empty candidate set (min_p > 1): the CPU returns 0
}

}  // namespace

// grid = rows, block = 512. logits [rows, logits_stride] f32 (first `vocab` columns used);
// params [rows]; penalties CSR: pen_offsets [rows + 1], pen_ids / pen_counts [pen_nnz] (ids
// unique within a row, as the engine's map produces; out-of-range ids are ignored like the
// CPU's `get_mut`); suppression CSR: sup_offsets [rows + 1], sup_ids [sup_nnz]; scratch [rows, vocab]
// f32. Outputs: out_token [rows], out_logprob [rows] (raw logprob of the drawn id),
// out_top_ids / out_top_logprobs [rows, 20] (best first; slots past top_logprobs hold -1 /
// -inf).
extern "C" __global__ void __launch_bounds__(kThreads)
tf_sample(const float* __restrict__ logits, long long logits_stride, int vocab, const SampleParams* __restrict__ params,
          const int* __restrict__ pen_offsets, const int* __restrict__ pen_ids, const int* __restrict__ pen_counts,
          int pen_nnz, const int* __restrict__ sup_offsets, const int* __restrict__ sup_ids, int sup_nnz, float* scratch, int* __restrict__ out_token,
          float* __restrict__ out_logprob, int* __restrict__ out_top_ids, float* __restrict__ out_top_logprobs,
          const float* __restrict__ part_max, const double* __restrict__ part_sum, const unsigned long long* __restrict__ part_arg,
          int chunks) {
  tf::pdl_entry();
  __shared__ Shared sh;
  const int row = blockIdx.x;
  const float* raw = logits + (size_t)row * logits_stride;
  float* w = scratch + (size_t)row * vocab;
  const SampleParams p = params[row];

  // 1. Raw statistics from tf_sample_stats' partials: lse = m + ln Σ_c s_c·exp(m_c − m) over
  //    the chunks (each s_c = Σ exp(v − m_c), f32 terms, f64 sums; the CPU takes each exp
  //    in f64 against the global max — the difference, ≈ 1e-7 relative in the sum, stays
  //    far below the f32 rounding of lse in most rows). Every thread merges the same few
  //    dozen partials in the same order, so all agree without a barrier.
  const float* pm = part_max + (size_t)row * chunks;
  const double* ps = part_sum + (size_t)row * chunks;
  const unsigned long long* pa = part_arg + (size_t)row * chunks;
  float m = -INFINITY;
  unsigned long long arg_best = 0;
  for (int c = 0; c < chunks; ++c) {
    m = fmaxf(m, pm[c]);
    arg_best = pa[c] > arg_best ? pa[c] : arg_best;
  }
  double s = 0.0;
  if (m != -INFINITY) {
    for (int c = 0; c < chunks; ++c) {
      if (pm[c] != -INFINITY) s += ps[c] * exp((double)__fsub_rn(pm[c], m));
    }
  }
  const float lse = m == -INFINITY ? -INFINITY : (float)((double)m + log(s));
  // The raw argmax (what a greedy row without penalties draws), as block_argmax finds it.
  const int raw_argmax = (int)(0xffffffffu - (unsigned)(arg_best & 0xffffffffu));

  // 2. Top-n raw logprobs.
  const int n_top = (int)min(min(p.top_logprobs, (unsigned)kMaxTop), (unsigned)vocab);
  int n_got = 0;
  if (n_top > 0) {
    unsigned kt;
    int ct;
    block_select<false>(raw, vocab, [](int, float, unsigned) { return true; }, [](float) { return 1.0; }, (double)n_top,
                        sh, &kt, &ct);
    if (threadIdx.x == 0) sh.top_count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const unsigned k = order_key(raw[i]);
      if (k > kt || (k == kt && i <= ct)) {
        const int slot = atomicAdd(&sh.top_count, 1);
        if (slot < kMaxTop) {
          sh.top_key[slot] = k;
          sh.top_id[slot] = i;
        }
      }
    }
    __syncthreads();
    n_got = min(sh.top_count, n_top);
  }
  if (threadIdx.x == 0) {
    // Insertion sort of ≤ 20 entries by (key desc, id asc).
    for (int a = 1; a < n_got; ++a) {
      const unsigned ka = sh.top_key[a];
      const int ia = sh.top_id[a];
      int b = a - 1;
      while (b >= 0 && (sh.top_key[b] < ka || (sh.top_key[b] == ka && sh.top_id[b] > ia))) {
        sh.top_key[b + 1] = sh.top_key[b];
        sh.top_id[b + 1] = sh.top_id[b];
        --b;
      }
      sh.top_key[b + 1] = ka;
      sh.top_id[b + 1] = ia;
    }
    for (int j = 0; j < kMaxTop; ++j) {
      const bool ok = j < n_got;
      out_top_ids[(size_t)row * kMaxTop + j] = ok ? sh.top_id[j] : -1;
      out_top_logprobs[(size_t)row * kMaxTop + j] = ok ? __fsub_rn(raw[sh.top_id[j]], lse) : -INFINITY;
    }
  }

  // 3. The token.
  // Offsets are clamped to the lists' lengths so a malformed CSR cannot read out of bounds.
  const int pen0 = min(max(pen_offsets[row], 0), pen_nnz), pen1 = min(max(pen_offsets[row + 1], pen0), pen_nnz);
  const int sup0 = min(max(sup_offsets[row], 0), sup_nnz), sup1 = min(max(sup_offsets[row + 1], sup0), sup_nnz);
  const float temp = p.temperature;
  int token;
  if (temp == 0.f && pen1 <= pen0 && sup1 <= sup0) {
    token = chunks > 0 ? raw_argmax : 0;
  } else {
    const bool scale = temp != 0.f;
    for (int i = threadIdx.x; i < vocab; i += kThreads) w[i] = scale ? __fdiv_rn(raw[i], temp) : raw[i];
    __syncthreads();  // block-scope visibility of the global writes before the patches
    for (int e = pen0 + threadIdx.x; e < pen1; e += kThreads) {
      const int id = pen_ids[e];
      if (id < 0 || id >= vocab) continue;
      float v = raw[id];
      if (p.repetition_penalty != 1.0f) {
        v = v > 0.f ? __fdiv_rn(v, p.repetition_penalty) : __fmul_rn(v, p.repetition_penalty);
      }
      const int cnt = pen_counts[e];
      if (cnt > 0) v = __fsub_rn(v, __fadd_rn(p.presence_penalty, __fmul_rn(p.frequency_penalty, (float)cnt)));
      w[id] = scale ? __fdiv_rn(v, temp) : v;
    }
    __syncthreads();  // suppression comes after penalties, as on the CPU
    for (int e = sup0 + threadIdx.x; e < sup1; e += kThreads) {
      const int id = sup_ids[e];
      if (id >= 0 && id < vocab) w[id] = scale ? __fdiv_rn(-INFINITY, temp) : -INFINITY;
    }
    __syncthreads();
    token = scale ? draw(w, vocab, p, sh) : block_argmax(w, vocab, sh);
  }
  if (threadIdx.x == 0) {
    out_token[row] = token;
    out_logprob[row] = __fsub_rn(raw[token], lse);
  }
}
