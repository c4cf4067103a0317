"""Side-by-side CPU comparison: tokenfleet's CPU backend vs llama.cpp (llama-cpp-python) on the
same SmolLM2-135M weights at the same precision, same thread count, same shapes.

What each number measures (both exclude model loading, tokenization and HTTP/gRPC):
- ours: `tokenfleet-worker bench-engine --batch 1 --prompt-len P --gen-len G`: wall time of one
  backend step (`CpuBackend::execute`: embedding, 30 layers, final norm, LM head of the sampled
  rows, greedy sampling). prefill = one step of P prompt tokens (median of its repeats);
  decode = median of G single-token steps at context P..P+G.
- llama.cpp: wall time of `llama_decode` + `llama_get_logits_ith` (which synchronizes) measured
  here with perf_counter around the C calls; prefill = one llama_decode of the P-token batch
  (n_batch = n_ubatch = P, so one graph), decode = median of G single-token llama_decode calls
  at context P..P+G. llama.cpp's own counters (llama_perf_context: t_p_eval_ms / n_p_eval,
  t_eval_ms / n_eval — the "prompt eval time" / "eval time" llama-cli prints) are recorded too.
  No sampling on the llama.cpp side (ours includes a greedy argmax over 49152 logits: ~0.02 ms).

Repetitions alternate the systems (ours, llama.cpp F16, llama.cpp Q4_1, rotating the order), so
drift in machine load hits every system alike.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time


def xorshift_prompt(vocab, seq, rep, n):
    """The same pseudo-random prompt ids bench-engine uses (no prefix reuse across repeats)."""
    m = (1 << 64) - 1
    x = (((seq + 1) * 0x9E3779B97F4A7C15) & m) ^ ((rep * 0xD1B54A32D192ED03) & m)
    out = []
    for _ in range(n):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
        out.append(x % vocab)
    return out


def requantize_f16(llama_cpp, src, dst, threads):
    """Q4_1 (+ Q8_0 embedding) GGUF -> F16 GGUF with llama.cpp's own quantizer."""
    if os.path.exists(dst):
        return
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with {rc}")
    os.replace(tmp, dst)


class LlamaCpp:
    def __init__(self, path, threads, n_ctx, n_batch):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                         n_threads_batch=threads, n_gpu_layers=0, logits_all=False, verbose=False)
        import llama_cpp

        self.lc = llama_cpp
        self.ctx = self.llm._ctx.ctx
        self.vocab = self.llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def _fill(self, tokens, pos0):
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == len(tokens) - 1

    def _decode(self, tokens, pos0):
        self._fill(tokens, pos0)
        t = time.perf_counter()
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.lc.llama_get_logits_ith(self.ctx, -1)  # synchronizes the backend
        return (time.perf_counter() - t) * 1e3

    def clear(self):
        mem = self.lc.llama_get_memory(self.ctx)
        self.lc.llama_memory_clear(mem, True)

    def run(self, prompt, gen_len):
        """One repetition: warm-up-free prefill of `prompt`, then gen_len decode steps."""
        self.clear()
        self.lc.llama_perf_context_reset(self.ctx)
        prefill_ms = self._decode(prompt, 0)
        steps = []
        tok = 1
        for i in range(gen_len + 2):
            ms = self._decode([tok], len(prompt) + i)
            if i >= 2:
                steps.append(ms)
            tok = (tok * 7 + 3) % self.vocab
        perf = self.lc.llama_perf_context(self.ctx)
        return {
            "prefill_ms": prefill_ms,
            "decode_step_ms": statistics.median(steps),
            "llama_perf": {"t_p_eval_ms": perf.t_p_eval_ms, "n_p_eval": perf.n_p_eval, "t_eval_ms": perf.t_eval_ms, "n_eval": perf.n_eval},
        }


def ours(worker_bin, model, threads, prompt_len, gen_len):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    r = subprocess.run([worker_bin, "bench-engine", "--model", model, "--batch", "1", "--prompt-len", str(prompt_len),
                        "--gen-len", str(gen_len), "--repeats", "3", "--json"], capture_output=True, text=True, env=env, check=True)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"prefill_ms": d["prefill_ms"], "decode_step_ms": d["decode_step_ms"], "bench_engine": d}


