//! The scheduler: fires each (chain, integration) schedule once per tick. A tick's identity is
//! `{chain}:{integration}:{tick}` (the run's unique `tick_key`), so any number of producer
//! replicas firing the same tick create one run.
//!
//! Resolution order: value stored through the API (`schedules` table) > environment > config
//! file (both already merged into `Config::schedules`) > the pack's defaults
//! (`Pack::default_schedules`, for every enabled integration of the pack). A schedule is keyed by
//! (chain, integration, mode): configured and stored schedules run incremental and replace the pack
//! default of the same chain and mode; a stored schedule switched off stops every schedule of its
//! (chain, integration). The minimum interval is enforced at every
//! layer: config validation, the store, and here again for stored values; a pack may raise it for its
//! chains (`Pack::min_interval`: 30 minutes for the Moodle chains), and may derive interval
//! defaults from the configuration (`Pack::interval_schedules`: the Moodle interval per environment
//! or `MOODLE_SYNC_INTERVAL_MINUTES`).

use std::{collections::HashMap, time::Duration};

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
}

impl Scheduler {
    pub fn new(ops: Ops) -> Self {
        Scheduler { ops, last: HashMap::new() }
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
        let (c, i) = (
            ChainName::parse(chain).map_err(|_| StoreError::UnknownChain(chain.into()))?,
            IntegrationName::parse(integration).map_err(|_| StoreError::UnknownIntegration(integration.into()))?,
        );
        let trigger = Trigger {
            chain: chain.into(),
            integration: integration.into(),
            mode,
            kind,
            triggered_by: format!("{}:{tick}", kind.as_str()),
            tick_key: Some(tick_id(&c, &i, tick)),
            force_sweep: false,
            step: None,
            step_modes: Default::default(),
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
            self.last.insert(key, tick);
            match self.fire_in(&s.chain, &s.integration, tick, kind, s.mode).await {
                Ok(f) => {
                    if f == Fired::PreviousActive {
                        tracing::info!(chain = %s.chain, integration = %s.integration, tick, "Tick skipped: previous run still active.");
                    }
                    fired.push(f);
                }
                Err(error) => {
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
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let startup = first && self.ops.config.producer.startup_trigger;
            if let Err(error) = self.tick_once(Utc::now(), startup).await {
                tracing::warn!(%error, "Scheduler pass failed.");
            }
            first = false;
        }
    }
}
