#!/usr/bin/env python3
"""Simulates the CUDA backend's rounding on CPU to see which bf16 rounding point drives the
top-1 logprob difference against an f64 reference (≈ our f32 CPU backend) and against
transformers in bf16.

A pure-torch Llama forward in float64 (or float32) with explicit bf16 rounding at exactly
the points worker/src/backend/cuda/mod.rs and kernels/cuda/*.cu round:

  embedding → f32 residual x; rmsnorm → h bf16; QKV GEMM (f32 acc) → bf16; RoPE in f32 on
  the bf16 q/k → bf16 (K/V into the bf16 cache); attention: prefill rows (prompt) use the
  mma kernel, which rounds P = exp2(s − m_tile) to bf16 before P·V (l sums the unrounded P;
  online max per 64-key tile), decode rows are f32; attention out bf16; o_proj → delta bf16;
  x += delta (f32); h = bf16(norm(x)·w); gate_up → bf16; silu_mul in f32 → act bf16;
  down → delta bf16; …; final norm → h bf16; lm_head with f32 logits; log_softmax.

Method: the f64 reference generates N greedy steps per prompt (KV cache). Every variant is
then teacher-forced along the reference's tokens (prompt as one prefill chunk, the
generated tokens as decode rows), so all steps are comparable; "id mismatches before the
first near-tie" counts steps where the variant's argmax differs from the reference's while
the reference's top-1/top-2 margin has stayed ≥ 0.02 since the start.

transformers is run in bf16 (and f32, as a check of this reimplementation) on the same
teacher-forced sequence, CPU. With --cuda-parity PARITY.json (from `gpu-selftest parity`) the
simulated current path is also compared with that real CUDA run along its own tokens.

bf16 numerics are chaotic: one rounding that lands on the other side (f32 vs f64 sums) moves
later roundings too, so the simulator matches a GPU run bit for bit only for a few steps and
then statistically (same error rms). Read rms/p99 and frac_over_tol, not single steps.

    python3 scripts/gpu/sim_numerics.py MODEL_DIR [MODEL_DIR …] [--steps 24] [--json OUT.json]
        [--prompt-lens 9,17,64,300] [--variants a,b,…] [--cuda-parity parity.json] [--threads 1]
"""
import argparse
import json
import math
import os
import sys
import time

import torch

TIE, TOL = 0.02, 2e-2
LOG2E = 1.4426950408889634

# Rounding points (True = rounded to bf16 there, like the CUDA path).
POINTS = ("norm", "qkv", "rope", "attn_p", "attn_out", "delta_o", "gateup", "act", "delta_down")
CURRENT = {p: True for p in POINTS} | {"final": True, "resid_f32": True, "logits_f32": True}
NONE = {p: False for p in POINTS} | {"final": False, "resid_f32": False, "logits_f32": False}


def spec(base, **kw):
    return dict(base) | kw


