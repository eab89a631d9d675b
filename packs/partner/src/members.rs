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
        Item, Page, Record, Source, SourceError, pull,
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
            let groups: Vec<String> = sqlx::query_scalar(
                "SELECT g.external_id FROM partner_lms_groups g
                 WHERE g.integration_id = $1 AND g.is_active
                   AND (g.name = $2 OR EXISTS (SELECT 1 FROM partner_group_links l
                        WHERE l.integration_id = g.integration_id AND l.external_id = g.external_id AND l.is_active))
                   AND ($3 OR g.members_read_at IS NULL OR g.source_updated_at >= g.members_read_at - $4::interval
                        OR EXISTS (SELECT 1 FROM partner_group_memberships m
                            WHERE m.integration_id = g.integration_id AND m.group_id = g.external_id
                              AND m.is_active AND m.status = 'pending'))
                 ORDER BY g.external_id",
            )
            .bind(integration_id)
            .bind(&settings.groups.all_partners_group)
            .bind(full)
            .bind(lookback)
            .fetch_all(&ctx.pool)
            .await?;
            let pending: Vec<String> = sqlx::query_scalar(
                "SELECT external_id FROM partner_group_memberships
                 WHERE integration_id = $1 AND is_active AND status = 'pending'",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;

            let started = syncfleet_sdk::sync::sweep::database_now(&ctx.pool).await?;
            let spec = pull_spec(&settings, ENTITY, table());
            let group_count = groups.len();
            let mut source = GroupMemberships {
                api: &api,
                groups: groups.iter().rev().cloned().collect(),
                current: None,
                reads: Default::default(),
                keep_ids: !full,
            };
            let outcome = pull::pull(ctx, &spec, &mut source).await;
            ctx.record_calls(&[&client]);
            pull::merge(&mut ctx.result, ENTITY, outcome?, 1);
            let unreadable = |g: &str| source.reads.get(g).is_some_and(|r| r.unreadable > 0);

            let force = ctx.force_sweep;
            let conn = ctx.tx().await?;
            let mut sweeps = Sweeps::default();
            let mut refused = std::collections::HashSet::new();
            if !full {
                // The full run's guarded sweep does this for every group at once.
                let none = GroupRead::default();
                let reads: Vec<ScopeRead<'_>> = groups
                    .iter()
                    .map(|g| {
                        let r = source.reads.get(g).unwrap_or(&none);
                        ScopeRead { scope: g, answered: r.answered, listed: &r.listed, unreadable: r.unreadable }
                    })
                    .collect();
                let table = table();
                let sweeper = ScopedSweep::new(&table, integration_id, "group_id", spec.max_deactivate_share, force)
                    .written_before(started);
                let decisions = sweeper.sweep(conn, &reads).await?;
                refused.extend(
                    decisions
                        .iter()
                        .filter(|d| matches!(d.decision, Decision::Refused { .. }))
                        .map(|d| d.scope.clone()),
                );
                sweeps.add(decisions);
            }
            let read: Vec<String> =
                groups.into_iter().filter(|g| !unreadable(g) && !refused.contains(g)).collect();
            sqlx::query(
                "UPDATE partner_lms_groups SET members_read_at = $3 WHERE integration_id = $1 AND external_id = ANY($2)",
            )
            .bind(integration_id)
            .bind(&read)
            .bind(started)
            .execute(&mut *conn)
            .await?;
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

/// The memberships of several groups, one group's pages after the other. A group gone since it was
/// listed (404) has no members.
struct GroupMemberships<'a> {
    api: &'a Northpass<'a>,
    /// Groups still to read, served from the end.
    groups: Vec<String>,
    current: Option<(String, NorthpassList<'a>)>,
    /// What each group answered. A group with an unreadable membership is not marked read, and its
    /// sweep is refused unless the run forces it.
    reads: std::collections::HashMap<String, GroupRead>,
    /// Whether to keep the ids each group listed (for an incremental run's scoped sweeps).
    keep_ids: bool,
}

/// One group's answer.
#[derive(Debug, Default)]
struct GroupRead {
    answered: i64,
    unreadable: i64,
    /// The membership ids it listed (only when the source keeps them).
    listed: Vec<String>,
}

impl GroupMemberships<'_> {
    async fn fetch(&mut self) -> Result<Option<Page>, SourceError> {
        loop {
            let Some((group, list)) = &mut self.current else {
                let Some(group) = self.groups.pop() else {
                    return Ok(None);
                };
                let list = self.api.list(&format!("/groups/{group}/memberships"), membership_item);
                self.current = Some((group, list));
                continue;
            };
            match list.next_page(None).await {
                Ok(Some(mut page)) => {
                    let read = self.reads.entry(group.clone()).or_default();
                    for item in &mut page.items {
                        read.answered += 1;
                        if matches!(item, Item::Bad { .. }) {
                            read.unreadable += 1;
                        }
                        in_group(item, group);
                        if let (true, Item::Record(r)) = (self.keep_ids, &*item) {
                            read.listed.push(r.external_id.clone());
                        }
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
    let cursor = raw.pointer("/attributes/updated_at").and_then(Value::as_str).and_then(parse_timestamp);
    let Some(person) = raw.pointer("/relationships/person/data/id").and_then(Value::as_str).filter(|s| !s.is_empty())
    else {
        return Item::Bad { external_id: None, cursor, message: "no readable `relationships.person.data.id`".into() };
    };
    let mut fields = Map::new();
    fields.insert("person_id".into(), json!(person));
    fields.insert("joined_at".into(), raw.pointer("/attributes/created_at").cloned().unwrap_or(Value::Null));
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
