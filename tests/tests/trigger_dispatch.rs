//! A trigger's path to Redis (`dispatch::create_and_push`): the statement that creates the run
//! marks its root step dispatched under the queue's dispatch lock, the job is pushed after that
//! commit and the lock let go; when another dispatcher holds the lock, when the queue is full or
//! paused, or when Redis is down, the step is left ready for dispatch and nothing is lost. A push
//! reads the queue's room and fills it in one script, writing each task as apalis-redis does.

use std::time::Duration;

use serde_json::json;
use syncfleet_shared::{
    ids::{RunId, StepName},
    job::JobPayload,
};
use syncfleet_store::queues;
use syncfleet_tests::{PrivateRedis, TestEnv};

/// The root step's (status, dispatched in the run's own transaction, dispatched at all).
async fn root(env: &TestEnv, run: RunId) -> (String, bool, bool) {
    sqlx::query_as(
        "SELECT s.status, s.dispatched_at IS NOT DISTINCT FROM r.created_at, s.dispatched_at IS NOT NULL
           FROM step_runs s JOIN chain_runs r ON r.id = s.run_id WHERE s.run_id = $1",
    )
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The queue's dispatch lock, free (taken and let go at once from a connection of the test's own).
async fn lock_is_free(env: &TestEnv, queue: &str) -> bool {
    let key = queues::dispatch_lock_id(&env.ops.queues.queue_name(queue));
    let mut tx = env.pool.begin().await.unwrap();
    let free: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(key).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    free
}

