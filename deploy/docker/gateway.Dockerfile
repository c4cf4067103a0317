# syntax=docker/dockerfile:1.7
#
# tokenfleet-gateway: the stateless public gRPC API. It needs no model and no GPU.
# Build from the repository root (BuildKit reads gateway.Dockerfile.dockerignore):
#   docker build -f deploy/docker/gateway.Dockerfile -t ghcr.io/tokenfleet/tokenfleet-gateway:0.1.0 .
# Run:
#   docker run -p 50051:50051 ghcr.io/tokenfleet/tokenfleet-gateway:0.1.0 \
#     --config /etc/tokenfleet/gateway.toml --worker-dns WORKER_HOST:50061

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p tokenfleet-gateway \
 && install -D -m 0755 target/release/tokenfleet-gateway /out/tokenfleet-gateway

# distroless/cc: glibc + libgcc + CA certificates, no shell; the build stage is the same
# Debian release, so the binary's glibc matches.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/tokenfleet-gateway /usr/local/bin/tokenfleet-gateway
COPY deploy/config/gateway.toml /etc/tokenfleet/gateway.toml
USER 65532:65532
# gRPC API, plaintext health (kubelet probes), Prometheus metrics.
EXPOSE 50051 50052 9091
ENTRYPOINT ["/usr/local/bin/tokenfleet-gateway"]
CMD ["--config", "/etc/tokenfleet/gateway.toml"]
