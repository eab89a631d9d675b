//! Bounded dispatch: PostgreSQL keeps every ready step; at most `cap` tasks per queue wait in
//! Redis (apalis-redis 1.0 stops fetching at about 8,000 due tasks). Called by workers for the
//! steps they just made ready and by the producer's loop for everything else; an advisory lock
//! per queue makes the cap exact across all of them.

use sqlx::PgPool;
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
    let mut tx = pool.begin().await?;
    // One dispatcher per queue at a time (producers and workers alike): reading the depth and
    // pushing into the room it leaves must not interleave, or two dispatchers fill it twice.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(crate::queues::dispatch_lock_key(&queues.queue_name(queue)))
        .execute(&mut *tx)
        .await?;
    // A paused queue gets nothing new; its ready steps stay in PostgreSQL until it resumes.
    if crate::queues::is_paused(&mut tx, queue).await? {
        return Ok(0);
    }
    let waiting = queues.waiting(queue).await?;
    let room = cap.saturating_sub(waiting);
    if room == 0 {
        return Ok(0);
    }
    let due = runs::take_due(&mut tx, queue, only, room as i64).await?;
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
                },
            ))
        })
        .collect();
    // Push before the commit: a crash in between leaves the steps undispatched, and the next push
    // under the same task ids is a no-op in Redis.
    queues.push(queue, &jobs).instrument(crate::telemetry::send_span(queue, &jobs)).await?;
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    runs::mark_dispatched(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(ids.len())
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
