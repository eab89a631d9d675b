//! The pull step engine: fetch pages, write each in one statement (an upsert; a `COPY` of new rows
//! during a first load), mark seen, record item errors, keep the cursor, sweep behind the deletion
//! guard. Memory is bounded by three pages (two being written, [`PAGE_WRITERS`], and the next one
//! being fetched), not by the size of the data.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream::FuturesOrdered};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::analyze::analyze_after_write;
use super::item_errors::resolve_unrepeated;
pub use super::item_errors::{record_errors, resolve};
pub use super::page::PAGE_WRITERS;
use super::page::{Prepared, Writer, Written};
use super::{
    Item, Page, Record, Source, SourceError, sweep,
    table::{INDEXED_VALUE_MAX_BYTES, RowOutcome, Table, UpsertCounts, check_text},
};
use crate::{
    chain::Mode,
    http::{HttpError, Verdict},
    ids::RunId,
    metrics,
    step::{PhaseResult, StepContext, StepError},
};

/// What a pull step syncs: one entity of one integration into one table.
#[derive(Debug, Clone)]
pub struct PullSpec {
    pub entity: String,
    pub table: Table,
    /// Incremental reads ask for changes since `cursor - lookback`.
    pub lookback: Duration,
    /// The cursor never passes `fetch start - margin` (clock skew, late commits upstream).
    pub margin: Duration,
    /// The sweep is refused when it would deactivate more than this share of the active rows.
    pub max_deactivate_share: f64,
}

impl PullSpec {
    pub fn new(entity: &str, table: Table) -> PullSpec {
        PullSpec {
            entity: entity.to_owned(),
            table,
            lookback: Duration::from_secs(300),
            margin: Duration::from_secs(5),
            max_deactivate_share: 0.15,
        }
    }
}

impl Verdict {
    /// The [`StepError`] of a failure reported as `source` (the [`HttpError`] itself, or a
    /// connector's own error wrapping it): permanent, or transient with the upstream's wait as the
    /// retry hint.
    pub fn step_error<E>(self, source: E) -> StepError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.permanent {
            return StepError::permanent(source);
        }
        let error = StepError::transient(source);
        match self.after {
            Some(after) => error.after(after),
            None => error,
        }
    }
}

impl From<HttpError> for StepError {
    /// Permanent or transient as [`HttpError::is_permanent`] says, with the upstream's wait as the
    /// retry hint.
    fn from(e: HttpError) -> Self {
        e.verdict().step_error(e)
    }
}

impl From<SourceError> for StepError {
    /// An HTTP failure is permanent or transient as [`HttpError::is_permanent`] says (a request the
    /// upstream refuses, one the upstream policy refuses, an answer too large, a looping list will
    /// not get better), with the upstream's wait as the retry hint; a wrong shape is transient.
    fn from(e: SourceError) -> Self {
        match &e {
            SourceError::Http(http) => http.verdict().step_error(e),
            SourceError::Shape(_) => StepError::transient(e),
        }
    }
}

/// Everything seen during one fetch.
#[derive(Debug, Default)]
struct Fetch {
    result: PhaseResult,
    /// Position of the next item over the whole fetch.
    position: i64,
    max_cursor: Option<DateTime<Utc>>,
    /// Earliest change time of an item that failed: the cursor stays before it so it is read again.
    min_failed_cursor: Option<DateTime<Utc>>,
    /// Records or failed items without a readable change time.
    without_cursor: i64,
    unreadable_ids: i64,
    short_pages: Vec<String>,
    total: Option<i64>,
    open_errors: bool,
    /// Every external id the read listed, written or not: an id listed twice means the upstream's
    /// paging repeated records (and may have skipped others), so the read cannot vouch for what it
    /// did not list. 128-bit digests of the ids, never the ids: memory stays three pages plus 16 bytes
    /// an id (a read of 400,000 contacts held 30 MiB of id strings), and two ids share a digest with
    /// a chance of about n² / 2¹²⁹.
    seen: HashSet<u128>,
    /// Ids listed more than once, and the first of them.
    repeated: i64,
    first_repeated: Option<String>,
    /// Per mapped column, whether an index covers it ([`Table::indexed_columns`]).
    indexed: Vec<bool>,
    /// The first item error of the read (external id, message): the run error when every item failed.
    first_error: Option<(String, String)>,
}

