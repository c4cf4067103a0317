#!/usr/bin/env bash
# What a GPU machine must prove (../shared/GPU-CHECK.md), in tiers that each write JSON to
# $OUT (default ./gpu-results) as soon as they finish:
#
#   scripts/gpu-check.sh kernels   # nvidia-smi, D2D bandwidth, every kernel vs its CPU reference (~1 min)
#   scripts/gpu-check.sh parity    # CUDA backend vs CPU backend and vs transformers bf16; 16 concurrent = alone (~2 min)
#   scripts/gpu-check.sh speed     # Minitron-4B shape: bs1 decode (graphs, graphs + overlap, eager), prefill 2048, bs 8/32/64 (+ bs64 overlap); transformers peer (~3 min)
#   scripts/gpu-check.sh speed2    # separate call: bs1 at 4096 context, bs128, bs 8/32/64 at 2048 context, prefill 512/8192
#   scripts/gpu-check.sh serving   # separate call: startup to SERVING (cold page cache where allowed), served tokens 16-at-once vs alone, then tokenfleet bench 1000-in/1000-out at concurrency 64 and 256 against serve --backend cuda
#   scripts/gpu-check.sh peer      # separate call: transformers bs1 eager and with static cache + torch.compile, our bs1, bs128
#
# The machine has no Rust and no network: scripts/build-gpu-bundle.sh builds the release
# binaries here into dist/, which travels with the tree: tokenfleet-worker with `--features
# cuda` (TOKENFLEET_WORKER_BIN, else dist/, target-cuda/release or target/release) and, for
# `serving`, the `tokenfleet` CLI (TOKENFLEET_CLI_BIN, else next to the worker or
# target/release). Models are generated on the spot with gen-model.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-results}"
MODELS="${TOKENFLEET_GPU_MODELS:-/tmp/tokenfleet-gpu-models}"
mkdir -p "$OUT" "$MODELS"
export TOKENFLEET_REQUIRE_GPU=1

BIN="${TOKENFLEET_WORKER_BIN:-}"
if [[ -z "$BIN" ]]; then
  for c in "$ROOT/dist/tokenfleet-worker" "$ROOT/target-cuda/release/tokenfleet-worker" "$ROOT/target/release/tokenfleet-worker"; do
    [[ -x "$c" ]] && { BIN="$c"; break; }
  done
fi
[[ -x "$BIN" ]] || { echo "gpu-check: no tokenfleet-worker built with --features cuda (set TOKENFLEET_WORKER_BIN)" >&2; exit 1; }

# cuBLAS and friends: the CUDA toolkit's lib64, or python's nvidia wheels.
for d in /usr/local/cuda*/lib64 $(python3 -c 'import site,glob;print(" ".join(glob.glob(site.getsitepackages()[0]+"/nvidia/*/lib")))' 2>/dev/null); do
  [[ -d "$d" ]] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH

log() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }
status=0

gen() { # gen NAME PRESET [LAYERS]
  local dir="$MODELS/$1"
  if [[ ! -f "$dir/config.json" ]]; then
    local layers=()
    [[ -n "${3:-}" ]] && layers=(--layers "$3")
    "$BIN" gen-model --preset "$2" "${layers[@]}" --seed 1 "$dir" >&2 || return 1
  fi
  echo "$dir"
}

tier_kernels() {
  log "kernels"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
  "$BIN" gpu-selftest bandwidth --out "$OUT/bandwidth.json" || status=1
  "$BIN" gpu-selftest kernels --out "$OUT/kernels.json" >/dev/null || status=1
}

tier_parity() {
  log "parity"
  local tiny mini tied
  tiny="$(gen tiny tiny 2)" && mini="$(gen minitron-2l minitron-4b 2)" && tied="$(gen small-tied small-tied 2)" || { status=1; return; }
  "$BIN" gpu-selftest parity --model "$tiny" --model "$mini" --model "$tied" --out "$OUT/parity.json" >/dev/null || status=1
  python3 "$ROOT/scripts/gpu/hf_parity.py" "$OUT/parity.json" "$OUT/parity-hf.json" >/dev/null || status=1
}

bench() { # bench NAME ARGS...
  local name="$1"; shift
  "$BIN" bench-engine --backend cuda --model "$MINI" --json "$@" >"$OUT/speed-$name.json" || { status=1; return; }
  cat "$OUT/speed-$name.json"
}

# The full-shape model and the copy rate every speed figure is measured against.
speed_setup() {
  MINI="$(gen minitron-4b minitron-4b)" || return 1
  [[ -f "$OUT/bandwidth.json" ]] || "$BIN" gpu-selftest bandwidth --out "$OUT/bandwidth.json" >/dev/null
}

