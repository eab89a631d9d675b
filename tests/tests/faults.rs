//! Faults: a worker killed mid-step, Redis flushed mid-chain, SIGTERM during a step.

use std::time::{Duration, Instant};

use serde_json::json;
use syncfleet_store::views;
use syncfleet_tests::{PrivateRedis, TestEnv, signal};

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
