//! Queue layer and engine throughput, measured side by side in each of `--runs` runs.
//!
//! - `queue_jobs_per_s`: 6,000 no-op jobs pushed through our queue module (`QueueClient::push`, fixed
//!   task ids) and consumed by apalis-redis workers with a no-op handler, concurrency 50 and 1.
//! - `engine_steps_per_s_*`: steps of no duration (a `demo_fanout` of N shards, step_ms 0) through
//!   the whole engine (PostgreSQL claim/finish, entity lease, dispatch), with 1 and with 4 worker
//!   processes (the release `syncfleet-worker` binary) and the producer in this process. Each step
//!   writes its `demo_effects` row in its finish's transaction (as a step with data does: `BEGIN`,
//!   its write, the finish, `COMMIT`), except on `*_empty`: 1 process of empty steps, which write
//!   nothing (their finish and settle are one round trip). Each fleet runs the
//!   fan-out twice: the second run is measured (`engine_*`), the first one is reported as `*_cold`.
//!   A fleet's first run also pays for its PostgreSQL connections' start (about 26 for 1 process,
//!   84 for 4: sessions, catalog caches, PL/pgSQL functions compiled, statements prepared and
//!   planned), once per connection and not per step.
//! - `start_latency_*`: trigger → step start of a one-step chain on an idle fleet.
//! - `engine_w4_vs_w1`: the engine's steps/s on 4 processes ÷ on 1, within each run.
//! - `pg_floor_steps_per_s_c{8,32}`: what PostgreSQL alone needs per step, in the same run: the two
//!   transactions every step must commit (its claim and its finish, one `UPDATE` each, autocommit) on
//!   copies of `step_runs` and `chain_runs` (`LIKE … INCLUDING ALL`: the same columns, defaults and
//!   indexes, filled with the rows of a real `demo_fanout` run), from as many connections at once as
//!   the fleet runs steps (8 = one worker process of concurrency 8, 32 = four). `engine_vs_pg_floor`
//!   is the engine's empty steps/s on 1 process ÷ the floor at 8 (both commit the same two
//!   transactions per step); `engine_with_effect_vs_pg_floor` the same for steps writing their
//!   effect, and `engine_w4_vs_pg_floor` those on 4 processes ÷ the floor at 32.
//! - `start_latency_floor_*`: one PostgreSQL commit plus one Redis round trip, back to back, the
//!   least a trigger → start can cost (the trigger commits, the worker hears of it through Redis).
//! - `cpu_ms_per_step_*`: where the machine's cores go per step (`crate::cpu`, by class of
//!   process), for the engine on 1 process (empty steps and steps with an effect) and 4, on 1
//!   process running 32 steps at once, and for
//!   the floor: with both cores busy, steps/s is about 2,000 ÷ the total.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use serde_json::json;
use syncfleet_shared::{
    chain::Mode,
    ids::{RunId, StepName},
    job::JobPayload,
};
use syncfleet_store::{self as store, queue::QueueClient};
use tokio_util::sync::CancellationToken;

use crate::{
    cpu::{self, CpuSplit},
    report::Scenario,
    round::{self, Round},
};

const INTEGRATION: &str = "bench";

async fn queue_layer(jobs: usize, concurrency: usize) -> anyhow::Result<(f64, f64)> {
    let ns = format!("bench-{}", round::tag());
    let queues = QueueClient::connect("redis://127.0.0.1:6379", &ns).await?;
    let run = RunId::new();
    let payloads: Vec<(String, JobPayload)> = (0..jobs)
        .map(|i| {
            let job_id = format!("{run}:noop:{i}");
            (
                job_id.clone(),
                JobPayload::StepV1 {
                    run_id: run,
                    step_run_id: i as i64,
                    step: StepName::parse("noop").unwrap(),
                    shard: i as i32,
                    job_id,
                    trace_context: None,
                    due_at_ms: None,
                    entity: None,
                },
            )
        })
        .collect();
    let t = Instant::now();
    queues.push("q", jobs, &payloads).await?;
    let push_rate = jobs as f64 / t.elapsed().as_secs_f64();

    let done = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let config = queues.apalis_config("q").batch_size(concurrency.clamp(1, 10)).lock_tasks(false);
    let storage = RedisStorage::<JobPayload>::new(queues.connection())
        .with_config(config)
        .poll_with_interval(Duration::from_millis(5));
    async fn noop(_job: JobPayload, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    let worker = WorkerBuilder::new(format!("bench-{}", round::tag()))
        .backend(storage)
        .concurrency(concurrency)
        .data(done.clone())
        .build(noop);
    let stop = token.clone();
    let t = Instant::now();
    let handle = tokio::spawn(worker.run_until(async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    }));
    while done.load(Ordering::Relaxed) < jobs && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let consume_rate = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    queues.purge_namespace().await.ok();
    Ok((push_rate, consume_rate))
}

