//! The HTTP surface: one router with each upstream under its own prefix, each behind the guard
//! (credential, counters, rate limit, faults), plus the control API.

pub mod control;
pub mod envelope;
mod erp;
mod guard;
mod impartner;
mod moodle;
mod northpass;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;

use self::envelope::api_error;
use self::guard::{GuardState, guard};
use crate::config::Api;
use crate::state::AppState;

fn guarded(router: Router<Arc<AppState>>, state: &Arc<AppState>, api: Api) -> Router<Arc<AppState>> {
    router
        .route_layer(middleware::from_fn_with_state(GuardState { app: state.clone(), api }, guard))
        .fallback(move || async move { api_error(api, StatusCode::NOT_FOUND, "not_found", "No such route.") })
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest("/northpass/v2", guarded(northpass::router(), &state, Api::Northpass))
        .nest("/impartner", guarded(impartner::router(), &state, Api::Impartner))
        .nest("/moodle", guarded(moodle::router(), &state, Api::Moodle))
        .nest("/erp/api", guarded(erp::router(), &state, Api::Erp))
        .nest("/_sandbox", control::router(state.clone()))
        .with_state(state)
}
