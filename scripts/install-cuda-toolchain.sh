#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler set (DESIGN.md §4) from PyPI into .venv-cuda at the
# repository root, so kernels build on machines without a CUDA install or a GPU. All pieces
# must stay on 13.0: mixing in 13.x pieces fails with "Unsupported .version".
# Idempotent: a second run only checks versions. Prints the nvcc path on its last line;
# `eval "$(scripts/install-cuda-toolchain.sh --env)"` exports NVCC and PATH instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TOKENFLEET_CUDA_VENV:-$ROOT/.venv-cuda}"
PY="${PYTHON:-python3}"
PKGS=(
  "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*"
)
# PyPI has no cuobjdump / nvdisasm 13.0 (the oldest are 13.2; cuobjdump -sass runs nvdisasm).
# They only read the cubins nvcc 13.0 wrote, so pinned newer ones are safe; --no-deps keeps
# them from pulling other 13.x pieces in.
SASS_PKGS=("nvidia-cuda-cuobjdump==13.2.78" "nvidia-cuda-nvdisasm==13.2.78")
MODE="${1:-}"

log() { echo "install-cuda-toolchain: $*" >&2; }

find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }

ok_already() {
  local nvcc; nvcc="$(find_nvcc)"
  [[ -n "$nvcc" && -x "$nvcc" ]] || return 1
  "$nvcc" --version 2>/dev/null | grep -q "release 13.0" || return 1
  [[ -x "$(dirname "$nvcc")/cuobjdump" && -x "$(dirname "$nvcc")/nvdisasm" ]] || return 1
}

if ! ok_already; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  log "installing ${PKGS[*]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${SASS_PKGS[@]}"
  ok_already || { log "nvcc 13.0, cuobjdump or nvdisasm missing after install"; exit 1; }
fi

NVCC="$(find_nvcc)"
BIN="$(dirname "$NVCC")"
# nvcc from the wheels finds its own headers, but not cccl's: build.rs and check-kernels.sh
# add -I$CU13/include/cccl themselves.
if [[ "$MODE" == "--env" ]]; then
  echo "export NVCC='$NVCC'"
  echo "export PATH='$BIN':\"\$PATH\""
else
  log "$("$NVCC" --version | tail -n2 | head -n1)"
  echo "$NVCC"
fi
