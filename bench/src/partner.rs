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

use serde_json::{Value, json};
use syncfleet_sandbox::{SandboxConfig, SandboxHandle, Scale};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;

use crate::{
    report::Scenario,
    round::{self, Round},
};

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

/// Runs `f` on a fresh round (two worker processes of concurrency 4, the partner integration on a
/// freshly generated sandbox) and always cleans the round up.
async fn with_round<T>(setup: Setup, f: impl AsyncFnOnce(&Round) -> anyhow::Result<T>) -> anyhow::Result<T> {
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
    let config = syncfleet_sandbox::partner_integration_toml(
        INTEGRATION,
        &sandbox.northpass_url(),
        &sandbox.impartner_url(),
        100,
        &limits,
        "",
    );
    round::with_round(round::Setup::new(Some(sandbox), WORKERS, 4, config), f).await
}

/// Runs `partner_daily` to a `completed` end: the run and its wall time in seconds.
async fn run(r: &Round, mode: Mode, step_modes: &[(&str, Mode)]) -> anyhow::Result<(RunView, f64)> {
    r.run(CHAIN, INTEGRATION, mode, step_modes).await
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
            with_round(Setup { scale: Scale::Seed, northpass_rate: None }, async |r| run(r, Mode::Full, &[]).await)
                .await?;
        eprintln!("partner-daily round {}: seed full {wall:.1} s, {} calls", round + 1, calls(&view));
        s.figure("wall_s", wall);
        s.figure("calls", calls(&view) as f64);
        let limited = Setup { scale: Scale::Small, northpass_rate: Some(NORTHPASS_RATE) };
        let (view, wall, (np, np_429)) = with_round(limited, async |r| {
            let (view, wall) = run(r, Mode::Full, &[]).await?;
            Ok((view, wall, northpass_requests(r.sandbox())))
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
            let (full, full_wall) = run(r, Mode::Full, &[]).await?;
            let mut changed = 0;
            for resource in ["people", "enrollments"] {
                let out =
                    r.sandbox().mutate_json(json!({"api": "northpass", "resource": resource, "change_percent": 1}))?;
                changed += out["changed"].as_array().map_or(0, Vec::len);
            }
            let (inc, inc_wall) = run(r, Mode::Incremental, &[("impartner_sync", Mode::Incremental)]).await?;
            // The nightly shape (Impartner read in full) on the data as it now is.
            let (nightly, _) = run(r, Mode::Incremental, &[]).await?;
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
/// and at `large` (ten times seed), no upstream limit. The pull engine holds three pages and the
/// enrollment shards a batch of transcripts, so the peak should not follow the data set's size.
pub async fn memory(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("memory", runs);
    for round in 0..runs {
        for (scale, name) in [(Scale::Seed, "seed"), (Scale::Large, "large")] {
            let (calls, rss, (gap, gap_step), wall) = with_round(Setup { scale, northpass_rate: None }, async |r| {
                let (view, wall) = run(r, Mode::Full, &[]).await?;
                Ok((calls(&view), r.workers_peak_rss_mb()?, r.idle_gap_max_s(&view.id).await?, wall))
            })
            .await?;
            eprintln!(
                "memory round {}: {name} {rss:.1} MiB ({calls} API calls, {wall:.1} s; longest idle hand-over {gap:.2} s before {gap_step})",
                round + 1
            );
            s.figure(format!("worker_peak_rss_mb_{name}"), rss);
            s.figure(format!("{name}_idle_gap_max_s"), gap);
            s.figure(format!("{name}_wall_s"), wall);
        }
    }
    s.ratio_of_medians("large_vs_seed", "worker_peak_rss_mb_large", "worker_peak_rss_mb_seed");
    s.note("peak of the two worker processes over a full partner_daily; large = ten times seed");
    s.note("idle_gap_max_s: the longest wait from a step's last prerequisite's end (all its shards) to the step's first start");
    s.goal("large_vs_seed", "<= 1.5");
    s.goal("large_idle_gap_max_s", "<= 1.0");
    Ok(s)
}
