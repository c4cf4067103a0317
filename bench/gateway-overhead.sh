#!/usr/bin/env bash
# Gateway overhead: the same synthetic-token workload sent to a worker directly
# (`tokenfleet bench --target worker`) and through a gateway, at concurrency 1 → 1024.
# The worker runs the synthetic backend (no model compute; a fixed sleep per engine step),
# so what differs between the two paths is the gateway hop: routing, block hashing,
# detokenization, stop-string matching and one more gRPC stream per request.
#
# Placement (2+ cores): the gateway alone on core 0; worker and load generator on core 1 —
# the same place in both paths. The gateway's CPU time is read from /proc for every run, so
# "tokens per gateway CPU-second" is what one fully busy gateway core forwards.
#
#   bench/gateway-overhead.sh                 # full run (~5 min)
#   LEVELS="1 16" BENCH_SKIP_BUILD=1 bench/gateway-overhead.sh
#   NODELAY_SHIM=1 bench/gateway-overhead.sh  # diagnostic: TCP_NODELAY forced on the servers'
#                                             # accepted sockets (bench/lib/nodelay_shim.c)
#
# Writes bench/results/<date>-<machine>-gateway-overhead.json and prints a summary table.
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

LEVELS="${LEVELS:-1 16 64 256 1024}"
STEP_US="${STEP_US:-500}"
INPUT_LEN="${INPUT_LEN:-32}"
OUTPUT_LEN="${OUTPUT_LEN:-64}"
WPORT="${WPORT:-57161}"
GPORT="${GPORT:-57151}"

build_release
mkdir -p "$RESULTS"
NAME=gateway-overhead
SERVER_ENV=()
if [[ "${NODELAY_SHIM:-0}" == "1" ]]; then
    mkdir -p target/bench
    gcc -shared -fPIC -O2 -o target/bench/nodelay_shim.so bench/lib/nodelay_shim.c -ldl
    SERVER_ENV=(env "LD_PRELOAD=$ROOT/target/bench/nodelay_shim.so")
    NAME=gateway-overhead-nodelay-shim
fi
OUT="$RESULTS/$STAMP-$MACHINE-$NAME$TAG.json"
load_before="$(wait_quiet 0.5)"
log "load before: $load_before"
machine_json >"$TMP/machine.json"

start_bg worker 1 "${SERVER_ENV[@]}" "$BIN/tokenfleet-worker" serve --model "$MODEL" --listen "127.0.0.1:$WPORT" --backend synthetic \
    --synthetic-step-us "$STEP_US" --kv-blocks 32768 --max-running 1024 --max-waiting 4096 --max-batch-tokens 65536
WPID=$LAST_PID
wait_log worker SERVING
start_bg gateway 0 "${SERVER_ENV[@]}" "$BIN/tokenfleet-gateway" --listen "127.0.0.1:$GPORT" --worker "127.0.0.1:$WPORT" --max-inflight 4096
GPID=$LAST_PID
wait_gateway "127.0.0.1:$GPORT" 1

runs=()
for c in $LEVELS; do
    # At least 400 requests and 16 waves of the concurrency, so every level runs for a second or more.
    n=$((c * 16 > 400 ? c * 16 : 400))
    warm=$((c < 64 ? c : 64))
    for path in worker gateway; do
        if [[ $path == worker ]]; then addr="127.0.0.1:$WPORT" seed=$((c * 2)); else addr="127.0.0.1:$GPORT" seed=$((c * 2 + 1)); fi
        f="$TMP/c$c-$path.json"
        l0="$(load1)"
        # A failed run can leave the worker marked unhealthy in the gateway for a moment.
        [[ $path == gateway ]] && wait_gateway "127.0.0.1:$GPORT" 1
        log "concurrency $c via $path: $warm warm-up, then $n requests"
        # Warm-up as its own command, so the CPU time read around the measured one is the run's.
        pin 1 "$BIN/tokenfleet" bench --target "$path" --addr "$addr" --num-prompts "$warm" --concurrency "$c" \
            --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --ignore-eos --seed "$((seed + 100000))" \
            --disable-progress >/dev/null || true
        g0="$(proc_cpu_s "$GPID")"
        w0="$(proc_cpu_s "$WPID")"
        # Different seeds per path: no prompt is a prefix-cache hit from the other run.
        pin 1 "$BIN/tokenfleet" bench --target "$path" --addr "$addr" --num-prompts "$n" --concurrency "$c" \
            --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --ignore-eos \
            --seed "$seed" --disable-progress --json "$f" \
            --metadata "path=$path" >"$TMP/c$c-$path.txt" || log "concurrency $c via $path: every request failed (kept in the result)"
        g1="$(proc_cpu_s "$GPID")"
        w1="$(proc_cpu_s "$WPID")"
        python3 - "$f" "$g0" "$g1" "$w0" "$w1" "$l0" <<'EOF'
