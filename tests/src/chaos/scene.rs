//! What the chaos tests share (`tests/tests/chaos*.rs`): the ERP syncs and demo fan-outs a scene
//! runs on a producer and three worker processes, and the checks each test ends with.

use serde_json::json;
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::RunView;

use super::{Cleanup, Fleet};
use crate::{Sandbox, TestEnv};

pub const SYNC: &str = "http_json_sync";
pub const FANOUT: &str = "demo_fanout";

/// Config lines: every step of the ERP sync and the demo fan-out may take 20 attempts.
pub fn attempts() -> String {
    super::attempts_override(&[(SYNC, &["pull"]), (FANOUT, &["plan", "fan", "collect"])], 20)
}

/// `n` demo integrations `demo-000…` whose steps take `step_ms`.
pub async fn demo_integrations(env: &TestEnv, n: usize, step_ms: u64) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("demo-{i:03}")).collect();
    for name in &names {
        env.demo_integration(name, json!({ "step_ms": step_ms })).await;
    }
    names
}

/// Each step of each completed demo run applied its effect exactly once.
pub async fn assert_effects_once(env: &TestEnv, views: &[RunView]) {
    for v in views.iter().filter(|v| v.chain.starts_with("demo_")) {
        let run = RunId(uuid::Uuid::parse_str(&v.id).unwrap());
        let effects = env.effects(run).await;
        let rows: i64 = env.scalar("SELECT count(*) FROM step_runs WHERE run_id = $1", run).await;
        assert_eq!(effects.len() as i64, rows, "every step row of {} has its effect: {effects:?}", v.id);
        assert!(effects.iter().all(|(_, _, n)| *n == 1), "each effect applied once: {effects:?}");
    }
}

/// The checks every test ends with.
pub async fn assert_fleet_invariants(env: &TestEnv) -> super::FleetReport {
    let report = super::fleet_report(&env.pool, "pull").await;
    report.assert_clean();
    report
}

pub async fn trigger_all(env: &TestEnv, chain: &str, names: &[String]) -> Vec<RunId> {
    let mut runs = vec![];
    for name in names {
        runs.push(env.trigger_with(chain, name, Mode::Full, false).await);
    }
    runs
}

/// Steps running now.
pub async fn running(env: &TestEnv) -> i64 {
    env.value("SELECT count(*) FROM step_runs WHERE status = 'running'").await
}

pub async fn finish(env: TestEnv, cleanup: Cleanup) {
    env.finish().await;
    cleanup.disarm();
}

/// What a scene holds: ERP integrations reading the sandbox (pages of `page`, `erp_extra` lines
/// in each, the sandbox answering a page after `latency_ms`) and demo integrations whose steps take
/// `step_ms`.
pub struct Setup<'a> {
    pub erps: usize,
    pub page: u32,
    pub erp_extra: &'a str,
    pub latency_ms: u64,
    pub demos: usize,
    pub step_ms: u64,
}

/// A test's env with its integrations, logs, producer process and three worker processes.
pub struct Scene {
    pub env: TestEnv,
    pub cleanup: Cleanup,
    pub fleet: Fleet,
    pub erps: Vec<String>,
    pub demos: Vec<String>,
}

impl Scene {
    /// `make_env` builds the env from the config lines (on the shared servers, or private ones).
    pub async fn start(sandbox: &Sandbox, setup: Setup<'_>, make_env: impl AsyncFnOnce(String) -> TestEnv) -> Scene {
        let (toml, erps) = super::erp_integrations(sandbox, setup.erps, setup.page, setup.erp_extra);
        let env = make_env(format!("{toml}\n{}", attempts())).await;
        let cleanup = Cleanup::new(&env);
        super::install_logs(&env.owner_pool().await, &["erp_items"]).await;
        let demos = demo_integrations(&env, setup.demos, setup.step_ms).await;
        sandbox.faults("erp", json!({ "latency_ms": setup.latency_ms })).await;
        let mut fleet = Fleet::new(&env);
        fleet.start_producer();
        for _ in 0..3 {
            fleet.start_worker();
        }
        Scene { env, cleanup, fleet, erps, demos }
    }

    /// A full run of every integration: the ERP sync and the demo fan-out.
    pub async fn trigger_all(&self) -> Vec<RunId> {
        let mut runs = trigger_all(&self.env, SYNC, &self.erps).await;
        runs.extend(trigger_all(&self.env, FANOUT, &self.demos).await);
        runs
    }

    pub async fn finish(self) {
        drop(self.fleet);
        finish(self.env, self.cleanup).await;
    }
}
