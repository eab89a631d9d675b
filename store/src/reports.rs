//! Stored reports, as the admin API lists and serves them.
//!
//! Tables: `reports` (migration `0008`: kind, integration, period, recipient, the addresses it was
//! mailed to, the HTML), read with `integrations` for the integration's name. Report steps (such as
//! the partner pack's weekly reports) write the rows; `report_deliveries` (`0011`) is theirs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::StoreError;

/// A stored report, without its HTML.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct ReportInfo {
    pub id: i64,
    /// `pam_weekly`, `executive_weekly`, …
    pub kind: String,
    pub integration: String,
    /// The period covered, e.g. `2025-W14`.
    pub period: String,
    /// Who the report is for (a manager's email or name, `executive`).
    pub recipient: String,
    /// The addresses it was mailed to.
    pub sent_to: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// Reports newest first, at most `limit`, only of `kind` and of `integration` when given.
pub async fn list(
    pool: &PgPool,
    kind: Option<&str>,
    integration: Option<&str>,
    limit: i64,
) -> Result<Vec<ReportInfo>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.id, r.kind, i.name AS integration, r.period, r.recipient, r.sent_to, r.created_at
         FROM reports r JOIN integrations i ON i.id = r.integration_id
         WHERE ($1::text IS NULL OR r.kind = $1) AND ($2::text IS NULL OR i.name = $2)
         ORDER BY r.created_at DESC, r.id DESC LIMIT $3",
    )
    .bind(kind)
    .bind(integration)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The HTML of report `id`; `None` when there is no such report.
pub async fn html(pool: &PgPool, id: i64) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT html FROM reports WHERE id = $1").bind(id).fetch_optional(pool).await?)
}