/// What each step of the measured fan-out does besides taking no time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Steps {
    /// Nothing: the engine's own cost, against the PostgreSQL floor.
    Empty,
    /// One `demo_effects` row, committed with the step's finish.
    WithEffect,
}

/// A round of `workers` processes of `concurrency` with the `demo` integration `bench` (steps of
/// no duration, empty or each writing its effect) and `demo_fanout`'s fan step in `shards` shards.
async fn with_fleet<T>(
    workers: usize,
    concurrency: usize,
    shards: u32,
    steps: Steps,
    body: impl AsyncFnOnce(&Round) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let config = format!("[chains.demo_fanout.steps.fan]\nshards = {shards}\n");
    let setup = round::Setup { reconcile_interval_ms: 50, ..round::Setup::new(None, workers, concurrency, config) };
    round::with_round(setup, async |r| {
        let effects = steps == Steps::WithEffect;
        let settings = json!({ "step_ms": 0, "fail": { "right": "never" }, "effects": effects });
        store::upsert_integration(&r.ops().pool, INTEGRATION, "demo", &settings).await?;
        body(r).await
    })
    .await
}

/// One `demo_fanout` run measured.
struct FanRun {
    /// Shards per second, first start to last finish.
    steps_per_s: f64,
    /// CPU milliseconds per step of each class of process, from the trigger to the run's end.
    cpu: CpuSplit,
    /// Milliseconds from the `plan` step's end to the first shard's start: the promotion of every
    /// shard and the dispatch of the first ones.
    fanout_gap_ms: f64,
}

/// One engine round: the fleet's first run (every PostgreSQL connection new: sessions started,
/// functions compiled, statements prepared and planned) and the next one, measured.
struct Engine {
    cold: FanRun,
    warm: FanRun,
}

/// Two `demo_fanout` runs of `shards` shards of no duration, one after the other, on `workers`
/// processes of `concurrency`.
async fn engine(workers: usize, concurrency: usize, shards: u32, steps: Steps) -> anyhow::Result<Engine> {
    with_fleet(workers, concurrency, shards, steps, async |r| {
        let cold = fan_run(r, shards).await?;
        let warm = fan_run(r, shards).await?;
        Ok(Engine { cold, warm })
    })
    .await
}

async fn fan_run(r: &Round, shards: u32) -> anyhow::Result<FanRun> {
    let cpu = cpu::Sampler::start();
    let run = r.trigger("demo_fanout", INTEGRATION, Mode::Full, &[]).await?;
    r.completed(run, Duration::from_secs(600)).await?;
    let cpu = per_step_ms(cpu.stop(), shards);
    let (secs, fanout_gap_ms): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM (max(f.finished_at) - min(f.started_at)))::float8,
                extract(epoch FROM (min(f.started_at) - max(p.finished_at)))::float8 * 1000
           FROM step_runs f, step_runs p
          WHERE f.run_id = $1 AND f.step = 'fan' AND p.run_id = $1 AND p.step = 'plan'",
    )
    .bind(run.0)
    .fetch_one(&r.ops().pool)
    .await?;
    Ok(FanRun { steps_per_s: shards as f64 / secs, cpu, fanout_gap_ms })
}

/// CPU seconds by class → milliseconds per step.
fn per_step_ms(split: CpuSplit, steps: u32) -> CpuSplit {
    split.into_iter().map(|(class, secs)| (class, secs * 1000.0 / steps as f64)).collect()
}

