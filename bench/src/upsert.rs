//! Upsert throughput: the pull engine against the two obvious ways to write the same ERP items, measured
//! side by side in each of `--runs` runs, each in its own scratch database and Redis namespace (removed at the end,
//! also when a measurement fails).
//!
//! - `engine_*`: one real `syncfleet-worker` process (release binary) runs `http_json_sync` (Full) of an
//!   `http-json` integration reading the sandbox ERP `/items` (pages of 1,000) into `erp_items`; the
//!   producer runs in this process. Rows/s = rows / the pull step's `duration_ms`. That first load
//!   writes new rows (`COPY` per page); `engine_resync_rows_per_sec` is a second full read of the
//!   same items, where every page goes through the upsert. The worker's peak RSS (`VmHWM`) is read
//!   after both, once with N items and once, in a fresh process, with N/10.
//! - `row_by_row_*`: the classic find-then-write loop, written here: per record a `SELECT` by
//!   (integration, external id), then an `INSERT` or `UPDATE`, autocommit, one connection, pages
//!   fetched as it goes (fetch time included). It is slow, so it runs on at most 10,000 rows.
//! - `copy_*`: the ceiling: the same N rows, fetched and converted to COPY text first (not timed),
//!   written by one `COPY erp_items (…) FROM STDIN` into the empty table.
//! - Diagnostics, to see where the engine's time goes: `sandbox_fetch_rows_per_sec` (pages fetched
//!   and parsed one after another, as the engine's source does) and `upsert_statement_rows_per_sec`
//!   (the engine's own upsert statement, `Table::upsert`, one transaction per 1,000 rows, values
//!   converted beforehand).
//! - Ratios, within each run: `engine_vs_rowwise` (engine rows/s ÷ row by row; goal ≥ 20),
//!   `copy_vs_engine` (COPY rows/s ÷ engine; its inverse `engine_of_copy`, goal ≥ 0.5) and
//!   `rss_growth_10x` (the worker's peak with N items ÷ with N/10; goal ≤ 1.5).
//!
//! Every connection goes to PostgreSQL over TCP `127.0.0.1:5432` (as deployed), or with `--pg-socket DIR`
//! through its Unix socket, which shows what the TCP path costs (see `bench/RESULTS.md`).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use syncfleet_pack_http_json as http_json;
use syncfleet_sandbox::{SandboxConfig, SandboxHandle};
use syncfleet_sdk::sync::table::{Table, copy_field};
use syncfleet_shared::chain::Mode;
use syncfleet_store as store;

pub use crate::round::PgServer;
use crate::{
    report::Scenario,
    round::{self, Round, Scratch},
};

const INTEGRATION: &str = "bench-erp";
const ENTITY: &str = "items";
const TABLE: &str = "erp_items";
/// Page size of every read of the ERP list, the engine's included.
const PAGE: usize = 1_000;
const ROW_BY_ROW_MAX: usize = 10_000;

const GOAL_VS_ROW_BY_ROW: f64 = 20.0;
const GOAL_OF_COPY: f64 = 0.5;
const GOAL_PEAK_RSS_MB: f64 = 150.0;
const GOAL_RSS_GROWTH_10X: f64 = 1.5;

/// The ERP columns in COPY and row-by-row order.
const COLUMNS: &str = "integration_id, external_id, sku, name, quantity, warehouse, source_updated_at";

/// What a scratch is made for: the PostgreSQL server and the ERP sandbox the integration reads.
#[derive(Clone, Copy)]
struct Target<'a> {
    pg: &'a PgServer,
    sandbox: &'a SandboxHandle,
}

/// The `bench-erp` integration on `sandbox` (registering it creates `erp_items`).
fn integration_toml(sandbox: &SandboxHandle) -> String {
    syncfleet_sandbox::erp_integration_toml(INTEGRATION, &sandbox.erp_url(), TABLE, PAGE as u32, "")
}

/// Runs `body` on a fresh scratch with the integration registered, removed afterwards.
async fn with_scratch<T>(
    target: Target<'_>,
    body: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    round::with_scratch(target.pg, &integration_toml(target.sandbox), body).await
}

async fn integration_id(s: &Scratch) -> anyhow::Result<i64> {
    Ok(store::integration_by_name(&s.ops.pool, INTEGRATION).await?.id)
}

/// The synced table exactly as the engine builds it from the integration's settings.
fn table(s: &Scratch) -> anyhow::Result<(Table, http_json::EntitySpec)> {
    let spec = &s.ops.config.integrations[INTEGRATION];
    let settings = http_json::Settings::parse(&Value::Object(spec.settings.clone()))
        .map_err(|(key, m)| anyhow::anyhow!("{key}: {m}"))?;
    let entity = settings.entities.get(ENTITY).context("entity")?.clone();
    Ok((entity.table()?, entity))
}