def summarize(samples, prompt_len):
    pre = [s["prefill_ms"] for s in samples]
    dec = [s["decode_step_ms"] for s in samples]
    med_pre, med_dec = statistics.median(pre), statistics.median(dec)
    return {
        "prefill_ms_median": med_pre, "prefill_ms_min": min(pre), "prefill_ms_max": max(pre),
        "prefill_tok_s": prompt_len / (med_pre / 1e3),
        "decode_step_ms_median": med_dec, "decode_step_ms_min": min(dec), "decode_step_ms_max": max(dec),
        "decode_tok_s": 1e3 / med_dec,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--q41", required=True, help="the original SmolLM2 Q4_1 GGUF")
    ap.add_argument("--f16", required=True, help="where the requantized F16 GGUF is (made if missing)")
    ap.add_argument("--model", required=True, help="our HF model dir (f16 safetensors from the same GGUF)")
    ap.add_argument("--worker-bin", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import llama_cpp

    requantize_f16(llama_cpp, a.q41, a.f16, a.threads)
    systems = {
        "tokenfleet-cpu-f16": None,
        "llama.cpp-f16": LlamaCpp(a.f16, a.threads, a.prompt_len + a.gen_len + 16, a.prompt_len),
        "llama.cpp-q4_1": LlamaCpp(a.q41, a.threads, a.prompt_len + a.gen_len + 16, a.prompt_len),
    }
    vocab = systems["llama.cpp-f16"].vocab
    # One untimed warm-up each (page in weights, spin up thread pools).
    for name, s in systems.items():
        if s is not None:
            s.run(xorshift_prompt(vocab, 0, 1000, a.prompt_len), 4)
    samples = {k: [] for k in systems}
    order = list(systems)
    for rep in range(a.reps):
        rot = order[rep % len(order):] + order[: rep % len(order)]
        for name in rot:
            if systems[name] is None:
                s = ours(a.worker_bin, a.model, a.threads, a.prompt_len, a.gen_len)
            else:
                s = systems[name].run(xorshift_prompt(vocab, 0, rep + 1, a.prompt_len), a.gen_len)
            s["rep"], s["loadavg"] = rep, os.getloadavg()[0]
            samples[name].append(s)
            print(f"rep {rep} {name:<20} prefill {s['prefill_ms']:8.2f} ms  decode step {s['decode_step_ms']:7.3f} ms", file=sys.stderr)

    summary = {k: summarize(v, a.prompt_len) for k, v in samples.items()}
    for k in ("llama.cpp-f16", "llama.cpp-q4_1"):
        perf = [s["llama_perf"] for s in samples[k]]
        summary[k]["llama_perf_prefill_tok_s_median"] = statistics.median(p["n_p_eval"] / (p["t_p_eval_ms"] / 1e3) for p in perf)
        summary[k]["llama_perf_decode_tok_s_median"] = statistics.median(p["n_eval"] / (p["t_eval_ms"] / 1e3) for p in perf)
    o, f16 = summary["tokenfleet-cpu-f16"], summary["llama.cpp-f16"]
    ratios = {
        "decode_tok_s_ours_over_llamacpp_f16": o["decode_tok_s"] / f16["decode_tok_s"],
        "prefill_tok_s_ours_over_llamacpp_f16": o["prefill_tok_s"] / f16["prefill_tok_s"],
        "decode_tok_s_ours_over_llamacpp_q4_1": o["decode_tok_s"] / summary["llama.cpp-q4_1"]["decode_tok_s"],
        "prefill_tok_s_ours_over_llamacpp_q4_1": o["prefill_tok_s"] / summary["llama.cpp-q4_1"]["prefill_tok_s"],
    }
    info = {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "threads": a.threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "reps": a.reps,
        "llama_cpp_context": {"n_ctx": a.prompt_len + a.gen_len + 16, "n_batch": a.prompt_len, "n_ubatch": a.prompt_len,
                              "kv_cache_type": "f16 (llama.cpp default)", "flash_attn": "llama.cpp default"},
        "ours_kv_cache_type": "f32",
        "weights": {"ours": a.model, "llama.cpp-f16": os.path.basename(a.f16), "llama.cpp-q4_1": os.path.basename(a.q41)},
    }
    json.dump({"info": info, "summary": summary, "ratios": ratios, "samples": samples}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
