//! `sync_enrollments`: the enrollments of partner users only — LMS users linked to a contact of an
//! active partner, or confirmed members of a partner-linked group — one transcript call per user
//! (`GET /transcripts/{person id}`, paged, 404 = no enrollments), into `partner_enrollments`
//! (external id `{person id}:{course id}`).
//!
//! Fan-out: the step runs as `shards` jobs over the fleet; shard `k` of `n` takes the users whose
//! shard ([`SHARD_OF_SQL`], computed by PostgreSQL) is `k`, and reads only those from the database.
//! Every shard's Northpass client reserves from the one `northpass` rate budget, so the fleet
//! together stays within the upstream's rate.
//!
//! Memory stays flat in the data: the shard's partner users are read in keyset pages of
//! [`USERS_PER_PAGE`] (by external id), their transcripts in batches of [`USERS_PER_BATCH`], and the
//! former partner users whose enrollments the shard clears in pages too.
//!
//! A user's transcript is the whole truth about that user: the rows of the users a batch read are
//! written with the contract's upsert and the user's rows the transcript no longer lists are
//! soft-deleted in the same transaction by the SDK's scoped sweep (scoped to those users, so shards
//! never touch each other's rows), behind the deletion guard decided per user: an empty transcript
//! while the user has active enrollments, an unreadable item, or a share above
//! `max_deactivate_share` is refused unless the run forces the sweep. The step's `guard` records the
//! decisions; a user whose sweep was refused is not marked read. Enrollments of users of the shard
//! who are no longer partner users are soft-deleted with the step's completion.
//!
//! A transcript that cannot be read (any failure but 404, after the client's retries) is an item
//! error of the user (external id the person id): the shard goes on, and the user's rows and read
//! mark stay as they were (the next run reads the user again; a later read resolves the error).
//! When every transcript the shard tried failed, the upstream is failing, not one user: the step
//! fails with its error.
//!
//! Incremental mode reads only the users whose transcript was never read (new partner users) or who
//! were active on the LMS (`last_active_at`, from `sync_users`) within [`INCREMENTAL_LOOKBACK`]
//! before their last read (`partner_lms_users.transcript_read_at`, written with the batch that read
//! it). Transcripts take no filter, and a person's activity is the only change signal Northpass gives
//! for them; an enrollment an administrator adds without the person's activity waits for the
//! person's next activity or the next full run.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::{northpass::Northpass, settings_of};
use syncfleet_sdk::{
    chain::Mode,
    http::HttpError,
    step::{AttemptFence, StepContext, StepError, StepHandler},
    sync::{
        Item, Record, Source, SourceError, pointer, pull,
        sweep::{self, Decision, ScopeRead, ScopedSweep, Sweeps},
        table::{Column, ColumnType, Table, UpsertCounts},
    },
};

pub const ENTITY: &str = "enrollments";

/// How far before its last run an incremental run looks for user activity.
pub const INCREMENTAL_LOOKBACK: chrono::Duration = chrono::Duration::days(7);

/// Shards of the step in the pack's chains (overridable per deployment: `shards` of the step).
pub const SHARDS: u32 = 4;

/// Users whose transcripts are read and written together (one transaction).
const USERS_PER_BATCH: usize = 20;

/// Transcript reads in flight at once per shard (the client's gate and the rate budget still apply).
const TRANSCRIPTS_IN_FLIGHT: usize = 4;

/// `partner_enrollments` (migration `0005`) as this step writes it.
pub fn table() -> Table {
    use ColumnType::{Integer, Text, Timestamptz};
    let columns = [
        ("person_id", Text),
        ("course_id", Text),
        ("course_name", Text),
        ("progress_status", Text),
        ("enrolled_at", Timestamptz),
        ("started_at", Timestamptz),
        ("completed_at", Timestamptz),
        ("last_active_at", Timestamptz),
        ("attempt_number", Integer),
    ]
    .into_iter()
    .map(|(name, ty)| Column { name: name.to_owned(), ty })
    .collect();
    Table::new("partner_enrollments", columns).expect("a valid table declaration")
}

/// The shard (of `$2`) that reads user `$1`: PostgreSQL's `hashtext` of the id, made non-negative,
/// modulo the shard count. Stable across processes, releases and runs (it is the server's own
/// function), and computed where the users are, so a shard reads only its own. The step's queries
/// use the same expression on their id column.
pub const SHARD_OF_SQL: &str = "SELECT (hashtext($1) & 2147483647) % $2";

