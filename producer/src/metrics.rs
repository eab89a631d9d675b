//! Prometheus `/metrics` of the producer: every `syncfleet_*` metric this process records, plus the
//! depth of every queue the chains use and the freshest worker heartbeat of each, read fresh from
//! Redis (and PostgreSQL for `blocked`) at each scrape, since autoscaling and alerts read them. A
//! scrape that cannot read the depth answers 503 rather than show stale depths.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use syncfleet_runtime::metrics;
use syncfleet_store::health;

use crate::ops::Ops;

pub fn router() -> Router<Ops> {
    // Installed when the API is built, so what the producer records from its start is kept.
    metrics::install();
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(ops): State<Ops>) -> Response {
    match ops.queue_depths().await {
        Ok(depths) => {
            for d in &depths {
                health::set_queue_depth(d);
                match ops.queues.workers(&d.queue).await {
                    Ok(workers) => metrics::set_worker_heartbeat(&d.queue, &workers),
                    Err(error) => tracing::warn!(%error, queue = %d.queue, "Worker heartbeats unreadable."),
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "Queue depth unreadable; scrape refused.");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("queue depth unreadable: {error}")).into_response();
        }
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render()).into_response()
}