/// Trigger → step start of `demo_ping` on an idle fleet of one process, in ms.
struct Latency {
    p50: f64,
    p99: f64,
    /// The run's creation to its step's dispatch, p50: 0 when the statement that creates the run
    /// also marks its step dispatched (a trigger's usual path, `dispatch::create_and_push`); else
    /// the trigger's statement, its commit and the dispatch transaction's start.
    dispatch_p50: f64,
    /// The step's dispatch to its start, p50: on the usual path the creating statement's run and
    /// commit, the depth read, the push with its wake-up, the fetch, the lease and the claim.
    pickup_p50: f64,
    /// p50 of the [`WARMUP_TRIGGERS`] first triggers, on a fleet just started.
    cold_p50: f64,
}

/// Triggers a fleet just started runs before [`latency`] measures, as a running fleet has:
/// PostgreSQL plans a statement anew at each of its first 5 runs on a connection (a generic plan is
/// only considered after those), and the producer's pool hands its connections out in turn, so the
/// trigger's statement (about 0.45 ms to plan) is planned on about 40 of the first 100 triggers.
const WARMUP_TRIGGERS: usize = 60;

/// How long [`latency`] leaves the fleet alone after each trigger before it reads the run.
const PICKUP_QUIET: Duration = Duration::from_millis(20);

async fn latency(samples: usize) -> anyhow::Result<Latency> {
    let (cold, ms) = with_fleet(1, 8, 1, Steps::WithEffect, async |r| {
        let mut ms = Vec::new();
        let mut cold = Vec::new();
        for i in 0..WARMUP_TRIGGERS + samples {
            if i == WARMUP_TRIGGERS {
                cold = std::mem::take(&mut ms);
            }
            let run = r.trigger("demo_ping", INTEGRATION, Mode::Full, &[]).await?;
            // The run's view (two queries) is read only once the step has had time to start: read
            // at once, it ran beside the pickup it measures, on the same two cores.
            tokio::time::sleep(PICKUP_QUIET).await;
            r.completed(run, Duration::from_secs(30)).await?;
            let v: (f64, f64) = sqlx::query_as(
                "SELECT extract(epoch FROM (s.started_at - r.created_at))::float8 * 1000,
                        extract(epoch FROM (s.dispatched_at - r.created_at))::float8 * 1000
                   FROM step_runs s JOIN chain_runs r ON r.id = s.run_id WHERE r.id = $1",
            )
            .bind(run.0)
            .fetch_one(&r.ops().pool)
            .await?;
            ms.push(v);
        }
        Ok((cold, ms))
    })
    .await?;
    let (cold_p50, _) = percentiles(cold.iter().map(|m| m.0).collect());
    let (p50, p99) = percentiles(ms.iter().map(|m| m.0).collect());
    let (dispatch_p50, _) = percentiles(ms.iter().map(|m| m.1).collect());
    let (pickup_p50, _) = percentiles(ms.iter().map(|m| m.0 - m.1).collect());
    Ok(Latency { p50, p99, dispatch_p50, pickup_p50, cold_p50 })
}

/// Steps the floor runs at each concurrency.
const FLOOR_STEPS: u32 = 2_000;

/// What PostgreSQL alone needs per step, on a scratch database of the engine's schema.
struct Floor {
    /// Steps/s at 8 connections and at 32.
    c8: f64,
    c32: f64,
    /// CPU ms per step by class of process, at 8 connections.
    cpu_c8: CpuSplit,
    /// A commit plus a Redis round trip, p50 and p99 ms.
    p50: f64,
    p99: f64,
}