tier_speed() {
  log "speed"
  speed_setup || { status=1; return; }
  # Most important first: a run cut short by its time limit keeps what it finished. Decode
  # runs with CUDA graphs, and bs1 also without them (the graphs' own gain, same run).
  local G=(--cuda-graphs true)
  bench bs1-ctx512 --batch 1 --prompt-len 512 --gen-len 64 --repeats 3 "${G[@]}"
  # Step n+1 queued (tokens fed on the device) before step n is read back.
  bench bs1-ctx512-overlap --batch 1 --prompt-len 512 --gen-len 64 --repeats 1 "${G[@]}" --overlap true
  # Programmatic dependent launch: each kernel scheduled while the previous one finishes,
  # the GEMVs prefetching their weights' heads into L2 meanwhile (16 MiB), and without that.
  bench bs1-ctx512-pdl --batch 1 --prompt-len 512 --gen-len 64 --repeats 1 "${G[@]}" --programmatic-launch true
  bench bs1-ctx512-pdl-noprefetch --batch 1 --prompt-len 512 --gen-len 64 --repeats 1 "${G[@]}" --programmatic-launch true \
    --gemv-prefetch-mib 0
  bench bs1-ctx512-eager --batch 1 --prompt-len 512 --gen-len 64 --repeats 3
  bench prefill2048 --batch 1 --prompt-len 2048 --gen-len 4 --repeats 3
  python3 "$ROOT/scripts/gpu/hf_peer.py" "$MINI" "$OUT/speed-transformers-bs1.json" --prompt-len 512 --new 64 || status=1
  for b in 32 64 8 16; do bench "bs$b-ctx512" --batch "$b" --prompt-len 512 --gen-len 32 --repeats 1 "${G[@]}"; done
  bench bs64-ctx512-overlap --batch 64 --prompt-len 512 --gen-len 32 --repeats 1 "${G[@]}" --overlap true
}

# `speed2` (its own call: speed alone fills most of one 5-minute call): longer contexts,
# the other prefill lengths, the largest batch.
tier_speed2() {
  log "speed2"
  speed_setup || { status=1; return; }
  local G=(--cuda-graphs true)
  bench bs1-ctx4096 --batch 1 --prompt-len 4096 --gen-len 64 --repeats 2 "${G[@]}"
  bench bs128-ctx512 --batch 128 --prompt-len 512 --gen-len 32 --repeats 1 "${G[@]}"
  for b in 8 32 64; do bench "bs$b-ctx2048" --batch "$b" --prompt-len 2048 --gen-len 32 --repeats 1 "${G[@]}"; done
  bench prefill512 --batch 1 --prompt-len 512 --gen-len 4 --repeats 3
  bench prefill8192 --batch 1 --prompt-len 8192 --gen-len 4 --repeats 2
}

# `serving`: the worker as users run it, driven by `tokenfleet bench` (vLLM's definitions),
# 1000-in/1000-out at concurrency 64 and 256.
SERVE_FRACTION="${SERVE_FRACTION:-0.95}"
# Overlapped steps (set SERVE_OVERLAP=false if the parity tier's overlap check failed).
SERVE_OVERLAP="${SERVE_OVERLAP:-true}"
# Programmatic dependent launch (set SERVE_PDL=true once the speed tier has shown it helps).
SERVE_PDL="${SERVE_PDL:-false}"
tier_serving() {
  log "serving (--gpu-memory-fraction $SERVE_FRACTION, --overlap-steps $SERVE_OVERLAP, --programmatic-launch $SERVE_PDL)"
  local cli="${TOKENFLEET_CLI_BIN:-}"
  if [[ -z "$cli" ]]; then
    for c in "$(dirname "$BIN")/tokenfleet" "$ROOT/target/release/tokenfleet"; do [[ -x "$c" ]] && { cli="$c"; break; }; done
  fi
  [[ -x "$cli" ]] || { echo "gpu-check: no tokenfleet CLI binary (set TOKENFLEET_CLI_BIN)" >&2; status=1; return; }
  MINI="$(gen minitron-4b minitron-4b)" || { status=1; return; }
  local port=50961 log="$OUT/serving-worker.log" cache=warm
  # Startup to SERVING (model load + GEMM tuning + graph capture of every decode bucket), from
  # a cold page cache where this machine lets us drop it (issue target: ≤ 15 s).
  if sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then cache=cold; fi
  local t0; t0="$(date +%s.%N)"
  "$BIN" serve --backend cuda --model "$MINI" --listen "127.0.0.1:$port" --gpu-memory-fraction "$SERVE_FRACTION" \
    --max-running 256 --max-batch-tokens 8192 --max-waiting 1024 --max-model-len 2048 --cuda-graphs true --overlap-steps "$SERVE_OVERLAP" --programmatic-launch "$SERVE_PDL" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1200); do grep -q SERVING "$log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  grep -q SERVING "$log" || { echo "gpu-check: the worker did not reach SERVING" >&2; tail -20 "$log" >&2; kill "$pid" 2>/dev/null; status=1; return; }
  python3 -c 'import json, sys; json.dump({"page_cache": sys.argv[1], "seconds_to_serving": round(float(sys.argv[3]) - float(sys.argv[2]), 2),
    "cuda_graphs": True, "overlap_steps": sys.argv[4], "max_running": 256}, open(sys.argv[5], "w"))' \
    "$cache" "$t0" "$(date +%s.%N)" "$SERVE_OVERLAP" "$OUT/startup.json"
  cat "$OUT/startup.json"; echo
  # Served tokens vs concurrency: 16 greedy prompts through `serve`, 16 at a time and one at
  # a time. Batching changes cuBLAS's kernels, so a near-tie may flip one request; a bug in
  # batching, graphs or overlap (rows mixed up) changes most of them.
  for c in 16 1; do
    "$cli" bench --target worker --addr "http://127.0.0.1:$port" --concurrency "$c" --num-prompts 16 --input-len 64 \
      --output-len 32 --ignore-eos --seed 5 --save-detailed --disable-progress --json "$OUT/served-c$c.json" >/dev/null || status=1
  done
  python3 - "$OUT" <<'PY' || status=1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
