//! Upsert throughput: the pull engine against the two obvious ways to write the same ERP items, measured
//! side by side in one run, each in its own scratch database and Redis namespace (removed at the end,
//! also when a measurement fails).
//!
//! - `engine_*`: one real `syncfleet-worker` process (release binary) runs `http_json_sync` (Full) of an
//!   `http-json` integration reading the sandbox ERP `/items` (pages of 1,000) into `erp_items`; the
//!   producer runs in this process. Rows/s = rows / the pull step's `duration_ms`. The worker's peak
//!   RSS (`VmHWM`) is read after the run, once with N items and once, in a fresh process, with N/10.
//! - `row_by_row_*`: the classic find-then-write loop, written here: per record a `SELECT` by
//!   (integration, external id), then an `INSERT` or `UPDATE`, autocommit, one connection, pages
//!   fetched as it goes (fetch time included). It is slow, so it runs on at most 10,000 rows.
//! - `copy_*`: the ceiling: the same N rows, fetched and converted to COPY text first (not timed),
//!   written by one `COPY erp_items (…) FROM STDIN` into the empty table.
//! - Diagnostics, to see where the engine's time goes: `sandbox_fetch_rows_per_sec` (pages fetched
//!   and parsed one after another, as the engine's source does) and `upsert_statement_rows_per_sec`
//!   (the engine's own upsert statement, `Table::upsert`, one transaction per 1,000 rows, values
//!   converted beforehand).
//!
//! Every connection goes to PostgreSQL over TCP `127.0.0.1:5432` (as deployed), or with `--pg-socket DIR`
//! through its Unix socket, which shows what the TCP path costs (see `bench/RESULTS.md`).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use syncfleet_producer::{Ops, ops::Trigger};
use syncfleet_sandbox::{SandboxConfig, SandboxHandle};
use syncfleet_shared::{
    chain::Mode,
    config::Config,
    packs::http_json,
    store::{self, runs::TriggerKind, views},
    sync::table::Table,
};
use tokio_util::sync::CancellationToken;

const INTEGRATION: &str = "bench-erp";
const ENTITY: &str = "items";
const TABLE: &str = "erp_items";
/// Page size of every read of the ERP list, the engine's included.
const PAGE: usize = 1_000;
const ROW_BY_ROW_MAX: usize = 10_000;

const GOAL_VS_ROW_BY_ROW: f64 = 20.0;
const GOAL_OF_COPY: f64 = 0.35;
const GOAL_PEAK_RSS_MB: f64 = 150.0;
const GOAL_RSS_GROWTH_10X: f64 = 1.5;

/// The ERP columns in COPY and row-by-row order.
const COLUMNS: &str = "integration_id, external_id, sku, name, quantity, warehouse, source_updated_at";

/// How the measurements reach PostgreSQL.
#[derive(Debug, Clone)]
pub enum PgServer {
    /// `127.0.0.1:5432`, as deployed.
    Tcp,
    /// The Unix socket in this directory (no Nagle / delayed-ACK interplay on the connection).
    Socket(PathBuf),
}

impl PgServer {
    fn url(&self, database: &str) -> String {
        match self {
            PgServer::Tcp => format!("postgres://postgres@127.0.0.1:5432/{database}"),
            PgServer::Socket(dir) => format!("postgres://postgres@localhost/{database}?host={}", dir.display()),
        }
    }

    fn describe(&self) -> String {
        match self {
            PgServer::Tcp => "tcp 127.0.0.1:5432".into(),
            PgServer::Socket(dir) => format!("unix socket {}", dir.display()),
        }
    }
}

/// What a scratch is made for: the PostgreSQL server and the ERP sandbox the integration reads.
#[derive(Clone, Copy)]
struct Target<'a> {
    pg: &'a PgServer,
    sandbox: &'a SandboxHandle,
}

/// A scratch database and Redis namespace with the `bench-erp` integration registered (so
/// `erp_items` exists), and the config file a worker process reads.
struct Scratch {
    ops: Ops,
    config_path: PathBuf,
}

impl Scratch {
    async fn new(target: Target<'_>) -> anyhow::Result<Scratch> {
        let tag = crate::queue::id();
        let (database_url, erp_url) = (target.pg.url(&format!("sf_bench_{tag}")), target.sandbox.erp_url());
        let toml = format!(
            "[database]\nurl = \"{database_url}\"\nmax_connections = 10\n\
             [redis]\nnamespace = \"bench-{tag}\"\n\
             [worker]\npoll_interval_ms = 5\n\
             [producer]\nreconcile_interval_ms = 50\nscheduler_enabled = false\n{}",
            syncfleet_sandbox::erp_integration_toml(INTEGRATION, &erp_url, TABLE, PAGE as u32, "")
        );
        let config = Config::from_toml(&toml)?;
        let config_path = std::env::temp_dir().join(format!("syncfleet-bench-{tag}.toml"));
        std::fs::write(&config_path, &toml)?;
        match syncfleet_producer::connect(&config).await {
            Ok(ops) => Ok(Scratch { ops, config_path }),
            Err(e) => {
                // `connect` may have created the database before it failed.
                store::drop_database(&config.database).await.ok();
                std::fs::remove_file(&config_path).ok();
                Err(e)
            }
        }
    }

