//! The CPU backend's arithmetic primitives, defined by a *fixed reduction order* so that a
//! value never depends on how the work around it was batched or tiled.
//!
//! A dot product over `k` elements is always: eight lane accumulators, lane `l` summing
//! `a[8c+l]·b[8c+l]` with fused multiply-adds in increasing `c`; then the horizontal sum
//! `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`; then the `k mod 8` tail with fused multiply-adds
//! in order. The AVX2 path and the portable path compute exactly this (the portable one
//! with `f32::mul_add`), so results are bit-identical across them. The tiled matmul kernels
//! keep one accumulator per (row, token) with that same order — that is what makes a
//! token's logits bit-identical in prefill and decode, alone or in any batch.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the AVX2+FMA+F16C path can run on this CPU (checked once, cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The canonical horizontal sum of eight lane accumulators.
#[inline(always)]
fn hsum_lanes(a: [f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Portable dot product with the canonical order.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    let k8 = k / 8 * 8;
    let mut acc = [0.0f32; 8];
    let mut i = 0;
    while i < k8 {
        for l in 0..8 {
            acc[l] = a[i + l].mul_add(b[i + l], acc[l]);
        }
        i += 8;
    }
    let mut s = hsum_lanes(acc);
    for j in k8..k {
        s = a[j].mul_add(b[j], s);
    }
    s
}

/// Dot product with the canonical order (AVX2 when available).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let k = a.len().min(b.len());
        // SAFETY: the CPU supports avx2/fma (checked above) and both slices hold >= k floats.
        return unsafe { dot_avx2(a.as_ptr(), b.as_ptr(), k) };
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s4 = _mm_add_ps(lo, hi); // [l0+l4, l1+l5, l2+l6, l3+l7]
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); // [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7), ..]
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1)
}

/// # Safety
/// `a` and `b` must be valid for `k` reads; the CPU must support avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: *const f32, b: *const f32, k: usize) -> f32 {
    let k8 = k / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < k8 {
        // SAFETY: i + 8 <= k8 <= k, within both buffers.
        unsafe {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
        }
        i += 8;
    }
    // SAFETY: target features are enabled on this function.
    let mut s = unsafe { hsum256(acc) };
    for j in k8..k {
        // SAFETY: j < k.
        unsafe { s = (*a.add(j)).mul_add(*b.add(j), s) };
    }
    s
}

/// `y[i] += a · x[i]` with one fused multiply-add per element (each element independent,
/// so the result does not depend on vector width).
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: both slices hold >= n floats; features checked.
        unsafe { axpy_avx2(a, x.as_ptr(), y.as_mut_ptr(), n) };
        return;
    }
    for (yi, xi) in y[..n].iter_mut().zip(&x[..n]) {
        *yi = a.mul_add(*xi, *yi);
    }
}

/// # Safety
/// `x` and `y` valid for `n` floats; avx2/fma supported.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: *const f32, y: *mut f32, n: usize) {
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n.
        unsafe { _mm256_storeu_ps(y.add(i), _mm256_fmadd_ps(av, _mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)))) };
        i += 8;
    }
    while i < n {
        // SAFETY: i < n.
        unsafe { *y.add(i) = a.mul_add(*x.add(i), *y.add(i)) };
        i += 1;
    }
}

/// Rows of the weight panel per micro-tile.
pub const TILE_ROWS: usize = 4;
/// Tokens per micro-tile.
pub const TILE_TOKENS: usize = 3;

/// Computes the `TILE_ROWS × TILE_TOKENS` dot products `out[r][c] = dot(w[r], x[c])`, each
/// with the canonical order. Rows or tokens may repeat (edge tiles pad by repeating the
/// last one); each dot is independent so repeats do not change any value.
#[inline]
pub fn tile_dots(w: [&[f32]; TILE_ROWS], x: [&[f32]; TILE_TOKENS], k: usize, out: &mut [[f32; TILE_TOKENS]; TILE_ROWS]) {
    debug_assert!(w.iter().all(|r| r.len() >= k) && x.iter().all(|c| c.len() >= k));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && w.iter().all(|r| r.len() >= k) && x.iter().all(|c| c.len() >= k) {
        // SAFETY: every row and token slice holds >= k floats (checked), features checked.
        unsafe { tile_dots_avx2(w.map(<[f32]>::as_ptr), x.map(<[f32]>::as_ptr), k, out) };
        return;
    }
    for r in 0..TILE_ROWS {
        for c in 0..TILE_TOKENS {
            out[r][c] = dot_portable(&w[r][..k], &x[c][..k]);
        }
    }
}

