//! The admin HTTP API and its OpenAPI document (`/api/openapi.json`). Routes are registered
//! through `utoipa-axum`, so the document and the router come from the same declarations and
//! cannot drift apart.
//!
//! Every `/api` route needs a bearer token (see [`crate::auth`]) except the webhook single-item
//! endpoint, which checks the integration's HMAC signature. Errors are converted in exactly one
//! place ([`ApiError`]): a stable code and a message naming the field at fault, the cause chain
//! in the log. Every mutation is recorded in the audit trail.

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use syncfleet_shared::{
    chain::Mode,
    config::ScheduleSpec,
    ids::RunId,
    queue::QueueDepth,
    store::{
        self, StoreError,
        audit::AuditEntry,
        integrations::{self, IntegrationChange, IntegrationView},
        runs::TriggerKind,
        tokens::{self, Principal, Role, TokenInfo},
        views::{self, ItemErrorView, RunFilter, RunPage, RunView},
    },
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{self, Admin, Operator, Viewer},
    ops::{Ops, ScheduleView, Trigger, WorkerView},
};

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
        .routes(routes!(list_chains))
        .routes(routes!(trigger))
        .routes(routes!(list_runs))
        .routes(routes!(show_run))
        .routes(routes!(run_errors))
        .routes(routes!(resume))
        .routes(routes!(cancel))
        .routes(routes!(queues))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule, put_schedule))
        .routes(routes!(list_integrations, create_integration))
        .routes(routes!(get_integration, update_integration))
        .routes(routes!(disable_integration))
        .routes(routes!(sync_item))
        .routes(routes!(workers))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(audit_log))
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

type ApiResult<T> = Result<Json<T>, ApiError>;

/// 200 when PostgreSQL and Redis answer and every migration is applied; 503 naming what is not.
async fn readyz(State(ops): State<Ops>) -> Result<&'static str, (StatusCode, String)> {
    syncfleet_shared::metrics::readiness(&ops.pool, &ops.queues)
        .await
        .map(|()| "ready")
        .map_err(|m| (StatusCode::SERVICE_UNAVAILABLE, m))
}

fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|e: syncfleet_shared::ids::IdError| ApiError::BadRequest(format!("id: {e}")))
}

/// The caller's token name and role.
#[utoipa::path(get, path = "/api/whoami", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Principal), (status = 401, body = ErrorBody)))]
async fn whoami(Viewer(p): Viewer) -> Json<Principal> {
    Json(p)
}

/// A chain and its steps (the DAG the dashboard draws).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainView {
    pub name: String,
    pub pack: String,
    pub description: String,
    pub steps: Vec<ChainStepView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainStepView {
    pub name: String,
    pub prerequisites: Vec<String>,
    pub required: bool,
    pub queue: String,
    pub shards: u32,
}

/// Every chain the deployment runs, with its steps.
#[utoipa::path(get, path = "/api/chains", tag = "runs", security(("bearer" = [])),
    responses((status = 200, body = Vec<ChainView>), (status = 401, body = ErrorBody)))]
