//! `scale` (issue #6): does the fleet go faster with more worker processes? Both parts run on 1, 2
//! and 4 `syncfleet-worker` processes of `[worker] concurrency = 1` each, so "N workers" is N step
//! slots, against the in-process sandbox whose Moodle answers every call after 50 ms. Rounds are
//! interleaved (1, 2, 4, 1, 2, 4, …) so a drift of the machine's load hits every worker count alike;
//! each round has a fresh sandbox, database and namespace ([`crate::round`]).
//!
//! - **fleet**: 50 `moodle` integrations on one `small` sandbox, `moodle_institutional` triggered
//!   for all at once: `fleet_wall_s_w{n}` (first trigger to the last run's end) and
//!   `fleet_runs_per_s_w{n}`.
//! - **institution**: one `moodle_institutional` at `large` (480 programs, 2,400 courses, 80,000
//!   users), the fan-out steps (`sync_courses`, `sync_enrollments`, `user_scope_backfill`,
//!   `role_derivation`) in 4 shards (the largest worker count):
//!   `wall_s_w{n}` and the seconds of each step, `step_s_w{n}_{step}` (its start to the next step's
//!   start, see [`Round::step_spans`]).
//!
//! Ratios are wall(1 worker) ÷ wall(N workers), computed within each cycle of 1, 2, 4 (measured back
//! to back), then the median over the cycles. Every run must end `completed` with every step
//! succeeded, and the active rows of `moodle_categories`, `moodle_courses`, `moodle_users` and
//! `moodle_enrollments` must equal the sandbox's counts, so a broken run gives no figure.

use std::time::{Duration, Instant};

use anyhow::Context;
use syncfleet_pack_moodle::{self as moodle, settings::DEFAULT_CONCURRENCY};
use syncfleet_sandbox::{FaultSettings, SandboxConfig, Scale};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;

use crate::{
    report::Scenario,
    round::{self, Round},
};

const WORKER_COUNTS: [usize; 3] = [1, 2, 4];
/// The moodle pack's fan-out steps run in this many shards (the largest worker count).
const SHARDS: usize = 4;
const FLEET_INTEGRATIONS: usize = 50;
const MOODLE_LATENCY_MS: u64 = 50;
/// Sandbox count → table whose active rows must equal it (per integration).
const TABLES: [(&str, &str); 4] = [
    ("categories", "moodle_categories"),
    ("courses", "moodle_courses"),
    ("users", "moodle_users"),
    ("enrolments", "moodle_enrollments"),
];
const RUN_LIMIT: Duration = Duration::from_secs(3600);

/// Which parts `scale` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Fleet,
    Institution,
    /// The institution on 1 and 4 workers only (`workers4_vs_1` without the 2-worker round).
    #[value(name = "institution-1-4")]
    InstitutionOneFour,
    All,
}

impl Part {
    /// The worker counts this part's institution rounds run on.
    fn institution_workers(self) -> &'static [usize] {
        match self {
            Part::InstitutionOneFour => &[1, 4],
            _ => &WORKER_COUNTS,
        }
    }
}

/// The `moodle` integration `name` on the sandbox at `moodle_url`, reading `DEFAULT_CONCURRENCY`
/// programs / courses at once (written out, so `MOODLE_SYNC_CONCURRENCY` in the environment does
/// not change the measurement).
fn integration_toml(name: &str, moodle_url: &str) -> String {
    format!(
        "[integrations.{name}]\npack = \"moodle\"\nmoodle = {{ base_url = \"{moodle_url}\", secret_file = \"moodle-token\" }}\n\
         concurrency = {DEFAULT_CONCURRENCY}\n"
    )
}

/// A fresh round: a sandbox at `scale` whose Moodle answers after 50 ms, `workers` processes of
/// concurrency 1, the integrations `names`, `chain_overrides` after them.
async fn with_moodle_round<T>(
    scale: Scale,
    workers: usize,
    names: &[String],
    chain_overrides: &str,
    body: impl AsyncFnOnce(&Round) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let sandbox = syncfleet_sandbox::spawn(SandboxConfig {
        scale,
        moodle_faults: FaultSettings { latency_ms: MOODLE_LATENCY_MS, ..Default::default() },
        ..Default::default()
    })
    .await?;
    let mut config: String = names.iter().map(|n| integration_toml(n, &sandbox.moodle_url())).collect();
    config.push_str(chain_overrides);
    round::with_round(round::Setup::new(Some(sandbox), workers, 1, config), body).await
}

/// Waits for `run` and checks it ended `completed` with every step succeeded.
async fn completed(r: &Round, run: syncfleet_shared::ids::RunId) -> anyhow::Result<RunView> {
    let view = r.completed(run, RUN_LIMIT).await?;
    for s in &view.steps {
        anyhow::ensure!(s.status == "succeeded", "{} of {}: {} {:?}", s.step, view.integration, s.status, s.error);
    }
    Ok(view)
}

/// The active rows of the Moodle tables equal `integrations` times the sandbox's counts.
async fn check_counts(r: &Round, integrations: usize) -> anyhow::Result<()> {
    let counts = r.sandbox().info()["counts"]["moodle"].clone();
    for (key, table) in TABLES {
        let per_integration = counts[key].as_i64().with_context(|| format!("sandbox count `{key}`"))?;
        let want = per_integration * integrations as i64;
        let sql = format!("SELECT count(*) FROM {table} WHERE is_active");
        let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&r.ops().pool).await?;
        anyhow::ensure!(got == want, "{table}: {got} active rows, the sandbox has {want} ({key})");
    }
    Ok(())
}

