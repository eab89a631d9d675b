//! Queue state kept in PostgreSQL: pauses (checked by every dispatcher under the queue's dispatch
//! lock), steps blocked behind a busy entity lease, and what each worker is running; and what it
//! adds to a queue's depth in Redis ([`DepthFacts`]: paused, blocked, runnable).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::StoreError;
use crate::queue::{QueueClient, QueueDepth, QueueError};

/// Pauses `queue` (`namespaced_queue` is its Redis name, which keys the dispatch lock); false if it
/// was paused already.
pub async fn pause(pool: &PgPool, queue: &str, namespaced_queue: &str, by: &str) -> Result<bool, StoreError> {
    // Taken under the dispatch lock: once this returns, no dispatcher pushes to the queue.
    let mut tx = begin_dispatch(pool, namespaced_queue).await?;
    let n = sqlx::query("INSERT INTO queue_pauses (queue, paused_by) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(queue)
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

/// Resumes `queue`; false if it was not paused.
pub async fn resume(pool: &PgPool, queue: &str) -> Result<bool, StoreError> {
    let n = sqlx::query("DELETE FROM queue_pauses WHERE queue = $1").bind(queue).execute(pool).await?.rows_affected();
    Ok(n == 1)
}

/// The per-queue dispatch lock's key (`pg_advisory_xact_lock`): FNV-1a of
/// `syncfleet.dispatch:{namespaced_queue}`, so every process computes the same one.
pub fn dispatch_lock_id(namespaced_queue: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "syncfleet.dispatch:".bytes().chain(namespaced_queue.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// A transaction holding `namespaced_queue`'s dispatch lock, taken with its `BEGIN` in one round
/// trip (the key is a number, written into the statement).
pub async fn begin_dispatch(
    pool: &PgPool,
    namespaced_queue: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let id = dispatch_lock_id(namespaced_queue);
    pool.begin_with(sqlx::AssertSqlSafe(format!("BEGIN; SELECT pg_advisory_xact_lock({id})"))).await
}

pub async fn paused(pool: &PgPool) -> Result<BTreeSet<String>, StoreError> {
    let v: Vec<String> = sqlx::query_scalar("SELECT queue FROM queue_pauses").fetch_all(pool).await?;
    Ok(v.into_iter().collect())
}

/// At most this many job ids of lease-blocked steps per queue are looked up in Redis; past it,
/// `runnable` counts the rest as runnable (it may overstate, never understate, what workers can run).
pub const BLOCKED_JOBS_MAX: i64 = 5_000;

/// What PostgreSQL adds to the depth of the queues in Redis, read in one statement per part.
#[derive(Debug, Clone, Default)]
pub struct DepthFacts {
    pub paused: BTreeSet<String>,
    /// Ready steps per queue whose entity a running step holds (they wait for its lease).
    pub blocked: BTreeMap<String, i64>,
    /// The task ids of those blocked steps that were dispatched to Redis, per queue (at most
    /// [`BLOCKED_JOBS_MAX`]).
    pub blocked_jobs: BTreeMap<String, Vec<String>>,
}

/// Pauses and lease-blocked ready steps of every queue.
pub async fn depth_facts(pool: &PgPool) -> Result<DepthFacts, StoreError> {
    let paused = paused(pool).await?;
    let rows: Vec<(String, i64, Vec<String>)> = sqlx::query_as(
        "SELECT queue, count(*),
                coalesce((array_agg(job_id) FILTER (WHERE dispatched_at IS NOT NULL AND job_id IS NOT NULL))[1:$1],
                         '{}')
           FROM step_runs
          WHERE status = 'ready'
            AND entity_key IN (SELECT entity_key FROM step_runs WHERE status = 'running')
          GROUP BY queue",
    )
    .bind(BLOCKED_JOBS_MAX as i32)
    .fetch_all(pool)
    .await?;
    let mut facts = DepthFacts { paused, ..DepthFacts::default() };
    for (queue, n, jobs) in rows {
        facts.blocked.insert(queue.clone(), n);
        facts.blocked_jobs.insert(queue, jobs);
    }
    Ok(facts)
}

/// How many of `ids` are due now in queue `q`: scheduled with run-at ≤ `now` (epoch s), or in the
/// active list; the same "ready" as `QueueClient::depth`.
const DUE_AMONG_LUA: &str = r#"
local q = ARGV[1]
local now = tonumber(ARGV[2])
local active = {}
for _, id in ipairs(redis.call('LRANGE', q .. ':active', 0, 99999)) do
  active[id] = true
end
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', q .. ':scheduled', id)
  if active[id] or (score and tonumber(score) <= now) then
    n = n + 1
  end
end
return n
"#;
static DUE_AMONG_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(DUE_AMONG_LUA));

impl DepthFacts {
    /// Completes `d`, one queue's depth as Redis holds it: `paused`, `blocked`, and `runnable` =
    /// `ready` less the due jobs of blocked steps (looked up in Redis), never negative.
    pub async fn complete(&self, queues: &QueueClient, mut d: QueueDepth) -> Result<QueueDepth, QueueError> {
        d.paused = self.paused.contains(&d.queue);
        d.blocked = self.blocked.get(&d.queue).copied().unwrap_or(0);
        let jobs = self.blocked_jobs.get(&d.queue).map(Vec::as_slice).unwrap_or_default();
        let due_blocked = if jobs.is_empty() || d.ready == 0 {
            0
        } else {
            let lua = &*DUE_AMONG_SCRIPT;
            let mut script = lua.prepare_invoke();
            script.arg(queues.queue_name(&d.queue)).arg(Utc::now().timestamp());
            for id in jobs {
                script.arg(id);
            }
            let n: i64 = script.invoke_async(&mut queues.connection()).await?;
            n
        };
        d.runnable = (d.ready - due_blocked).max(0);
        Ok(d)
    }
}

/// A step a worker is running now.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunningStep {
    pub worker: String,
    pub run_id: uuid::Uuid,
    pub chain: String,
    pub step: String,
    pub shard: i32,
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
}

pub async fn running_steps(pool: &PgPool) -> Result<Vec<RunningStep>, StoreError> {
    Ok(sqlx::query_as::<_, RunningStep>(
        "SELECT s.worker, s.run_id, r.chain, s.step, s.shard, s.attempts AS attempt, s.started_at
           FROM step_runs s JOIN chain_runs r ON r.id = s.run_id
          WHERE s.status = 'running' AND s.worker IS NOT NULL
          ORDER BY s.started_at",
    )
    .fetch_all(pool)
    .await?)
}
