//! Queue state kept in PostgreSQL: pauses (checked by every dispatcher under the queue's dispatch
//! lock), steps blocked behind a busy entity lease, and what each worker is running.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// Pauses `queue` (`namespaced_queue` is its Redis name, which keys the dispatch lock); false if it
/// was paused already.
pub async fn pause(pool: &PgPool, queue: &str, namespaced_queue: &str, by: &str) -> Result<bool, StoreError> {
    // Taken under the dispatch lock: once this returns, no dispatcher pushes to the queue.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(dispatch_lock_key(namespaced_queue))
        .execute(&mut *tx)
        .await?;
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

/// The key of the per-queue dispatch lock (`pg_advisory_xact_lock(hashtext(key))`).
pub fn dispatch_lock_key(namespaced_queue: &str) -> String {
    format!("syncfleet.dispatch:{namespaced_queue}")
}

pub async fn is_paused(conn: &mut PgConnection, queue: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)").bind(queue).fetch_one(conn).await
}

pub async fn paused(pool: &PgPool) -> Result<BTreeSet<String>, StoreError> {
    let v: Vec<String> = sqlx::query_scalar("SELECT queue FROM queue_pauses").fetch_all(pool).await?;
    Ok(v.into_iter().collect())
}

/// Ready steps per queue whose entity is held by a running step (they wait for its lease).
pub async fn blocked_by_lease(pool: &PgPool) -> Result<BTreeMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT queue, count(*) FROM step_runs
          WHERE status = 'ready'
            AND entity_key IN (SELECT entity_key FROM step_runs WHERE status = 'running')
          GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
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