NOD = {"delta_o": False, "delta_down": False}
VARIANTS = {
    # a–e: the CUDA path now and the candidate fixes of the brief.
    "a:current": spec(CURRENT),
    "b:f32-delta": spec(CURRENT, **NOD),
    "c:f32-delta+hilo-head": spec(CURRENT, **NOD, final="hilo"),
    "d:f32-delta+f32-gateup": spec(CURRENT, **NOD, gateup=False),
    "e:f32-delta+hilo-head+f32-gateup": spec(CURRENT, **NOD, gateup=False, final="hilo"),
    # Further: every GEMM output f32 (q/k/v rounded once, after RoPE, as the cache needs).
    "g:f32-gemm-outs+hilo-head": spec(CURRENT, **NOD, gateup=False, qkv=False, final="hilo"),
    # …and the norm outputs (inputs of the QKV and gate_up GEMMs) as hi+lo bf16 pairs.
    "i:g+hilo-norm-h": spec(CURRENT, **NOD, gateup=False, qkv=False, final="hilo", norm="hilo"),
    # …and every GEMM input as hi+lo bf16 pairs (2 GEMM rows per token): what is left is
    # bf16 q/k/v into attention and bf16 P in the prefill kernel.
    "h:g+hilo-gemm-inputs": spec(CURRENT, **NOD, gateup=False, qkv=False, final="hilo", norm="hilo",
                                 attn_out="hilo", act="hilo"),
    # The same rounding as a:current with f32 instead of f64 arithmetic between roundings
    # (closer to the GPU's f32 accumulation): how much of the error pattern is chaotic.
    "a:current@f32math": spec(CURRENT, dtype="float32"),
    # Attribution: f64 with only one rounding point switched on.
    "only:final-h": spec(NONE, final=True),
    "only:norm-h": spec(NONE, norm=True),
    "only:qkv": spec(NONE, qkv=True),
    "only:attn-inputs(q,k,v after rope)": spec(NONE, rope=True),
    "only:attn-P(prefill)": spec(NONE, attn_p=True),
    "only:attn-out": spec(NONE, attn_out=True),
    "only:delta(o+down)": spec(NONE, delta_o=True, delta_down=True),
    "only:gate_up": spec(NONE, gateup=True),
    "only:act": spec(NONE, act=True),
    # What our CPU backend does: f32 throughout, no bf16 (weights are bf16 exactly).
    "cpu-f32": spec(NONE, dtype="float32"),
    # transformers' own bf16 rounding points, op by op (bf16 residual stream, norm output
    # rounded then scaled by the bf16 weight, RoPE with bf16 cos/sin and a rounding per
    # product and sum, SiLU and the gate·up product rounded, bf16 logits), with exact
    # arithmetic between them: how close an engine that mimics transformers bf16 could get
    # to it (what is left is accumulation order inside the GEMMs and attention).
    "m:hf-bf16-mimic": spec(NONE, hf_mimic=True),
}
# h only where it is nearly free: decode rows (bandwidth-bound GEMVs, 2 rows per token cost
# about what 1 costs); prefill rows keep the current rounding (their GEMMs are compute-bound).
VARIANTS["p:h-for-decode-rows"] = spec(VARIANTS["h:g+hilo-gemm-inputs"], prefill_as=VARIANTS["a:current"])
# Prefill as now, except the last row of the prompt (whose logits are sampled) as h; decode
# rows as h: one extra GEMM row per sequence in prefill.
VARIANTS["p2:h-decode+h-last-prefill-row"] = spec(VARIANTS["h:g+hilo-gemm-inputs"],
                                                  prefill_as=spec(CURRENT, last_row_as=VARIANTS["h:g+hilo-gemm-inputs"]))
# The lm_head input as hi+lo only (no decode-time cost at all: one GEMV row more).
VARIANTS["q:current+hilo-head-decode"] = spec(CURRENT, final="hilo")


def bf(x):
    return x.to(torch.bfloat16).to(x.dtype)


def hilo(x):
    """x as hi + lo, both bf16 (≈ 16 mantissa bits): what a GEMM over [hi; lo] rows sums to."""
    hi = bf(x)
    return hi + bf(x - hi)


def rnd(x, mode):
    if mode == "hilo":
        return hilo(x)
    return bf(x) if mode else x


def f32(x):
    return x.to(torch.float32).to(x.dtype)


def xorshift_prompts(vocab, lens):
    """The prompts of `gpu-selftest parity` (worker/src/cli/gpu_selftest.rs)."""
    out = []
    for i, n in enumerate(lens):
        x = (0x2545F491 * (i + 1)) & 0xFFFFFFFF
        p = []
        for _ in range(n):
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            p.append(1000 + x % (vocab - 2000))
        out.append(p)
    return out


def load_tensors(d):
    from safetensors.torch import load_file

    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    t = {}
    for f in files:
        t.update(load_file(os.path.join(d, f)))
    return t