async fn list_chains(_: Viewer, State(ops): State<Ops>) -> Json<Vec<ChainView>> {
    Json(
        ops.chains
            .all()
            .map(|c| ChainView {
                name: c.name.to_string(),
                pack: c.pack.clone(),
                description: c.description.clone(),
                steps: c
                    .steps
                    .iter()
                    .map(|s| ChainStepView {
                        name: s.name.to_string(),
                        prerequisites: s.prerequisites.iter().map(|p| p.to_string()).collect(),
                        required: s.required,
                        queue: s.queue.clone(),
                        shards: s.shards,
                    })
                    .collect(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    integration: String,
    /// `full` or `incremental` (default).
    mode: Option<String>,
    /// Run only this step of the chain.
    step: Option<String>,
    /// Sweep even when the deletion guard would block it.
    #[serde(default)]
    force_sweep: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunCreated {
    pub run_id: String,
}

/// Starts a run of a chain (or of one of its steps) for an integration.
#[utoipa::path(post, path = "/api/chains/{chain}/runs", tag = "runs", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name")),
    request_body = TriggerBody,
    responses(
        (status = 201, body = RunCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Unknown chain or integration"),
        (status = 409, body = ErrorBody, description = "A run of this chain for this integration is active"),
        (status = 422, body = ErrorBody, description = "Integration disabled or of another pack"),
    ))]
async fn trigger(
    who: Operator,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    body: Result<Json<TriggerBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RunCreated>), ApiError> {
    let Json(body) = body?;
    let mode = match body.mode.as_deref() {
        None => Mode::Incremental,
        Some(m) => Mode::parse(m)
            .ok_or_else(|| ApiError::BadRequest(format!("mode: must be full or incremental, not `{m}`")))?,
    };
    let run_id = ops
        .trigger(Trigger {
            chain: chain.clone(),
            integration: body.integration.clone(),
            mode,
            kind: TriggerKind::Manual,
            triggered_by: who.actor(),
            tick_key: None,
            force_sweep: body.force_sweep,
            step: body.step.clone(),
        })
        .await?;
    ops.audit(
        &who.actor(),
        "run.trigger",
        &run_id.to_string(),
        json!({ "chain": chain, "integration": body.integration, "mode": mode.as_str(), "step": body.step, "force_sweep": body.force_sweep }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(RunCreated { run_id: run_id.to_string() })))
}

fn check_filter(f: &RunFilter) -> Result<(), ApiError> {
    if let Some(s) = &f.status
        && !views::RUN_STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "status: must be one of {}, not `{s}`",
            views::RUN_STATUSES.join(", ")
        )));
    }
    if let Some(l) = f.limit
        && !(1..=1000).contains(&l)
    {
        return Err(ApiError::BadRequest(format!("limit: must be between 1 and 1000, not {l}")));
    }
    if let Some(o) = f.offset
        && o < 0
    {
        return Err(ApiError::BadRequest(format!("offset: must not be negative, not {o}")));
    }
    Ok(())
}

/// Runs, newest first, with per-phase metrics; filter by chain, integration and status.
#[utoipa::path(get, path = "/api/runs", tag = "runs", security(("bearer" = [])), params(RunFilter),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_runs(
    _: Viewer,
    State(ops): State<Ops>,
    filter: Result<Query<RunFilter>, QueryRejection>,
) -> ApiResult<RunPage> {
    let Query(filter) = filter?;
    check_filter(&filter)?;
    Ok(Json(views::run_page(&ops.pool, &filter).await?))
}

/// One run with its steps and phase metrics.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = RunView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_run(_: Viewer, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunView> {
    Ok(Json(views::run(&ops.pool, parse_run_id(&id)?).await?))
}

/// The item errors a run recorded.
#[utoipa::path(get, path = "/api/runs/{id}/errors", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = Vec<ItemErrorView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn run_errors(_: Viewer, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<Vec<ItemErrorView>> {
    Ok(Json(views::item_errors(&ops.pool, parse_run_id(&id)?).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunStatus {
    pub run_id: String,
    pub status: String,
}

/// Re-runs the failed and skipped steps of a failed or partial run.
#[utoipa::path(post, path = "/api/runs/{id}/resume", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = RunStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume(who: Operator, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunStatus> {
    let run_id = parse_run_id(&id)?;
    ops.resume(run_id).await?;
    ops.audit(&who.actor(), "run.resume", &run_id.to_string(), json!({})).await;
    Ok(Json(RunStatus { run_id: run_id.to_string(), status: "running".into() }))
}

/// Stops scheduling further steps of an active run.
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = RunStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel(who: Operator, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunStatus> {
    let run_id = parse_run_id(&id)?;
    ops.cancel(run_id).await?;
    ops.audit(&who.actor(), "run.cancel", &run_id.to_string(), json!({})).await;
    Ok(Json(RunStatus { run_id: run_id.to_string(), status: "cancelled".into() }))
}

/// Depth of every queue by state (ready, scheduled for later, in flight, dead, blocked by an
/// entity lease), and whether it is paused.
#[utoipa::path(get, path = "/api/queues", tag = "queues", security(("bearer" = [])),
    responses((status = 200, body = Vec<QueueDepth>), (status = 401, body = ErrorBody)))]
