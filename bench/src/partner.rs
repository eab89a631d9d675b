//! The partner pack end to end (issue #5): `partner_daily` run by real `syncfleet-worker` processes
//! (release binaries) against the in-process sandbox, each round in a fresh scratch database and
//! Redis namespace (removed at the end, also when a round fails) and a freshly generated sandbox.
//!
//! - `partner-daily`: a full `partner_daily` at `seed` scale with no upstream limit (the sandbox's
//!   Northpass limit lifted, the fleet's `northpass` budget raised to match): `wall_s`, trigger to
//!   run end. Then at Northpass's real 10 requests/s (sandbox limit and fleet budget both 10/s) at
//!   `small` scale — seed scale would need 23 minutes per run at 10/s — against the floor, the
//!   Northpass requests the run made ÷ 10/s: `rate_limited_vs_floor` (goal ≤ 1.1) and
//!   `throttled_share`, the Northpass requests the sandbox answered 429 (goal ≤ 1 %).
//! - `incremental`: a full run at `seed`, then the sandbox changes 1 % of Northpass people and
//!   1 % of enrollments, then `partner_daily` in incremental mode with every step incremental
//!   (`impartner_sync`, which the chain reads in full nightly, too): `calls_share` (incremental API
//!   calls ÷ full; goal ≤ 2 %) and `time_share` (wall time ÷ full). `nightly_calls_share` is the same
//!   run shape with the chain's nightly full Impartner read, for comparison.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};
use syncfleet_producer::{Ops, ops::Trigger};
use syncfleet_sandbox::{SandboxConfig, SandboxHandle, Scale};
use syncfleet_shared::{
    chain::Mode,
    config::Config,
    store::{self, runs::TriggerKind, views::RunView},
};
use tokio_util::sync::CancellationToken;

use crate::report::Scenario;

const INTEGRATION: &str = "bench-partner";
const CHAIN: &str = "partner_daily";
const WORKERS: usize = 2;
const NORTHPASS_RATE: f64 = 10.0;

/// The sandbox and the fleet's budget for one round.
#[derive(Clone, Copy)]
struct Setup {
    scale: Scale,
    /// `None`: no limit anywhere (the fleet's budget far above what the machine can do).
    northpass_rate: Option<f64>,
}

/// One round's scratch: database, namespace, producer in this process, worker processes.
struct Round {
    ops: Ops,
    config: Config,
    config_path: PathBuf,
    sandbox: SandboxHandle,
    token: CancellationToken,
    producer: tokio::task::JoinHandle<anyhow::Result<()>>,
    workers: Vec<tokio::process::Child>,
}