/// Runs one pull of `spec` from `source` for the step in `ctx` and returns its counts. Batches commit
/// as they go (upserts are idempotent, so a retried attempt converges); the cursor and the sweep
/// commit with the step's completion. A step that pulls several entities calls [`fetch`] for each
/// and [`Fetched::complete`] for all at its end instead, so its completion transaction is not held
/// open while the later entities are read.
pub async fn pull(ctx: &mut StepContext, spec: &PullSpec, source: &mut dyn Source) -> Result<PhaseResult, StepError> {
    let fetched = fetch(ctx, spec, source).await?;
    fetched.complete(ctx.tx().await?).await
}

/// One entity's read, its pages written, waiting for the step's completion transaction: the
/// cursor, the deletion guard and the sweep ([`Fetched::complete`]).
#[derive(Debug)]
pub struct Fetched {
    /// For the planner statistics refreshed beside the completion.
    pool: PgPool,
    spec: PullSpec,
    integration: String,
    integration_id: i64,
    run: RunId,
    mode: Mode,
    force: bool,
    /// The database's time when the read began ([`sweep::database_now`]): rows written since are
    /// spared by the sweep.
    fetch_started: DateTime<Utc>,
    cursor_before: Option<DateTime<Utc>>,
    cursor_after: Option<DateTime<Utc>>,
    fetch: Fetch,
    result: PhaseResult,
}

/// Reads every page of `spec` from `source` and writes each in its own fenced transaction, as
/// [`pull`] does, leaving the cursor and the sweep to [`Fetched::complete`]. Holds no transaction
/// open between pages.
pub async fn fetch(ctx: &StepContext, spec: &PullSpec, source: &mut dyn Source) -> Result<Fetched, StepError> {
    let integration_id = ctx.integration.id;
    // What the read starts from, on one connection (each taken from the pool costs a ping as it
    // goes back).
    let mut conn = ctx.pool.acquire().await?;
    let cursor_before = load_cursor(&mut *conn, integration_id, &spec.entity).await?;
    let since = match ctx.mode {
        Mode::Incremental => cursor_before.map(|c| c - spec.lookback),
        Mode::Full => None,
    };
    let fetch_started = sweep::database_now(&mut *conn).await?;
    let integration = ctx.integration.name.clone();
    let writer = Arc::new(Writer {
        pool: ctx.pool.clone(),
        integration: integration.clone(),
        integration_id,
        run: ctx.run_id,
        step: ctx.step.name.to_string(),
        entity: spec.entity.clone(),
        table: spec.table.clone(),
        fence: ctx.fence.clone(),
        first_load: AtomicBool::new(false),
    });
    let indexed = spec.table.indexed_columns(&mut conn).await?;
    // A first load writes its pages as new rows (`COPY`) until one meets a row already there.
    writer.first_load.store(spec.table.holds_none(&mut conn, integration_id).await?, Ordering::Relaxed);
    let mut fetch = Fetch { open_errors: writer.has_open_errors(&mut conn).await?, indexed, ..Fetch::default() };
    drop(conn);

    // Pages are written by up to [`PAGE_WRITERS`] transactions at once while the next page is read,
    // parsed and converted: the database works on two pages (on two of its backends) while the
    // worker works on the third. Each write is a task of its own, so it goes on (to its commit)
    // while this one converts, and is aborted if this step is dropped. A page that lists an id an
    // earlier page listed waits for every write before it, so the later copy wins and two writes
    // never lock the same rows.
    let mut writes = FuturesOrdered::new();
    let mut next = source.next_page(since).await?.map(|page| fetch.prepare(&spec.table, page));
    while let Some(page) = next.take() {
        if ctx.cancel.is_cancelled() {
            wait_writes(&mut writes, 0, &mut fetch, &writer).await?;
            return Err(StepError::retry("stopped between pages"));
        }
        let keep = if page.repeats { 0 } else { PAGE_WRITERS - 1 };
        wait_writes(&mut writes, keep, &mut fetch, &writer).await?;
        let open_errors = fetch.open_errors;
        fetch.open_errors |= !page.failed.is_empty();
        let task = AbortOnDropHandle::new(tokio::spawn({
            let writer = Arc::clone(&writer);
            async move {
                let counts = writer.write(open_errors, &page).await?;
                Ok((page, counts))
            }
            // In the step's span, as if written inline: its statements' spans are the step's.
            .in_current_span()
        }));
        writes.push_back(async move { task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) });
        // The next page is read while the writes go on; a write that ends meanwhile is counted.
        let read = source.next_page(since);
        tokio::pin!(read);
        let page = loop {
            tokio::select! {
                page = &mut read => break page,
                Some(written) = writes.next() => match written {
                    Ok((done, counts)) => fetch.written(&writer, &done, counts),
                    Err(e) => return Err(after_writes(&mut writes, &mut fetch, &writer, e).await),
                },
            }
        };
        next = match page {
            Ok(page) => page.map(|page| fetch.prepare(&spec.table, page)),
            Err(e) => {
                // The pages in flight commit (and are counted) before the read's failure ends the step.
                wait_writes(&mut writes, 0, &mut fetch, &writer).await?;
                return Err(e.into());
            }
        };
    }
    wait_writes(&mut writes, 0, &mut fetch, &writer).await?;

    if let Some(message) = every_item_failed(&spec.entity, &fetch) {
        // Retrying reads the same records again: fail now, with the reason in the run error.
        return Err(StepError::abort(message));
    }
    let mut result = fetch.result.clone();
    result.cursor_before = cursor_before.map(fmt_cursor);
    let cursor_after = next_cursor(&fetch, cursor_before, fetch_started - spec.margin);
    result.cursor_after = cursor_after.map(fmt_cursor);
    Ok(Fetched {
        pool: ctx.pool.clone(),
        spec: spec.clone(),
        integration,
        integration_id,
        run: ctx.run_id,
        mode: ctx.mode,
        force: ctx.force_sweep,
        fetch_started,
        cursor_before,
        cursor_after,
        fetch,
        result,
    })
}

