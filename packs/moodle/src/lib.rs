//! The `moodle` pack: an institution's Moodle (web services) kept in PostgreSQL, issue #6. The
//! connector (`client.rs`) knows the API; the steps write the tables of migration `0020_moodle.sql`
//! with the sync contract's batch upsert.
//!
//! Chains:
//! - `moodle_institutional`: `sync_categories` (the hierarchy Campus → Semester → Department →
//!   Program, full, behind the deletion guard) → `sync_courses` (per program, bounded concurrency, one
//!   transaction per program) → `sync_enrollments` (concurrent fetch per course; as the answers come,
//!   per batch of courses, its users deduplicated, then its sections and enrollments) → `user_scope_backfill`
//!   (optional) → `role_derivation` (optional).
//! - `moodle_enrollments`: the same without `sync_categories` (start-up with
//!   `DISABLE_SYNC_CATEGORY_ON_STARTUP`, intra-day runs).
//!
//! `sync_courses`, `sync_enrollments`, `user_scope_backfill` and `role_derivation` may fan out
//! (`shards` of the step in the config): shard `k` of `n` takes the programs / courses / users whose
//! id modulo `n` is `k` ([`shard_of`]). The derivations decide per user, so their shards never share a
//! row, and they read the users a page at a time ([`scope::Users`]). What a step found that is not a
//! count (failed programs, users upserted once, sections) follows the guard's decision in `guard`.
//!
//! [`MoodlePack`] is the pack: besides its chains and handlers it checks the integrations' settings
//! ([`Settings`]) and the deployment's `[packs.moodle]` ([`schedules::MoodleConfig`], whose keys
//! also come from plain environment variables, [`schedules::ENV_KEYS`]), derives the interval
//! schedule of [`INSTITUTIONAL`], starts the start-up runs ([`schedules::startup_plan`]) and adds the
//! single-user routes ([`routes`]: hydrate, hand-set scope).

mod categories;
pub mod client;
mod courses;
mod enrolled;
mod enrollments;
pub mod hydrate;
pub mod roles;
pub mod routes;
pub mod schedules;
pub mod scope;
pub mod settings;
pub mod tables;
mod user_batches;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use schedules::MoodleConfig;
pub use settings::Settings;

use syncfleet_sdk::{
    IntervalSchedule, Pack, PackConfig, StartupRun,
    chain::{ChainDef, Mode, StepDef, StepKind},
    ids::ChainName,
    pack::Route,
    step::{Integration, StepContext, StepError, StepHandler},
    sync::table::Table,
};

pub const PACK: &str = "moodle";
pub const QUEUE: &str = "moodle";
pub const INSTITUTIONAL: &str = "moodle_institutional";
pub const ENROLLMENTS: &str = "moodle_enrollments";
/// The first step of [`INSTITUTIONAL`], run alone at start-up unless disabled.
pub const CATEGORIES_STEP: &str = "sync_categories";

/// The tables scope backfill and role derivation read; their statistics are refreshed first
/// when stale ([`syncfleet_sdk::sync::analyze::analyze_if_stale`]).
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

/// The Moodle pack.
pub struct MoodlePack;

impl Pack for MoodlePack {
    fn name(&self) -> &'static str {
        PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        chains()
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![
            (CATEGORIES_STEP, Arc::new(categories::SyncCategories)),
            ("sync_courses", Arc::new(courses::SyncCourses)),
            ("sync_enrollments", Arc::new(enrollments::SyncEnrollments)),
            ("user_scope_backfill", Arc::new(scope::UserScopeBackfill)),
            ("role_derivation", Arc::new(roles::RoleDerivation)),
        ]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), (String, String)> {
        Settings::parse(settings).map(|_| ())
    }

    fn check_config(&self, config: &PackConfig<'_>) -> Result<(), (String, String)> {
        config.parse::<MoodleConfig>()?.validate()
    }

    fn env_aliases(&self) -> &'static [(&'static str, &'static str)] {
        &schedules::ENV_KEYS
    }

    fn interval_schedules(&self, config: &PackConfig<'_>) -> Vec<IntervalSchedule> {
        // An invalid section fails the configuration's validation (`check_config`) before this runs.
        let moodle = config.parse::<MoodleConfig>().unwrap_or_default();
        let (every, source) = schedules::interval(&moodle, config.environment);
        vec![IntervalSchedule { chain: INSTITUTIONAL, every, source }]
    }

    fn min_interval(&self, chain: &str) -> Option<Duration> {
        [INSTITUTIONAL, ENROLLMENTS].contains(&chain).then_some(schedules::MIN_INTERVAL)
    }

    fn prepare<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        _integration: &'a str,
        _settings: &'a Value,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(prepare(conn))
    }

    fn startup_runs(&self, config: &PackConfig<'_>) -> Vec<StartupRun> {
        let moodle = config.parse::<MoodleConfig>().unwrap_or_default();
        match schedules::startup_plan(&moodle) {
            Some((chain, step)) => vec![StartupRun { chain, step, mode: Mode::Full }],
            None => {
                tracing::info!("Moodle start-up sync disabled (DISABLE_SYNC_CATEGORY_ON_STARTUP, no SYNC_ON_STARTUP).");
                Vec::new()
            }
        }
    }

    fn routes(&self) -> Vec<Route> {
        routes::routes()
    }
}

