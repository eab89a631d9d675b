//! The end of a step attempt: the finish (the step row, with the step's effects when it has some),
//! then the settle after its commit (what the ended steps make ready, and the run's end), and the
//! reconciler's safety net for a settle that never ran. A step failing for good is the exception:
//! it makes its downstream transitions in its own transaction, under the run row's `FOR UPDATE`.

use std::{collections::HashMap, time::Duration};

use sqlx::{PgConnection, PgPool, Row};

use super::{
    Fence, Outcome, ReadyStep, exclude_settles, finalize_run, lock_run_of_step, promote_ready, promote_waiting_in,
};
use crate::ids::RunId;
use syncfleet_shared::{
    phase::PhaseResult,
    retry::{self, Decision, Stop},
};

/// [`finish_step_in`] of a step failing for good, statement by statement, under the run row's
/// `FOR UPDATE` (its downstream transitions are made here, not by a settle).
async fn finish_step_multi(
    conn: &mut PgConnection,
    fence: &Fence<'_>,
    outcome: &Outcome,
) -> Result<Option<Vec<ReadyStep>>, sqlx::Error> {
    let Some((run_id, run_status)) = lock_run_of_step(conn, fence.step_run_id).await? else {
        return Ok(None);
    };
    let (status, message, retry_in, lost, stop, r) = match outcome {
        Outcome::Succeeded(r) => ("succeeded", None, None, false, None, r),
        Outcome::Cancelled { message, result } => ("cancelled", Some(message.as_str()), None, false, None, result),
        Outcome::Failed { message, lost, decision, result } => match decision {
            Decision::FailForGood(stop) => ("failed", Some(message.as_str()), None, *lost, Some(*stop), result),
            retry => ("ready", Some(message.as_str()), retry.retry_in(), *lost, None, result),
        },
    };
    let row = sqlx::query(
        "UPDATE step_runs SET
            status = $4,
            error = $5,
            finished_at = CASE WHEN $4 = 'ready' THEN NULL ELSE clock_timestamp() END,
            duration_ms = (extract(epoch FROM (clock_timestamp() - started_at)) * 1000)::bigint,
            fetched = $7, inserted = $8, updated = $9, unchanged = $10, deactivated = $11, errors = $12,
            api_calls = $13, throttled = $14, cursor_before = $15, cursor_after = $16, guard = $17,
            partial = $18,
            lost_attempts = lost_attempts + CASE WHEN $19 THEN 1 ELSE 0 END,
            worker = CASE WHEN $4 = 'ready' THEN NULL ELSE worker END,
            ready_at = CASE WHEN $4 = 'ready' THEN now() ELSE ready_at END,
            not_before = CASE WHEN $4 = 'ready' THEN now() + make_interval(secs => $6) ELSE not_before END,
            dispatched_at = CASE WHEN $4 = 'ready' THEN NULL ELSE dispatched_at END,
            job_id = CASE WHEN $4 = 'ready'
                          THEN step_job_id(run_id, step, shard, sharded, attempts + 1, lease_waits)
                          ELSE job_id END
          WHERE id = $1 AND job_id = $2 AND status = 'running' AND ($3::text IS NULL OR worker = $3)
          RETURNING step, required, attempts, lost_attempts",
    );
    let row = bind_finish(row, fence, &FinishValues { status, message, retry_in, lost, result: r })
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let step: String = row.get("step");
    let required: bool = row.get("required");
    let (attempts, lost_attempts) = (row.get::<i32, _>("attempts").max(0) as u32, row.get::<i32, _>("lost_attempts"));
    let lost_attempts = lost_attempts.max(0) as u32;
    let mut message = message.unwrap_or_default().to_owned();
    if stop == Some(Stop::WorkersKeptDying) {
        message = retry::step_error(Stop::WorkersKeptDying, &message, lost_attempts);
        sqlx::query("UPDATE step_runs SET error = $2 WHERE id = $1")
            .bind(fence.step_run_id)
            .bind(&message)
            .execute(&mut *conn)
            .await?;
    }
    if let (Some(stop), true) = (stop, required) {
        let why = format!("skipped: required step `{step}` failed");
        sqlx::query(
            "UPDATE step_runs SET status = 'skipped', error = $2, finished_at = now()
              WHERE run_id = $1 AND status IN ('pending', 'ready')",
        )
        .bind(run_id)
        .bind(&why)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE chain_runs SET error = $2 WHERE id = $1")
            .bind(run_id)
            .bind(retry::run_error(&step, &run_id.to_string(), stop, &message, attempts, lost_attempts))
            .execute(&mut *conn)
            .await?;
    }
    let mut ready =
        if run_status == "running" && status != "ready" { promote_ready(conn, run_id).await? } else { vec![] };
    finalize_run(conn, run_id).await?;
    if status != "ready" {
        ready.extend(promote_after_end(conn, run_id).await?);
    }
    Ok(Some(ready))
}

