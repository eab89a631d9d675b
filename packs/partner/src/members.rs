//! `group_members_sync`: the members of every partner-linked LMS group and of the "All Partners"
//! group, read from Northpass (`GET /groups/{id}/memberships`, person at
//! `relationships.person.data.id`) into `partner_group_memberships` (external id
//! `{group id}:{person id}`) with the pull engine.
//!
//! Memberships carry no change time the list can filter on, but a group's `updated_at` moves when
//! its members change. A full run reads every group and sweeps (guarded) what the LMS no longer
//! lists. An incremental run reads only the groups never read, changed since their last complete
//! read (`partner_lms_groups.members_read_at`, minus the look-back), or holding pending
//! memberships, and soft-deletes the memberships of those groups the read did not list with the
//! SDK's scoped sweep, behind the deletion guard decided per group (an empty answer while the group
//! has active memberships, an unreadable membership, or a share above `max_deactivate_share` is
//! refused unless the run forces the sweep; a refused group is not marked read).
//!
//! Pending memberships (`status = 'pending'`: `group_analysis` added them to the group in Northpass,
//! which accepted) are confirmed when the LMS lists them (the upsert sets `confirmed`) and removed
//! (soft-deleted) when it does not, once their group was read completely.

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};

use super::{
    northpass::{Northpass, NorthpassList},
    pull_spec, settings_of,
};
use syncfleet_sdk::{
    chain::Mode,
    step::{StepContext, StepError, StepHandler},
    sync::{
        Item, Page, Record, Source, SourceError, pointer, pull,
        sweep::{Decision, ScopeRead, ScopedSweep, Sweeps},
        table::{Column, ColumnType, Table, parse_timestamp},
    },
};

pub const ENTITY: &str = "memberships";

/// `partner_group_memberships` (migrations `0005`, `0006`) as the pull engine writes it.
pub fn table() -> Table {
    let columns = [
        ("group_id", ColumnType::Text),
        ("person_id", ColumnType::Text),
        ("joined_at", ColumnType::Timestamptz),
        ("status", ColumnType::Text),
    ]
    .into_iter()
    .map(|(name, ty)| Column { name: name.to_owned(), ty })
    .collect();
    Table::new("partner_group_memberships", columns).expect("a valid table declaration")
}

/// The groups whose members the step reads (`$1` integration, `$2` the "All Partners" group's name,
/// `$3` a full run, `$4` the look-back), after group id `$5`, `$6` at most, in id order: every
/// partner-linked group and the "All Partners" group; in an incremental run only those never read,
/// changed since their last complete read, or holding pending memberships.
macro_rules! groups_sql {
    () => {
        "SELECT g.external_id FROM partner_lms_groups g
         WHERE g.integration_id = $1 AND g.is_active
           AND (g.name = $2 OR EXISTS (SELECT 1 FROM partner_group_links l
                WHERE l.integration_id = g.integration_id AND l.external_id = g.external_id AND l.is_active))
           AND ($3 OR g.members_read_at IS NULL OR g.source_updated_at >= g.members_read_at - $4::interval
                OR EXISTS (SELECT 1 FROM partner_group_memberships m
                    WHERE m.integration_id = g.integration_id AND m.group_id = g.external_id
                      AND m.is_active AND m.status = 'pending'))
           AND g.external_id > $5
         ORDER BY g.external_id
         LIMIT $6"
    };
}

/// Groups read from the database per page.
const GROUPS_PER_PAGE: i64 = 500;

