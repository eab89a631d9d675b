//! The operator dashboard served at `/`: static assets compiled into the binary (no CDN).

use axum::{Router, routing::get};

use crate::ops::Ops;

pub fn router() -> Router<Ops> {
    Router::new().route("/", get(|| async { "syncfleet" }))
}
