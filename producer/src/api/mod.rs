//! The admin HTTP API and its OpenAPI document (`/api/openapi.json`). Routes are registered
//! through `utoipa-axum`, so the document and the router come from the same declarations and
//! cannot drift apart.
//!
//! Every `/api` route needs a bearer token (see [`crate::auth`]) except the webhook single-item
//! endpoint, which checks the integration's HMAC signature. Errors are converted in exactly one
//! place ([`ApiError`]): a stable code and a message naming the field at fault, the cause chain
//! in the log. Every mutation is recorded in the audit trail.
//!
//! Handlers: `runs.rs` (chains, runs, queues, workers), `admin.rs` (schedules, integrations, tokens,
//! audit), `webhook.rs` (single-item sync), `packs.rs` (each pack's own routes, e.g. a Moodle user's hydration and scope
//! sources), `crate::reports` (weekly reports).

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use syncfleet_shared::ids::RunId;
use syncfleet_store::tokens::Principal;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

mod admin;
mod packs;
mod reports;
mod runs;
mod webhook;

pub use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::{auth::Viewer, ops::Ops};

#[derive(OpenApi)]
#[openapi(
    info(title = "syncfleet admin API", description = "Operate a syncfleet deployment: runs, queues, schedules, integrations, workers, tokens."),
    modifiers(&BearerAuth),
    tags(
        (name = "runs", description = "Chain runs and their steps"),
        (name = "queues", description = "Queue depth and pausing"),
        (name = "schedules", description = "When chains run"),
        (name = "integrations", description = "Configured upstreams"),
        (name = "fleet", description = "Workers, tokens and the audit trail"),
        (name = "reports", description = "Stored reports"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The API router plus `/api/openapi.json`, the probes, the dashboard and `/metrics`.
pub fn router(ops: Ops) -> Router {
    let (api, mut doc) = api_routes().split_for_parts();
    packs::document(&ops.registry, &mut doc);
    let doc = std::sync::Arc::new(doc);
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(move || async move { Json((*doc).clone()) }))
        .merge(api)
        .merge(packs::router(&ops.registry))
        .merge(crate::dashboard::router())
        .merge(crate::metrics::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(ops)
}

/// The documented routes (also what the OpenAPI document is built from).
pub fn api_routes() -> OpenApiRouter<Ops> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(whoami))
        .routes(routes!(runs::list_chains))
        .routes(routes!(runs::trigger))
        .routes(routes!(runs::list_runs))
        .routes(routes!(runs::show_run))
        .routes(routes!(runs::run_errors))
        .routes(routes!(runs::resume))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::queues))
        .routes(routes!(runs::pause_queue))
        .routes(routes!(runs::resume_queue))
        .routes(routes!(admin::list_schedules))
        .routes(routes!(admin::get_schedule, admin::put_schedule))
        .routes(routes!(admin::list_integrations, admin::create_integration))
        .routes(routes!(admin::get_integration, admin::update_integration))
        .routes(routes!(admin::disable_integration))
        .routes(routes!(webhook::sync_item))
        .routes(routes!(runs::workers))
        .routes(routes!(admin::list_tokens, admin::create_token))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::audit_log))
        .routes(routes!(reports::list_reports))
        .routes(routes!(reports::show_report))
}

/// 200 when PostgreSQL and Redis answer and every migration is applied; 503 naming what is not.
async fn readyz(State(ops): State<Ops>) -> Result<&'static str, (StatusCode, String)> {
    syncfleet_store::health::readiness(&ops.pool, &ops.queues)
        .await
        .map(|()| "ready")
        .map_err(|m| (StatusCode::SERVICE_UNAVAILABLE, m))
}

pub(crate) fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|e: syncfleet_shared::ids::IdError| ApiError::BadRequest(format!("id: {e}")))
}

/// The caller's token name and role.
#[utoipa::path(get, path = "/api/whoami", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Principal), (status = 401, body = ErrorBody)))]
async fn whoami(Viewer(p): Viewer) -> Json<Principal> {
    Json(p)
}