/// An outcome [`finish_step_in`] records in one statement: every outcome but a step failing for
/// good (whose run error and skipped steps the multi-statement path writes).
fn one_statement(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Failed { decision: Decision::FailForGood(_), .. })
}

/// A finish recorded by [`finish_step_in`], [`finish_step_alone`] or [`settle`].
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Steps that became ready, to be pushed.
    pub ready: Vec<ReadyStep>,
    /// The chain and status of the run when this finish ended it (its `run.ended` hook is
    /// written in the same transaction); count it once the commit succeeded.
    pub run_ended: Option<(String, String)>,
    /// The run to settle once the finish committed ([`settled`]): a finish in one statement
    /// writes only its own step row.
    pub settle: Option<RunId>,
    /// The step whose success this finish recorded: its settle is none while another row of the
    /// step is still open (`step_settle_after`, `0028`).
    pub succeeded: Option<i64>,
}

impl Finished {
    /// This finish followed by `later` (a settle after it): what both made ready, and the run's end if
    /// either ended it.
    pub fn merge(mut self, later: Finished) -> Finished {
        self.ready.extend(later.ready);
        self.run_ended = self.run_ended.or(later.run_ended);
        self.settle = later.settle;
        self.succeeded = later.succeeded;
        self
    }
}

/// The `step_finish` statement (`0023`) for an outcome other than a step failing for good: the
/// step row only. `None` when the fence no longer holds.
async fn step_finish(
    conn: &mut PgConnection,
    fence: &Fence<'_>,
    outcome: &Outcome,
) -> Result<Option<Finished>, sqlx::Error> {
    let q = sqlx::query(
        "SELECT * FROM step_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                                   $19)",
    );
    let row = bind_finish(q, fence, &finish_values(outcome)).fetch_one(&mut *conn).await?;
    if !row.get::<bool, _>("finished") {
        return Ok(None);
    }
    let settle = row.get::<bool, _>("settle").then(|| RunId(row.get("run_id")));
    let succeeded = matches!(outcome, Outcome::Succeeded(_)).then_some(fence.step_run_id);
    Ok(Some(Finished { settle, succeeded, ..Finished::default() }))
}

/// What `step_finish` writes for an outcome other than a step failing for good.
fn finish_values(outcome: &Outcome) -> FinishValues<'_> {
    let (status, message, retry_in, lost, result) = match outcome {
        Outcome::Succeeded(r) => ("succeeded", None, None, false, r),
        Outcome::Cancelled { message, result } => ("cancelled", Some(message.as_str()), None, false, result),
        Outcome::Failed { message, lost, decision, result } => {
            ("ready", Some(message.as_str()), decision.retry_in(), *lost, result)
        }
    };
    FinishValues { status, message, retry_in, lost, result }
}

/// What a finish writes into the step row: `$4` … `$19` of both finish statements.
struct FinishValues<'a> {
    status: &'a str,
    message: Option<&'a str>,
    retry_in: Option<Duration>,
    lost: bool,
    result: &'a PhaseResult,
}