class Sim:
    def __init__(self, model_dir):
        self.dir = model_dir
        c = json.load(open(os.path.join(model_dir, "config.json")))
        self.c = c
        self.h = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads", self.nh)
        self.hd = c.get("head_dim") or self.h // self.nh
        self.L = c["num_hidden_layers"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.vocab = c["vocab_size"]
        self.raw = load_tensors(model_dir)
        self.tied = "lm_head.weight" not in self.raw
        self.cache = {}
        self.inv_freq = self._inv_freq()

    def _inv_freq(self):
        # worker/src/model/rope.rs, all f32.
        d = self.hd
        theta = torch.tensor(float(self.c.get("rope_theta", 10000.0)), dtype=torch.float32)
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        s = self.c.get("rope_scaling")
        if s and s.get("rope_type", s.get("type")) == "llama3":
            f32c = lambda v: torch.tensor(float(v), dtype=torch.float32)
            factor, lo, hi, old = f32c(s["factor"]), f32c(s["low_freq_factor"]), f32c(s["high_freq_factor"]), f32c(
                s["original_max_position_embeddings"])
            low_wl, high_wl = old / lo, old / hi
            wl = 2.0 * torch.tensor(math.pi, dtype=torch.float32) / inv
            scaled = torch.where(wl > low_wl, inv / factor, inv)
            medium = (wl >= high_wl) & (wl <= low_wl)
            smooth = (old / wl - lo) / (hi - lo)
            inv = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
        return inv

    def rope_cs(self, positions):
        a = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # f32 product
        a = a.to(torch.float64)
        return a.cos().to(torch.float32), a.sin().to(torch.float32)  # f64, rounded once to f32

    def w(self, name, dtype):
        key = (name, dtype)
        if key not in self.cache:
            self.cache[key] = self.raw[name].to(dtype)
        return self.cache[key]

    def drop(self, dtype):
        for k in [k for k in self.cache if k[1] == dtype]:
            del self.cache[k]

    def lm_head_w(self, dtype):
        return self.w("model.embed_tokens.weight" if self.tied else "lm_head.weight", dtype)

    # ---- forward ----------------------------------------------------------------------------
    def rmsnorm(self, x, w):
        inv = 1.0 / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + self.eps)
        return w * (x * inv)

    def attention(self, q, k, v, pos0, prefill_p_bf16):
        """q [T, nh, hd], k/v [Tk, nkv, hd] (keys 0..Tk-1), query rows at pos0..pos0+T-1."""
        T, Tk = q.shape[0], k.shape[0]
        g = self.nh // self.nkv
        qh = q.permute(1, 0, 2)  # [nh, T, hd]
        kh = k.permute(1, 0, 2).repeat_interleave(g, 0)  # head h ↔ kv head h // g
        vh = v.permute(1, 0, 2).repeat_interleave(g, 0)
        pos = torch.arange(pos0, pos0 + T)
        keys = torch.arange(Tk)
        mask = keys[None, :] <= pos[:, None]  # [T, Tk]
        s = qh @ kh.transpose(1, 2) * (LOG2E / math.sqrt(self.hd))  # log2 domain
        s = s.masked_fill(~mask, -math.inf)
        if not prefill_p_bf16:
            m = s.amax(-1, keepdim=True)
            p = torch.exp2(s - m)
            return ((p @ vh) / p.sum(-1, keepdim=True)).permute(1, 0, 2)
        # The mma prefill kernel: 64-key tiles, running max, P rounded to bf16 for P·V only.
        nt = (Tk + 63) // 64
        pad = nt * 64 - Tk
        s = torch.nn.functional.pad(s, (0, pad), value=-math.inf).view(self.nh, T, nt, 64)
        vp = torch.nn.functional.pad(vh, (0, 0, 0, pad))
        m_run = s.amax(-1).cummax(-1).values  # [nh, T, nt]; tile 0 always holds key 0
        p = torch.exp2(s - m_run[..., None])
        scale = torch.exp2(m_run - m_run[..., -1:])  # rescaling of tile j to the final max
        l = (p.sum(-1) * scale).sum(-1, keepdim=True)
        pw = (bf(p) * scale[..., None]).reshape(self.nh, T, nt * 64)
        return ((pw @ vp) / l).permute(1, 0, 2)

    def forward(self, ids, pos0, kv, r, prefill):
        """Hidden rows after the final norm (and the final rounding of variant r)."""
        if prefill and r.get("prefill_as"):
            return self.forward(ids, pos0, kv, r["prefill_as"], prefill)
        if r.get("hf_mimic"):
            return self.forward_hf_mimic(ids, pos0, kv)
        dt = getattr(torch, r.get("dtype", "float64"))
        last = r.get("last_row_as") if prefill else None

        def mode(rr, point):
            return (rr["qkv"] or rr["rope"]) if point == "v" else rr[point]

        def R(x, point):
            if last is None:
                return rnd(x, mode(r, point))
            # The last row (the one whose logits are sampled) rounds as `last_row_as` does.
            return torch.cat([rnd(x[:-1], mode(r, point)), rnd(x[-1:], mode(last, point))])

        X = lambda x: f32(x) if r["resid_f32"] else x
        T = len(ids)
        x = self.raw["model.embed_tokens.weight"][torch.tensor(ids)].to(dt)
        positions = torch.arange(pos0, pos0 + T)
        cos, sin = self.rope_cs(positions)
        cos, sin = cos.to(dt)[:, None, :], sin.to(dt)[:, None, :]
        half = self.hd // 2
        for li in range(self.L):
            p = f"model.layers.{li}."
            W = lambda n: self.w(p + n + ".weight", dt)
            h = R(self.rmsnorm(x, W("input_layernorm")), "norm")
            q = R(h @ W("self_attn.q_proj").T, "qkv").view(T, self.nh, self.hd)
            k = R(h @ W("self_attn.k_proj").T, "qkv").view(T, self.nkv, self.hd)
            v = R(h @ W("self_attn.v_proj").T, "v").view(T, self.nkv, self.hd)  # V: bf16 cache

            def rot(t):
                lo, hi = t[..., :half], t[..., half:]
                return torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], -1)

            q, k = R(rot(q), "rope"), R(rot(k), "rope")
            if li >= len(kv):
                kv.append((k, v))
            else:
                kv[li] = (torch.cat([kv[li][0], k]), torch.cat([kv[li][1], v]))
            K, V = kv[li]
            a = self.attention(q, K, V, pos0, prefill and r["attn_p"])
            a = R(a.reshape(T, self.nh * self.hd), "attn_out")
            x = X(x + R(a @ W("self_attn.o_proj").T, "delta_o"))
            h = R(self.rmsnorm(x, W("post_attention_layernorm")), "norm")
            gate = R(h @ W("mlp.gate_proj").T, "gateup")
            up = R(h @ W("mlp.up_proj").T, "gateup")
            act = R(gate / (1.0 + torch.exp(-gate)) * up, "act")
            x = X(x + R(act @ W("mlp.down_proj").T, "delta_down"))
        return R(self.rmsnorm(x, self.w("model.norm.weight", dt)), "final")

    def forward_hf_mimic(self, ids, pos0, kv):
        """transformers' LlamaModel in bf16, rounding where it rounds (modeling_llama.py,
        5.x); f64 between roundings."""
        dt = torch.float64
        T = len(ids)
        x = self.raw["model.embed_tokens.weight"][torch.tensor(ids)].to(dt)  # bf16 values
        positions = torch.arange(pos0, pos0 + T)
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = bf(emb.cos().to(dt))[:, None, :], bf(emb.sin().to(dt))[:, None, :]
        half = self.hd // 2

        def norm(v, w):  # f32 statistics, rounded to bf16, times the bf16 weight (rounded)
            v32 = v.to(torch.float32)
            n = v32 * torch.rsqrt(v32.pow(2).mean(-1, keepdim=True) + self.eps)
            return bf(w * bf(n.to(dt)))

        def rope(t):
            rh = torch.cat([-t[..., half:], t[..., :half]], -1)
            return bf(bf(t * cos) + bf(rh * sin))

        for li in range(self.L):
            p = f"model.layers.{li}."
            W = lambda n: self.w(p + n + ".weight", dt)
            h = norm(x, W("input_layernorm"))
            q = rope(bf(h @ W("self_attn.q_proj").T).view(T, self.nh, self.hd))
            k = rope(bf(h @ W("self_attn.k_proj").T).view(T, self.nkv, self.hd))
            v = bf(h @ W("self_attn.v_proj").T).view(T, self.nkv, self.hd)
            if li >= len(kv):
                kv.append((k, v))
            else:
                kv[li] = (torch.cat([kv[li][0], k]), torch.cat([kv[li][1], v]))
            K, V = kv[li]
            a = bf(self.attention(q, K, V, pos0, True).reshape(T, self.nh * self.hd))
            x = bf(x + bf(a @ W("self_attn.o_proj").T))
            h = norm(x, W("post_attention_layernorm"))
            gate = bf(h @ W("mlp.gate_proj").T)
            up = bf(h @ W("mlp.up_proj").T)
            act = bf(bf(gate / (1.0 + torch.exp(-gate))) * up)
            x = bf(x + bf(act @ W("mlp.down_proj").T))
        return norm(x, self.w("model.norm.weight", dt))

    def logits(self, hrows, r):
        dt = hrows.dtype
        lg = hrows @ self.lm_head_w(dt).T
        if r.get("logits_f32"):
            lg = f32(lg)
        if r.get("hf_mimic"):
            lg = bf(lg)
        return lg.to(torch.float64)

    def generate_ref(self, prompt, steps):
        """f64, no rounding: greedy tokens and log-probs per step."""
        r = spec(NONE)
        kv = []
        h = self.forward(prompt, 0, kv, r, prefill=True)[-1:]
        toks, lps = [], []
        for i in range(steps):
            lp = torch.log_softmax(self.logits(h, r)[0], -1)
            t = int(lp.argmax())
            toks.append(t)
            lps.append(lp)
            if i + 1 < steps:
                h = self.forward([t], len(prompt) + i, kv, r, prefill=False)
        return toks, torch.stack(lps)

    def teacher_forced(self, prompt, toks, r):
        """Log-probs [steps, vocab] of variant r along the given continuation."""
        kv = []
        h0 = self.forward(prompt, 0, kv, r, prefill=True)[-1:]
        hs = [h0]
        if len(toks) > 1:
            hs.append(self.forward(toks[:-1], len(prompt), kv, r, prefill=False))
        return torch.log_softmax(self.logits(torch.cat(hs), r), -1)


