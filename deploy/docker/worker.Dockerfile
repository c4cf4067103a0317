# syntax=docker/dockerfile:1.7
#
# tokenfleet-worker with the CUDA backend: our kernels compiled into the binary (cubins for
# sm_80 and sm_90a, PTX for compute_80/90), cuBLAS/cuBLASLt from the CUDA 13.0 runtime base.
# The GPU driver (libcuda) comes from the node through the NVIDIA container toolkit; nodes
# need driver >= 580 (CUDA 13.0).
# Build from the repository root (BuildKit reads worker.Dockerfile.dockerignore):
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/tokenfleet/tokenfleet-worker:0.1.0 .
# Run (model directory mounted at /models/minitron-4b, see worker.toml):
#   docker run --gpus 1 -v $PWD/models:/models:ro -p 50061:50061 ghcr.io/tokenfleet/tokenfleet-worker:0.1.0

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3-venv: nvcc 13.0 comes from PyPI (scripts/install-cuda-toolchain.sh); no CUDA
# install and no GPU are needed to compile the kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    scripts/install-cuda-toolchain.sh
# NVCC is set explicitly, and the build must leave cubins behind: a CUDA image whose kernels
# silently failed to compile must not be produced.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    NVCC="$(scripts/install-cuda-toolchain.sh 2>/dev/null | tail -n 1)" \
    && test -x "$NVCC" \
    && NVCC="$NVCC" cargo build --release --locked -p tokenfleet-worker --features cuda \
    && find target/release/build -path '*tokenfleet-kernels-*/out/kernels/*sm90a.cubin' | grep -q . \
    && install -D -m 0755 target/release/tokenfleet-worker /out/tokenfleet-worker

FROM ${RUNTIME_IMAGE}
# CUDA's JIT cache (PTX for GPUs newer than sm_90a) goes to a writable emptyDir at /tmp;
# the root filesystem can stay read-only.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    HOME=/tmp
RUN groupadd --system --gid 65532 tokenfleet \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin tokenfleet
COPY --from=build /out/tokenfleet-worker /usr/local/bin/tokenfleet-worker
COPY deploy/config/worker.toml /etc/tokenfleet/worker.toml
USER 65532:65532
# Worker gRPC, plaintext health (kubelet probes), Prometheus metrics.
EXPOSE 50061 50062 9090
ENTRYPOINT ["/usr/local/bin/tokenfleet-worker"]
CMD ["serve", "--config", "/etc/tokenfleet/worker.toml"]
