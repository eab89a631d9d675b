//! Read models for the CLI, the admin API and tests. `RunView` is the `syncfleet runs show --json`
//! contract: keep its field names stable.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::StoreError;
use crate::ids::RunId;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    pub chain: String,
    pub integration: String,
    pub mode: String,
    pub status: String,
    pub trigger: String,
    pub triggered_by: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While the run is `queued` behind a run of its exclusion group: that run's id (it starts
    /// when the group's runs end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// One line when the deletion guard refused a sweep (or a read was cut short): which deletions
    /// were not applied and how to apply them ([`unapplied_deletions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unapplied_deletions: Option<String>,
    pub steps: Vec<StepView>,
}

/// One step of a run; a fanned-out step's shards are summed into one line (`shards` > 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepView {
    pub step: String,
    pub status: String,
    /// The mode the step read in (`full` or `incremental`; absent for runs from before per-step modes).
    pub mode: Option<String>,
    /// The step's outcome as a run record names a phase's: `success` (also when it succeeded only
    /// in part), `failed`, `skipped` or `cancelled`; absent while it has not ended.
    #[sqlx(skip)]
    pub outcome: Option<String>,
    pub shards: i64,
    pub shards_done: i64,
    pub attempts: i64,
    /// Of `attempts`, those lost to the infrastructure (worker killed, entity lease lost): they
    /// spend none of the step's error budget.
    #[serde(default)]
    pub lost_attempts: i64,
    pub duration_ms: Option<i64>,
    pub fetched: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deactivated: i64,
    pub errors: i64,
    pub api_calls: i64,
    pub throttled: i64,
    /// The incremental cursor before and after the step (pull steps).
    pub cursor_before: Option<String>,
    pub cursor_after: Option<String>,
    /// The deletion guard's decisions; of a fanned-out step, one line per shard that has one
    /// (`shard 2: …`, unless the shard's own text already begins with its shard).
    pub guard: Option<String>,
    /// The step succeeded only in part (some of its work failed; see its errors): its run ends
    /// `partial`.
    pub partial: bool,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: uuid::Uuid,
    chain: String,
    integration: String,
    mode: String,
    status: String,
    trigger_kind: String,
    triggered_by: String,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    waiting_for: Option<uuid::Uuid>,
}

macro_rules! run_select {
    () => {
        "SELECT r.id, r.chain, i.name AS integration, r.mode, r.status, r.trigger_kind, r.triggered_by,
        r.error, r.created_at, r.started_at, r.finished_at,
        CASE WHEN r.status = 'queued' THEN r.waiting_for END AS waiting_for
   FROM chain_runs r JOIN integrations i ON i.id = r.integration_id"
    };
}

pub async fn run(pool: &PgPool, id: RunId) -> Result<RunView, StoreError> {
    let row = run_row(pool, id).await?;
    let steps = steps(pool, id).await?;
    Ok(view(row, steps))
}

/// The run without its steps (`steps` empty): what a wait for its end needs, without the
/// aggregate over every shard that [`steps`] costs (about 15 ms at 2,000 shards).
pub async fn run_alone(pool: &PgPool, id: RunId) -> Result<RunView, StoreError> {
    Ok(view(run_row(pool, id).await?, vec![]))
}