async fn pg_floor(samples: usize) -> anyhow::Result<Floor> {
    let config = format!("[chains.demo_fanout.steps.fan]\nshards = {FLOOR_STEPS}\n");
    round::with_scratch(&round::PgServer::Tcp, &config, async |scratch| {
        let ops = &scratch.ops;
        store::upsert_integration(&ops.pool, INTEGRATION, "demo", &json!({ "step_ms": 0 })).await?;
        // Real rows of the shape the engine claims and finishes: a demo_fanout run, never executed
        // (no worker runs in this scratch).
        let run = ops
            .trigger(syncfleet_producer::ops::Trigger {
                chain: "demo_fanout".into(),
                integration: INTEGRATION.into(),
                mode: Mode::Full,
                kind: store::runs::TriggerKind::Manual,
                triggered_by: "bench".into(),
                tick_key: None,
                force_sweep: false,
                step: None,
                step_modes: Default::default(),
            })
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE floor_runs (LIKE chain_runs INCLUDING ALL);
             CREATE TABLE floor_steps (LIKE step_runs INCLUDING ALL);
             CREATE TABLE floor_commits (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now());",
        )
        .execute(&ops.pool)
        .await?;
        let mut floors = Vec::new();
        for concurrency in [8usize, 32] {
            floors.push(floor_round(scratch, run, concurrency).await?);
        }
        // The start latency's floor: a commit, then a Redis round trip.
        let mut ms = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            sqlx::query("INSERT INTO floor_commits DEFAULT VALUES").execute(&ops.pool).await?;
            ops.queues.ping().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (p50, p99) = percentiles(ms);
        let [(c8, cpu_c8), (c32, _)] = <[_; 2]>::try_from(floors).expect("two floor rounds");
        Ok(Floor { c8, c32, cpu_c8, p50, p99 })
    })
    .await
}

/// One floor measurement: `run`'s rows copied into the floor tables with every `fan` shard ready,
/// then each claimed and finished, `concurrency` connections at once. Steps per second.
async fn floor_round(scratch: &round::Scratch, run: RunId, concurrency: usize) -> anyhow::Result<(f64, CpuSplit)> {
    let ops = &scratch.ops;
    sqlx::raw_sql("TRUNCATE floor_runs, floor_steps").execute(&ops.pool).await?;
    for sql in [
        "INSERT INTO floor_runs SELECT * FROM chain_runs WHERE id = $1",
        "INSERT INTO floor_steps SELECT * FROM step_runs WHERE run_id = $1 AND step = 'fan'",
    ] {
        sqlx::query(sql).bind(run.0).execute(&ops.pool).await?;
    }
    sqlx::raw_sql("UPDATE floor_steps SET status = 'ready' WHERE status <> 'ready'").execute(&ops.pool).await?;
    // VACUUM cannot run inside the implicit transaction of a multi-statement string.
    sqlx::raw_sql("VACUUM ANALYZE floor_steps").execute(&ops.pool).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM floor_steps ORDER BY id").fetch_all(&ops.pool).await?;
    anyhow::ensure!(ids.len() == FLOOR_STEPS as usize, "the floor found {} of {FLOOR_STEPS} shards", ids.len());
    // The engine's pool options: no ping for a connection used a moment ago.
    let pool = store::pool_options()
        .max_connections(concurrency as u32)
        .min_connections(concurrency as u32)
        .connect(ops.config.database.url.expose())
        .await?;
    let (ids, next) = (Arc::new(ids), Arc::new(AtomicUsize::new(0)));
    let cpu = cpu::Sampler::start();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, ids, next) = (pool.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(&id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                // The claim: the step row from ready to running under this worker.
                sqlx::query(
                    "UPDATE floor_steps SET status = 'running', attempts = attempts + 1, worker = 'floor',
                            started_at = now(), heartbeat_at = now()
                      WHERE id = $1 AND status = 'ready'",
                )
                .bind(id)
                .execute(&pool)
                .await?;
                // The finish: running to succeeded.
                sqlx::query(
                    "UPDATE floor_steps SET status = 'succeeded', finished_at = now(), duration_ms = 0
                      WHERE id = $1 AND status = 'running' AND worker = 'floor'",
                )
                .bind(id)
                .execute(&pool)
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = FLOOR_STEPS as f64 / t.elapsed().as_secs_f64();
    let cpu = per_step_ms(cpu.stop(), FLOOR_STEPS);
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM floor_steps WHERE status = 'succeeded'").fetch_one(&pool).await?;
    anyhow::ensure!(done == FLOOR_STEPS as i64, "the floor finished {done} of {FLOOR_STEPS} steps");
    pool.close().await;
    Ok((rate, cpu))
}

/// (p50, p99) of `ms`.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// What a `queue` run measures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The engine on 1 and 4 workers, with the PostgreSQL floor.
    Engine,
    /// The start latency, with its floor.
    Latency,
    All,
}

