//! Prometheus `/metrics` of the producer: every `syncfleet_*` metric this process records, plus the
//! depth of every queue the chains use, read fresh from Redis (and PostgreSQL for `blocked`) at
//! each scrape, since autoscaling reads it. A scrape that cannot read the depth answers 503 rather
//! than show stale depths.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use syncfleet_shared::metrics;

use crate::ops::Ops;

pub fn router() -> Router<Ops> {
    // Installed when the API is built, so what the producer records from its start is kept.
    metrics::install();
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(ops): State<Ops>) -> Response {
    match ops.queue_depths().await {
        Ok(depths) => depths.iter().for_each(metrics::set_queue_depth),
        Err(error) => {
            tracing::warn!(%error, "Queue depth unreadable; scrape refused.");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("queue depth unreadable: {error}")).into_response();
        }
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render()).into_response()
}
