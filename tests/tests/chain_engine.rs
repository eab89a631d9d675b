//! The chain engine against real PostgreSQL and Redis: ordering, exactly-once effects, failure
//! handling, resume, entity leases, and bounded dispatch.

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

/// Finishes a step as a worker that dies right after its finish commits would: claimed, the step
/// row committed `succeeded`, and no settle after it.
async fn finish_without_settle(env: &TestEnv, run: syncfleet_shared::ids::RunId, step: &str) {
    use syncfleet_store::runs::{self, Claim, Fence, Outcome};
    let (id, job): (i64, String) =
        sqlx::query_as("SELECT id, job_id FROM step_runs WHERE run_id = $1 AND step = $2 AND status = 'ready'")
            .bind(run.0)
            .bind(step)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(matches!(runs::claim(&env.pool, id, &job, "gone").await.unwrap(), Claim::Claimed(_)));
    let mut tx = env.pool.begin().await.unwrap();
    let fence = Fence { step_run_id: id, job_id: &job, worker: Some("gone") };
    let finished =
        runs::finish_step_in(&mut tx, &fence, &Outcome::Succeeded(Default::default())).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(finished.settle, Some(run), "the finish names its run to settle");
    assert!(finished.ready.is_empty(), "a finish writes its own row only");
}

