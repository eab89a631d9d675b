//! Schedule resolution: which schedules are in force, from where. Resolution order: value stored
//! through the API (`schedules` table) > environment > config file (both already merged into
//! `Config::schedules`) > the packs' defaults (`Pack::default_schedules`,
//! `Pack::interval_schedules`, for every enabled integration of the pack). The scheduler fires
//! what this resolves; the API and the CLI list it.

use std::collections::HashMap;

use syncfleet_shared::{
    chain::Mode,
    config::{Schedule, ScheduleSpec},
};
use syncfleet_store::{self as store, StoreError, schedules::StoredSchedule};

use super::Ops;

/// A schedule after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSchedule {
    pub chain: String,
    pub integration: String,
    pub schedule: Schedule,
    /// `stored`, `config` (file or environment) or `pack` (the pack's default).
    pub source: &'static str,
    /// The mode of the runs it fires.
    pub mode: Mode,
}

impl Ops {
    /// Stored schedules override configured ones per (chain, integration).
    pub async fn resolve_schedules(&self) -> Result<Vec<ResolvedSchedule>, StoreError> {
        let min = self.config.min_interval();
        let mut out: HashMap<(String, String, &'static str), ResolvedSchedule> = HashMap::new();
        for (integration, pack) in store::integrations::enabled(&self.pool).await? {
            let Some(p) = self.registry.pack(&pack) else { continue };
            for d in p.default_schedules() {
                let spec = ScheduleSpec { interval_secs: None, cron: Some(d.cron.to_owned()) };
                match Schedule::from_spec(&spec, min) {
                    Ok(schedule) => {
                        let chain = d.chain.to_owned();
                        let key = (chain.clone(), integration.clone(), d.mode.as_str());
                        let integration = integration.clone();
                        out.insert(
                            key,
                            ResolvedSchedule { chain, integration, schedule, source: "pack", mode: d.mode },
                        );
                    }
                    Err(message) => tracing::warn!(chain = d.chain, %integration, %message, "Pack schedule ignored."),
                }
            }
            for i in p.interval_schedules(&self.registry.pack_config(&self.config, &pack)) {
                let (chain, every, source) = (i.chain, i.every, i.source);
                let key = (chain.to_owned(), integration.clone(), Mode::Incremental.as_str());
                let (chain, integration, mode) = (chain.to_owned(), integration.clone(), Mode::Incremental);
                let schedule = Schedule::Interval(every.max(self.min_interval_for(&chain)));
                out.insert(key, ResolvedSchedule { chain, integration, schedule, source, mode });
            }
        }
        for (chain, by_integration) in &self.config.schedules {
            for (integration, spec) in by_integration {
                if let Ok(schedule) = Schedule::from_spec(spec, self.min_interval_for(chain)) {
                    out.insert(
                        (chain.clone(), integration.clone(), Mode::Incremental.as_str()),
                        ResolvedSchedule {
                            chain: chain.clone(),
                            integration: integration.clone(),
                            schedule,
                            source: "config",
                            mode: Mode::Incremental,
                        },
                    );
                }
            }
        }
        for StoredSchedule { chain, integration, interval_secs: interval, cron, enabled, .. } in
            store::schedules::list(&self.pool).await?
        {
            let key = (chain.clone(), integration.clone(), Mode::Incremental.as_str());
            if !enabled {
                out.retain(|(c, i, _), _| (c, i) != (&chain, &integration));
                continue;
            }
            let spec = ScheduleSpec { interval_secs: interval.map(|i| i as u64), cron };
            match Schedule::from_spec(&spec, self.min_interval_for(&chain)) {
                Ok(schedule) => {
                    let mode = Mode::Incremental;
                    out.insert(key, ResolvedSchedule { chain, integration, schedule, source: "stored", mode });
                }
                Err(message) => tracing::warn!(%chain, %integration, %message, "Stored schedule ignored."),
            }
        }
        let mut v: Vec<_> = out.into_values().filter(|s| self.chains.get(&s.chain).is_some()).collect();
        v.sort_by(|a, b| {
            (&a.chain, &a.integration, a.mode == Mode::Full).cmp(&(&b.chain, &b.integration, b.mode == Mode::Full))
        });
        Ok(v)
    }
}
