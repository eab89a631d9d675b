# syntax=docker/dockerfile:1
#
# One image for every syncfleet binary; the command chooses which one runs:
#   syncfleet-producer   scheduler, reconciler, admin API + dashboard, /metrics, /livez, /readyz (:8080)
#   syncfleet-worker     step worker; /metrics, /livez, /readyz on :9464; drains on SIGTERM
#   syncfleet migrate    one-shot migrations (also: tokens, trigger, runs, queues, healthcheck, ...)
#   syncfleet-sandbox    fake upstream APIs for trying it out
#
#   docker build -t syncfleet .
#   docker run --rm syncfleet syncfleet --help
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

# --- builder: dependencies first (cached layer), then the workspace ------------------------------
FROM chef AS builder
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
# vendor/sqlx-core is a [patch.crates-io] path dependency: it must exist before the cook.
COPY vendor vendor
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# `--no-default-features` leaves the CLI's `demo` feature out: the production `syncfleet` links
# neither the sandbox nor the worker engine. The packs come from syncfleet-registry's features.
RUN cargo build --release --locked --no-default-features --bins \
        -p syncfleet-producer -p syncfleet-worker -p syncfleet-cli -p syncfleet-sandbox \
 && mkdir -p /out \
 && for bin in syncfleet syncfleet-producer syncfleet-worker syncfleet-sandbox; do \
        cp "target/release/${bin}" /out/; \
    done

# --- runtime: glibc + libgcc, no shell, no package manager, uid 65532 ----------------------------
# TLS is rustls (aws-lc-rs, linked in); the image's CA bundle serves https upstreams.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
# Listen on every interface inside a container (the compiled-in default of the producer is
# 127.0.0.1:8080). Deployments set these explicitly too.
ENV SYNCFLEET__PRODUCER__LISTEN=0.0.0.0:8080 \
    SYNCFLEET__WORKER__LISTEN=0.0.0.0:9464
EXPOSE 8080 9464
# No ENTRYPOINT: the command is the binary (PID 1; every binary handles SIGTERM itself).
CMD ["syncfleet-producer"]
