//! Start-up triggers: when the scheduler starts, each pack's `Pack::startup_runs` are started for
//! every enabled integration of that pack (the Moodle pack's categories sync, for instance). A run
//! already active (another producer starting at the same time) is left alone.

use syncfleet_store::{StoreError, runs::TriggerKind};

use crate::ops::{Ops, Trigger};

/// Fires the start-up runs; failures are logged (start-up goes on).
pub async fn startup_triggers(ops: &Ops) {
    for pack in ops.registry.packs() {
        let runs = pack.startup_runs(&ops.registry.pack_config(&ops.config, pack.name()));
        if runs.is_empty() {
            continue;
        }
        let integrations = match syncfleet_store::integrations::enabled_of_pack(&ops.pool, pack.name()).await {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(%error, pack = pack.name(), "Start-up triggers skipped: integrations unreadable.");
                continue;
            }
        };
        for integration in integrations {
            for run in &runs {
                let trigger = Trigger {
                    chain: run.chain.into(),
                    integration: integration.clone(),
                    mode: run.mode,
                    kind: TriggerKind::Startup,
                    triggered_by: "startup".into(),
                    tick_key: None,
                    force_sweep: false,
                    step: run.step.map(str::to_owned),
                    step_modes: Default::default(),
                };
                let (chain, step) = (run.chain, run.step);
                match ops.trigger(trigger).await {
                    Ok(id) => tracing::info!(run = %id, chain, step, %integration, "Start-up sync triggered."),
                    Err(StoreError::ActiveRun { .. }) => {
                        tracing::info!(chain, %integration, "Start-up sync already running.")
                    }
                    Err(error) => tracing::warn!(%error, chain, %integration, "Start-up trigger failed."),
                }
            }
        }
    }
}