async fn sandbox(items: usize) -> anyhow::Result<SandboxHandle> {
    syncfleet_sandbox::spawn(SandboxConfig { erp_items: Some(items), ..SandboxConfig::default().unlimited() }).await
}

/// What one engine run measured.
struct EngineRun {
    rows_per_sec: f64,
    step_ms: i64,
    /// The second full read of the same items (upserts marking rows seen).
    resync_rows_per_sec: f64,
    api_calls: i64,
    idle_rss_mb: f64,
    peak_rss_mb: f64,
}

/// The engine on `rows` items of its own sandbox, database and worker process.
async fn engine(pg: &PgServer, rows: usize) -> anyhow::Result<EngineRun> {
    let sandbox = sandbox(rows).await?;
    let config = integration_toml(&sandbox);
    let setup =
        round::Setup { pg: pg.clone(), reconcile_interval_ms: 50, ..round::Setup::new(Some(sandbox), 1, 4, config) };
    round::with_round(setup, async |r| engine_run(r, rows).await).await
}

async fn engine_run(r: &Round, rows: usize) -> anyhow::Result<EngineRun> {
    // The worker has registered (`Round::start`): its memory now is its idle memory.
    let idle_rss_mb = r.workers_peak_rss_mb()?;
    let run = r.trigger("http_json_sync", INTEGRATION, Mode::Full, &[]).await?;
    let limit = Duration::from_secs(120 + rows as u64 / 200);
    let view = r.completed(run, limit).await?;
    let step = view.steps.iter().find(|st| st.step == "pull").context("the run has no pull step")?;
    anyhow::ensure!(step.attempts == 1, "the pull step took {} attempts: {:?}", step.attempts, step.error);
    anyhow::ensure!(
        step.fetched == rows as i64 && step.inserted == rows as i64,
        "the pull step fetched {} and inserted {} of {rows} rows",
        step.fetched,
        step.inserted
    );
    let (step_ms, api_calls) = (step.duration_ms.context("the pull step has no duration")?, step.api_calls);
    // The same read again: every row is there, so each page goes through the upsert (and only
    // marks its rows seen).
    let again = r.completed(r.trigger("http_json_sync", INTEGRATION, Mode::Full, &[]).await?, limit).await?;
    let step = again.steps.iter().find(|st| st.step == "pull").context("the run has no pull step")?;
    anyhow::ensure!(
        step.fetched == rows as i64 && step.unchanged == rows as i64,
        "the second pull fetched {} and found {} of {rows} rows unchanged",
        step.fetched,
        step.unchanged
    );
    let resync_ms = step.duration_ms.context("the pull step has no duration")?;
    let peak_rss_mb = r.workers_peak_rss_mb()?;
    let per_sec = |ms: i64| rows as f64 / (ms.max(1) as f64 / 1000.0);
    Ok(EngineRun {
        rows_per_sec: per_sec(step_ms),
        step_ms,
        resync_rows_per_sec: per_sec(resync_ms),
        api_calls,
        idle_rss_mb,
        peak_rss_mb,
    })
}

/// One page of the ERP list, as the engine asks for it.
async fn fetch_page(http: &reqwest::Client, sandbox: &SandboxHandle, offset: usize) -> anyhow::Result<Vec<Value>> {
    let body: Value = http
        .get(format!("{}/items", sandbox.erp_url()))
        .bearer_auth(&sandbox.config.erp_token)
        .query(&[("offset", offset), ("limit", PAGE)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    match body {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(items)) => Ok(items),
            _ => anyhow::bail!("ERP page at offset {offset} has no items array"),
        },
        _ => anyhow::bail!("ERP page at offset {offset} is not an object"),
    }
}

/// The first `rows` items, page after page; returns them and the seconds it took.
async fn fetch_all(sandbox: &SandboxHandle, rows: usize) -> anyhow::Result<(Vec<Value>, f64)> {
    let http = reqwest::Client::new();
    let t = Instant::now();
    let mut items = Vec::with_capacity(rows);
    while items.len() < rows {
        let page = fetch_page(&http, sandbox, items.len()).await?;
        anyhow::ensure!(!page.is_empty(), "the ERP list ended after {} of {rows} items", items.len());
        items.extend(page);
    }
    items.truncate(rows);
    Ok((items, t.elapsed().as_secs_f64()))
}

/// An ERP item as the row-by-row loop and COPY write it.
struct ErpRow {
    external_id: String,
    sku: Option<String>,
    name: Option<String>,
    quantity: Option<i64>,
    warehouse: Option<String>,
    updated_at: Option<String>,
}

