//! Runs, chains, queues and workers: what the fleet is doing and the operator's levers on it.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use syncfleet_shared::chain::Mode;
use syncfleet_store::{
    queue::QueueDepth,
    runs::TriggerKind,
    views::{self, ChainStatus, ItemErrorView, RunFilter, RunPage, RunView},
};
use utoipa::ToSchema;

use crate::{
    auth::{Operator, Viewer},
    ops::{Ops, Trigger, WorkerView},
};

use super::{ApiError, ApiResult, ErrorBody, parse_run_id};

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
pub(super) async fn list_chains(_: Viewer, State(ops): State<Ops>) -> Json<Vec<ChainView>> {
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
    /// Per-step modes (`{"impartner_sync": "incremental"}`) replacing the chain's pinned mode and
    /// `mode` for those steps.
    #[serde(default)]
    step_modes: std::collections::BTreeMap<String, String>,
    /// While another chain of this chain's exclusion group runs for the integration: `true` creates
    /// the run `queued` (it starts when the other ends), `false` (default) answers 409 naming the
    /// running chain and run.
    #[serde(default)]
    queue: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunCreated {
    pub run_id: String,
    /// `queued` (waiting behind a run of its exclusion group, or not yet claimed) or `running`.
    #[serde(default)]
    pub status: String,
    /// The run this one waits behind, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// Starts a run of a chain (or of one of its steps) for an integration.
#[utoipa::path(post, path = "/api/chains/{chain}/runs", tag = "runs", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name")),
    request_body = TriggerBody,
    responses(
        (status = 201, body = RunCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Unknown chain or integration"),
        (status = 409, body = ErrorBody, description = "A run of this chain for this integration is active \
            (`active_run`), or a run of another chain of its exclusion group (`exclusive_run`, with `running_chain` and \
            `run_id`) and the body did not ask to queue"),
        (status = 422, body = ErrorBody, description = "Integration disabled or of another pack"),
        (status = 503, body = ErrorBody, description = "The run was created (`run_id`) but PostgreSQL did not confirm \
            it is on disk (`unconfirmed`): read the run before triggering again"),
    ))]
pub(super) async fn trigger(
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
    let mut step_modes = std::collections::BTreeMap::new();
    for (step, m) in &body.step_modes {
        let m = Mode::parse(m).ok_or_else(|| {
            ApiError::BadRequest(format!("step_modes.{step}: must be full or incremental, not `{m}`"))
        })?;
        step_modes.insert(step.clone(), m);
    }
    let run_id = ops
        .trigger_or_queue(
            Trigger {
                chain: chain.clone(),
                integration: body.integration.clone(),
                mode,
                kind: TriggerKind::Manual,
                triggered_by: who.actor(),
                tick_key: None,
                force_sweep: body.force_sweep,
                step: body.step.clone(),
                step_modes,
            },
            body.queue,
        )
        .await?;
    let run = views::run(&ops.pool, run_id).await?;
    let created = RunCreated { run_id: run_id.to_string(), status: run.status, waiting_for: run.waiting_for };
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// The integration (name).
    integration: String,
}

/// What a chain is doing for an integration: `idle`, `active` (run id, the steps running now) or
/// `queued` (run id, and the run it waits behind), with the last run that ended.
#[utoipa::path(get, path = "/api/chains/{chain}/status", tag = "runs", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name"), StatusQuery),
    responses((status = 200, body = ChainStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Unknown chain or integration")))]
pub(super) async fn chain_status(
    _: Viewer,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> ApiResult<ChainStatus> {
    let Query(query) = query?;
    if ops.chains.get(&chain).is_none() {
        return Err(ApiError::NotFound(format!("unknown chain `{chain}`")));
    }
    Ok(Json(views::chain_status(&ops.pool, &chain, &query.integration).await?))
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
pub(super) async fn list_runs(
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
pub(super) async fn show_run(_: Viewer, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunView> {
    Ok(Json(views::run(&ops.pool, parse_run_id(&id)?).await?))
}

/// The item errors a run recorded.
#[utoipa::path(get, path = "/api/runs/{id}/errors", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = Vec<ItemErrorView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn run_errors(
    _: Viewer,
    State(ops): State<Ops>,
    Path(id): Path<String>,
) -> ApiResult<Vec<ItemErrorView>> {
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
pub(super) async fn resume(who: Operator, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunStatus> {
    let run_id = parse_run_id(&id)?;
    ops.resume(run_id, &who.actor()).await?;
    Ok(Json(RunStatus { run_id: run_id.to_string(), status: "running".into() }))
}

/// Stops scheduling further steps of an active run.
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses((status = 200, body = RunStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn cancel(who: Operator, State(ops): State<Ops>, Path(id): Path<String>) -> ApiResult<RunStatus> {
    let run_id = parse_run_id(&id)?;
    ops.cancel(run_id, &who.actor()).await?;
    Ok(Json(RunStatus { run_id: run_id.to_string(), status: "cancelled".into() }))
}

/// Depth of every queue by state (ready, scheduled for later, in flight, dead, blocked by an
/// entity lease), and whether it is paused.
#[utoipa::path(get, path = "/api/queues", tag = "queues", security(("bearer" = [])),
    responses((status = 200, body = Vec<QueueDepth>), (status = 401, body = ErrorBody)))]
pub(super) async fn queues(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<QueueDepth>> {
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
pub(super) async fn pause_queue(
    who: Operator,
    State(ops): State<Ops>,
    Path(queue): Path<String>,
) -> ApiResult<QueuePauseState> {
    let changed = ops.pause_queue(&queue, &who.actor()).await?;
    Ok(Json(QueuePauseState { queue, paused: true, changed }))
}

/// Resumes a paused queue.
#[utoipa::path(post, path = "/api/queues/{queue}/resume", tag = "queues", security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueuePauseState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn resume_queue(
    who: Operator,
    State(ops): State<Ops>,
    Path(queue): Path<String>,
) -> ApiResult<QueuePauseState> {
    let changed = ops.resume_queue(&queue, &who.actor()).await?;
    Ok(Json(QueuePauseState { queue, paused: false, changed }))
}

/// Worker processes alive (heartbeat in Redis) with the steps they run now.
#[utoipa::path(get, path = "/api/workers", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Vec<WorkerView>), (status = 401, body = ErrorBody)))]
pub(super) async fn workers(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<WorkerView>> {
    Ok(Json(ops.workers().await.map_err(ApiError::Internal)?))
}
