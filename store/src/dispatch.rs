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
    runs::{self, DueStep},
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
        // The few steps a transition or a trigger just made ready: the push reads the room itself.
        Some(ids) => take_due(&mut tx, queue, only, cap.min(ids.len()) as i64).await?,
        None => {
            let room = cap.saturating_sub(queues.waiting(queue).await?);
            if room == 0 {
                tx.rollback().await?;
                return Ok(0);
            }
            take_due(&mut tx, queue, None, room as i64).await?
        }
    };
    if due.is_empty() {
        // The lock goes now, not once the pool gets the connection back.
        tx.rollback().await?;
        return Ok(0);
    }
    let jobs = jobs(&due);
    // Push before the commit (the steps were marked dispatched by `take_due`, in this transaction):
    // a crash in between leaves the steps undispatched, and the next push under the same task ids
    // is a no-op in Redis. What the room did not take is given back before the commit. Nothing
    // else pushes to the queue meanwhile (the lock).
    let pushed = queues.push(queue, cap, &jobs).instrument(crate::telemetry::send_span(queue, &jobs)).await?;
    if pushed < due.len() {
        give_back(&mut tx, &due, &jobs[..pushed]).await?;
    }
    tx.commit().await?;
    Ok(pushed)
}

/// The step jobs of `due`, under their fixed task ids.
fn jobs(due: &[DueStep]) -> Vec<(String, JobPayload)> {
    due.iter()
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
        .collect()
}

/// A trigger's outcome: the run, and how its root steps reached Redis.
#[derive(Debug)]
pub struct Triggered {
    pub run_id: RunId,
    /// Root steps made ready (none while the run waits behind another run of its group).
    pub ready: usize,
    /// Why pushing them failed, if it did: the producer's loop or the reconciler pushes them later.
    pub push_error: Option<DispatchError>,
}

/// Creates a run and pushes its root steps. When they are on one queue and the chain has no
/// exclusion group (the common case), the statement that creates the run also tries to take the
/// queue's dispatch lock for the session; with it, it marks the root steps dispatched, and they
/// are pushed right after its commit, the lock held until then so the cap stays exact: one commit
/// stands between a trigger and a worker. That commit does not wait for the disk (PostgreSQL's
/// `fdatasync`, a third of a millisecond): the job is pushed as soon as the run can be read, and
/// the disk is waited for when the lock is let go, before this returns. Every later commit of
/// the run (the worker's claim first) waits for the disk, and its WAL follows the trigger's, so
/// nothing durable ever rests on a run that is not; should PostgreSQL crash before the wait
/// ends, the caller gets [`crate::StoreError::Unconfirmed`], and a job already pushed for the
/// lost run is stale (its job id names the run, and no step has it). A crash between the commit
/// and the push leaves the steps dispatched and missing from Redis: the reconciler's
/// lost-message healing pushes them again.
/// When another dispatcher holds the lock (a burst of triggers), or the chain is of another
/// shape, the run is created, then its ready steps dispatched as any transition's.
pub async fn create_and_push(
    pool: &PgPool,
    queues: &QueueClient,
    cap: usize,
    req: runs::TriggerRequest<'_>,
) -> Result<Triggered, crate::StoreError> {
    let roots: std::collections::BTreeSet<&str> = req.chain.roots().map(|s| s.queue.as_str()).collect();
    let (true, Some(&queue)) = (req.exclusion_group.is_none() && roots.len() == 1, roots.first()) else {
        let (run_id, ready) = runs::create_run(pool, req).await?;
        let push_error = dispatch_ready(pool, queues, cap, &ready).await.err();
        return Ok(Triggered { run_id, ready: ready.len(), push_error });
    };
    let mut lock = SessionLock::new(pool, &queues.queue_name(queue)).await?;
    let key = lock.id;
    let new = match runs::create_run_dispatching(lock.conn(), &req, queue, key).await {
        Ok(new) => new,
        Err(e) => {
            lock.release_after_error().await;
            return Err(match e {
                runs::CreateError::Refused(e) => e,
                runs::CreateError::Insert(e) => runs::insert_error(pool, &req, e).await,
            });
        }
    };
    let ready = new.ready.len() + new.due.len();
    if !new.locked() {
        lock.never_taken();
        let push_error = dispatch_ready(pool, queues, cap, &new.ready).await.err();
        return Ok(Triggered { run_id: new.id, ready, push_error });
    }
    // Under the lock: the room is read and filled by no one else, in one round trip (the push).
    let due = new.due;
    let mut push_error = None;
    let jobs = jobs(&due);
    let pushed = match queues.push(queue, cap, &jobs).instrument(crate::telemetry::send_span(queue, &jobs)).await {
        Ok(pushed) => pushed,
        Err(e) => {
            push_error = Some(DispatchError::from(e));
            0
        }
    };
    if pushed < due.len() {
        // Undispatched again for the producer's loop, rather than left to the reconciler's wait; a
        // job that did reach Redis is not pushed twice (same task id). Should this fail too, the
        // reconciler finds them missing from Redis.
        give_back(lock.conn(), &due, &jobs[..pushed]).await.ok();
    }
    // The statement committed without waiting for the disk, so that the push went out at once;
    // the caller hears of the run only once it is on disk.
    if let Err(e) = lock.release_on_disk().await {
        return Err(crate::StoreError::Unconfirmed { run_id: new.id.to_string(), source: e });
    }
    Ok(Triggered { run_id: new.id, ready, push_error })
}

