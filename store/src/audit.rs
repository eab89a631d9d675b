//! The audit trail: every mutation made through the API or the CLI (who, what, when). The row is
//! written in the mutation's own transaction ([`Audited`]): a mutation that fails leaves no row,
//! and a row never records a mutation that did not commit.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Transaction};

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

/// Writes one audit row on `conn` (a transaction's connection, so it commits with the mutation).
pub async fn record(
    conn: impl PgExecutor<'_>,
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
        .execute(conn)
        .await?;
    Ok(())
}

/// A mutation and its audit row in one transaction: [`Audited::begin`], run the mutation's store
/// functions on [`Audited::conn`], then [`Audited::commit`] writes the row and commits both.
/// Dropped without a commit (the mutation failed), nothing of either is kept.
pub struct Audited {
    tx: Transaction<'static, Postgres>,
}

impl Audited {
    pub async fn begin(pool: &PgPool) -> Result<Audited, StoreError> {
        Ok(Audited { tx: pool.begin().await? })
    }

    /// The transaction's connection, for the mutation's statements.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Writes the audit row and commits it with the mutation.
    pub async fn commit(
        mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        record(&mut *self.tx, actor, action, target, detail).await?;
        self.tx.commit().await?;
        Ok(())
    }
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
