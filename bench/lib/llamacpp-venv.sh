#!/usr/bin/env bash
# Creates (once) target/llamacpp-venv with a pinned llama-cpp-python built from source
# for this CPU (llama.cpp's own default: GGML_NATIVE, no BLAS, no GPU). ~10-20 min on 2 cores.
# Prints the venv's python path on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV="$ROOT/target/llamacpp-venv"
PY="$VENV/bin/python"
if [[ -x "$PY" ]] && "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" 2>/dev/null; then
    echo "$PY"
    exit 0
fi
python3 -m venv "$VENV"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (CMAKE_ARGS=$CMAKE_ARGS); this takes a while" >&2
"$PY" -m pip install --disable-pip-version-check --no-cache-dir --no-binary llama-cpp-python -v \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >"$VENV/build.log" 2>&1 || {
    tail -40 "$VENV/build.log" >&2
    exit 1
}
echo "$PY"