/// A full run marks every group it selected read at `$7`, but those in `$8` (an unreadable
/// membership); `$5` and `$6` of [`groups_sql`] are `''` and no limit.
const MARK_ALL_READ: &str = concat!(
    "UPDATE partner_lms_groups SET members_read_at = $7
     WHERE integration_id = $1 AND NOT external_id = ANY($8) AND external_id IN (",
    groups_sql!(),
    ")"
);

/// What selects the groups to read ([`groups_sql`]'s parameters).
struct Selection {
    integration_id: i64,
    all_partners_group: String,
    full: bool,
    lookback: chrono::Duration,
}

pub struct GroupMembersSync;

impl StepHandler for GroupMembersSync {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.northpass_client(&ctx.http);
            let api = Northpass::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let integration_id = ctx.integration.id;
            let full = ctx.mode == Mode::Full;
            let lookback = chrono::Duration::seconds(settings.lookback_secs as i64);
            let pending: Vec<String> = sqlx::query_scalar(
                "SELECT external_id FROM partner_group_memberships
                 WHERE integration_id = $1 AND is_active AND status = 'pending'",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;

            let started = syncfleet_sdk::sync::sweep::database_now(&ctx.pool).await?;
            let spec = pull_spec(&settings, ENTITY, table());
            let selection = Selection {
                integration_id,
                all_partners_group: settings.groups.all_partners_group.clone(),
                full,
                lookback,
            };
            let pool = ctx.pool.clone();
            let mut source = GroupMemberships {
                api: &api,
                pool: &pool,
                selection: &selection,
                after: String::new(),
                page: vec![],
                exhausted: false,
                current: None,
                read_count: 0,
                unreadable: Default::default(),
                reads: Default::default(),
                keep_reads: !full,
            };
            let outcome = pull::pull(ctx, &spec, &mut source).await;
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, ENTITY, outcome?, 1);
            let group_count = source.read_count;

            let force = ctx.force_sweep;
            let conn = ctx.tx().await?;
            let mut sweeps = Sweeps::default();
            if full {
                // Every selected group was read (the full run's guarded sweep covers them all at
                // once); those with an unreadable membership are not marked read.
                let unreadable: Vec<&str> = source.unreadable.iter().map(String::as_str).collect();
                sqlx::query(MARK_ALL_READ)
                .bind(integration_id)
                .bind(&selection.all_partners_group)
                .bind(true)
                .bind(lookback)
                .bind("")
                .bind(i64::MAX)
                .bind(started)
                .bind(&unreadable)
                .execute(&mut *conn)
                .await?;
            } else {
                let scopes: Vec<ScopeRead<'_>> = source
                    .reads
                    .iter()
                    .map(|(g, r)| ScopeRead {
                        scope: g,
                        answered: r.answered,
                        listed: &r.listed,
                        unreadable: r.unreadable,
                    })
                    .collect();
                let table = table();
                let sweeper = ScopedSweep::new(&table, integration_id, "group_id", spec.max_deactivate_share, force)
                    .written_before(started);
                let decisions = sweeper.sweep(conn, &scopes).await?;
                let refused: std::collections::HashSet<String> = decisions
                    .iter()
                    .filter(|d| matches!(d.decision, Decision::Refused { .. }))
                    .map(|d| d.scope.clone())
                    .collect();
                sweeps.add(decisions);
                let read: Vec<&str> = source
                    .reads
                    .iter()
                    .filter(|(g, r)| r.unreadable == 0 && !refused.contains(*g))
                    .map(|(g, _)| g.as_str())
                    .collect();
                sqlx::query(
                    "UPDATE partner_lms_groups SET members_read_at = $3
                     WHERE integration_id = $1 AND external_id = ANY($2)",
                )
                .bind(integration_id)
                .bind(&read)
                .bind(started)
                .execute(&mut *conn)
                .await?;
            }
            ctx.result.deactivated += sweeps.deactivated;

            let (confirmed, removed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE is_active AND status = 'confirmed'), count(*) FILTER (WHERE NOT is_active)
                 FROM partner_group_memberships WHERE integration_id = $1 AND external_id = ANY($2)",
            )
            .bind(integration_id)
            .bind(&pending)
            .fetch_one(ctx.tx().await?)
            .await?;
            ctx.note(format!(
                    "pending: {} membership(s), {confirmed} confirmed, {removed} removed; {group_count} group(s) read ({})",
                    pending.len(),
                    if full { "all" } else { "changed, new or with pending memberships" }
                ),
            );
            if !full {
                ctx.note(sweeps.note("memberships", "group"));
            }
            Ok(())
        }
        .boxed()
    }
}

/// The memberships of several groups, one group's pages after the other, the groups read from the
/// database a page at a time. A group gone since it was listed (404) has no members.
struct GroupMemberships<'a> {
    api: &'a Northpass<'a>,
    pool: &'a sqlx::PgPool,
    selection: &'a Selection,
    /// The last group id read from the database, and the rest of its page (served from the end).
    after: String,
    page: Vec<String>,
    exhausted: bool,
    current: Option<(String, NorthpassList<'a>)>,
    /// Groups read.
    read_count: usize,
    /// Groups with an unreadable membership: not marked read, and their sweep is refused unless
    /// the run forces it.
    unreadable: std::collections::BTreeSet<String>,
    /// What each group answered, with the ids it listed (an incremental run's scoped sweeps).
    reads: std::collections::BTreeMap<String, GroupRead>,
    keep_reads: bool,
}

