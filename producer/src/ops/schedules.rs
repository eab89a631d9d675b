//! Schedule resolution: which schedules are in force, from where. A schedule is (chain,
//! integration, mode) with the step modes of the runs it fires, an interval or a crontab expression
//! read in an IANA time zone. Resolution order, per (chain, integration, mode): value stored through
//! the API or the CLI (`schedules` table, source `stored`) > environment > config file (both already
//! merged into `Config::schedules`, source `config`) > the packs' defaults
//! (`Pack::default_schedules`, `Pack::interval_schedules`, for every enabled integration of the
//! pack, source `pack`). A schedule switched off (stored, or `enabled = false` in the config) stops
//! the schedule of its mode; a stored one switched off without a mode (mode `all`) stops every
//! schedule of its (chain, integration). The scheduler fires what this resolves; the API and the CLI
//! list it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use syncfleet_shared::{
    chain::Mode,
    config::{Schedule, ScheduleSpec, parse_tz},
};
use syncfleet_store::{
    self as store, StoreError,
    schedules::{ALL_MODES, ScheduleRow, StoredSchedule},
};

use super::Ops;

/// Where a schedule comes from: a value stored through the API or the CLI.
pub const SOURCE_STORED: &str = "stored";
/// From the config file or the environment.
pub const SOURCE_CONFIG: &str = "config";
/// The pack's default.
pub const SOURCE_PACK: &str = "pack";

/// A schedule after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSchedule {
    pub chain: String,
    pub integration: String,
    pub schedule: Schedule,
    /// `stored`, `config` (file or environment) or `pack` (the pack's default, or a pack's interval
    /// derived from the configuration: `config` then).
    pub source: &'static str,
    /// The mode of the runs it fires.
    pub mode: Mode,
    /// Per-step modes of the runs it fires.
    pub step_modes: BTreeMap<String, Mode>,
}

/// A schedule after resolution, with its next execution.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub chain: String,
    pub integration: String,
    /// `incremental` or `full`: the mode of the runs it fires (`all` for a stored switch-off of
    /// every mode).
    pub mode: String,
    /// Per-step modes of the runs it fires, over the chain's pinned modes.
    #[serde(default)]
    pub step_modes: BTreeMap<String, String>,
    pub interval_secs: Option<u64>,
    /// Crontab expression (5 fields, or 6 with seconds first), read in `tz`.
    pub cron: Option<String>,
    /// The cron expression firing at the same ticks (an interval's equivalent, when one exists).
    pub resolved_cron: Option<String>,
    /// IANA time zone of `cron` (`UTC` for an interval).
    pub tz: String,
    /// `stored` (set through the API or the CLI), `config` (file or environment) or `pack` (the
    /// pack's default).
    pub source: String,
    pub enabled: bool,
    /// The next run, in UTC.
    pub next_at: Option<DateTime<Utc>>,
    /// The next run in the schedule's time zone (RFC 3339 with its offset).
    pub next_run: Option<String>,
    pub updated_by: Option<String>,
}

