//! The admin HTTP API and its OpenAPI document (`/api/openapi.json`). The document lists every
//! handler (`#[utoipa::path]` on the handler, `paths(...)` in [`ApiDoc`]), and the router is built
//! from the document: each operation's path and method route to the handler its `operationId`
//! names ([`handler`]), so the two cannot drift apart (an operation without a handler fails the
//! router's construction).
//!
//! Every `/api` route needs a bearer token (see [`crate::auth`]) except the webhook single-item
//! endpoint, which checks the integration's HMAC signature. Errors are converted in exactly one
//! place ([`ApiError`]): a stable code and a message naming the field at fault, the cause chain
//! in the log. Every mutation is recorded in the audit trail.
//!
//! Every answer (API, dashboard, probes, metrics) carries `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY` and, unless it says otherwise, `Cache-Control: no-store` (a token's
//! plaintext or a listing never lands in a cache); HTML from the API (a stored report) is also
//! sandboxed by its CSP. A request not answered within `producer.request_timeout_secs` gets 408
//! (its body was still arriving) or 503 with the usual error body.
//!
//! Handlers: `runs.rs` (chains, runs, queues, workers), `admin.rs` (schedules, integrations, tokens,
//! audit), `webhook.rs` (single-item sync), `packs.rs` (each pack's own routes, e.g. a Moodle user's hydration and scope
//! sources), `crate::reports` (weekly reports), `repair.rs` (sweep preview, cursor reset).

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, get, on},
};
use serde_json::json;
use syncfleet_runtime::server::{self, Late};
use syncfleet_shared::ids::RunId;
use syncfleet_store::tokens::Principal;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        PathItem,
        path::Operation,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

mod admin;
mod packs;
pub mod repair;
mod reports;
mod runs;
mod webhook;

pub use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::{auth::Viewer, ops::Ops};

#[derive(OpenApi)]
#[openapi(
    info(title = "syncfleet admin API", description = "Operate a syncfleet deployment: runs, queues, schedules, integrations, workers, tokens."),
    modifiers(&BearerAuth),
    paths(
        whoami,
        runs::list_chains, runs::trigger, runs::list_runs, runs::show_run, runs::run_errors, runs::resume,
        runs::cancel, runs::queues, runs::pause_queue, runs::resume_queue, runs::chain_status,
        admin::list_schedules, admin::get_schedule, admin::put_schedule,
        admin::list_integrations, admin::create_integration, admin::get_integration, admin::update_integration,
        admin::disable_integration,
        webhook::sync_item,
        runs::workers,
        admin::list_tokens, admin::create_token, admin::revoke_token, admin::audit_log,
        reports::list_reports, reports::show_report,
        repair::sweep_preview, repair::reset_cursor,
    ),
    tags(
        (name = "runs", description = "Chain runs and their steps"),
        (name = "queues", description = "Queue depth and pausing"),
        (name = "schedules", description = "When chains run"),
        (name = "integrations", description = "Configured upstreams"),
        (name = "fleet", description = "Workers, tokens and the audit trail"),
        (name = "reports", description = "Stored reports"),
        (name = "repair", description = "Data repair: sweep previews and cursor resets"),
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

/// The API router plus `/api/openapi.json`, the probes, the dashboard and `/metrics`, with the
/// request timeout and the answer headers of every route.
pub fn router(ops: Ops) -> Router {
    let mut doc = ApiDoc::openapi();
    let api = api_routes(&doc);
    packs::document(&ops.registry, &mut doc);
    let doc = std::sync::Arc::new(doc);
    let limit = Duration::from_secs(ops.config.producer.request_timeout_secs);
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(move || async move { Json((*doc).clone()) }))
        .merge(api)
        .merge(packs::router(&ops.registry))
        .merge(crate::dashboard::router())
        .merge(crate::metrics::router(&ops))
        .route_layer(axum::middleware::from_fn(crate::metrics::observe_request))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(ops);
    server::with_request_timeout(app, limit, late).layer(axum::middleware::map_response(answer_headers))
}

