//! Queue layer and engine throughput, measured side by side in each of `--runs` runs.
//!
//! - `queue_jobs_per_s`: 6,000 no-op jobs pushed through our queue module (`QueueClient::push`, fixed
//!   task ids) and consumed by apalis-redis workers with a no-op handler, concurrency 50 and 1.
//! - `engine_steps_per_s`: empty steps (a `demo_fanout` of N shards, step_ms 0) through the whole
//!   engine (PostgreSQL claim/finish, entity lease, dispatch), with 1 and with 4 worker processes
//!   (the release `syncfleet-worker` binary) and the producer in this process.
//! - `start_latency_*`: trigger → step start of a one-step chain on an idle fleet.
//! - `engine_w4_vs_w1`: the engine's steps/s on 4 processes ÷ on 1, within each run.

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
                },
            )
        })
        .collect();
    let t = Instant::now();
    queues.push("q", &payloads).await?;
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

/// A round of `workers` processes (concurrency 8) with the `demo` integration `bench` (empty steps)
/// and `demo_fanout`'s fan step in `shards` shards.
async fn with_fleet<T>(
    workers: usize,
    shards: u32,
    body: impl AsyncFnOnce(&Round) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let config = format!("[chains.demo_fanout.steps.fan]\nshards = {shards}\n");
    let setup = round::Setup { reconcile_interval_ms: 50, ..round::Setup::new(None, workers, 8, config) };
    round::with_round(setup, async |r| {
        let settings = json!({ "step_ms": 0, "fail": { "right": "never" } });
        store::upsert_integration(&r.ops().pool, INTEGRATION, "demo", &settings).await?;
        body(r).await
    })
    .await
}

/// Steps per second of a `demo_fanout` of `shards` empty shards, first start to last finish.
async fn engine(workers: usize, shards: u32) -> anyhow::Result<f64> {
    with_fleet(workers, shards, async |r| {
        let run = r.trigger("demo_fanout", INTEGRATION, Mode::Full, &[]).await?;
        r.completed(run, Duration::from_secs(600)).await?;
        let secs: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM (max(finished_at) - min(started_at)))::float8 FROM step_runs WHERE run_id = $1 AND step = 'fan'",
        )
        .bind(run.0)
        .fetch_one(&r.ops().pool)
        .await?;
        Ok(shards as f64 / secs)
    })
    .await
}

/// Trigger → step start of `demo_ping` on an idle fleet of one process: (p50, p99) in ms.
async fn latency(samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut ms = with_fleet(1, 1, async |r| {
        let mut ms = Vec::new();
        for _ in 0..samples {
            let run = r.trigger("demo_ping", INTEGRATION, Mode::Full, &[]).await?;
            r.completed(run, Duration::from_secs(30)).await?;
            let v: f64 = sqlx::query_scalar(
                "SELECT extract(epoch FROM (s.started_at - r.created_at))::float8 * 1000
                   FROM step_runs s JOIN chain_runs r ON r.id = s.run_id WHERE r.id = $1",
            )
            .bind(run.0)
            .fetch_one(&r.ops().pool)
            .await?;
            ms.push(v);
        }
        Ok(ms)
    })
    .await?;
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Ok((pct(0.5), pct(0.99)))
}

pub async fn run(runs: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new("queue", runs);
    for round in 0..runs {
        // apalis-redis 1.0 stops fetching with ~8,000 due tasks in a queue, so each measurement
        // stays below that (the engine's dispatch cap exists for the same reason).
        let (push50, consume50) = queue_layer(6_000, 50).await?;
        let (_, consume1) = queue_layer(3_000, 1).await?;
        let e1 = engine(1, 2_000).await?;
        let e4 = engine(4, 2_000).await?;
        let (p50, p99) = latency(100).await?;
        eprintln!(
            "queue round {}: {consume50:.0} jobs/s, engine {e1:.0} steps/s on 1 worker, {e4:.0} on 4, start p50 {p50:.1} ms",
            round + 1
        );
        s.figure("queue_jobs_per_s", consume50);
        s.figure("queue_jobs_per_s_concurrency_1", consume1);
        s.figure("queue_push_per_s", push50);
        s.figure("engine_steps_per_s_1_worker", e1);
        s.figure("engine_steps_per_s_4_workers", e4);
        s.figure("engine_w4_vs_w1", e4 / e1);
        s.figure("start_latency_p50_ms", p50);
        s.figure("start_latency_p99_ms", p99);
    }
    s.ratio_from_median("engine_w4_vs_w1");
    s.note("queue_*: no-op jobs through QueueClient::push and one apalis-redis worker (6,000 at concurrency 50, 3,000 at 1)");
    s.note("engine_*: a demo_fanout of 2,000 empty shards, first start to last finish, syncfleet-worker processes of concurrency 8");
    s.note("engine_w4_vs_w1: 4 worker processes against 1, both measured in the same run; the median of the per-run ratios");
    s.note("start_latency_*: trigger to step start of demo_ping on an idle fleet of one process, 100 sequential runs");
    Ok(s)
}
