//! Failure alerts of required steps, claimed once across the fleet (sent by the producer's
//! `alerts.rs` from the reconciler).
//!
//! Tables: `step_runs` (its alert columns: `alerted_at`, migration `0008`; `alert_attempts`,
//! `alert_retry_at`, `alert_pending`, `0011`), read with `chain_runs` and `integrations` for the
//! chain and the integration's name. A producer claims a failure with `UPDATE … SET alerted_at =
//! now() … RETURNING` over rows locked `FOR UPDATE SKIP LOCKED`, so no two producers claim the same
//! one; a step that fails again after a resume (newer `finished_at`) is claimed again.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// One failed required step: the alert webhook's JSON body and the mail's content.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Alert {
    #[serde(skip)]
    pub id: i64,
    /// Deliveries tried, this one included.
    #[serde(skip)]
    pub alert_attempts: i32,
    /// Channels still to deliver (`None`: every configured one).
    #[serde(skip)]
    pub alert_pending: Option<Vec<String>>,
    pub chain: String,
    pub integration: String,
    pub run_id: Uuid,
    pub step: String,
    pub shard: i32,
    pub attempts: i32,
    pub error: Option<String>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Claims at most `limit` failures to alert, oldest failure first: failed required steps not yet
/// alerted since they last failed (a fresh claim: attempt 1, every channel pending), and alerts
/// whose retry is due (attempts + 1, the channels still pending).
pub async fn claim_due(pool: &PgPool, limit: i64) -> Result<Vec<Alert>, StoreError> {
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT id FROM step_runs
             WHERE status = 'failed' AND required AND (alerted_at IS NULL OR alerted_at < finished_at)
             UNION
             SELECT id FROM step_runs WHERE alert_retry_at <= now()
         ), locked AS (
             SELECT s.id, (s.alerted_at IS NULL OR s.alerted_at < s.finished_at) AS fresh FROM step_runs s
             WHERE s.id IN (SELECT id FROM due) AND s.status = 'failed'
               -- Again on the row as locked: `due` read an older snapshot, and a producer that
               -- claimed the row since (and committed) must not have it claimed twice.
               AND ((s.required AND (s.alerted_at IS NULL OR s.alerted_at < s.finished_at))
                    OR s.alert_retry_at <= now())
             ORDER BY s.id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE step_runs s SET alerted_at = now(), alert_retry_at = NULL,
                    alert_attempts = CASE WHEN l.fresh THEN 1 ELSE s.alert_attempts + 1 END,
                    alert_pending = CASE WHEN l.fresh THEN NULL ELSE s.alert_pending END
             FROM locked l WHERE s.id = l.id
             RETURNING s.id, s.alert_attempts, s.alert_pending, s.run_id, s.step, s.shard, s.attempts, s.error,
                       s.finished_at
         )
         SELECT c.id, c.alert_attempts, c.alert_pending, r.chain, i.name AS integration, c.run_id, c.step, c.shard,
                c.attempts, c.error, c.finished_at
         FROM claimed c JOIN chain_runs r ON r.id = c.run_id JOIN integrations i ON i.id = r.integration_id
         ORDER BY c.finished_at",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Schedules another delivery of `alert` on the `failed` channels in `delay`, unless it was claimed
/// again since (its `alert_attempts` moved).
pub async fn retry_later(pool: &PgPool, alert: &Alert, delay: Duration, failed: &[String]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE step_runs SET alert_retry_at = now() + $2, alert_pending = $3
         WHERE id = $1 AND alert_attempts = $4",
    )
    .bind(alert.id)
    .bind(delay)
    .bind(failed)
    .bind(alert.alert_attempts)
    .execute(pool)
    .await?;
    Ok(())
}
