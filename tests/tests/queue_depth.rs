//! Queue depth is read the same way everywhere: `/metrics` (what autoscaling reads), `syncfleet
//! queues --json`, the API, the dashboard as Chromium renders it, and Redis itself, read
//! independently here from apalis-redis's keys, agree at one moment.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use syncfleet_tests::TestEnv;

type Depths = BTreeMap<(String, String), i64>;

const STATES: [&str; 4] = ["ready", "scheduled", "inflight", "dead"];

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

fn from_json(queues: &Value, with_blocked: bool) -> Depths {
    let mut out = Depths::new();
    for q in queues.as_array().unwrap() {
        let name = q["queue"].as_str().unwrap().to_owned();
        for state in STATES.iter().chain(with_blocked.then_some(&"blocked")) {
            out.insert((name.clone(), state.to_string()), q[*state].as_i64().unwrap());
        }
    }
    out
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

fn without_blocked(d: &Depths) -> Depths {
    d.iter().filter(|((_, s), _)| s != "blocked").map(|(k, v)| (k.clone(), *v)).collect()
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

    // Wait for a settled state: the slow shard in flight and the same depth twice in a row.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Depths::new();
    let settled = loop {
        let now = from_redis(&env, &names).await;
        if now == last && now[&("demo".into(), "inflight".into())] >= 1 {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "queue depth never settled: {now:?}");
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let redis_before = from_redis(&env, &names).await;
    let (status, api_queues) = api.get("/api/queues").await;
    assert_eq!(status, 200);
    let metrics =
        reqwest::get(format!("http://{}/metrics", producer.addr.unwrap())).await.unwrap().text().await.unwrap();
    let cli = env.cli().args(["queues", "--json"]).output().await.unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli_queues: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let dashboard = dashboard_depth(&producer, &api).await;
    let redis_after = from_redis(&env, &names).await;
    assert_eq!(redis_before, redis_after, "Redis changed while the readers read");
    assert_eq!(redis_before, settled);

    let (api_d, cli_d, metrics_d) =
        (from_json(&api_queues, true), from_json(&cli_queues, true), from_metrics(&metrics));
    assert_eq!(without_blocked(&api_d), redis_before, "the API (and the dashboard it feeds) against Redis");
    assert_eq!(without_blocked(&cli_d), redis_before, "syncfleet queues against Redis");
    assert_eq!(without_blocked(&metrics_d), redis_before, "/metrics against Redis");
    assert_eq!(api_d, cli_d);
    assert_eq!(api_d, metrics_d);
    if let Some(dashboard) = dashboard {
        assert_eq!(from_json(&dashboard, true), api_d, "the dashboard against the API: {dashboard}");
    }
    // The figures are not all zero: something is ready, one step is in flight, and the waiting
    // shards are blocked behind its lease.
    let ready = redis_before[&("demo".into(), "ready".into())];
    let inflight = redis_before[&("demo".into(), "inflight".into())];
    assert!(ready >= 18 && inflight >= 1, "{redis_before:?}");
    assert_eq!(api_d[&("demo".into(), "blocked".into())], 19, "{api_queues}");

    let run_id = created["run_id"].as_str().unwrap();
    assert_eq!(op.post(&format!("/api/runs/{run_id}/cancel"), json!({})).await.0, 200);
    worker.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}