async fn run_row(pool: &PgPool, id: RunId) -> Result<RunRow, StoreError> {
    sqlx::query_as::<_, RunRow>(concat!(run_select!(), " WHERE r.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::RunNotFound(id.to_string()))
}

fn view(r: RunRow, steps: Vec<StepView>) -> RunView {
    let unapplied = unapplied_deletions(&r.chain, &r.integration, &steps);
    RunView {
        id: r.id.to_string(),
        chain: r.chain,
        integration: r.integration,
        mode: r.mode,
        status: r.status,
        trigger: r.trigger_kind,
        triggered_by: r.triggered_by,
        error: r.error,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        waiting_for: r.waiting_for.map(|w| w.to_string()),
        unapplied_deletions: unapplied,
        steps,
    }
}

/// The one line `runs show` and the dashboard print for a run whose deletion guard refused a sweep
/// (a step's `guard` holds `blocked: …`) or whose read was cut short: the steps and the guard's
/// reasons, then how to look at the rows held back and how to apply the deletions. `None` when
/// every sweep ran.
pub fn unapplied_deletions(chain: &str, integration: &str, steps: &[StepView]) -> Option<String> {
    let held: Vec<String> = steps
        .iter()
        .filter_map(|s| {
            let guard = s.guard.as_deref()?;
            (guard.contains("blocked: ") || guard.contains("read cut short"))
                .then(|| format!("{} ({})", s.step, guard.replace('\n', "; ")))
        })
        .collect();
    if held.is_empty() {
        return None;
    }
    Some(format!(
        "deletions not applied: {}; review them with `syncfleet sweep preview {chain} --integration {integration}`, \
         apply them with `syncfleet trigger {chain} --integration {integration} --mode full --force-sweep`",
        held.join("; ")
    ))
}

/// Steps in declaration order (first id), shards summed.
pub async fn steps(pool: &PgPool, id: RunId) -> Result<Vec<StepView>, StoreError> {
    Ok(steps_of(pool, &[id.0]).await?.into_iter().map(|(_, s)| s).collect())
}

#[derive(sqlx::FromRow)]
struct StepOfRun {
    run_id: uuid::Uuid,
    #[sqlx(flatten)]
    step: StepView,
}

/// Steps of several runs, each run's in declaration order.
async fn steps_of(pool: &PgPool, ids: &[uuid::Uuid]) -> Result<Vec<(uuid::Uuid, StepView)>, StoreError> {
    let rows = sqlx::query_as::<_, StepOfRun>(
        "SELECT run_id, step,
                CASE WHEN bool_or(status = 'running') THEN 'running'
                     WHEN bool_or(status = 'failed') THEN 'failed'
                     WHEN bool_and(status = 'succeeded') THEN 'succeeded'
                     WHEN bool_and(status = 'skipped') THEN 'skipped'
                     WHEN bool_and(status = 'cancelled') THEN 'cancelled'
                     WHEN bool_or(status = 'ready') THEN 'ready'
                     WHEN bool_or(status = 'succeeded') THEN 'running'
                     ELSE min(status) END AS status,
                min(mode) AS mode,
                count(*) AS shards,
                count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'skipped', 'cancelled')) AS shards_done,
                sum(attempts)::bigint AS attempts, sum(lost_attempts)::bigint AS lost_attempts,
                CASE WHEN count(*) = 1 THEN max(duration_ms)
                     ELSE (extract(epoch FROM (max(finished_at) - min(started_at))) * 1000)::bigint END AS duration_ms,
                sum(fetched)::bigint AS fetched, sum(inserted)::bigint AS inserted, sum(updated)::bigint AS updated,
                sum(unchanged)::bigint AS unchanged, sum(deactivated)::bigint AS deactivated,
                sum(errors)::bigint AS errors, sum(api_calls)::bigint AS api_calls, sum(throttled)::bigint AS throttled,
                min(cursor_before) AS cursor_before, max(cursor_after) AS cursor_after, CASE WHEN count(*) = 1 THEN max(guard)
                     ELSE string_agg(CASE WHEN guard LIKE 'shard %' THEN guard ELSE 'shard ' || shard || ': ' || guard END, chr(10) ORDER BY shard) END AS guard, bool_or(partial) AS partial, max(error) AS error, min(started_at) AS started_at, max(finished_at) AS finished_at
           FROM step_runs WHERE run_id = ANY($1)
          GROUP BY run_id, step ORDER BY run_id, min(id)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut step = r.step;
            step.outcome = match step.status.as_str() {
                "succeeded" => Some("success".to_owned()),
                "failed" | "skipped" | "cancelled" => Some(step.status.clone()),
                _ => None,
            };
            (r.run_id, step)
        })
        .collect())
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    pub chain: Option<String>,
    pub integration: Option<String>,
    /// queued, running, completed, partial, failed or cancelled.
    pub status: Option<String>,
    /// 1–1000, default 50.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// The run statuses a filter may name.
pub const RUN_STATUSES: [&str; 6] = ["queued", "running", "completed", "partial", "failed", "cancelled"];

/// One page of runs, newest first, each with its steps.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// Runs matching the filter.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

const RUN_FILTER: &str = " WHERE ($1::text IS NULL OR r.chain = $1) AND ($2::text IS NULL OR i.name = $2)
           AND ($3::text IS NULL OR r.status = $3)";

/// A page of runs with their steps (per-phase metrics) and the total count.
pub async fn run_page(pool: &PgPool, f: &RunFilter) -> Result<RunPage, StoreError> {
    let mut runs = runs(pool, f).await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM chain_runs r JOIN integrations i ON i.id = r.integration_id{RUN_FILTER}"
    )))
    .bind(&f.chain)
    .bind(&f.integration)
    .bind(&f.status)
    .fetch_one(pool)
    .await?;
    let ids: Vec<uuid::Uuid> = runs.iter().filter_map(|r| r.id.parse().ok()).collect();
    let mut by_run: std::collections::HashMap<String, Vec<StepView>> = Default::default();
    for (run_id, step) in steps_of(pool, &ids).await? {
        by_run.entry(run_id.to_string()).or_default().push(step);
    }
    for r in &mut runs {
        r.steps = by_run.remove(&r.id).unwrap_or_default();
    }
    Ok(RunPage { runs, total, limit: page_limit(f), offset: page_offset(f) })
}

fn page_limit(f: &RunFilter) -> i64 {
    f.limit.unwrap_or(50).clamp(1, 1000)
}

