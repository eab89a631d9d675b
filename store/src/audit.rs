//! The audit trail: every mutation made through the API or the CLI (who, what, when).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::StoreError;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `token:<name>` for the API, `cli:<user>` for the CLI.
    pub actor: String,
    /// What was done, e.g. `run.trigger`, `queue.pause`, `schedule.set`.
    pub action: String,
    /// What it was done to: a run id, a queue, `chain/integration`, an integration or token name.
    pub target: String,
    pub detail: serde_json::Value,
}

pub async fn record(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(pool)
        .await?;
    Ok(())
}

/// Newest first.
pub async fn list(pool: &PgPool, limit: i64, offset: i64) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(sqlx::query_as::<_, AuditEntry>(
        "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1 OFFSET $2",
    )
    .bind(limit.clamp(1, 1000))
    .bind(offset.max(0))
    .fetch_all(pool)
    .await?)
}