/// # Safety
/// Every pointer must be valid for `k` reads; the CPU must support avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_dots_avx2(w: [*const f32; TILE_ROWS], x: [*const f32; TILE_TOKENS], k: usize, out: &mut [[f32; TILE_TOKENS]; TILE_ROWS]) {
    let k8 = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); TILE_TOKENS]; TILE_ROWS];
    let mut i = 0;
    while i < k8 {
        // SAFETY: i + 8 <= k for every pointer.
        unsafe {
            let xv = [_mm256_loadu_ps(x[0].add(i)), _mm256_loadu_ps(x[1].add(i)), _mm256_loadu_ps(x[2].add(i))];
            for r in 0..TILE_ROWS {
                let wv = _mm256_loadu_ps(w[r].add(i));
                for c in 0..TILE_TOKENS {
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
        }
        i += 8;
    }
    for r in 0..TILE_ROWS {
        for c in 0..TILE_TOKENS {
            // SAFETY: features enabled on this function; tail indices < k.
            unsafe {
                let mut s = hsum256(acc[r][c]);
                for j in k8..k {
                    s = (*w[r].add(j)).mul_add(*x[c].add(j), s);
                }
                out[r][c] = s;
            }
        }
    }
}

/// Element type of weight rows read directly by [`rows_dot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowType {
    F16,
    BF16,
    F32,
}

/// Rows per direct (decode) micro-tile.
pub const DIRECT_ROWS: usize = 8;

/// `out[r] = dot(widen(w[r]), x)` for rows given as raw little-endian bytes, widened in
/// registers — the decode path, where each weight is used once and a conversion pass
/// through memory would cost as much as the math. Same canonical order as [`dot`], so
/// the result is bit-identical to widening first.
pub fn rows_dot(w: [&[u8]; DIRECT_ROWS], ty: RowType, x: &[f32], k: usize) -> [f32; DIRECT_ROWS] {
    let es = if ty == RowType::F32 { 4 } else { 2 };
    let ok = x.len() >= k && w.iter().all(|r| r.len() >= k * es);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && ok {
        // SAFETY: every row holds >= k elements and x >= k floats (checked); features checked.
        return unsafe { rows_dot_avx2(w.map(<[u8]>::as_ptr), ty, x.as_ptr(), k) };
    }
    let mut out = [0.0f32; DIRECT_ROWS];
    if !ok {
        return out;
    }
    let mut buf = vec![0.0f32; k];
    for (o, row) in out.iter_mut().zip(w) {
        match ty {
            RowType::F16 => f16_to_f32(&row[..2 * k], &mut buf),
            RowType::BF16 => bf16_to_f32(&row[..2 * k], &mut buf),
            RowType::F32 => le_f32(&row[..4 * k], &mut buf),
        }
        *o = dot_portable(&buf, &x[..k]);
    }
    out
}

/// Loads 8 weights at element `i` of a row as f32.
///
/// # Safety
/// `p` must be valid for 8 elements from `i`; the CPU must support avx2 and f16c.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(p: *const u8, ty: RowType, i: usize) -> __m256 {
    // SAFETY: the caller guarantees 8 elements are readable at element i.
    unsafe {
        match ty {
            RowType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            RowType::BF16 => {
                let h = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            }
            RowType::F32 => _mm256_loadu_ps(p.add(4 * i) as *const f32),
        }
    }
}

/// One weight element as f32 (tails).
///
/// # Safety
/// `p` must be valid for element `i`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn load1(p: *const u8, ty: RowType, i: usize) -> f32 {
    // SAFETY: the caller guarantees element i is readable.
    unsafe {
        match ty {
            RowType::F16 => half::f16::from_bits(u16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)])).to_f32(),
            RowType::BF16 => f32::from_bits((u16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]) as u32) << 16),
            RowType::F32 => f32::from_le_bytes([*p.add(4 * i), *p.add(4 * i + 1), *p.add(4 * i + 2), *p.add(4 * i + 3)]),
        }
    }
}

