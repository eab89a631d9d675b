//! A synced table: its mapped columns and the statements the engine runs on it. One upsert statement
//! per batch (`INSERT … SELECT FROM UNNEST … ON CONFLICT … DO UPDATE … WHERE … IS DISTINCT FROM …`)
//! counts inserted / updated / unchanged from what it returns; a batch of rows not in the table yet
//! (a first load) is one `COPY` instead ([`Table::copy_new`]); the sweep and the guard's counts are
//! one statement each. Every table and column name is checked ([`is_identifier`]) and quoted
//! ([`quote_ident`]) where a statement names it, so a column called `select` or a table called
//! `order` is a column and a table like any other.

use std::fmt::Write as _;

use sqlx::PgConnection;
use tracing::Instrument;

pub use super::column::{ColumnType, INDEXED_VALUE_MAX_BYTES, check_text, parse_timestamp};
use crate::ids::RunId;

/// The SQL form of an identifier: `name` in double quotes, each `"` doubled; a schema-qualified
/// `schema.table` is quoted part by part (`"schema"."table"`). Every table and column name a
/// statement is built from goes through here, whatever checked it before.
pub fn quote_ident(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// Whether `name` is a plain (optionally schema-qualified) lower-case SQL identifier: what a synced
/// table or column may be called. Statements still quote it ([`quote_ident`]): a reserved word
/// (`select`, `order`) passes this check.
pub fn is_identifier(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part(p))
}

/// Columns every synced table has besides the mapped ones.
pub const BOOKKEEPING: [&str; 8] =
    ["integration_id", "external_id", "is_active", "deleted_at", "last_seen_run", "created_at", "updated_at", "id"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// What one upsert statement did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertCounts {
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
}

/// Whether the row the statement returned was new, changed, or only marked seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOutcome {
    Inserted,
    Updated,
    Unchanged,
}

