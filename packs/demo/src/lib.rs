//! The `demo` pack: steps that write a little to the database, so the engine can be run and
//! tested before the real packs exist.
//!
//! Chains:
//! - `demo_diamond`: `start` → `left`, `right` → `join` → `report` (optional). `right` fails on its
//!   first attempt and succeeds on the retry.
//! - `demo_fanout`: `plan` → `fan` (8 shards; configurable) → `collect`.
//! - `demo_ping`: one step.
//! - `demo_contention`: `fan` with 20 shards that all write one entity (one lease for all).
//!
//! Behaviour per integration, from its `settings` JSON:
//! `{"step_ms": 100, "fail": {"left": "always" | "once" | "never"}, "slow": {"left": 5000}, "effects": true}`.
//! Every step inserts one `demo_effects` row in its completion transaction, so a doubled or lost
//! step shows in the table; with `"effects": false` the steps write nothing (empty steps, whose
//! finish commits nothing of the step's: what the engine alone costs).

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};

use syncfleet_sdk::{
    Pack,
    chain::{ChainDef, StepDef, StepKind},
    ids::ChainName,
    step::{StepContext, StepError, StepHandler},
};

pub const PACK: &str = "demo";
pub const QUEUE: &str = "demo";

pub fn chains() -> Vec<ChainDef> {
    let s = |name: &str, kind| StepDef::new(name, kind, QUEUE);
    vec![
        ChainDef {
            name: ChainName::parse("demo_diamond").expect("valid"),
            pack: PACK.into(),
            description: "A diamond of dependencies with a step that fails once.".into(),
            steps: vec![
                s("start", StepKind::Pull),
                s("left", StepKind::Pull).after(&["start"]).retry(3, Duration::from_millis(200)),
                s("right", StepKind::Pull).after(&["start"]).retry(3, Duration::from_millis(200)),
                s("join", StepKind::Derive).after(&["left", "right"]),
                s("report", StepKind::Report).after(&["join"]).optional(),
            ],
        },
        ChainDef {
            name: ChainName::parse("demo_fanout").expect("valid"),
            pack: PACK.into(),
            description: "One step fanned out in shards over the fleet.".into(),
            steps: vec![
                s("plan", StepKind::Pull),
                s("fan", StepKind::Pull).after(&["plan"]).shards(8).retry(3, Duration::from_millis(200)),
                s("collect", StepKind::Derive).after(&["fan"]),
            ],
        },
        ChainDef {
            name: ChainName::parse("demo_ping").expect("valid"),
            pack: PACK.into(),
            description: "One step: for smoke checks and start-latency measurements.".into(),
            steps: vec![s("ping", StepKind::Report)],
        },
        ChainDef {
            name: ChainName::parse("demo_contention").expect("valid"),
            pack: PACK.into(),
            description: "Twenty shards that all write one entity.".into(),
            steps: vec![s("fan", StepKind::Pull).shards(20).entity("counter", true)],
        },
    ]
}

/// The pack: its chains, and one handler for all of their steps. It has no settings to check,
/// no tables to prepare (migration `0001` made `demo_effects`), no schedules and no routes, so it
/// overrides nothing else.
pub struct DemoPack;

impl Pack for DemoPack {
    fn name(&self) -> &'static str {
        PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        chains()
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        let handler: Arc<dyn StepHandler> = Arc::new(DemoStep);
        ["start", "left", "right", "join", "report", "plan", "fan", "collect", "ping"]
            .into_iter()
            .map(|step| (step, handler.clone()))
            .collect()
    }
}

/// Sleeps a little, maybe fails as configured, and records its effect.
struct DemoStep;

impl StepHandler for DemoStep {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = &ctx.integration.settings;
            let step = ctx.step.name.as_str();
            let default_fail =
                if step == "right" && ctx.chain.name.as_str() == "demo_diamond" { "once" } else { "never" };
            let fail = settings.pointer(&format!("/fail/{step}")).and_then(|v| v.as_str()).unwrap_or(default_fail);
            let ms = settings
                .pointer(&format!("/slow/{step}"))
                .or_else(|| settings.get("step_ms"))
                .and_then(|v| v.as_u64())
                .unwrap_or(100);
            if ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = ctx.cancel.cancelled() => return Err(StepError::retry("cancelled while sleeping")),
                }
            }
            match fail {
                "always" => return Err(StepError::retry(format!("{step} is configured to fail"))),
                "once" if ctx.attempt == 1 => {
                    return Err(StepError::retry(format!("{step} fails on its first attempt")));
                }
                _ => {}
            }
            if settings.get("effects").and_then(|v| v.as_bool()) == Some(false) {
                return Ok(());
            }
            ctx.result.fetched = 1;
            ctx.result.inserted = 1;
            let (run_id, shard, worker, started) = (ctx.run_id, ctx.shard, ctx.worker.clone(), ctx.started_at);
            let step = step.to_owned();
            sqlx::query(
                "INSERT INTO demo_effects (run_id, step, shard, worker, started_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run_id.0)
            .bind(step)
            .bind(shard)
            .bind(worker)
            .bind(started)
            .execute(ctx.tx().await?)
            .await?;
            Ok(())
        }
        .boxed()
    }
}
