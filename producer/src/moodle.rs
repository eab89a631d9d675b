//! The Moodle pack's start-up triggers (issue #6): for every enabled `moodle` integration, categories
//! sync at start-up (`sync_categories` of `moodle_institutional` alone) unless
//! `DISABLE_SYNC_CATEGORY_ON_STARTUP=true`; with `SYNC_ON_STARTUP=true` courses and enrollments run
//! too — the whole `moodle_institutional`, or `moodle_enrollments` when categories are disabled. A run
//! already active (another producer starting at the same time) is left alone.

use syncfleet_shared::{
    chain::Mode,
    packs::moodle::{self, schedules::MoodleConfig},
    store::{StoreError, runs::TriggerKind},
};

use crate::ops::{Ops, Trigger};

/// What start-up runs for one integration: (chain, only this step).
pub fn startup_plan(config: &MoodleConfig) -> Option<(&'static str, Option<&'static str>)> {
    match (config.sync_on_startup, config.disable_sync_category_on_startup) {
        (true, false) => Some((moodle::INSTITUTIONAL, None)),
        (true, true) => Some((moodle::ENROLLMENTS, None)),
        (false, false) => Some((moodle::INSTITUTIONAL, Some(moodle::CATEGORIES_STEP))),
        (false, true) => None,
    }
}

/// Fires the start-up runs; failures are logged (start-up goes on).
pub async fn startup_triggers(ops: &Ops) {
    let Some((chain, step)) = startup_plan(&ops.config.moodle) else {
        tracing::info!("Moodle start-up sync disabled (DISABLE_SYNC_CATEGORY_ON_STARTUP, no SYNC_ON_STARTUP).");
        return;
    };
    let integrations: Vec<String> =
        match sqlx::query_scalar("SELECT name FROM integrations WHERE enabled AND pack = $1 ORDER BY name")
            .bind(moodle::PACK)
            .fetch_all(&ops.pool)
            .await
        {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(%error, "Moodle start-up triggers skipped: integrations unreadable.");
                return;
            }
        };
    for integration in integrations {
        let trigger = Trigger {
            chain: chain.into(),
            integration: integration.clone(),
            mode: Mode::Full,
            kind: TriggerKind::Startup,
            triggered_by: "startup".into(),
            tick_key: None,
            force_sweep: false,
            step: step.map(str::to_owned),
            step_modes: Default::default(),
        };
        match ops.trigger(trigger).await {
            Ok(run) => tracing::info!(%run, chain, step, %integration, "Moodle start-up sync triggered."),
            Err(StoreError::ActiveRun { .. }) => {
                tracing::info!(chain, %integration, "Moodle start-up sync already running.")
            }
            Err(error) => tracing::warn!(%error, chain, %integration, "Moodle start-up trigger failed."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_follows_the_two_switches() {
        let c = |sync_on_startup, disable_sync_category_on_startup| MoodleConfig {
            sync_on_startup,
            disable_sync_category_on_startup,
            ..MoodleConfig::default()
        };
        assert_eq!(startup_plan(&c(false, false)), Some(("moodle_institutional", Some("sync_categories"))));
        assert_eq!(startup_plan(&c(true, false)), Some(("moodle_institutional", None)));
        assert_eq!(startup_plan(&c(true, true)), Some(("moodle_enrollments", None)));
        assert_eq!(startup_plan(&c(false, true)), None);
    }
}
