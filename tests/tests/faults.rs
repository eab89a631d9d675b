//! Faults: a worker killed mid-step, Redis flushed mid-chain (and what the worker logs about it),
//! SIGTERM during a step, queue registrations left behind by a deleted namespace.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use syncfleet_store::{queue::APALIS_QUEUES_LIST, views};
use syncfleet_tests::{PrivateRedis, TestEnv, signal};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn step_state(
    env: &TestEnv,
    run: syncfleet_shared::ids::RunId,
    step: &str,
) -> Option<(String, Option<String>, i32)> {
    sqlx::query_as("SELECT status, worker, attempts FROM step_runs WHERE run_id = $1 AND step = $2")
        .bind(run.0)
        .bind(step)
        .fetch_optional(&env.pool)
        .await
        .ok()
        .flatten()
}

/// Waits until `step` runs on the worker whose name starts with `worker`.
async fn wait_running_on(env: &TestEnv, run: syncfleet_shared::ids::RunId, step: &str, worker: &str) {
    env.eventually(Duration::from_secs(30), &format!("`{step}` to run on {worker}"), || async {
        let (status, on, _) = step_state(env, run, step).await?;
        (status == "running" && on?.starts_with(worker)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_step_loses_nothing_and_doubles_nothing() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 20, "slow": { "start": 3000 } })).await;
    let producer = env.spawn_producer().await;
    let victim_name = format!("victim-{}", env.id);
    let mut victim = env.spawn_worker_process(&victim_name);
    let run = env.trigger("demo_diamond", "acme").await;

    wait_running_on(&env, run, "start", &victim_name).await;
    let mut survivor = env.spawn_worker_process(&format!("survivor-{}", env.id));
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&victim, "KILL");
    victim.wait().await.ok();
    let killed_at = Instant::now();

    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let start = view.steps.iter().find(|s| s.step == "start").unwrap();
    assert_eq!(start.attempts, 2, "the killed attempt counts, the second one succeeded");
    let finished = start.finished_at.unwrap();
    let recovered_in = killed_at.elapsed();
    assert!(recovered_in < Duration::from_secs(60));
    let effects = env.effects(run).await;
    assert_eq!(effects.len(), 5);
    assert!(effects.iter().all(|(_, _, n)| *n == 1), "each step's effect applied once: {effects:?}");
    let (_, worker, _) = step_state(&env, run, "start").await.unwrap();
    assert!(worker.unwrap().starts_with("survivor"), "another worker completed it");
    // The step was done again within 30 s of the kill.
    let killed_wall = chrono::Utc::now() - chrono::Duration::from_std(recovered_in).unwrap();
    assert!((finished - killed_wall) < chrono::Duration::seconds(30), "recovered in {}", finished - killed_wall);

    survivor.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_flushed_in_the_middle_of_a_chain_the_run_still_completes() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(&redis.url(), "").await;
    env.demo_integration("acme", json!({ "step_ms": 300, "fail": { "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let w1 = env.spawn_worker("w1").await;
    let w2 = env.spawn_worker("w2").await;
    let run = env.trigger("demo_diamond", "acme").await;

    env.eventually(Duration::from_secs(30), "left and right to be under way", || async {
        let v = views::run(&env.pool, run).await.ok()?;
        v.steps.iter().any(|s| s.step == "left" && s.status != "pending").then_some(())
    })
    .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let view = env.wait(run, Duration::from_secs(90)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let effects = env.effects(run).await;
    assert_eq!(effects.len(), 5);
    assert!(effects.iter().all(|(_, _, n)| *n == 1), "{effects:?}");

    w1.stop().await;
    w2.stop().await;
    producer.stop().await;
    env.finish().await;
    drop(redis);
}

/// After a Redis flush a worker says so once: one line naming what happened and that it
/// re-registered, not a block of apalis errors per queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_flush_is_one_warning_per_worker_saying_it_re_registered() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(&redis.url(), "").await;
    env.demo_integration("acme", json!({ "step_ms": 300, "fail": { "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let name = format!("flushed-{}", env.id);
    let mut worker = env.worker_process(&name).stderr(Stdio::piped()).spawn().expect("spawn syncfleet-worker");
    let stderr = worker.stderr.take().unwrap();
    let lines = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let run = env.trigger("demo_diamond", "acme").await;
    wait_running_on(&env, run, "left", &name).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let view = env.wait(run, Duration::from_secs(90)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    // Every queue's consumer registered again (the incident is reported once they have).
    let queues = env.registry.build(&env.config).unwrap().0.queues();
    for queue in &queues {
        env.eventually(Duration::from_secs(30), &format!("`{queue}` to be registered again"), || async {
            let workers = env.ops.queues.workers(queue).await.ok()?;
            workers.iter().any(|(w, _)| w.starts_with(&name)).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&worker, "TERM");
    tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("the worker exits").unwrap();
    let lines = lines.await.unwrap();

    let said: Vec<&String> = lines.iter().filter(|l| l.contains("re-registered")).collect();
    assert_eq!(said.len(), 1, "one line says the worker re-registered: {lines:#?}");
    assert!(said[0].contains("WARN") && said[0].contains("flushed or restarted"), "{}", said[0]);
    for queue in &queues {
        assert!(said[0].contains(queue.as_str()), "the line names queue `{queue}`: {}", said[0]);
    }
    for noise in ["Cant fetch next", "Queue worker failed", "WorkerError", "Heartbeat failed", "script:"] {
        assert!(!lines.iter().any(|l| l.contains(noise)), "`{noise}` is logged: {lines:#?}");
    }
    let consumer_lines: Vec<&String> = lines.iter().filter(|l| l.contains("Queue consumer")).collect();
    assert!(consumer_lines.is_empty(), "no other line about the queue consumers: {consumer_lines:#?}");
    println!("after the flush the worker logged:\n{}", lines.join("\n"));

    producer.stop().await;
    env.finish().await;
    drop(redis);
}

/// apalis-redis's global `core:apalis:queues:list` holds this namespace's queues while they
/// exist: a worker registers exactly its own queues there and drops those that no longer exist, and
/// deleting the namespace leaves none behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_namespace_leaves_no_queue_registration_behind() {
    let env = TestEnv::new("").await;
    let ns = env.config.redis.namespace.clone();
    let queues = env.ops.queues.clone();
    let mut conn = queues.connection();
    // A queue this namespace no longer has (dropped from the config), registered long ago.
    let retired = format!("{ns}:retired:workers");
    let _: i64 = redis::cmd("ZADD").arg(APALIS_QUEUES_LIST).arg(1).arg(&retired).query_async(&mut conn).await.unwrap();
    // Another namespace's queue is none of ours.
    let other = format!("{ns}x:demo:workers");
    let _: i64 = redis::cmd("ZADD").arg(APALIS_QUEUES_LIST).arg(1).arg(&other).query_async(&mut conn).await.unwrap();

    let worker = env.spawn_worker("registrations").await;
    let mut expected: Vec<String> =
        env.registry.build(&env.config).unwrap().0.queues().iter().map(|q| format!("{ns}:{q}:workers")).collect();
    expected.sort();
    let members = env
        .eventually(Duration::from_secs(30), "the worker's queues to be registered", || async {
            let members = queues.registrations().await.ok()?;
            (members == expected).then_some(members)
        })
        .await;
    assert!(!members.contains(&retired), "the retired queue was dropped: {members:?}");
    worker.stop().await;
    env.finish().await;

    assert_eq!(queues.registrations().await.unwrap(), Vec::<String>::new(), "the deleted namespace left members");
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg(APALIS_QUEUES_LIST).arg(&other).query_async(&mut conn).await.unwrap();
    assert!(score.is_some(), "another namespace's registration is left alone");
    let _: i64 = redis::cmd("ZREM").arg(APALIS_QUEUES_LIST).arg(&other).query_async(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_step_lets_it_finish_and_the_worker_exits_zero() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 20, "slow": { "start": 2500 } })).await;
    let producer = env.spawn_producer().await;
    let name = format!("graceful-{}", env.id);
    let mut worker = env.spawn_worker_process(&name);
    let run = env.trigger("demo_diamond", "acme").await;
    wait_running_on(&env, run, "start", &name).await;
    signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("worker exits").unwrap();
    assert_eq!(status.code(), Some(0));
    let (st, w, attempts) = step_state(&env, run, "start").await.unwrap();
    assert_eq!((st.as_str(), attempts), ("succeeded", 1), "the step finished on the stopping worker");
    assert!(w.unwrap().starts_with(&name));

    // Nothing lost: a new worker finishes the chain.
    let next = env.spawn_worker("next").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed");
    assert!(env.effects(run).await.iter().all(|(_, _, n)| *n == 1));
    next.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// Processes started together on a database that does not exist yet (docker-compose, a fresh
/// cluster): those given the owner role's URL create, migrate and grant it together, none failing
/// because another one won; those given only the runtime role's URL refuse to start, saying to run
/// `syncfleet migrate`, until the owners are done, and then come up (as a restarted container does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_starting_together_on_a_fresh_database_all_come_up() {
    syncfleet_tests::test_roles(syncfleet_tests::PG_SERVER).await;
    let name = format!("sf_test_fresh_{:08x}", rand::random::<u32>());
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:5432/{name}");
    let mut runtime = syncfleet_shared::config::Config::default();
    runtime.database = syncfleet_shared::config::DatabaseConfig {
        url: syncfleet_shared::config::Secret::new(url(syncfleet_tests::RUNTIME_ROLE)),
        max_connections: 2,
        ..runtime.database
    };
    let mut owner = runtime.clone();
    owner.database.owner_url = Some(syncfleet_shared::config::Secret::new(url(syncfleet_tests::OWNER_ROLE)));
    let start = |config: syncfleet_shared::config::Config| {
        tokio::spawn(async move {
            let pool = syncfleet_store::roles::start(&config, &syncfleet_registry::builtin()).await?;
            let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&pool).await?;
            pool.close().await;
            Ok::<_, syncfleet_store::roles::SetupError>(role)
        })
    };
    let owners: Vec<_> = (0..4).map(|_| start(owner.clone())).collect();
    let runtimes: Vec<_> = (0..4).map(|_| start(runtime.clone())).collect();
    let owners = futures::future::join_all(owners).await;
    let runtimes = futures::future::join_all(runtimes).await;
    // Once the owners are done, a runtime process comes up.
    let after = start(runtime.clone()).await.unwrap();
    syncfleet_tests::drop_test_database(&runtime.database).await;

    for r in owners {
        // Each connects as the runtime role once it has migrated as the owner.
        assert_eq!(r.unwrap().expect("every owner process comes up"), syncfleet_tests::RUNTIME_ROLE);
    }
    let mut refused = 0;
    for r in runtimes {
        match r.unwrap() {
            Ok(role) => assert_eq!(role, syncfleet_tests::RUNTIME_ROLE),
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("database not migrated: run `syncfleet migrate`"), "{text}");
                refused += 1;
            }
        }
    }
    assert_eq!(after.expect("a runtime process comes up on the migrated database"), syncfleet_tests::RUNTIME_ROLE);
    eprintln!("{refused} of 4 runtime processes refused to start before the migration");
}
