#!/usr/bin/env bash
# Scaling on the CPU backend with the real model (SmolLM2-135M): output tok/s and TTFT vs
# concurrency (1, 2, 4, 8, 16, 32, 64) on `tokenfleet up` with 1 worker and with 2 workers.
# Each worker gets cores/workers compute threads (`tokenfleet up` default), so both stacks
# use the whole machine; the gateway and the load generator share the same cores.
#
#   bench/scaling.sh                         # ~5-8 min on 2 cores
#   LEVELS="1 8" WORKERS="1" bench/scaling.sh
#
# Writes bench/results/<date>-<machine>-scaling.json and prints a summary table.
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

LEVELS="${LEVELS:-1 2 4 8 16 32 64}"
WORKERS="${WORKERS:-1 2}"
INPUT_LEN="${INPUT_LEN:-128}"
INPUT_RANGE="${INPUT_RANGE:-0.25}"
OUTPUT_LEN="${OUTPUT_LEN:-64}"
PORT="${PORT:-57351}"

build_release
[[ -f "$MODEL/config.json" ]] || scripts/fetch-smollm2.sh >&2
mkdir -p "$RESULTS"
OUT="$RESULTS/$STAMP-$MACHINE-scaling$TAG.json"
load_before="$(wait_quiet 0.5)"
log "load before: $load_before"
machine_json >"$TMP/machine.json"

runs=()
for nw in $WORKERS; do
    start_bg "up$nw" - "$BIN/tokenfleet" up --model "$MODEL" --workers "$nw" --port "$PORT" --worker-base-port $((PORT + 10)) \
        --worker-args "--kv-cache-mib 1024 --max-running 64"
    UPPID=$LAST_PID
    wait_log "up$nw" "tokenfleet is up" 300
    for c in $LEVELS; do
        # Enough requests for a steady state, bounded so a level takes well under a minute.
        n=$((c * 4 < 16 ? 16 : c * 4))
        n=$((n > 128 ? 128 : n))
        warm=$((c < 4 ? c : 4))
        f="$TMP/w$nw-c$c.json"
        log "$nw worker(s), concurrency $c: $n requests (load $(load1))"
        l0="$(load1)"
        "$BIN/tokenfleet" bench --addr "http://127.0.0.1:$PORT" --num-prompts "$n" --concurrency "$c" \
            --input-len "$INPUT_LEN" --input-len-range "$INPUT_RANGE" --output-len "$OUTPUT_LEN" --ignore-eos \
            --warmup "$warm" --seed "$((nw * 1000 + c))" --disable-progress --json "$f" \
            --metadata "workers=$nw" --metadata "loadavg_before=$l0" >"$TMP/w$nw-c$c.txt"
        runs+=("$f")
    done
    kill "$UPPID"
    wait "$UPPID" 2>/dev/null || true
done

python3 - "$OUT" "$TMP/machine.json" "$INPUT_LEN" "$INPUT_RANGE" "$OUTPUT_LEN" "${runs[@]}" <<'EOF'
import json, sys
out, machine, in_len, in_range, out_len, *files = sys.argv[1:]
runs = [json.load(open(f)) for f in files]
rows = [{
    "workers": int(r["workers"]), "concurrency": r["max_concurrency"], "completed": r["completed"], "failed": r["failed"],
    "output_tok_s": r["output_throughput"], "total_tok_s": r["total_token_throughput"], "request_s": r["request_throughput"],
    "ttft_p50_ms": r["median_ttft_ms"], "ttft_p99_ms": r["p99_ttft_ms"], "tpot_mean_ms": r["mean_tpot_ms"],
    "itl_p50_ms": r["median_itl_ms"], "e2el_p50_ms": r["median_e2el_ms"], "loadavg_before": float(r["loadavg_before"]),
} for r in runs]
result = {"name": "scaling", "machine": json.load(open(machine)),
          "config": {"model": "SmolLM2-135M (f16)", "backend": "cpu", "input_len": int(in_len), "input_len_range": float(in_range),
                     "output_len": int(out_len), "ignore_eos": True, "threads_per_worker": "cores / workers (tokenfleet up default)"},
          "summary": rows, "runs": runs}
json.dump(result, open(out, "w"), indent=1)
print(f"{'workers':>7} {'conc':>5} {'out tok/s':>10} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT':>7} {'E2EL p50':>9} fail")
for r in rows:
    print(f"{r['workers']:>7} {r['concurrency']:>5} {r['output_tok_s']:>10.1f} {r['request_s']:>7.2f} {r['ttft_p50_ms']:>9.1f} "
          f"{r['ttft_p99_ms']:>9.1f} {r['tpot_mean_ms']:>7.1f} {r['e2el_p50_ms']:>9.1f} {r['failed']}")
print(f"wrote {out}")
EOF