/// Checks the pack's tables (from the migration) at registration.
pub async fn prepare(conn: &mut sqlx::PgConnection) -> Result<(), String> {
    tables::ensure_tables(conn).await
}

fn settings_of(integration: &Integration) -> Result<Settings, StepError> {
    Settings::parse(&integration.settings).map_err(|e| StepError::settings(integration, e))
}

/// `[packs.moodle]` as a step gets it ([`StepContext::pack_section`], `null` → the defaults),
/// validated; the error is `(key relative to the section, message)`.
fn deployment(section: &Value) -> Result<MoodleConfig, (String, String)> {
    let config = if section.is_null() {
        MoodleConfig::default()
    } else {
        serde_path_to_error::deserialize::<_, MoodleConfig>(section).map_err(|e| {
            let path = e.path().to_string();
            (if path == "." { String::new() } else { path }, e.into_inner().to_string())
        })?
    };
    config.validate()?;
    Ok(config)
}

/// The deployment's `[packs.moodle]` of a step. Never read from the environment while a step runs:
/// the section came with the step, its environment variables merged in at start-up.
fn deployment_of(ctx: &StepContext) -> Result<MoodleConfig, StepError> {
    deployment(&ctx.pack_section).map_err(|(key, message)| {
        let key = if key.is_empty() { format!("packs.{PACK}") } else { format!("packs.{PACK}.{key}") };
        StepError::abort(format!("invalid `{key}`: {message}"))
    })
}

/// Programs (courses step) and courses (enrollments step) read at once: the integration's
/// `concurrency`, else the deployment's `[packs.moodle] sync_concurrency` (`MOODLE_SYNC_CONCURRENCY`),
/// else [`settings::DEFAULT_CONCURRENCY`].
fn concurrency_of(ctx: &StepContext, settings: &Settings) -> Result<u32, StepError> {
    let deployment = deployment_of(ctx)?;
    settings.concurrency(deployment.sync_concurrency).map_err(StepError::abort)
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
        let chains = MoodlePack.chains();
        let handlers: Vec<&str> = MoodlePack.handlers().into_iter().map(|(step, _)| step).collect();
        for chain in &chains {
            chain.validate().unwrap();
            for step in &chain.steps {
                assert!(handlers.contains(&step.name.as_str()), "{}", step.name);
            }
        }
        let names: Vec<&str> = chains[0].steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["sync_categories", "sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"]
        );
        for t in tables::all() {
            assert!(t.name.starts_with("moodle_"));
        }
    }

    #[test]
    fn the_deployments_section_as_a_step_reads_it() {
        assert_eq!(deployment(&Value::Null), Ok(MoodleConfig::default()));
        let c = deployment(&serde_json::json!({"sync_concurrency": 7, "sync_on_startup": true})).unwrap();
        assert_eq!((c.sync_concurrency, c.sync_on_startup), (Some(7), true));
        assert_eq!(deployment(&serde_json::json!({"sync_concurrency": 0})).unwrap_err().0, "sync_concurrency");
        assert_eq!(deployment(&serde_json::json!({"sync_concurrency": "x"})).unwrap_err().0, "sync_concurrency");
        assert_eq!(deployment(&serde_json::json!({"nope": 1})).unwrap_err().0, "nope");
        assert_eq!(deployment(&serde_json::json!(5)).unwrap_err().0, "");
    }

    #[test]
    fn the_pack_reads_its_section() {
        fn at(section: &Value) -> PackConfig<'_> {
            PackConfig { environment: syncfleet_sdk::config::Environment::Production, section }
        }
        let none = Value::Null;
        let set = serde_json::json!({"sync_interval_minutes": 45, "disable_sync_category_on_startup": true});
        let low = serde_json::json!({"sync_concurrency": 21});
        assert!(MoodlePack.env_aliases().contains(&("MOODLE_SYNC_CONCURRENCY", "sync_concurrency")));
        assert_eq!(MoodlePack.env_aliases().len(), schedules::ENV_KEYS.len());
        MoodlePack.check_config(&at(&none)).unwrap();
        MoodlePack.check_config(&at(&set)).unwrap();
        assert_eq!(MoodlePack.check_config(&at(&low)).unwrap_err().0, "sync_concurrency");
        assert_eq!(
            MoodlePack.interval_schedules(&at(&none)),
            [IntervalSchedule { chain: INSTITUTIONAL, every: Duration::from_secs(180 * 60), source: "pack" }]
        );
        assert_eq!(
            MoodlePack.interval_schedules(&at(&set)),
            [IntervalSchedule { chain: INSTITUTIONAL, every: Duration::from_secs(45 * 60), source: "config" }]
        );
        assert_eq!(MoodlePack.min_interval(INSTITUTIONAL), Some(schedules::MIN_INTERVAL));
        assert_eq!(MoodlePack.min_interval(ENROLLMENTS), Some(schedules::MIN_INTERVAL));
        assert_eq!(MoodlePack.min_interval("demo_ping"), None);
        assert_eq!(
            MoodlePack.startup_runs(&at(&none)),
            [StartupRun { chain: INSTITUTIONAL, step: Some(CATEGORIES_STEP), mode: Mode::Full }]
        );
        assert_eq!(MoodlePack.startup_runs(&at(&set)), []);
        assert!(MoodlePack.check_settings(&serde_json::json!({"moodle": {}})).is_err());
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
