"""The in-run peer: the same model in transformers (bf16, CUDA), batch 1.

Decode ms/token = (time to generate N+1 tokens − time to generate 1 token) / N after a
prompt of P tokens, median of R runs, after a warm-up. Also prefill ms for the P-token
prompt. `--static` uses the static KV cache + torch.compile (slow to compile).

    python3 scripts/gpu/hf_peer.py MODEL_DIR OUT.json [--prompt-len 512] [--new 64] [--static]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--static", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    load_s = time.time() - t0
    kw = {}
    if a.static:
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 100000, (1, a.prompt_len), generator=g).cuda()

    def gen(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    gen(8)
    gen(a.new + 1)
    one = [gen(1) for _ in range(a.runs)]
    full = [gen(a.new + 1) for _ in range(a.runs)]
    decode_ms = (statistics.median(full) - statistics.median(one)) / a.new * 1e3
    res = {"peer": "transformers", "static_cache_compile": a.static, "dtype": "bfloat16", "batch": 1, "prompt_len": a.prompt_len,
           "new_tokens": a.new, "prefill_plus_first_token_ms": statistics.median(one) * 1e3, "decode_ms_per_token": decode_ms,
           "decode_tokens_per_s": 1e3 / decode_ms, "load_s": load_s, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(0)}
    json.dump(res, open(a.out, "w"), indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
