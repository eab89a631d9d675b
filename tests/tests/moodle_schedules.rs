//! The Moodle pack's triggers: schedule resolution (stored > `MOODLE_SYNC_INTERVAL_MINUTES` >
//! per-environment default) with the 30-minute minimum at every layer, start-up triggers, a manual
//! trigger answering the run id or 409, who triggered it, and the paginated history.

use std::time::Duration;

use serde_json::{Value, json};
use syncfleet_shared::ids::RunId;
use syncfleet_tests::moodle::uni_toml;
use syncfleet_tests::{Sandbox, TestEnv, binary};

const CHAIN: &str = "moodle_institutional";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_interval_resolves_by_layer_with_a_30_minute_minimum_at_each() {
    let sandbox = Sandbox::start().await;
    let toml = format!("{}\n[packs.moodle]\ndisable_sync_category_on_startup = true\n", uni_toml(&sandbox, ""));
    let env = TestEnv::new(&toml).await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let path = format!("/api/chains/{CHAIN}/schedule?integration=uni");

    // The environment's default (test: 60 minutes), with its cron and next execution.
    let (status, s) = admin.get(&path).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["interval_secs"].as_u64(), s["source"].as_str()), (Some(3600), Some("pack")), "{s}");
    assert_eq!(s["resolved_cron"], "0 0 * * * *");
    let next: chrono::DateTime<chrono::Utc> = serde_json::from_value(s["next_at"].clone()).unwrap();
    assert!(next > chrono::Utc::now() && next.timestamp() % 3600 == 0, "{next}");

    // The environment variable: used when set (the CLI reads the same configuration), refused below 30.
    let cli = |minutes: &str| {
        let mut c = env.cli();
        c.args(["schedule", "get", CHAIN, "--integration", "uni", "--json"])
            .env("MOODLE_SYNC_INTERVAL_MINUTES", minutes);
        c
    };
    let out = cli("180").output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[0]["interval_secs"], 10_800, "{shown}");
    assert_eq!(
        (shown[0]["source"].as_str(), shown[0]["resolved_cron"].as_str()),
        (Some("config"), Some("0 0 */3 * * *"))
    );
    let out = cli("20").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("moodle.sync_interval_minutes") && stderr.contains("30 minutes"),
        "{stderr}"
    );
    // The producer refuses to start with it.
    let out = tokio::process::Command::new(binary("syncfleet-producer"))
        .env("SYNCFLEET_CONFIG", &env.config_path)
        .env("MOODLE_SYNC_INTERVAL_MINUTES", "20")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("exits at once").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("MOODLE_SYNC_INTERVAL_MINUTES"), "{stderr}");

    // The stored value wins; below 30 minutes (interval or cron) is a 400 naming the field.
    let put_path = format!("/api/chains/{CHAIN}/schedule");
    let put = |body: Value| admin.put(&put_path, body);
    let (status, b) = put(json!({"integration": "uni", "interval_secs": 1799})).await;
    assert_eq!(status, 400, "{b}");
    assert!(
        b["message"].as_str().unwrap().starts_with("interval_secs") && b["message"].as_str().unwrap().contains("1800s"),
        "{b}"
    );
    let (status, b) = put(json!({"integration": "uni", "cron": "0 */10 * * * *"})).await;
    assert_eq!((status, b["message"].as_str().unwrap().starts_with("cron")), (400, true), "{b}");
    let (status, b) = put(json!({"integration": "uni", "interval_secs": 7200})).await;
    assert_eq!(status, 200, "{b}");
    let (_, s) = admin.get(&path).await;
    assert_eq!((s["interval_secs"].as_u64(), s["source"].as_str()), (Some(7200), Some("stored")), "{s}");
    assert_eq!(s["resolved_cron"], "0 0 */2 * * *");
    producer.stop().await;
    env.finish().await;
}