/// A synced table and the statements built for it once.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// `name` quoted for statements ([`quote_ident`]).
    ident: String,
    upsert_sql: String,
    /// The upsert answering only its counts (inserted, updated): a page's rows never travel back.
    count_sql: String,
    /// `COPY … FROM STDIN` of new rows ([`Table::copy_new`]).
    copy_sql: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("`{0}` is not a plain lower-case SQL identifier")]
    BadIdentifier(String),
    #[error("column `{0}` is one of the bookkeeping columns every synced table has")]
    Reserved(String),
    #[error("table `{table}` has no column `{column}`")]
    MissingColumn { table: String, column: String },
    #[error("column `{table}.{column}` is {found}, which cannot hold {wanted}")]
    WrongType { table: String, column: String, found: String, wanted: &'static str },
    #[error("table `{0}` does not exist (create it, or let the config file create it: create_table = true)")]
    Missing(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl Table {
    pub fn new(name: &str, columns: Vec<Column>) -> Result<Table, TableError> {
        if !is_identifier(name) {
            return Err(TableError::BadIdentifier(name.to_owned()));
        }
        for c in &columns {
            if !is_identifier(&c.name) || c.name.contains('.') {
                return Err(TableError::BadIdentifier(c.name.clone()));
            }
            if BOOKKEEPING.contains(&c.name.as_str()) {
                return Err(TableError::Reserved(c.name.clone()));
            }
        }
        let upsert_sql = upsert_sql(name, &columns);
        let count_sql = format!(
            "WITH w AS ({upsert_sql}) SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted AND changed) FROM w"
        );
        let ident = quote_ident(name);
        let copy_sql = format!(
            "COPY {ident} (integration_id, external_id{}, last_seen_run) FROM STDIN",
            columns.iter().map(|c| format!(", {}", quote_ident(&c.name))).collect::<String>()
        );
        Ok(Table { name: name.to_owned(), columns, ident, upsert_sql, count_sql, copy_sql })
    }

    /// The table's name as statements write it: quoted ([`quote_ident`]), `"schema"."table"` when
    /// qualified. Whoever builds SQL on a [`Table`] names it with this, never with `name`.
    pub fn ident(&self) -> &str {
        &self.ident
    }

    /// Checks the table exists with every mapped column of a compatible type, creating it when it is
    /// missing and `create` is set. Runs on `conn`, the transaction that registers the integration,
    /// so a table created for an integration whose registration fails is not kept. An unqualified
    /// name is looked up in the connection's current schema, where statements will find it.
    pub async fn ensure(&self, conn: &mut PgConnection, create: bool) -> Result<(), TableError> {
        let (schema, table) = match self.name.split_once('.') {
            Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
            None => (None, self.name.clone()),
        };
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns
             WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(&mut *conn)
        .await?;
        if found.is_empty() {
            if !create {
                return Err(TableError::Missing(self.name.clone()));
            }
            sqlx::query(sqlx::AssertSqlSafe(self.create_sql())).execute(&mut *conn).await?;
            tracing::info!(table = %self.name, "Created synced table.");
            return Ok(());
        }
        let wanted = self
            .columns
            .iter()
            .map(|c| (c.name.as_str(), Some(c.ty)))
            .chain(BOOKKEEPING.iter().filter(|c| **c != "id").map(|c| (*c, None)));
        for (column, ty) in wanted {
            let Some((_, udt)) = found.iter().find(|(n, _)| n == column) else {
                return Err(TableError::MissingColumn { table: self.name.clone(), column: column.to_owned() });
            };
            if let Some(ty) = ty
                && !ty.accepts_udt(udt)
            {
                return Err(TableError::WrongType {
                    table: self.name.clone(),
                    column: column.to_owned(),
                    found: udt.clone(),
                    wanted: ty.sql(),
                });
            }
        }
        Ok(())
    }

    fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n    id BIGSERIAL PRIMARY KEY,\n    \
             integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,\n    \
             external_id TEXT NOT NULL,\n",
            self.ident
        );
        for c in &self.columns {
            let _ = writeln!(sql, "    {} {},", quote_ident(&c.name), c.ty.sql());
        }
        sql.push_str(
            "    is_active BOOLEAN NOT NULL DEFAULT TRUE,\n    deleted_at TIMESTAMPTZ,\n    last_seen_run UUID,\n    \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(),\n    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),\n    \
             UNIQUE (integration_id, external_id)\n)",
        );
        sql
    }

    /// Upserts one batch (external ids unique within it; values already converted by
    /// [`ColumnType::convert`], one vector per column in column order) and returns each row's outcome
    /// keyed by external id. `run` is `None` for single-item syncs, which keep the row's
    /// `last_seen_run`.
    pub async fn upsert(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: Option<RunId>,
        external_ids: &[String],
        values: &[Vec<Option<String>>],
    ) -> Result<UpsertCounts, sqlx::Error> {
        let q = self.bind_upsert(&self.count_sql, integration_id, run, external_ids, values);
        let span = self.write_span("INSERT", external_ids.len());
        let (inserted, updated) = q.fetch_one(conn).instrument(span.clone()).await?;
        span.record("db.response.returned_rows", inserted + updated);
        let unchanged = external_ids.len() as i64 - inserted - updated;
        Ok(UpsertCounts { inserted, updated, unchanged })
    }

    /// Whether the table holds no row of the integration (a first load): its pages may be written
    /// with [`Table::copy_new`].
    pub async fn holds_none(&self, conn: &mut PgConnection, integration_id: i64) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE integration_id = $1)",
            self.ident
        )))
        .bind(integration_id)
        .fetch_one(conn)
        .await
    }

    /// Writes one batch of rows that are not in the table yet with one `COPY … FROM STDIN`: the same
    /// rows [`Table::upsert`] would insert (active, seen by `run`), without the upsert's conflict
    /// handling, so a first load costs what a bulk load costs. A row already present fails the whole
    /// statement with a unique violation (sqlx's `DatabaseError::is_unique_violation`); the caller
    /// rolls back and writes the batch with [`Table::upsert`]. Returns the rows written.
    pub async fn copy_new(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: RunId,
        external_ids: &[String],
        values: &[Vec<Option<String>>],
    ) -> Result<u64, sqlx::Error> {
        debug_assert_eq!(values.len(), self.columns.len());
        let (integration, run) = (integration_id.to_string(), run.0.to_string());
        let mut data = String::with_capacity(external_ids.len() * 32 * (values.len() + 3));
        for (row, id) in external_ids.iter().enumerate() {
            data.push_str(&integration);
            data.push('\t');
            copy_field(&mut data, Some(id));
            for column in values {
                data.push('\t');
                copy_field(&mut data, column[row].as_deref());
            }
            data.push('\t');
            data.push_str(&run);
            data.push('\n');
        }
        let span = self.write_span("COPY", external_ids.len());
        let written = async {
            let mut copy = conn.copy_in_raw(&self.copy_sql).await?;
            copy.send(data.as_bytes()).await?;
            copy.finish().await
        }
        .instrument(span.clone())
        .await?;
        span.record("db.response.returned_rows", written);
        Ok(written)
    }

    /// Like [`Table::upsert`], returning the rows the statement wrote (rows already seen by this run
    /// with the same data are not written and not returned).
    pub async fn upsert_rows(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: Option<RunId>,
        external_ids: &[String],
        values: &[Vec<Option<String>>],
    ) -> Result<Vec<(String, RowOutcome)>, sqlx::Error> {
        let q = self.bind_upsert(&self.upsert_sql, integration_id, run, external_ids, values);
        let span = self.write_span("INSERT", external_ids.len());
        let rows = q.fetch_all(conn).instrument(span.clone()).await?;
        span.record("db.response.returned_rows", rows.len());
        Ok(rows
            .into_iter()
            .map(|(id, inserted, changed)| {
                let outcome = match (inserted, changed) {
                    (true, _) => RowOutcome::Inserted,
                    (false, true) => RowOutcome::Updated,
                    (false, false) => RowOutcome::Unchanged,
                };
                (id, outcome)
            })
            .collect())
    }

    /// `sql` (the upsert or its counting form) with its parameters: integration, run, external ids,
    /// then one text array per column.
    fn bind_upsert<'q, O>(
        &self,
        sql: &'q str,
        integration_id: i64,
        run: Option<RunId>,
        external_ids: &'q [String],
        values: &'q [Vec<Option<String>>],
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        debug_assert_eq!(values.len(), self.columns.len());
        let mut q = sqlx::query_as::<_, O>(sqlx::AssertSqlSafe(sql))
            .bind(integration_id)
            .bind(run.map(|r| r.0))
            .bind(external_ids);
        for column in values {
            q = q.bind(column);
        }
        q
    }

    /// The client span of one write (`INSERT`: an upsert, `COPY`: new rows) of `batch` rows.
    fn write_span(&self, operation: &'static str, batch: usize) -> tracing::Span {
        tracing::info_span!(
            target: crate::telemetry::OTEL_TARGET,
            "upsert",
            otel.name = %format_args!("{operation} {}", self.name),
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = operation,
            db.collection.name = %self.name,
            db.operation.batch.size = batch,
            db.response.returned_rows = tracing::field::Empty,
        )
    }

    /// Active rows, and those a sweep by `run` would deactivate: active, not seen by the run, and
    /// not written since `fetch_started` (a webhook may have written them during the fetch).
    pub async fn sweep_counts(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: RunId,
        fetch_started: chrono::DateTime<chrono::Utc>,
    ) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE is_active), count(*) FILTER (WHERE {SWEEPABLE})
             FROM {} WHERE integration_id = $1",
            self.ident
        )))
        .bind(integration_id)
        .bind(run.0)
        .bind(fetch_started)
        .fetch_one(conn)
        .await
    }

    /// Soft-deletes the rows [`Table::sweep_counts`] counted; returns how many.
    pub async fn sweep(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: RunId,
        fetch_started: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, sqlx::Error> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET is_active = FALSE, deleted_at = now(), updated_at = now()
             WHERE integration_id = $1 AND {SWEEPABLE}",
            self.ident
        )))
        .bind(integration_id)
        .bind(run.0)
        .bind(fetch_started)
        .execute(conn)
        .await?;
        Ok(done.rows_affected() as i64)
    }
}