/// Clears the dispatch marks of the steps of `due` that are not among the `pushed` jobs.
async fn give_back(
    conn: &mut PgConnection,
    due: &[DueStep],
    pushed: &[(String, JobPayload)],
) -> Result<(), sqlx::Error> {
    let pushed: std::collections::HashSet<&str> = pushed.iter().map(|(id, _)| id.as_str()).collect();
    let ids: Vec<i64> = due.iter().filter(|d| !pushed.contains(d.job_id.as_str())).map(|d| d.id).collect();
    sqlx::query("UPDATE step_runs SET dispatched_at = NULL WHERE id = ANY($1) AND status = 'ready'")
        .bind(&ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// A pooled connection that may hold a queue's dispatch lock as a session lock. Released by
/// [`SessionLock::release_on_disk`] or [`SessionLock::release_after_error`] (or given back
/// untouched by [`SessionLock::never_taken`]); dropped otherwise (an error, a cancelled future),
/// the connection leaves the pool and closes, and PostgreSQL releases the lock with its session.
struct SessionLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    id: i64,
}

impl SessionLock {
    /// A connection for the lock of `namespaced_queue`, not taken yet: the caller's statement
    /// takes it.
    async fn new(pool: &PgPool, namespaced_queue: &str) -> Result<SessionLock, sqlx::Error> {
        let id = crate::queues::dispatch_lock_id(namespaced_queue);
        Ok(SessionLock { conn: Some(pool.acquire().await?), id })
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("held until released")
    }

    /// After a failed statement, which may or may not have taken the lock: lets it go if this
    /// session holds it, and gives the connection back to the pool.
    async fn release_after_error(mut self) {
        if sqlx::query("SELECT pg_advisory_unlock($1)").bind(self.id).execute(self.conn()).await.is_ok() {
            drop(self.conn.take());
        }
    }

    /// Lets the lock go in a transaction that writes a WAL record of its own (a logical
    /// decoding message, prefix `syncfleet`) and commits waiting for the disk: the WAL of every
    /// earlier commit, the trigger's among them, is on disk when this returns `Ok`.
    async fn release_on_disk(mut self) -> Result<(), sqlx::Error> {
        let unlocked: bool = sqlx::query_scalar(
            "SELECT pg_advisory_unlock($1) FROM pg_logical_emit_message(true, 'syncfleet', 'trigger')",
        )
        .bind(self.id)
        .fetch_one(self.conn())
        .await?;
        if unlocked {
            drop(self.conn.take());
        } else {
            // Only a proxy that hands each transaction its own server connection (PgBouncer's
            // transaction pooling) does this: the lock stays on another session. Dropped, this
            // connection closes; the lock goes when that other session does.
            tracing::error!(
                "The queue's dispatch lock was not held at its release: syncfleet needs session-level \
                 connections to PostgreSQL, not a transaction-pooling proxy."
            );
        }
        Ok(())
    }

    /// The statement did not take the lock: the connection goes back to the pool as it is.
    fn never_taken(mut self) {
        drop(self.conn.take());
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
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
