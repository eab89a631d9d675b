//! Run and step state transitions. A transition that locks the run row locks it before any step
//! row: a step failing for good, resume, cancel and a run's end `FOR UPDATE` (then the run's
//! settle lock, exclusively), claims `FOR SHARE` (side by side). Settles hold the run's settle
//! lock (an advisory lock) shared. Any other finish writes only its own step row and commits; the
//! steps it makes ready are promoted after the commit by a settle (`step_settle`, `0023`), which
//! sees every finish committed before it, so of the finishes a step waits on, the last one to
//! commit promotes it; `UPDATE … WHERE status = 'pending'` promotes it once. A success whose step
//! has another row still open settles nothing (`0028`): the last of those rows to commit settles.
//! With one lock order, no two transactions can wait on each other in a cycle.
//!
//! Run states: `queued → running → completed | partial | failed | cancelled`.
//! Step states: `pending → ready → running → succeeded | failed | skipped | cancelled`.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};

use super::StoreError;
use crate::Integration;
use crate::exclusion::{excluded_error, lock_group};
use crate::{
    chain::{ChainDef, Mode},
    ids::RunId,
};
mod claim;
mod create;
use create::active_run_error;
mod finish;

pub use claim::{Claim, ClaimedStep, ToClaim, claim, claim_in_running_runs, ready_entity};
pub use create::{CreateError, NewRun, create_run, create_run_dispatching, insert_error};

pub use finish::{
    Finished, Success, end_run, finish_step_alone, finish_step_in, finish_successes, settle, settle_after_successes,
    settle_stranded, settled,
};

use syncfleet_shared::{
    phase::PhaseResult,
    retry::{Decision, Failure, Tally},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    Manual,
    Schedule,
    Startup,
    Webhook,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Manual => "manual",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Startup => "startup",
            TriggerKind::Webhook => "webhook",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TriggerRequest<'a> {
    pub chain: &'a ChainDef,
    pub integration: &'a Integration,
    pub mode: Mode,
    pub kind: TriggerKind,
    pub triggered_by: String,
    pub tick_key: Option<String>,
    pub force_sweep: bool,
    /// Per-step modes that replace the chain's pinned mode and the run's mode for those steps
    /// (names the chain does not have are refused by the caller).
    pub step_modes: std::collections::BTreeMap<String, Mode>,
    /// The chain's exclusion group (`Pack::exclusive_chains`): no two runs of the group run at the
    /// same time for one integration.
    pub exclusion_group: Option<String>,
    /// While another run of the group is active: wait behind it (`true`: the run is created
    /// `queued` with `waiting_for` and starts when the other ends), or refuse
    /// ([`StoreError::Excluded`]).
    pub queue: bool,
    /// The actor and detail of the `run.trigger` audit row, written by the statement that creates
    /// the run (someone asked for it); `None` for a run that is recorded as a run only (scheduled).
    pub audit: Option<(String, serde_json::Value)>,
}

/// A ready step to push to Redis, marked dispatched (by `dispatch::take_due`, or by the statement
/// that created its run), with what its job carries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueStep {
    pub id: i64,
    pub run_id: uuid::Uuid,
    pub step: String,
    pub shard: i32,
    pub job_id: String,
    /// The entity whose lease the step's worker takes.
    pub entity_key: String,
    /// When the step became due (its wait for a worker starts here).
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The run's W3C `traceparent`, carried in the job.
    pub trace_context: Option<String>,
}

/// A step row made ready by a transition, to be pushed to Redis.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReadyStep {
    pub id: i64,
    pub queue: String,
}