pub async fn run(part: Part, runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("queue", runs);
    let (engine_part, latency_part) = (part != Part::Latency, part != Part::Engine);
    for round in 0..runs {
        if part == Part::All {
            // apalis-redis 1.0 stops fetching with ~8,000 due tasks in a queue, so each measurement
            // stays below that (the engine's dispatch cap exists for the same reason).
            let (push50, consume50) = queue_layer(6_000, 50).await?;
            let (_, consume1) = queue_layer(3_000, 1).await?;
            eprintln!("queue round {}: {consume50:.0} jobs/s", round + 1);
            s.figure("queue_jobs_per_s", consume50);
            s.figure("queue_jobs_per_s_concurrency_1", consume1);
            s.figure("queue_push_per_s", push50);
        }
        let engines = if engine_part {
            Some((
                engine(1, 8, 2_000, Steps::Empty).await?,
                engine(1, 8, 2_000, Steps::WithEffect).await?,
                engine(4, 8, 2_000, Steps::WithEffect).await?,
                engine(1, 32, 2_000, Steps::WithEffect).await?,
            ))
        } else {
            None
        };
        let latency = if latency_part { Some(latency(100).await?) } else { None };
        let floor = pg_floor(if latency_part { 100 } else { 1 }).await?;
        if let Some((w1_empty, w1, w4, w1c32)) = engines {
            let (e1, e4, e1c32) = (w1.warm.steps_per_s, w4.warm.steps_per_s, w1c32.warm.steps_per_s);
            let (cpu1, cpu4, cpu1c32) = (w1.warm.cpu, w4.warm.cpu, w1c32.warm.cpu);
            let (e1_empty, cpu1_empty) = (w1_empty.warm.steps_per_s, w1_empty.warm.cpu);
            eprintln!(
                "queue round {}: engine {e1_empty:.0} empty steps/s on 1 worker; steps writing an effect {e1:.0} \
                 on 1 worker, {e4:.0} on 4 (PostgreSQL floor {:.0} at 8, {:.0} at 32); CPU ms per step: empty on 1 \
                 worker {cpu1_empty:.2?}, with an effect on 1 {cpu1:.2?}, on 4 {cpu4:.2?}, floor at 8 {:.2?}",
                round + 1,
                floor.c8,
                floor.c32,
                floor.cpu_c8
            );
            s.figure("engine_steps_per_s_1_worker_empty", e1_empty);
            s.figure("engine_vs_pg_floor", e1_empty / floor.c8);
            s.figure("engine_with_effect_vs_pg_floor", e1 / floor.c8);
            s.figure("engine_steps_per_s_1_worker", e1);
            s.figure("engine_steps_per_s_4_workers", e4);
            s.figure("engine_w4_vs_w1", e4 / e1);
            s.figure("engine_steps_per_s_1_worker_concurrency_32", e1c32);
            s.figure("engine_w1c32_vs_w1", e1c32 / e1);
            s.figure("pg_floor_steps_per_s_c8", floor.c8);
            s.figure("pg_floor_steps_per_s_c32", floor.c32);
            s.figure("engine_fanout_gap_ms_1_worker", w1.warm.fanout_gap_ms);
            s.figure("engine_fanout_gap_ms_1_worker_cold", w1.cold.fanout_gap_ms);
            s.figure("engine_steps_per_s_1_worker_cold", w1.cold.steps_per_s);
            s.figure("engine_steps_per_s_4_workers_cold", w4.cold.steps_per_s);
            s.figure("engine_w4_vs_w1_cold", w4.cold.steps_per_s / w1.cold.steps_per_s);
            for (label, run) in [("engine_w1_cold", &w1.cold), ("engine_w4_cold", &w4.cold)] {
                s.figure(format!("cpu_ms_per_step_{label}_total"), run.cpu.values().sum());
                s.figure(format!("cpu_ms_per_step_{label}_postgres"), run.cpu.get("postgres").copied().unwrap_or(0.0));
            }
            s.figure("engine_w4_vs_pg_floor", e4 / floor.c32);
            for (label, split) in [
                ("engine_w1_empty", &cpu1_empty),
                ("engine_w1", &cpu1),
                ("engine_w4", &cpu4),
                ("engine_w1c32", &cpu1c32),
                ("pg_floor_c8", &floor.cpu_c8),
            ] {
                for (class, ms) in split {
                    s.figure(format!("cpu_ms_per_step_{label}_{class}"), *ms);
                }
                s.figure(format!("cpu_ms_per_step_{label}_total"), split.values().sum());
            }
        }
        if let Some(Latency { p50, p99, dispatch_p50, pickup_p50, cold_p50 }) = latency {
            eprintln!("queue round {}: start p50 {p50:.2} ms (floor {:.2})", round + 1, floor.p50);
            s.figure("start_latency_p50_ms", p50);
            s.figure("start_latency_p99_ms", p99);
            s.figure("start_latency_p50_ms_cold", cold_p50);
            s.figure("start_latency_to_dispatch_p50_ms", dispatch_p50);
            s.figure("start_latency_dispatch_to_start_p50_ms", pickup_p50);
            s.figure("start_latency_floor_p50_ms", floor.p50);
            s.figure("start_latency_floor_p99_ms", floor.p99);
        }
    }
    s.ratio_from_median("engine_w4_vs_w1");
    s.ratio_from_median("engine_vs_pg_floor");
    s.ratio_from_median("engine_with_effect_vs_pg_floor");
    s.ratio_from_median("engine_w4_vs_pg_floor");
    s.goal("start_latency_p50_ms", "<= 2.0");
    s.goal("start_latency_p99_ms", "<= 10");
    s.goal("engine_vs_pg_floor", ">= 0.5");
    s.goal("engine_w4_vs_w1", ">= 1.0");
    s.note("queue_*: no-op jobs through QueueClient::push and one apalis-redis worker (6,000 at concurrency 50, 3,000 at 1)");
    s.note("engine_*: a demo_fanout of 2,000 shards of no duration, each writing its demo_effects row with its finish, first start to last finish, syncfleet-worker processes of concurrency 8; the fleet's second such run (its first one, every connection new, is *_cold)");
    s.note("engine_steps_per_s_1_worker_empty: the same on 1 process with empty shards (\"effects\": false: the step writes nothing, its finish and the run's settle are one round trip)");
    s.note("*_cold: the fleet's first run, which also starts and warms every PostgreSQL connection of the processes (a cost per connection, not per step)");
    s.note("engine_fanout_gap_ms_1_worker: from the end of demo_fanout's plan step to the start of its first shard (promoting the 2,000 shards, then dispatching), on 1 process");
    s.note("engine_w4_vs_w1: 4 worker processes against 1, both measured in the same run; the median of the per-run ratios");
    s.note("start_latency_*: trigger to step start of demo_ping on an idle fleet of one process, 100 sequential runs after 60 unmeasured ones (start_latency_p50_ms_cold: those 60, on a fleet just started); each run is read 20 ms after its trigger, so that reading it does not compete with its pickup");
    s.note("start_latency_to_dispatch_p50_ms: the run's created_at (its trigger statement's start) to its step's dispatched_at (0 when that statement marked it dispatched, the trigger's usual path); start_latency_dispatch_to_start_p50_ms: from there to the claim's start (started_at)");
    s.note("pg_floor_*: per step, the claim and the finish as two autocommit UPDATEs on copies of step_runs (LIKE … INCLUDING ALL, rows of a real 2,000-shard demo_fanout), 8 and 32 connections at once (the step slots of 1 and 4 worker processes)");
    s.note("engine_vs_pg_floor: empty steps/s on 1 process ÷ the floor at 8; engine_with_effect_vs_pg_floor: steps writing their effect on 1 process ÷ the floor at 8; engine_w4_vs_pg_floor: those on 4 ÷ the floor at 32; each within one run");
    s.note("start_latency_floor_*: one PostgreSQL commit plus one Redis PING, back to back, 100 times");
    s.note("engine_steps_per_s_1_worker_concurrency_32, engine_w1c32_vs_w1: one process running 32 steps at once (as many as 4 processes of 8), to tell the cost of more processes from the cost of more steps at once");
    s.note("cpu_ms_per_step_{engine_w1,engine_w4,engine_w1c32,pg_floor_c8}_{class}: CPU time per step from /proc/<pid>/stat, by class of process (postgres: every PostgreSQL process; worker: the syncfleet-worker processes; redis; bench: this process, with the producer and the reconciler; other), over the engine's run from trigger to end and over the floor's round at 8 connections");
    Ok(s)
}