    async fn integration_id(&self) -> anyhow::Result<i64> {
        Ok(store::integration_by_name(&self.ops.pool, INTEGRATION).await?.id)
    }

    /// The synced table exactly as the engine builds it from the integration's settings.
    fn table(&self) -> anyhow::Result<(Table, http_json::EntitySpec)> {
        let spec = &self.ops.config.integrations[INTEGRATION];
        let settings = http_json::Settings::parse(&Value::Object(spec.settings.clone()))
            .map_err(|(key, m)| anyhow::anyhow!("{key}: {m}"))?;
        let entity = settings.entities.get(ENTITY).context("entity")?.clone();
        Ok((entity.table()?, entity))
    }

    async fn remove(self) {
        self.ops.queues.purge_namespace().await.ok();
        self.ops.pool.close().await;
        store::drop_database(&self.ops.config.database).await.ok();
        std::fs::remove_file(&self.config_path).ok();
    }
}

/// Runs `body` on a fresh [`Scratch`], which is removed afterwards whatever `body` returned.
async fn with_scratch<T>(
    target: Target<'_>,
    body: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let scratch = Scratch::new(target).await?;
    let result = body(&scratch).await;
    scratch.remove().await;
    result
}

async fn sandbox(items: usize) -> anyhow::Result<SandboxHandle> {
    syncfleet_sandbox::spawn(SandboxConfig { erp_items: Some(items), ..SandboxConfig::default().unlimited() }).await
}

/// What one engine run measured.
struct EngineRun {
    rows_per_sec: f64,
    step_ms: i64,
    fetched: i64,
    inserted: i64,
    api_calls: i64,
    idle_rss_mb: f64,
    peak_rss_mb: f64,
}

/// The engine on `rows` items of its own sandbox, database and worker process.
async fn engine(pg: &PgServer, rows: usize) -> anyhow::Result<EngineRun> {
    let sandbox = sandbox(rows).await?;
    let run = with_scratch(Target { pg, sandbox: &sandbox }, async |s| {
        let token = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let producer = tokio::spawn(syncfleet_producer::run_with(listener, s.ops.clone(), token.clone()));
        let run = match spawn_worker(&s.config_path) {
            Ok(mut worker) => {
                let run = engine_run(s, &mut worker, rows).await;
                worker.kill().await.ok();
                run
            }
            Err(e) => Err(e),
        };
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), producer).await;
        run
    })
    .await;
    sandbox.shutdown().await.ok();
    run
}

fn spawn_worker(config_path: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
    let bin = std::env::current_exe()?.parent().context("exe dir")?.join("syncfleet-worker");
    anyhow::ensure!(bin.exists(), "{} missing: run `cargo build --release --bins` first", bin.display());
    Ok(tokio::process::Command::new(&bin)
        .env("SYNCFLEET_CONFIG", config_path)
        .env("SYNCFLEET__WORKER__NAME", "bench-upsert")
        .env("SYNCFLEET_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn engine_run(s: &Scratch, worker: &mut tokio::process::Child, rows: usize) -> anyhow::Result<EngineRun> {
    // Let the worker start and register before reading its idle memory.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(status) = worker.try_wait()? {
        anyhow::bail!("the worker process exited at start-up ({status})");
    }
    let pid = worker.id().context("worker exited at start-up")?;
    let idle_rss_mb = peak_rss_mb(pid)?;
    let run = s
        .ops
        .trigger(Trigger {
            chain: "http_json_sync".into(),
            integration: INTEGRATION.into(),
            mode: Mode::Full,
            kind: TriggerKind::Manual,
            triggered_by: "bench".into(),
            tick_key: None,
            force_sweep: false,
            step: None,
            step_modes: Default::default(),
        })
        .await?;
    let limit = Duration::from_secs(120 + rows as u64 / 200);
    let ended = syncfleet_producer::cli::wait_for(&s.ops, run, false, limit).await?;
    anyhow::ensure!(worker.try_wait()?.is_none(), "the worker process exited during the run");
    let peak_rss_mb = peak_rss_mb(pid)?;
    let view = views::run(&s.ops.pool, run).await?;
    anyhow::ensure!(ended.status == "completed", "engine run ended {}: {:?}", ended.status, ended.error);
    let step = view.steps.iter().find(|st| st.step == "pull").context("the run has no pull step")?;
    anyhow::ensure!(step.attempts == 1, "the pull step took {} attempts: {:?}", step.attempts, step.error);
    anyhow::ensure!(
        step.fetched == rows as i64 && step.inserted == rows as i64,
        "the pull step fetched {} and inserted {} of {rows} rows",
        step.fetched,
        step.inserted
    );
    let step_ms = step.duration_ms.context("the pull step has no duration")?;
    Ok(EngineRun {
        rows_per_sec: rows as f64 / (step_ms.max(1) as f64 / 1000.0),
        step_ms,
        fetched: step.fetched,
        inserted: step.inserted,
        api_calls: step.api_calls,
        idle_rss_mb,
        peak_rss_mb,
    })
}

/// `VmHWM` (peak resident set) of a process, in MiB.
pub(crate) fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kb / 1024.0)
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
        let integration_id = s.integration_id().await?;
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

