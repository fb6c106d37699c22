# syntax=docker/dockerfile:1
# The coinstream binary (engine `run`, and the `ingest` commands), used by docker-compose.yaml.
#
# The builder is the bookworm variant of rust:1.95 so the binary links against the same glibc
# as the debian:bookworm-slim runtime.
FROM rust:1.95-bookworm AS builder
# rdkafka builds its bundled librdkafka (C, with zlib) from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin coinstream \
 && install -m 0755 target/release/coinstream /usr/local/bin/coinstream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app coinstream
COPY --from=builder /usr/local/bin/coinstream /usr/local/bin/coinstream
WORKDIR /app
# Pipelines refer to the transforms and reference data by paths relative to /app.
COPY sql/ sql/
COPY required_data/ required_data/
COPY pipelines/ pipelines/
USER coinstream
ENTRYPOINT ["coinstream"]
CMD ["--help"]