together, alone = (json.loads((out / f"served-c{c}.json").read_text())["output_token_ids"] for c in (16, 1))
diffs = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(together, alone)]
same = sum(d is None and len(x) == len(y) for d, x, y in zip(diffs, together, alone))
res = {"requests": len(alone), "identical": same, "first_differing_step": diffs, "rule": "≥ 15 of 16 identical"}
(out / "served-parity.json").write_text(json.dumps(res))
print("served 16 concurrent vs alone:", json.dumps(res))
sys.exit(0 if len(alone) == 16 and same >= 15 else 1)
PY
  for c in 64 256; do
    "$cli" bench --target worker --addr "http://127.0.0.1:$port" --concurrency "$c" --num-prompts "$((c * 2 > 256 ? 256 : c * 2))" \
      --input-len 1000 --output-len 1000 --ignore-eos --warmup 4 --json "$OUT/serving-c$c.json" || status=1
  done
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  grep -E "kv_blocks|CUDA backend ready" "$log" | head -3
}

# `peer`: the transformers bs1 peer, eager and with static cache + torch.compile, next to our
# bs1 in the same call, then the largest batch.
tier_peer() {
  log "peer"
  MINI="$(gen minitron-4b minitron-4b)" || { status=1; return; }
  python3 "$ROOT/scripts/gpu/hf_peer.py" "$MINI" "$OUT/speed-transformers-bs1.json" --prompt-len 512 --new 64 || status=1
  bench bs1-ctx512 --batch 1 --prompt-len 512 --gen-len 64 --repeats 3 --cuda-graphs true
  # The stronger peer: static KV cache + torch.compile ("where it works": compiling takes a
  # minute or two, and a failure is recorded, not fatal).
  timeout 200 python3 "$ROOT/scripts/gpu/hf_peer.py" "$MINI" "$OUT/speed-transformers-static-bs1.json" --prompt-len 512 \
    --new 64 --static || echo "gpu-check: transformers with static cache + torch.compile did not finish (rc $?)" >&2
  bench bs128-ctx512 --batch 128 --prompt-len 512 --gen-len 32 --repeats 1 --cuda-graphs true
}

[[ $# -gt 0 ]] || set -- kernels parity speed
for t in "$@"; do
  case "$t" in
    kernels) tier_kernels ;;
    parity) tier_parity ;;
    speed) tier_speed ;;
    speed2) tier_speed2 ;;
    peer) tier_peer ;;
    serving) tier_serving ;;
    all) tier_kernels; tier_parity; tier_speed ;;
    *) echo "gpu-check: unknown tier $t (kernels, parity, speed, speed2, peer, serving)" >&2; exit 2 ;;
  esac
done
log "done (status $status); results in $OUT"
# One file with everything, so a runner that returns few files still gets all results.
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
allres = {}
for f in sorted(out.glob("*.json")):
    if f.name == "all.json" or f.stat().st_size == 0:
        continue
    try:
        allres[f.stem] = json.loads(f.read_text())
    except ValueError:
        allres[f.stem] = {"unparsable": f.read_text()[:2000]}
