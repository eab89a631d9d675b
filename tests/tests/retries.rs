//! One retry module (`syncfleet_shared::retry`): attempts lost to the infrastructure (a worker
//! killed, an entity lease lost to a Redis flush) spend none of a step's error budget, a larger cap
//! still stops a step whose workers keep dying, database errors are retried or not by their
//! SQLSTATE, the run's error says what was spent and how to go on, and the HTTP client's retries
//! are jittered at random.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::{FutureExt, future::BoxFuture};
use serde_json::json;
use syncfleet_sdk::{
    Pack,
    chain::{ChainDef, Mode, StepDef, StepKind},
    http::{HttpClients, Limits},
    ids::ChainName,
    step::{StepContext, StepError, StepHandler},
};
use syncfleet_shared::ids::RunId;
use syncfleet_store::views::{RunView, StepView};
use syncfleet_tests::{
    PrivateRedis, Sandbox, TestEnv,
    chaos::{Fleet, Serial},
    partner::acme_toml,
    signal,
};
use tokio_util::sync::CancellationToken;

/// (status, worker, attempts, lost attempts) of a one-row step.
async fn step_row(env: &TestEnv, run: RunId, step: &str) -> Option<(String, Option<String>, i32, i32)> {
    sqlx::query_as("SELECT status, worker, attempts, lost_attempts FROM step_runs WHERE run_id = $1 AND step = $2")
        .bind(run.0)
        .bind(step)
        .fetch_optional(&env.pool)
        .await
        .ok()
        .flatten()
}

/// Waits until `step` runs on the worker whose name starts with `worker`.
async fn wait_running_on(env: &TestEnv, run: RunId, step: &str, worker: &str) {
    env.eventually(Duration::from_secs(40), &format!("`{step}` to run on {worker}"), || async {
        let (status, on, _, _) = step_row(env, run, step).await?;
        (status == "running" && on?.starts_with(worker)).then_some(())
    })
    .await;
}

fn step<'a>(view: &'a RunView, name: &str) -> &'a StepView {
    view.steps.iter().find(|s| s.step == name).unwrap_or_else(|| panic!("no step {name} in {view:#?}"))
}