/// Binds the fence (`$1` … `$3`) and the step's result (`$4` … `$19`), in the order both finish
/// statements (the multi-statement path and `step_finish`) read them.
fn bind_finish<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    fence: &Fence<'q>,
    v: &FinishValues<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let r = v.result;
    q.bind(fence.step_run_id)
        .bind(fence.job_id.to_owned())
        .bind(fence.worker.map(str::to_owned))
        .bind(v.status)
        .bind(v.message)
        .bind(v.retry_in.map(|d| d.as_secs_f64()).unwrap_or(0.0))
        .bind(r.fetched)
        .bind(r.inserted)
        .bind(r.updated)
        .bind(r.unchanged)
        .bind(r.deactivated)
        .bind(r.errors)
        .bind(r.api_calls)
        .bind(r.throttled)
        .bind(r.cursor_before.clone())
        .bind(r.cursor_after.clone())
        .bind(r.guard.clone())
        .bind(r.partial)
        .bind(v.lost)
}

fn ready_of(row: &sqlx::postgres::PgRow) -> Vec<ReadyStep> {
    let ids: Vec<i64> = row.get("ready_ids");
    let queues: Vec<String> = row.get("ready_queues");
    ids.into_iter().zip(queues).map(|(id, queue)| ReadyStep { id, queue }).collect()
}

/// Records the end of an attempt inside the caller's transaction (with the step's effects). The end
/// time is the statement's (`clock_timestamp()`), not the transaction's start: a step that does its
/// work inside that transaction would otherwise end when it began. A lost attempt counts in
/// `lost_attempts` (not against the error budget). A required step that fails for good sets the
/// run's error: the step's error, the attempts spent and lost (the row's counts), and that
/// `syncfleet resume <run>` continues the run; that finish makes its downstream transitions in the
/// transaction, under the run row's `FOR UPDATE`. Any other finish writes its step row only and
/// names the run to settle: call [`settled`] once the transaction committed. `None` when the fence
/// no longer holds (the caller must roll back).
pub async fn finish_step_in(
    conn: &mut PgConnection,
    fence: &Fence<'_>,
    outcome: &Outcome,
) -> Result<Option<Finished>, sqlx::Error> {
    if !one_statement(outcome) {
        let Some(ready) = finish_step_multi(conn, fence, outcome).await? else {
            return Ok(None);
        };
        let run_ended =
            if ready.is_empty() { crate::health::run_ended_in_tx(conn, fence.step_run_id).await? } else { None };
        return Ok(Some(Finished { ready, run_ended, ..Finished::default() }));
    }
    step_finish(conn, fence, outcome).await
}

/// Settles the run a committed finish named ([`Finished::settle`]), adding what the settle made
/// ready and whether it ended the run. The success of a step with another row still open settles
/// nothing ([`settle_after_successes`], as `step_settle_after` in `0028`): that row's end settles.
pub async fn settled(pool: &PgPool, finished: Finished) -> Result<Finished, sqlx::Error> {
    let Some(run_id) = finished.settle else {
        return Ok(finished);
    };
    let settled = match finished.succeeded {
        Some(succeeded) => settle_after_successes(pool, run_id, &[succeeded]).await?,
        None => settle(pool, run_id).await?,
    };
    Ok(finished.merge(settled))
}

