# syntax=docker/dockerfile:1
#
# The production image: the three syncfleet binaries, the command chooses which one runs:
#   syncfleet-producer   scheduler, reconciler, admin API + dashboard, /metrics, /livez, /readyz (:8080)
#   syncfleet-worker     step worker; /metrics, /livez, /readyz on :9464; drains on SIGTERM
#   syncfleet migrate    migrations (also: tokens, trigger, runs, queues, healthcheck, ...)
#
#   docker build -t syncfleet \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm syncfleet syncfleet --help
#
# Built with the `production` profile (Cargo.toml: fat LTO, one codegen unit, stripped) and
# without default features: no demo pack, and a `syncfleet` CLI without `demo` (so without the
# sandbox and the worker engine). The sandbox's fake upstreams, for trying syncfleet out, are a
# separate target of this file:
#   docker build --target sandbox -t syncfleet-sandbox .
# FEATURES adds cargo features to the three binaries, e.g. the demo pack that docker-compose.yml's
# quickstart uses: --build-arg FEATURES=syncfleet-producer/demo,syncfleet-worker/demo
#
# No database is needed to build. The workspace uses sqlx's runtime query API only (no `query!`
# macros), so there is no offline query metadata (.sqlx/) to prepare; SQLX_OFFLINE=true is set
# anyway, so a checked macro added later fails the build here instead of reaching for a database.
# `sqlx::migrate!` embeds migrations/ at compile time: the migrations ship inside the binaries.
# Configuration is by environment only (SYNCFLEET__SECTION__KEY, see deploy/README.md).

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.76

# --- chef: the toolchain plus cargo-chef, shared by the planner and the builder -----------------
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# --- planner: a recipe of the manifests only, so dependencies rebuild only when they change ------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies first (cached layer), then the production binaries -------------------
FROM chef AS builder
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
ARG FEATURES=""
# The same profile, features and packages as the build below, so the cooked layer is reused.
RUN cargo chef cook --profile production --locked --no-default-features ${FEATURES:+--features "${FEATURES}"} \
        --bins -p syncfleet-producer -p syncfleet-worker -p syncfleet-cli --recipe-path recipe.json
COPY . .
# The commit the binaries report in syncfleet_build_info{commit}.
ARG REVISION=""
RUN SYNCFLEET_GIT_COMMIT="${REVISION}" \
    cargo build --profile production --locked --no-default-features ${FEATURES:+--features "${FEATURES}"} \
        --bins -p syncfleet-producer -p syncfleet-worker -p syncfleet-cli \
 && mkdir -p /out \
 && for bin in syncfleet syncfleet-producer syncfleet-worker; do \
        cp "target/production/${bin}" /out/; \
    done

# --- sandbox-builder: the fake upstreams, only for the `sandbox` target -------------------------
FROM builder AS sandbox-builder
RUN cargo build --profile production --locked -p syncfleet-sandbox --bin syncfleet-sandbox \
 && cp target/production/syncfleet-sandbox /out/

# --- sandbox: the production image plus syncfleet-sandbox (docker-compose.yml's `sandbox`) -------
FROM gcr.io/distroless/cc-debian12:nonroot AS sandbox
COPY --from=sandbox-builder /out/syncfleet-sandbox /usr/local/bin/
USER 65532:65532
EXPOSE 8090
CMD ["syncfleet-sandbox", "--host", "0.0.0.0"]

# --- runtime: glibc + libgcc, no shell, no package manager, uid 65532 ----------------------------
# The default target (the last stage). TLS is rustls (aws-lc-rs, linked in); the image's CA
# bundle serves https upstreams.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=https://git.example.com/syncfleet/syncfleet
LABEL org.opencontainers.image.title="syncfleet" \
      org.opencontainers.image.description="Syncs SaaS APIs into PostgreSQL: producer, worker and ops CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
# Listen on every interface inside a container (the compiled-in default of the producer is
# 127.0.0.1:8080). Deployments set these explicitly too.
ENV SYNCFLEET__PRODUCER__LISTEN=0.0.0.0:8080 \
    SYNCFLEET__WORKER__LISTEN=0.0.0.0:9464
EXPOSE 8080 9464
# No ENTRYPOINT: the command is the binary (PID 1; every binary handles SIGTERM itself).
CMD ["syncfleet-producer"]