/// Starts the oldest waiting run of the group when nothing of the group runs any more: its
/// `waiting_for` is cleared and its root steps become ready (returned, to be pushed); the other
/// waiting runs now wait behind it. Call in the transaction that ended a run of the group (after
/// its run row is locked), or on its own (the reconciler).
pub async fn promote_waiting_in(
    conn: &mut PgConnection,
    integration_id: i64,
    group: &str,
) -> Result<Vec<ReadyStep>, sqlx::Error> {
    lock_group(conn, integration_id, group).await?;
    let next: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT w.id FROM chain_runs w
          WHERE w.integration_id = $1 AND w.exclusion_group = $2 AND w.status = 'queued' AND w.waiting_for IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM chain_runs r
                             WHERE r.integration_id = $1 AND r.exclusion_group = $2
                               AND r.status IN ('queued', 'running') AND r.waiting_for IS NULL)
            AND NOT EXISTS (SELECT 1 FROM step_runs s JOIN chain_runs r ON r.id = s.run_id
                             WHERE s.status = 'running' AND r.integration_id = $1 AND r.exclusion_group = $2)
          ORDER BY w.created_at LIMIT 1
          FOR UPDATE OF w",
    )
    .bind(integration_id)
    .bind(group)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(next) = next else {
        return Ok(vec![]);
    };
    sqlx::query("UPDATE chain_runs SET waiting_for = NULL WHERE id = $1").bind(next).execute(&mut *conn).await?;
    sqlx::query(
        "UPDATE chain_runs SET waiting_for = $3
          WHERE integration_id = $1 AND exclusion_group = $2 AND status = 'queued' AND waiting_for IS NOT NULL",
    )
    .bind(integration_id)
    .bind(group)
    .bind(next)
    .execute(&mut *conn)
    .await?;
    promote_ready(conn, RunId(next)).await
}

/// Promotes waiting runs of every group whose runs all ended (the reconciler's safety net: a
/// cancelled run, a run whose ending transaction promoted nothing). Returns the steps made ready.
pub async fn promote_waiting(pool: &PgPool) -> Result<Vec<ReadyStep>, sqlx::Error> {
    let groups: Vec<(i64, String)> = sqlx::query_as(
        "SELECT DISTINCT integration_id, exclusion_group FROM chain_runs
          WHERE status = 'queued' AND waiting_for IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut ready = Vec::new();
    for (integration_id, group) in groups {
        let mut tx = pool.begin().await?;
        ready.extend(promote_waiting_in(&mut tx, integration_id, &group).await?);
        tx.commit().await?;
    }
    Ok(ready)
}

/// Makes every pending step of the run whose prerequisites are all met `ready`. A prerequisite is
/// met when every row of it succeeded, or failed while optional (`run_promote`, `0026`: one probe
/// per prerequisite named, so the promotion of a wide fan-out is linear in its shards).
pub async fn promote_ready(conn: &mut PgConnection, run_id: RunId) -> Result<Vec<ReadyStep>, sqlx::Error> {
    sqlx::query_as::<_, ReadyStep>("SELECT ready_id AS id, ready_queue AS queue FROM run_promote($1)")
        .bind(run_id)
        .fetch_all(conn)
        .await
}

/// Ends the run once no step is open: `failed` if a required step failed, `partial` if an
/// optional one did or a step succeeded only in part (`step_runs.partial`), else `completed`. A cancelled run stays cancelled. The open check (`run_open`,
/// `0026`) is one probe of `step_runs_unsucceeded`; the failure checks run only when the run ends.
async fn finalize_run(conn: &mut PgConnection, run_id: RunId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE chain_runs r
            SET status = CASE
                    WHEN EXISTS (SELECT 1 FROM step_runs s WHERE s.run_id = $1 AND s.status = 'failed' AND s.required)
                        THEN 'failed'
                    WHEN EXISTS (SELECT 1 FROM step_runs s WHERE s.run_id = $1
                                    AND (s.status = 'failed' OR (s.status = 'succeeded' AND s.partial)))
                        THEN 'partial'
                    ELSE 'completed' END,
                -- The transaction's `now()`: `metrics::run_ended_in_tx` tells by it that this
                -- transaction ended the run.
                finished_at = now()
          WHERE r.id = $1 AND r.status IN ('queued', 'running')
            AND NOT run_open($1)",
    )
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps settles of the run out until the caller's transaction ends (the run row is locked
/// `FOR UPDATE` first): a settle that starts meanwhile waits, then sees what this transaction wrote.
async fn exclude_settles(conn: &mut PgConnection, run_id: RunId) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(run_settle_key($1))").bind(run_id).execute(conn).await?;
    Ok(())
}