/// Partner users read per page (keyset by external id).
pub const USERS_PER_PAGE: i64 = 1000;

/// One page of the partner users of one shard (`$2` shards, `$3` this one) after external id `$4`
/// (`$5` rows at most), with their last activity and last transcript read. A partner user is an
/// active LMS user linked to a partner's contact, or a confirmed member of a partner-linked group.
/// The scan follows the `(integration_id, external_id)` key, so every page costs its own rows: the
/// membership test is one index probe per user without a partner (`OFFSET 0` keeps the planner
/// from hashing every membership of the integration for each page instead), and the page runs
/// with JIT off ([`NO_JIT`]; the planner's estimate of the probes, far above the real cost,
/// otherwise compiles each page: 50 ms idle, over a second under load, for a 20 ms page).
pub const PARTNER_USERS_SQL: &str = "
    SELECT u.external_id, u.last_active_at, u.transcript_read_at FROM partner_lms_users u
    WHERE u.integration_id = $1 AND u.is_active AND u.external_id > $4
      AND (hashtext(u.external_id) & 2147483647) % $2 = $3
      AND (u.partner_id IS NOT NULL OR EXISTS (
          SELECT 1 FROM partner_group_memberships m
          JOIN partner_group_links l ON l.integration_id = m.integration_id AND l.external_id = m.group_id AND l.is_active
          WHERE m.integration_id = u.integration_id AND m.person_id = u.external_id AND m.is_active
            AND m.status = 'confirmed' OFFSET 0))
    ORDER BY u.external_id
    LIMIT $5";

/// Statements of a page of users: without JIT compilation (see [`PARTNER_USERS_SQL`]).
const NO_JIT: &str = "SET LOCAL jit = off";

/// One page of the people of one shard (as [`PARTNER_USERS_SQL`]) after person id `$4` who hold
/// active enrollments but are no longer partner users.
const FORMER_PARTNER_USERS_SQL: &str = "
    SELECT DISTINCT e.person_id FROM partner_enrollments e
    WHERE e.integration_id = $1 AND e.is_active AND e.person_id > $4
      AND (hashtext(e.person_id) & 2147483647) % $2 = $3
      AND NOT EXISTS (
          SELECT 1 FROM partner_lms_users u
          WHERE u.integration_id = e.integration_id AND u.external_id = e.person_id AND u.is_active
            AND (u.partner_id IS NOT NULL OR EXISTS (
                SELECT 1 FROM partner_group_memberships m
                JOIN partner_group_links l
                  ON l.integration_id = m.integration_id AND l.external_id = m.group_id AND l.is_active
                WHERE m.integration_id = u.integration_id AND m.person_id = u.external_id AND m.is_active
                  AND m.status = 'confirmed' OFFSET 0)))
    ORDER BY e.person_id
    LIMIT $5";

type UserRow = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Whether an incremental run reads this user's transcript: never read, or active within the
/// look-back before the last read.
fn due(last_active: Option<DateTime<Utc>>, read_at: Option<DateTime<Utc>>) -> bool {
    match read_at {
        None => true,
        Some(read) => last_active.is_some_and(|t| t >= read - INCREMENTAL_LOOKBACK),
    }
}

pub struct SyncEnrollments;

impl StepHandler for SyncEnrollments {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let (integration_id, run) = (ctx.integration.id, ctx.run_id);
            let (shard, shards) = (ctx.shard.max(0) as u32, ctx.step.shards.max(1));
            let cursor_entity = format!("{ENTITY}:{shard}/{shards}");
            let started = Utc::now();

            let last_run: Option<DateTime<Utc>> = match ctx.mode {
                Mode::Full => None,
                Mode::Incremental => pull::load_cursor(&ctx.pool, integration_id, &cursor_entity).await?,
            };
            let page_of = |after: String| {
                sqlx::query_as::<_, UserRow>(PARTNER_USERS_SQL)
                    .bind(integration_id)
                    .bind(shards as i32)
                    .bind(shard as i32)
                    .bind(after)
                    .bind(USERS_PER_PAGE)
            };