async fn queues(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<QueueDepth>> {
    Ok(Json(ops.queue_depths().await.map_err(ApiError::Internal)?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuePauseState {
    pub queue: String,
    pub paused: bool,
    /// False when the queue was in that state already.
    pub changed: bool,
}

/// Pauses a queue: nothing new is dispatched to it until it is resumed.
#[utoipa::path(post, path = "/api/queues/{queue}/pause", tag = "queues", security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueuePauseState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn pause_queue(who: Operator, State(ops): State<Ops>, Path(queue): Path<String>) -> ApiResult<QueuePauseState> {
    let changed = ops.pause_queue(&queue, &who.actor()).await?;
    Ok(Json(QueuePauseState { queue, paused: true, changed }))
}

/// Resumes a paused queue.
#[utoipa::path(post, path = "/api/queues/{queue}/resume", tag = "queues", security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueuePauseState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn resume_queue(who: Operator, State(ops): State<Ops>, Path(queue): Path<String>) -> ApiResult<QueuePauseState> {
    let changed = ops.resume_queue(&queue, &who.actor()).await?;
    Ok(Json(QueuePauseState { queue, paused: false, changed }))
}

/// Every schedule (configured or stored) with its next execution.
#[utoipa::path(get, path = "/api/schedules", tag = "schedules", security(("bearer" = [])),
    responses((status = 200, body = Vec<ScheduleView>), (status = 401, body = ErrorBody)))]