type Key = (String, String, &'static str);

fn insert(out: &mut HashMap<Key, ResolvedSchedule>, r: ResolvedSchedule) {
    out.insert((r.chain.clone(), r.integration.clone(), r.mode.as_str()), r);
}

/// Step modes as the store keeps them (names), dropping none: an unknown mode name is refused
/// when stored.
fn step_modes_of(stored: &BTreeMap<String, String>) -> BTreeMap<String, Mode> {
    stored.iter().filter_map(|(s, m)| Mode::parse(m).map(|m| (s.clone(), m))).collect()
}

impl Ops {
    /// Every schedule in force, sorted by chain, integration, then full before incremental (so a
    /// full and an incremental schedule with the same tick fire the full run).
    pub async fn resolve_schedules(&self) -> Result<Vec<ResolvedSchedule>, StoreError> {
        let min = self.config.min_interval();
        let mut out: HashMap<Key, ResolvedSchedule> = HashMap::new();
        for (integration, pack) in store::integrations::enabled(&self.pool).await? {
            let Some(p) = self.registry.pack(&pack) else { continue };
            for d in p.default_schedules() {
                let spec =
                    ScheduleSpec { cron: Some(d.cron.to_owned()), tz: Some(d.tz.to_owned()), ..Default::default() };
                match Schedule::from_spec(&spec, min) {
                    Ok(schedule) => insert(
                        &mut out,
                        ResolvedSchedule {
                            chain: d.chain.to_owned(),
                            integration: integration.clone(),
                            schedule,
                            source: SOURCE_PACK,
                            mode: d.mode,
                            step_modes: d.step_modes.iter().map(|(s, m)| ((*s).to_owned(), *m)).collect(),
                        },
                    ),
                    Err(message) => tracing::warn!(chain = d.chain, %integration, %message, "Pack schedule ignored."),
                }
            }
            for i in p.interval_schedules(&self.registry.pack_config(&self.config, &pack)) {
                let schedule = Schedule::Interval(i.every.max(self.min_interval_for(i.chain)));
                insert(
                    &mut out,
                    ResolvedSchedule {
                        chain: i.chain.to_owned(),
                        integration: integration.clone(),
                        schedule,
                        source: i.source,
                        mode: Mode::Incremental,
                        step_modes: BTreeMap::new(),
                    },
                );
            }
        }
        for (chain, by_integration) in &self.config.schedules {
            for (integration, specs) in by_integration {
                for spec in specs.iter() {
                    let key = (chain.clone(), integration.clone(), spec.run_mode().as_str());
                    if !spec.is_enabled() {
                        out.remove(&key);
                        continue;
                    }
                    if let Ok(schedule) = Schedule::from_spec(spec, self.min_interval_for(chain)) {
                        insert(
                            &mut out,
                            ResolvedSchedule {
                                chain: chain.clone(),
                                integration: integration.clone(),
                                schedule,
                                source: SOURCE_CONFIG,
                                mode: spec.run_mode(),
                                step_modes: spec.step_modes.clone(),
                            },
                        );
                    }
                }
            }
        }
        for s in store::schedules::list(&self.pool).await? {
            let StoredSchedule { chain, integration, mode, interval_secs, cron, tz, step_modes, enabled, .. } = s;
            let Some(run_mode) = Mode::parse(&mode) else {
                // `all`: switched off for every mode.
                out.retain(|(c, i, _), _| (c, i) != (&chain, &integration));
                continue;
            };
            if !enabled {
                out.remove(&(chain, integration, run_mode.as_str()));
                continue;
            }
            let spec = ScheduleSpec {
                interval_secs: interval_secs.map(|i| i as u64),
                cron,
                tz: Some(tz),
                ..Default::default()
            };
            match Schedule::from_spec(&spec, self.min_interval_for(&chain)) {
                Ok(schedule) => insert(
                    &mut out,
                    ResolvedSchedule {
                        chain,
                        integration,
                        schedule,
                        source: SOURCE_STORED,
                        mode: run_mode,
                        step_modes: step_modes_of(&step_modes),
                    },
                ),
                Err(message) => tracing::warn!(%chain, %integration, %message, "Stored schedule ignored."),
            }
        }
        let mut v: Vec<_> = out.into_values().filter(|s| self.chains.get(&s.chain).is_some()).collect();
        v.sort_by(|a, b| {
            (&a.chain, &a.integration, a.mode == Mode::Incremental).cmp(&(
                &b.chain,
                &b.integration,
                b.mode == Mode::Incremental,
            ))
        });
        Ok(v)
    }

    /// Every schedule (pack default, configured and stored) with its next execution; stored
    /// schedules switched off show as disabled.
    pub async fn schedules(&self) -> anyhow::Result<Vec<ScheduleView>> {
        let resolved = self.resolve_schedules().await?;
        let stored = store::schedules::list(&self.pool).await?;
        let now = Utc::now();
        let mut out: Vec<ScheduleView> = resolved
            .into_iter()
            .map(|r| {
                let (interval_secs, cron) = match &r.schedule {
                    Schedule::Interval(d) => (Some(d.as_secs()), None),
                    Schedule::Cron { expr, .. } => (None, Some(expr.clone())),
                };
                let updated_by = stored
                    .iter()
                    .find(|s| s.chain == r.chain && s.integration == r.integration && s.mode == r.mode.as_str())
                    .map(|s| s.updated_by.clone());
                let next_at = r.schedule.next_after(now);
                let tz = r.schedule.tz();
                ScheduleView {
                    next_run: next_at.map(|t| t.with_timezone(&tz).to_rfc3339()),
                    next_at,
                    resolved_cron: r.schedule.as_cron(),
                    tz: tz.name().to_owned(),
                    chain: r.chain,
                    integration: r.integration,
                    interval_secs,
                    cron,
                    source: r.source.to_owned(),
                    mode: r.mode.as_str().to_owned(),
                    step_modes: r.step_modes.iter().map(|(s, m)| (s.clone(), m.as_str().to_owned())).collect(),
                    enabled: true,
                    updated_by,
                }
            })
            .collect();
        for s in stored {
            let shown = out.iter().any(|v| {
                v.chain == s.chain && v.integration == s.integration && (s.mode == ALL_MODES || v.mode == s.mode)
            });
            if !s.enabled && !shown {
                out.push(ScheduleView {
                    chain: s.chain,
                    integration: s.integration,
                    mode: s.mode,
                    step_modes: s.step_modes,
                    interval_secs: None,
                    cron: None,
                    resolved_cron: None,
                    tz: s.tz,
                    source: SOURCE_STORED.into(),
                    enabled: false,
                    next_at: None,
                    next_run: None,
                    updated_by: Some(s.updated_by),
                });
            }
        }
        out.sort_by(|a, b| (&a.chain, &a.integration, &a.mode).cmp(&(&b.chain, &b.integration, &b.mode)));
        Ok(out)
    }

    /// Stores a schedule for (chain, integration, the spec's mode); the minimum interval, the time
    /// zone and the step names are checked. Switched off without a mode, it stops every schedule of
    /// (chain, integration).
    pub async fn set_schedule(
        &self,
        chain: &str,
        integration: &str,
        spec: &ScheduleSpec,
        actor: &str,
    ) -> Result<(), StoreError> {
        let def = self.chains.get(chain).ok_or_else(|| StoreError::UnknownChain(chain.into()))?;
        let i = store::integration_by_name(&self.pool, integration).await?;
        if def.pack != i.pack {
            return Err(StoreError::Invalid(format!(
                "integration: `{integration}` is a `{}` integration; chain `{chain}` needs `{}`",
                i.pack, def.pack
            )));
        }
        let enabled = spec.is_enabled();
        if let Some(tz) = &spec.tz {
            parse_tz(tz).map_err(|m| StoreError::Invalid(format!("tz: {m}")))?;
        }
        if let Some(unknown) = spec.step_modes.keys().find(|s| def.step(s).is_none()) {
            let known: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
            return Err(StoreError::Invalid(format!(
                "step_modes: chain `{chain}` has no step `{unknown}` (steps: {})",
                known.join(", ")
            )));
        }
        if enabled || spec.interval_secs.is_some() || spec.cron.is_some() {
            Schedule::from_spec(spec, self.min_interval_for(chain)).map_err(|m| {
                let field = if m.starts_with("tz:") {
                    ""
                } else if spec.cron.is_some() && spec.interval_secs.is_none() {
                    "cron: "
                } else {
                    "interval_secs: "
                };
                StoreError::Invalid(format!("{field}{m}"))
            })?;
        }
        // A disabled schedule keeps its last spec (or a placeholder interval satisfying the table's check).
        let (interval, cron) = match (spec.interval_secs, &spec.cron) {
            (None, None) => (Some(self.config.min_interval().as_secs().max(1) as i32), None),
            (i, c) => (i.map(|v| v.min(i32::MAX as u64) as i32), c.clone()),
        };
        let mode = match spec.mode {
            None if !enabled => ALL_MODES,
            m => m.unwrap_or_default().as_str(),
        };
        let step_modes: BTreeMap<String, String> =
            spec.step_modes.iter().map(|(s, m)| (s.clone(), m.as_str().to_owned())).collect();
        let tz = spec.tz.clone().unwrap_or_else(|| "UTC".into());
        let row = ScheduleRow {
            chain,
            integration_id: i.id,
            mode,
            interval_secs: interval,
            cron: cron.as_deref(),
            tz: &tz,
            step_modes: &step_modes,
            enabled,
            updated_by: actor,
        };
        // The schedule and its audit row commit together.
        let mut tx = store::audit::Audited::begin(&self.pool).await?;
        store::schedules::put(tx.conn(), &row).await?;
        let detail = serde_json::json!({
            "mode": mode, "interval_secs": spec.interval_secs, "cron": spec.cron, "tz": tz,
            "step_modes": step_modes, "enabled": enabled,
        });
        tx.commit(actor, "schedule.set", &format!("{chain}/{integration}"), detail).await?;
        Ok(())
    }
}