impl Fetched {
    /// Writes the read's cursor, runs the deletion guard and the sweep (full mode) and resolves the
    /// item errors the read did not repeat, on `conn`: the step's completion transaction
    /// ([`StepContext::tx`]), opened at the end of the step. Returns the entity's counts.
    ///
    /// After a big write the table's planner statistics are refreshed ([`analyze_after_write`]) on a
    /// connection of their own while the completion runs; both end before this returns, so the
    /// steps after this one are planned on what the table holds now. (The completion's own
    /// statements read the integration's rows whole, which an index or a sequential scan does as
    /// well without them.)
    pub async fn complete(self, conn: &mut PgConnection) -> Result<PhaseResult, StepError> {
        let (pool, table) = (self.pool.clone(), self.spec.table.name.clone());
        let written = self.result.inserted + self.result.updated;
        let (completed, ()) = tokio::join!(self.complete_on(conn), analyze_after_write(&pool, &table, written));
        completed
    }

    async fn complete_on(self, conn: &mut PgConnection) -> Result<PhaseResult, StepError> {
        let Fetched {
            pool: _,
            spec,
            integration,
            integration_id,
            run,
            mode,
            force,
            fetch_started,
            cursor_before,
            cursor_after,
            fetch,
            mut result,
        } = self;
        if cursor_after != cursor_before
            && let Some(c) = cursor_after
        {
            save_cursor(conn, integration_id, &spec.entity, c, run).await?;
        }
        result.guard = Some(match mode {
            Mode::Incremental => "not run: incremental".to_owned(),
            Mode::Full => {
                let (guard, deactivated, refused) =
                    guard_and_sweep(conn, &spec, integration_id, run, fetch_started, &fetch, force).await?;
                result.deactivated = deactivated;
                // Counted when swept; the sweep commits with the step.
                metrics::records(&integration, &spec.entity, "deactivated", deactivated);
                // A refused sweep leaves rows the upstream may have deleted: the run says so
                // (`partial`) instead of passing for a complete sync.
                result.partial |= refused;
                guard
            }
        });
        if let Some(short) = fetch.short_pages.first() {
            // The read was cut short: what it did not read is neither written nor swept.
            result.partial = true;
            if mode == Mode::Incremental {
                let n = fetch.short_pages.len();
                result.guard = Some(format!("read cut short: {short} ({n} short page(s)); cursor kept"));
            }
        }
        if mode == Mode::Full && fetch.short_pages.is_empty() && fetch.unreadable_ids == 0 && fetch.repeated == 0 {
            // Every item was read again: open errors this run did not repeat are gone upstream or fixed.
            resolve_unrepeated(conn, integration_id, &spec.entity, run).await?;
        }
        tracing::info!(
            entity = %spec.entity, fetched = result.fetched, inserted = result.inserted, updated = result.updated,
            unchanged = result.unchanged, deactivated = result.deactivated, errors = result.errors,
            guard = result.guard.as_deref().unwrap_or(""), "Pull finished."
        );
        Ok(result)
    }
}

