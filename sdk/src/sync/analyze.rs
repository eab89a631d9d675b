//! Planner statistics of the tables steps write and read: `ANALYZE` after a big write, and before
//! a step reads whole tables whose statistics are missing or stale (once per table, not per shard).
//! A failure is logged; it never fails a step.

/// Rows a step must have written to a table before the table's planner statistics are refreshed.
pub const ANALYZE_AFTER_ROWS: i64 = 1000;

/// Refreshes the planner statistics of `table` after `written` rows (at least
/// [`ANALYZE_AFTER_ROWS`]): the queries of the next steps are planned on what the table holds now,
/// not on what autovacuum last saw, which after a first load may be nothing (a domain analysis took
/// 25 s instead of 0.5 s that way). A failure is logged; it never fails the step.
pub async fn analyze_after_write(pool: &sqlx::PgPool, table: &str, written: i64) {
    if written >= ANALYZE_AFTER_ROWS {
        analyze(pool, table).await;
    }
}

/// `ANALYZE table` through `syncfleet_analyze` (migration `0014`: the runtime role owns no table,
/// and only a table's owner may analyze it); a failure is logged, never returned.
async fn analyze(pool: &sqlx::PgPool, table: &str) {
    let analyze = sqlx::query("SELECT syncfleet_analyze($1::regclass)").bind(super::table::quote_ident(table));
    if let Err(error) = analyze.execute(pool).await {
        tracing::warn!(%error, table, "ANALYZE failed.");
    }
}

/// Refreshes the planner statistics of each of `tables` that has none yet or whose rows changed by
/// more than a tenth since (what autovacuum would do, which may be off or behind), for a step
/// about to read whole tables: planned on a never-analyzed table's guesses, role derivation at
/// 8,000 users joined 174 million row pairs (20 s) instead of hashing 21,760 enrollments. A failure
/// is logged; it never fails the step.
///
/// Shards of one step start together and find the same tables stale: each table is analyzed under
/// a transaction-level advisory lock of its own, and a shard that waited for it looks again (with a
/// fresh statistics snapshot) before analyzing, so a table is analyzed once, not once per shard.
pub async fn analyze_if_stale(pool: &sqlx::PgPool, tables: &[&str]) {
    let names: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    match stale_tables(pool, &names).await {
        Ok(stale) => {
            for table in stale {
                if let Err(error) = analyze_once(pool, &table).await {
                    tracing::warn!(%error, table, "ANALYZE failed.");
                }
            }
        }
        Err(error) => tracing::warn!(%error, ?tables, "Reading the tables' statistics failed."),
    }
}

/// Of `tables`, those never analyzed or changed by more than a tenth since.
async fn stale_tables<'c, E: sqlx::PgExecutor<'c>>(executor: E, tables: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables
          WHERE schemaname = current_schema() AND relname = ANY($1)
            AND (coalesce(last_analyze, last_autoanalyze) IS NULL
                 OR n_mod_since_analyze > greatest(n_live_tup / 10, $2))",
    )
    .bind(tables)
    .bind(ANALYZE_AFTER_ROWS)
    .fetch_all(executor)
    .await
}

/// Analyzes `table` unless, once this caller holds the table's analyze lock, it is no longer stale
/// (another shard analyzed it while this one waited).
async fn analyze_once(pool: &sqlx::PgPool, table: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('syncfleet.analyze:' || $1))")
        .bind(table)
        .execute(&mut *tx)
        .await?;
    // The statistics views keep one snapshot per transaction: read them anew after the wait.
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *tx).await?;
    if !stale_tables(&mut *tx, &[table.to_owned()]).await?.is_empty() {
        sqlx::query("SELECT syncfleet_analyze($1::regclass)")
            .bind(super::table::quote_ident(table))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