/// Locks the run of a step row; returns the run id and status.
async fn lock_run_of_step(conn: &mut PgConnection, step_run_id: i64) -> Result<Option<(RunId, String)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT r.id, r.status FROM chain_runs r
          WHERE r.id = (SELECT run_id FROM step_runs WHERE id = $1) FOR UPDATE",
    )
    .bind(step_run_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let run_id = RunId(row.get("id"));
    exclude_settles(conn, run_id).await?;
    Ok(Some((run_id, row.get("status"))))
}

fn tally(attempts: i32, lost: i32, max_attempts: i32, max_lost: i32) -> Tally {
    let n = |v: i32| v.max(0) as u32;
    Tally { attempts: n(attempts), lost: n(lost), max_attempts: n(max_attempts), max_lost: n(max_lost) }
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The step is still this job's and its run is active.
    Alive,
    /// The step is no longer this job's (the reconciler took it away).
    TakenAway,
    /// The step is still this job's but its run was cancelled (or ended): the step should stop.
    RunCancelled,
}

/// Records that the running step is alive, and says whether its run still is.
pub async fn heartbeat(pool: &PgPool, step_run_id: i64, job_id: &str) -> Result<Beat, sqlx::Error> {
    let run_status: Option<String> = sqlx::query_scalar(
        "UPDATE step_runs s SET heartbeat_at = now() FROM chain_runs r
          WHERE s.id = $1 AND s.job_id = $2 AND s.status = 'running' AND r.id = s.run_id
          RETURNING r.status",
    )
    .bind(step_run_id)
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    Ok(match run_status.as_deref() {
        None => Beat::TakenAway,
        Some("queued" | "running") => Beat::Alive,
        Some(_) => Beat::RunCancelled,
    })
}

/// The entity lease was busy: deliver the step again later under a new task id, without counting
/// an attempt.
pub async fn requeue_lease_busy(
    pool: &PgPool,
    step_run_id: i64,
    job_id: &str,
    delay: Duration,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE step_runs
            SET lease_waits = lease_waits + 1, dispatched_at = NULL,
                not_before = now() + make_interval(secs => $3),
                job_id = step_job_id(run_id, step, shard, sharded, attempts + 1, lease_waits + 1)
          WHERE id = $1 AND job_id = $2 AND status = 'ready'",
    )
    .bind(step_run_id)
    .bind(job_id)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(n.rows_affected() == 1)
}

/// How a step attempt ended, as the worker engine or the reconciler decided it
/// ([`syncfleet_shared::retry::decide`]).
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(PhaseResult),
    Failed {
        message: String,
        /// The attempt was lost to the infrastructure (worker killed, entity lease lost): counted in
        /// `lost_attempts`, not against the error budget.
        lost: bool,
        /// Retry now, after a pause (the step is ready again, a new attempt), or fail for good.
        decision: Decision,
        result: PhaseResult,
    },
    /// The run was cancelled while the step ran and the step stopped: recorded `cancelled`, with
    /// no retry; the attempt's writes rolled back.
    Cancelled {
        message: String,
        result: PhaseResult,
    },
}

impl Outcome {
    /// A failed attempt and what the retry decision made of it.
    pub fn failed(message: String, failure: Failure, decision: Decision, result: PhaseResult) -> Outcome {
        Outcome::Failed { message, lost: failure == Failure::Lost, decision, result }
    }
}

/// Identifies the attempt being finished; the update applies only while it still holds.
#[derive(Debug, Clone)]
pub struct Fence<'a> {
    pub step_run_id: i64,
    pub job_id: &'a str,
    /// `None` for the reconciler, which finishes steps of lost workers.
    pub worker: Option<&'a str>,
}

