#!/usr/bin/env bash
# CI check of the CUDA kernels without a GPU (DESIGN.md §7):
#   1. compiles every kernels/cuda/*.cu with the pinned nvcc 13.0 for sm_80 and sm_90a
#      (cubins, ptxas -v) and for compute_80 / compute_90 (PTX);
#   2. fails on any kernel with spill bytes or a stack frame;
#   3. with cuobjdump, checks the SASS: tensor-core MMA in prefill attention (HMMA on sm_80,
#      HMMA or HGMMA on sm_90a) and 128-bit global loads in the streaming kernels (decode
#      attention, embedding, norms, SiLU·mul, both small-batch GEMVs), tensor-core MMA in
#      the tensor-core GEMV, and that each GEMV issues a whole unrolled group of loads
#      before its first FMA/MMA, and that every sm_90a kernel waits for its predecessor
#      (griddepcontrol.wait, for programmatic dependent launch) before touching memory, the
#      GEMVs after prefetching their weights' heads into L2;
#   4. builds, lints and unit-tests tokenfleet-kernels with `--features cuda` (build.rs
#      embeds the images and enforces the same no-spill rule; the host-side tests need no
#      GPU), then lints the worker with `--features cuda` and runs its backend unit tests.
#      CHECK_KERNELS_SKIP_CARGO=1 skips this step.
# and prints a short table. Exit status ≠ 0 on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${NVCC:-}" ]]; then
  NVCC="$("$ROOT/scripts/install-cuda-toolchain.sh" | tail -n1)"
fi
BIN="$(dirname "$NVCC")"
CUOBJDUMP="${CUOBJDUMP:-$BIN/cuobjdump}"
CCCL="$(dirname "$BIN")/include/cccl"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$NVCC" --version | grep -q "release 13.0" || { echo "check-kernels: $NVCC is not nvcc 13.0" >&2; exit 1; }