impl Table {
    /// For each mapped column (in order), whether an index of the table covers it (a key column, an
    /// expression over it, or an `INCLUDE` column): its values must fit an index entry
    /// ([`ColumnType::convert_checked`]). Read from the catalog, so indexes a deployment adds count.
    pub async fn indexed_columns(&self, conn: &mut PgConnection) -> Result<Vec<bool>, sqlx::Error> {
        let defs: Vec<String> = sqlx::query_scalar(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              JOIN pg_am am ON am.oid = c.relam
             WHERE i.indrelid = to_regclass($1) AND am.amname <> 'hash'",
        )
        .bind(&self.ident)
        .fetch_all(conn)
        .await?;
        let mut covered = std::collections::HashSet::new();
        for def in &defs {
            let keys = def.split_once(" USING ").map_or(def.as_str(), |(_, k)| k);
            let keys = keys.split_once(" WHERE ").map_or(keys, |(k, _)| k);
            for token in keys.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                covered.insert(token.to_owned());
            }
        }
        Ok(self.columns.iter().map(|c| covered.contains(&c.name)).collect())
    }

    /// Marks rows seen by `run` without writing their data: the items the read listed that could not
    /// be written (a bad value). They are still upstream, so the run's sweep must spare them.
    pub async fn mark_seen(
        &self,
        conn: &mut PgConnection,
        integration_id: i64,
        run: RunId,
        external_ids: &[String],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET last_seen_run = $2
             WHERE integration_id = $1 AND external_id = ANY($3) AND last_seen_run IS DISTINCT FROM $2",
            self.ident
        )))
        .bind(integration_id)
        .bind(run.0)
        .bind(external_ids)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Appends one value in `COPY` text format: `\N` for NULL; backslash, tab, newline and carriage