/// A finish when the step has no effects to commit with it (the worker engine records its
/// successes together instead, [`finish_successes`]). A success, a retry or a cancelled step is
/// one round trip: `CALL step_finish_settle` commits the step row, then
/// settles the run in a transaction of its own (none for the success of a shard whose step has
/// other rows still open, `0028`). A step failing for good is recorded in a transaction
/// ([`finish_step_in`]) with its downstream transitions, so nothing is left to settle. `Ok(None)`
/// when the fence no longer holds.
pub async fn finish_step_alone(
    pool: &PgPool,
    fence: &Fence<'_>,
    outcome: &Outcome,
) -> Result<Option<Finished>, sqlx::Error> {
    if !one_statement(outcome) {
        let mut tx = pool.begin().await?;
        let Some(finished) = finish_step_in(&mut tx, fence, outcome).await? else {
            tx.rollback().await.ok();
            return Ok(None);
        };
        tx.commit().await?;
        return Ok(Some(finished));
    }
    let q = sqlx::query(
        "CALL step_finish_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                                 $19, NULL, NULL, NULL, NULL, NULL)",
    );
    let row = bind_finish(q, fence, &finish_values(outcome)).fetch_one(pool).await?;
    if !row.get::<bool, _>("finished") {
        return Ok(None);
    }
    Ok(Some(settle_row(pool, RunId(row.get("run_id")), &row).await?))
}

/// A success without effects to record with others ([`finish_successes`]).
#[derive(Debug, Clone)]
pub struct Success {
    pub step_run_id: i64,
    pub job_id: String,
    pub result: PhaseResult,
}

/// Records several successes without effects of one worker in one round trip (`CALL
/// step_succeed_settle`, `0029`): each step row as [`finish_step_alone`] writes a success, under its
/// own fence, all in one commit; then each run with a success whose step has no other row still
/// open is settled once, and ended when nothing in it is open any more ([`end_run`]). One answer
/// per success, in order: `None` when its fence no longer held. What a run's settle made ready, and
/// its end, go with the first of its successes.
pub async fn finish_successes(
    conn: &mut PgConnection,
    worker: Option<&str>,
    successes: &[Success],
) -> Result<Vec<Option<Finished>>, sqlx::Error> {
    let counts = |count: fn(&PhaseResult) -> i64| successes.iter().map(|s| count(&s.result)).collect::<Vec<i64>>();
    let texts = |text: fn(&PhaseResult) -> &Option<String>| {
        successes.iter().map(|s| text(&s.result).clone()).collect::<Vec<Option<String>>>()
    };
    let row = sqlx::query(
        "CALL step_succeed_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                                  NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .bind(worker)
    .bind(successes.iter().map(|s| s.step_run_id).collect::<Vec<i64>>())
    .bind(successes.iter().map(|s| s.job_id.as_str()).collect::<Vec<&str>>())
    .bind(counts(|r| r.fetched))
    .bind(counts(|r| r.inserted))
    .bind(counts(|r| r.updated))
    .bind(counts(|r| r.unchanged))
    .bind(counts(|r| r.deactivated))
    .bind(counts(|r| r.errors))
    .bind(counts(|r| r.api_calls))
    .bind(counts(|r| r.throttled))
    .bind(texts(|r| &r.cursor_before))
    .bind(texts(|r| &r.cursor_after))
    .bind(texts(|r| &r.guard))
    .bind(successes.iter().map(|s| s.result.partial).collect::<Vec<bool>>())
    .fetch_one(&mut *conn)
    .await?;
    let finished: Vec<i64> = row.get("finished");
    let runs: Vec<uuid::Uuid> = row.get("runs");
    let (ready_ids, ready_queues, ready_runs): (Vec<i64>, Vec<String>, Vec<uuid::Uuid>) =
        (row.get("ready_ids"), row.get("ready_queues"), row.get("ready_runs"));
    let mut by_run: HashMap<uuid::Uuid, Finished> = HashMap::new();
    for ((id, queue), run) in ready_ids.into_iter().zip(ready_queues).zip(ready_runs) {
        by_run.entry(run).or_default().ready.push(ReadyStep { id, queue });
    }
    for run in row.get::<Vec<uuid::Uuid>, _>("end_runs") {
        // The steps are committed: a run left unended here is the reconciler's (`settle_stranded`).
        match end_run(&mut *conn, RunId(run)).await {
            Ok(ended) => {
                let settled = by_run.remove(&run).unwrap_or_default();
                by_run.insert(run, settled.merge(ended));
            }
            Err(error) => tracing::warn!(%error, %run, "Run end failed; the reconciler ends it."),
        }
    }
    Ok(successes
        .iter()
        .map(|s| {
            let at = finished.iter().position(|&id| id == s.step_run_id)?;
            Some(by_run.remove(&runs[at]).unwrap_or_default())
        })
        .collect())
}

/// Settles the run after these successes committed, unless each one's step has another row still
/// open (`step_settle_after_successes`, `0031`): the settle a holder of the run's settle turn owes
/// the successes that marked it.
pub async fn settle_after_successes(pool: &PgPool, run_id: RunId, succeeded: &[i64]) -> Result<Finished, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM step_settle_after_successes($1, $2)")
        .bind(run_id)
        .bind(succeeded)
        .fetch_one(pool)
        .await?;
    settle_row(pool, run_id, &row).await
}