fail=0
declare -a jobs=()
for cu in "$ROOT"/kernels/cuda/*.cu; do
  name="$(basename "$cu" .cu)"
  for arch in sm_80 sm_90a; do
    ( "$NVCC" -O3 -std=c++17 -Werror all-warnings -Xptxas -v -cubin "-gencode=arch=compute_${arch#sm_},code=$arch" \
        -I"$CCCL" -o "$WORK/$name.$arch.cubin" "$cu" >"$WORK/$name.$arch.log" 2>&1 \
      || { echo "FAILED" >>"$WORK/$name.$arch.log"; } ) &
    jobs+=($!)
  done
  for arch in compute_80 compute_90; do
    ( "$NVCC" -O3 -std=c++17 -Werror all-warnings -ptx "-arch=$arch" -I"$CCCL" -o "$WORK/$name.$arch.ptx" "$cu" \
        >"$WORK/$name.$arch.log" 2>&1 || { echo "FAILED" >>"$WORK/$name.$arch.log"; } ) &
    jobs+=($!)
  done
  # Two cores on CI machines: keep at most four compilers alive.
  while (( $(jobs -rp | wc -l) >= 4 )); do wait -n || true; done
done
wait

for log in "$WORK"/*.log; do
  if grep -q "^FAILED" "$log"; then
    echo "check-kernels: compile failed: $(basename "$log" .log)" >&2
    cat "$log" >&2
    fail=1
  fi
done
(( fail == 0 )) || exit 1

# Dump SASS once per cubin.
for cubin in "$WORK"/*.cubin; do
  "$CUOBJDUMP" -sass "$cubin" >"${cubin%.cubin}.sass"
done

python3 - "$WORK" <<'PY' || fail=1
import glob, os, re, sys
work = sys.argv[1]
rows, bad = [], []
# ptxas: registers / stack / spills per kernel per arch.
for log in sorted(glob.glob(os.path.join(work, "*.sm_*.log"))):
    mod, arch = os.path.basename(log)[:-4].split(".")
    cur, info = None, {}
    for line in open(log):
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            cur = m.group(1); info.setdefault(cur, {"regs": 0, "stack": 0, "st": 0, "ld": 0}); continue
        if cur is None: continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            info[cur].update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m: info[cur]["regs"] = int(m.group(1))
    for fn, i in sorted(info.items()):
        ok = i["stack"] == 0 and i["st"] == 0 and i["ld"] == 0
        rows.append((mod, arch, fn, i["regs"], i["stack"], i["st"] + i["ld"], "ok" if ok else "SPILL/STACK"))
        if not ok: bad.append(f"{mod} {arch} {fn}: stack {i['stack']} spill {i['st']}+{i['ld']}")

def sass_functions(path):
    """{function: sass text} of one cuobjdump -sass dump."""
    out, cur = {}, None
    for line in open(path):
        m = re.search(r"Function : (\S+)", line)
        if m: cur = m.group(1); out[cur] = []; continue
        if cur: out[cur].append(line)
    return {k: "".join(v) for k, v in out.items()}

checks = []  # (module, arch, kernel prefix, what, regex)
for arch in ("sm_80", "sm_90a"):
    mma = r"\bHMMA\b" if arch == "sm_80" else r"\b(HMMA|HGMMA)\b"
    checks.append(("attention_prefill", arch, "tf_attn_prefill", "tensor-core MMA", mma))
    checks.append(("gemv_mma", arch, "tf_gemv_mma_", "tensor-core MMA", mma))
    ld128 = r"\bLDG\.E(\.[A-Z0-9_]+)*\.128\b"
    for mod, prefix in (("attention_decode", "tf_attn_decode_hd"), ("embedding", "tf_embedding_gather"),
                        ("rmsnorm", "tf_"), ("silu_mul", "tf_silu_mul"), ("gemv", "tf_gemv_"),
                        ("gemv_mma", "tf_gemv_mma_")):
        checks.append((mod, arch, prefix, "128-bit loads", ld128))
sass_rows = []
for mod, arch, prefix, what, rx in checks:
    funcs = sass_functions(os.path.join(work, f"{mod}.{arch}.sass"))
    targets = {k: v for k, v in funcs.items() if k.startswith(prefix)}
    if not targets:
        bad.append(f"{mod} {arch}: no kernel named {prefix}* in the SASS"); continue
    for fn, text in sorted(targets.items()):
        hits = len(re.findall(rx, text))
        sass_rows.append((mod, arch, fn, what, hits, "ok" if hits else "MISSING"))
        if not hits: bad.append(f"{mod} {arch} {fn}: no {what} in SASS")
    # Local memory use shows as LDL/STL even where ptxas reports no spill.
    for fn, text in sorted(funcs.items()):
        if re.search(r"\b(LDL|STL)\b", text): bad.append(f"{mod} {arch} {fn}: local memory (LDL/STL) in SASS")

# The GEMVs stream weights: each unrolled group's loads must all be issued before its first
# FMA/MMA (ptxas sinks them towards their uses when it aims for occupancy instead). Minimum
# 16-byte loads ahead of the first math instruction: row pairs, both rows' chunks of the
# group (4 per row for t ≤ 4, else 2) plus an activation chunk; tensor cores, 4 spans × (2
# weight rows + ⌈t/8⌉ activation rows).
def loads_wanted(fn):
    m = re.match(r"tf_gemv_(mma_)?[a-z0-9]+_t(\d+)$", fn)
    if not m: return None
    t = int(m.group(2))
    return 4 * (2 + (t + 7) // 8) if m.group(1) else 2 * (4 if t <= 4 else 2) + 1
for mod in ("gemv", "gemv_mma"):
    for arch in ("sm_80", "sm_90a"):
        for fn, text in sorted(sass_functions(os.path.join(work, f"{mod}.{arch}.sass")).items()):
            want = loads_wanted(fn)
            if want is None: continue
            first = re.search(r"\b(FFMA|HMMA)\b", text)
            ahead = len(re.findall(r"\bLDG\.E", text[: first.start() if first else len(text)]))
            sass_rows.append((mod, arch, fn, f"loads ahead ≥{want}", ahead, "ok" if ahead >= want else "TOO FEW"))
            if ahead < want: bad.append(f"{mod} {arch} {fn}: {ahead} loads issued before the first FMA/MMA, want ≥ {want}")

# Programmatic dependent launch: on Hopper every kernel must wait for its predecessor
# (griddepcontrol.wait = ACQBULK) before its first global load or store, else a kernel
# launched early would read stale data.
glob_mem = re.compile(r"\b(LDG|STG|LD|ST|ATOMG|ATOM|RED|REDG)\.E\b")
for sass in sorted(glob.glob(os.path.join(work, "*.sm_90a.sass"))):
    mod = os.path.basename(sass).split(".")[0]
    for fn, text in sorted(sass_functions(sass).items()):
        wait, first = text.find("ACQBULK"), glob_mem.search(text)
        ok = wait >= 0 and (first is None or wait < first.start())
        sass_rows.append((mod, "sm_90a", fn, "PDL wait first", int(wait >= 0), "ok" if ok else "MISSING"))
        if not ok: bad.append(f"{mod} sm_90a {fn}: no griddepcontrol.wait before its first global memory access")
        if mod in ("gemv", "gemv_mma"):
            # The weight prefetch into L2 issued before that wait (cp.async.bulk.prefetch.L2).
            pf = text.find("UBLKPF")
            ok = 0 <= pf < wait
            sass_rows.append((mod, "sm_90a", fn, "L2 prefetch first", int(pf >= 0), "ok" if ok else "MISSING"))
            if not ok: bad.append(f"{mod} sm_90a {fn}: no L2 weight prefetch before griddepcontrol.wait")

print(f"{'module':<18} {'arch':<7} {'kernel':<30} {'regs':>4} {'stack':>5} {'spill':>5}  status")
for r in rows: print(f"{r[0]:<18} {r[1]:<7} {r[2]:<30} {r[3]:>4} {r[4]:>5} {r[5]:>5}  {r[6]}")
print()
print(f"{'module':<18} {'arch':<7} {'kernel':<30} {'SASS check':<16} {'hits':>5}  status")
for r in sass_rows: print(f"{r[0]:<18} {r[1]:<7} {r[2]:<30} {r[3]:<16} {r[4]:>5}  {r[5]}")
if bad:
    print("\ncheck-kernels: FAILED", *bad, sep="\n  ", file=sys.stderr); sys.exit(1)
print("\ncheck-kernels: ok")
PY
(( fail == 0 )) || exit 1

if [[ "${CHECK_KERNELS_SKIP_CARGO:-0}" != "1" ]]; then
  export NVCC CARGO_TARGET_DIR="${CARGO_TARGET_DIR_CUDA:-$ROOT/target-cuda}"
  cd "$ROOT"
  cargo build -p tokenfleet-kernels --features cuda --locked
  cargo clippy -p tokenfleet-kernels --all-targets --features cuda --locked -- -D warnings
  cargo test -p tokenfleet-kernels --features cuda --locked
  # The worker's CUDA backend (cuBLASLt, graphs, launches) compiles, lints, and its host-side
  # unit tests pass; only a GPU can run the rest (scripts/gpu-check.sh).
  cargo clippy -p tokenfleet-worker --all-targets --features cuda --locked -- -D warnings
  cargo test -p tokenfleet-worker --features cuda --locked --lib backend::
fi
