# syntax=docker/dockerfile:1
# Herald's container image: every service binary, built in release, in one small runtime image
# without a shell. Each Kubernetes Deployment picks its binary as its command (k8s/README.md).
#
#   docker build -t herald:0.0.0 .
#
# integration-tests/tests/image.rs checks this file against the workspace's binary targets:
# every binary is built and copied below or named dev-only there, and nothing else is.

# The workspace's toolchain (STYLE.md: one toolchain, Rust 1.95), on Debian 12 like the
# runtime image, so the binaries link against the glibc they run with.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The caches keep the registry and the target directory between builds; the binaries are
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin herald-api-server \
      --bin herald-relay \
      --bin herald-channel-worker \
      --bin herald-sentinel \
      --bin herald-tracker \
      --bin herald-cli \
 && mkdir /out \
 && cp target/release/herald-api-server target/release/herald-relay \
      target/release/herald-channel-worker target/release/herald-sentinel \
      target/release/herald-tracker target/release/herald-cli /out/

# glibc, libgcc and the CA roots (for SMTP relays, FCM and APNs when no CA file is given), and
# no shell or package manager. The nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/herald-api-server /usr/local/bin/herald-api-server
COPY --from=builder /out/herald-relay /usr/local/bin/herald-relay
COPY --from=builder /out/herald-channel-worker /usr/local/bin/herald-channel-worker
COPY --from=builder /out/herald-sentinel /usr/local/bin/herald-sentinel
COPY --from=builder /out/herald-tracker /usr/local/bin/herald-tracker
COPY --from=builder /out/herald-cli /usr/local/bin/herald-cli
# base.toml documents every key and holds the defaults; Kubernetes mounts its ConfigMap (base.toml
# and the overlay's profile) over this directory. Certificates and keys are never in the image:
# they are mounted from Secrets (config/production.toml names the paths).
COPY config/base.toml /etc/herald/config/base.toml
ENV HERALD_CONFIG_DIR=/etc/herald/config
# Numeric, so that the kubelet can check runAsNonRoot against it.
USER 65532:65532
CMD ["/usr/local/bin/herald-api-server"]