/// Promotes what the run's ended steps make ready (`step_settle`, `0023`), after their commits;
/// ends the run when nothing in it is open any more ([`end_run`]).
pub async fn settle(pool: &PgPool, run_id: RunId) -> Result<Finished, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM step_settle($1)").bind(run_id).fetch_one(pool).await?;
    settle_row(pool, run_id, &row).await
}

/// What a settle's row (`ready_ids`, `ready_queues`, `needs_end`) made ready, with the run's end when
/// it needs one ([`end_run`]).
async fn settle_row(pool: &PgPool, run_id: RunId, row: &sqlx::postgres::PgRow) -> Result<Finished, sqlx::Error> {
    let finished = Finished { ready: ready_of(row), ..Finished::default() };
    if !row.get::<bool, _>("needs_end") {
        return Ok(finished);
    }
    Ok(finished.merge(end_run(&mut *pool.acquire().await?, run_id).await?))
}

/// Ends an active run with nothing open, in a transaction under its row's `FOR UPDATE`, with its
/// `run.ended` hook; then (it, or an inactive run, being of an exclusion group) starts the group's
/// next waiting run. Of concurrent callers, one ends the run.
pub async fn end_run(conn: &mut PgConnection, run_id: RunId) -> Result<Finished, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let locked: Option<String> = sqlx::query_scalar("SELECT status FROM chain_runs WHERE id = $1 FOR UPDATE")
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
    if locked.is_none() {
        return Ok(Finished::default());
    }
    exclude_settles(&mut tx, run_id).await?;
    finalize_run(&mut tx, run_id).await?;
    let run_ended = crate::health::run_ended_of_run_in_tx(&mut tx, run_id).await?;
    let ready = promote_after_end(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(Finished { ready, run_ended, ..Finished::default() })
}

/// The reconciler's safety net for a settle that never ran (its worker killed between the finish's
/// commit and the settle): every running run with a pending step whose prerequisites are all met,
/// or with nothing open, is settled. Returns each settle's result.
pub async fn settle_stranded(pool: &PgPool) -> Result<Vec<Finished>, sqlx::Error> {
    let runs: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT c.id FROM chain_runs c WHERE c.status = 'running' AND run_settle_due(c.id)")
            .fetch_all(pool)
            .await?;
    let mut settled = Vec::with_capacity(runs.len());
    for run in runs {
        settled.push(settle(pool, RunId(run)).await?);
    }
    Ok(settled)
}

/// When the run is no longer active and belongs to an exclusion group, starts the group's next
/// waiting run (see [`promote_waiting_in`]); its ready steps are returned.
async fn promote_after_end(conn: &mut PgConnection, run_id: RunId) -> Result<Vec<ReadyStep>, sqlx::Error> {
    let ended: Option<(i64, String)> = sqlx::query_as(
        "SELECT integration_id, exclusion_group FROM chain_runs
          WHERE id = $1 AND exclusion_group IS NOT NULL AND status NOT IN ('queued', 'running')",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?;
    match ended {
        Some((integration_id, group)) => promote_waiting_in(conn, integration_id, &group).await,
        None => Ok(vec![]),
    }
}
