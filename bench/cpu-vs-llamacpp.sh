#!/usr/bin/env bash
# Our CPU backend vs llama.cpp on this machine, same SmolLM2-135M weights at the same precision
# (F16), same thread count, measured side by side in one run: decode tok/s at batch 1 and
# prefill tok/s of a 512-token prompt, several repetitions. llama.cpp also runs its native
# Q4_1 file, for the record. See bench/lib/llamacpp_bench.py for exactly what is timed.
#
#   bench/cpu-vs-llamacpp.sh          # first run builds llama-cpp-python (~15 min on 2 cores)
#   REPS=3 THREADS=2 bench/cpu-vs-llamacpp.sh
#
# Weights: models/smollm2-135m (our f16 safetensors, from scripts/fetch-smollm2.sh) and the
# original Q4_1 GGUF that script caches in target/smollm2-download/; llama.cpp requantizes that
# GGUF to F16 itself (llama_model_quantize, ftype F16, allow_requantize) — both F16 models hold
# the same dequantized values.
# Writes bench/results/<date>-<machine>-cpu-vs-llamacpp.json and prints a summary.
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

THREADS="${THREADS:-2}"
REPS="${REPS:-5}"
PROMPT_LEN="${PROMPT_LEN:-512}"
GEN_LEN="${GEN_LEN:-32}"
Q41="$ROOT/target/smollm2-download/SmolLM2-135M-Instruct.Q4_1.gguf"
F16="$ROOT/target/smollm2-download/SmolLM2-135M-Instruct.F16.gguf"

build_release
[[ -f "$Q41" && -f "$MODEL/config.json" ]] || scripts/fetch-smollm2.sh >&2
PY="$(bench/lib/llamacpp-venv.sh)"
mkdir -p "$RESULTS"
OUT="$RESULTS/$STAMP-$MACHINE-cpu-vs-llamacpp$TAG.json"
load_before="$(wait_quiet 0.5)"
log "load before: $load_before"
machine_json >"$TMP/machine.json"

"$PY" bench/lib/llamacpp_bench.py --q41 "$Q41" --f16 "$F16" --model "$MODEL" --worker-bin "$BIN/tokenfleet-worker" \
    --threads "$THREADS" --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" --reps "$REPS" --out "$TMP/cmp.json"

python3 - "$OUT" "$TMP/machine.json" "$TMP/cmp.json" "$(load1)" <<'EOF'
import json, sys
out, machine, cmp_path, load_after = sys.argv[1:]
d = json.load(open(cmp_path))
m = json.load(open(machine))
m["loadavg_at_end"] = load_after
result = {"name": "cpu-vs-llamacpp", "machine": m, **d}
json.dump(result, open(out, "w"), indent=1)
s, r, i = d["summary"], d["ratios"], d["info"]
print(f"SmolLM2-135M, {i['threads']} threads, prefill of {i['prompt_len']} tokens, decode at batch 1 (context {i['prompt_len']}..+{i['gen_len']}), {i['reps']} reps (median [min..max])")
print(f"{'system':<20} {'prefill ms':>24} {'prefill tok/s':>14} {'decode step ms':>24} {'decode tok/s':>13}")
for k, v in s.items():
    print(f"{k:<20} {v['prefill_ms_median']:>8.1f} [{v['prefill_ms_min']:.1f}..{v['prefill_ms_max']:.1f}] {v['prefill_tok_s']:>14.0f} "
          f"{v['decode_step_ms_median']:>8.2f} [{v['decode_step_ms_min']:.2f}..{v['decode_step_ms_max']:.2f}] {v['decode_tok_s']:>13.1f}")
for k in ("llama.cpp-f16", "llama.cpp-q4_1"):
    print(f"{k} by its own counters: prefill {s[k]['llama_perf_prefill_tok_s_median']:.0f} tok/s, decode {s[k]['llama_perf_decode_tok_s_median']:.1f} tok/s")
for k, v in r.items():
    print(f"{k}: {v:.2f}")
print(f"wrote {out}")
EOF
