//! Bounded dispatch: PostgreSQL keeps every ready step; at most `cap` tasks per queue wait in
//! Redis (apalis-redis 1.0 stops fetching at about 8,000 due tasks). Called by workers for the
//! steps they just made ready and by the producer's loop for everything else; an advisory lock
//! per queue makes the cap exact across all of them.
//!
//! Also the delivery marks on `step_runs` that dispatch and the reconciler's healing read and
//! write: which ready steps are due ([`take_due`]), which were pushed (`dispatched_at`), which
//! were pushed long ago and may be lost in Redis ([`dispatched_before`], [`redeliver`]).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::{
    ids::{RunId, StepName},
    job::JobPayload,
    queue::{QueueClient, QueueError},
    runs,
};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Pushes due ready steps of `queue` (optionally only `only`) while the queue has room.
/// Returns how many were pushed.
pub async fn dispatch(
    pool: &PgPool,
    queues: &QueueClient,
    queue: &str,
    cap: usize,
    only: Option<&[i64]>,
) -> Result<usize, DispatchError> {
    // One dispatcher per queue at a time (producers and workers alike): reading the depth and
    // pushing into the room it leaves must not interleave, or two dispatchers fill it twice.
    let mut tx = crate::queues::begin_dispatch(pool, &queues.queue_name(queue)).await?;
    let due = match only {
        // The few steps a transition or a trigger just made ready are taken while the depth is
        // read, and what exceeds the room is given back: one round trip fewer before a worker
        // hears of them. Nothing else pushes to the queue meanwhile (the lock).
        Some(ids) => {
            let (due, waiting) =
                tokio::join!(take_due(&mut tx, queue, only, cap.min(ids.len()) as i64), queues.waiting(queue));
            let (mut due, room) = (due?, cap.saturating_sub(waiting?));
            if due.len() > room {
                let back: Vec<i64> = due.split_off(room).iter().map(|d| d.id).collect();
                sqlx::query("UPDATE step_runs SET dispatched_at = NULL WHERE id = ANY($1)")
                    .bind(&back)
                    .execute(&mut *tx)
                    .await?;
            }
            due
        }
        None => {
            let room = cap.saturating_sub(queues.waiting(queue).await?);
            if room == 0 {
                return Ok(0);
            }
            take_due(&mut tx, queue, None, room as i64).await?
        }
    };
    if due.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<(String, JobPayload)> = due
        .iter()
        .filter_map(|d| {
            let step = StepName::parse(&d.step).ok()?;
            Some((
                d.job_id.clone(),
                JobPayload::StepV1 {
                    run_id: RunId(d.run_id),
                    step_run_id: d.id,
                    step,
                    shard: d.shard,
                    job_id: d.job_id.clone(),
                    trace_context: d.trace_context.clone(),
                    due_at_ms: d.not_before.map(|t| t.timestamp_millis()),
                    entity: Some(d.entity_key.clone()),
                },
            ))
        })
        .collect();
    // Push before the commit (the steps were marked dispatched by `take_due`, in this transaction):
    // a crash in between leaves the steps undispatched, and the next push under the same task ids
    // is a no-op in Redis.
    queues.push(queue, &jobs).instrument(crate::telemetry::send_span(queue, &jobs)).await?;
    tx.commit().await?;
    Ok(due.len())
}

/// Dispatches steps a transition just made ready, grouped by queue.
pub async fn dispatch_ready(
    pool: &PgPool,
    queues: &QueueClient,
    cap: usize,
    ready: &[runs::ReadyStep],
) -> Result<usize, DispatchError> {
    let mut by_queue: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for r in ready {
        by_queue.entry(r.queue.as_str()).or_default().push(r.id);
    }
    let mut n = 0;
    for (queue, ids) in by_queue {
        n += dispatch(pool, queues, queue, cap, Some(&ids)).await?;
    }
    Ok(n)
}

/// Ready steps to push to Redis: undispatched and due, oldest first; none while the queue is paused
/// (its ready steps stay in PostgreSQL until it resumes). Locks them (skip locked) in the caller's
/// transaction so concurrent dispatchers take disjoint sets, and marks them dispatched there
/// (committed only after the push).
async fn take_due(
    conn: &mut PgConnection,
    queue: &str,
    only: Option<&[i64]>,
    limit: i64,
) -> Result<Vec<DueStep>, sqlx::Error> {
    let mut due = sqlx::query_as::<_, DueStep>(
        "WITH due AS (
             SELECT id FROM step_runs
              WHERE status = 'ready' AND dispatched_at IS NULL AND queue = $1 AND not_before <= now()
                AND ($2::bigint[] IS NULL OR id = ANY($2))
                AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)
              ORDER BY not_before, id LIMIT $3
              FOR UPDATE SKIP LOCKED)
         UPDATE step_runs s SET dispatched_at = now() FROM due WHERE s.id = due.id
         RETURNING s.id, s.run_id, s.step, s.shard, s.job_id, s.not_before, s.entity_key,
                   (SELECT r.trace_context FROM chain_runs r WHERE r.id = s.run_id) AS trace_context",
    )
    .bind(queue)
    .bind(only)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    due.sort_by_key(|a| (a.not_before, a.id));
    Ok(due)
}

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

/// Dispatched ready steps older than `age`: candidates for a lost Redis message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DispatchedStep {
    pub id: i64,
    pub queue: String,
    pub job_id: String,
}

pub async fn dispatched_before(pool: &PgPool, age: Duration, limit: i64) -> Result<Vec<DispatchedStep>, sqlx::Error> {
    sqlx::query_as::<_, DispatchedStep>(
        "SELECT id, queue, job_id FROM step_runs
          WHERE status = 'ready' AND dispatched_at < now() - make_interval(secs => $1)
          ORDER BY dispatched_at LIMIT $2",
    )
    .bind(age.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Marks steps for re-dispatch; `new_id` also gives them a fresh task id (the old one is spent
/// in Redis: finished there, so a push under it would be ignored).
pub async fn redeliver(pool: &PgPool, ids: &[i64], new_id: bool) -> Result<u64, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE step_runs SET dispatched_at = NULL,
                lease_waits = lease_waits + CASE WHEN $2 THEN 1 ELSE 0 END,
                job_id = CASE WHEN $2 THEN step_job_id(run_id, step, shard, sharded, attempts + 1, lease_waits + 1)
                              ELSE job_id END
          WHERE id = ANY($1) AND status = 'ready' AND dispatched_at IS NOT NULL",
    )
    .bind(ids)
    .bind(new_id)
    .execute(pool)
    .await?;
    Ok(n.rows_affected())
}
