# syntax=docker/dockerfile:1
#
# Images for Fjord and for fjord-bench, from one multi-stage build.
#
#   docker build -t fjord .                             # the broker (last stage, `fjord`)
#   docker build --target bench -t fjord-bench .        # the load generator
#   docker run -p 9092:9092 -v fjord-data:/var/lib/fjord fjord
#
# The broker is configured with FJORD_* variables named after Kafka's
# properties (FJORD_LOG_RETENTION_MS -> log.retention.ms; an unknown name is an
# error), or with `fjord serve` flags. Clients connect to the address the
# broker *advertises*, so set FJORD_ADVERTISED_LISTENERS to an address the
# clients can reach (the default suits `docker run -p 9092:9092` with clients
# on the same host). docker-compose.yml explains the choice it makes.
#
# Build caches (BuildKit cache mounts) keep the crates.io downloads and the
# target directory between builds; binaries are copied out of the cached
# target directory in the same step, because the mount is not in the image.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- fjord: the broker binary (pure Rust; the rdkafka dev-dependency of the
# fjord crate is only for tests and is not built here).
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Everything Cargo needs to load the workspace: both members' manifests and
# sources (Cargo reads every member even when building one) and the vendored,
# patched kafka-protocol named by [patch.crates-io].
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY vendor ./vendor
COPY bench ./bench
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin fjord \
 && install -m 0755 target/release/fjord /usr/local/bin/fjord

# ---- fjord-bench: rdkafka with cmake-build compiles librdkafka from source,
# which needs cmake and a C/C++ toolchain; the -dev libraries cover the
# optional rdkafka features (ssl, sasl, curl, system zlib) the bench may turn
# on.
FROM ${RUST_IMAGE} AS bench-builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake g++ pkg-config libcurl4-openssl-dev libsasl2-dev libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY vendor ./vendor
COPY bench ./bench
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p fjord-bench \
 && install -m 0755 target/release/fjord-bench /usr/local/bin/fjord-bench

# ---- bench: `docker compose run --rm bench run --bootstrap fjord:9092 ...`
FROM ${RUNTIME_IMAGE} AS bench
# Shared libraries librdkafka may link against (see bench-builder).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libcurl4 libsasl2-2 libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=bench-builder /usr/local/bin/fjord-bench /usr/local/bin/fjord-bench
# Reports (--out) go to /results, a bind mount in docker-compose.yml. The
# image keeps the default user (root) so that it can write there whoever owns
# the host directory; `docker compose run -u "$(id -u):$(id -g)"` writes the
# reports as yourself instead.
WORKDIR /results
ENTRYPOINT ["fjord-bench"]
CMD ["--help"]

# ---- fjord: the broker image (the default target, so it is the last stage).
FROM ${RUNTIME_IMAGE} AS fjord
# The data directory is created here, owned by the broker's user, so that a
# named volume mounted on it starts with that ownership.
RUN useradd --system --uid 10001 --user-group --no-create-home fjord \
 && mkdir -p /var/lib/fjord \
 && chown fjord:fjord /var/lib/fjord
COPY --from=builder /usr/local/bin/fjord /usr/local/bin/fjord
# Listen on every interface of the container. Advertise localhost: right for
# `docker run -p 9092:9092` with clients on the host; override it for clients
# elsewhere (docker-compose.yml does). NO_COLOR: plain logs for `docker logs`.
ENV FJORD_LISTENERS=PLAINTEXT://0.0.0.0:9092 \
    FJORD_ADVERTISED_LISTENERS=PLAINTEXT://localhost:9092 \
    FJORD_LOG_DIRS=/var/lib/fjord \
    RUST_LOG=info \
    NO_COLOR=1
VOLUME ["/var/lib/fjord"]
EXPOSE 9092
USER fjord
# fjord is PID 1: it handles SIGTERM/SIGINT itself (closing its logs cleanly)
# and starts no child processes, so no init process is needed.
ENTRYPOINT ["fjord"]
CMD ["serve"]