impl ErpRow {
    fn from_item(item: &Value) -> anyhow::Result<ErpRow> {
        let text = |k: &str| item[k].as_str().map(str::to_owned);
        Ok(ErpRow {
            external_id: item["id"].as_i64().with_context(|| format!("ERP item without an id: {item}"))?.to_string(),
            sku: text("sku"),
            name: text("name"),
            quantity: item["quantity"].as_i64(),
            warehouse: text("warehouse"),
            updated_at: text("updated_at"),
        })
    }
}

/// The classic loop on the first `rows` items; returns rows/s (fetch included).
async fn row_by_row(target: Target<'_>, rows: usize) -> anyhow::Result<f64> {
    let sandbox = target.sandbox;
    with_scratch(target, async |s| {
        let integration_id = integration_id(s).await?;
        let mut conn = s.ops.pool.acquire().await?;
        let http = reqwest::Client::new();
        let select = format!(
            "SELECT id, sku, name, quantity, warehouse FROM {TABLE} WHERE integration_id = $1 AND external_id = $2"
        );
        let insert = format!("INSERT INTO {TABLE} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz)");
        let update = format!(
            "UPDATE {TABLE} SET sku = $2, name = $3, quantity = $4, warehouse = $5, source_updated_at = $6::timestamptz,
                 updated_at = now() WHERE id = $1"
        );
        type Found = (i64, Option<String>, Option<String>, Option<i64>, Option<String>);
        let (mut written, mut inserted) = (0, 0);
        let t = Instant::now();
        while written < rows {
            let page = fetch_page(&http, sandbox, written).await?;
            anyhow::ensure!(!page.is_empty(), "the ERP list ended after {written} of {rows} items");
            for item in page.iter().take(rows - written) {
                let r = ErpRow::from_item(item)?;
                let found: Option<Found> = sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
                    .bind(integration_id)
                    .bind(&r.external_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                match found {
                    None => {
                        sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                            .bind(integration_id)
                            .bind(&r.external_id)
                            .bind(&r.sku)
                            .bind(&r.name)
                            .bind(r.quantity)
                            .bind(&r.warehouse)
                            .bind(&r.updated_at)
                            .execute(&mut *conn)
                            .await?;
                        inserted += 1;
                    }
                    Some((id, ..)) => {
                        sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                            .bind(id)
                            .bind(&r.sku)
                            .bind(&r.name)
                            .bind(r.quantity)
                            .bind(&r.warehouse)
                            .bind(&r.updated_at)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                written += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(inserted == rows, "row by row inserted {inserted} of {rows} rows");
        Ok(rows as f64 / secs)
    })
    .await
}

/// `items` with one `COPY … FROM STDIN` into the empty table; returns rows/s of the COPY alone.
async fn copy(target: Target<'_>, items: &[Value]) -> anyhow::Result<f64> {
    with_scratch(target, async |s| {
        let integration_id = integration_id(s).await?.to_string();
        let mut data = String::with_capacity(items.len() * 96);
        for item in items {
            let r = ErpRow::from_item(item)?;
            let quantity = r.quantity.map(|q| q.to_string());
            let fields = [
                Some(integration_id.as_str()),
                Some(r.external_id.as_str()),
                r.sku.as_deref(),
                r.name.as_deref(),
                quantity.as_deref(),
                r.warehouse.as_deref(),
                r.updated_at.as_deref(),
            ];
            for (i, f) in fields.into_iter().enumerate() {
                if i > 0 {
                    data.push('\t');
                }
                copy_field(&mut data, f);
            }
            data.push('\n');
        }
        let mut conn = s.ops.pool.acquire().await?;
        let t = Instant::now();
        let mut copy = conn.copy_in_raw(&format!("COPY {TABLE} ({COLUMNS}) FROM STDIN")).await?;
        copy.send(data.as_bytes()).await?;
        let written = copy.finish().await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(written == items.len() as u64, "COPY wrote {written} of {} rows", items.len());
        Ok(items.len() as f64 / secs)
    })
    .await
}

/// The engine's upsert statement alone: `items` converted beforehand, written 1,000 per transaction
/// as the pull engine does; returns rows/s of the statements.
async fn upsert_statement(target: Target<'_>, items: &[Value]) -> anyhow::Result<f64> {
    with_scratch(target, async |s| {
        let integration_id = integration_id(s).await?;
        let (table, entity) = table(s)?;
        let mut batches = Vec::new();
        for page in items.chunks(PAGE) {
            let mut ids = Vec::with_capacity(page.len());
            let mut columns = vec![Vec::with_capacity(page.len()); table.columns.len()];
            for item in page {
                ids.push(ErpRow::from_item(item)?.external_id);
                for (column, values) in table.columns.iter().zip(&mut columns) {
                    let path = &entity.columns[&column.name].path;
                    let v =
                        column.ty.convert(item.pointer(path).unwrap_or(&Value::Null)).map_err(anyhow::Error::msg)?;
                    values.push(v);
                }
            }
            batches.push((ids, columns));
        }
        let run = Some(syncfleet_shared::ids::RunId::new());
        let mut inserted = 0;
        let t = Instant::now();
        for (ids, columns) in &batches {
            let mut tx = s.ops.pool.begin().await?;
            inserted += table.upsert(&mut tx, integration_id, run, ids, columns).await?.inserted;
            tx.commit().await?;
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(inserted == items.len() as i64, "the upsert inserted {inserted} of {} rows", items.len());
        Ok(items.len() as f64 / secs)
    })
    .await
}

/// One run of every measurement.
async fn once(s: &mut Scenario, rows: usize, pg: &PgServer) -> anyhow::Result<()> {
    let small = engine(pg, rows / 10).await?;
    let big = engine(pg, rows).await?;

    let sandbox = sandbox(rows).await?;
    let target = Target { pg, sandbox: &sandbox };
    let measured = async {
        let row_by_row = row_by_row(target, rows.min(ROW_BY_ROW_MAX)).await?;
        let (items, fetch_secs) = fetch_all(&sandbox, rows).await?;
        let copy = copy(target, &items).await?;
        let upsert = upsert_statement(target, &items).await?;
        anyhow::Ok((row_by_row, fetch_secs, copy, upsert))
    }
    .await;
    sandbox.shutdown().await.ok();
    let (row_by_row, fetch_secs, copy, upsert) = measured?;

    s.figure("engine_rows_per_sec", big.rows_per_sec);
    s.figure("engine_step_ms", big.step_ms as f64);
    s.figure("engine_resync_rows_per_sec", big.resync_rows_per_sec);
    s.figure("api_calls", big.api_calls as f64);
    s.figure("row_by_row_rows_per_sec", row_by_row);
    s.figure("copy_rows_per_sec", copy);
    s.figure("engine_vs_rowwise", big.rows_per_sec / row_by_row);
    s.figure("copy_vs_engine", copy / big.rows_per_sec);
    s.figure("engine_of_copy", big.rows_per_sec / copy);
    s.figure("worker_peak_rss_mb", big.peak_rss_mb);
    s.figure("worker_peak_rss_mb_small", small.peak_rss_mb);
    s.figure("worker_idle_rss_mb", big.idle_rss_mb);
    s.figure("rss_growth_10x", big.peak_rss_mb / small.peak_rss_mb);
    s.figure("engine_rows_per_sec_small", small.rows_per_sec);
    s.figure("engine_step_ms_small", small.step_ms as f64);
    s.figure("sandbox_fetch_rows_per_sec", rows as f64 / fetch_secs);
    s.figure("upsert_statement_rows_per_sec", upsert);
    eprintln!(
        "upsert: engine {:.0} rows/s, row by row {row_by_row:.0}, COPY {copy:.0}, worker peak {:.1} MiB",
        big.rows_per_sec, big.peak_rss_mb
    );
    Ok(())
}

pub async fn run(runs: usize, rows: usize, pg: PgServer) -> anyhow::Result<Scenario> {
    anyhow::ensure!(rows >= 10, "--rows must be at least 10 (the small engine run uses rows / 10)");
    let mut s = Scenario::new("upsert", runs);
    for _ in 0..runs {
        once(&mut s, rows, &pg).await?;
    }
    for ratio in ["engine_vs_rowwise", "copy_vs_engine", "engine_of_copy", "rss_growth_10x"] {
        s.ratio_from_median(ratio);
    }
    s.goal("engine_vs_rowwise", &format!(">= {GOAL_VS_ROW_BY_ROW}"));
    s.goal("copy_vs_engine", &format!("<= {:.2} (the engine at >= {GOAL_OF_COPY} of COPY)", 1.0 / GOAL_OF_COPY));
    s.goal("engine_of_copy", &format!(">= {GOAL_OF_COPY}"));
    s.goal("worker_peak_rss_mb", &format!("<= {GOAL_PEAK_RSS_MB}"));
    s.goal("rss_growth_10x", &format!("<= {GOAL_RSS_GROWTH_10X}"));
    s.note(format!(
        "{rows} ERP items (the row-by-row loop writes {}), PostgreSQL over {}",
        rows.min(ROW_BY_ROW_MAX),
        pg.describe()
    ));
    s.note("ratios are measured within each run (engine, row by row and COPY side by side), then the median");
    Ok(s)
}
