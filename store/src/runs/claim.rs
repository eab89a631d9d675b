//! Claims: a delivered step taken for a worker, `ready` → `running`, one more attempt counted.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use syncfleet_shared::retry::Tally;

use super::tally;
use crate::Integration;
use crate::{chain::Mode, ids::RunId};

/// What a worker needs to run a claimed step.
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    pub run_id: RunId,
    pub chain: String,
    pub integration: Integration,
    /// The run's mode.
    pub mode: Mode,
    /// The mode this step was given when the run was created (`None` for older rows).
    pub step_mode: Option<Mode>,
    pub force_sweep: bool,
    pub step: String,
    pub shard: i32,
    pub attempt: i32,
    /// The error budget: attempts that may fail by the step's own error.
    pub max_attempts: i32,
    /// Attempts before this one lost to the infrastructure (they spend no error budget).
    pub lost_attempts: i32,
    pub max_lost_attempts: i32,
    pub entity_key: String,
}

impl ClaimedStep {
    /// The step's counters for the retry decision.
    pub fn tally(&self) -> Tally {
        tally(self.attempt, self.lost_attempts, self.max_attempts, self.max_lost_attempts)
    }
}

#[derive(Debug)]
pub enum Claim {
    Claimed(Box<ClaimedStep>),
    /// The job is not (or no longer) this step's current job: another delivery, or already done.
    Stale,
    /// The run was cancelled or ended; the step was marked cancelled.
    RunInactive,
}

/// Reads the step's entity key if the job is still the step's current ready job.
pub async fn ready_entity(pool: &PgPool, step_run_id: i64, job_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT entity_key FROM step_runs WHERE id = $1 AND job_id = $2 AND status = 'ready'")
        .bind(step_run_id)
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// Takes the step for this worker: `ready` → `running`, one more attempt counted.
///
/// Claims of one run do not wait on each other, nor on finishes or settles: the run row is locked
/// `FOR SHARE` (a step failing for good, resume, cancel and a run's end, which lock it
/// `FOR UPDATE`, still exclude them). One statement (`step_claim`, `0021`) checks
/// the run, reads the integration and claims the step; the first claim of a run also starts it
/// (`queued` → `running`, writing the run row first) and records its `run.started` hook.
pub async fn claim(pool: &PgPool, step_run_id: i64, job_id: &str, worker: &str) -> Result<Claim, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM step_claim($1, $2, $3)")
        .bind(step_run_id)
        .bind(job_id)
        .bind(worker)
        .fetch_one(pool)
        .await?;
    Ok(claim_of(&row))
}

/// A delivery of a step in a run the caller saw running: the step's row and the job id delivered.
#[derive(Debug, Clone)]
pub struct ToClaim {
    pub step_run_id: i64,
    pub job_id: String,
}

/// [`claim`] for steps whose runs the caller saw running (another of their steps claimed), several
/// in one call of `step_claim_running` (`0030`, one statement planned once per session): the same
/// lock, check and update for each, under each delivery's own fence. One answer per delivery, in
/// order; a delivery named twice is claimed once, and answered `Stale` the second time. `None` for a step
/// whose run is not running after all (cancelled, ended, or still queued): nothing was written, and
/// [`claim`] decides (it cancels the step, or starts the run).
pub async fn claim_in_running_runs(
    db: impl sqlx::PgExecutor<'_>,
    worker: &str,
    steps: &[ToClaim],
) -> Result<Vec<Option<Claim>>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM step_claim_running($1, $2, $3)")
        .bind(steps.iter().map(|s| s.step_run_id).collect::<Vec<i64>>())
        .bind(steps.iter().map(|s| s.job_id.as_str()).collect::<Vec<&str>>())
        .bind(worker)
        .fetch_all(db)
        .await?;
    let mut answers: HashMap<(i64, &str), &PgRow> =
        rows.iter().map(|row| ((row.get("step_run_id"), row.get("delivered")), row)).collect();
    let claims = steps
        .iter()
        .map(|s| match answers.remove(&(s.step_run_id, s.job_id.as_str())) {
            None => Some(Claim::Stale),
            Some(row) if row.get::<&str, _>("outcome") == "again" => None,
            Some(row) => Some(claim_of(row)),
        })
        .collect();
    Ok(claims)
}

/// The claim a row of `step_claim` (or `step_claim_running`) answers.
fn claim_of(row: &sqlx::postgres::PgRow) -> Claim {
    match row.get::<&str, _>("outcome") {
        "claimed" => Claim::Claimed(Box::new(ClaimedStep {
            run_id: RunId(row.get("run_id")),
            chain: row.get("chain"),
            integration: Integration {
                id: row.get("integration_id"),
                name: row.get("integration_name"),
                pack: row.get("pack"),
                enabled: row.get("enabled"),
                settings: row.get("settings"),
            },
            mode: Mode::parse(row.get::<&str, _>("run_mode")).unwrap_or_default(),
            step_mode: row.get::<Option<&str>, _>("step_mode").and_then(Mode::parse),
            force_sweep: row.get("force_sweep"),
            step: row.get("step"),
            shard: row.get("shard"),
            attempt: row.get("attempts"),
            max_attempts: row.get("max_attempts"),
            lost_attempts: row.get("lost_attempts"),
            max_lost_attempts: row.get("max_lost_attempts"),
            entity_key: row.get("entity_key"),
        })),
        "inactive" => Claim::RunInactive,
        _ => Claim::Stale,
    }
}