/// Starts a worker process, waits until it runs `ping` of `run`, and kills it (`SIGKILL`).
async fn kill_the_worker_running_ping(env: &TestEnv, run: RunId, name: &str) {
    let mut victim = env.spawn_worker_process(name);
    wait_running_on(env, run, "ping", name).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&victim, "KILL");
    victim.wait().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_whose_workers_are_killed_more_often_than_its_attempts_still_completes() {
    // One attempt of error budget; three workers killed under the step.
    let env = TestEnv::new("[chains.demo_ping.steps.ping]\nmax_attempts = 1\n").await;
    env.demo_integration("acme", json!({ "slow": { "ping": 4000 } })).await;
    let producer = env.spawn_producer().await;
    let run = env.trigger("demo_ping", "acme").await;
    for i in 0..3 {
        kill_the_worker_running_ping(&env, run, &format!("victim{i}-{}", env.id)).await;
    }
    let mut survivor = env.spawn_worker_process(&format!("survivor-{}", env.id));

    let view = env.wait(run, Duration::from_secs(90)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let ping = step(&view, "ping");
    assert_eq!((ping.attempts, ping.lost_attempts), (4, 3), "three lost attempts and one that succeeded: {ping:#?}");
    let (_, worker, attempts, lost) = step_row(&env, run, "ping").await.unwrap();
    assert_eq!((attempts, lost), (4, 3));
    assert!(worker.unwrap().starts_with("survivor"));
    assert_eq!(env.effects(run).await, vec![("ping".to_owned(), 0, 1)], "the effect applied once");

    survivor.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_whose_workers_keep_dying_stops_at_its_lost_cap_and_resume_continues_it() {
    let env = TestEnv::new("[chains.demo_ping.steps.ping]\nmax_attempts = 3\nmax_lost_attempts = 2\n").await;
    env.demo_integration("acme", json!({ "slow": { "ping": 4000 } })).await;
    let producer = env.spawn_producer().await;
    let run = env.trigger("demo_ping", "acme").await;
    for i in 0..2 {
        kill_the_worker_running_ping(&env, run, &format!("victim{i}-{}", env.id)).await;
    }

    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed", "{view:#?}");
    let ping = step(&view, "ping");
    assert_eq!((ping.status.as_str(), ping.attempts, ping.lost_attempts), ("failed", 2, 2), "{ping:#?}");
    let step_error = ping.error.as_deref().unwrap_or_default();
    assert!(step_error.contains("kept dying") && step_error.contains("no heartbeat"), "{step_error}");
    let run_error = view.error.as_deref().unwrap_or_default();
    for needle in ["step `ping` failed", "2 attempts lost", &format!("`syncfleet resume {run}` continues the run")] {
        assert!(run_error.contains(needle), "{needle:?} in {run_error}");
    }

    // Resumed with a worker that lives: the lost budget is new, the step completes.
    let worker = env.spawn_worker("w").await;
    env.ops.resume(run, "test").await.unwrap();
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let ping = step(&view, "ping");
    assert_eq!((ping.attempts, ping.lost_attempts), (3, 2), "{ping:#?}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entity_lease_lost_to_a_redis_flush_spends_no_attempt() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(&redis.url(), "[chains.demo_ping.steps.ping]\nmax_attempts = 1\n").await;
    env.demo_integration("acme", json!({ "slow": { "ping": 3000 } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let run = env.trigger("demo_ping", "acme").await;
    wait_running_on(&env, run, "ping", "w").await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let ping = step(&view, "ping");
    assert_eq!((ping.attempts, ping.lost_attempts), (2, 1), "the attempt stopped by the lost lease: {ping:#?}");
    assert_eq!(env.effects(run).await, vec![("ping".to_owned(), 0, 1)]);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
    drop(redis);
}

/// The operator trial, at the sandbox's scale: twelve worker kills during `partner_daily`
/// with the default budget of 3 attempts, each kill aimed at a worker running one of its steps (the
/// sandbox's data is small, so a random kill would mostly hit idle workers), at a step that lost
/// fewer than 4 attempts (more than its budget, fewer than the cap of 10 lost). A kill costs every
/// step the worker held an attempt, but a lost attempt spends none of their budget: the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partner_daily_under_twelve_worker_kills_completes_with_the_default_budget() {
    let _serial = Serial::acquire().await;
    let sandbox = Sandbox::start().await;
    for api in ["northpass", "impartner"] {
        sandbox.faults(api, json!({ "latency_ms": 150 })).await;
    }
    let env = TestEnv::new(&acme_toml(&sandbox, "", "")).await;
    let producer = env.spawn_producer().await;
    let mut fleet = Fleet::new(&env);
    for _ in 0..3 {
        fleet.start_worker();
    }
    let run = env.trigger("partner_daily", "acme").await;
    let mut kills = 0;
    while kills < 12 {
        // The worker of a running step of the run, once it has run a moment.
        let victim = env
            .eventually(Duration::from_secs(60), "a running step or the run's end", || async {
                let running: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT worker FROM step_runs WHERE run_id = $1 AND status = 'running'
                        AND lost_attempts < 4 AND started_at < now() - interval '200 milliseconds'
                      ORDER BY random() LIMIT 1",
                )
                .bind(run.0)
                .fetch_optional(&env.pool)
                .await
                .unwrap();
                let ended: bool =
                    env.scalar("SELECT status NOT IN ('queued', 'running') FROM chain_runs WHERE id = $1", run).await;
                match running {
                    Some(Some(worker)) => Some(Some(worker)),
                    _ if ended => Some(None),
                    _ => None,
                }
            })
            .await;
        let Some(victim) = victim else { break };
        let Some(i) = fleet.workers.iter().position(|(name, _)| victim.starts_with(name.as_str())) else {
            continue;
        };
        let (_, mut child) = fleet.workers.swap_remove(i);
        signal(&child, "KILL");
        child.wait().await.ok();
        kills += 1;
        fleet.start_worker();
    }

    let view = env.wait(run, Duration::from_secs(240)).await;
    let lost: i64 = env.scalar("SELECT sum(lost_attempts)::bigint FROM step_runs WHERE run_id = $1", run).await;
    let attempts: i64 = env.scalar("SELECT sum(attempts)::bigint FROM step_runs WHERE run_id = $1", run).await;
    let most_lost: i32 = env.scalar("SELECT max(lost_attempts) FROM step_runs WHERE run_id = $1", run).await;
    eprintln!(
        "partner_daily under {kills} kills: {attempts} attempts, {lost} lost (at most {most_lost} by one step): {}",
        view.status
    );
    assert_eq!(view.status, "completed", "{view:#?}");
    assert!(kills >= 6 && lost >= kills as i64, "every kill cost an attempt: {kills} kills, {lost} lost");
    drop(fleet);
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_that_spent_its_attempts_says_so_and_names_resume() {
    let env = TestEnv::new("[chains.demo_diamond.steps.left]\nmax_attempts = 2\nbackoff_base_ms = 50\n").await;
    env.demo_integration("acme", json!({ "step_ms": 10, "fail": { "left": "always", "right": "never" } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let view = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(view.status, "failed");
    let left = step(&view, "left");
    assert_eq!((left.attempts, left.lost_attempts), (2, 0));
    assert_eq!(left.error.as_deref(), Some("left is configured to fail"), "the step keeps its own error");
    assert_eq!(
        view.error.as_deref(),
        Some(
            format!(
                "step `left` failed: left is configured to fail (2 attempts spent, all it had; \
                 `syncfleet resume {}` continues the run)",
                view.id
            )
            .as_str()
        )
    );
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// A pack whose one step runs the SQL its integration's settings name (`{"sql": "…", "times": n}`)
/// on its first `n` attempts (every attempt when `times` is absent), then succeeds.
struct SqlPack;

const SQL_PACK: &str = "sqlerr";
const SQL_CHAIN: &str = "sqlerr_once";

impl Pack for SqlPack {
    fn name(&self) -> &'static str {
        SQL_PACK
    }

    fn chains(&self) -> Vec<ChainDef> {
        vec![ChainDef {
            name: ChainName::parse(SQL_CHAIN).expect("valid"),
            pack: SQL_PACK.into(),
            description: "One step running the integration's SQL.".into(),
            steps: vec![StepDef::new("write", StepKind::Derive, "sqlerr").retry(3, Duration::from_millis(100))],
        }]
    }

    fn handlers(&self) -> Vec<(&'static str, Arc<dyn StepHandler>)> {
        vec![("write", Arc::new(RunSql))]
    }
}

struct RunSql;

impl StepHandler for RunSql {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = ctx.integration.settings.clone();
            let times = settings["times"].as_i64().unwrap_or(i64::MAX);
            if i64::from(ctx.attempt) > times {
                return Ok(());
            }
            let tx = ctx.tx().await?;
            for sql in settings["sql"].as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *tx).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

async fn sql_run(env: &TestEnv, integration: &str, sql: &[&str], times: Option<i64>) -> RunView {
    let settings = json!({ "sql": sql, "times": times });
    syncfleet_store::upsert_integration(&env.pool, integration, SQL_PACK, &settings).await.unwrap();
    env.run_to_end(SQL_CHAIN, integration, Mode::Full, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_errors_are_retried_or_not_by_their_sqlstate() {
    let env = TestEnv::with_registry(syncfleet_registry::builtin().with(SqlPack), "").await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    // A unique violation (23505) fails the step on its first attempt, with the database's words.
    let unique =
        ["CREATE TEMP TABLE once_only (id INT PRIMARY KEY) ON COMMIT DROP", "INSERT INTO once_only VALUES (1), (1)"];
    let view = sql_run(&env, "unique", &unique, None).await;
    assert_eq!(view.status, "failed", "{view:#?}");
    let write = step(&view, "write");
    assert_eq!(write.attempts, 1, "not retried: {write:#?}");
    assert!(write.error.as_deref().unwrap_or_default().contains("duplicate key value"), "{write:#?}");
    let run_error = view.error.as_deref().unwrap_or_default();
    assert!(run_error.contains("not retried, the error is permanent; 1 attempt spent"), "{run_error}");
    assert!(run_error.contains(&format!("syncfleet resume {}", view.id)), "{run_error}");

    // A data error (22012 division by zero) alike.
    let view = sql_run(&env, "data", &["SELECT 1 / 0"], None).await;
    assert_eq!((view.status.as_str(), step(&view, "write").attempts), ("failed", 1), "{view:#?}");

    // A serialization failure (40001) and a deadlock (40P01) are retried, and the retry succeeds.
    for (name, code) in [("serialization", "40001"), ("deadlock", "40P01")] {
        let raise = format!("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{code}'; END $$");
        let view = sql_run(&env, name, &[&raise], Some(1)).await;
        assert_eq!((view.status.as_str(), step(&view, "write").attempts), ("completed", 2), "{code}: {view:#?}");
    }

    // Retried while the budget lasts, then the run says what was spent.
    let raise = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$";
    let view = sql_run(&env, "always", &[raise], None).await;
    assert_eq!((view.status.as_str(), step(&view, "write").attempts), ("failed", 3), "{view:#?}");
    assert!(view.error.as_deref().unwrap_or_default().contains("3 attempts spent, all it had"), "{view:#?}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// An upstream that answers 503 to the first request on each path and 200 after, noting when
/// each request came.
async fn flaky_upstream() -> (String, Arc<Mutex<Vec<(String, Instant)>>>) {
    type Seen = Arc<Mutex<Vec<(String, Instant)>>>;
    async fn answer(State(seen): State<Seen>, uri: axum::http::Uri) -> (StatusCode, &'static str) {
        let mut seen = seen.lock().unwrap();
        let first = !seen.iter().any(|(path, _)| *path == uri.path());
        seen.push((uri.path().to_owned(), Instant::now()));
        if first { (StatusCode::SERVICE_UNAVAILABLE, "busy") } else { (StatusCode::OK, "{}") }
    }
    let seen: Seen = Arc::default();
    let app = Router::new().route("/{id}", get(answer)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_http_retries_wait_a_random_time_between_the_base_and_twice_it() {
    let (base, seen) = flaky_upstream().await;
    // The upstream listens on loopback, which the upstream policy refuses unless allowed.
    let upstream =
        syncfleet_shared::config::UpstreamConfig { allow_networks: vec!["127.0.0.0/8".into()], ..Default::default() };
    let clients = HttpClients::new(None, &upstream);
    let limits = Limits::default();
    let cancel = CancellationToken::new();
    // Twelve requests failing at the same instant, as twelve workers' would.
    let tries = (0..12).map(|i| {
        let client = clients.client(&format!("flaky-{i}"), &base, &limits);
        let (url, cancel) = (format!("{base}/{i}"), cancel.clone());
        async move { client.get_json(&url, &[], &[], &cancel).await }
    });
    for answer in futures::future::join_all(tries).await {
        answer.expect("the retry succeeds");
    }
    let seen = seen.lock().unwrap().clone();
    let mut waits: Vec<u128> = (0..12)
        .map(|i| {
            let path = format!("/{i}");
            let at: Vec<Instant> = seen.iter().filter(|(p, _)| *p == path).map(|(_, t)| *t).collect();
            assert_eq!(at.len(), 2, "{path}: one 503, one retry");
            (at[1] - at[0]).as_millis()
        })
        .collect();
    eprintln!("first HTTP retry waits (ms), in request order: {waits:?}");
    waits.sort();
    eprintln!("min {} ms, max {} ms", waits[0], waits[11]);
    assert!(waits[0] >= 495 && waits[11] < 1_100, "between 500 ms and 1 s: {waits:?}");
    waits.dedup();
    assert!(waits.len() >= 6, "twelve retries at the same instant would hit the upstream together: {waits:?}");
}