async fn list_schedules(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<ScheduleView>> {
    Ok(Json(ops.schedules().await.map_err(ApiError::Internal)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScheduleQuery {
    /// The integration whose schedule of this chain to read.
    integration: String,
}

fn known_chain(ops: &Ops, chain: &str) -> Result<(), ApiError> {
    ops.chains.get(chain).map(|_| ()).ok_or_else(|| StoreError::UnknownChain(chain.into()).into())
}

/// The schedule of a chain for one integration, with its next execution.
#[utoipa::path(get, path = "/api/chains/{chain}/schedule", tag = "schedules", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name"), ScheduleQuery),
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    _: Viewer,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    q: Result<Query<ScheduleQuery>, QueryRejection>,
) -> ApiResult<ScheduleView> {
    let Query(q) = q?;
    known_chain(&ops, &chain)?;
    store::integration_by_name(&ops.pool, &q.integration).await?;
    let all = ops.schedules().await.map_err(ApiError::Internal)?;
    all.into_iter().find(|s| s.chain == chain && s.integration == q.integration).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!("chain `{chain}` has no schedule for integration `{}`", q.integration))
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    integration: String,
    /// Run every this many seconds (at least the deployment's minimum interval).
    interval_secs: Option<u64>,
    /// Or a cron expression with seconds (`0 0 2 * * *`), firing no more often than the minimum.
    cron: Option<String>,
    /// False switches the schedule off (default true).
    enabled: Option<bool>,
}

/// Stores the schedule of a chain for one integration (overrides the config).
#[utoipa::path(put, path = "/api/chains/{chain}/schedule", tag = "schedules", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name")),
    request_body = ScheduleBody,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_schedule(
    who: Admin,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    body: Result<Json<ScheduleBody>, JsonRejection>,
) -> ApiResult<ScheduleView> {
    let Json(b) = body?;
    known_chain(&ops, &chain)?;
    let enabled = b.enabled.unwrap_or(true);
    let spec = ScheduleSpec { interval_secs: b.interval_secs, cron: b.cron.clone() };
    ops.set_schedule(&chain, &b.integration, &spec, enabled, &who.actor()).await?;
    let all = ops.schedules().await.map_err(ApiError::Internal)?;
    all.into_iter()
        .find(|s| s.chain == chain && s.integration == b.integration)
        .map(Json)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored schedule not found after writing it")))
}

/// Every integration (secrets only as references).
#[utoipa::path(get, path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = Vec<IntegrationView>), (status = 401, body = ErrorBody)))]
async fn list_integrations(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<IntegrationView>> {
    Ok(Json(integrations::list(&ops.pool).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    name: String,
    /// The pack: `demo` or `http-json`.
    pack: String,
    /// The pack's settings (secrets only as `secret_env` references).
    #[schema(value_type = Option<Object>)]
    settings: Option<serde_json::Value>,
    enabled: Option<bool>,
    /// `env:NAME` or `file:/path` of the webhook HMAC secret.
    webhook_secret_ref: Option<String>,
}

/// Creates an integration; its settings are checked against its pack.
#[utoipa::path(post, path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    request_body = CreateIntegration,
    responses((status = 201, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_integration(
    who: Admin,
    State(ops): State<Ops>,
    body: Result<Json<CreateIntegration>, JsonRejection>,
) -> Result<(StatusCode, Json<IntegrationView>), ApiError> {
    let Json(b) = body?;
    let change = IntegrationChange {
        pack: Some(b.pack),
        settings: b.settings,
        enabled: b.enabled,
        webhook_secret_ref: b.webhook_secret_ref,
    };
    let view = integrations::create(&ops.pool, &b.name, &change).await?;
    ops.audit(&who.actor(), "integration.create", &b.name, json!({ "pack": view.pack, "enabled": view.enabled })).await;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One integration.
#[utoipa::path(get, path = "/api/integrations/{name}", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_integration(_: Viewer, State(ops): State<Ops>, Path(name): Path<String>) -> ApiResult<IntegrationView> {
    Ok(Json(integrations::get(&ops.pool, &name).await?))
}

/// Updates the given fields of an integration.
#[utoipa::path(put, path = "/api/integrations/{name}", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    request_body = IntegrationChange,
    responses((status = 200, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_integration(
    who: Admin,
    State(ops): State<Ops>,
    Path(name): Path<String>,
    body: Result<Json<IntegrationChange>, JsonRejection>,
) -> ApiResult<IntegrationView> {
    let Json(change) = body?;
    let view = integrations::update(&ops.pool, &name, &change).await?;
    ops.audit(
        &who.actor(),
        "integration.update",
        &name,
        json!({ "pack": change.pack, "settings_changed": change.settings.is_some(), "enabled": change.enabled,
                "webhook_secret_ref": change.webhook_secret_ref }),
    )
    .await;
    Ok(Json(view))
}

/// Disables an integration: no new runs (scheduled or manual) start for it.
#[utoipa::path(post, path = "/api/integrations/{name}/disable", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn disable_integration(
    who: Admin,
    State(ops): State<Ops>,
    Path(name): Path<String>,
) -> ApiResult<IntegrationView> {
    let change = IntegrationChange { enabled: Some(false), ..Default::default() };
    let view = integrations::update(&ops.pool, &name, &change).await?;
    ops.audit(&who.actor(), "integration.disable", &name, json!({})).await;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Fetch the record with this id from the upstream instead of reading it from the body.
    fetch: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemSynced {
    pub integration: String,
    pub entity: String,
    pub external_id: String,
    /// inserted, updated or unchanged.
    pub outcome: String,
}

/// Single-item sync (webhooks). Authenticated by the integration's HMAC signature
/// (`X-Syncfleet-Signature: sha256=<hex HMAC-SHA256 of the body>`), not a bearer token. The body
/// is the record as the upstream sends it, or `?fetch=<id>` fetches it; it goes through the
/// entity's mapping and the pull path's upsert.
#[utoipa::path(post, path = "/api/integrations/{name}/items/{entity}", tag = "integrations",
    params(("name" = String, Path, description = "Integration name"), ("entity" = String, Path, description = "Entity name"),
        ("x-syncfleet-signature" = String, Header, description = "sha256=<hex HMAC-SHA256(secret, body)>"), ItemQuery),
    request_body(content = Object, description = "The record as the upstream sends it", content_type = "application/json"),
    responses((status = 200, body = ItemSynced), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The integration has no webhook secret"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn sync_item(
    State(ops): State<Ops>,
    Path((name, entity)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<ItemQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult<ItemSynced> {
    use syncfleet_shared::packs::http_json::{self, ItemInput, ItemSyncError};
    let view = integrations::get(&ops.pool, &name).await?;
    let Some(secret_ref) = view.webhook_secret_ref.as_deref() else {
        return Err(ApiError::Forbidden(format!(
            "integration `{name}` has no webhook secret; set its webhook_secret_ref to accept signed items"
        )));
    };
    let Some(signature) = headers.get(auth::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::Unauthorized(format!(
            "missing {} header (sha256=<hex HMAC-SHA256 of the body>)",
            auth::SIGNATURE_HEADER
        )));
    };
    let secret = integrations::resolve_secret_ref(secret_ref)
        .map_err(|m| ApiError::Internal(anyhow::anyhow!("webhook secret of integration `{name}`: {m}")))?;
    auth::verify_signature(secret.as_bytes(), &body, signature)?;
    let Query(q) = q?;
    let integration = store::integration_by_name(&ops.pool, &name).await?;
    if !integration.enabled {
        return Err(StoreError::IntegrationDisabled(name).into());
    }
    if integration.pack != http_json::PACK {
        return Err(ApiError::Unprocessable(format!(
            "integration `{name}` is a `{}` integration, which has no single-item sync",
            integration.pack
        )));
    }
    let input = match q.fetch {
        Some(id) => ItemInput::FetchId(id),
        None => ItemInput::Record(
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: not JSON: {e}")))?,
        ),
    };
    let (external_id, outcome) =
        http_json::sync_item(&ops.pool, &ops.http, &integration, &entity, input).await.map_err(|e| match e {
            ItemSyncError::UnknownEntity(..) => ApiError::NotFound(e.to_string()),
            ItemSyncError::NoItemPath(_) | ItemSyncError::Invalid(_) => ApiError::Unprocessable(e.to_string()),
            ItemSyncError::Upstream(m) => ApiError::BadGateway(m),
            ItemSyncError::Db(e) => ApiError::Internal(e.into()),
        })?;
    let outcome = match outcome {
        syncfleet_shared::sync::table::RowOutcome::Inserted => "inserted",
        syncfleet_shared::sync::table::RowOutcome::Updated => "updated",
        syncfleet_shared::sync::table::RowOutcome::Unchanged => "unchanged",
    };
    ops.audit(
        &format!("webhook:{name}"),
        "item.sync",
        &format!("{name}/{entity}/{external_id}"),
        json!({ "outcome": outcome }),
    )
    .await;
    Ok(Json(ItemSynced { integration: name, entity, external_id, outcome: outcome.into() }))
}

/// Worker processes alive (heartbeat in Redis) with the steps they run now.
#[utoipa::path(get, path = "/api/workers", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Vec<WorkerView>), (status = 401, body = ErrorBody)))]
async fn workers(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<WorkerView>> {
    Ok(Json(ops.workers().await.map_err(ApiError::Internal)?))
}

/// API tokens (never their secrets).
#[utoipa::path(get, path = "/api/tokens", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tokens(_: Admin, State(ops): State<Ops>) -> ApiResult<Vec<TokenInfo>> {
    Ok(Json(tokens::list(&ops.pool).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token; shown once, stored only hashed.
    pub token: String,
}

/// Creates a token; its plaintext is in this answer only.
#[utoipa::path(post, path = "/api/tokens", tag = "fleet", security(("bearer" = [])),
    request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn create_token(
    who: Admin,
    State(ops): State<Ops>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let Json(b) = body?;
    let (info, token) = tokens::create(&ops.pool, &b.name, b.role, &who.actor()).await?;
    ops.audit(&who.actor(), "token.create", &b.name, json!({ "role": b.role })).await;
    Ok((StatusCode::CREATED, Json(TokenCreated { info, token })))
}

/// Revokes a token by name.
#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = String, Path, description = "Token name")),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_token(who: Admin, State(ops): State<Ops>, Path(name): Path<String>) -> ApiResult<TokenInfo> {
    let info = tokens::revoke(&ops.pool, &name).await?;
    ops.audit(&who.actor(), "token.revoke", &name, json!({})).await;
    Ok(Json(info))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// 1–1000, default 100.
    limit: Option<i64>,
    offset: Option<i64>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "fleet", security(("bearer" = [])), params(Page),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn audit_log(
    _: Admin,
    State(ops): State<Ops>,
    page: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Vec<AuditEntry>> {
    let Query(p) = page?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit: must be between 1 and 1000, not {limit}")));
    }
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::BadRequest(format!("offset: must not be negative, not {offset}")));
    }
    Ok(Json(store::audit::list(&ops.pool, limit, offset).await?))
}
