//! The `moodle` pack: an institution's Moodle (web services) kept in PostgreSQL, issue #6. The
//! connector (`client.rs`) knows the API; the steps write the tables of migration `0020_moodle.sql`
//! with the sync contract's batch upsert.
//!
//! Chains:
//! - `moodle_institutional`: `sync_categories` (the hierarchy Campus → Semester → Department →
//!   Program, full, behind the deletion guard) → `sync_courses` (per program, bounded concurrency, one
//!   transaction per program) → `sync_enrollments` (three phases: concurrent fetch per course, one
//!   deduplicated user batch, then sections and enrollments per course) → `user_scope_backfill`
//!   (optional) → `role_derivation` (optional).
//! - `moodle_enrollments`: the same without `sync_categories` (start-up with
//!   `DISABLE_SYNC_CATEGORY_ON_STARTUP`, intra-day runs).
//!
//! `sync_courses` and `sync_enrollments` may fan out (`shards` of the step in the config): shard `k`
//! of `n` takes the programs / courses whose id modulo `n` is `k`. What a step found that is not a
//! count (failed programs, users upserted once, sections) follows the guard's decision in `guard`.

mod categories;
pub mod client;
mod courses;
mod enrollments;
pub mod hydrate;
pub mod roles;
pub mod schedules;
pub mod scope;
pub mod settings;
pub mod tables;

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{Map, Value};

pub use settings::Settings;

use crate::{
    chain::{ChainDef, Mode, StepDef, StepKind},
    ids::ChainName,
    step::{Integration, Pack, StepContext, StepError, StepHandler},
    sync::table::Table,
};

pub const PACK: &str = "moodle";
pub const QUEUE: &str = "moodle";
pub const INSTITUTIONAL: &str = "moodle_institutional";
pub const ENROLLMENTS: &str = "moodle_enrollments";
/// The first step of [`INSTITUTIONAL`], run alone at start-up unless disabled.
pub const CATEGORIES_STEP: &str = "sync_categories";

/// The tables scope backfill and role derivation read whole; their statistics are refreshed first
/// when stale ([`crate::sync::pull::analyze_if_stale`]).
const DERIVATION_INPUTS: [&str; 5] =
    ["moodle_users", "moodle_enrollments", "moodle_courses", "moodle_categories", "moodle_user_roles"];

pub fn chains() -> Vec<ChainDef> {
    let s = |name: &str, kind| StepDef::new(name, kind, QUEUE).retry(3, Duration::from_secs(1));
    let after_categories = |first: Option<&'static str>| {
        let courses = s("sync_courses", StepKind::Pull).mode(Mode::Full);
        let courses = match first {
            Some(p) => courses.after(&[p]),
            None => courses,
        };
        vec![
            courses,
            s("sync_enrollments", StepKind::Pull).mode(Mode::Full).after(&["sync_courses"]),
            s("user_scope_backfill", StepKind::Derive).after(&["sync_enrollments"]).optional(),
            s("role_derivation", StepKind::Derive).after(&["user_scope_backfill"]).optional(),
        ]
    };
    let mut institutional = vec![s(CATEGORIES_STEP, StepKind::Pull).mode(Mode::Full)];
    institutional.extend(after_categories(Some(CATEGORIES_STEP)));
    vec![
        ChainDef {
            name: ChainName::parse(INSTITUTIONAL).expect("valid"),
            pack: PACK.into(),
            description: "The institution from Moodle: categories, courses, enrollments and sections, then user \
                          scopes and roles."
                .into(),
            steps: institutional,
        },
        ChainDef {
            name: ChainName::parse(ENROLLMENTS).expect("valid"),
            pack: PACK.into(),
            description: "Courses, enrollments and sections, then user scopes and roles (categories as they are)."
                .into(),
            steps: after_categories(None),
        },
    ]
}

pub fn pack() -> Pack {
    let mut handlers: HashMap<String, Arc<dyn StepHandler>> = HashMap::new();
    handlers.insert(CATEGORIES_STEP.into(), Arc::new(categories::SyncCategories));
    handlers.insert("sync_courses".into(), Arc::new(courses::SyncCourses));
    handlers.insert("sync_enrollments".into(), Arc::new(enrollments::SyncEnrollments));
    handlers.insert("user_scope_backfill".into(), Arc::new(scope::UserScopeBackfill));
    handlers.insert("role_derivation".into(), Arc::new(roles::RoleDerivation));
    Pack { name: PACK.into(), chains: chains(), handlers }
}