(out / "all.json").write_text(json.dumps(allres, indent=1))
# The short table: each decode figure against its floor (weights + KV read once per step at
# the measured copy rate; Minitron-4B: 8.24 GB of weights, 128 KiB of KV per token).
bw = allres.get("bandwidth", {}).get("d2d_copy_gb_per_s")
rows = []
for name, r in sorted(allres.items()):
    if not name.startswith("speed-") or "decode_step_ms" not in r:
        continue
    b, ctx = r.get("batch", 1), r.get("prompt_len", 0) + r.get("gen_len", 0) // 2
    floor_ms = (8.24e9 + b * ctx * 131072) / (bw * 1e9) * 1e3 if bw else None
    gpu = r.get("decode_gpu_ms")
    frac = f"{floor_ms / r['decode_step_ms']:.0%}" if floor_ms else "?"
    rows.append(f"{name:28s} decode {r['decode_step_ms']:8.3f} ms (gpu {gpu if gpu is None else round(gpu, 3)}) "
                f"floor {floor_ms and round(floor_ms, 3)} ms = {frac}; prefill {r.get('prefill_ms', 0):8.1f} ms; "
                f"graphs={r.get('cuda_graphs')} overlap={r.get('overlap')} pdl={r.get('programmatic_launch')} prefetch={r.get('gemv_prefetch_mib')} {r.get('backend_counters', {})}")
if rows:
    print("\n".join(rows))
# The bs1 ctx512 decode step rebuilt from the kernel self-test's in-graph times (Minitron-4B:
# 32 layers, vocab 128256; the lm_head is timed on a 32768-row slice): where the step goes.
cases = {(c["op"], c["case"]): c for c in allres.get("kernels", {}).get("cases", []) if c.get("time_us")}
def us(op, case):
    # A projection runs on whichever GEMV kernel is faster (the backend's tune also weighs
    # cuBLASLt, which the self-test does not time).
    found = [cases[(o, case)] for o in ((op, "gemv_mma") if op == "gemv" else (op,)) if (o, case) in cases]
    c = min(found, key=lambda c: c["time_us"]) if found else None
    return (c["time_us"], c["bytes"]) if c else (None, 0)
# Programmatic launch, in-graph µs per launch without → with (a one-row norm is nearly all
# launch gap; the GEMV rows add the L2 weight prefetch).
pdl = [(op, base, case) for (op, case) in cases for suffix in (" programmatic", " programmatic+prefetch")
       if case.endswith(suffix) and (op, base := case[: -len(suffix)]) in cases]
if pdl:
    print("programmatic launch, in-graph µs (ordinary → programmatic): "
          + "; ".join(f"{op} {base} {cases[(op, base)]['time_us']:.2f} → {cases[(op, case)]['time_us']:.2f}" for op, base, case in sorted(pdl)))
both = sorted(case for (op, case) in cases if op == "gemv" and ("gemv_mma", case) in cases)
if both:
    print("GEMV kernels, in-graph µs (row pairs / tensor cores): "
          + "; ".join(f"{case} {cases[('gemv', case)]['time_us']:.1f} / {cases[('gemv_mma', case)]['time_us']:.1f}" for case in both))
parts = {
    "gemv": [("gemv", "t1 n6144 k3072 Bf16", 32), ("gemv", "t1 n3072 k4096 Bf16", 32),
             ("gemv", "t1 n18432 k3072 SiluMul", 32), ("gemv", "t1 n3072 k9216 Bf16", 32),
             ("gemv", "t1 n32768 k3072 F32", 128256 / 32768)],
    "attention": [("attention_decode", "bs1 ctx512", 32)],
    "norms": [("add_rmsnorm", "rows1 h3072", 64), ("rmsnorm", "rows1 h3072", 1)],
    "rope+kv": [("rope_kv_write", "nh32 nkv8 hd128 t1", 32)],
    "embed+sample": [("embedding_gather", "t1 v1000 h3072", 1), ("sample", "greedy bs1 v128256", 1)],
}
total, gemv_bytes, missing, line = 0.0, 0, [], []
for name, items in parts.items():
    part = 0.0
    for op, case, n in items:
        t, b = us(op, case)
        if t is None:
            missing.append(f"{op} {case}")
            continue
        part += t * n
        if name == "gemv":
            gemv_bytes += b * n
    total += part
    line.append(f"{name} {part / 1e3:.3f} ms")
if cases and not missing:
    floor = f"; GEMV weights' floor {gemv_bytes / (bw * 1e9) * 1e3:.3f} ms" if bw else ""
    print(f"bs1 ctx512 step census (Σ in-graph kernel times): {total / 1e3:.3f} ms = " + ", ".join(line) + floor)
elif cases:
    print("step census: missing " + ", ".join(missing))
PY
ls -la "$OUT"
exit $status
