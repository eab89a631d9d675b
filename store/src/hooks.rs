//! Run lifecycle hooks (`run_hooks`, migration `0018`): one row per (run, event), written in the
//! transaction that starts the run (a worker's claim, [`run_started_in_tx`]) or ends it (a step's
//! finish, [`run_ended_in_tx`]), so a hook is never lost and never makes the run wait. The
//! producer's reconciler claims due rows ([`claim_due`]) and delivers them (`producer/src/hooks.rs`);
//! each delivery's outcome is recorded here ([`delivered`], [`retry_later`], [`finish`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::StoreError;

/// The event of a run that started.
pub const STARTED: &str = "run.started";
/// The event of a run that ended (`completed`, `partial`, `failed` or `cancelled`).
pub const ENDED: &str = "run.ended";

/// How long a claimed delivery is held before another producer may claim it again (a producer that
/// died while delivering).
const CLAIM_HOLD_SECS: f64 = 120.0;

/// Records the pending `run.started` hook of `run_id` (call in the transaction that set the run
/// `running`).
pub async fn run_started_in_tx(conn: &mut PgConnection, run_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO run_hooks (run_id, event) VALUES ($1, $2) ON CONFLICT (run_id, event) DO NOTHING")
        .bind(run_id)
        .bind(STARTED)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the pending `run.ended` hook of `run_id` (call in the transaction that ended the run). A
/// resumed run that ends again is delivered again.
pub async fn run_ended_in_tx(conn: &mut PgConnection, run_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO run_hooks (run_id, event) VALUES ($1, $2)
         ON CONFLICT (run_id, event) DO UPDATE SET state = 'pending', attempts = 0, last_error = NULL,
             next_at = now(), claimed_at = NULL, delivered_at = NULL",
    )
    .bind(run_id)
    .bind(ENDED)
    .execute(conn)
    .await?;
    Ok(())
}

/// One claimed delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueHook {
    pub run_id: Uuid,
    pub event: String,
    /// Deliveries tried, this one included.
    pub attempts: i32,
    /// The run's integration, whose hook (or the fleet's) receives it.
    pub integration: String,
}

/// Claims at most `limit` due deliveries, oldest first (`SKIP LOCKED`: producers never claim the
/// same row), counting the attempt. A run's `run.ended` waits until its `run.started` was delivered
/// or given up, so a receiver sees them in order.
pub async fn claim_due(pool: &PgPool, limit: i64) -> Result<Vec<DueHook>, StoreError> {
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT h.run_id, h.event FROM run_hooks h
              WHERE h.state = 'pending' AND h.next_at <= now()
                AND NOT (h.event = 'run.ended' AND EXISTS (
                    SELECT 1 FROM run_hooks s WHERE s.run_id = h.run_id AND s.event = 'run.started' AND s.state = 'pending'))
              ORDER BY h.next_at, h.created_at, h.event DESC
              LIMIT $1 FOR UPDATE OF h SKIP LOCKED
         ), claimed AS (
             UPDATE run_hooks h SET attempts = h.attempts + 1, claimed_at = now(),
                    next_at = now() + make_interval(secs => $2)
               FROM due WHERE h.run_id = due.run_id AND h.event = due.event
             RETURNING h.run_id, h.event, h.attempts, h.created_at
         )
         SELECT c.run_id, c.event, c.attempts, i.name AS integration
           FROM claimed c JOIN chain_runs r ON r.id = c.run_id JOIN integrations i ON i.id = r.integration_id
          ORDER BY c.created_at, c.event DESC",
    )
    .bind(limit)
    .bind(CLAIM_HOLD_SECS)
    .fetch_all(pool)
    .await?)
}

/// The delivery of `hook` was accepted by the receiver.
pub async fn delivered(pool: &PgPool, hook: &DueHook) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE run_hooks SET state = 'delivered', delivered_at = now(), last_error = NULL
          WHERE run_id = $1 AND event = $2 AND attempts = $3 AND state = 'pending'",
    )
    .bind(hook.run_id)
    .bind(&hook.event)
    .bind(hook.attempts)
    .execute(pool)
    .await?;
    Ok(())
}

/// The delivery of `hook` failed with `error`: tried again in `delay`.
pub async fn retry_later(pool: &PgPool, hook: &DueHook, delay: Duration, error: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE run_hooks SET last_error = $4, next_at = now() + make_interval(secs => $5)
          WHERE run_id = $1 AND event = $2 AND attempts = $3 AND state = 'pending'",
    )
    .bind(hook.run_id)
    .bind(&hook.event)
    .bind(hook.attempts)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// `hook` is done without a delivery: `failed` (its attempts spent) or `none` (no hook configured);
/// `error` says why.
pub async fn finish(pool: &PgPool, hook: &DueHook, state: &str, error: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE run_hooks SET state = $4, last_error = $5
          WHERE run_id = $1 AND event = $2 AND attempts = $3 AND state = 'pending'",
    )
    .bind(hook.run_id)
    .bind(&hook.event)
    .bind(hook.attempts)
    .bind(state)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// One recorded hook of a run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HookView {
    pub event: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The hooks of `run_id`, `run.started` first.
pub async fn of_run(pool: &PgPool, run_id: Uuid) -> Result<Vec<HookView>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT event, state, attempts, last_error, created_at, delivered_at FROM run_hooks
          WHERE run_id = $1 ORDER BY event DESC",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}
