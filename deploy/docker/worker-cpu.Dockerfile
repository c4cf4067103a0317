# syntax=docker/dockerfile:1.7
#
# tokenfleet-worker, CPU backend only (no CUDA in the binary or the image): for clusters
# without GPUs, demos and development. The CPU kernels pick AVX2/FMA/F16C at run time, so
# one image runs on any x86-64 node.
# Build from the repository root (BuildKit reads worker-cpu.Dockerfile.dockerignore):
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t ghcr.io/tokenfleet/tokenfleet-worker-cpu:0.1.0 .
# Run (SmolLM2 made by scripts/fetch-smollm2.sh, mounted where worker-cpu.toml looks):
#   docker run -v $PWD/models:/models:ro -p 50061:50061 ghcr.io/tokenfleet/tokenfleet-worker-cpu:0.1.0

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p tokenfleet-worker \
 && install -D -m 0755 target/release/tokenfleet-worker /out/tokenfleet-worker

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/tokenfleet-worker /usr/local/bin/tokenfleet-worker
COPY deploy/config/worker-cpu.toml /etc/tokenfleet/worker-cpu.toml
USER 65532:65532
EXPOSE 50061 50062 9090
ENTRYPOINT ["/usr/local/bin/tokenfleet-worker"]
CMD ["serve", "--config", "/etc/tokenfleet/worker-cpu.toml"]
