#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a lent GPU machine, which has no Rust toolchain
# and no network: the stripped release `tokenfleet-worker` with `--features cuda` (kernels
# compiled by the pinned pip nvcc 13.0) and the `tokenfleet` CLI (for the `serving` tier),
# copied into dist/ (git-ignored). Carry `dist` with the call, then run e.g.
#   scripts/gpu-check.sh kernels parity        # first call
#   scripts/gpu-check.sh speed                 # second call
#   scripts/gpu-check.sh speed2 / serving      # further calls, if time is left
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NVCC="$("$ROOT/scripts/install-cuda-toolchain.sh" | tail -n1)"
export NVCC CARGO_TARGET_DIR="${CARGO_TARGET_DIR_CUDA:-$ROOT/target-cuda}"
cargo build --release --locked -p tokenfleet-worker --features cuda
cargo build --release --locked -p tokenfleet
mkdir -p dist
cp "$CARGO_TARGET_DIR/release/tokenfleet-worker" "$CARGO_TARGET_DIR/release/tokenfleet" dist/
git rev-parse HEAD >dist/BUILT_FROM
ls -la dist
du -sh dist
