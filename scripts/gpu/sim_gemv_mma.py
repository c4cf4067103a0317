#!/usr/bin/env python3
"""Lane-level simulation of kernels/cuda/gemv_mma.cu on the CPU (numpy), for checking its
index arithmetic without a GPU.

Each simulated lane (g = lane / 4, q = lane % 4) of each of the 8 warps of each block does
what the kernel does: it loads the 16-byte chunks at k offset 32·span + 8q of its two weight
rows and of its activation rows (an absent chunk from offset 0, then zeroed), builds the
A/B fragment registers from the chunk's words as the kernel does, and hands them to an
`mma.m16n8k16` modelled from the PTX ISA's fragment table (the same one written out in
kernels/cuda/common.cuh). The warps' partials are summed in warp order and the epilogue
writes the outputs. Every load address is asserted to stay inside its buffer, and the
result is compared with x·Wᵀ (or silu(gate)·up) in float64.

This mirrors the kernel by hand, so it proves the layout reasoning, not the compiled code:
`gpu-selftest kernels` (the `gemv_mma` cases) is the check of the real kernel on a GPU.

    python3 scripts/gpu/sim_gemv_mma.py      # needs numpy
"""
import numpy as np

WARPS, UNROLL, SPAN = 8, 4, 32


def mma(acc, a_frag, b_frag):
    """acc[lane] += the lane's share of D = A·B for one m16n8k16 (A 16×16, B 16×8)."""
    a = np.zeros((16, 16))
    b = np.zeros((16, 8))
    for lane in range(32):
        g, q = lane >> 2, lane & 3
        a0, a1, a2, a3 = a_frag[lane]
        a[g, 2 * q:2 * q + 2], a[g + 8, 2 * q:2 * q + 2] = a0, a1
        a[g, 2 * q + 8:2 * q + 10], a[g + 8, 2 * q + 8:2 * q + 10] = a2, a3
        b0, b1 = b_frag[lane]
        b[2 * q:2 * q + 2, g], b[2 * q + 8:2 * q + 10, g] = b0, b1
    d = a @ b
    for lane in range(32):
        g, q = lane >> 2, lane & 3
        acc[lane] += [d[g, 2 * q], d[g, 2 * q + 1], d[g + 8, 2 * q], d[g + 8, 2 * q + 1]]


def word(chunk, i):
    """Word i (two bf16) of a 16-byte chunk of 8 values."""
    return chunk[2 * i:2 * i + 2]


def gemv_mma(x, w, silu):
    t_rows, k = x.shape
    n = w.shape[0]
    assert n % 16 == 0 and k % 8 == 0
    tiles, nt, spans = n // 16, (t_rows + 7) // 8, (k + SPAN - 1) // SPAN
    out = np.full((t_rows, n // 2 if silu else n), np.nan)
    for tile in range(tiles):
        partial = np.zeros((WARPS, nt, 32, 4))
        for warp in range(WARPS):
            acc = [np.zeros((32, 4)) for _ in range(nt)]
            for s0 in range(warp, spans, WARPS * UNROLL):
                for u in range(UNROLL):
                    span = s0 + WARPS * u
                    lanes = []
                    for lane in range(32):
                        g, q = lane >> 2, lane & 3
                        lo_row = tile * 8 + g if silu else tile * 16 + g
                        hi_row = (tiles + tile) * 8 + g if silu else tile * 16 + 8 + g
                        inside = span < spans and span * SPAN + 8 * q < k
                        off = span * SPAN + 8 * q if inside else 0
                        for r in (lo_row, hi_row):
                            assert (r * k + off + 8) <= n * k, "weight load out of bounds"
                        lo = w[lo_row, off:off + 8] if inside else np.zeros(8)
                        hi = w[hi_row, off:off + 8] if inside else np.zeros(8)
                        xs = []
                        for j in range(nt):
                            row_in = 8 * j + g < t_rows
                            x_row = 8 * j + g if row_in else 0
                            assert (x_row * k + off + 8) <= t_rows * k, "activation load out of bounds"
                            xs.append(x[x_row, off:off + 8] if inside and row_in else np.zeros(8))
                        lanes.append((lo, hi, xs))
                    for h in range(2):
                        a_frag = [(word(lo, 2 * h), word(hi, 2 * h), word(lo, 2 * h + 1), word(hi, 2 * h + 1)) for lo, hi, _ in lanes]
                        for j in range(nt):
                            mma(acc[j], a_frag, [(word(xs[j], 2 * h), word(xs[j], 2 * h + 1)) for _, _, xs in lanes])
            for j in range(nt):
                partial[warp, j] = acc[j]
        total = np.zeros((nt, 32, 4))
        for warp in range(WARPS):  # fixed order, as the kernel's warp 0 adds them
            total += partial[warp]
        for lane in range(32):
            g, q = lane >> 2, lane & 3
            lo_row = tile * 8 + g if silu else tile * 16 + g
            hi_row = (tiles + tile) * 8 + g if silu else tile * 16 + 8 + g
            for j in range(nt):
                for e in range(2):
                    t = 8 * j + 2 * q + e
                    if t >= t_rows:
                        continue
                    lo, hi = total[j, lane, e], total[j, lane, 2 + e]
                    if silu:
                        out[t, lo_row] = lo / (1 + np.exp(-lo)) * hi
                    else:
                        out[t, lo_row], out[t, hi_row] = lo, hi
    return out


def main():
    rng = np.random.default_rng(0)
    cases = [(1, 32, 64, False), (16, 48, 1544, False), (9, 32, 584, True), (13, 16, 8, False), (8, 64, 2056, False),
             (16, 64, 40, True), (3, 16, 8, False), (16, 32, 16, False), (2, 16, 24, True)]
    worst = 0.0
    for t_rows, n, k, silu in cases:
        x, w = rng.standard_normal((t_rows, k)), rng.standard_normal((n, k))
        got = gemv_mma(x, w, silu)
        want = x @ w.T
        if silu:
            gate, up = want[:, :n // 2], want[:, n // 2:]
            want = gate / (1 + np.exp(-gate)) * up
        assert not np.isnan(got).any(), f"t{t_rows} n{n} k{k}: an output was never written"
        err = float(np.max(np.abs(got - want)))
        print(f"t{t_rows:<2} n{n:<3} k{k:<4} {'silu' if silu else 'plain'}: max |Δ| {err:.1e}")
        worst = max(worst, err)
    assert worst < 1e-9, worst
    print("gemv_mma layout simulation: ok")


if __name__ == "__main__":
    main()
