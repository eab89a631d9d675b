//! Prometheus `/metrics` of the producer.

use axum::Router;

use crate::ops::Ops;

pub fn router() -> Router<Ops> {
    Router::new()
}