/// Successes recorded together (`runs::finish_successes`, one call for several): each under its own
/// fence, with its own counts; the run settled once its step is done, what the settle made ready and
/// the run's end given with the first success of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn successes_recorded_together_keep_each_fence_and_settle_their_run_once_done() {
    use syncfleet_shared::phase::PhaseResult;
    use syncfleet_store::runs::{self, Claim, Success};
    const WORKER: &str = "together";
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 4\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    // No worker runs: this test claims and finishes the steps itself.
    let run = env.trigger("demo_fanout", "acme").await;
    let ready = async |step: &str| -> Vec<(i64, String)> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, job_id FROM step_runs WHERE run_id = $1 AND step = $2 AND status = 'ready' ORDER BY shard",
        )
        .bind(run.0)
        .bind(step)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        for (id, job) in &rows {
            assert!(matches!(runs::claim(&env.pool, *id, job, WORKER).await.unwrap(), Claim::Claimed(_)));
        }
        rows
    };
    let success = |(id, job): &(i64, String), fetched: i64| Success {
        step_run_id: *id,
        job_id: job.clone(),
        result: PhaseResult { fetched, ..Default::default() },
    };
    let ids = |finished: &Option<syncfleet_store::runs::Finished>| -> Vec<i64> {
        finished.as_ref().map(|f| f.ready.iter().map(|r| r.id).collect()).unwrap_or_default()
    };

    let plan = ready("plan").await;
    let answers = runs::finish_successes(&env.pool, Some(WORKER), &[success(&plan[0], 0)]).await.unwrap();
    assert_eq!(ids(&answers[0]).len(), 4, "plan's settle made the four shards ready");

    // Three shards and one delivery under a spent job id, in one call: the stale one writes nothing;
    // the fourth shard still runs, so nothing settles.
    let fan = ready("fan").await;
    let stale = (fan[3].0, format!("{}:a9", fan[3].1));
    let batch = [success(&fan[0], 10), success(&fan[1], 11), success(&stale, 99), success(&fan[2], 12)];
    let answers = runs::finish_successes(&env.pool, Some(WORKER), &batch).await.unwrap();
    let recorded: Vec<bool> = answers.iter().map(Option::is_some).collect();
    assert_eq!(recorded, [true, true, false, true], "each success under its own fence");
    assert!(answers.iter().flatten().all(|f| f.ready.is_empty() && f.run_ended.is_none()), "{answers:?}");
    let rows: Vec<(i32, String, i64)> = sqlx::query_as(
        "SELECT shard, status, fetched FROM step_runs WHERE run_id = $1 AND step = 'fan' ORDER BY shard",
    )
    .bind(run.0)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let want: Vec<(i32, String, i64)> = vec![
        (0, "succeeded".into(), 10),
        (1, "succeeded".into(), 11),
        (2, "succeeded".into(), 12),
        (3, "running".into(), 0),
    ];
    assert_eq!(rows, want);

    // The last shard, under its own job id, and another worker's claim of it refused: its success
    // settles the run, and `collect` is ready.
    let another = runs::finish_successes(&env.pool, Some("another"), &[success(&fan[3], 13)]).await.unwrap();
    assert!(another[0].is_none(), "another worker's success of the shard is refused");
    let answers = runs::finish_successes(&env.pool, Some(WORKER), &[success(&fan[3], 13)]).await.unwrap();
    let collect = ready("collect").await;
    assert_eq!(ids(&answers[0]), vec![collect[0].0], "the last shard's success made collect ready");

    // `collect` ends the run: its end goes with the success.
    let answers = runs::finish_successes(&env.pool, Some(WORKER), &[success(&collect[0], 0)]).await.unwrap();
    assert_eq!(answers[0].as_ref().and_then(|f| f.run_ended.clone()), Some(("demo_fanout".into(), "completed".into())));
    assert_eq!(env.scalar::<String>("SELECT status FROM chain_runs WHERE id = $1", run).await, "completed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finish_whose_worker_died_before_the_settle_is_settled_by_the_reconciler() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 3\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;

    // `plan` finished, its settle never ran: the shards it unblocks are still pending.
    let run = env.trigger("demo_fanout", "acme").await;
    finish_without_settle(&env, run, "plan").await;
    let pending: i64 = env
        .scalar("SELECT count(*) FROM step_runs WHERE run_id = $1 AND step = 'fan' AND status = 'pending'", run)
        .await;
    assert_eq!(pending, 3);

    // The producer's reconciler settles the run; a worker runs the rest, each step once.
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let effects = env.effects(run).await;
    let names: Vec<(&str, i32, i64)> = effects.iter().map(|(s, shard, n)| (s.as_str(), *shard, *n)).collect();
    assert_eq!(names, vec![("collect", 0, 1), ("fan", 0, 1), ("fan", 1, 1), ("fan", 2, 1)]);

    // The last step finished, its settle never ran: the run has nothing open and is still
    // running until the reconciler ends it, with one `run.ended` hook.
    worker.stop().await;
    let ping = env.trigger("demo_ping", "acme").await;
    finish_without_settle(&env, ping, "ping").await;
    let status: String = env.scalar("SELECT status FROM chain_runs WHERE id = $1", ping).await;
    assert_eq!(status, "running");
    let view = env.wait(ping, Duration::from_secs(30)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let hooks: i64 = env.scalar("SELECT count(*) FROM run_hooks WHERE run_id = $1 AND event = 'run.ended'", ping).await;
    assert_eq!(hooks, 1);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_settle_turn_is_taken_marked_and_given_up_in_redis() {
    let env = TestEnv::new("").await;
    let (q, run, ttl) = (&env.ops.queues, syncfleet_shared::ids::RunId::new().to_string(), Duration::from_secs(10));

    assert!(q.settle_take(&run, ttl).await.unwrap(), "nobody holds the turn: taken");
    assert!(!q.settle_take(&run, ttl).await.unwrap(), "one holder at a time");
    assert!(!q.settle_follow(&run, ttl).await.unwrap(), "a finish during the settle marks the turn");
    assert!(!q.settle_follow(&run, ttl).await.unwrap());
    assert!(q.settle_again(&run, ttl).await.unwrap(), "the marks call for one more settle");
    assert!(!q.settle_again(&run, ttl).await.unwrap(), "no finish since: the turn is given up");
    assert!(q.settle_follow(&run, ttl).await.unwrap(), "a finish after that takes the turn itself");
    assert!(!q.settle_again(&run, ttl).await.unwrap());

    // A holder that died: its turn lapses, and the next finish takes it.
    assert!(q.settle_take(&run, Duration::from_millis(50)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(q.settle_follow(&run, ttl).await.unwrap(), "the lapsed turn is taken");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finishes_under_a_settle_turn_whose_holder_died_are_settled_by_the_reconciler() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 6\n").await;
    env.demo_integration("acme", json!({ "step_ms": 20 })).await;

    // A holder of the run's settle turn that died without giving it up: every finish only marks
    // the turn and leaves its settle to the holder.
    let run = env.trigger("demo_fanout", "acme").await;
    let turn = run.to_string();
    assert!(env.ops.queues.settle_take(&turn, Duration::from_secs(600)).await.unwrap());

    let producer = env.spawn_producer().await;
    let (w1, w2) = (env.spawn_worker("w1").await, env.spawn_worker("w2").await);
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let effects = env.effects(run).await;
    let names: Vec<(&str, i32, i64)> = effects.iter().map(|(s, shard, n)| (s.as_str(), *shard, *n)).collect();
    let mut want = vec![("collect", 0, 1)];
    want.extend((0..6).map(|shard| ("fan", shard, 1)));
    want.push(("plan", 0, 1));
    assert_eq!(names, want, "every step once");
    assert!(
        env.ops.queues.settle_again(&turn, Duration::from_secs(1)).await.unwrap(),
        "the finishes marked the turn rather than settling"
    );

    w1.stop().await;
    w2.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shards_of_a_fan_out_settle_their_run_only_once_their_step_is_done() {
    const SHARDS: i64 = 150;
    let env = TestEnv::new(&format!("[chains.demo_fanout.steps.fan]\nshards = {SHARDS}\n")).await;
    // Steps that write nothing: their successes finish and settle in one round trip, several at once
    // (`step_succeed_settle`).
    env.demo_integration("acme", json!({ "step_ms": 0, "effects": false })).await;
    // The database's sessions count their PL/pgSQL calls (`pg_stat_user_functions`), a setting
    // only a superuser may make.
    let url = syncfleet_store::roles::with_user(env.config.database.url.expose(), "postgres");
    let superuser = sqlx::PgPool::connect(&url).await.unwrap();
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&superuser).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{db}\" SET track_functions = 'pl'")))
        .execute(&superuser)
        .await
        .unwrap();

    // Two worker processes (their sessions start after the setting) and no producer: a settle the
    // finishes missed would leave the run running (the reconciler's safety net would settle it).
    let mut w1 = env.spawn_worker_process(&format!("settle-a-{}", env.id));
    let mut w2 = env.spawn_worker_process(&format!("settle-b-{}", env.id));
    let run = env.trigger("demo_fanout", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let (succeeded, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), sum(attempts)::bigint FROM step_runs WHERE run_id = $1",
    )
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((succeeded, attempts), (SHARDS + 2, SHARDS + 2), "plan, every shard and collect, once each");
    for w in [&mut w1, &mut w2] {
        w.kill().await.ok();
    }

    // A session reports its calls when it ends or has been idle a while: read once every success's
    // check of its step's other rows (`step_siblings_open`, one per step) is counted.
    let calls = async |function: &str| -> i64 {
        sqlx::query_scalar("SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname = $1")
            .bind(function)
            .fetch_one(&superuser)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while calls("step_siblings_open").await < SHARDS + 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(calls("step_siblings_open").await, SHARDS + 2, "every success's check counted");
    // Each worker process records the successes waiting at once in one call (`0029`).
    let calls_of_successes = calls("step_succeed_settle").await;
    assert!(calls_of_successes < SHARDS + 2, "{calls_of_successes} calls for {} successes", SHARDS + 2);
    let settles = calls("step_settle").await;
    // `plan`'s success settles (it makes the shards ready), and so do the shards that end once no
    // other shard is open: at most as many as run at once (2 workers of 4), `collect`'s settle ends
    // the run. Before `0028` every success settled: 152 settles.
    assert!((3..=2 + 8).contains(&settles), "{settles} settles for {SHARDS} shards");
    superuser.close().await;
    env.finish().await;
}

/// What one transaction of `step_settle` on `run` did: the steps it made ready, and the
/// sequential scans of `step_runs` it made (this transaction's statistics).
async fn settle_scans(env: &TestEnv, run: syncfleet_shared::ids::RunId) -> (Vec<i64>, bool, i64) {
    let mut tx = env.pool.begin().await.unwrap();
    let (ready, needs_end): (Vec<i64>, bool) = sqlx::query_as("SELECT ready_ids, needs_end FROM step_settle($1)")
        .bind(run.0)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let due: bool = sqlx::query_scalar("SELECT run_settle_due($1)").bind(run.0).fetch_one(&mut *tx).await.unwrap();
    assert!(!due, "a settle leaves nothing due");
    let scans: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(seq_scan), 0)::bigint FROM pg_stat_xact_user_tables WHERE relname = 'step_runs'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (ready, needs_end, scans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_of_a_large_fan_out_reads_its_steps_through_the_indexes() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 2000\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;

    // A fan-out half done, on a `step_runs` that holds this run only, with fresh statistics: the
    // planner expects half the rows to be open, and the ended ones come first in the table.
    let run = env.trigger("demo_fanout", "acme").await;
    let owner = env.owner_pool().await;
    for sql in [
        "UPDATE chain_runs SET status = 'running', started_at = now() WHERE id = $1",
        "UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE run_id = $1 AND step = 'plan'",
        "UPDATE step_runs SET status = CASE WHEN shard < 1000 THEN 'succeeded' WHEN shard < 1008 THEN 'running'
                                             ELSE 'ready' END
          WHERE run_id = $1 AND step = 'fan'",
    ] {
        sqlx::query(sql).bind(run.0).execute(&owner).await.unwrap();
    }
    sqlx::raw_sql("VACUUM ANALYZE step_runs").execute(&owner).await.unwrap();

    // Nothing to promote, the run open: found by index probes, without reading the table.
    let (ready, needs_end, scans) = settle_scans(&env, run).await;
    assert!(ready.is_empty() && !needs_end, "{ready:?} {needs_end}");
    assert_eq!(scans, 0, "a settle read step_runs from its start");

    // The last shard ended: the settle promotes `collect`, still by index.
    sqlx::query("UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE run_id = $1 AND step = 'fan'")
        .bind(run.0)
        .execute(&owner)
        .await
        .unwrap();
    let collect: i64 = env.scalar("SELECT id FROM step_runs WHERE run_id = $1 AND step = 'collect'", run).await;
    let (ready, needs_end, scans) = settle_scans(&env, run).await;
    assert_eq!((ready, needs_end), (vec![collect], false));
    assert_eq!(scans, 0, "a settle read step_runs from its start");

    // `collect` ended: nothing is open, and the settle says the run must end.
    sqlx::query("UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(collect)
        .execute(&owner)
        .await
        .unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    let needs_end: bool =
        sqlx::query_scalar("SELECT needs_end FROM step_settle($1)").bind(run.0).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(needs_end, "a run with nothing open is ended");
    owner.close().await;
    env.finish().await;
}