/// Checks the pack's tables (from the migration) at registration.
pub async fn prepare(pool: &sqlx::PgPool) -> Result<(), String> {
    tables::ensure_tables(pool).await
}

fn settings_of(integration: &Integration) -> Result<Settings, StepError> {
    Settings::parse(&integration.settings).map_err(|e| integration.settings_error(e))
}

/// The shard (of `shards`) that takes Moodle id `id`: the id modulo the shard count (ids that are not
/// numbers by their bytes).
pub fn shard_of(id: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    let n = id
        .parse::<u64>()
        .unwrap_or_else(|_| id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    (n % shards) as u32
}

/// (this shard, shard count) of the step.
fn shard(ctx: &StepContext) -> (u32, u32) {
    (ctx.shard.max(0) as u32, ctx.step.shards.max(1))
}

/// Moodle's epoch seconds as a timestamp value the table converts (`0` = never → NULL); anything
/// else is an error naming the field.
fn epoch(v: Option<&Value>, field: &str) -> Result<Value, String> {
    match v {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Value::Null),
            Some(s) => chrono::DateTime::from_timestamp(s, 0)
                .map(|t| Value::from(t.to_rfc3339()))
                .ok_or_else(|| format!("`{field}`: {s} is not a time")),
            None => Err(format!("`{field}`: {n} is not epoch seconds")),
        },
        Some(other) => Err(format!("`{field}`: expected epoch seconds, got {other}")),
    }
}

/// Rows for one upsert: external ids and one text column per mapped column, converted in Rust, so a
/// bad value is an item error and never fails the batch.
struct Rows<'t> {
    table: &'t Table,
    ids: Vec<String>,
    columns: Vec<Vec<Option<String>>>,
    failed: Vec<(String, String)>,
}

impl<'t> Rows<'t> {
    fn new(table: &'t Table) -> Self {
        Rows { table, ids: vec![], columns: vec![vec![]; table.columns.len()], failed: vec![] }
    }

    /// Adds a row; a value the column cannot hold makes it a failure instead.
    fn push(&mut self, id: String, fields: &Map<String, Value>) {
        let mut values = Vec::with_capacity(self.table.columns.len());
        for c in &self.table.columns {
            match c.ty.convert(fields.get(&c.name).unwrap_or(&Value::Null)) {
                Ok(v) => values.push(v),
                Err(m) => {
                    self.failed.push((id, format!("field `{}`: {m}", c.name)));
                    return;
                }
            }
        }
        for (column, v) in self.columns.iter_mut().zip(values) {
            column.push(v);
        }
        self.ids.push(id);
    }

    /// One row's values (the per-row fallback).
    fn row(&self, i: usize) -> Vec<Vec<Option<String>>> {
        self.columns.iter().map(|c| vec![c[i].clone()]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_valid_and_every_step_has_a_handler() {
        let pack = pack();
        for chain in &pack.chains {
            chain.validate().unwrap();
            for step in &chain.steps {
                assert!(pack.handlers.contains_key(step.name.as_str()), "{}", step.name);
            }
        }
        let names: Vec<&str> = pack.chains[0].steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["sync_categories", "sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"]
        );
        for t in tables::all() {
            assert!(t.name.starts_with("moodle_"));
        }
    }

    #[test]
    fn epochs_and_shards() {
        assert_eq!(epoch(Some(&Value::from(0)), "x"), Ok(Value::Null));
        assert_eq!(epoch(Some(&Value::from(86_400)), "x"), Ok(Value::from("1970-01-02T00:00:00+00:00")));
        assert!(epoch(Some(&Value::from("yesterday")), "lastaccess").unwrap_err().contains("lastaccess"));
        assert_eq!(shard_of("13", 4), 1);
        assert_eq!(shard_of("13", 1), 0);
        assert!(shard_of("abc", 3) < 3);
    }
}