/// One group's answer.
#[derive(Debug, Default)]
struct GroupRead {
    answered: i64,
    unreadable: i64,
    /// The membership ids it listed.
    listed: Vec<String>,
}

impl GroupMemberships<'_> {
    /// The next group to read, reading the next page of them when the last one is done.
    async fn next_group(&mut self) -> Result<Option<String>, sqlx::Error> {
        if self.page.is_empty() && !self.exhausted {
            let s = self.selection;
            let page: Vec<String> = sqlx::query_scalar(groups_sql!())
                .bind(s.integration_id)
                .bind(&s.all_partners_group)
                .bind(s.full)
                .bind(s.lookback)
                .bind(&self.after)
                .bind(GROUPS_PER_PAGE)
                .fetch_all(self.pool)
                .await?;
            self.exhausted = (page.len() as i64) < GROUPS_PER_PAGE;
            if let Some(last) = page.last() {
                self.after = last.clone();
            }
            self.page = page.into_iter().rev().collect();
        }
        Ok(self.page.pop())
    }

    async fn fetch(&mut self) -> Result<Option<Page>, SourceError> {
        loop {
            let Some((group, list)) = &mut self.current else {
                let next = self.next_group().await;
                let Some(group) = next.map_err(|e| SourceError::Shape(format!("the groups to read: {e}")))? else {
                    return Ok(None);
                };
                self.read_count += 1;
                if self.keep_reads {
                    self.reads.entry(group.clone()).or_default();
                }
                let list = self.api.list(&format!("/groups/{group}/memberships"), membership_item);
                self.current = Some((group, list));
                continue;
            };
            match list.next_page(None).await {
                Ok(Some(mut page)) => {
                    let mut read = GroupRead::default();
                    for item in &mut page.items {
                        read.answered += 1;
                        if matches!(item, Item::Bad { .. }) {
                            read.unreadable += 1;
                        }
                        in_group(item, group);
                        if let (true, Item::Record(r)) = (self.keep_reads, &*item) {
                            read.listed.push(r.external_id.clone());
                        }
                    }
                    if read.unreadable > 0 {
                        self.unreadable.insert(group.clone());
                    }
                    if self.keep_reads {
                        let entry = self.reads.entry(group.clone()).or_default();
                        entry.answered += read.answered;
                        entry.unreadable += read.unreadable;
                        entry.listed.append(&mut read.listed);
                    }
                    return Ok(Some(page));
                }
                Ok(None) => self.current = None,
                Err(SourceError::Http(e)) if e.status() == Some(404) => self.current = None,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Source for GroupMemberships<'_> {
    fn next_page(&mut self, _since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch().boxed()
    }
}

/// A membership of a group being read: the person's id until [`in_group`] names the group.
fn membership_item(raw: Value) -> Item {
    let cursor = pointer::get(&raw, "/attributes/updated_at").and_then(Value::as_str).and_then(parse_timestamp);
    let Some(person) =
        pointer::get(&raw, "/relationships/person/data/id").and_then(Value::as_str).filter(|s| !s.is_empty())
    else {
        return Item::Bad { external_id: None, cursor, message: "no readable `relationships.person.data.id`".into() };
    };
    let mut fields = Map::new();
    fields.insert("person_id".into(), json!(person));
    fields.insert("joined_at".into(), pointer::get(&raw, "/attributes/created_at").cloned().unwrap_or(Value::Null));
    fields.insert("status".into(), json!("confirmed"));
    Item::Record(Record { external_id: person.to_owned(), cursor, fields, raw })
}

fn in_group(item: &mut Item, group: &str) {
    match item {
        Item::Record(r) => {
            r.external_id = format!("{group}:{}", r.external_id);
            r.fields.insert("group_id".into(), json!(group));
        }
        Item::Bad { external_id, message, .. } => {
            *message = format!("group {group}: {message}");
            *external_id = external_id.take().map(|id| format!("{group}:{id}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_are_keyed_by_group_and_person() {
        let raw = json!({"id": "m1", "type": "memberships",
            "attributes": {"created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:05Z"},
            "relationships": {"person": {"data": {"id": "p1", "type": "people"}}}});
        let mut item = membership_item(raw);
        in_group(&mut item, "g1");
        let Item::Record(r) = item else { panic!("a record") };
        assert_eq!(r.external_id, "g1:p1");
        assert_eq!((r.fields["group_id"].clone(), r.fields["status"].clone()), (json!("g1"), json!("confirmed")));
        assert!(matches!(membership_item(json!({"id": "m2"})), Item::Bad { external_id: None, .. }));
    }
}
