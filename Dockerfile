# syntax=docker/dockerfile:1
#
# jetway container image: a locked release build on Debian bookworm, run on
# distroless (glibc, CA certificates, no shell) as the non-root user 65532.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/jetway/jetway:0.1.0 .
#
# Each platform compiles natively (under emulation on a foreign builder), so
# nothing here depends on TARGETARCH. The build command is the README's:
# `cargo build --release --locked`, default features (tests/deploy.rs checks).
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on port 4481.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches keep the registry and the target folder between builds;
# the binary is copied out because a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/jetway /out/jetway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/jetway /usr/local/bin/jetway
# The config is mounted at /etc/jetway (a ConfigMap); jetway writes nothing to
# the root filesystem, so it can run read-only.
USER 65532:65532
EXPOSE 4480 4481
ENTRYPOINT ["/usr/local/bin/jetway"]
CMD ["run", "--config", "/etc/jetway/jetway.yaml"]