            let table = table();
            let writer = Writer {
                pool: &ctx.pool,
                fence: ctx.fence.as_ref(),
                table: &table,
                integration_id,
                run,
                step: ctx.step.name.as_str(),
                max_share: settings.max_deactivate_share,
                force: ctx.force_sweep,
            };
            let mut totals = Totals::default();
            let (mut users_read, mut first_failure) = (0, None::<SourceError>);
            let (mut partner_users, mut to_read) = (0usize, 0usize);
            let mut after = String::new();
            loop {
                let mut tx = ctx.pool.begin().await?;
                sqlx::query(NO_JIT).execute(&mut *tx).await?;
                let page: Vec<UserRow> = page_of(std::mem::take(&mut after)).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                let Some((last, _, _)) = page.last() else { break };
                after = last.clone();
                let more = page.len() as i64 == USERS_PER_PAGE;
                partner_users += page.len();
                let owed: Vec<String> = page
                    .into_iter()
                    .filter(|(_, active, read_at)| ctx.mode == Mode::Full || due(*active, *read_at))
                    .map(|(id, _, _)| id)
                    .collect();
                to_read += owed.len();
                for batch in owed.chunks(USERS_PER_BATCH) {
                    if ctx.cancel.is_cancelled() {
                        ctx.record_calls(&[&client]);
                        return Err(StepError::retry("stopped between batches"));
                    }
                    let read_started = sweep::database_now(&ctx.pool).await?;
                    let api = &api;
                    let read: Vec<(String, Result<Vec<Item>, SourceError>)> = futures::stream::iter(batch.to_vec())
                        .map(|user| async move {
                            let items = transcript(api, &user).await;
                            (user, items)
                        })
                        .buffered(TRANSCRIPTS_IN_FLIGHT)
                        .collect()
                        .await;
                    let mut transcripts = Vec::with_capacity(read.len());
                    let mut unread = vec![];
                    for (user, items) in read {
                        match items {
                            Ok(items) => transcripts.push((user, items)),
                            Err(SourceError::Http(HttpError::Cancelled)) => {
                                ctx.record_calls(&[&client]);
                                return Err(StepError::retry("stopped while reading transcripts"));
                            }
                            Err(e) => {
                                let message = format!("user {user}: transcript not read: {e}");
                                first_failure.get_or_insert(e);
                                unread.push((user, message));
                            }
                        }
                    }
                    users_read += transcripts.len();
                    writer.write(&mut totals, transcripts, unread, read_started).await?;
                }
                if !more {
                    break;
                }
            }
            ctx.record_calls(&[&client]);
            // One user's transcript failing is an item error; every one failing is the upstream's.
            if users_read == 0
                && let Some(e) = first_failure
            {
                return Err(e.into());
            }

            // Users of this shard who are no longer partner users keep no enrollments.
            let conn = ctx.tx().await?;
            sqlx::query(NO_JIT).execute(&mut *conn).await?;
            let (mut former, mut dropped) = (0usize, 0i64);
            let mut after = String::new();
            loop {
                let page: Vec<String> = sqlx::query_scalar(FORMER_PARTNER_USERS_SQL)
                    .bind(integration_id)
                    .bind(shards as i32)
                    .bind(shard as i32)
                    .bind(std::mem::take(&mut after))
                    .bind(USERS_PER_PAGE)
                    .fetch_all(&mut *conn)
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.clone();
                former += page.len();
                dropped += sweep::deactivate_scopes(conn, &table, integration_id, "person_id", &page).await?;
                // Should they become partner users again, their transcript is read in full again.
                sqlx::query(
                    "UPDATE partner_lms_users SET transcript_read_at = NULL
                     WHERE integration_id = $1 AND external_id = ANY($2) AND transcript_read_at IS NOT NULL",
                )
                .bind(integration_id)
                .bind(&page)
                .execute(&mut *conn)
                .await?;
                if (page.len() as i64) < USERS_PER_PAGE {
                    break;
                }
            }
            save_cursor(conn, integration_id, &cursor_entity, started, run).await?;

            let r = &mut ctx.result;
            r.fetched += totals.fetched;
            r.inserted += totals.counts.inserted;
            r.updated += totals.counts.updated;
            r.unchanged += totals.counts.unchanged;
            r.deactivated += totals.sweeps.deactivated + dropped;
            r.errors += totals.errors;
            r.cursor_before = last_run.map(|c| c.to_rfc3339());
            r.cursor_after = Some(started.to_rfc3339());
            ctx.note(format!(
                "shard {shard}/{shards}: {partner_users} partner user(s), {to_read} transcript(s) read, \
                 {former} former partner user(s) cleared"
            ));
            ctx.note(totals.sweeps.note("enrollments", "user"));
            let written = ctx.result.inserted + ctx.result.updated + ctx.result.deactivated;
            syncfleet_sdk::sync::analyze::analyze_after_write(&ctx.pool, "partner_enrollments", written).await;
            Ok(())
        }
        .boxed()
    }
}

