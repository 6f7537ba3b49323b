# Multi-stage build: a static-ish release binary on a small, non-root runtime image.
#
#   docker build -t cachegate .
#   docker run --rm -p 6380:6380 \
#     -v "$PWD/config/sidecar.toml:/etc/cachegate/cachegate.toml:ro" \
#     -v "$PWD/tls:/etc/cachegate/tls:ro" \
#     cachegate
#
# Config and certificates are mounted read-only; nothing secret is baked into the image.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked && strip target/release/cachegate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/cachegate --create-home cachegate
COPY --from=build /src/target/release/cachegate /usr/local/bin/cachegate
USER cachegate
ENV CACHEGATE_DATA_DIR=/var/lib/cachegate
VOLUME ["/etc/cachegate"]
# The sidecar example's Redis and memcached listeners (the admin listener stays on loopback).
EXPOSE 6380 11212
# /live on the admin listener, asked by the binary itself (the image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/cachegate", "live", "--admin", "127.0.0.1:9180"]
ENTRYPOINT ["/usr/local/bin/cachegate"]
CMD ["--config", "/etc/cachegate/cachegate.toml"]