/// 50 integrations triggered at once on `workers` processes: seconds from the first trigger to the
/// last run's end.
async fn fleet(workers: usize) -> anyhow::Result<f64> {
    let names: Vec<String> = (0..FLEET_INTEGRATIONS).map(|i| format!("uni{i:02}")).collect();
    with_moodle_round(Scale::Small, workers, &names, "", async |r| {
        let started = Instant::now();
        let mut runs = Vec::with_capacity(names.len());
        for name in &names {
            runs.push(r.trigger(moodle::INSTITUTIONAL, name, Mode::Full, &[]).await?);
        }
        for run in runs {
            completed(r, run).await?;
        }
        let wall = started.elapsed().as_secs_f64();
        check_counts(r, names.len()).await?;
        Ok(wall)
    })
    .await
}

/// One `moodle_institutional` at `large` on `workers` processes, the fan-out steps in 4 shards.
async fn institution(workers: usize) -> anyhow::Result<(RunView, f64, Vec<(String, f64)>)> {
    let names = ["uni".to_owned()];
    let overrides: String = ["sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"]
        .iter()
        .map(|s| format!("[chains.{}.steps.{s}]\nshards = {SHARDS}\n", moodle::INSTITUTIONAL))
        .collect();
    with_moodle_round(Scale::Large, workers, &names, &overrides, async |r| {
        let started = Instant::now();
        let run = r.trigger(moodle::INSTITUTIONAL, &names[0], Mode::Full, &[]).await?;
        let view = completed(r, run).await?;
        let wall = started.elapsed().as_secs_f64();
        let spans = r.step_spans(run).await?;
        check_counts(r, 1).await?;
        Ok((view, wall, spans))
    })
    .await
}

async fn fleet_part(s: &mut Scenario, runs: usize) -> anyhow::Result<()> {
    for cycle in 0..runs {
        let mut walls = Vec::new();
        for w in WORKER_COUNTS {
            let wall = fleet(w).await?;
            eprintln!("scale fleet cycle {}: {w} worker(s) {wall:.1} s", cycle + 1);
            s.figure(format!("fleet_wall_s_w{w}"), wall);
            s.figure(format!("fleet_runs_per_s_w{w}"), FLEET_INTEGRATIONS as f64 / wall);
            walls.push((w, wall));
        }
        for &(w, wall) in &walls[1..] {
            s.figure(format!("fleet_workers{w}_vs_1"), walls[0].1 / wall);
        }
    }
    for w in &WORKER_COUNTS[1..] {
        s.ratio_from_median(&format!("fleet_workers{w}_vs_1"));
    }
    s.goal("fleet_workers4_vs_1", ">= 3.5");
    Ok(())
}

async fn institution_part(s: &mut Scenario, runs: usize, workers: &[usize]) -> anyhow::Result<()> {
    for cycle in 0..runs {
        let mut walls = Vec::new();
        for &w in workers {
            let (view, wall, spans) = institution(w).await?;
            let shown: Vec<String> = spans.iter().map(|(step, secs)| format!("{step} {secs:.1}")).collect();
            eprintln!("scale institution cycle {}: {w} worker(s) {wall:.1} s ({})", cycle + 1, shown.join(", "));
            s.figure(format!("wall_s_w{w}"), wall);
            for (step, secs) in spans {
                s.figure(format!("step_s_w{w}_{step}"), secs);
            }
            for st in view.steps.iter().filter(|st| st.step == "user_scope_backfill") {
                s.figure(format!("scope_users_w{w}"), st.fetched as f64);
            }
            s.figure(format!("api_calls_w{w}"), view.steps.iter().map(|st| st.api_calls).sum::<i64>() as f64);
            walls.push((w, wall));
        }
        for &(w, wall) in &walls[1..] {
            s.figure(format!("workers{w}_vs_1"), walls[0].1 / wall);
        }
    }
    for w in &workers[1..] {
        s.ratio_from_median(&format!("workers{w}_vs_1"));
    }
    s.goal("workers4_vs_1", ">= 3.0");
    Ok(())
}

/// `runs` cycles of 1, 2, 4 workers of each part in `part`.
pub async fn run(part: Part, runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("scale", runs);
    s.note(format!(
        "every worker process runs [worker] concurrency = 1, so N workers = N step slots; the sandbox's \
         Moodle answers after {MOODLE_LATENCY_MS} ms; integrations read {DEFAULT_CONCURRENCY} programs / courses \
         at once (MOODLE_SYNC_CONCURRENCY's default)"
    ));
    s.note(
        "ratios: wall on 1 worker ÷ wall on N, computed within each cycle of 1, 2, 4 workers (run back to back), \
         then the median over the cycles",
    );
    if part == Part::Fleet || part == Part::All {
        fleet_part(&mut s, runs).await?;
        s.note(format!(
            "fleet: {FLEET_INTEGRATIONS} moodle integrations on one small sandbox, moodle_institutional \
             triggered for all at once; wall = first trigger to the last run's end"
        ));
    }
    if part != Part::Fleet {
        institution_part(&mut s, runs, part.institution_workers()).await?;
        s.note(format!(
            "institution: one moodle_institutional at large scale (480 programs, 2,400 courses, \
             80,000 users), sync_courses, sync_enrollments, user_scope_backfill and role_derivation in {SHARDS} \
             shards; step_s_w{{n}}_{{step}} = the step's first start to the next step's start (the last: to the run's end)"
        ));
    }
    Ok(s)
}