/// Every item of a user's transcript (all pages); a 404 is a user without enrollments.
async fn transcript(api: &Northpass<'_>, user: &str) -> Result<Vec<Item>, SourceError> {
    let mut list = api.list(&format!("/transcripts/{user}"), transcript_item);
    let mut items = vec![];
    loop {
        match list.next_page(None).await {
            Ok(Some(page)) => items.extend(page.items),
            Ok(None) => return Ok(items),
            Err(SourceError::Http(e)) if e.status() == Some(404) => return Ok(items),
            Err(e) => return Err(e),
        }
    }
}

/// A transcript item: keyed by the resource (course) id until the writer prefixes the person.
fn transcript_item(raw: Value) -> Item {
    let Some(course) = pointer::get(&raw, "/attributes/resource_id").and_then(Value::as_str).filter(|s| !s.is_empty())
    else {
        let id = raw.get("id").and_then(Value::as_str).map(|s| format!("item {s}"));
        return Item::Bad { external_id: id, cursor: None, message: "no readable `attributes.resource_id`".into() };
    };
    let a = &raw["attributes"];
    let mut fields = Map::new();
    fields.insert("course_id".into(), json!(course));
    for (column, attr) in [
        ("course_name", "name"),
        ("progress_status", "progress_status"),
        ("enrolled_at", "enrolled_at"),
        ("started_at", "started_at"),
        ("completed_at", "completed_at"),
        ("last_active_at", "last_active_at"),
        ("attempt_number", "attempt_number"),
    ] {
        fields.insert(column.into(), a.get(attr).cloned().unwrap_or(Value::Null));
    }
    Item::Record(Record { external_id: course.to_owned(), cursor: None, fields, raw })
}

#[derive(Default)]
struct Totals {
    fetched: i64,
    counts: UpsertCounts,
    /// The guard's decisions per user read.
    sweeps: Sweeps,
    errors: i64,
}

struct Writer<'a> {
    pool: &'a sqlx::PgPool,
    /// Each batch commits only while the attempt holds.
    fence: Option<&'a AttemptFence>,
    table: &'a Table,
    integration_id: i64,
    run: syncfleet_sdk::ids::RunId,
    step: &'a str,
    /// The guard's share limit per user, and the run's `force_sweep`.
    max_share: f64,
    force: bool,
}

/// One user's transcript as a batch read it.
struct UserRead {
    user: String,
    answered: i64,
    /// Ids of the user's rows the transcript lists (written, or kept because they failed to convert).
    listed: Vec<String>,
    /// Items without a readable course id.
    unreadable: i64,
    /// Every item was written.
    complete: bool,
}