/// The documented routes: each operation of `doc` routed to its handler.
pub fn api_routes(doc: &utoipa::openapi::OpenApi) -> Router<Ops> {
    let mut by_path: BTreeMap<&str, MethodRouter<Ops>> = BTreeMap::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in operations(item) {
            let id = op.operation_id.as_deref().unwrap_or_default();
            let Some(route) = handler(id, method) else {
                panic!("{method:?} {path}: no handler for operation `{id}` (add it to `api::handler`)");
            };
            let methods = by_path.remove(path.as_str()).unwrap_or_default();
            by_path.insert(path, methods.merge(route));
        }
    }
    by_path.into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
}

/// The operations of a path, with the method each answers.
fn operations(item: &PathItem) -> impl Iterator<Item = (MethodFilter, &Operation)> {
    [
        (MethodFilter::GET, &item.get),
        (MethodFilter::POST, &item.post),
        (MethodFilter::PUT, &item.put),
        (MethodFilter::DELETE, &item.delete),
        (MethodFilter::PATCH, &item.patch),
        (MethodFilter::HEAD, &item.head),
        (MethodFilter::OPTIONS, &item.options),
        (MethodFilter::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
}

/// The handler of a documented operation, by its `operationId` (the handler's name).
fn handler(operation: &str, method: MethodFilter) -> Option<MethodRouter<Ops>> {
    Some(match operation {
        "whoami" => on(method, whoami),
        "list_chains" => on(method, runs::list_chains),
        "trigger" => on(method, runs::trigger),
        "list_runs" => on(method, runs::list_runs),
        "show_run" => on(method, runs::show_run),
        "run_errors" => on(method, runs::run_errors),
        "resume" => on(method, runs::resume),
        "cancel" => on(method, runs::cancel),
        "queues" => on(method, runs::queues),
        "pause_queue" => on(method, runs::pause_queue),
        "resume_queue" => on(method, runs::resume_queue),
        "workers" => on(method, runs::workers),
        "chain_status" => on(method, runs::chain_status),
        "list_schedules" => on(method, admin::list_schedules),
        "get_schedule" => on(method, admin::get_schedule),
        "put_schedule" => on(method, admin::put_schedule),
        "list_integrations" => on(method, admin::list_integrations),
        "create_integration" => on(method, admin::create_integration),
        "get_integration" => on(method, admin::get_integration),
        "update_integration" => on(method, admin::update_integration),
        "disable_integration" => on(method, admin::disable_integration),
        "sync_item" => on(method, webhook::sync_item),
        "list_tokens" => on(method, admin::list_tokens),
        "create_token" => on(method, admin::create_token),
        "revoke_token" => on(method, admin::revoke_token),
        "audit_log" => on(method, admin::audit_log),
        "list_reports" => on(method, reports::list_reports),
        "show_report" => on(method, reports::show_report),
        "sweep_preview" => on(method, repair::sweep_preview),
        "reset_cursor" => on(method, repair::reset_cursor),
        _ => return None,
    })
}

/// The answer to a request that outlived `producer.request_timeout_secs`, in the API's error body.
fn late(late: Late, limit: Duration) -> Response {
    let secs = limit.as_secs();
    let (status, code, message) = match late {
        Late::Body => {
            (StatusCode::REQUEST_TIMEOUT, "request_timeout", format!("the request was not received within {secs} s"))
        }
        Late::Handler => (
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("no answer within {secs} s; the request was stopped, and what it changed before may be kept"),
        ),
    };
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// Stored reports are HTML made of upstream data: no script, no form, no frame, an origin of
/// their own (`sandbox`), so nothing in one can reach the dashboard's token.
const HTML_CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'";

/// The headers every answer carries (an answer's own `Cache-Control` or CSP is kept).
async fn answer_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    let html =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(HTML_CSP));
    }
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operation_has_its_handler() {
        let doc = ApiDoc::openapi();
        let mut count = 0;
        for item in doc.paths.paths.values() {
            for (method, op) in operations(item) {
                let id = op.operation_id.as_deref().unwrap_or_default();
                assert!(handler(id, method).is_some(), "no handler for `{id}`");
                count += 1;
            }
        }
        assert_eq!(count, 30);
        let _ = api_routes(&doc);
    }
}