def hf_logprobs(model_dir, prompts, ref_toks, dtype, sim, attn="sdpa"):
    """transformers on the teacher-forced sequence: (HF logits, lm_head in f64 from HF's final hidden)."""
    from transformers import LlamaForCausalLM

    try:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    except TypeError:
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation=attn)
    model.eval()
    out_hf, out_head, checks = [], [], []
    W = sim.lm_head_w(torch.float64)
    with torch.no_grad():
        for p, toks in zip(prompts, ref_toks):
            n = len(toks)
            ids = torch.tensor([p + toks[:-1]])
            o = model(ids, output_hidden_states=True, logits_to_keep=n)
            hl = o.hidden_states[-1][0, -n:]
            # Is hidden_states[-1] the final norm's output? Then lm_head(it) == logits exactly.
            checks.append(bool(torch.equal(model.lm_head(hl[None]), o.logits)))
            out_hf.append(torch.log_softmax(o.logits[0].to(torch.float64), -1))
            out_head.append(torch.log_softmax(hl.to(torch.float64) @ W.T, -1))
    del model
    return out_hf, out_head, all(checks)


def stats(d):
    """max, p99 and rms of |Δ|; p_pass_96: the chance that 96 steps with Gaussian errors of
    this rms all stay within TOL (the parity tier compares up to 4 prompts × 24 steps)."""
    d = torch.as_tensor(d, dtype=torch.float64)
    rms = float(d.pow(2).mean().sqrt())
    p1 = math.erf(TOL / (rms * math.sqrt(2))) if rms > 0 else 1.0
    return {"max": float(d.max()), "p99": float(torch.quantile(d, 0.99)), "rms": rms, "n": d.numel(),
            "frac_over_tol": float((d > TOL).double().mean()), "p_pass_96": p1 ** 96}