impl Writer<'_> {
    /// Writes the transcripts of one batch of users in one transaction: their rows, the guarded
    /// sweep of their rows no longer listed, the read mark of the users written in full whose sweep
    /// went through, and item errors. `unread` are the users whose transcript could not be read
    /// (with the reason): an item error each (external id the user's), their rows and read mark
    /// untouched.
    async fn write(
        &self,
        totals: &mut Totals,
        transcripts: Vec<(String, Vec<Item>)>,
        unread: Vec<(String, String)>,
        read_started: DateTime<Utc>,
    ) -> Result<(), StepError> {
        let mut rows: HashMap<String, Vec<Option<String>>> = HashMap::new();
        let mut order = vec![];
        let mut failed = unread;
        let mut reads = Vec::with_capacity(transcripts.len());
        for (user, items) in transcripts {
            let mut read =
                UserRead { user, answered: items.len() as i64, listed: vec![], unreadable: 0, complete: true };
            let user = read.user.as_str();
            for item in items {
                totals.fetched += 1;
                let converted = match item {
                    Item::Record(mut r) => {
                        r.fields.insert("person_id".into(), json!(user));
                        let id = format!("{user}:{}", r.external_id);
                        read.listed.push(id.clone());
                        columns(self.table, &r.fields).map(|v| (id.clone(), v)).map_err(|m| (id, m))
                    }
                    Item::Bad { external_id, message, .. } => {
                        read.unreadable += 1;
                        Err((format!("{user}:{}", external_id.unwrap_or_else(|| "?".into())), message))
                    }
                };
                match converted {
                    Ok((id, values)) => {
                        if rows.insert(id.clone(), values).is_none() {
                            order.push(id);
                        }
                    }
                    Err(f) => {
                        read.complete = false;
                        failed.push(f);
                    }
                }
            }
            reads.push(read);
        }
        totals.errors += failed.len() as i64;
        let mut by_column: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(order.len()); self.table.columns.len()];
        for id in &order {
            for (column, v) in by_column.iter_mut().zip(&rows[id]) {
                column.push(v.clone());
            }
        }
        let mut tx = AttemptFence::begin(self.fence, self.pool).await?;
        if !order.is_empty() {
            let c = self.table.upsert(&mut tx, self.integration_id, Some(self.run), &order, &by_column).await?;
            totals.counts.inserted += c.inserted;
            totals.counts.updated += c.updated;
            totals.counts.unchanged += c.unchanged;
            syncfleet_sdk::sync::pull::resolve(&mut tx, self.integration_id, ENTITY, &order).await?;
        }
        let scopes: Vec<ScopeRead<'_>> = reads
            .iter()
            .map(|r| ScopeRead { scope: &r.user, answered: r.answered, listed: &r.listed, unreadable: r.unreadable })
            .collect();
        let sweeper = ScopedSweep::new(self.table, self.integration_id, "person_id", self.max_share, self.force);
        let decisions = sweeper.sweep(&mut tx, &scopes).await?;
        let refused: HashSet<&str> = decisions
            .iter()
            .filter(|d| matches!(d.decision, Decision::Refused { .. }))
            .map(|d| d.scope.as_str())
            .collect();
        let complete: Vec<&str> = reads
            .iter()
            .filter(|r| r.complete && !refused.contains(r.user.as_str()))
            .map(|r| r.user.as_str())
            .collect();
        sqlx::query(
            "UPDATE partner_lms_users SET transcript_read_at = $3
             WHERE integration_id = $1 AND external_id = ANY($2)",
        )
        .bind(self.integration_id)
        .bind(&complete)
        .bind(read_started)
        .execute(&mut *tx)
        .await?;
        let read_users: Vec<String> = reads.iter().map(|r| r.user.clone()).collect();
        syncfleet_sdk::sync::pull::resolve(&mut tx, self.integration_id, ENTITY, &read_users).await?;
        if !failed.is_empty() {
            syncfleet_sdk::sync::pull::record_errors(
                &mut tx,
                Some(self.run),
                self.step,
                self.integration_id,
                ENTITY,
                &failed,
            )
            .await?;
        }
        tx.commit().await?;
        totals.sweeps.add(decisions);
        Ok(())
    }
}

/// A record's fields as the table's column values (checked and converted in Rust).
fn columns(table: &Table, fields: &Map<String, Value>) -> Result<Vec<Option<String>>, String> {
    table
        .columns
        .iter()
        .map(|c| {
            c.ty.convert(fields.get(&c.name).unwrap_or(&Value::Null)).map_err(|m| format!("field `{}`: {m}", c.name))
        })
        .collect()
}

/// Written with the step's completion: a failed shard keeps its earlier cursor.
async fn save_cursor(
    conn: &mut PgConnection,
    integration_id: i64,
    entity: &str,
    value: DateTime<Utc>,
    run: syncfleet_sdk::ids::RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cursors (integration_id, entity, value, run_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (integration_id, entity) DO UPDATE SET value = EXCLUDED.value, run_id = EXCLUDED.run_id,
             updated_at = now()",
    )
    .bind(integration_id)
    .bind(entity)
    .bind(value.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    .bind(run.0)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_items_map_to_columns() {
        let raw = json!({"id": "t1", "type": "transcript_items", "attributes": {"name": "Basics",
            "resource_id": "c1", "resource_type": "course", "progress_status": "completed",
            "enrolled_at": "2025-01-02T10:00:00Z", "completed_at": "2025-01-20T16:40:00Z", "attempt_number": 1}});
        let Item::Record(r) = transcript_item(raw) else { panic!("a record") };
        assert_eq!(r.external_id, "c1");
        let values = columns(&table(), &r.fields).unwrap();
        assert_eq!(values.len(), table().columns.len());
        assert!(matches!(transcript_item(json!({"id": "t2", "attributes": {}})), Item::Bad { .. }));
    }
}