impl Round {
    async fn start(setup: Setup) -> anyhow::Result<Round> {
        let sandbox = syncfleet_sandbox::spawn(SandboxConfig {
            scale: setup.scale,
            northpass_rate_per_sec: setup.northpass_rate.map(|r| r as u32),
            ..Default::default()
        })
        .await?;
        // At the real limit the pack's own Northpass budget applies (10/s, burst 1).
        let limits = match setup.northpass_rate {
            Some(_) => String::new(),
            None => ", limits = { rate_per_sec = 100000.0, burst = 1000, concurrency = 16 }".to_owned(),
        };
        let tag = crate::queue::id();
        let toml = format!(
            "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/sf_bench_{tag}\"\nmax_connections = 20\n\
             [redis]\nnamespace = \"bench-{tag}\"\n\
             [worker]\npoll_interval_ms = 5\nconcurrency = 4\nlisten = \"\"\n\
             [producer]\nreconcile_interval_ms = 100\nscheduler_enabled = false\n{}",
            syncfleet_sandbox::partner_integration_toml(
                INTEGRATION,
                &sandbox.northpass_url(),
                &sandbox.impartner_url(),
                100,
                &limits,
                ""
            )
        );
        let config = Config::from_toml(&toml)?;
        let config_path = std::env::temp_dir().join(format!("syncfleet-bench-{tag}.toml"));
        std::fs::write(&config_path, &toml)?;
        let ops = match syncfleet_producer::connect(&config).await {
            Ok(ops) => ops,
            Err(e) => {
                store::drop_database(&config.database).await.ok();
                std::fs::remove_file(&config_path).ok();
                return Err(e);
            }
        };
        let token = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let producer = tokio::spawn(syncfleet_producer::run_with(listener, ops.clone(), token.clone()));
        let mut round = Round { ops, config, config_path, sandbox, token, producer, workers: vec![] };
        for i in 0..WORKERS {
            match spawn_worker(&round.config_path, i) {
                Ok(w) => round.workers.push(w),
                Err(e) => {
                    round.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(round)
    }

    /// Runs the chain and returns the run and its wall time (trigger to end), in seconds.
    async fn run(&self, mode: Mode, step_modes: &[(&str, Mode)]) -> anyhow::Result<(RunView, f64)> {
        let started = std::time::Instant::now();
        let run = self
            .ops
            .trigger(Trigger {
                chain: CHAIN.into(),
                integration: INTEGRATION.into(),
                mode,
                kind: TriggerKind::Manual,
                triggered_by: "bench".into(),
                tick_key: None,
                force_sweep: false,
                step: None,
                step_modes: step_modes.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
            })
            .await?;
        let view = syncfleet_producer::cli::wait_for(&self.ops, run, false, Duration::from_secs(1800)).await?;
        let wall = started.elapsed().as_secs_f64();
        anyhow::ensure!(view.status == "completed", "{CHAIN} ended {}: {:?}", view.status, view.error);
        Ok((view, wall))
    }

    async fn stop(mut self) {
        for w in &mut self.workers {
            w.kill().await.ok();
        }
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.producer).await;
        self.ops.queues.purge_namespace().await.ok();
        self.ops.pool.close().await;
        store::drop_database(&self.config.database).await.ok();
        std::fs::remove_file(&self.config_path).ok();
        self.sandbox.shutdown().await.ok();
    }
}

fn spawn_worker(config_path: &std::path::Path, i: usize) -> anyhow::Result<tokio::process::Child> {
    let bin = std::env::current_exe()?.parent().context("exe dir")?.join("syncfleet-worker");
    anyhow::ensure!(bin.exists(), "{} missing: run `cargo build --release --bins` first", bin.display());
    Ok(tokio::process::Command::new(&bin)
        .env("SYNCFLEET_CONFIG", config_path)
        .env("SYNCFLEET__WORKER__NAME", format!("bench-partner-{i}"))
        .env("SYNCFLEET_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Runs `f` on a fresh round and always cleans the round up.
async fn with_round<T>(setup: Setup, f: impl AsyncFnOnce(&Round) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let round = Round::start(setup).await?;
    let out = f(&round).await;
    round.stop().await;
    out
}

fn calls(view: &RunView) -> i64 {
    view.steps.iter().map(|s| s.api_calls).sum()
}

fn throttled(view: &RunView) -> i64 {
    view.steps.iter().map(|s| s.throttled).sum()
}

/// Requests the run made to Northpass and the 429s the sandbox answered (it counts them per API).
fn northpass_requests(sandbox: &SandboxHandle) -> (f64, f64) {
    let c = sandbox.counters();
    let n = |p: &str| c.pointer(p).and_then(Value::as_f64).unwrap_or_default();
    (n("/northpass/requests"), n("/northpass/throttled"))
}

pub async fn partner_daily(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("partner-daily", runs);
    for round in 0..runs {
        let (view, wall) =
            with_round(Setup { scale: Scale::Seed, northpass_rate: None }, async |r| r.run(Mode::Full, &[]).await)
                .await?;
        eprintln!("partner-daily round {}: seed full {wall:.1} s, {} calls", round + 1, calls(&view));
        s.figure("wall_s", wall);
        s.figure("calls", calls(&view) as f64);
        let limited = Setup { scale: Scale::Small, northpass_rate: Some(NORTHPASS_RATE) };
        let (view, wall, (np, np_429)) = with_round(limited, async |r| {
            let (view, wall) = r.run(Mode::Full, &[]).await?;
            Ok((view, wall, northpass_requests(&r.sandbox)))
        })
        .await?;
        anyhow::ensure!(np > 0.0, "the sandbox counted no Northpass request");
        let floor = np / NORTHPASS_RATE;
        eprintln!(
            "partner-daily round {}: small at 10 req/s {wall:.1} s, floor {floor:.1} s ({np} Northpass requests, \
             {np_429} answered 429), {} throttled of {} calls",
            round + 1,
            throttled(&view),
            calls(&view)
        );
        s.figure("rate_limited_wall_s", wall);
        s.figure("rate_limited_floor_s", floor);
        s.figure("rate_limited_northpass_calls", np);
        s.figure("rate_limited_vs_floor", wall / floor.max(1e-9));
        s.figure("throttled_share", np_429 / np);
    }
    s.ratio_of_medians("rate_limited_vs_floor", "rate_limited_wall_s", "rate_limited_floor_s");
    s.ratio_from_median("throttled_share");
    s.note("wall_s: seed scale, no upstream limit; rate_limited_*: small scale at Northpass's 10 requests/s");
    s.goal("wall_s", "<= 30");
    s.goal("rate_limited_vs_floor", "<= 1.1");
    s.goal("throttled_share", "<= 0.01");
    Ok(s)
}

pub async fn incremental(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("incremental", runs);
    for round in 0..runs {
        let out = with_round(Setup { scale: Scale::Seed, northpass_rate: None }, async |r| {
            let (full, full_wall) = r.run(Mode::Full, &[]).await?;
            let mut changed = 0;
            for resource in ["people", "enrollments"] {
                let out =
                    r.sandbox.mutate_json(json!({"api": "northpass", "resource": resource, "change_percent": 1}))?;
                changed += out["changed"].as_array().map_or(0, Vec::len);
            }
            let (inc, inc_wall) = r.run(Mode::Incremental, &[("impartner_sync", Mode::Incremental)]).await?;
            // The nightly shape (Impartner read in full) on the data as it now is.
            let (nightly, _) = r.run(Mode::Incremental, &[]).await?;
            Ok((full, full_wall, inc, inc_wall, nightly, changed))
        })
        .await?;
        let (full, full_wall, inc, inc_wall, nightly, changed) = out;
        let (fc, ic, nc) = (calls(&full) as f64, calls(&inc) as f64, calls(&nightly) as f64);
        eprintln!(
            "incremental round {}: {changed} changed; full {fc} calls {full_wall:.1} s, incremental {ic} calls \
             {inc_wall:.1} s, nightly shape {nc} calls",
            round + 1
        );
        s.figure("full_calls", fc);
        s.figure("incremental_calls", ic);
        s.figure("full_wall_s", full_wall);
        s.figure("incremental_wall_s", inc_wall);
        s.figure("calls_share", ic / fc.max(1.0));
        s.figure("time_share", inc_wall / full_wall.max(1e-9));
        s.figure("nightly_calls_share", nc / fc.max(1.0));
    }
    s.ratio_from_median("calls_share");
    s.ratio_from_median("time_share");
    s.ratio_from_median("nightly_calls_share");
    s.note("after 1 % of Northpass people and 1 % of enrollments changed, seed scale, every step incremental");
    s.goal("calls_share", "<= 0.02");
    Ok(s)
}

/// `memory`: the worker processes' peak resident set (`VmHWM`) over a full `partner_daily` at `seed`
/// and at `large` (ten times seed), no upstream limit. The pull engine holds two pages and the
/// enrollment shards a batch of transcripts, so the peak should not follow the data set's size.
pub async fn memory(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("memory", runs);
    for round in 0..runs {
        for (scale, name) in [(Scale::Seed, "worker_peak_rss_mb_seed"), (Scale::Large, "worker_peak_rss_mb_large")] {
            let (calls, rss) = with_round(Setup { scale, northpass_rate: None }, async |r| {
                let (view, _) = r.run(Mode::Full, &[]).await?;
                let mut peak: f64 = 0.0;
                for w in &r.workers {
                    let pid = w.id().context("a worker process exited during the run")?;
                    peak = peak.max(crate::upsert::peak_rss_mb(pid)?);
                }
                Ok((calls(&view), peak))
            })
            .await?;
            eprintln!("memory round {}: {name} {rss:.1} MiB ({calls} API calls)", round + 1);
            s.figure(name, rss);
        }
    }
    s.ratio_of_medians("large_vs_seed", "worker_peak_rss_mb_large", "worker_peak_rss_mb_seed");
    s.note("peak of the two worker processes over a full partner_daily; large = ten times seed");
    s.goal("large_vs_seed", "<= 1.5");
    Ok(s)
}