fn page_offset(f: &RunFilter) -> i64 {
    f.offset.unwrap_or(0).max(0)
}

/// An item error recorded during a run.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ItemErrorView {
    pub step: String,
    pub entity: String,
    pub external_id: String,
    pub message: String,
    /// Runs that saw this item fail while the error stayed open.
    pub occurrences: i32,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The item errors a run recorded (first seen or seen again in it).
pub async fn item_errors(pool: &PgPool, id: RunId) -> Result<Vec<ItemErrorView>, StoreError> {
    run(pool, id).await?;
    Ok(sqlx::query_as::<_, ItemErrorView>(
        "SELECT step, entity, external_id, message, occurrences, created_at, last_seen_at, resolved_at
           FROM item_errors WHERE run_id = $1 ORDER BY entity, external_id LIMIT 10000",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Newest first, without step details.
pub async fn runs(pool: &PgPool, f: &RunFilter) -> Result<Vec<RunView>, StoreError> {
    let rows = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "{}{RUN_FILTER} ORDER BY r.created_at DESC LIMIT $4 OFFSET $5",
        run_select!()
    )))
    .bind(&f.chain)
    .bind(&f.integration)
    .bind(&f.status)
    .bind(page_limit(f))
    .bind(page_offset(f))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| view(r, vec![])).collect())
}

/// What a chain is doing for one integration now: the `GET /api/chains/{chain}/status` and
/// `syncfleet status` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ChainStatus {
    pub chain: String,
    pub integration: String,
    /// `idle` (no run open), `active` (a run has started: `run_id`, the steps running now in
    /// `steps`) or `queued` (a run is open whose first step has not started: `run_id`).
    pub status: String,
    /// The open run.
    pub run_id: Option<String>,
    /// The open run's own status (`running`, `queued`).
    pub run_status: Option<String>,
    /// The run of another chain a `queued` run waits behind (chains that must not run at the same
    /// time for one integration).
    pub waiting_for: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// The steps of the open run running now, in chain order (a fanned-out step once).
    pub steps: Vec<String>,
    /// The steps of the open run ready and waiting for a worker.
    pub ready: Vec<String>,
    /// The last run of the chain for the integration that ended.
    pub last_run: Option<LastRun>,
}

/// A run that ended, as [`ChainStatus`] names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
pub struct LastRun {
    pub run_id: String,
    pub status: String,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The run states of a run that ended.
const ENDED: [&str; 4] = ["completed", "partial", "failed", "cancelled"];

/// What `chain` is doing for `integration` (an unknown integration is
/// [`StoreError::UnknownIntegration`]). A run is `active` once it is `running` (a step was
/// claimed); any other open run (created and not started, or waiting its turn) is `queued`.
pub async fn chain_status(pool: &PgPool, chain: &str, integration: &str) -> Result<ChainStatus, StoreError> {
    let integration_id = crate::integration_by_name(pool, integration).await?.id;
    type Open = (uuid::Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<uuid::Uuid>);
    let open: Option<Open> = sqlx::query_as(
        "SELECT id, status, created_at, started_at, waiting_for FROM chain_runs
          WHERE chain = $1 AND integration_id = $2 AND status <> ALL($3)
          ORDER BY (status = 'running') DESC, created_at LIMIT 1",
    )
    .bind(chain)
    .bind(integration_id)
    .bind(&ENDED[..])
    .fetch_optional(pool)
    .await?;
    let last_run: Option<LastRun> = sqlx::query_as(
        "SELECT id::text AS run_id, status, finished_at FROM chain_runs
          WHERE chain = $1 AND integration_id = $2 AND status = ANY($3)
          ORDER BY finished_at DESC NULLS LAST, created_at DESC LIMIT 1",
    )
    .bind(chain)
    .bind(integration_id)
    .bind(&ENDED[..])
    .fetch_optional(pool)
    .await?;
    let mut view = ChainStatus {
        chain: chain.to_owned(),
        integration: integration.to_owned(),
        status: "idle".into(),
        run_id: None,
        run_status: None,
        waiting_for: None,
        created_at: None,
        started_at: None,
        steps: vec![],
        ready: vec![],
        last_run,
    };
    let Some((id, run_status, created_at, started_at, waiting_for)) = open else {
        return Ok(view);
    };
    let steps: Vec<(String, String)> = sqlx::query_as(
        "SELECT step, status FROM step_runs WHERE run_id = $1 AND status IN ('running', 'ready')
          GROUP BY step, status ORDER BY min(id)",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    view.status = if run_status == "running" { "active" } else { "queued" }.into();
    view.run_id = Some(id.to_string());
    view.run_status = Some(run_status);
    view.waiting_for = waiting_for.map(|w| w.to_string());
    view.created_at = Some(created_at);
    view.started_at = started_at;
    for (step, status) in steps {
        if status == "running" { view.steps.push(step) } else { view.ready.push(step) }
    }
    Ok(view)
}
