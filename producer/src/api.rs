//! The admin HTTP API. Errors are converted in exactly one place ([`ApiError`]): a stable code
//! and a message to the client, the cause chain in the log.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use syncfleet_shared::{
    chain::Mode,
    ids::RunId,
    store::{StoreError, runs::TriggerKind, views},
};

use crate::ops::{Ops, Trigger};

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/chains/{chain}/runs", post(trigger))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/resume", post(resume))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/queues", get(queues))
        .route("/api/integrations/{name}/items/{entity}", post(sync_item))
        .merge(crate::dashboard::router())
        .merge(crate::metrics::router())
        .with_state(ops)
}

#[derive(Debug)]
pub enum ApiError {
    Store(StoreError),
    BadRequest(String),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, extra) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone(), json!({})),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_item", m.clone(), json!({})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), json!({})),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "upstream_failed", m.clone(), json!({})),
            ApiError::Store(e) => match e {
                StoreError::ActiveRun { run_id, .. } => {
                    (StatusCode::CONFLICT, "active_run", e.to_string(), json!({ "run_id": run_id }))
                }
                StoreError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state", e.to_string(), json!({})),
                StoreError::DuplicateTick(_) => (StatusCode::CONFLICT, "duplicate_tick", e.to_string(), json!({})),
                StoreError::UnknownIntegration(_) | StoreError::UnknownChain(_) | StoreError::RunNotFound(_) => {
                    (StatusCode::NOT_FOUND, "not_found", e.to_string(), json!({}))
                }
                StoreError::PackMismatch { .. } | StoreError::IntegrationDisabled(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_trigger", e.to_string(), json!({}))
                }
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

async fn readyz(State(ops): State<Ops>) -> Result<&'static str, ApiError> {
    sqlx::query("SELECT 1").execute(&ops.pool).await.map_err(|e| ApiError::Internal(e.into()))?;
    ops.queues.ping().await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok("ready")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    integration: String,
    mode: Option<String>,
    #[serde(default)]
    force_sweep: bool,
    triggered_by: Option<String>,
}

async fn trigger(
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    body: Result<Json<TriggerBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mode = match body.mode.as_deref() {
        None => Mode::Incremental,
        Some(m) => Mode::parse(m)
            .ok_or_else(|| ApiError::BadRequest(format!("mode must be full or incremental, not `{m}`")))?,
    };
    let run_id = ops
        .trigger(Trigger {
            chain,
            integration: body.integration,
            mode,
            kind: TriggerKind::Manual,
            triggered_by: body.triggered_by.unwrap_or_else(|| "api".into()),
            tick_key: None,
            force_sweep: body.force_sweep,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "run_id": run_id.to_string() }))))
}

fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|e: syncfleet_shared::ids::IdError| ApiError::BadRequest(e.to_string()))
}

async fn list_runs(
    State(ops): State<Ops>,
    Query(filter): Query<views::RunFilter>,
) -> Result<Json<Vec<views::RunView>>, ApiError> {
    Ok(Json(views::runs(&ops.pool, &filter).await?))
}

async fn show_run(State(ops): State<Ops>, Path(id): Path<String>) -> Result<Json<views::RunView>, ApiError> {
    Ok(Json(views::run(&ops.pool, parse_run_id(&id)?).await?))
}

async fn resume(State(ops): State<Ops>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let run_id = parse_run_id(&id)?;
    ops.resume(run_id).await?;
    Ok(Json(json!({ "run_id": run_id.to_string(), "status": "running" })))
}

async fn cancel(State(ops): State<Ops>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let run_id = parse_run_id(&id)?;
    ops.cancel(run_id).await?;
    Ok(Json(json!({ "run_id": run_id.to_string(), "status": "cancelled" })))
}

async fn queues(State(ops): State<Ops>) -> Result<Json<Vec<syncfleet_shared::queue::QueueDepth>>, ApiError> {
    Ok(Json(ops.queue_depths().await.map_err(|e| ApiError::Internal(e.into()))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemQuery {
    /// Fetch the record with this id from the upstream instead of reading it from the body.
    fetch: Option<String>,
}

/// Single-item sync (webhooks): the body is the record as the upstream sends it, or `?fetch=<id>`
/// fetches it. The record goes through the entity's mapping and the pull path's upsert.
async fn sync_item(
    State(ops): State<Ops>,
    Path((name, entity)): Path<(String, String)>,
    Query(q): Query<ItemQuery>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    use syncfleet_shared::packs::http_json::{self, ItemInput, ItemSyncError};
    let integration = syncfleet_shared::store::integration_by_name(&ops.pool, &name).await?;
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
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?,
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
    Ok(Json(json!({ "integration": name, "entity": entity, "external_id": external_id, "outcome": outcome })))
}