/// Resumes a failed, partial or cancelled run: its failed, skipped and cancelled steps run again
/// (each as a new attempt, with its error budget and its cap on lost attempts renewed), as do steps that succeeded only in part and every step downstream of
/// those; other succeeded steps are not repeated.
pub async fn resume(pool: &PgPool, run_id: RunId) -> Result<Vec<ReadyStep>, StoreError> {
    let mut tx = pool.begin().await?;
    let run: Option<(String, String, i64)> =
        sqlx::query_as("SELECT status, chain, integration_id FROM chain_runs WHERE id = $1 FOR UPDATE")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, chain, integration_id) = run.ok_or_else(|| StoreError::RunNotFound(run_id.to_string()))?;
    exclude_settles(&mut tx, run_id).await?;
    if !matches!(status.as_str(), "failed" | "partial" | "cancelled") {
        return Err(StoreError::WrongState {
            run_id: run_id.to_string(),
            status,
            action: "resume",
            needs: "failed, partial or cancelled",
        });
    }
    let updated = sqlx::query(
        "UPDATE chain_runs SET status = 'running', finished_at = NULL, error = NULL, resumes = resumes + 1
          WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(e)) = &updated
        && e.constraint() == Some("chain_runs_one_active")
    {
        drop(tx);
        return Err(active_run_error(pool, &chain, integration_id).await);
    }
    if let Err(sqlx::Error::Database(e)) = &updated
        && e.constraint() == Some("chain_runs_one_active_exclusive")
    {
        drop(tx);
        return Err(excluded_error(pool, run_id).await);
    }
    updated?;
    // A partial step's downstream steps read what it wrote while part of it was missing: they run
    // again after it, as do (transitively) theirs.
    sqlx::query(
        "WITH RECURSIVE partial_steps AS (
             SELECT DISTINCT step FROM step_runs WHERE run_id = $1 AND status = 'succeeded' AND partial),
         downstream(step) AS (
             SELECT DISTINCT s.step FROM step_runs s JOIN partial_steps p ON p.step = ANY(s.prerequisites)
              WHERE s.run_id = $1
             UNION
             SELECT s.step FROM step_runs s JOIN downstream d ON d.step = ANY(s.prerequisites)
              WHERE s.run_id = $1)
         UPDATE step_runs SET status = 'pending', error = NULL, finished_at = NULL, worker = NULL,
                max_attempts = attempts - lost_attempts + attempt_budget,
                max_lost_attempts = lost_attempts + lost_budget
          WHERE run_id = $1
            AND (status IN ('failed', 'skipped', 'cancelled')
                 OR (status = 'succeeded' AND (partial OR step IN (SELECT step FROM downstream))))",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    let ready = promote_ready(&mut tx, run_id).await?;
    finalize_run(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(ready)
}

/// Cancels an active run: no further step is scheduled; its running steps stop at their worker's
/// next heartbeat ([`heartbeat`] answers [`Beat::RunCancelled`]) and are recorded `cancelled`.
pub async fn cancel(pool: &PgPool, run_id: RunId) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM chain_runs WHERE id = $1 FOR UPDATE")
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
    let status = status.ok_or_else(|| StoreError::RunNotFound(run_id.to_string()))?;
    exclude_settles(&mut tx, run_id).await?;
    if !matches!(status.as_str(), "queued" | "running") {
        return Err(StoreError::WrongState {
            run_id: run_id.to_string(),
            status,
            action: "cancel",
            needs: "queued or running",
        });
    }
    sqlx::query("UPDATE chain_runs SET status = 'cancelled', finished_at = now() WHERE id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE step_runs SET status = 'cancelled', finished_at = now() WHERE run_id = $1 AND status IN ('pending', 'ready')",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    // The run's `run.ended` hook, delivered by the producer: committed with the cancel.
    crate::hooks::run_ended_in_tx(&mut tx, run_id.0).await?;
    tx.commit().await?;
    Ok(())
}

/// A running step whose worker stopped sending heartbeats.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StaleStep {
    pub id: i64,
    pub job_id: String,
    pub chain: String,
    pub step: String,
    pub worker: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lost_attempts: i32,
    pub max_lost_attempts: i32,
}

impl StaleStep {
    /// The step's counters for the retry decision.
    pub fn tally(&self) -> Tally {
        tally(self.attempts, self.lost_attempts, self.max_attempts, self.max_lost_attempts)
    }
}

pub async fn stale_running(pool: &PgPool, stale_after: Duration, limit: i64) -> Result<Vec<StaleStep>, sqlx::Error> {
    sqlx::query_as::<_, StaleStep>(
        "SELECT s.id, s.job_id, r.chain, s.step, s.worker, s.attempts, s.max_attempts, s.lost_attempts,
                s.max_lost_attempts
           FROM step_runs s JOIN chain_runs r ON r.id = s.run_id
          WHERE s.status = 'running' AND s.heartbeat_at < now() - make_interval(secs => $1)
          ORDER BY s.heartbeat_at LIMIT $2",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}