/// Appends one value in COPY text format (`\N` for NULL; backslash, tab, newline, CR escaped).
fn copy_field(out: &mut String, value: Option<&str>) {
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

/// `items` with one `COPY … FROM STDIN` into the empty table; returns rows/s of the COPY alone.
async fn copy(target: Target<'_>, items: &[Value]) -> anyhow::Result<f64> {
    with_scratch(target, async |s| {
        let integration_id = s.integration_id().await?.to_string();
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
        let integration_id = s.integration_id().await?;
        let (table, entity) = s.table()?;
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

fn goal(met: bool, goal: String) -> String {
    format!("{goal}: {}", if met { "met" } else { "MISSED" })
}

pub async fn run(rows: usize, pg: PgServer) -> anyhow::Result<Value> {
    anyhow::ensure!(rows >= 10, "--rows must be at least 10 (the small engine run uses rows / 10)");
    let small = engine(&pg, rows / 10).await?;
    let big = engine(&pg, rows).await?;

    let sandbox = sandbox(rows).await?;
    let target = Target { pg: &pg, sandbox: &sandbox };
    let rbr_rows = rows.min(ROW_BY_ROW_MAX);
    let row_by_row = row_by_row(target, rbr_rows).await?;
    let (items, fetch_secs) = fetch_all(&sandbox, rows).await?;
    let copy = copy(target, &items).await?;
    let upsert = upsert_statement(target, &items).await?;
    drop(items);
    sandbox.shutdown().await.ok();

    let vs_row_by_row = big.rows_per_sec / row_by_row;
    let of_copy = big.rows_per_sec / copy;
    let growth = big.peak_rss_mb / small.peak_rss_mb;
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    Ok(json!({
        "rows": rows,
        "postgres": pg.describe(),
        "engine_rows_per_sec": r1(big.rows_per_sec),
        "engine_step_ms": big.step_ms,
        "fetched": big.fetched,
        "inserted": big.inserted,
        "api_calls": big.api_calls,
        "row_by_row_rows": rbr_rows,
        "row_by_row_rows_per_sec": r1(row_by_row),
        "copy_rows_per_sec": r1(copy),
        "engine_vs_row_by_row": r1(vs_row_by_row),
        "engine_of_copy": r3(of_copy),
        "worker_peak_rss_mb": r1(big.peak_rss_mb),
        "worker_peak_rss_mb_small": r1(small.peak_rss_mb),
        "worker_idle_rss_mb": r1(big.idle_rss_mb),
        "rss_growth_10x": r3(growth),
        "engine_rows_per_sec_small": r1(small.rows_per_sec),
        "engine_step_ms_small": small.step_ms,
        "sandbox_fetch_rows_per_sec": r1(rows as f64 / fetch_secs),
        "upsert_statement_rows_per_sec": r1(upsert),
        "goal_engine_vs_row_by_row": goal(vs_row_by_row >= GOAL_VS_ROW_BY_ROW, format!(">= {GOAL_VS_ROW_BY_ROW}x")),
        "goal_engine_of_copy": goal(of_copy >= GOAL_OF_COPY, format!(">= {GOAL_OF_COPY}")),
        "goal_worker_peak_rss_mb": goal(big.peak_rss_mb <= GOAL_PEAK_RSS_MB, format!("<= {GOAL_PEAK_RSS_MB} MiB")),
        "goal_rss_growth_10x": goal(growth <= GOAL_RSS_GROWTH_10X, format!("<= {GOAL_RSS_GROWTH_10X}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::copy_field;

    #[test]
    fn copy_text_escapes_what_the_format_reserves() {
        let mut out = String::new();
        copy_field(&mut out, Some("a\tb\\c\nd\re"));
        out.push('\t');
        copy_field(&mut out, None);
        assert_eq!(out, "a\\tb\\\\c\\nd\\re\t\\N");
    }
}