import json, sys
f, g0, g1, w0, w1, l0 = sys.argv[1], *map(float, sys.argv[2:])
d = json.load(open(f))
d["gateway_cpu_s"] = g1 - g0
d["worker_cpu_s"] = w1 - w0
d["loadavg_before"] = l0
json.dump(d, open(f, "w"))
EOF
        runs+=("$f")
    done
done

python3 - "$OUT" "$TMP/machine.json" "$STEP_US" "$INPUT_LEN" "$OUTPUT_LEN" "$PIN_OK" "${NODELAY_SHIM:-0}" "${runs[@]}" <<'EOF'
import json, sys
out, machine, step_us, in_len, out_len, pinned, shim, *files = sys.argv[1:]
runs = [json.load(open(f)) for f in files]
# The gateway's CPU seconds cover the measured bench command: its connect, one probe request
# (OUTPUT_LEN tokens) and the run; the run's duration excludes the first two (a few ms).
rows = []
for c in sorted({r["max_concurrency"] for r in runs}):
    d = next(r for r in runs if r["max_concurrency"] == c and r["path"] == "worker")
    g = next(r for r in runs if r["max_concurrency"] == c and r["path"] == "gateway")
    fwd_tokens = g["total_output_tokens"] + int(out_len)  # + the probe request
    rows.append({
        "concurrency": c,
        "direct_ttft_p50_ms": d["median_ttft_ms"], "gateway_ttft_p50_ms": g["median_ttft_ms"],
        "added_ttft_p50_ms": g["median_ttft_ms"] - d["median_ttft_ms"],
        "direct_ttft_p99_ms": d["p99_ttft_ms"], "gateway_ttft_p99_ms": g["p99_ttft_ms"],
        "added_ttft_p99_ms": g["p99_ttft_ms"] - d["p99_ttft_ms"],
        "direct_itl_mean_ms": d["mean_itl_ms"], "gateway_itl_mean_ms": g["mean_itl_ms"],
        "itl_mean_ratio": g["mean_itl_ms"] / d["mean_itl_ms"] if d["mean_itl_ms"] else None,
        "direct_itl_p99_ms": d["p99_itl_ms"], "gateway_itl_p99_ms": g["p99_itl_ms"],
        "direct_tpot_mean_ms": d["mean_tpot_ms"], "gateway_tpot_mean_ms": g["mean_tpot_ms"],
        "tpot_mean_ratio": g["mean_tpot_ms"] / d["mean_tpot_ms"] if d["mean_tpot_ms"] else None,
        "direct_output_tok_s": d["output_throughput"], "gateway_output_tok_s": g["output_throughput"],
        "throughput_ratio": g["output_throughput"] / d["output_throughput"],
        "gateway_cpu_util": g["gateway_cpu_s"] / g["duration"],
        "tokens_per_gateway_cpu_s": fwd_tokens / g["gateway_cpu_s"] if g["gateway_cpu_s"] > 0 else None,
        "failed_direct": d["failed"], "failed_gateway": g["failed"],
        "gateway_errors": g.get("error_counts", []),
    })
best = max(rows, key=lambda r: r["gateway_output_tok_s"])
result = {
    "name": "gateway-overhead" + ("-nodelay-shim" if int(shim) else ""), "machine": json.load(open(machine)),
    "config": {"backend": "synthetic", "synthetic_step_us": int(step_us), "input_len": int(in_len), "output_len": int(out_len),
               "pinned": bool(int(pinned)), "nodelay_shim": bool(int(shim)), "placement": "gateway on core 0; worker + load generator on core 1" if int(pinned) else "unpinned"},
    "summary": rows,
    "max_gateway_output_tok_s": best["gateway_output_tok_s"], "at_concurrency": best["concurrency"],
    "gateway_cpu_util_there": best["gateway_cpu_util"],
    "runs": runs,
}
json.dump(result, open(out, "w"), indent=1)
hdr = f"{'conc':>5} {'TTFT p50 d/g ms':>17} {'TTFT p99 d/g ms':>17} {'ITL mean d/g ms':>17} {'ITL x':>6} {'tok/s direct':>12} {'tok/s gw':>10} {'gw cpu':>7} {'tok/gw-cpu-s':>12} fail d/g"
print(hdr)
for r in rows:
    print(f"{r['concurrency']:>5} {r['direct_ttft_p50_ms']:>8.2f}/{r['gateway_ttft_p50_ms']:<8.2f} {r['direct_ttft_p99_ms']:>8.2f}/{r['gateway_ttft_p99_ms']:<8.2f} "
          f"{r['direct_itl_mean_ms']:>8.3f}/{r['gateway_itl_mean_ms']:<8.3f} {r['itl_mean_ratio'] or 0:>6.2f} {r['direct_output_tok_s']:>12.0f} "
          f"{r['gateway_output_tok_s']:>10.0f} {r['gateway_cpu_util']:>7.2f} {r['tokens_per_gateway_cpu_s'] or 0:>12.0f} {r['failed_direct']}/{r['failed_gateway']}")
    for e in r["gateway_errors"][:2]:
        print(f"      gateway errors x{e['count']}: {e['error'][:110]}")
print(f"wrote {out}")
EOF
log "load after: $(load1)"
