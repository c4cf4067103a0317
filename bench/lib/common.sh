# Shared helpers of the bench/ scripts (sourced, not run).
#   ROOT, BIN (release binaries), RESULTS, MACHINE, STAMP
#   build_release, wait_quiet, machine_json, start_bg/stop_all, wait_log, wait_gateway, proc_cpu_s
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BIN="${TOKENFLEET_BIN_DIR:-$ROOT/target/release}"
RESULTS="${BENCH_RESULTS_DIR:-$ROOT/bench/results}"
MODEL="${TOKENFLEET_SMOLLM2_DIR:-$ROOT/models/smollm2-135m}"
STAMP="$(date -u +%Y%m%d)"
# BENCH_TAG=x appends "-x" to the result file name (e.g. to keep a before/after pair of one day).
TAG="${BENCH_TAG:+-$BENCH_TAG}"
# e.g. "amd-epyc-2c": the CPU model name and core count.
MACHINE="${BENCH_MACHINE:-$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')-$(nproc)c}"
TMP="$(mktemp -d -t tokenfleet-bench.XXXXXX)"
PIDS=()

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

build_release() {
    if [[ "${BENCH_SKIP_BUILD:-0}" != "1" ]]; then
        log "cargo build --release (worker, gateway, cli)"
        cargo build --release --locked -p tokenfleet-worker -p tokenfleet-gateway -p tokenfleet >&2
        echo "$(git rev-parse HEAD) tracked-files-modified=$(git status --porcelain --untracked-files=no | grep -c . || true)" >"$BIN/BUILT_FROM"
    fi
    for b in tokenfleet tokenfleet-worker tokenfleet-gateway; do
        [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b" >&2; exit 1; }
    done
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# Waits until the 1-minute load average is below $1 (default 0.5), at most $2 seconds
# (default BENCH_QUIET_WAIT_S or 600). Prints the load it ended at; never fails.
wait_quiet() {
    local limit="${1:-0.5}" max="${2:-${BENCH_QUIET_WAIT_S:-600}}" waited=0
    while awk -v l="$(load1)" -v m="$limit" 'BEGIN { exit !(l >= m) }'; do
        if ((waited >= max)); then
            log "load $(load1) still >= $limit after ${waited}s; running anyway (recorded)"
            break
        fi
        ((waited % 60 == 0)) && log "load $(load1) >= $limit; waiting (other builds share the cores)"
        sleep 10
        waited=$((waited + 10))
    done
    load1
}

# JSON object describing this machine and checkout.
machine_json() {
    local commit dirty
    commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)"
    python3 - "$commit" "$dirty" "$(cat "$BIN/BUILT_FROM" 2>/dev/null || echo unknown)" <<'EOF'
import json, os, platform, subprocess, sys
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith(k + ":")), None)
flags = field("Flags") or ""
print(json.dumps({
    "cpu_model": field("Model name"), "cores": os.cpu_count(), "arch": platform.machine(),
    "simd": [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags.split()],
    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "kernel": platform.release(), "commit": sys.argv[1], "tracked_files_modified": int(sys.argv[2]),
    "binaries_built_from": sys.argv[3],
    "date_utc": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
}))
EOF
}

# start_bg NAME CORE CMD...: runs CMD in the background (pinned to CORE when pinning works;
# CORE "-" = unpinned) with its log in $TMP/NAME.log; sets $LAST_PID to CMD's own pid.
start_bg() {
    local name="$1" core="$2"
    shift 2
    if ((PIN_OK)) && [[ "$core" != "-" ]]; then
        taskset -c "$core" "$@" >"$TMP/$name.log" 2>&1 &
    else
        "$@" >"$TMP/$name.log" 2>&1 &
    fi
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$TMP"' EXIT

# wait_log NAME PATTERN [TIMEOUT_S]: until the process log matches.
wait_log() {
    local name="$1" pat="$2" t="${3:-120}" i
    for ((i = 0; i < t * 10; i++)); do
        grep -q "$pat" "$TMP/$name.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$pat' in $name:" >&2
    tail -20 "$TMP/$name.log" >&2
    return 1
}

# wait_gateway ADDR N: until the gateway reports N healthy workers.
wait_gateway() {
    local addr="$1" n="$2" i
    for ((i = 0; i < 600; i++)); do
        if "$BIN/tokenfleet" info --addr "http://$addr" 2>/dev/null | python3 -c "import json,sys; sys.exit(json.load(sys.stdin)['healthy_workers'] < $n)" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "gateway $addr never had $n healthy workers" >&2
    return 1
}

# CPU seconds (user + system) a process has used so far.
proc_cpu_s() {
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}

PIN_OK=0
if command -v taskset >/dev/null && (($(nproc) >= 2)); then PIN_OK=1; fi
# pin CORE CMD...: taskset when available.
pin() {
    local core="$1"
    shift
    if ((PIN_OK)); then taskset -c "$core" "$@"; else "$@"; fi
}