/// Each run completes, its one step run once.
async fn complete_once(env: &TestEnv, runs: &[RunId]) {
    for &run in runs {
        assert_eq!(env.wait(run, Duration::from_secs(60)).await.status, "completed");
        assert_eq!(env.effects(run).await.len(), 1, "the step ran once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_commits_its_step_dispatched_then_pushes_it_and_lets_the_lock_go() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    // No worker runs yet: the job waits in Redis.
    let run = env.trigger("demo_ping", "acme").await;
    assert_eq!(root(&env, run).await, ("ready".into(), true, true), "dispatched by the run's own transaction");
    assert_eq!(env.ops.queues.waiting("demo").await.unwrap(), 1);
    assert!(lock_is_free(&env, "demo").await, "the trigger let the dispatch lock go");
    // The pool's connections hold no lock either: a pause (which takes the lock) goes through.
    let paused = tokio::time::timeout(Duration::from_secs(5), env.ops.pause_queue("demo", "test")).await;
    assert!(paused.expect("the pause did not wait for the lock").unwrap());
    env.ops.resume_queue("demo", "test").await.unwrap();

    let worker = env.spawn_worker("w").await;
    complete_once(&env, &[run]).await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_while_another_dispatcher_holds_the_lock_commits_then_waits_its_turn() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let key = queues::dispatch_lock_id(&env.ops.queues.queue_name("demo"));
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut *holder).await.unwrap();

    let ops = env.ops.clone();
    let trigger = tokio::spawn(async move {
        ops.trigger(syncfleet_producer::ops::Trigger {
            chain: "demo_ping".into(),
            integration: "acme".into(),
            mode: syncfleet_shared::chain::Mode::Full,
            kind: syncfleet_store::runs::TriggerKind::Manual,
            triggered_by: "test".into(),
            tick_key: None,
            force_sweep: false,
            step: None,
            step_modes: Default::default(),
        })
        .await
    });
    // The run is committed, its step ready and not dispatched, while the trigger waits for the lock.
    let run: uuid::Uuid = env
        .eventually(Duration::from_secs(10), "the run to be committed", || async {
            sqlx::query_scalar("SELECT id FROM chain_runs WHERE chain = 'demo_ping'")
                .fetch_optional(&env.pool)
                .await
                .ok()?
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(root(&env, RunId(run)).await, ("ready".into(), false, false));
    assert!(!trigger.is_finished(), "the trigger waits for the dispatch lock");
    assert_eq!(env.ops.queues.waiting("demo").await.unwrap(), 0);

    sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *holder).await.unwrap();
    let returned = tokio::time::timeout(Duration::from_secs(10), trigger).await.expect("the trigger returned");
    assert_eq!(returned.unwrap().unwrap().0, run);
    assert_eq!(root(&env, RunId(run)).await, ("ready".into(), false, true), "dispatched after the lock came free");
    assert_eq!(env.ops.queues.waiting("demo").await.unwrap(), 1);
    drop(holder);
    let worker = env.spawn_worker("w").await;
    complete_once(&env, &[RunId(run)]).await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_into_a_full_queue_gives_its_step_back_to_postgres() {
    let env = TestEnv::with_producer("dispatch_cap = 1", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let first = env.trigger("demo_ping", "acme").await;
    env.demo_integration("other", json!({ "step_ms": 0 })).await;
    let second = env.trigger("demo_ping", "other").await;
    assert_eq!(root(&env, first).await, ("ready".into(), true, true));
    assert_eq!(root(&env, second).await, ("ready".into(), false, false), "no room: left ready for dispatch");
    assert_eq!(env.ops.queues.waiting("demo").await.unwrap(), 1, "the cap holds");
    assert!(lock_is_free(&env, "demo").await);

    // The producer's loop dispatches it once the first has left the queue.
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    complete_once(&env, &[first, second]).await;
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_into_a_paused_queue_leaves_its_step_in_postgres_until_the_resume() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    assert!(env.ops.pause_queue("demo", "test").await.unwrap());
    let run = env.trigger("demo_ping", "acme").await;
    assert_eq!(root(&env, run).await, ("ready".into(), false, false), "nothing reaches a paused queue");
    assert_eq!(env.ops.queues.waiting("demo").await.unwrap(), 0);
    assert!(lock_is_free(&env, "demo").await);

    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(root(&env, run).await, ("ready".into(), false, false), "still paused");
    assert!(env.ops.resume_queue("demo", "test").await.unwrap());
    complete_once(&env, &[run]).await;
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_while_redis_is_down_records_the_run_and_it_runs_once_redis_is_back() {
    let redis = PrivateRedis::start();
    let port = redis.port;
    let env = TestEnv::with_redis(&redis.url(), "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    drop(redis);

    let run = env.trigger("demo_ping", "acme").await;
    assert_eq!(root(&env, run).await, ("ready".into(), false, false), "left ready for dispatch, not lost");
    assert!(lock_is_free(&env, "demo").await);

    let mut again = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    complete_once(&env, &[run]).await;
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
    again.kill().ok();
    again.wait().ok();
}

/// A step job of a test push, under its fixed task id.
fn test_job(run: RunId, shard: i32) -> (String, JobPayload) {
    let job_id = format!("{run}:fan:{shard}");
    let payload = JobPayload::StepV1 {
        run_id: run,
        step_run_id: shard as i64,
        step: StepName::parse("fan").unwrap(),
        shard,
        job_id: job_id.clone(),
        trace_context: None,
        due_at_ms: None,
        entity: Some("acme:fan".into()),
    };
    (job_id, payload)
}

/// A task as Redis holds it: payload, metadata, and whether it is in the scheduled set (due now).
async fn task_in_redis(
    conn: &mut redis::aio::MultiplexedConnection,
    queue: &str,
    id: &str,
) -> (Option<String>, std::collections::BTreeMap<String, String>, bool) {
    let data: Option<String> = redis::cmd("HGET").arg(format!("{queue}:data")).arg(id).query_async(conn).await.unwrap();
    let meta = redis::cmd("HGETALL").arg(format!("{queue}:meta:{id}")).query_async(conn).await.unwrap();
    let at: Option<f64> =
        redis::cmd("ZSCORE").arg(format!("{queue}:scheduled")).arg(id).query_async(conn).await.unwrap();
    let due = at.is_some_and(|at| at <= chrono::Utc::now().timestamp() as f64);
    (data, meta, due)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_takes_only_what_fits_in_the_room_and_writes_each_task_as_apalis_redis_does() {
    let env = TestEnv::new("").await;
    let queues = &env.ops.queues;
    let run = RunId::new();
    let jobs: Vec<_> = (0..5).map(|shard| test_job(run, shard)).collect();

    // Room for 3 of 5: the three leading jobs are taken, the others are not in Redis.
    assert_eq!(queues.push("p", 3, &jobs).await.unwrap(), 3);
    assert_eq!(queues.waiting("p").await.unwrap(), 3);
    let states = queues.job_states("p", &jobs.iter().map(|j| j.0.clone()).collect::<Vec<_>>()).await.unwrap();
    use syncfleet_store::queue::JobState::{Missing, Pending};
    assert_eq!(states, [Pending, Pending, Pending, Missing, Missing]);
    // Room for one more: a task id Redis already holds is taken (and left as it is) and uses it.
    assert_eq!(queues.push("p", 4, &jobs[2..]).await.unwrap(), 1);
    assert_eq!(queues.waiting("p").await.unwrap(), 3);
    // A full queue takes nothing; room for the rest takes them.
    assert_eq!(queues.push("p", 3, &jobs[3..]).await.unwrap(), 0);
    assert_eq!(queues.push("p", 5, &jobs[3..]).await.unwrap(), 2);
    assert_eq!(queues.waiting("p").await.unwrap(), 5);

    // The same job through apalis-redis's own push, on another queue: Redis holds the same task.
    let (id, payload) = &jobs[0];
    let task = apalis_core::task::builder::TaskBuilder::new(serde_json::to_vec(payload).unwrap())
        .task_id(apalis_core::task::task_id::TaskId::from_string(id.clone()))
        .build();
    let mut apalis_conn = queues.connection();
    apalis_redis::queries::push_tasks(&mut apalis_conn, &queues.apalis_config("a"), &[task]).await.unwrap();
    let client = redis::Client::open(env.config.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ours = task_in_redis(&mut conn, &queues.queue_name("p"), id).await;
    let apalis = task_in_redis(&mut conn, &queues.queue_name("a"), id).await;
    assert!(ours.0.is_some() && ours.2, "ours is held and due: {ours:?}");
    assert_eq!(ours, apalis);
    env.finish().await;
}