/// # Safety
/// Every row pointer valid for `k` elements of `ty`, `x` for `k` floats; avx2/fma/f16c.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_dot_avx2(w: [*const u8; DIRECT_ROWS], ty: RowType, x: *const f32, k: usize) -> [f32; DIRECT_ROWS] {
    let k8 = k / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); DIRECT_ROWS];
    let mut i = 0;
    while i < k8 {
        // SAFETY: i + 8 <= k for x and every row.
        unsafe {
            let xv = _mm256_loadu_ps(x.add(i));
            for r in 0..DIRECT_ROWS {
                acc[r] = _mm256_fmadd_ps(load8(w[r], ty, i), xv, acc[r]);
            }
        }
        i += 8;
    }
    let mut out = [0.0f32; DIRECT_ROWS];
    for r in 0..DIRECT_ROWS {
        // SAFETY: features enabled here; tail indices < k.
        unsafe {
            let mut s = hsum256(acc[r]);
            for j in k8..k {
                s = load1(w[r], ty, j).mul_add(*x.add(j), s);
            }
            out[r] = s;
        }
    }
    out
}

/// Widens little-endian f16 bytes to f32 (exact).
pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: reads 2n bytes of src and writes n floats of dst, both in bounds.
        unsafe { f16_to_f32_f16c(src.as_ptr(), dst.as_mut_ptr(), n) };
        done = n / 8 * 8;
    }
    for i in done..n {
        dst[i] = half::f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32();
    }
}

/// # Safety
/// `src` valid for 2n bytes, `dst` for n floats; CPU supports f16c/avx.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_to_f32_f16c(src: *const u8, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: 16 bytes at src+2i and 8 floats at dst+i are in bounds (i + 8 <= n).
        unsafe {
            let h = _mm_loadu_si128(src.add(2 * i) as *const __m128i);
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
}

/// Widens little-endian bf16 bytes to f32 (exact: a bf16 is the top half of an f32).
pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    for (d, s) in dst[..n].iter_mut().zip(src.chunks_exact(2)) {
        *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
    }
}

/// Reads little-endian f32 bytes.
pub fn le_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn avx2_and_portable_dot_are_bit_identical() {
        for k in [1, 7, 8, 9, 64, 100, 576, 1001] {
            let a = data(k, 1);
            let b = data(k, 2);
            assert_eq!(dot(&a, &b).to_bits(), dot_portable(&a, &b).to_bits(), "k={k}");
        }
    }

    #[test]
    fn tile_dots_equal_single_dots() {
        let k = 77;
        let rows: Vec<Vec<f32>> = (0..4).map(|r| data(k, r)).collect();
        let toks: Vec<Vec<f32>> = (0..3).map(|c| data(k, 10 + c)).collect();
        let mut out = [[0.0; 3]; 4];
        tile_dots([&rows[0], &rows[1], &rows[2], &rows[3]], [&toks[0], &toks[1], &toks[2]], k, &mut out);
        for r in 0..4 {
            for c in 0..3 {
                assert_eq!(out[r][c].to_bits(), dot(&rows[r], &toks[c]).to_bits());
            }
        }
    }

    #[test]
    fn direct_rows_equal_widen_then_dot() {
        for k in [5usize, 8, 64, 77, 576] {
            let rows: Vec<Vec<f32>> = (0..4).map(|r| data(k, 30 + r)).collect();
            let x = data(k, 99);
            for (ty, enc) in [
                (RowType::F16, (|v: f32| half::f16::from_f32(v).to_bits().to_le_bytes().to_vec()) as fn(f32) -> Vec<u8>),
                (RowType::BF16, |v: f32| half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec()),
                (RowType::F32, |v: f32| v.to_le_bytes().to_vec()),
            ] {
                let bytes: Vec<Vec<u8>> = rows.iter().map(|r| r.iter().flat_map(|v| enc(*v)).collect()).collect();
                let out = rows_dot(std::array::from_fn(|i| bytes[i % 4].as_slice()), ty, &x, k);
                for r in 0..DIRECT_ROWS {
                    let r = r % 4;
                    let mut wide = vec![0.0; k];
                    match ty {
                        RowType::F16 => f16_to_f32(&bytes[r], &mut wide),
                        RowType::BF16 => bf16_to_f32(&bytes[r], &mut wide),
                        RowType::F32 => le_f32(&bytes[r], &mut wide),
                    }
                    assert_eq!(out[r].to_bits(), dot(&wide, &x).to_bits(), "{ty:?} k={k} row {r}");
                }
            }
        }
    }

    #[test]
    fn f16_widening_matches_half() {
        let vals: Vec<u16> = (0..37u16).map(|i| half::f16::from_f32(i as f32 * 0.73 - 9.0).to_bits()).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![0.0; 37];
        f16_to_f32(&bytes, &mut out);
        for (o, v) in out.iter().zip(&vals) {
            assert_eq!(*o, half::f16::from_bits(*v).to_f32());
        }
    }
}
