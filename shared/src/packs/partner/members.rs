//! `group_members_sync`: the members of every partner-linked LMS group and of the "All Partners"
//! group, read from Northpass (`GET /groups/{id}/memberships`, person at
//! `relationships.person.data.id`) into `partner_group_memberships` (external id
//! `{group id}:{person id}`) with the pull engine. Always a full read: memberships carry no change
//! time of their own that the list can filter on.
//!
//! Pending memberships (asked for on this side, `status = 'pending'`) are confirmed when the LMS lists
//! them (the upsert sets `confirmed`) and removed (soft-deleted) when it does not, once the read was
//! complete: the guarded sweep removes them with every other membership the LMS no longer lists.

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value, json};

use super::{
    northpass::{Northpass, NorthpassList},
    note, pull_spec, record_calls, settings_of,
};
use crate::{
    chain::Mode,
    step::{StepContext, StepError, StepHandler},
    sync::{
        Item, Page, Record, Source, SourceError, pull,
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
            let groups: Vec<String> = sqlx::query_scalar(
                "SELECT g.external_id FROM partner_lms_groups g
                 WHERE g.integration_id = $1 AND g.is_active
                   AND (g.name = $2 OR EXISTS (SELECT 1 FROM partner_group_links l
                        WHERE l.integration_id = g.integration_id AND l.external_id = g.external_id AND l.is_active))
                 ORDER BY g.external_id",
            )
            .bind(integration_id)
            .bind(&settings.groups.all_partners_group)
            .fetch_all(&ctx.pool)
            .await?;
            let pending: Vec<String> = sqlx::query_scalar(
                "SELECT external_id FROM partner_group_memberships
                 WHERE integration_id = $1 AND is_active AND status = 'pending'",
            )
            .bind(integration_id)
            .fetch_all(&ctx.pool)
            .await?;

            ctx.mode = Mode::Full;
            let spec = pull_spec(&settings, ENTITY, table());
            let group_count = groups.len();
            let mut source = GroupMemberships { api: &api, groups: groups.into_iter().rev().collect(), current: None };
            let outcome = pull::pull(ctx, &spec, &mut source).await;
            record_calls(ctx, &[&client]);
            pull::merge(&mut ctx.result, ENTITY, outcome?, 1);

            let (confirmed, removed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE is_active AND status = 'confirmed'), count(*) FILTER (WHERE NOT is_active)
                 FROM partner_group_memberships WHERE integration_id = $1 AND external_id = ANY($2)",
            )
            .bind(integration_id)
            .bind(&pending)
            .fetch_one(ctx.tx().await?)
            .await?;
            note(
                ctx,
                format!(
                    "pending: {} membership(s), {confirmed} confirmed, {removed} removed; {group_count} group(s) read",
                    pending.len()
                ),
            );
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
                    for item in &mut page.items {
                        in_group(item, group);
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