async fn runs(env: &TestEnv) -> Vec<(String, String, Vec<String>)> {
    let page = syncfleet_store::views::run_page(
        &env.pool,
        &syncfleet_store::views::RunFilter { integration: Some("uni".into()), ..Default::default() },
    )
    .await
    .unwrap();
    page.runs.into_iter().map(|r| (r.chain, r.trigger, r.steps.into_iter().map(|s| s.step).collect())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn startup_triggers_manual_runs_answer_409_and_history_pages() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&uni_toml(&sandbox, "")).await;

    // Start-up: categories alone by default; the whole chain with SYNC_ON_STARTUP; without
    // categories when they are disabled; nothing when only they would run and are disabled.
    let cases = [
        ((false, false), Some((CHAIN, vec!["sync_categories"]))),
        (
            (true, false),
            Some((
                CHAIN,
                vec!["sync_categories", "sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"],
            )),
        ),
        (
            (true, true),
            Some((
                "moodle_enrollments",
                vec!["sync_courses", "sync_enrollments", "user_scope_backfill", "role_derivation"],
            )),
        ),
        ((false, true), None),
    ];
    for ((on_startup, no_categories), expected) in cases {
        let mut ops = env.ops.clone();
        ops.config.packs.insert(
            "moodle".into(),
            serde_json::json!({ "sync_on_startup": on_startup, "disable_sync_category_on_startup": no_categories }),
        );
        let before = runs(&env).await.len();
        let token = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = tokio::spawn(syncfleet_producer::run_with(listener, ops, token.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel();
        handle.await.unwrap().unwrap();
        let all = runs(&env).await;
        match expected {
            None => assert_eq!(all.len(), before, "{all:?}"),
            Some((chain, mut steps)) => {
                assert_eq!(all.len(), before + 1, "{all:?}");
                let (c, trigger, mut got) = all[0].clone();
                got.sort();
                steps.sort();
                assert_eq!(
                    (c.as_str(), trigger.as_str(), got),
                    (chain, "startup", steps.iter().map(|s| s.to_string()).collect())
                );
                let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM chain_runs ORDER BY created_at DESC LIMIT 1")
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
                env.ops.cancel(RunId(id), "test").await.unwrap();
            }
        }
    }

    // Manual: the run id, then 409 while it is active; the run records who asked.
    let mut ops = env.ops.clone();
    ops.config.packs.insert("moodle".into(), serde_json::json!({ "disable_sync_category_on_startup": true }));
    let token = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(syncfleet_producer::run_with(listener, ops, token.clone()));
    let producer = syncfleet_tests::Running { token, handle, addr: Some(addr), name: "producer".into() };
    let api = env.api(&producer, "operator").await;
    let whoami = api.get("/api/whoami").await.1;
    let (status, created) = api.post(&format!("/api/chains/{CHAIN}/runs"), json!({"integration": "uni"})).await;
    assert_eq!(status, 201, "{created}");
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let (status, again) = api.post(&format!("/api/chains/{CHAIN}/runs"), json!({"integration": "uni"})).await;
    assert_eq!(
        (status, again["error"].as_str(), again["run_id"].as_str()),
        (409, Some("active_run"), Some(run_id.as_str())),
        "{again}"
    );
    let worker = env.spawn_worker("w").await;
    let view = env.wait(run_id.parse().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    assert_eq!(view.triggered_by, format!("token:{}", whoami["name"].as_str().unwrap()));
    for s in &view.steps {
        assert_eq!(s.status, "succeeded", "{s:#?}");
    }

    // History: newest first, paginated, with the phase metrics of each run.
    let (status, created) = api.post(&format!("/api/chains/{CHAIN}/runs"), json!({"integration": "uni"})).await;
    assert_eq!(status, 201, "{created}");
    env.wait(created["run_id"].as_str().unwrap().parse().unwrap(), Duration::from_secs(60)).await;
    let (status, page) = api.get(&format!("/api/runs?chain={CHAIN}&integration=uni&limit=2")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!((page["total"].as_i64(), page["runs"].as_array().unwrap().len()), (Some(4), 2), "{page}");
    assert_eq!(page["runs"][0]["id"], created["run_id"]);
    assert_eq!(page["runs"][1]["id"], run_id.as_str());
    let enrollments =
        page["runs"][1]["steps"].as_array().unwrap().iter().find(|s| s["step"] == "sync_enrollments").unwrap().clone();
    assert!(enrollments["inserted"].as_i64().unwrap() > 300 && enrollments["duration_ms"].is_i64(), "{enrollments}");
    let (_, rest) = api.get(&format!("/api/runs?chain={CHAIN}&integration=uni&limit=2&offset=2")).await;
    let statuses: Vec<&str> = rest["runs"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["cancelled", "cancelled"], "the start-up runs cancelled above: {rest}");
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
