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
//! audit), `webhook.rs` (single-item sync), `moodle.rs` (a Moodle user's hydration and scope
//! sources), `crate::reports` (weekly reports).

use axum::{
    Json, Router,
    extract::{
        State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;
use syncfleet_shared::{
    ids::RunId,
    store::{StoreError, tokens::Principal},
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

mod admin;
mod moodle;
mod runs;
mod webhook;

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
    let (api, doc) = api_routes().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(move || async move { Json((*doc).clone()) }))
        .merge(api)
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
        .routes(routes!(moodle::hydrate_user))
        .routes(routes!(moodle::set_user_scope))
        .routes(routes!(runs::workers))
        .routes(routes!(admin::list_tokens, admin::create_token))
        .routes(routes!(admin::revoke_token))
        .routes(routes!(admin::audit_log))
        .routes(routes!(crate::reports::list_reports))
        .routes(routes!(crate::reports::show_report))
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: unauthorized, forbidden, bad_request, not_found, active_run, conflict, …
    pub error: String,
    /// What went wrong; for bad input it starts with the field at fault.
    pub message: String,
}

#[derive(Debug)]
pub enum ApiError {
    Store(StoreError),
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    /// The request was understood but the item cannot be synced (bad record, unknown entity).
    Unprocessable(String),
    NotFound(String),
    /// The upstream failed while fetching the item.
    BadGateway(String),
    Internal(anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadRequest(format!("body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(format!("query: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, extra) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone(), json!({})),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone(), json!({})),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone(), json!({})),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_item", m.clone(), json!({})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), json!({})),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "upstream_failed", m.clone(), json!({})),
            ApiError::Store(e) => match e {
                StoreError::ActiveRun { run_id, .. } => {
                    (StatusCode::CONFLICT, "active_run", e.to_string(), json!({ "run_id": run_id }))
                }
                StoreError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state", e.to_string(), json!({})),
                StoreError::DuplicateTick(_) => (StatusCode::CONFLICT, "duplicate_tick", e.to_string(), json!({})),
                StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict", e.to_string(), json!({})),
                StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request", e.to_string(), json!({})),
                StoreError::UnknownIntegration(_)
                | StoreError::UnknownChain(_)
                | StoreError::RunNotFound(_)
                | StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", e.to_string(), json!({})),
                StoreError::PackMismatch { .. } | StoreError::IntegrationDisabled(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_trigger", e.to_string(), json!({}))
                }
                // Data exceptions (class 22: a NUL in text, a bad Unicode escape, a number out
                // of range) come from what the client sent.
                StoreError::Db(sqlx::Error::Database(d)) if d.code().is_some_and(|c| c.starts_with("22")) => (
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("input PostgreSQL cannot store: {}", d.message()),
                    json!({}),
                ),
                StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Integration(_) => {
                    tracing::error!(error = ?e, "Request failed.");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), json!({}))
                }
            },
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "Request failed.");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), json!({}))
            }
        };
        let mut body = json!({ "error": code, "message": message });
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        (status, Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// 200 when PostgreSQL and Redis answer and every migration is applied; 503 naming what is not.
async fn readyz(State(ops): State<Ops>) -> Result<&'static str, (StatusCode, String)> {
    syncfleet_shared::metrics::readiness(&ops.pool, &ops.queues)
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
