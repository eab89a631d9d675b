//! The `partner` pack: the partner program sync between Northpass (LMS) and Impartner (PRM), issue #5.
//! Connectors (`northpass.rs`, `impartner.rs`) know their API; the steps read through them with the
//! sync contract's pull engine into the tables of migration `0005_partner.sql`.
//!
//! Chains:
//! - `partner_daily`: tier 1 `sync_courses` ∥ `impartner_sync` (full) → `sync_npcu`; tier 2
//!   `sync_users` (after tier 1) → `sync_groups`.
//! - `partner_impartner`: `impartner_sync` in the run's mode (intra-day incremental runs).
//! - `partner_enrollments`: `sync_enrollments` (sharded) → `sync_to_impartner` (optional), in the
//!   run's mode (intra-day incremental runs); in `partner_daily` they are tiers 3 and 4, after
//!   `group_members_sync` (optional) closes tier 2, with `group_analysis` (optional, domain
//!   matching) after it.
//!
//! - `partner_weekly_reports`: `pam_weekly_report` ∥ `executive_weekly_report` (`reports.rs`).
//!
//! Steps report what is not a count (courses skipped on 403, group matching results) after the
//! guard's decision in the step's `guard` text.

mod analysis;
mod catalog;
mod cleanup;
mod contacts;
mod enrollments;
mod groups;
pub mod impartner;
mod leads;
pub mod matching;
mod members;
pub mod northpass;
mod offboarding;
mod push;
mod reports;
pub mod schedules;
pub mod settings;
pub mod tables;
mod users;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use serde_json::{Map, Value};
use sqlx::PgConnection;

pub use enrollments::SHARD_OF_SQL;
pub use settings::Settings;

use syncfleet_sdk::{
    DefaultSchedule, Integration, Pack,
    chain::{ChainDef, Mode, StepDef, StepKind},
    ids::{ChainName, RunId},
    step::{StepError, StepHandler},
    sync::{Item, Page, Record, Source, SourceError, pull::PullSpec, table::Table},
};

pub const PACK: &str = "partner";
pub const QUEUE: &str = "partner";

pub fn chains() -> Vec<ChainDef> {
    let s = |name: &str, kind| StepDef::new(name, kind, QUEUE).retry(3, Duration::from_secs(2));
    vec![
        ChainDef {
            name: ChainName::parse("partner_daily").expect("valid"),
            pack: PACK.into(),
            description: "The daily partner program sync: catalog and PRM, then LMS people and groups.".into(),
            steps: vec![
                s("sync_courses", StepKind::Pull),
                s("impartner_sync", StepKind::Pull).mode(Mode::Full),
                s("sync_npcu", StepKind::Pull).after(&["sync_courses"]),
                s("sync_users", StepKind::Pull).after(&["sync_npcu", "impartner_sync"]),
                s("sync_groups", StepKind::Pull).after(&["sync_users"]),
                s("lms_offboarding", StepKind::Push).after(&["sync_groups"]).optional(),
                s("group_members_sync", StepKind::Pull).after(&["sync_groups"]).optional(),
                s("group_analysis", StepKind::Derive).after(&["group_members_sync"]).optional(),
                enrollments_step(s("sync_enrollments", StepKind::Pull)).after(&["group_members_sync"]),
                push_step(s("sync_to_impartner", StepKind::Push)).after(&["sync_enrollments"]).optional(),
            ],
        },
        ChainDef {
            name: ChainName::parse("partner_impartner").expect("valid"),
            pack: PACK.into(),
            description: "Partners and contacts from Impartner in the run's mode.".into(),
            steps: vec![s("impartner_sync", StepKind::Pull)],
        },
        ChainDef {
            name: ChainName::parse("partner_leads").expect("valid"),
            pack: PACK.into(),
            description: "Impartner leads in the run's mode (incremental intra-day, full weekly).".into(),
            steps: vec![s("sync_leads", StepKind::Pull)],
        },
        ChainDef {
            name: ChainName::parse("partner_cleanup").expect("valid"),
            pack: PACK.into(),
            description: "Weekly: run history and item errors older than the retention purged.".into(),
            steps: vec![s("cleanup", StepKind::Cleanup)],
        },
        ChainDef {
            name: ChainName::parse("partner_weekly_reports").expect("valid"),
            pack: PACK.into(),
            description: "Weekly: a report per partner account manager and the executive rollup, stored and mailed."
                .into(),
            steps: vec![s("pam_weekly_report", StepKind::Report), s("executive_weekly_report", StepKind::Report)],
        },
        ChainDef {
            name: ChainName::parse("partner_enrollments").expect("valid"),
            pack: PACK.into(),
            description: "Partner users' enrollments, then the counts pushed to Impartner, in the run's mode.".into(),
            steps: vec![
                enrollments_step(s("sync_enrollments", StepKind::Pull)),
                push_step(s("sync_to_impartner", StepKind::Push)).after(&["sync_enrollments"]).optional(),
            ],
        },
    ]
}

