//! The chaos suite, the fleet's own parts failing: real worker and producer processes and private
//! Redis and PostgreSQL servers killed, flushed, crashed and restarted while chains run (an
//! upstream that misbehaves and a burst of triggers: `chaos_load.rs`). Every test ends with the
//! same checks (see `syncfleet_tests::chaos`): the database equals the sandbox, no entity was
//! written by two workers at once, no step completed twice. What each test does and its last
//! result: `tests/CHAOS.md`. Bounded by default; `CHAOS_LONG=1` (`tests/chaos-long.sh`) runs the
//! long form.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::json;
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::RunView;
use syncfleet_tests::{
    Sandbox, TestEnv,
    chaos::{
        self, Cleanup, FANOUT, Fleet, PrivatePostgres, RestartableRedis, SYNC, Scene, Serial, Setup,
        assert_effects_once, assert_fleet_invariants, demo_integrations, finish, running, size, trigger_all,
    },
    moodle,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sigkilled_at_random_during_chain_runs_lose_and_double_nothing() {
    let _serial = Serial::acquire().await;
    let (erp_runs, demo_runs, min_kills) = (size(10, 30), size(10, 30), size(10, 40));
    let sandbox = Sandbox::start().await;
    // About 1 s per pull (10 pages of 25, 60 ms each), 4 s per fan-out run.
    let setup = Setup { erps: erp_runs, page: 25, erp_extra: "", latency_ms: 60, demos: demo_runs, step_ms: 400 };
    let mut scene = Scene::start(&sandbox, setup, async |toml| TestEnv::new(&toml).await).await;
    let (env, erps, demos) = (&scene.env, scene.erps.clone(), scene.demos.clone());
    let fleet = &mut scene.fleet;

    // Runs start one after another while workers die at random moments and new ones start.
    let pending: Vec<(&str, &String)> =
        erps.iter().map(|n| (SYNC, n)).chain(demos.iter().map(|n| (FANOUT, n))).collect();
    let started = Instant::now();
    let runs = trigger_under_kills(env, fleet, pending, min_kills, Duration::from_millis(800)).await;
    let kills = min_kills;
    let views = chaos::wait_runs(env, &runs, Duration::from_secs(size(120, 600) as u64)).await;

    assert_eq!(views.len(), erp_runs + demo_runs);
    chaos::assert_all_completed(&views);
    let report = assert_fleet_invariants(env).await;
    let reaped = chaos::reaped_attempts(&env.pool).await;
    assert!(reaped >= 3, "the kills hit running steps: {reaped} attempts reaped after {kills} kills ({report:?})");
    assert_effects_once(env, &views).await;
    chaos::assert_matches_sandbox(env, &sandbox, "erp_items", &erps).await;
    eprintln!("chaos: {kills} kills, {reaped} attempts reaped, {report:?}, {:?}", started.elapsed());
    scene.finish().await;
}

const MOODLE: &str = "moodle_institutional";

/// Triggers each (chain, integration) of `pending`, one every 150 ms, while from `first_kill` on a
/// random worker is SIGKILLed (and a new one started) every 0.3–1.2 s, until `kills` kills.
async fn trigger_under_kills(
    env: &TestEnv,
    fleet: &mut Fleet,
    mut pending: Vec<(&str, &String)>,
    kills: usize,
    first_kill: Duration,
) -> Vec<RunId> {
    let (mut runs, mut done) = (vec![], 0);
    let mut next_kill = Instant::now() + first_kill;
    let started = Instant::now();
    while done < kills || !pending.is_empty() {
        if let Some((chain, name)) = pending.pop() {
            runs.push(env.trigger_with(chain, name, Mode::Full, false).await);
        }
        if Instant::now() >= next_kill && done < kills {
            fleet.kill_random().await;
            fleet.start_worker();
            done += 1;
            next_kill = Instant::now() + Duration::from_millis(rand::rng().random_range(300..1200));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(started.elapsed() < Duration::from_secs(180), "kill loop overran");
    }
    runs
}

/// `moodle_institutional` of each of `names` under kills ([`trigger_under_kills`]); waits for the runs.
async fn moodle_runs_under_kills(env: &TestEnv, fleet: &mut Fleet, names: &[String], kills: usize) -> Vec<RunView> {
    let pending = names.iter().map(|n| (MOODLE, n)).collect();
    let runs = trigger_under_kills(env, fleet, pending, kills, Duration::from_millis(600)).await;
    chaos::wait_runs(env, &runs, Duration::from_secs(size(120, 600) as u64)).await
}

/// The rows of `sql` for the integration named `name` (bound as `$1`).
async fn of_integration<T>(env: &TestEnv, name: &str, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql).bind(name).fetch_all(&env.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Each integration's active enrollments (`{course}:{user}` → section, role) and active users
/// equal the sandbox's Moodle, read through its web services.
async fn assert_institution_matches(env: &TestEnv, sandbox: &Sandbox, names: &[String]) {
    let enrollments = moodle::expected_enrollments(sandbox).await;
    let users = moodle::expected_users(sandbox).await;
    for name in names {
        let local: BTreeMap<String, (Option<String>, Option<String>)> = of_integration::<(_, _, _)>(
            env,
            name,
            "SELECT e.external_id, e.section_id, e.role FROM moodle_enrollments e
               JOIN integrations i ON i.id = e.integration_id WHERE i.name = $1 AND e.is_active",
        )
        .await
        .into_iter()
        .map(|(k, s, r)| (k, (s, r)))
        .collect();
        assert!(
            local == enrollments,
            "{name}: {} active enrollments, the sandbox has {}",
            local.len(),
            enrollments.len()
        );
        let local: BTreeSet<(String, String)> = of_integration(
            env,
            name,
            "SELECT u.external_id, u.username FROM moodle_users u
               JOIN integrations i ON i.id = u.integration_id WHERE i.name = $1 AND u.is_active",
        )
        .await
        .into_iter()
        .collect();
        assert!(local == users, "{name}: {} active users, the sandbox has {}", local.len(), users.len());
    }
}

/// The Moodle pack under the same kills: its per-program, per-course and user-batch transactions
/// commit before the step's result, so a killed attempt leaves part of its work behind for the
/// next attempt to redo. Two rounds of
/// `moodle_institutional` (enrollments in 2 shards), the second after enrolments were dropped
/// upstream: every write to the enrollments and sections falls inside an attempt of
/// `sync_enrollments` of its writer, and each integration's rows equal the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sigkilled_during_moodle_institutional_runs_leave_the_institution_exact() {
    let _serial = Serial::acquire().await;
    let (integrations, kills) = (size(4, 12), size(6, 20));
    let sandbox = Sandbox::start().await;
    let names: Vec<String> = (0..integrations).map(|i| format!("uni-{i:02}")).collect();
    // One program or course at a time and 60 ms a call: about 1 s of courses and 2 s of
    // enrollments per run, so the kills land inside the steps.
    let mut toml: String = names
        .iter()
        .map(|n| syncfleet_sandbox::moodle_integration_toml(n, &sandbox.handle.moodle_url(), "concurrency = 1"))
        .collect();
    let header = format!("[chains.{MOODLE}.steps.sync_enrollments]\n");
    let steps = ["sync_categories", "sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"];
    toml.push_str(
        &chaos::attempts_override(&[(MOODLE, &steps)], 20).replace(&header, &format!("{header}shards = 2\n")),
    );
    // The producer's start-up runs would stand in the way of the test's own.
    toml.push_str("[packs.moodle]\ndisable_sync_category_on_startup = true\nsync_on_startup = false\n");
    let env = TestEnv::new(&toml).await;
    let cleanup = Cleanup::new(&env);
    chaos::install_logs(&env.owner_pool().await, &["moodle_enrollments", "moodle_sections"]).await;
    sandbox.faults("moodle", json!({ "latency_ms": 60 })).await;
    let mut fleet = Fleet::new(&env);
    fleet.start_producer();
    for _ in 0..3 {
        fleet.start_worker();
    }

    let first = moodle_runs_under_kills(&env, &mut fleet, &names, kills).await;
    chaos::assert_all_completed(&first);
    assert_institution_matches(&env, &sandbox, &names).await;

    let dropped = sandbox.mutate("moodle", "enrolments", json!({ "delete": 10 })).await;
    let dropped: BTreeSet<String> =
        dropped["deleted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(dropped.len(), 10);
    let second = moodle_runs_under_kills(&env, &mut fleet, &names, kills).await;
    chaos::assert_all_completed(&second);
    assert_institution_matches(&env, &sandbox, &names).await;
    for name in &names {
        let inactive: BTreeSet<String> = of_integration::<(String,)>(
            &env,
            name,
            "SELECT e.external_id FROM moodle_enrollments e JOIN integrations i ON i.id = e.integration_id
              WHERE i.name = $1 AND NOT e.is_active",
        )
        .await
        .into_iter()
        .map(|(id,)| id)
        .collect();
        assert_eq!(inactive, dropped, "{name}: exactly the dropped enrolments are inactive");
    }

    let report = chaos::fleet_report(&env.pool, "sync_enrollments").await;
    report.assert_clean();
    let reaped = chaos::reaped_attempts(&env.pool).await;
    assert!(
        reaped >= 2,
        "the kills hit running steps: {reaped} attempts reaped after {} kills ({report:?})",
        2 * kills
    );
    eprintln!("chaos moodle: {} kills, {reaped} attempts reaped, {report:?}", 2 * kills);
    drop(fleet);
    finish(env, cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_flushed_then_restarted_mid_chain_loses_no_run() {
    let _serial = Serial::acquire().await;
    let (erp_n, demo_n) = (size(6, 20), size(4, 20));
    let mut redis = RestartableRedis::start();
    let sandbox = Sandbox::start().await;
    let setup = Setup { erps: erp_n, page: 25, erp_extra: "", latency_ms: 100, demos: demo_n, step_ms: 500 };
    let url = redis.url();
    let scene = Scene::start(&sandbox, setup, async |toml| TestEnv::with_redis(&url, &toml).await).await;
    let (env, erps) = (&scene.env, &scene.erps);
    let runs = scene.trigger_all().await;

    env.eventually(Duration::from_secs(30), "steps under way", || async { (running(env).await >= 3).then_some(()) })
        .await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let flushed_with: i64 = running(env).await;
    // Later in the chains (the fan-outs in their middle tier), Redis dies and comes back empty.
    env.eventually(Duration::from_secs(30), "fan-outs in their middle tier", || async {
        let fan: i64 =
            env.value("SELECT count(*) FROM step_runs WHERE step = 'fan' AND status IN ('ready', 'running')").await;
        (fan > 0).then_some(())
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.up();

    let views = chaos::wait_runs(env, &runs, Duration::from_secs(size(120, 600) as u64)).await;
    chaos::assert_all_completed(&views);
    let report = assert_fleet_invariants(env).await;
    assert_effects_once(env, &views).await;
    chaos::assert_matches_sandbox(env, &sandbox, "erp_items", erps).await;
    eprintln!("chaos: flushed with {flushed_with} steps running, {report:?}");
    scene.finish().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_step_loses_and_doubles_nothing() {
    let _serial = Serial::acquire().await;
    let (erp_n, demo_n) = (size(4, 12), size(2, 8));
    let pg = PrivatePostgres::start();
    let sandbox = Sandbox::start().await;
    let base = pg.url("").trim_end_matches('/').to_owned();
    // About 2.5 s per pull: 10 pages of 25, 200 ms each.
    let setup = Setup { erps: erp_n, page: 25, erp_extra: "", latency_ms: 200, demos: demo_n, step_ms: 500 };
    let make_env = async |toml: String| chaos::env_on(&base, syncfleet_tests::REDIS_URL, &toml).await;
    let scene = Scene::start(&sandbox, setup, make_env).await;
    let (env, erps) = (&scene.env, &scene.erps);
    // One more run whose first step sleeps through the outage: its worker is alive all along.
    env.demo_integration("demo-slow", json!({ "step_ms": 500, "slow": { "plan": 9000 } })).await;
    let mut runs = scene.trigger_all().await;
    runs.push(env.trigger_with(FANOUT, "demo-slow", Mode::Full, false).await);

    // In the middle of the pulls: some pages are written, none of the pulls is done.
    env.eventually(Duration::from_secs(30), "pulls half-way", || async {
        let (written, done): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM erp_items),
                    (SELECT count(*) FROM step_runs WHERE step = 'pull' AND status = 'succeeded')",
        )
        .fetch_one(&env.pool)
        .await
        .ok()?;
        let sleeping: i64 = env
            .value("SELECT count(*) FROM step_runs WHERE entity_key = 'demo-slow:plan' AND status = 'running'")
            .await;
        (written >= 50 && done == 0 && sleeping == 1).then_some(())
    })
    .await;
    let sleeper: Vec<(String, String)> = sqlx::query_as(
        "SELECT entity_key, job_id FROM step_runs WHERE entity_key = 'demo-slow:plan' AND status = 'running'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(sleeper.len(), 1, "the sleeping step runs");
    let in_flight = running(env).await;
    let before: chrono::DateTime<chrono::Utc> = env.value("SELECT pg_postmaster_start_time()").await;
    // Down longer than the lease TTL and `stale_after_secs` (4 s each): when it is back, the
    // reconciler finds every running step without a recent heartbeat while its worker is alive.
    pg.crash();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The sleeping step's worker lives, so it still holds the entity: nobody else may take it.
    let leases = chaos::running_leases(env, &sleeper).await;
    pg.up();
    for (entity, job, holder) in &leases {
        assert_eq!(holder.as_ref(), Some(job), "{entity}: the lease of a live worker lapsed during the outage");
    }

    let views = chaos::wait_runs(env, &runs, Duration::from_secs(size(120, 600) as u64)).await;
    chaos::assert_all_completed(&views);
    let report = assert_fleet_invariants(env).await;
    let after: chrono::DateTime<chrono::Utc> = env.value("SELECT pg_postmaster_start_time()").await;
    assert!(after > before && in_flight > 0, "PostgreSQL restarted while {in_flight} steps ran");
    assert_effects_once(env, &views).await;
    chaos::assert_matches_sandbox(env, &sandbox, "erp_items", erps).await;
    eprintln!("chaos: restarted with {in_flight} steps running, {report:?}");
    scene.finish().await;
    drop(pg);
}

/// A trigger's statement commits without waiting for the disk (its job is pushed at once) and the
/// call waits for the disk before it answers: PostgreSQL crashed right after the last answer keeps
/// every run answered, and the fleet then runs each once. The private server's WAL writer writes
/// late (10 s), so a commit nobody waited for would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashed_right_after_triggers_answered_keeps_every_run() {
    let _serial = Serial::acquire().await;
    let pg = PrivatePostgres::start();
    let env = chaos::env_on(pg.url("").trim_end_matches('/'), syncfleet_tests::REDIS_URL, "").await;
    let cleanup = Cleanup::new(&env);
    let names = demo_integrations(&env, 20, 0).await;
    // No worker runs yet: the jobs wait in Redis, and nothing but the triggers writes WAL.
    let runs = trigger_all(&env, "demo_ping", &names).await;
    pg.crash();
    pg.up();
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    // The pool's connections died with the server: read once a new one answers.
    let (kept, dispatched): (i64, i64) = env
        .eventually(Duration::from_secs(30), "PostgreSQL back", || async {
            sqlx::query_as(
                "SELECT count(DISTINCT r.id), count(s.dispatched_at)
                   FROM chain_runs r LEFT JOIN step_runs s ON s.run_id = r.id WHERE r.id = ANY($1)",
            )
            .bind(&ids)
            .fetch_one(&env.pool)
            .await
            .ok()
        })
        .await;
    assert_eq!(kept, runs.len() as i64, "every run answered survives the crash");
    assert_eq!(dispatched, runs.len() as i64, "each root step is still marked dispatched");
    let worker = env.spawn_worker("after-crash").await;
    let views = chaos::wait_runs(&env, &runs, Duration::from_secs(60)).await;
    chaos::assert_all_completed(&views);
    assert_effects_once(&env, &views).await;
    worker.stop().await;
    finish(env, cleanup).await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_every_worker_under_load_then_new_workers_lose_nothing() {
    let _serial = Serial::acquire().await;
    let (erp_n, demo_n) = (size(6, 20), size(6, 20));
    let sandbox = Sandbox::start().await;
    let setup = Setup { erps: erp_n, page: 25, erp_extra: "", latency_ms: 150, demos: demo_n, step_ms: 600 };
    let mut scene = Scene::start(&sandbox, setup, async |toml| TestEnv::new(&toml).await).await;
    let runs = scene.trigger_all().await;
    let (env, erps) = (&scene.env, &scene.erps);
    let fleet = &mut scene.fleet;
    env.eventually(Duration::from_secs(30), "the fleet under load", || async {
        (running(env).await >= 6).then_some(())
    })
    .await;

    let under_way = running(env).await;
    let exits = fleet.terminate_all(Duration::from_secs(40)).await;
    for (name, code, secs) in &exits {
        assert_eq!(*code, Some(0), "{name} drained and exited 0 ({secs:.1} s)");
    }
    // Nothing runs without workers, and nothing was left to the reconciler: every step that was
    // running at SIGTERM finished on its worker.
    assert_eq!(running(env).await, 0);
    assert_eq!(chaos::reaped_attempts(&env.pool).await, 0, "no step lost its worker");
    let open: i64 = env.value("SELECT count(*) FROM chain_runs WHERE status IN ('queued', 'running')").await;
    assert!(open > 0, "work is left for the new workers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        fleet.start_worker();
    }

    let views = chaos::wait_runs(env, &runs, Duration::from_secs(size(120, 600) as u64)).await;
    chaos::assert_all_completed(&views);
    let report = assert_fleet_invariants(env).await;
    assert_eq!(report.lost_attempts, 0, "no attempt was cut short: {report:?}");
    assert_effects_once(env, &views).await;
    chaos::assert_matches_sandbox(env, &sandbox, "erp_items", erps).await;
    eprintln!("chaos: SIGTERM with {under_way} steps running, {open} runs left open, exits {exits:?}, {report:?}");
    scene.finish().await;
}

/// The checks above can fail: fed a log with two attempts of one entity at once, a step that
/// succeeded twice, a claim the row does not count and a write outside any attempt, and a table
/// that does not hold what the sandbox serves, each check reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checks_catch_overlaps_double_completions_stray_writes_and_drift() {
    let sandbox = Sandbox::start().await;
    let (toml, erps) = chaos::erp_integrations(&sandbox, 1, 100, "");
    let env = TestEnv::new(&toml).await;
    let cleanup = Cleanup::new(&env);
    chaos::install_logs(&env.owner_pool().await, &["erp_items"]).await;
    let run = env.trigger_with(SYNC, &erps[0], Mode::Full, false).await;
    let step: i64 = env.scalar("SELECT id FROM step_runs WHERE run_id = $1", run).await;
    let clean = chaos::fleet_report(&env.pool, "pull").await;
    assert!(clean.overlaps.is_empty() && clean.stray_writes.is_empty(), "{clean:?}");
    sqlx::query(
        "INSERT INTO chaos_step_log (step_run_id, run_id, entity_key, worker, attempts, old_status, new_status, at)
         SELECT $1, $2, e, w, 1, o, n, now() + make_interval(secs => t)
           FROM (VALUES ('erp-000:pull', 'wa-1-x', 'ready', 'running', 0),
                        ('erp-000:pull', 'wa-1-x', 'running', 'succeeded', 10),
                        ('erp-000:pull', 'wb-1-x', 'ready', 'running', 5),
                        ('erp-000:pull', 'wb-1-x', 'running', 'succeeded', 15)) AS v(e, w, o, n, t)",
    )
    .bind(step)
    .bind(run.0)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chaos_write_log (tbl, integration_id, external_id, app, at)
         SELECT 'erp_items', integration_id, '1', 'wc', now() FROM chain_runs WHERE id = $1",
    )
    .bind(run.0)
    .execute(&env.pool)
    .await
    .unwrap();
    let report = chaos::fleet_report(&env.pool, "pull").await;
    assert_eq!(report.overlaps.len(), 1, "{report:#?}");
    assert_eq!(report.double_completions.len(), 1, "{report:#?}");
    assert_eq!(report.unaccounted_attempts.len(), 1, "{report:#?}");
    assert_eq!(report.stray_writes.len(), 1, "{report:#?}");
    assert!(std::panic::catch_unwind(|| report.assert_clean()).is_err());

    // Nothing synced: the table does not match the sandbox.
    let env = std::sync::Arc::new(env);
    let (e, sb, names) = (env.clone(), std::sync::Arc::new(sandbox), erps.clone());
    let drift = tokio::spawn(async move { chaos::assert_matches_sandbox(&e, &sb, "erp_items", &names).await }).await;
    assert!(drift.is_err_and(|e| e.is_panic()), "an empty table does not match 250 items");
    let env = std::sync::Arc::try_unwrap(env).ok().expect("the check's task is done");
    finish(env, cleanup).await;
}