/// The new cursor: the latest change seen, but never past `ceiling` nor past an item that failed;
/// unchanged when nothing was read or a change time could not be read.
fn next_cursor(fetch: &Fetch, before: Option<DateTime<Utc>>, ceiling: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if fetch.without_cursor > 0 || !fetch.short_pages.is_empty() {
        return before;
    }
    let Some(seen) = fetch.max_cursor else {
        return before;
    };
    let mut next = seen.min(ceiling);
    if let Some(failed) = fetch.min_failed_cursor {
        next = next.min(failed - chrono::Duration::microseconds(1));
    }
    Some(next)
}

/// The deletion guard ([`sweep::refusal`], the rules scoped sweeps use too), then the sweep when it
/// allows one (or an operator forced it).
async fn guard_and_sweep(
    conn: &mut PgConnection,
    spec: &PullSpec,
    integration_id: i64,
    run: RunId,
    fetch_started: DateTime<Utc>,
    fetch: &Fetch,
    force: bool,
) -> Result<(String, i64, bool), sqlx::Error> {
    let (active, missing) = spec.table.sweep_counts(conn, integration_id, run, fetch_started).await?;
    let facts = sweep::Facts {
        fetched: fetch.result.fetched,
        active,
        missing,
        unreadable_ids: fetch.unreadable_ids,
        short_pages: &fetch.short_pages,
        total: fetch.total,
        repeated: fetch.first_repeated.as_deref().map(|id| (id, fetch.repeated)),
    };
    match sweep::decide(sweep::refusal(&facts, sweep::Limits::full(spec.max_deactivate_share)), force) {
        Err(reason) => {
            tracing::warn!(entity = %spec.entity, %reason, "Deletion guard refused the sweep.");
            Ok((format!("blocked: {reason}"), 0, true))
        }
        Ok(overridden) => {
            let n = spec.table.sweep(conn, integration_id, run, fetch_started).await?;
            let forced = if force { "forced: " } else { "" };
            let overridden = overridden.map(|r| format!(" (guard: {r})")).unwrap_or_default();
            Ok((format!("{forced}swept: {n} of {active} active rows deactivated{overridden}"), n, false))
        }
    }
}

/// Waits for the oldest writes in flight until at most `keep` remain, counting each that committed.
/// A failure is returned once every write in flight has ended, the others still counted.
async fn wait_writes<F>(
    writes: &mut FuturesOrdered<F>,
    keep: usize,
    fetch: &mut Fetch,
    writer: &Writer,
) -> Result<(), StepError>
where
    F: Future<Output = Written>,
{
    while writes.len() > keep {
        let Some(written) = writes.next().await else { break };
        match written {
            Ok((page, counts)) => fetch.written(writer, &page, counts),
            Err(e) => return Err(after_writes(writes, fetch, writer, e).await),
        }
    }
    Ok(())
}

/// `error`, once the writes still in flight have ended (those that committed counted).
async fn after_writes<F>(
    writes: &mut FuturesOrdered<F>,
    fetch: &mut Fetch,
    writer: &Writer,
    error: StepError,
) -> StepError
where
    F: Future<Output = Written>,
{
    while let Some(written) = writes.next().await {
        if let Ok((page, counts)) = written {
            fetch.written(writer, &page, counts);
        }
    }
    error
}

impl Fetch {
    /// Takes one page's bookkeeping (total, short page) and converts its records.
    fn prepare(&mut self, table: &Table, page: Page) -> Prepared {
        if let Some(total) = page.total {
            self.total = Some(total);
        }
        if let Some(short) = page.short {
            self.short_pages.push(short);
        }
        let (errors_before, repeated_before) = (self.result.errors, self.repeated);
        let mut prepared = prepare(table, self, page.items);
        prepared.errors = self.result.errors - errors_before;
        prepared.repeats = self.repeated > repeated_before;
        prepared
    }

    /// Counts a page that committed, so the counters follow the table even if the step fails later.
    fn written(&mut self, writer: &Writer, page: &Prepared, counts: UpsertCounts) {
        self.result.inserted += counts.inserted;
        self.result.updated += counts.updated;
        self.result.unchanged += counts.unchanged;
        if self.first_error.is_none()
            && let Some(first) = page.failed.first()
        {
            self.first_error = Some(first.clone());
        }
        let (integration, entity) = (writer.integration.as_str(), writer.entity.as_str());
        metrics::records(integration, entity, "inserted", counts.inserted);
        metrics::records(integration, entity, "updated", counts.updated);
        metrics::records(integration, entity, "unchanged", counts.unchanged);
        metrics::records(integration, entity, "error", page.errors);
    }
}

