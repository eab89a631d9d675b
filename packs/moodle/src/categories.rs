//! `sync_categories`: every category in one call, normalized into Campus → Semester → Department →
//! Program by depth, each row carrying its ancestors — resolved from an in-memory map of this run's
//! categories, no query per row — then written by the pull engine in full mode (upsert, deletion
//! guard, sweep).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value};

use super::{
    client::{Category, Moodle},
    concurrency_of, settings_of, tables,
};
use syncfleet_sdk::{
    step::{StepContext, StepError, StepHandler},
    sync::{Item, Page, Record, Source, SourceError, pull},
};

/// The level of a category in the institution, by its depth.
pub fn kind(depth: i64) -> &'static str {
    match depth {
        1 => "campus",
        2 => "semester",
        3 => "department",
        4 => "program",
        _ => "other",
    }
}

/// A campus's code: its idnumber, else the first word of its name, upper-cased.
pub fn campus_code(c: &Category) -> Option<String> {
    let idnumber = c.idnumber.as_deref().map(str::trim).filter(|s| !s.is_empty());
    idnumber.or_else(|| c.name.split_whitespace().next()).map(str::to_uppercase)
}

/// Each category as a record of `moodle_categories`, with its campus, semester and department
/// resolved through the parents of `all` (a parent the caller cannot see leaves its levels empty).
pub fn hierarchy(all: &[Category]) -> Vec<Record> {
    let by_id: HashMap<i64, &Category> = all.iter().map(|c| (c.id, c)).collect();
    all.iter()
        .map(|c| {
            let mut ancestors: [Option<i64>; 3] = [None; 3];
            let mut at = Some(c);
            // Depth bounds the walk, so a cycle in bad data cannot loop.
            for _ in 0..=c.depth.clamp(0, 64) {
                let Some(cat) = at else { break };
                if (1..=3).contains(&cat.depth) && cat.id != c.id {
                    ancestors[cat.depth as usize - 1] = Some(cat.id);
                }
                at = by_id.get(&cat.parent).copied().filter(|p| p.id != cat.id);
            }
            let id = |v: Option<i64>| v.map_or(Value::Null, |i| Value::from(i.to_string()));
            let mut f = Map::new();
            f.insert("name".into(), Value::from(c.name.clone()));
            f.insert("idnumber".into(), c.idnumber.clone().map_or(Value::Null, Value::from));
            f.insert("kind".into(), Value::from(kind(c.depth)));
            f.insert("parent_id".into(), if c.parent == 0 { Value::Null } else { Value::from(c.parent.to_string()) });
            f.insert("campus_id".into(), id(ancestors[0]));
            f.insert("semester_id".into(), id(ancestors[1]));
            f.insert("department_id".into(), id(ancestors[2]));
            f.insert(
                "code".into(),
                if c.depth == 1 { campus_code(c).map_or(Value::Null, Value::from) } else { Value::Null },
            );
            f.insert("depth".into(), Value::from(c.depth));
            f.insert("path".into(), c.path.clone().map_or(Value::Null, Value::from));
            f.insert("sortorder".into(), c.sortorder.map_or(Value::Null, Value::from));
            f.insert("visible".into(), c.visible.map_or(Value::Null, |v| Value::from(v != 0)));
            let changed: Option<DateTime<Utc>> = c.timemodified.and_then(|t| DateTime::from_timestamp(t, 0));
            f.insert("source_updated_at".into(), changed.map_or(Value::Null, |t| Value::from(t.to_rfc3339())));
            Record { external_id: c.id.to_string(), cursor: changed, fields: f, raw: Value::Null }
        })
        .collect()
}

/// The categories read, served to the pull engine as one page.
struct OnePage(Option<Page>);

impl Source for OnePage {
    fn next_page(&mut self, _since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        let page = self.0.take();
        async move { Ok(page) }.boxed()
    }
}

pub struct SyncCategories;

impl StepHandler for SyncCategories {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            // The concurrency sizes the upstream's gate, which the first client of a process creates.
            let client = settings.client(&ctx.http, concurrency_of(ctx, &settings)?);
            let api = Moodle::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let read = api.categories().await;
            ctx.record_calls(&[&client]);
            let categories = read?;
            let items: Vec<Item> = hierarchy(&categories).into_iter().map(Item::Record).collect();
            let total = Some(items.len() as i64);
            let spec = pull::PullSpec {
                max_deactivate_share: settings.max_deactivate_share,
                ..pull::PullSpec::new("categories", tables::categories())
            };
            let outcome = pull::pull(ctx, &spec, &mut OnePage(Some(Page { items, total, short: None }))).await?;
            pull::merge(&mut ctx.result, "categories", outcome, 1);
            let count = |k: &str| categories.iter().filter(|c| kind(c.depth) == k).count();
            let text = format!(
                "hierarchy: {} campus(es), {} semester(s), {} department(s), {} program(s)",
                count("campus"),
                count("semester"),
                count("department"),
                count("program")
            );
            tracing::info!(categories = categories.len(), "{text}");
            ctx.note(text);
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(id: i64, parent: i64, depth: i64, name: &str, idnumber: &str) -> Category {
        Category {
            id,
            name: name.into(),
            idnumber: Some(idnumber.into()),
            parent,
            sortorder: Some(id),
            depth,
            path: None,
            visible: Some(1),
            timemodified: Some(1_700_000_000),
        }
    }

    #[test]
    fn every_level_knows_its_ancestors() {
        let all = vec![
            cat(1, 0, 1, "Northgate Campus", "northgate"),
            cat(2, 1, 2, "2025 Semester 1", "n-s0"),
            cat(3, 2, 3, "Engineering", "n-s0-d0"),
            cat(4, 3, 4, "Bachelor of Engineering", "n-s0-d0-p0"),
            cat(5, 0, 1, "Riverside Campus", ""),
        ];
        let rows = hierarchy(&all);
        let f = |i: usize, k: &str| rows[i].fields[k].clone();
        assert_eq!(f(3, "kind"), "program");
        assert_eq!(
            (f(3, "campus_id"), f(3, "semester_id"), f(3, "department_id")),
            ("1".into(), "2".into(), "3".into())
        );
        assert_eq!(f(3, "parent_id"), "3");
        assert_eq!(f(0, "code"), "NORTHGATE");
        assert_eq!(f(0, "campus_id"), Value::Null, "a campus is not its own ancestor");
        assert_eq!(f(4, "code"), "RIVERSIDE", "no idnumber: the first word of the name");
        assert_eq!(f(1, "code"), Value::Null);
        // A hidden parent leaves its level empty.
        let rows = hierarchy(&all[2..4]);
        assert_eq!(rows[1].fields["department_id"], "3");
        assert_eq!(rows[1].fields["campus_id"], Value::Null);
    }
}