def run_model(model_dir, a, cuda_parity):
    t0 = time.time()
    sim = Sim(model_dir)
    name = os.path.basename(os.path.normpath(model_dir))
    base = [int(x) for x in a.prompt_lens.split(",")]
    lens = [base[i % len(base)] for i in range(a.prompts)]  # the first 4: the parity tier's
    prompts = xorshift_prompts(sim.vocab, lens)
    log = lambda *x: print(f"[{name} {time.time() - t0:6.1f}s]", *x, file=sys.stderr, flush=True)
    cuda_cases = []
    if cuda_parity:
        for m in json.load(open(cuda_parity))["models"]:
            if os.path.basename(os.path.normpath(m["model"])) == name:
                cuda_cases = m["cuda_outputs"]
        log("prompts match the CUDA run's:", all(c["prompt_ids"] in prompts for c in cuda_cases))
    log(f"loaded: hidden {sim.h}, layers {sim.L}, vocab {sim.vocab}, tied {sim.tied}")

    ref_toks, ref_lp = [], []
    for p in prompts:
        t, lp = sim.generate_ref(p, a.steps)
        ref_toks.append(t)
        ref_lp.append(lp)
    log("reference generated")
    top2 = [lp.topk(2, -1).values for lp in ref_lp]
    ref_top1 = [t[:, 0] for t in top2]
    margins = [t[:, 0] - t[:, 1] for t in top2]
    first_tie = []
    for m in margins:
        idx = (m < TIE).nonzero()
        first_tie.append(int(idx[0]) if len(idx) else a.steps)

    results = {}
    wanted = [v.strip() for v in a.variants.split(",")] if a.variants else None
    want = lambda v: wanted is None or v in wanted or v.split(":")[0] in wanted

    def record(vname, lps, secs, r=None):
        top1 = [lp.max(-1) for lp in lps]
        d_ref = torch.cat([abs(t.values - rt) for t, rt in zip(top1, ref_top1)])
        d_pre = torch.cat([abs(t.values - rt)[: ft + 1] for t, rt, ft in zip(top1, ref_top1, first_tie)])
        mism = sum(int((t.indices[:ft] != torch.tensor(rt[:ft])).sum()) for t, rt, ft in zip(top1, ref_toks, first_tie))
        dl = torch.cat([(lp - rl) for lp, rl in zip(lps, ref_lp)])  # log-prob error over the vocab
        res = {"vs_ref": stats(d_ref), "vs_ref_max_until_first_tie": float(d_pre.max()),
               "id_mismatches_before_first_tie": mism, "logprob_err_rms_over_vocab": float(dl.pow(2).mean().sqrt()),
               "seconds": round(secs, 1), "top1": [t.values.tolist() for t in top1]}
        if r is not None:
            res["rounding"] = r
        results[vname] = res
        log(f"{vname:36s} vs ref max {res['vs_ref']['max']:.4f} p99 {res['vs_ref']['p99']:.4f} mism {mism} ({secs:.0f}s)")

    hf_ok = None
    if not a.no_hf:
        # transformers bf16 with its default (sdpa) attention, the same with eager attention
        # (does transformers agree with itself within the tolerance?), and f32.
        for dt, names, attn in ((torch.bfloat16, ("f:hf-bf16", "f:hf-bf16+f32-head"), "sdpa"),
                                (torch.bfloat16, ("f:hf-bf16-eager-attn", None), "eager"),
                                (torch.float32, ("hf-f32", None), "sdpa")):
            if names[0] != "f:hf-bf16" and not want(names[0]):
                continue
            t1 = time.time()
            lh, lhead, ok = hf_logprobs(model_dir, prompts, ref_toks, dt, sim, attn)
            if dt == torch.bfloat16:
                hf_ok = ok
            record(names[0], lh, time.time() - t1)
            if names[1]:
                record(names[1], lhead, 0.0)
    order = sorted(VARIANTS, key=lambda v: VARIANTS[v].get("dtype") != "float32")  # f32 first, then free it
    for vname in order:
        if not want(vname):
            continue
        r = VARIANTS[vname]
        t1 = time.time()
        lps = [sim.teacher_forced(p, t, r) for p, t in zip(prompts, ref_toks)]
        record(vname, lps, time.time() - t1, r)
        if r.get("dtype") == "float32":
            sim.drop(torch.float32)
    sim.drop(torch.float32)

    # Δ against transformers bf16 (its logits, and its hidden state through an f64 lm_head).
    for base in ("f:hf-bf16", "f:hf-bf16+f32-head"):
        if base not in results:
            continue
        hb = [torch.tensor(t) for t in results[base]["top1"]]
        for v, res in results.items():
            d = torch.cat([abs(torch.tensor(t) - h) for t, h in zip(res["top1"], hb)])
            d_pre = torch.cat([abs(torch.tensor(t) - h)[: ft + 1] for t, h, ft in zip(res["top1"], hb, first_tie)])
            key = "vs_hf_bf16" if base == "f:hf-bf16" else "vs_hf_bf16_f32head"
            res[key] = stats(d) | {"max_until_first_tie": float(d_pre.max())}

    # The simulated current path along the real CUDA run's own tokens vs its reported top-1.
    validation = []
    if cuda_cases and want("a:current"):
        errs = []
        for c in cuda_cases:
            toks, p = c["token_ids"], c["prompt_ids"]
            ref = sim.teacher_forced(p, toks, spec(NONE)).max(-1).values
            got = torch.tensor([s[0][1] for s in c["top_logprobs"]], dtype=torch.float64)
            e = torch.stack([got - ref] + [sim.teacher_forced(p, toks, VARIANTS[v]).max(-1).values - ref
                                           for v in ("a:current", "a:current@f32math")])
            errs.append(e)
            cc = torch.corrcoef(e)
            validation.append({"prompt_len": len(p), "steps": len(toks),
                               "max_abs_err": {"cuda": float(e[0].abs().max()), "sim": float(e[1].abs().max()),
                                               "sim_f32math": float(e[2].abs().max())},
                               "rms_err": {"cuda": float(e[0].pow(2).mean().sqrt()), "sim": float(e[1].pow(2).mean().sqrt()),
                                           "sim_f32math": float(e[2].pow(2).mean().sqrt())},
                               "corr": {"cuda~sim": float(cc[0, 1]), "cuda~sim_f32math": float(cc[0, 2]),
                                        "sim~sim_f32math": float(cc[1, 2])}})
        e = torch.cat(errs, 1)
        validation.append({"all_prompts": True, "rms_err": {"cuda": float(e[0].pow(2).mean().sqrt()),
                                                            "sim": float(e[1].pow(2).mean().sqrt()),
                                                            "sim_f32math": float(e[2].pow(2).mean().sqrt())},
                           "max_abs_err": {"cuda": float(e[0].abs().max()), "sim": float(e[1].abs().max()),
                                           "sim_f32math": float(e[2].abs().max())}})
        sim.drop(torch.float32)
        log("cuda validation", json.dumps(validation[-1]))
    for res in results.values():
        if not a.keep_top1:
            res.pop("top1")
    return {"model": model_dir, "config": {"hidden": sim.h, "layers": sim.L, "heads": sim.nh, "kv_heads": sim.nkv,
                                           "head_dim": sim.hd, "vocab": sim.vocab, "tied": sim.tied},
            "prompt_lens": lens, "steps": a.steps, "ref_tokens": ref_toks,
            "ref_top1_logprob": [t.tolist() for t in ref_top1], "ref_margin": [m.tolist() for m in margins],
            "first_near_tie": first_tie, "hf_hidden_states_last_is_post_norm": hf_ok, "variants": results,
            "cuda_run_validation": validation, "seconds": round(time.time() - t0, 1)}


