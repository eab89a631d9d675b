//! The worker's HTTP listener: `/metrics` (Prometheus), `/livez` (the process answers) and
//! `/readyz` (PostgreSQL and Redis answer and the database holds every migration this build knows).

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

use crate::Engine;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/metrics", get(|| async { ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render()) }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(engine)
}

async fn readyz(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    match health::readiness(&engine.pool, &engine.queues).await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(message) => {
            tracing::warn!(%message, "Not ready.");
            (StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

/// Serves [`router`] on `listener` until `stop`, within [`ServerLimits::PROBES`] (header-read and
/// request timeouts, a connection limit, a shutdown deadline).
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: CancellationToken) {
    let limits = ServerLimits::PROBES;
    let app = server::with_request_timeout(router(engine), limits.request_timeout, |_, limit| {
        (StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {} s", limit.as_secs())).into_response()
    });
    if let Err(error) = server::serve(listener, app, limits, stop).await {
        tracing::error!(%error, "Worker HTTP listener failed.");
    }
}
