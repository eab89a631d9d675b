//! Operator tools for data repair: what a full run's sweep would deactivate now
//! ([`sweep_preview`]) and moving an entity's incremental cursor ([`reset_cursor`]). Both run on a
//! caller's connection, so the caller's audit row commits with them (`audit::Audited`).
//!
//! **What "would deactivate now" means without reading the upstream.** A full run's sweep
//! deactivates the active rows its read did not see (`last_seen_run` is not the run) that were not
//! written since the read began (`updated_at`). The tables record when each row was last seen, so
//! the preview answers: the active rows of the chain's synced tables that the last full read of the
//! chain did not see, and that no run since has seen or written. With the upstream unchanged since
//! that read, a full run now deactivates exactly these; a record deleted upstream after it shows up
//! only after the next full read (a refused sweep leaves the rows active and listed here).
//!
//! The chain's synced tables are found from the data: the tables with the sync bookkeeping columns
//! that hold rows the last full read saw. Tables swept scope by scope (`ScopedSweep`) are listed by
//! the same rule, though their sweeps are decided per scope.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;

/// The last full read of a chain for one integration: its newest full run that ended `completed`
/// or `partial`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FullRead {
    pub run_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The guard lines its steps recorded (`; `-separated), e.g. `blocked: 20 of 100 active rows …`.
    pub guard: Option<String>,
}

/// One synced table's rows a full run would deactivate now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TablePreview {
    pub table: String,
    /// Active rows of the integration in the table.
    pub active: i64,
    /// Of those, the rows the last full read did not see (nor any run since).
    pub missing: i64,
    /// Their external ids, in order, at most the preview's limit.
    pub external_ids: Vec<String>,
}

/// The last full read of `chain` for the integration, if any.
pub async fn last_full_read(
    conn: &mut PgConnection,
    chain: &str,
    integration_id: i64,
) -> Result<Option<FullRead>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.id AS run_id, r.status, r.created_at, r.started_at, r.finished_at,
                (SELECT string_agg(s.guard, '; ' ORDER BY s.id) FROM step_runs s
                  WHERE s.run_id = r.id AND s.guard IS NOT NULL) AS guard
           FROM chain_runs r
          WHERE r.chain = $1 AND r.integration_id = $2 AND r.mode = 'full'
            AND r.status IN ('completed', 'partial') AND r.started_at IS NOT NULL
          ORDER BY r.created_at DESC LIMIT 1",
    )
    .bind(chain)
    .bind(integration_id)
    .fetch_optional(conn)
    .await?)
}

/// The synced tables (with `integration_id`, `external_id`, `is_active`, `last_seen_run` and
/// `updated_at`) holding rows of the integration that `read` saw, in name order; only `only` when
/// given (`None` for every one).
async fn tables_of_read(
    conn: &mut PgConnection,
    integration_id: i64,
    read: Uuid,
    only: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let candidates: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c
           JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
          WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
            AND c.column_name IN ('integration_id', 'external_id', 'is_active', 'last_seen_run', 'updated_at')
            AND ($1::text IS NULL OR c.table_name = $1)
          GROUP BY c.table_name HAVING count(DISTINCT c.column_name) = 5
          ORDER BY 1",
    )
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    let mut tables = vec![];
    for table in candidates {
        let seen: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE integration_id = $1 AND last_seen_run = $2)",
            quote_ident(&table)
        )))
        .bind(integration_id)
        .bind(read)
        .fetch_one(&mut *conn)
        .await?;
        if seen {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// Per synced table of `read` (or only `table`): the active rows of the integration that `read` did
/// not see, that no run created since has seen, and that were not written since it started: what a
/// full run deactivates now if the upstream is as `read` found it. At most `limit` ids per table.
pub async fn sweep_preview(
    conn: &mut PgConnection,
    integration_id: i64,
    read: &FullRead,
    table: Option<&str>,
    limit: i64,
) -> Result<Vec<TablePreview>, StoreError> {
    let mut out = vec![];
    for name in tables_of_read(conn, integration_id, read.run_id, table).await? {
        let t = quote_ident(&name);
        let (active, missing): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE {MISSING}) FROM {t} t LEFT JOIN chain_runs s ON s.id = t.last_seen_run
              WHERE t.integration_id = $1 AND t.is_active"
        )))
        .bind(integration_id)
        .bind(read.started_at)
        .bind(read.created_at)
        .fetch_one(&mut *conn)
        .await?;
        let external_ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t.external_id FROM {t} t LEFT JOIN chain_runs s ON s.id = t.last_seen_run
              WHERE t.integration_id = $1 AND t.is_active AND {MISSING}
              ORDER BY t.external_id LIMIT $4"
        )))
        .bind(integration_id)
        .bind(read.started_at)
        .bind(read.created_at)
        .bind(limit.clamp(0, 100_000))
        .fetch_all(&mut *conn)
        .await?;
        out.push(TablePreview { table: name, active, missing, external_ids });
    }
    Ok(out)
}

/// Not written since the read started (`$2`), and last seen by no run, or by a run created before
/// the read (`$3`).
const MISSING: &str = "t.updated_at < $2 AND (s.id IS NULL OR s.created_at < $3)";

/// Moves the incremental cursor of `entity` to `since` (`None`: removes it, so the next run reads
/// everything). Returns the value it had. An entity without a cursor is refused, naming the ones
/// the integration has: only an entity that was read can be reset.
pub async fn reset_cursor(
    conn: &mut PgConnection,
    integration_id: i64,
    entity: &str,
    since: Option<DateTime<Utc>>,
) -> Result<String, StoreError> {
    let previous: Option<String> =
        sqlx::query_scalar("SELECT value FROM cursors WHERE integration_id = $1 AND entity = $2 FOR UPDATE")
            .bind(integration_id)
            .bind(entity)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(previous) = previous else {
        let known: Vec<String> =
            sqlx::query_scalar("SELECT entity FROM cursors WHERE integration_id = $1 ORDER BY entity")
                .bind(integration_id)
                .fetch_all(&mut *conn)
                .await?;
        return Err(StoreError::NotFound(format!(
            "entity: no cursor for `{entity}` (cursors: {})",
            if known.is_empty() { "none yet".to_owned() } else { known.join(", ") }
        )));
    };
    match since {
        Some(t) => {
            sqlx::query(
                "UPDATE cursors SET value = $3, run_id = NULL, updated_at = now()
                  WHERE integration_id = $1 AND entity = $2",
            )
            .bind(integration_id)
            .bind(entity)
            .bind(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM cursors WHERE integration_id = $1 AND entity = $2")
                .bind(integration_id)
                .bind(entity)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(previous)
}

/// A table name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