/// return escaped. Values are checked text ([`check_text`]: no NUL).
pub fn copy_field(out: &mut String, value: Option<&str>) {
    match value {
        None => out.push_str("\\N"),
        Some(v) => {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// Rows a sweep by run `$2` deactivates: active, not seen by the run, not written since the fetch
/// began at `$3`.
const SWEEPABLE: &str = "is_active AND last_seen_run IS DISTINCT FROM $2 AND updated_at < $3";

/// `$1` integration id, `$2` run id (NULL for single items), `$3` external ids, `$4…` one text array
/// per mapped column. Unchanged rows are written only to mark them seen (their `updated_at` stays);
/// rows this run already saw with the same data are not written at all. `xmax = 0` tells a fresh
/// insert from an update; `updated_at = now()` tells a data change from a seen-mark.
fn upsert_sql(table: &str, columns: &[Column]) -> String {
    let table = quote_ident(table);
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let names: Vec<&str> = quoted.iter().map(String::as_str).collect();
    let unnest_args: Vec<String> = (0..=columns.len()).map(|i| format!("${}::text[]", i + 3)).collect();
    let casts: Vec<String> = columns.iter().zip(&names).map(|(c, n)| format!("i.{n}::{}", c.ty.sql())).collect();
    let sets: Vec<String> = names.iter().map(|n| format!("{n} = EXCLUDED.{n}")).collect();
    let old: Vec<String> = names.iter().map(|n| format!("t.{n}")).chain(["t.is_active".into()]).collect();
    let new: Vec<String> = names.iter().map(|n| format!("EXCLUDED.{n}")).chain(["TRUE".into()]).collect();
    let seen = "COALESCE(EXCLUDED.last_seen_run, t.last_seen_run)";
    let comma = |v: &[String]| v.join(", ");
    let lead = |v: &[&str]| v.iter().map(|n| format!(", {n}")).collect::<String>();
    format!(
        "INSERT INTO {table} AS t (integration_id, external_id{cols}, is_active, deleted_at, last_seen_run)
         SELECT $1, i.external_id{casts}, TRUE, NULL, $2
         FROM UNNEST({unnest}) AS i(external_id{cols})
         ON CONFLICT (integration_id, external_id) DO UPDATE SET
             {sets}is_active = TRUE, deleted_at = NULL, last_seen_run = {seen},
             updated_at = CASE WHEN ({old}) IS DISTINCT FROM ({new}) THEN now() ELSE t.updated_at END
         WHERE ({old}, t.last_seen_run) IS DISTINCT FROM ({new}, {seen})
         RETURNING t.external_id, (xmax = 0) AS inserted, (t.updated_at = now()) AS changed",
        cols = lead(&names),
        casts = casts.iter().map(|c| format!(", {c}")).collect::<String>(),
        unnest = comma(&unnest_args),
        sets = sets.iter().map(|s| format!("{s}, ")).collect::<String>(),
        old = comma(&old),
        new = comma(&new),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_the_format_reserves() {
        let mut out = String::new();
        copy_field(&mut out, Some("a\tb\\c\nd\re"));
        out.push('\t');
        copy_field(&mut out, None);
        assert_eq!(out, "a\\tb\\\\c\\nd\\re\t\\N");
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(is_identifier("erp_items"));
        assert!(is_identifier("sync.erp_items"));
        assert!(!is_identifier("erp_items; drop table x"));
        assert!(!is_identifier("Items"));
        assert!(Table::new("erp_items", vec![Column { name: "is_active".into(), ty: ColumnType::Boolean }]).is_err());
    }

    #[test]
    fn identifiers_are_quoted_in_every_statement() {
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("sync.order"), "\"sync\".\"order\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let t = Table::new("order", vec![Column { name: "select".into(), ty: ColumnType::Text }]).unwrap();
        assert_eq!(t.ident(), "\"order\"");
        assert!(t.upsert_sql.starts_with("INSERT INTO \"order\" AS t (integration_id, external_id, \"select\","));
        assert!(t.upsert_sql.contains("i.\"select\"::text"), "{}", t.upsert_sql);
        assert!(t.upsert_sql.contains("\"select\" = EXCLUDED.\"select\""), "{}", t.upsert_sql);
        assert!(t.create_sql().contains("    \"select\" text,"), "{}", t.create_sql());
        assert!(t.create_sql().starts_with("CREATE TABLE IF NOT EXISTS \"order\" ("));
    }
}