/// When a read listed items and wrote none of them, every one an item error, the step's error:
/// retrying cannot fix what the upstream sends (a changed format, a value every record carries),
/// so the step fails at once, naming the first record and its reason.
fn every_item_failed(entity: &str, fetch: &Fetch) -> Option<String> {
    let r = &fetch.result;
    if r.errors == 0 || r.inserted + r.updated + r.unchanged > 0 {
        return None;
    }
    let first = fetch.first_error.as_ref().map(|(id, m)| format!("; the first, `{id}`: {m}")).unwrap_or_default();
    Some(format!(
        "every item of `{entity}` the upstream sent failed ({} item errors), none was written{first}",
        r.errors
    ))
}

/// Converts a page's records to column values; items that cannot be written become failures.
/// Within a page the last copy of an external id wins.
fn prepare(table: &Table, fetch: &mut Fetch, items: Vec<Item>) -> Prepared {
    let mut out =
        Prepared { columns: vec![Vec::with_capacity(items.len()); table.columns.len()], ..Default::default() };
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for item in items {
        fetch.position += 1;
        fetch.result.fetched += 1;
        let (cursor, outcome) = match item {
            Item::Record(record) => (record.cursor, convert(table, &fetch.indexed, record)),
            Item::Bad { external_id, cursor, message } => (cursor, Err((checked_id(external_id), message))),
        };
        let listed = match &outcome {
            Ok((id, _)) | Err((Some(id), _)) => Some(id),
            Err((None, _)) => None,
        };
        if let Some(id) = listed
            && !fetch.seen.insert(id_digest(id))
        {
            fetch.repeated += 1;
            fetch.first_repeated.get_or_insert_with(|| id.clone());
        }
        match cursor {
            Some(c) => fetch.max_cursor = fetch.max_cursor.max(Some(c)),
            None => fetch.without_cursor += 1,
        }
        match outcome {
            Ok((id, values)) => match index.get(&id) {
                Some(&row) => {
                    for (column, v) in out.columns.iter_mut().zip(values) {
                        column[row] = v;
                    }
                }
                None => {
                    index.insert(id.clone(), out.ids.len());
                    out.ids.push(id);
                    for (column, v) in out.columns.iter_mut().zip(values) {
                        column.push(v);
                    }
                }
            },
            Err((id, message)) => {
                fetch.result.errors += 1;
                if let Some(c) = cursor {
                    fetch.min_failed_cursor = Some(fetch.min_failed_cursor.map_or(c, |m| m.min(c)));
                }
                let key = match id {
                    Some(id) => id,
                    None => {
                        fetch.unreadable_ids += 1;
                        format!("?{}", fetch.position)
                    }
                };
                if let Some(slot) = out.failed.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = message;
                } else {
                    out.failed.push((key, message));
                }
            }
        }
    }
    // An id that failed and also synced within the page keeps only its success.
    out.failed.retain(|(k, _)| !index.contains_key(k));
    out.spared = out.failed.iter().filter(|(k, _)| !k.starts_with('?')).map(|(k, _)| k.clone()).collect();
    out
}

type Failure = (Option<String>, String);

/// A 128-bit digest of an external id: two SipHash-1-3 values of it under different fixed keys.
fn id_digest(id: &str) -> u128 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher};
    let low = BuildHasherDefault::<DefaultHasher>::default().hash_one(id);
    let mut high = DefaultHasher::new();
    0x5f3c_9d1e_u32.hash(&mut high);
    id.hash(&mut high);
    (u128::from(high.finish()) << 64) | u128::from(low)
}

/// An external id that can be stored (and named by an item error), `None` otherwise: empty, too
/// long for the unique index, or holding a NUL or undecodable text.
fn checked_id(id: Option<String>) -> Option<String> {
    id.filter(|id| !id.is_empty() && id.len() <= INDEXED_VALUE_MAX_BYTES && check_text(id).is_ok())
}