def table(rep):
    lines = []
    nan = {"max": float("nan"), "p99": float("nan"), "rms": float("nan")}
    for m in rep["models"]:
        lines.append(f"\n{m['model']}  ({len(m['prompt_lens'])} prompts × {m['steps']} steps, first near-tie {m['first_near_tie']})")
        lines.append(f"{'|top-1 logprob Δ|':40s} {'vs f64 reference':>24s}   {'vs HF bf16 logits':>24s}   {'vs HF bf16+f32 head':>24s}")
        lines.append(f"{'variant':32s} {'mism':>4s} {'p96':>5s}" + f" {'max':>7s} {'p99':>7s} {'rms':>7s}  " * 3)
        for v, r in m["variants"].items():
            row = f"{v[:32]:32s} {r['id_mismatches_before_first_tie']:4d} {r['vs_ref']['p_pass_96']:5.2f}"
            for k in ("vs_ref", "vs_hf_bf16", "vs_hf_bf16_f32head"):
                x = r.get(k, nan)
                row += f" {x['max']:7.4f} {x['p99']:7.4f} {x['rms']:7.4f}  "
            lines.append(row)
        for c in m["cuda_run_validation"]:
            lines.append(f"  real CUDA run (H200) vs this simulator, prompt {c.get('prompt_len', 'all')}: rms err "
                         + ", ".join(f"{k} {v:.4f}" for k, v in c["rms_err"].items()) + "; max "
                         + ", ".join(f"{k} {v:.4f}" for k, v in c["max_abs_err"].items())
                         + ("; corr " + ", ".join(f"{k} {v:.2f}" for k, v in c["corr"].items()) if "corr" in c else ""))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt-lens", default="9,17,64,300", help="lengths, cycled over --prompts")
    ap.add_argument("--prompts", type=int, default=4, help="how many prompts (xorshift seeds 1..N, as gpu-selftest)")
    ap.add_argument("--variants", default="", help="comma-separated names or letters (a,b,…); default all")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--cuda-parity", help="a `gpu-selftest parity` report: check the simulator against that real run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep-top1", action="store_true", help="keep per-step top-1 logprobs in the JSON")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    rep = {"tool": "scripts/gpu/sim_numerics.py", "method": "teacher-forced along the f64 greedy reference",
           "tie": TIE, "tol": TOL, "torch": torch.__version__, "models": []}
    try:
        import transformers
        rep["transformers"] = transformers.__version__
    except ImportError:
        a.no_hf = True
    for d in a.models:
        rep["models"].append(run_model(d, a, a.cuda_parity))
        if a.json:
            json.dump(rep, open(a.json, "w"), indent=1)
    print(json.dumps(rep, indent=1))
    print(table(rep), file=sys.stderr)


if __name__ == "__main__":
    main()
