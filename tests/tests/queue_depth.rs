//! Queue depth is read the same way everywhere: `/metrics` (what autoscaling reads), `syncfleet
//! queues --json`, the API, the dashboard as Chromium renders it, and Redis itself, read
//! independently here from apalis-redis's keys, agree at one moment; and `runnable` (what
//! autoscaling reads) is `ready` less the due jobs of lease-blocked steps, read independently here
//! from Redis's due ids and PostgreSQL's steps.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use syncfleet_tests::TestEnv;

type Depths = BTreeMap<(String, String), i64>;

const STATES: [&str; 4] = ["ready", "scheduled", "inflight", "dead"];
/// States that join PostgreSQL to Redis.
const DERIVED: [&str; 2] = ["blocked", "runnable"];

/// Depth per (queue, state) straight from the keys apalis-redis writes.
async fn from_redis(env: &TestEnv, queues: &[&str]) -> Depths {
    let client = redis::Client::open(env.config.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut out = Depths::new();
    for q in queues {
        let key = format!("{}:{q}", env.config.redis.namespace);
        let due: i64 = redis::cmd("ZCOUNT")
            .arg(format!("{key}:scheduled"))
            .arg("-inf")
            .arg(now)
            .query_async(&mut conn)
            .await
            .unwrap();
        let later: i64 = redis::cmd("ZCOUNT")
            .arg(format!("{key}:scheduled"))
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .unwrap();
        let active: i64 = redis::cmd("LLEN").arg(format!("{key}:active")).query_async(&mut conn).await.unwrap();
        let workers: Vec<String> =
            redis::cmd("ZRANGE").arg(format!("{key}:workers")).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
        let mut inflight = 0;
        for w in workers {
            let n: i64 = redis::cmd("SCARD").arg(format!("{key}:inflight:{w}")).query_async(&mut conn).await.unwrap();
            inflight += n;
        }
        let dead: i64 = redis::cmd("SCARD").arg(format!("{key}:dead")).query_async(&mut conn).await.unwrap();
        for (state, n) in STATES.iter().zip([due + active, later, inflight, dead]) {
            out.insert((q.to_string(), state.to_string()), n);
        }
    }
    out
}

fn from_json(queues: &Value) -> Depths {
    let mut out = Depths::new();
    for q in queues.as_array().unwrap() {
        let name = q["queue"].as_str().unwrap().to_owned();
        for state in STATES.iter().chain(&DERIVED) {
            let n = q[*state].as_i64().unwrap_or_else(|| panic!("{state} of {name}: {q}"));
            out.insert((name.clone(), state.to_string()), n);
        }
    }
    out
}

/// The due task ids of `queue` in Redis (scheduled with run-at ≤ now, or in the active list).
async fn due_ids(env: &TestEnv, queue: &str) -> Vec<String> {
    let client = redis::Client::open(env.config.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:{queue}", env.config.redis.namespace);
    let now = chrono::Utc::now().timestamp();
    let mut ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{key}:scheduled"))
        .arg("-inf")
        .arg(now)
        .query_async(&mut conn)
        .await
        .unwrap();
    let active: Vec<String> =
        redis::cmd("LRANGE").arg(format!("{key}:active")).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    ids.extend(active);
    ids
}

/// Waits until the depth in Redis is the same twice in a row with something in flight on `demo`.
async fn settle(env: &TestEnv, names: &[&str]) -> Depths {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Depths::new();
    loop {
        let now = from_redis(env, names).await;
        if now == last && now[&("demo".into(), "inflight".into())] >= 1 {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "queue depth never settled: {now:?}");
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `syncfleet_queue_depth{queue="…",state="…"} N` lines.
fn from_metrics(text: &str) -> Depths {
    let mut out = Depths::new();
    for line in text.lines().filter(|l| l.starts_with("syncfleet_queue_depth{")) {
        let (labels, value) = line.split_once("} ").unwrap();
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            labels[start..].split('"').next().unwrap().to_owned()
        };
        out.insert((label("queue"), label("state")), value.trim().parse::<f64>().unwrap() as i64);
    }
    out
}

/// The states read from Redis alone.
fn redis_states(d: &Depths) -> Depths {
    d.iter().filter(|((_, s), _)| !DERIVED.contains(&s.as_str())).map(|(k, v)| (k.clone(), *v)).collect()
}

/// The queue table as the dashboard renders it in headless Chromium; `None` (skipped) only when
/// Chromium is missing outside CI.
async fn dashboard_depth(producer: &syncfleet_tests::Running, api: &syncfleet_tests::Api) -> Option<Value> {
    let chromium = std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    if !std::path::Path::new(&chromium).exists() || !e2e.join("node_modules/playwright-core").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "Chromium or tests/e2e/node_modules is missing and CI is set");
        eprintln!("SKIPPED the dashboard reading: no Chromium or no `npm ci` in tests/e2e");
        return None;
    }
    let out = tokio::process::Command::new("node")
        .arg(e2e.join("queue_depth.mjs"))
        .arg(format!("http://{}", producer.addr.unwrap()))
        .arg(api.token.as_deref().unwrap())
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("run node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).expect("the script prints JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_cli_api_and_redis_agree_on_queue_depth() {
    let env = TestEnv::new("").await;
    // One slow shard holds the shared entity of demo_contention; the worker runs one step at a
    // time, so the other 19 shards wait in Redis (ready) and behind the lease (blocked).
    env.demo_integration("slow", json!({ "step_ms": 0, "slow": { "fan": 120_000 } })).await;
    let producer = env.spawn_producer().await;
    let mut worker = env.worker_process("depth").env("SYNCFLEET__WORKER__CONCURRENCY", "1").spawn().unwrap();
    let api = env.api(&producer, "viewer").await;
    let op = env.api(&producer, "operator").await;
    let (status, created) = op.post("/api/chains/demo_contention/runs", json!({ "integration": "slow" })).await;
    let (_, listed) = api.get("/api/queues").await;
    let names: Vec<String> =
        listed.as_array().unwrap().iter().map(|q| q["queue"].as_str().unwrap().to_owned()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(status, 201, "{created}");

    // Wait for a settled state: the slow shard in flight and the same depth twice in a row. Then
    // three one-step runs of other integrations on the same queue: nothing blocks them, but the
    // worker's one slot is taken, so they wait in Redis as runnable work.
    settle(&env, &names).await;
    for name in ["p1", "p2", "p3"] {
        env.demo_integration(name, json!({ "step_ms": 0 })).await;
        let (status, body) = op.post("/api/chains/demo_ping/runs", json!({ "integration": name })).await;
        assert_eq!(status, 201, "{body}");
    }
    let settled = settle(&env, &names).await;

    let redis_before = from_redis(&env, &names).await;
    let (status, api_queues) = api.get("/api/queues").await;
    assert_eq!(status, 200);
    let metrics =
        reqwest::get(format!("http://{}/metrics", producer.addr.unwrap())).await.unwrap().text().await.unwrap();
    let cli = env.cli().args(["queues", "--json"]).output().await.unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli_queues: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let dashboard = dashboard_depth(&producer, &api).await;
    let due = due_ids(&env, "demo").await;
    let redis_after = from_redis(&env, &names).await;
    assert_eq!(redis_before, redis_after, "Redis changed while the readers read");
    assert_eq!(redis_before, settled);

    let (api_d, cli_d, metrics_d) = (from_json(&api_queues), from_json(&cli_queues), from_metrics(&metrics));
    assert_eq!(redis_states(&api_d), redis_before, "the API (and the dashboard it feeds) against Redis");
    assert_eq!(redis_states(&cli_d), redis_before, "syncfleet queues against Redis");
    assert_eq!(redis_states(&metrics_d), redis_before, "/metrics against Redis");
    assert_eq!(api_d, cli_d);
    assert_eq!(api_d, metrics_d);
    if let Some(dashboard) = dashboard {
        assert_eq!(from_json(&dashboard), api_d, "the dashboard against the API: {dashboard}");
    }
    // The figures are not all zero: something is ready, one step is in flight, and the waiting
    // shards are blocked behind its lease.
    let at = |state: &str| api_d[&("demo".to_owned(), state.to_owned())];
    let (ready, inflight, blocked, runnable) = (at("ready"), at("inflight"), at("blocked"), at("runnable"));
    assert!(ready >= 18 + 3 && inflight >= 1, "{redis_before:?}");
    assert_eq!(blocked, 19, "{api_queues}");
    // Runnable, read independently: the due jobs in Redis whose step no running step blocks.
    let (due_blocked, due_pings): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE entity_key IN (SELECT entity_key FROM step_runs WHERE status = 'running')),
                count(*) FILTER (WHERE step = 'ping')
           FROM step_runs WHERE status = 'ready' AND job_id = ANY($1)",
    )
    .bind(&due)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(due.len() as i64, ready, "{due:?}");
    assert_eq!(runnable, ready - due_blocked, "runnable = ready less the due lease-blocked jobs: {api_queues}");
    assert_eq!(runnable, 3, "the three pings and nothing else can run now: {api_queues}");
    assert_eq!(due_pings, 3);
    for q in &names {
        let d = |state: &str| api_d[&(q.to_string(), state.to_owned())];
        assert!(d("runnable") >= 0 && d("runnable") <= d("ready"), "{q}: {api_queues}");
    }

    let run_id = created["run_id"].as_str().unwrap();
    assert_eq!(op.post(&format!("/api/runs/{run_id}/cancel"), json!({})).await.0, 200);
    worker.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}
