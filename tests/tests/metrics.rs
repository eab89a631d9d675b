//! Metrics of real processes: `/metrics` histograms, record counters and queue depth, counters at
//! zero on a fresh producer, answers while Redis or PostgreSQL is down; `/readyz` and the migrations.

use std::time::Duration;

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::{RunView, StepView};
use syncfleet_tests::{
    Api, PrivateRedis, REDIS_URL, Sandbox, TestEnv,
    chaos::PrivatePostgres,
    erp_integration_toml,
    processes::{producer_process, spawn_until, stop, worker_process},
};

/// The value of the sample `name{labels…}` in a Prometheus text exposition (labels in any order;
/// the sample may have more).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let has_all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && has_all).then(|| value.parse().ok())?
    })
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

fn pull(view: &RunView) -> &StepView {
    view.steps.iter().find(|s| s.step == "pull").expect("pull step")
}

/// `/metrics` of a worker process and of a producer after real runs. The worker process ran the ERP
/// syncs alone, so its counters are exactly theirs. The producer's endpoint renders what its process
/// records: here the test process also hosts a worker engine (as `syncfleet demo` does), so its step
/// histograms show there too, and its queue depth is read at each scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_have_histograms_record_counts_and_fresh_queue_depth_and_readyz_checks_migrations() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "")).await;
    let (worker, addr) =
        spawn_until(worker_process(&env, &format!("metrics-w-{}", env.id)), "Worker HTTP listening.").await;
    let worker_url = format!("http://{addr}");
    let producer = env.spawn_producer().await;
    let producer_url = format!("http://{}", producer.addr.unwrap());

    // Two full ERP syncs on the worker process: inserts and an item error, then updates,
    // unchanged rows and deactivations.
    sandbox.faults("erp", json!({ "malformed_ids": [7] })).await;
    let first = env.run_to_end("http_json_sync", "erp", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:#?}");
    sandbox.faults("erp", json!({ "malformed_ids": [] })).await;
    sandbox.mutate("erp", "items", json!({ "change_percent": 10, "delete": 10 })).await;
    let second = env.run_to_end("http_json_sync", "erp", Mode::Full, false).await;
    assert_eq!(second.status, "completed", "{second:#?}");
    let (a, b) = (pull(&first), pull(&second));
    assert_eq!((a.inserted, a.errors), (249, 1), "{a:#?}");
    assert!(b.updated > 0 && b.unchanged > 0 && b.deactivated > 0, "{b:#?}");

    let (status, text) = get(&format!("{worker_url}/metrics")).await;
    assert_eq!(status, 200);
    let records = |outcome: &str| {
        sample(&text, "syncfleet_records_total", &[("integration", "erp"), ("entity", "items"), ("outcome", outcome)])
    };
    for (outcome, expected) in [
        ("inserted", a.inserted + b.inserted),
        ("updated", a.updated + b.updated),
        ("unchanged", a.unchanged + b.unchanged),
        ("deactivated", a.deactivated + b.deactivated),
        ("error", a.errors + b.errors),
    ] {
        assert_eq!(records(outcome), Some(expected as f64), "records {outcome} equal the runs' step metrics");
    }
    let queue = env.ops.chains.get("http_json_sync").unwrap().step("pull").unwrap().queue.clone();
    let wait = [("queue", queue.as_str()), ("step", "pull"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_job_wait_seconds_bucket", &wait), Some(2.0), "{text}");
    let duration = [("chain", "http_json_sync"), ("step", "pull"), ("outcome", "succeeded"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_step_duration_seconds_bucket", &duration), Some(2.0), "{text}");
    assert!(text.contains("# TYPE syncfleet_step_duration_seconds histogram"), "{text}");
    assert!(text.contains("syncfleet_job_wait_seconds_bucket{") && text.contains("le=\"0.1\""), "{text}");
    let upstream = reqwest::Url::parse(&sandbox.handle.erp_url()).unwrap();
    let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap());
    let calls = sample(&text, "syncfleet_upstream_calls_total", &[("upstream", &upstream)]);
    assert_eq!(calls, Some((a.api_calls + b.api_calls) as f64), "{text}");
    let runs = sample(&text, "syncfleet_runs_total", &[("chain", "http_json_sync"), ("status", "completed")]);
    assert_eq!(runs, Some(2.0), "{text}");

    // Readiness follows the migrations this build knows.
    assert_eq!(get(&format!("{worker_url}/livez")).await, (200, "ok".into()));
    assert_eq!(get(&format!("{worker_url}/readyz")).await, (200, "ready".into()));
    let version: i64 = env.value("SELECT max(version) FROM _sqlx_migrations").await;
    let owner = env.owner_pool().await; // `_sqlx_migrations` is the owner role's to change
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE saved_migration AS SELECT * FROM _sqlx_migrations WHERE version = {version};
         DELETE FROM _sqlx_migrations WHERE version = {version};"
    )))
    .execute(&owner)
    .await
    .unwrap();
    let (status, message) = get(&format!("{worker_url}/readyz")).await;
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("lacks migration") && message.contains(&version.to_string()), "{message}");
    let shared = syncfleet_store::health::readiness(&env.pool, &env.ops.queues).await;
    assert_eq!(shared, Err(message), "the producer's and the worker's probe say the same");
    sqlx::raw_sql("INSERT INTO _sqlx_migrations SELECT * FROM saved_migration; DROP TABLE saved_migration;")
        .execute(&owner)
        .await
        .unwrap();
    assert_eq!(get(&format!("{worker_url}/readyz")).await, (200, "ready".into()));
    stop(worker).await;

    // The producer: a demo run on an engine in this process, then the queue depth at scrape time.
    env.demo_integration("acme", json!({ "step_ms": 10 })).await;
    let engine = env.spawn_worker("in-process").await;
    let diamond = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(diamond.status, "completed", "{diamond:#?}");
    engine.stop().await;
    let (status, text) = get(&format!("{producer_url}/metrics")).await;
    assert_eq!(status, 200);
    let start_queue = env.ops.chains.get("demo_diamond").unwrap().step("start").unwrap().queue.clone();
    let wait = [("queue", start_queue.as_str()), ("step", "start"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_job_wait_seconds_bucket", &wait), Some(1.0), "{text}");
    let duration = [("chain", "demo_diamond"), ("step", "right"), ("outcome", "retrying"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_step_duration_seconds_bucket", &duration), Some(1.0), "{text}");
    for queue in env.ops.chains.queues() {
        for state in ["ready", "runnable", "scheduled", "inflight", "dead", "blocked"] {
            let depth = sample(&text, "syncfleet_queue_depth", &[("queue", &queue), ("state", state)]);
            assert_eq!(depth, Some(0.0), "{queue} {state}: {text}");
        }
    }
    // With no worker, a new run's root step waits in Redis: the next scrape shows it.
    env.trigger("demo_diamond", "acme").await;
    env.eventually(Duration::from_secs(5), "the root step in the ready depth", || async {
        let (_, text) = get(&format!("{producer_url}/metrics")).await;
        (sample(&text, "syncfleet_queue_depth", &[("queue", &start_queue), ("state", "ready")]) == Some(1.0))
            .then_some(())
    })
    .await;

    producer.stop().await;
    env.finish().await;
}

/// The labels of every sample of `name` in a Prometheus text exposition.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))).collect()
}

/// A GET of the producer's API with a bearer token.
async fn api_get(url: &str, token: &str) -> (u16, Value) {
    let response =
        reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// A fresh `syncfleet-producer` process lists, before anything ran: `syncfleet_runs_total` at 0 for
/// every chain × run status (so `increase(…{status="failed"}[15m]) > 0` sees the first failure of a
/// new pod), its error counters at 0, `syncfleet_build_info`, its process and database pool figures,
/// both dependencies up and the depth of every queue, runnable included. After one API call, that
/// call's request histogram under the route's template; after a run, its finish time as the chain's
/// last success for the integration. A worker process lists the run counters at 0 and its process
/// figures too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_producer_lists_counters_at_zero_build_info_pool_requests_and_last_success() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let (producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");
    let (status, text) = get(&metrics_url).await;
    assert_eq!(status, 200, "{text}");

    let chains: Vec<String> = env.ops.chains.all().map(|c| c.name.as_str().to_owned()).collect();
    assert!(chains.len() >= 4, "{chains:?}");
    for chain in &chains {
        for status in ["completed", "partial", "failed", "cancelled"] {
            let runs = sample(&text, "syncfleet_runs_total", &[("chain", chain), ("status", status)]);
            assert_eq!(runs, Some(0.0), "{chain} {status}: {text}");
        }
    }
    for counter in ["syncfleet_reconciler_errors_total", "syncfleet_scheduler_errors_total"] {
        assert_eq!(sample(&text, counter, &[]), Some(0.0), "{counter}: {text}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&text, "syncfleet_build_info", &[("version", version)]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_db_pool_max", &[]), Some(env.config.database.max_connections as f64));
    let idle = sample(&text, "syncfleet_db_pool_connections", &[("state", "idle")]).expect("idle connections");
    let in_use = sample(&text, "syncfleet_db_pool_connections", &[("state", "in_use")]).expect("busy connections");
    assert!(idle + in_use >= 1.0 && idle + in_use <= env.config.database.max_connections as f64, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{text}");
    assert!(sample(&text, "process_open_fds", &[]).is_some_and(|n| n > 0.0), "{text}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");
    for dependency in ["postgres", "redis"] {
        assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", dependency)]), Some(1.0), "{text}");
    }
    for queue in env.ops.chains.queues() {
        for state in ["ready", "runnable", "scheduled", "inflight", "dead", "blocked"] {
            let depth = sample(&text, "syncfleet_queue_depth", &[("queue", &queue), ("state", state)]);
            assert_eq!(depth, Some(0.0), "{queue} {state}: {text}");
        }
    }
    assert!(series(&text, "syncfleet_last_success_timestamp_seconds").is_empty(), "no run yet: {text}");

    // A run on an engine in this process; the producer process reads its end from PostgreSQL.
    let engine = env.spawn_worker("fresh").await;
    let run = env.run_to_end("demo_ping", "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    engine.stop().await;
    let finished: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM finished_at)::float8 FROM chain_runs WHERE id::text = $1")
            .bind(&run.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let token = env.token("viewer").await;
    let run_url = format!("http://{addr}/api/runs/{}", run.id);
    assert_eq!(api_get(&run_url, &token).await.0, 200);

    let (_, text) = get(&metrics_url).await;
    let last = [("chain", "demo_ping"), ("integration", "acme")];
    assert_eq!(sample(&text, "syncfleet_last_success_timestamp_seconds", &last), Some(finished), "{text}");
    assert_eq!(series(&text, "syncfleet_last_success_timestamp_seconds").len(), 1, "{text}");
    let request = [("method", "GET"), ("route", "/api/runs/{id}"), ("status", "200")];
    assert_eq!(sample(&text, "syncfleet_api_request_duration_seconds_count", &request), Some(1.0), "{text}");
    assert!(!text.contains(&run.id.to_string()), "a raw path with an id is never a label: {text}");
    let scrape = [("method", "GET"), ("route", "/metrics"), ("status", "200")];
    assert!(sample(&text, "syncfleet_api_request_duration_seconds_count", &scrape).is_some(), "{text}");
    stop(producer).await;

    // A worker process: the same counters at 0 from its start, and its own process figures.
    let (worker, addr) =
        spawn_until(worker_process(&env, &format!("fresh-w-{}", env.id)), "Worker HTTP listening.").await;
    let (status, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{text}");
    assert_eq!(sample(&text, "syncfleet_build_info", &[("version", version)]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_db_pool_max", &[]), Some(env.config.database.max_connections as f64));
    stop(worker).await;
    env.finish().await;
}

/// With its Redis gone, a producer's `/metrics` still answers 200, in time: Redis shows down, the
/// depth and heartbeat series it cannot read are left out (neither stale nor 0), and every other
/// series stays, counters with their values (a cancelled run counted before Redis went, reconcile
/// passes failing since).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_answer_with_redis_stopped_leaving_out_only_what_redis_holds() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(&redis.url(), "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let (producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");

    // A run the producer process ends itself (cancelled, no worker), so its counter is 1.
    let api =
        Api { base: format!("http://{addr}"), token: Some(env.token("operator").await), http: Default::default() };
    let (_, created) = api.post("/api/chains/demo_ping/runs", json!({ "integration": "acme" })).await;
    let run_id = created["run_id"].as_str().unwrap_or_else(|| panic!("{created}"));
    let (cancel, _) = api.post(&format!("/api/runs/{run_id}/cancel"), json!({})).await;
    assert_eq!(cancel, 200);

    let (status, before) = get(&metrics_url).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(1.0), "{before}");
    let ready = [("queue", "demo"), ("state", "ready")];
    assert!(sample(&before, "syncfleet_queue_depth", &ready).is_some(), "{before}");
    assert!(!series(&before, "syncfleet_worker_last_heartbeat_timestamp_seconds").is_empty(), "{before}");
    let cancelled = [("chain", "demo_ping"), ("status", "cancelled")];
    assert_eq!(sample(&before, "syncfleet_runs_total", &cancelled), Some(1.0), "{before}");

    drop(redis);
    // The reconciler's passes fail from now on; its error counter shows it.
    let text = env
        .eventually(Duration::from_secs(30), "reconcile errors counted with Redis down", || async {
            let started = std::time::Instant::now();
            let (status, text) = get(&metrics_url).await;
            assert_eq!(status, 200, "/metrics answers without Redis: {text}");
            assert!(started.elapsed() < Duration::from_secs(8), "a scrape without Redis took {:?}", started.elapsed());
            sample(&text, "syncfleet_reconciler_errors_total", &[]).is_some_and(|n| n >= 1.0).then_some(text)
        })
        .await;
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]), Some(1.0), "{text}");
    assert!(series(&text, "syncfleet_queue_depth").is_empty(), "no depth without Redis: {text}");
    assert!(series(&text, "syncfleet_worker_last_heartbeat_timestamp_seconds").is_empty(), "{text}");
    assert_eq!(sample(&text, "syncfleet_runs_total", &cancelled), Some(1.0), "counters intact: {text}");
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    let cancel_route = [("route", "/api/runs/{id}/cancel"), ("status", "200")];
    assert_eq!(sample(&text, "syncfleet_api_request_duration_seconds_count", &cancel_route), Some(1.0), "{text}");
    assert!(sample(&text, "syncfleet_build_info", &[]).is_some(), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some(), "{text}");

    stop(producer).await;
    tokio::time::timeout(Duration::from_secs(30), env.finish()).await.ok();
}

/// With PostgreSQL gone, a producer's `/metrics` still answers 200, in time: PostgreSQL shows down,
/// what it holds (`blocked`, `runnable`, the latest successes) is left out, while Redis's depth
/// states and every recorded series stay; once PostgreSQL is back, so is all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_answer_with_postgres_stopped_leaving_out_only_what_postgres_holds() {
    let pg = PrivatePostgres::start();
    let server = format!("postgres://postgres@127.0.0.1:{}", pg.port);
    let env = TestEnv::build_on(&server, syncfleet_registry::builtin(), REDIS_URL, "", "", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let engine = env.spawn_worker("pg-down").await;
    let run = env.run_to_end("demo_ping", "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    engine.stop().await;
    let (mut producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");
    let (status, text) = get(&metrics_url).await;
    assert_eq!(status, 200);
    let last = [("chain", "demo_ping"), ("integration", "acme")];
    assert!(sample(&text, "syncfleet_last_success_timestamp_seconds", &last).is_some(), "{text}");
    let runnable = [("queue", "demo"), ("state", "runnable")];
    assert_eq!(sample(&text, "syncfleet_queue_depth", &runnable), Some(0.0), "{text}");

    pg.crash();
    let text = env
        .eventually(Duration::from_secs(30), "PostgreSQL down in /metrics", || async {
            let started = std::time::Instant::now();
            let (status, text) = get(&metrics_url).await;
            assert_eq!(status, 200, "/metrics answers without PostgreSQL: {text}");
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "a scrape without PostgreSQL took {:?}",
                started.elapsed()
            );
            (sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]) == Some(0.0)).then_some(text)
        })
        .await;
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(1.0), "{text}");
    for state in ["ready", "scheduled", "inflight", "dead"] {
        let depth = sample(&text, "syncfleet_queue_depth", &[("queue", "demo"), ("state", state)]);
        assert_eq!(depth, Some(0.0), "{state}: {text}");
    }
    for state in ["blocked", "runnable"] {
        let depth = sample(&text, "syncfleet_queue_depth", &[("queue", "demo"), ("state", state)]);
        assert_eq!(depth, None, "{state} needs PostgreSQL: {text}");
    }
    assert!(series(&text, "syncfleet_last_success_timestamp_seconds").is_empty(), "{text}");
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    assert!(sample(&text, "syncfleet_db_pool_max", &[]).is_some(), "{text}");

    pg.up();
    env.eventually(Duration::from_secs(30), "PostgreSQL back in /metrics", || async {
        let (_, text) = get(&metrics_url).await;
        let back = sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]) == Some(1.0)
            && sample(&text, "syncfleet_queue_depth", &runnable) == Some(0.0)
            && sample(&text, "syncfleet_last_success_timestamp_seconds", &last).is_some();
        back.then_some(())
    })
    .await;
    producer.kill().await.ok();
    env.finish().await;
}
