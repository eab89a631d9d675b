//! The chain engine against real PostgreSQL and Redis: ordering, exactly-once effects, failure
//! handling, resume, entity leases, and bounded dispatch. What a finish sets off after its commit
//! (the run's settle) is in `settles.rs`.

use std::time::Duration;

use serde_json::json;
use syncfleet_shared::job::step_job_id;
use syncfleet_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diamond_runs_every_step_once_after_its_prerequisites() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 50 })).await;
    let producer = env.spawn_producer().await;
    let w1 = env.spawn_worker("w1").await;
    let w2 = env.spawn_worker("w2").await;

    let run = env.trigger("demo_diamond", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");

    // Exactly one applied effect per step, although `right` ran twice (it fails once).
    let effects = env.effects(run).await;
    let names: Vec<(&str, i64)> = effects.iter().map(|(s, _, n)| (s.as_str(), *n)).collect();
    assert_eq!(names, vec![("join", 1), ("left", 1), ("report", 1), ("right", 1), ("start", 1)]);
    let right = view.steps.iter().find(|s| s.step == "right").unwrap();
    assert_eq!(right.attempts, 2);

    // Each step started after its prerequisites' effects were applied.
    let times: Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT step, started_at, applied_at FROM demo_effects WHERE run_id = $1")
            .bind(run.0)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let t = |step: &str| times.iter().find(|(s, _, _)| s == step).map(|(_, a, b)| (*a, *b)).unwrap();
    for (step, prereqs) in
        [("left", vec!["start"]), ("right", vec!["start"]), ("join", vec!["left", "right"]), ("report", vec!["join"])]
    {
        for p in prereqs {
            assert!(t(step).0 >= t(p).1, "{step} started before {p} finished");
        }
    }
    // The task id PostgreSQL computes is the one the Rust side documents.
    let sql_id: String = env.scalar("SELECT step_job_id($1, 'fan', 7, true, 3, 2)", run).await;
    assert_eq!(sql_id, step_job_id(run, "fan", 7, true, 3, 2));

    w1.stop().await;
    w2.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_failure_fails_the_run_and_resume_completes_it_without_repeating_steps() {
    let env = TestEnv::new("[chains.demo_diamond.steps.left]\nmax_attempts = 2\nbackoff_base_ms = 50\n").await;
    env.demo_integration("acme", json!({ "step_ms": 20, "fail": { "left": "always", "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    let run = env.trigger("demo_diamond", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed");
    let status = |v: &syncfleet_store::views::RunView, s: &str| {
        v.steps.iter().find(|x| x.step == s).map(|x| (x.status.clone(), x.attempts)).unwrap()
    };
    assert_eq!(status(&view, "start"), ("succeeded".into(), 1));
    assert_eq!(status(&view, "left"), ("failed".into(), 2));
    assert_eq!(status(&view, "right"), ("succeeded".into(), 1));
    assert_eq!(status(&view, "join").0, "skipped");
    assert_eq!(status(&view, "report").0, "skipped");
    assert!(view.error.as_deref().unwrap_or_default().contains("left"), "{:?}", view.error);

    // Fix the cause, resume: left, join and report run; start and right are not repeated.
    env.demo_integration("acme", json!({ "step_ms": 20, "fail": { "right": "never" } })).await;
    env.ops.resume(run, "test").await.unwrap();
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    assert_eq!(status(&view, "left"), ("succeeded".into(), 3));
    let effects = env.effects(run).await;
    assert!(effects.iter().all(|(_, _, n)| *n == 1), "{effects:?}");
    assert_eq!(effects.len(), 5);

    // Resuming a completed run is refused.
    let err = env.ops.resume(run, "test").await.unwrap_err().to_string();
    assert!(err.contains("is completed"), "{err}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optional_failure_ends_partial_and_downstream_still_runs() {
    let env =
        TestEnv::new("[chains.demo_diamond.steps.left]\nrequired = false\nmax_attempts = 2\nbackoff_base_ms = 50\n")
            .await;
    env.demo_integration("acme", json!({ "step_ms": 20, "fail": { "left": "always", "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    let run = env.trigger("demo_diamond", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "partial");
    let by = |s: &str| view.steps.iter().find(|x| x.step == s).unwrap().status.clone();
    assert_eq!(by("left"), "failed");
    assert_eq!(by("join"), "succeeded");
    assert_eq!(by("report"), "succeeded");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_jobs_on_one_entity_never_overlap_across_two_worker_processes() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 40 })).await;
    let producer = env.spawn_producer().await;
    let mut a = env.spawn_worker_process(&format!("lease-a-{}", env.id));
    let mut b = env.spawn_worker_process(&format!("lease-b-{}", env.id));

    let run = env.trigger("demo_contention", "acme").await;
    let view = env.wait(run, Duration::from_secs(120)).await;
    assert_eq!(view.status, "completed");

    let mut spans: Vec<(i32, String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT shard, worker, started_at, applied_at FROM demo_effects WHERE run_id = $1 ORDER BY started_at",
    )
    .bind(run.0)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(spans.len(), 20, "every shard applied exactly once");
    let mut shards: Vec<i32> = spans.iter().map(|s| s.0).collect();
    shards.sort();
    assert_eq!(shards, (0..20).collect::<Vec<_>>());
    for w in spans.windows(2) {
        assert!(w[1].2 >= w[0].3, "shard {} started before shard {} finished", w[1].0, w[0].0);
    }
    spans.dedup_by(|x, y| x.1 == y.1);
    let workers: std::collections::BTreeSet<String> = spans.iter().map(|s| s.1.clone()).collect();
    assert_eq!(workers.len(), 2, "both worker processes took part: {workers:?}");
    // Lease waits did not count as attempts.
    let attempts: i64 = env.scalar("SELECT sum(attempts) FROM step_runs WHERE run_id = $1", run).await;
    assert_eq!(attempts, 20);

    a.kill().await.ok();
    b.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_of_5000_steps_drains_through_a_bounded_queue() {
    let env = TestEnv::with_producer("dispatch_cap = 1000", "[chains.demo_fanout.steps.fan]\nshards = 5000\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let w1 = env.spawn_worker("w1").await;
    let w2 = env.spawn_worker("w2").await;

    let run = env.trigger("demo_fanout", "acme").await;
    let queues = env.ops.queues.clone();
    let max_waiting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = max_waiting.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let w = queues.waiting("demo").await.unwrap_or(0);
            seen.fetch_max(w, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let view = env.wait(run, Duration::from_secs(240)).await;
    sampler.abort();
    let max_waiting = max_waiting.load(std::sync::atomic::Ordering::Relaxed);
    // Workers and the producer all dispatch, one at a time per queue: the cap is exact.
    assert!(max_waiting <= 1000, "redis held {max_waiting} waiting jobs; cap is 1000");
    assert!(max_waiting >= 500, "the fan-out really went through the bounded queue: {max_waiting}");
    assert_eq!(view.status, "completed");
    let fan = view.steps.iter().find(|s| s.step == "fan").unwrap();
    assert_eq!((fan.shards, fan.shards_done), (5000, 5000));
    let applied: i64 =
        env.scalar("SELECT count(DISTINCT shard) FROM demo_effects WHERE run_id = $1 AND step = 'fan'", run).await;
    assert_eq!(applied, 5000);
    let total: i64 = env.scalar("SELECT count(*) FROM demo_effects WHERE run_id = $1", run).await;
    assert_eq!(total, 5002, "plan + 5000 shards + collect, none doubled");

    w1.stop().await;
    w2.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_never_holds_more_than_the_dispatch_cap() {
    // No worker runs: everything ready stays in PostgreSQL except `cap` jobs.
    let env = TestEnv::with_producer("dispatch_cap = 300", "[chains.demo_fanout.steps.fan]\nshards = 1000\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let run = env.trigger("demo_fanout", "acme").await;
    // Complete `plan` by hand through the engine, so the 1000 shards become ready.
    let worker = env.spawn_worker("w").await;
    env.eventually(Duration::from_secs(30), "plan to succeed", || async {
        let s: String = sqlx::query_scalar("SELECT status FROM step_runs WHERE run_id = $1 AND step = 'plan'")
            .bind(run.0)
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (s == "succeeded").then_some(())
    })
    .await;
    worker.stop().await;
    let producer = env.spawn_producer().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let waiting = env.ops.queues.waiting("demo").await.unwrap();
    let inflight_or_done: i64 = env
        .scalar("SELECT count(*) FROM step_runs WHERE run_id = $1 AND step = 'fan' AND status <> 'ready'", run)
        .await;
    let dispatched: i64 = env.scalar("SELECT count(*) FROM step_runs WHERE run_id = $1 AND step = 'fan' AND status = 'ready' AND dispatched_at IS NOT NULL", run).await;
    assert!(waiting <= 300, "redis holds {waiting} jobs, cap is 300");
    // Dispatched steps are waiting in Redis, or were fetched by the worker before it stopped.
    let depth = env.ops.queues.depth("demo").await.unwrap();
    assert!(dispatched <= 300 + inflight_or_done + depth.inflight, "dispatched {dispatched}, {depth:?}");
    assert!(waiting >= 250, "the queue is kept full: {waiting}");
    producer.stop().await;
    env.ops.cancel(run, "test").await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_scheduling_further_steps() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 20, "slow": { "start": 800 } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let run = env.trigger("demo_diamond", "acme").await;
    env.eventually(Duration::from_secs(20), "start to run", || async {
        let v = syncfleet_store::views::run(&env.pool, run).await.ok()?;
        (v.steps[0].status == "running").then_some(())
    })
    .await;
    env.ops.cancel(run, "test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = env.wait(run, Duration::from_secs(5)).await;
    assert_eq!(view.status, "cancelled");
    let by = |s: &str| view.steps.iter().find(|x| x.step == s).unwrap().status.clone();
    assert_eq!(by("start"), "succeeded", "the running step finished");
    assert_eq!(by("left"), "cancelled");
    assert_eq!(by("join"), "cancelled");
    let effects = env.effects(run).await;
    assert_eq!(effects.len(), 1, "nothing after the cancel ran: {effects:?}");
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_while_another_run_is_active_names_that_run() {
    let env = TestEnv::new("[chains.demo_ping.steps.ping]\nmax_attempts = 1\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0, "fail": { "ping": "always" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let failed = env.trigger("demo_ping", "acme").await;
    assert_eq!(env.wait(failed, Duration::from_secs(30)).await.status, "failed");

    // A second run is active (its only step is slow); resuming the first must say which run blocks it.
    env.demo_integration("acme", json!({ "slow": { "ping": 3000 } })).await;
    let active = env.trigger("demo_ping", "acme").await;
    let err = env.ops.resume(failed, "test").await.unwrap_err();
    match &err {
        syncfleet_store::StoreError::ActiveRun { chain, integration, run_id } => {
            assert_eq!((chain.as_str(), integration.as_str()), ("demo_ping", "acme"));
            assert_eq!(run_id, &active.to_string());
        }
        other => panic!("expected ActiveRun, got {other:?}"),
    }
    let api = env.api(&producer, "operator").await;
    let (status, body) = api.post(&format!("/api/runs/{failed}/resume"), serde_json::Value::Null).await;
    assert_eq!(status, 409);
    assert_eq!(body["run_id"], active.to_string());

    assert_eq!(env.wait(active, Duration::from_secs(30)).await.status, "completed");
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_slower_than_its_timeout_fails_with_a_message_that_says_so() {
    let env =
        TestEnv::new("[chains.demo_ping.steps.ping]\nmax_attempts = 2\nbackoff_base_ms = 50\ntimeout_secs = 1\n").await;
    env.demo_integration("acme", json!({ "slow": { "ping": 5000 } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let run = env.trigger("demo_ping", "acme").await;
    let view = env.wait(run, Duration::from_secs(30)).await;
    assert_eq!(view.status, "failed");
    let ping = &view.steps[0];
    assert_eq!((ping.status.as_str(), ping.attempts), ("failed", 2));
    assert_eq!(ping.error.as_deref(), Some("timed out after 1s"));
    assert!(env.effects(run).await.is_empty(), "a timed-out attempt leaves nothing behind");
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_step_within_seconds_and_frees_its_worker() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 10, "slow": { "ping": 120_000 } })).await;
    env.demo_integration("other", json!({ "step_ms": 10 })).await;
    let producer = env.spawn_producer().await;
    // One step at a time: the worker can take the next step only once the cancelled one stopped.
    let name = format!("cancel-{}", env.id);
    let mut worker =
        env.worker_process(&name).env("SYNCFLEET__WORKER__CONCURRENCY", "1").spawn().expect("spawn syncfleet-worker");

    let run = env.trigger("demo_ping", "acme").await;
    env.eventually(Duration::from_secs(20), "the slow step to run", || async {
        let v = syncfleet_store::views::run(&env.pool, run).await.ok()?;
        (v.steps[0].status == "running").then_some(())
    })
    .await;
    let cancelled = std::time::Instant::now();
    env.ops.cancel(run, "test").await.unwrap();
    let step = env
        .eventually(Duration::from_secs(15), "the running step to stop", || async {
            let v = syncfleet_store::views::run(&env.pool, run).await.ok()?;
            (v.steps[0].status != "running").then(|| v.steps[0].clone())
        })
        .await;
    let stopped_after = cancelled.elapsed();
    assert_eq!(step.status, "cancelled", "{step:#?}");
    assert_eq!(step.attempts, 1, "the cancelled attempt is not retried");
    assert!(stopped_after < Duration::from_secs(5), "the step stopped {stopped_after:?} after the cancel");
    assert!(env.effects(run).await.is_empty(), "the cancelled attempt wrote nothing");
    let view = env.wait(run, Duration::from_secs(5)).await;
    assert_eq!(view.status, "cancelled");
    let (lost, budget): (i32, i32) =
        sqlx::query_as("SELECT lost_attempts, max_attempts FROM step_runs WHERE run_id = $1")
            .bind(run.0)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(lost, 0, "a cancel is not an infrastructure loss");
    assert!(budget >= 1);

    // The worker is free again: the next step starts on it at once.
    let next = env.trigger("demo_ping", "other").await;
    let done = env.wait(next, Duration::from_secs(10)).await;
    assert_eq!(done.status, "completed", "{done:#?}");
    assert!(
        cancelled.elapsed() < Duration::from_secs(10),
        "the worker took {:?} to run the next step",
        cancelled.elapsed()
    );
    let ran_on: String = env.scalar("SELECT worker FROM step_runs WHERE run_id = $1", next).await;
    assert!(ran_on.starts_with(&name), "{ran_on}");

    worker.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_worker_starts_a_pushed_step_at_once_not_at_its_next_poll() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    // A poll every 10 s: only the wake-up on push can start the steps within the bound below.
    let mut worker = env
        .worker_process(&format!("wake-{}", env.id))
        .env("SYNCFLEET__WORKER__POLL_INTERVAL_MS", "10000")
        .spawn()
        .expect("spawn syncfleet-worker");
    // The first run also waits for the worker to subscribe.
    let first = env.trigger("demo_ping", "acme").await;
    assert_eq!(env.wait(first, Duration::from_secs(30)).await.status, "completed");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let run = env.trigger("demo_ping", "acme").await;
        assert_eq!(env.wait(run, Duration::from_secs(30)).await.status, "completed");
        let ms: f64 = env
            .scalar(
                "SELECT extract(epoch FROM (s.started_at - r.created_at))::float8 * 1000
                   FROM step_runs s JOIN chain_runs r ON r.id = s.run_id WHERE r.id = $1",
                run,
            )
            .await;
        assert!(ms < 2_000.0, "trigger to start took {ms:.0} ms with a 10 s poll");
    }
    // A downstream step made ready by a finish is pushed and woken the same way.
    let run = env.trigger("demo_diamond", "acme").await;
    assert_eq!(env.wait(run, Duration::from_secs(30)).await.status, "completed");
    let gap: f64 = env
        .scalar(
            "SELECT extract(epoch FROM (j.started_at - greatest(l.finished_at, r.finished_at)))::float8 * 1000
               FROM step_runs j, step_runs l, step_runs r
              WHERE j.run_id = $1 AND l.run_id = $1 AND r.run_id = $1
                AND j.step = 'join' AND l.step = 'left' AND r.step = 'right'",
            run,
        )
        .await;
    assert!(gap < 2_000.0, "join started {gap:.0} ms after its prerequisites with a 10 s poll");

    worker.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

/// Claims made together (`runs::claim_in_running_runs`, one statement for several, as a worker makes
/// the claims waiting at once in runs it saw running): each delivery under its own fence, a
/// delivery named twice claimed once, and a step whose run is not running left to the full claim,
/// which starts a queued run and refuses a cancelled one's step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_made_together_keep_each_fence_and_leave_other_runs_to_the_full_claim() {
    use syncfleet_store::runs::{self, Claim, Success, ToClaim};
    const WORKER: &str = "together";
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 4\n").await;
    for name in ["acme", "beta", "gamma"] {
        env.demo_integration(name, json!({ "step_ms": 0 })).await;
    }
    // No worker runs: this test claims the steps itself.
    let ready = async |run: syncfleet_shared::ids::RunId, step: &str| -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT id, job_id FROM step_runs WHERE run_id = $1 AND step = $2 AND status = 'ready' ORDER BY shard",
        )
        .bind(run.0)
        .bind(step)
        .fetch_all(&env.pool)
        .await
        .unwrap()
    };
    let run = env.trigger("demo_fanout", "acme").await;
    let plan = ready(run, "plan").await;
    assert!(matches!(runs::claim(&env.pool, plan[0].0, &plan[0].1, WORKER).await.unwrap(), Claim::Claimed(_)));
    let success = Success { step_run_id: plan[0].0, job_id: plan[0].1.clone(), result: Default::default() };
    runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some(WORKER), &[success]).await.unwrap();
    let fan = ready(run, "fan").await;
    assert_eq!(fan.len(), 4, "plan's settle made the four shards ready");
    let queued = env.trigger("demo_fanout", "beta").await;
    let queued_plan = ready(queued, "plan").await;
    let cancelled = env.trigger("demo_fanout", "gamma").await;
    let cancelled_plan = ready(cancelled, "plan").await;
    env.ops.cancel(cancelled, "test").await.unwrap();

    let to = |(id, job): &(i64, String)| ToClaim { step_run_id: *id, job_id: job.clone() };
    let batch = [
        to(&fan[0]),
        to(&(fan[1].0, format!("{}:a9", fan[1].1))),
        to(&fan[2]),
        to(&fan[2]),
        to(&queued_plan[0]),
        to(&cancelled_plan[0]),
        to(&fan[3]),
    ];
    let answer = |c: &Claim| match c {
        Claim::Claimed(s) => format!("{} {}/{} #{} {}", s.integration.name, s.step, s.shard, s.attempt, s.run_id),
        Claim::Stale => "stale".into(),
        Claim::RunInactive => "inactive".into(),
    };
    let claims = runs::claim_in_running_runs(&env.pool, WORKER, &batch).await.unwrap();
    let answers: Vec<Option<String>> = claims.iter().map(|c| c.as_ref().map(answer)).collect();
    let want = [
        Some(format!("acme fan/0 #1 {run}")),
        Some("stale".into()),
        Some(format!("acme fan/2 #1 {run}")),
        Some("stale".into()),
        None,
        None,
        Some(format!("acme fan/3 #1 {run}")),
    ];
    assert_eq!(answers, want, "each delivery under its own fence; the same delivery twice claimed once");
    // The runs not running are left to the full claim, which wrote nothing yet.
    for other in [queued, cancelled] {
        let plan: String = env.scalar("SELECT status FROM step_runs WHERE run_id = $1 AND step = 'plan'", other).await;
        assert_eq!(plan, if other == queued { "ready" } else { "cancelled" });
    }
    let full = runs::claim(&env.pool, queued_plan[0].0, &queued_plan[0].1, WORKER).await.unwrap();
    assert_eq!(answer(&full), format!("beta plan/0 #1 {queued}"), "the full claim starts the queued run");
    let full = runs::claim(&env.pool, cancelled_plan[0].0, &cancelled_plan[0].1, WORKER).await.unwrap();
    assert_eq!(answer(&full), "stale", "the cancelled run's step is not claimed");
    let rows: Vec<(i32, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT shard, status, attempts, worker FROM step_runs WHERE run_id = $1 AND step = 'fan' ORDER BY shard",
    )
    .bind(run.0)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let running = |shard| (shard, "running".to_owned(), 1, Some(WORKER.to_owned()));
    assert_eq!(rows, vec![running(0), (1, "ready".into(), 0, None), running(2), running(3)]);
    assert_eq!(env.scalar::<String>("SELECT status FROM chain_runs WHERE id = $1", queued).await, "running");
    env.finish().await;
}
