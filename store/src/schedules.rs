//! Schedules stored through the admin API and the CLI.
//!
//! Tables: `schedules` (migration `0001`, modes `0016`: one row per (chain, integration, mode), an
//! interval or a crontab expression read in `tz`, the runs' `step_modes`, `enabled`, who set it),
//! read with `integrations` for the integration's name. Mode `all` is a switched-off row that stops
//! every schedule of its (chain, integration). The producer resolves them against the config and
//! the packs' defaults (`producer/src/ops/schedules.rs`); the minimum interval is checked there
//! before [`put`].

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::StoreError;

/// The `mode` of a stored row that switches off every schedule of its (chain, integration).
pub const ALL_MODES: &str = "all";

/// A `schedules` row, with its integration's name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredSchedule {
    pub chain: String,
    pub integration: String,
    /// `incremental`, `full` or [`ALL_MODES`] (switched off only).
    pub mode: String,
    pub interval_secs: Option<i32>,
    pub cron: Option<String>,
    /// IANA time zone of `cron`.
    pub tz: String,
    #[sqlx(json)]
    pub step_modes: BTreeMap<String, String>,
    pub enabled: bool,
    pub updated_by: String,
}

/// Every stored schedule (enabled or not), in no particular order.
pub async fn list(pool: &PgPool) -> Result<Vec<StoredSchedule>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.chain, i.name AS integration, s.mode, s.interval_secs, s.cron, s.tz, s.step_modes, s.enabled,
                s.updated_by
           FROM schedules s JOIN integrations i ON i.id = s.integration_id",
    )
    .fetch_all(pool)
    .await?)
}

/// What [`put`] stores for one (chain, integration, mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow<'a> {
    pub chain: &'a str,
    pub integration_id: i64,
    /// `incremental`, `full`, or [`ALL_MODES`] with `enabled` false.
    pub mode: &'a str,
    pub interval_secs: Option<i32>,
    pub cron: Option<&'a str>,
    pub tz: &'a str,
    pub step_modes: &'a BTreeMap<String, String>,
    pub enabled: bool,
    pub updated_by: &'a str,
}

/// Creates or replaces the schedule of (`chain`, `integration_id`, `mode`). Exactly one of
/// `interval_secs` and `cron` is set (the table checks it). Switching off every mode replaces the
/// chain's other rows for the integration; a schedule switched on ends such a switch-off.
pub async fn put(conn: &mut sqlx::PgConnection, row: &ScheduleRow<'_>) -> Result<(), StoreError> {
    if row.mode == ALL_MODES {
        sqlx::query("DELETE FROM schedules WHERE chain = $1 AND integration_id = $2 AND mode <> 'all'")
            .bind(row.chain)
            .bind(row.integration_id)
            .execute(&mut *conn)
            .await?;
    } else if row.enabled {
        sqlx::query("DELETE FROM schedules WHERE chain = $1 AND integration_id = $2 AND mode = 'all'")
            .bind(row.chain)
            .bind(row.integration_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO schedules (chain, integration_id, mode, interval_secs, cron, tz, step_modes, enabled, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (chain, integration_id, mode) DO UPDATE SET interval_secs = EXCLUDED.interval_secs,
             cron = EXCLUDED.cron, tz = EXCLUDED.tz, step_modes = EXCLUDED.step_modes, enabled = EXCLUDED.enabled,
             updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(row.chain)
    .bind(row.integration_id)
    .bind(row.mode)
    .bind(row.interval_secs)
    .bind(row.cron)
    .bind(row.tz)
    .bind(sqlx::types::Json(row.step_modes))
    .bind(row.enabled)
    .bind(row.updated_by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