/// A record's values in column order, each checked ([`ColumnType::convert_checked`], `indexed`
/// per column; empty for none known). The first bad value makes the record an item error naming
/// the field and the reason.
fn convert(table: &Table, indexed: &[bool], record: Record) -> Result<(String, Vec<Option<String>>), Failure> {
    let id = record.external_id;
    if let Err(reason) = check_text(&id) {
        return Err((None, format!("external id: {reason}")));
    }
    if id.is_empty() {
        return Err((None, "empty external id".into()));
    }
    if id.len() > INDEXED_VALUE_MAX_BYTES {
        return Err((
            None,
            format!("external id is {} bytes, over the {INDEXED_VALUE_MAX_BYTES}-byte limit", id.len()),
        ));
    }
    let (mut fields, mut values) = (record.fields, Vec::with_capacity(table.columns.len()));
    for (i, c) in table.columns.iter().enumerate() {
        let v = fields.remove(&c.name).unwrap_or(Value::Null);
        match c.ty.convert_checked(v, indexed.get(i).copied().unwrap_or(false)) {
            Ok(v) => values.push(v),
            Err(m) => return Err((Some(id), format!("field `{}`: {m}", c.name))),
        }
    }
    Ok((id, values))
}

/// Syncs one record (webhook or fetch by id) through the same mapping and upsert as a pull.
/// A record that cannot be written is recorded as an open item error and returned as `Err`.
pub async fn sync_one(
    pool: &PgPool,
    integration_id: i64,
    entity: &str,
    table: &Table,
    item: Item,
) -> Result<Result<(String, RowOutcome), String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let indexed = table.indexed_columns(&mut tx).await?;
    let converted = match item {
        Item::Record(r) => convert(table, &indexed, r),
        Item::Bad { external_id, message, .. } => Err((checked_id(external_id), message)),
    };
    let answer = match converted {
        Ok((id, values)) => {
            let columns: Vec<Vec<Option<String>>> = values.into_iter().map(|v| vec![v]).collect();
            let rows = table.upsert_rows(&mut tx, integration_id, None, std::slice::from_ref(&id), &columns).await?;
            resolve(&mut tx, integration_id, entity, std::slice::from_ref(&id)).await?;
            let outcome = rows.first().map_or(RowOutcome::Unchanged, |(_, o)| *o);
            Ok((id, outcome))
        }
        Err((id, message)) => {
            let key = id.unwrap_or_else(|| "?webhook".into());
            record_errors(&mut tx, None, "webhook", integration_id, entity, &[(key.clone(), message.clone())]).await?;
            Err(format!("item {key}: {message}"))
        }
    };
    tx.commit().await?;
    Ok(answer)
}

fn fmt_cursor(c: DateTime<Utc>) -> String {
    c.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The entity's saved incremental cursor, `None` before its first read (or if unreadable).
pub async fn load_cursor(
    conn: impl sqlx::PgExecutor<'_>,
    integration_id: i64,
    entity: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM cursors WHERE integration_id = $1 AND entity = $2")
            .bind(integration_id)
            .bind(entity)
            .fetch_optional(conn)
            .await?;
    Ok(value.and_then(|v| super::table::parse_timestamp(&v)))
}

async fn save_cursor(
    conn: &mut PgConnection,
    integration_id: i64,
    entity: &str,
    value: DateTime<Utc>,
    run: RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cursors (integration_id, entity, value, run_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (integration_id, entity) DO UPDATE SET value = EXCLUDED.value, run_id = EXCLUDED.run_id,
             updated_at = now()",
    )
    .bind(integration_id)
    .bind(entity)
    .bind(fmt_cursor(value))
    .bind(run.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds one entity's counts to a step's result (a step may pull several entities).
pub fn merge(into: &mut PhaseResult, entity: &str, r: PhaseResult, entities: usize) {
    into.fetched += r.fetched;
    into.inserted += r.inserted;
    into.updated += r.updated;
    into.unchanged += r.unchanged;
    into.deactivated += r.deactivated;
    into.errors += r.errors;
    into.partial |= r.partial;
    into.api_calls += r.api_calls;
    into.throttled += r.throttled;
    let label = |v: Option<String>| if entities > 1 { v.map(|v| format!("{entity}={v}")) } else { v };
    let join = |a: Option<String>, b: Option<String>, sep: &str| match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}{sep}{b}")),
        (a, b) => a.or(b),
    };
    into.cursor_before = join(into.cursor_before.take(), label(r.cursor_before), " ");
    into.cursor_after = join(into.cursor_after.take(), label(r.cursor_after), " ");
    let guard = r.guard.map(|g| if entities > 1 { format!("{entity}: {g}") } else { g });
    into.guard = join(into.guard.take(), guard, "; ");
}
