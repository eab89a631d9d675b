//! Schedules stored through the admin API and the CLI.
//!
//! Tables: `schedules` (migration `0001`: one row per (chain, integration), an interval or a cron
//! expression, `enabled`, who set it), read with `integrations` for the integration's name. The
//! producer resolves them against the config and the packs' defaults (`producer/src/ops/schedules.rs`);
//! the minimum interval is checked there before [`put`].

use sqlx::PgPool;

use super::StoreError;

/// A `schedules` row, with its integration's name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredSchedule {
    pub chain: String,
    pub integration: String,
    pub interval_secs: Option<i32>,
    pub cron: Option<String>,
    pub enabled: bool,
    pub updated_by: String,
}

/// Every stored schedule (enabled or not), in no particular order.
pub async fn list(pool: &PgPool) -> Result<Vec<StoredSchedule>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.chain, i.name AS integration, s.interval_secs, s.cron, s.enabled, s.updated_by
           FROM schedules s JOIN integrations i ON i.id = s.integration_id",
    )
    .fetch_all(pool)
    .await?)
}

/// Creates or replaces the schedule of (`chain`, `integration_id`). Exactly one of `interval_secs`
/// and `cron` is set (the table checks it).
pub async fn put(
    conn: impl sqlx::PgExecutor<'_>,
    chain: &str,
    integration_id: i64,
    interval_secs: Option<i32>,
    cron: Option<&str>,
    enabled: bool,
    updated_by: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO schedules (chain, integration_id, interval_secs, cron, enabled, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (chain, integration_id) DO UPDATE SET interval_secs = EXCLUDED.interval_secs,
             cron = EXCLUDED.cron, enabled = EXCLUDED.enabled, updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(chain)
    .bind(integration_id)
    .bind(interval_secs)
    .bind(cron)
    .bind(enabled)
    .bind(updated_by)
    .execute(conn)
    .await?;
    Ok(())
}
