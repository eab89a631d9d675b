//! The worker's HTTP listener: `/metrics` (Prometheus), `/livez` and `/readyz`.
//!
//! `/livez` fails (503) only when a queue consumer stays stalled although the supervisor restarted
//! it ([`Health::Dead`]): restarting the process is then the remedy. `/readyz` fails while
//! PostgreSQL or Redis does not answer, the database lacks a migration this build knows, or a
//! consumer is stalled or restarting after a stall ([`Health::Stalled`]). Each answer's body says why.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use syncfleet_runtime::{
    metrics,
    server::{self, ServerLimits},
};
use syncfleet_store::health;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Engine,
    consumers::{Consumers, Health},
};

#[derive(Clone)]
struct Probes {
    engine: Arc<Engine>,
    consumers: Arc<Consumers>,
}

pub fn router(engine: Arc<Engine>, consumers: Arc<Consumers>) -> Router {
    Router::new()
        .route("/metrics", get(|| async { ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render()) }))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(Probes { engine, consumers })
}

async fn livez(State(probes): State<Probes>) -> impl IntoResponse {
    match probes.consumers.health() {
        Health::Dead(message) => {
            tracing::warn!(%message, "Not alive.");
            (StatusCode::SERVICE_UNAVAILABLE, message)
        }
        Health::Ok | Health::Stalled(_) => (StatusCode::OK, "ok".to_owned()),
    }
}

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let verdict = match probes.consumers.health() {
        Health::Ok => health::readiness(&probes.engine.pool, &probes.engine.queues).await,
        Health::Stalled(message) | Health::Dead(message) => Err(message),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(message) => {
            tracing::warn!(%message, "Not ready.");
            (StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

/// Serves [`router`] on `listener` until `stop`, within [`ServerLimits::PROBES`] (header-read and
/// request timeouts, a connection limit, a shutdown deadline).
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, consumers: Arc<Consumers>, stop: CancellationToken) {
    let limits = ServerLimits::PROBES;
    let app = server::with_request_timeout(router(engine, consumers), limits.request_timeout, |_, limit| {
        (StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {} s", limit.as_secs())).into_response()
    });
    if let Err(error) = server::serve(listener, app, limits, stop).await {
        tracing::error!(%error, "Worker HTTP listener failed.");
    }
}
