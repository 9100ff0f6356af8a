# syntax=docker/dockerfile:1
# Dockerfile — multi-stage build of llm-api and llm-worker (one image, both binaries).
#   docker build -t llm-service .
#   podman run --rm -p 8100:8000 -e SECRET_KEY=... -e DATABASE_URL=... -e REDIS_URL=... llm-service
# The default command (scripts/container-entrypoint.sh) is the whole service in one container:
# it applies the migrations, then runs `llm-worker` and `llm-api serve` (on :8000, the worker's
# /metrics on :9100), passes SIGTERM/SIGINT to both, and exits non-zero when either one ends by
# itself. Give it `--stop-timeout 40` so that in-flight jobs drain (SHUTDOWN_GRACE_SECS, 30 s).
# Either half alone, as compose.yaml runs them (scalable workers): `llm-api serve`, `llm-worker`.
# SECRET_KEY (32+ bytes) is required: the api has no default signing key.
# No HEALTHCHECK in the image: worker-only containers share it and have no api; compose.yaml
# checks the api with curl (installed below) on /health/ready.

# ---- builder ---------------------------------------------------------------------------------
# sqlx 0.9 needs rustc >= 1.94; this matches the toolchain the project is developed with.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# 1) Dependencies only: manifests plus stub sources, so this layer is rebuilt only when a
#    Cargo.toml, Cargo.lock or .cargo/config.toml changes.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY api/Cargo.toml api/
COPY worker/Cargo.toml worker/
COPY shared/Cargo.toml shared/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN mkdir -p api/src worker/src shared/src tests/support tests/integration tests/chaos bench/src \
 && echo 'fn main() {}' > api/src/main.rs \
 && echo 'fn main() {}' > worker/src/main.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && echo 'fn main() {}' > tests/chaos/main.rs \
 && touch shared/src/lib.rs api/src/lib.rs worker/src/lib.rs tests/support/mod.rs tests/integration/main.rs \
 && cargo build --release --locked --bin llm-api --bin llm-worker \
 && rm -rf api/src worker/src shared/src tests/support tests/integration tests/chaos bench/src

# 2) The real sources (see .dockerignore). Touch the crate roots so cargo never mistakes the
#    stubs' build for an up-to-date one.
COPY . .
RUN touch api/src/main.rs api/src/lib.rs worker/src/main.rs worker/src/lib.rs shared/src/lib.rs \
 && cargo build --release --locked --bin llm-api --bin llm-worker \
 && install -m 0755 target/release/llm-api target/release/llm-worker /usr/local/bin/

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/llm-api /usr/local/bin/llm-worker /usr/local/bin/
COPY migrations /app/migrations
COPY prompts /app/prompts
COPY config /app/config
COPY --chmod=0755 scripts/container-entrypoint.sh /usr/local/bin/
WORKDIR /app
USER app
ENV API_LISTEN=0.0.0.0:8000
ENV WORKER_METRICS_LISTEN=0.0.0.0:9100
# The api's allocator (mimalloc) keeps off transparent huge pages even on a host whose THP mode
# is "always": huge pages would double an idle api's memory.
ENV MIMALLOC_ALLOW_THP=0
EXPOSE 8000 9100
STOPSIGNAL SIGTERM
CMD ["container-entrypoint.sh"]