/// `sync_enrollments` fans out in [`enrollments::SHARDS`] shards, one entity per shard. It reads the
/// transcripts of partner users only, so it needs them ([`PARTNER_DATA`]).
fn enrollments_step(step: StepDef) -> StepDef {
    step.shards(enrollments::SHARDS).precondition(PARTNER_DATA_MISSING, PARTNER_DATA)
}

/// `sync_to_impartner` counts per partner through users and matched groups ([`PARTNER_DATA`]).
fn push_step(step: StepDef) -> StepDef {
    step.precondition(PARTNER_DATA_MISSING, PARTNER_DATA)
}

/// The precondition of the enrollment and push steps (`$1` the integration): LMS users linked to a
/// partner's contact (`sync_users`) and LMS groups matched to a partner (`sync_groups`). Without
/// them the enrollment shards would read nothing and the push would zero every partner's counts.
/// Answers which of the two is missing (NULL when both are there).
pub const PARTNER_DATA: &str = "
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM partner_lms_users
                         WHERE integration_id = $1 AND is_active AND partner_id IS NOT NULL)
            THEN 'no partner users (LMS users linked to a partner''s contact, from `sync_users`)'
        WHEN NOT EXISTS (SELECT 1 FROM partner_group_links
                         WHERE integration_id = $1 AND is_active AND partner_id IS NOT NULL)
            THEN 'no matched groups (LMS groups linked to a partner, from `sync_groups`)'
    END";

/// What the step adds when [`PARTNER_DATA`] names missing data.
pub const PARTNER_DATA_MISSING: &str = "run `partner_daily` first";

/// The pack: its chains and their steps, the settings check, the tables check at registration
/// and the default schedules.
pub struct PartnerPack;

impl Pack for PartnerPack {
    fn name(&self) -> &'static str {
        PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        chains()
    }

    /// Every chain that writes the partner tables: none reads what another is half-way writing.
    fn exclusive_chains(&self) -> Vec<Vec<&'static str>> {
        vec![vec!["partner_daily", "partner_enrollments", "partner_impartner", "partner_leads"]]
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![
            ("sync_courses", Arc::new(catalog::SyncCourses)),
            ("sync_npcu", Arc::new(catalog::SyncNpcu)),
            ("impartner_sync", Arc::new(contacts::ImpartnerSync)),
            ("sync_users", Arc::new(users::SyncUsers)),
            ("sync_groups", Arc::new(groups::SyncGroups)),
            ("lms_offboarding", Arc::new(offboarding::LmsOffboarding)),
            ("cleanup", Arc::new(cleanup::Cleanup)),
            ("pam_weekly_report", Arc::new(reports::PamWeeklyReport)),
            ("executive_weekly_report", Arc::new(reports::ExecutiveWeeklyReport)),
            ("sync_leads", Arc::new(leads::SyncLeads)),
            ("group_members_sync", Arc::new(members::GroupMembersSync)),
            ("group_analysis", Arc::new(analysis::GroupAnalysis)),
            ("sync_enrollments", Arc::new(enrollments::SyncEnrollments)),
            ("sync_to_impartner", Arc::new(push::SyncToImpartner)),
        ]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        Settings::parse(settings).map(|_| ())
    }

    fn default_schedules(&self) -> Vec<DefaultSchedule> {
        schedules::defaults()
    }

    fn prepare<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        _integration: &'a str,
        _settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        prepare(conn).boxed()
    }
}

