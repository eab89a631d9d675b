//! The scheduler: fires each schedule (chain, integration, mode) once per tick, in its mode and
//! with its step modes. A tick's identity is `{chain}:{integration}:{tick}` for an incremental
//! schedule and `{chain}:{integration}:{tick}:{mode}` otherwise (the run's unique `tick_key`), so any
//! number of producer replicas firing the same tick create one run, and two schedules of one chain
//! with different modes each have their own ticks.
//!
//! What is in force comes from [`Ops::resolve_schedules`] (stored > environment > config file >
//! the packs' defaults, per (chain, integration, mode); see `ops/schedules.rs`). A cron schedule's
//! ticks are the times its crontab expression names in its time zone; an interval's are aligned to
//! the epoch. The minimum interval is enforced at every layer: config validation, the store, and
//! here again for stored values; a pack may raise it for its chains (`Pack::min_interval`: 30
//! minutes for the Moodle chains), and may derive interval defaults from the configuration
//! (`Pack::interval_schedules`: the Moodle interval per environment or
//! `MOODLE_SYNC_INTERVAL_MINUTES`).
//!
//! When a full and an incremental schedule of one (chain, integration) share a tick, the full one
//! fires first and the incremental one finds it active. A full tick that finds a run of its chain
//! still active is tried again on each pass until that run ends or the next tick comes: the sweep
//! that finds deletions is not skipped for an incremental run that happened to be running.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use syncfleet_shared::{
    chain::Mode,
    ids::{ChainName, IntegrationName},
    job::tick_id,
};
use syncfleet_store::{StoreError, runs::TriggerKind};
use tokio_util::sync::CancellationToken;

pub use crate::ops::ResolvedSchedule;
use crate::ops::{Ops, Trigger};

/// What firing one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    Created(String),
    /// Another producer fired this tick already.
    AlreadyFired,
    /// The previous run is still active; this tick is skipped.
    PreviousActive,
}

pub struct Scheduler {
    ops: Ops,
    last: HashMap<(String, String, &'static str), i64>,
    /// Full ticks waiting for an active run of their chain to end (logged once).
    waiting: HashSet<(String, String, &'static str)>,
}

impl Scheduler {
    pub fn new(ops: Ops) -> Self {
        Scheduler { ops, last: HashMap::new(), waiting: HashSet::new() }
    }

    /// Every schedule in force, resolved ([`Ops::resolve_schedules`]).
    pub async fn resolve(&self) -> Result<Vec<ResolvedSchedule>, StoreError> {
        self.ops.resolve_schedules().await
    }

    /// Fires one tick of one schedule, incremental.
    pub async fn fire(
        &self,
        chain: &str,
        integration: &str,
        tick: i64,
        kind: TriggerKind,
    ) -> Result<Fired, StoreError> {
        self.fire_in(chain, integration, tick, kind, Mode::Incremental).await
    }

    /// Fires one tick of one schedule in `mode`.
    pub async fn fire_in(
        &self,
        chain: &str,
        integration: &str,
        tick: i64,
        kind: TriggerKind,
        mode: Mode,
    ) -> Result<Fired, StoreError> {
        self.fire_with(chain, integration, tick, kind, mode, &BTreeMap::new()).await
    }

    /// Fires one tick of a resolved schedule: its mode and its step modes.
    pub async fn fire_schedule(&self, s: &ResolvedSchedule, tick: i64, kind: TriggerKind) -> Result<Fired, StoreError> {
        self.fire_with(&s.chain, &s.integration, tick, kind, s.mode, &s.step_modes).await
    }

    async fn fire_with(
        &self,
        chain: &str,
        integration: &str,
        tick: i64,
        kind: TriggerKind,
        mode: Mode,
        step_modes: &BTreeMap<String, Mode>,
    ) -> Result<Fired, StoreError> {
        let (c, i) = (
            ChainName::parse(chain).map_err(|_| StoreError::UnknownChain(chain.into()))?,
            IntegrationName::parse(integration).map_err(|_| StoreError::UnknownIntegration(integration.into()))?,
        );
        let tick_key = match mode {
            Mode::Incremental => tick_id(&c, &i, tick),
            other => format!("{}:{}", tick_id(&c, &i, tick), other.as_str()),
        };
        let trigger = Trigger {
            chain: chain.into(),
            integration: integration.into(),
            mode,
            kind,
            triggered_by: format!("{}:{tick}", kind.as_str()),
            tick_key: Some(tick_key),
            force_sweep: false,
            step: None,
            step_modes: step_modes.iter().map(|(s, m)| (s.clone(), *m)).collect(),
        };
        match self.ops.trigger(trigger).await {
            Ok(run) => Ok(Fired::Created(run.to_string())),
            Err(StoreError::DuplicateTick(_)) => Ok(Fired::AlreadyFired),
            Err(StoreError::ActiveRun { .. }) => Ok(Fired::PreviousActive),
            Err(e) => Err(e),
        }
    }

    /// One pass at `now`: fires every schedule whose tick advanced since the last pass.
    /// The first pass only remembers the current ticks, unless `startup` fires them.
    pub async fn tick_once(&mut self, now: DateTime<Utc>, startup: bool) -> Result<Vec<Fired>, StoreError> {
        let mut fired = Vec::new();
        for s in self.resolve().await? {
            let Some(tick) = s.schedule.tick_at_or_before(now) else { continue };
            let key = (s.chain.clone(), s.integration.clone(), s.mode.as_str());
            let kind = match self.last.get(&key) {
                None if startup => TriggerKind::Startup,
                None => {
                    self.last.insert(key, tick);
                    continue;
                }
                Some(last) if *last >= tick => continue,
                Some(_) => TriggerKind::Schedule,
            };
            let before = self.last.insert(key.clone(), tick);
            match self.fire_schedule(&s, tick, kind).await {
                Ok(f) => {
                    if f == Fired::PreviousActive {
                        if s.mode == Mode::Full && kind == TriggerKind::Schedule {
                            // Tried again on the next pass (same tick, same key).
                            if self.waiting.insert(key.clone()) {
                                tracing::info!(chain = %s.chain, integration = %s.integration, tick, "Full run waits: a run of its chain is still active.");
                            }
                            if let Some(before) = before {
                                self.last.insert(key, before);
                            }
                            continue;
                        }
                        tracing::info!(chain = %s.chain, integration = %s.integration, mode = s.mode.as_str(), tick, "Tick skipped: previous run still active.");
                    }
                    self.waiting.remove(&key);
                    fired.push(f);
                }
                Err(error) => {
                    syncfleet_runtime::metrics::scheduler_error();
                    tracing::warn!(chain = %s.chain, integration = %s.integration, %error, "Scheduled trigger failed.")
                }
            }
        }
        Ok(fired)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut first = true;
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            // Shutdown first: after a slow pass the next tick is due at once too.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let startup = first && self.ops.config.producer.startup_trigger;
            if let Err(error) = self.tick_once(Utc::now(), startup).await {
                syncfleet_runtime::metrics::scheduler_error();
                tracing::warn!(%error, "Scheduler pass failed.");
            }
            first = false;
        }
    }
}