/// Checks the pack's tables (from the migration) at registration.
pub async fn prepare(conn: &mut sqlx::PgConnection) -> Result<(), String> {
    tables::ensure_tables(conn).await
}

fn settings_of(integration: &Integration) -> Result<Settings, StepError> {
    Settings::parse(&integration.settings).map_err(|e| StepError::settings(integration, e))
}

fn pull_spec(settings: &Settings, entity: &str, table: Table) -> PullSpec {
    PullSpec {
        lookback: Duration::from_secs(settings.lookback_secs),
        max_deactivate_share: settings.max_deactivate_share,
        ..PullSpec::new(entity, table)
    }
}

/// Settings of a completion transaction that reads through a cursor (`DECLARE … FETCH`): planned
/// for every row, not for the first tenth (`cursor_tuple_fraction`: the domain analysis's cursor
/// took 7 s at seed scale instead of 0.16 s), and without JIT compilation.
const CURSOR_SETTINGS: &str = "SET LOCAL cursor_tuple_fraction = 1; SET LOCAL jit = off";

/// Readies the completion transaction for a step's cursor ([`CURSOR_SETTINGS`]).
async fn for_cursor(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(CURSOR_SETTINGS).execute(conn).await.map(|_| ())
}

/// Writes one page of rows a step derived (not read from an upstream) with the contract's upsert,
/// marked seen by `run`; once every page is written, the step deactivates the rows of earlier runs
/// it did not write again (`Table::sweep` from the time before the first page). Returns how many
/// rows it wrote.
async fn write_derived(
    conn: &mut PgConnection,
    table: &Table,
    integration_id: i64,
    run: RunId,
    rows: Vec<(String, Map<String, Value>)>,
) -> Result<i64, StepError> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); table.columns.len()];
    for (id, fields) in rows {
        for (column, values) in table.columns.iter().zip(columns.iter_mut()) {
            let v = column
                .ty
                .convert(fields.get(&column.name).unwrap_or(&Value::Null))
                .map_err(|m| StepError::abort(format!("{}.{} of {id}: {m}", table.name, column.name)))?;
            values.push(v);
        }
        ids.push(id);
    }
    if !ids.is_empty() {
        table.upsert(conn, integration_id, Some(run), &ids, &columns).await?;
    }
    Ok(ids.len() as i64)
}

/// Passes on the records `keep` accepts and lists the ids of the others. The upstream's total is
/// reduced by the records left out, so the deletion guard still compares like with like.
struct Filtered<'a> {
    inner: &'a mut dyn Source,
    keep: &'a (dyn Fn(&Record) -> bool + Sync),
    excluded: Vec<String>,
}

impl Filtered<'_> {
    async fn fetch(&mut self, since: Option<DateTime<Utc>>) -> Result<Option<Page>, SourceError> {
        let Some(mut page) = self.inner.next_page(since).await? else {
            return Ok(None);
        };
        let keep = self.keep;
        let mut excluded = Vec::new();
        page.items.retain(|item| match item {
            Item::Record(r) if !keep(r) => {
                excluded.push(r.external_id.clone());
                false
            }
            _ => true,
        });
        self.excluded.extend(excluded);
        page.total = page.total.map(|t| t - self.excluded.len() as i64);
        Ok(Some(page))
    }
}

impl Source for Filtered<'_> {
    fn next_page(&mut self, since: Option<DateTime<Utc>>) -> BoxFuture<'_, Result<Option<Page>, SourceError>> {
        self.fetch(since).boxed()
    }
}

/// The text of a field, trimmed, when it is a non-empty string.
fn text<'r>(record: &'r Record, field: &str) -> Option<&'r str> {
    record.fields.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_valid_and_every_step_has_a_handler() {
        let handlers = PartnerPack.handlers();
        for chain in &PartnerPack.chains() {
            chain.validate().unwrap();
            for step in &chain.steps {
                assert!(handlers.iter().any(|(name, _)| *name == step.name.as_str()), "{}", step.name);
            }
        }
        for t in tables::all() {
            assert!(t.name.starts_with("partner_"));
        }
    }
}
