//! `GET /api/chains/{chain}/status` and `syncfleet status CHAIN --integration I --json`, for every
//! chain: `idle` before any run, `queued` with the run id while no worker has started it, `active`
//! with the run id and the step running while it runs (the sandbox's Moodle slowed by its latency
//! fault), `idle` again with the last run after it ends.

use std::time::Duration;

use serde_json::{Value, json};
use syncfleet_tests::moodle::{expected_enrollments, uni_toml};
use syncfleet_tests::{Api, Sandbox, TestEnv};

const CHAIN: &str = "moodle_institutional";

/// `syncfleet status CHAIN --integration uni --json`, parsed.
async fn cli_status(env: &TestEnv, chain: &str) -> Value {
    let out = env.cli().args(["status", chain, "--integration", "uni", "--json"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn api_status(api: &Api, chain: &str) -> Value {
    let (code, body) = api.get(&format!("/api/chains/{chain}/status?integration=uni")).await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_is_idle_then_queued_then_active_with_its_step_then_idle_again() {
    let sandbox = Sandbox::start().await;
    let toml = format!("{}\n[packs.moodle]\ndisable_sync_category_on_startup = true\n", uni_toml(&sandbox, ""));
    // No schedule fires here: the institution's hourly tick would start a run of its own at the
    // top of the hour, in the middle of the statuses this test reads.
    let env = TestEnv::with_producer("scheduler_enabled = false", &toml).await;
    let producer = env.spawn_producer().await;
    let api = env.api(&producer, "viewer").await;

    // Idle before any run, for every chain of the pack, through the API and the CLI alike.
    for chain in [CHAIN, "moodle_enrollments"] {
        let s = api_status(&api, chain).await;
        assert_eq!((s["status"].as_str(), &s["run_id"], &s["last_run"]), (Some("idle"), &Value::Null, &Value::Null));
        assert_eq!(s["chain"], chain);
        assert_eq!(cli_status(&env, chain).await, s, "the CLI answers what the API answers");
    }
    // Refusals: an unknown chain or integration is 404, a missing integration 400, no token 401.
    assert_eq!(api.get("/api/chains/nope/status?integration=uni").await.0, 404);
    assert_eq!(api.get(&format!("/api/chains/{CHAIN}/status?integration=nope")).await.0, 404);
    assert_eq!(api.get(&format!("/api/chains/{CHAIN}/status")).await.0, 400);
    assert_eq!(api.with_token(None).get(&format!("/api/chains/{CHAIN}/status?integration=uni")).await.0, 401);

    // A run no worker has started yet is queued, with its id.
    sandbox.faults("moodle", json!({"latency_ms": 400})).await;
    let run = env.trigger(CHAIN, "uni").await;
    let s = api_status(&api, CHAIN).await;
    assert_eq!((s["status"].as_str(), s["run_id"].as_str()), (Some("queued"), Some(run.to_string().as_str())), "{s}");
    assert_eq!(s["steps"], json!([]), "{s}");
    assert_eq!(s["ready"], json!(["sync_categories"]), "{s}");
    assert_eq!(cli_status(&env, CHAIN).await["status"], "queued");

    // A worker starts it: active, with the run id and the step running now.
    let worker = env.spawn_worker("w").await;
    let active = env
        .eventually(Duration::from_secs(30), "the run is active in a Moodle step", || async {
            let s = api_status(&api, CHAIN).await;
            (s["status"] == "active" && s["steps"] == json!(["sync_courses"])).then_some(s)
        })
        .await;
    assert_eq!(active["run_id"].as_str(), Some(run.to_string().as_str()), "{active}");
    assert_eq!(active["run_status"], "running");
    assert!(active["started_at"].is_string(), "{active}");
    // The CLI sees the same run active in the step running when it asks.
    // (A step ends and the next starts in between: asked then, no step runs for a moment.)
    let mut cli = cli_status(&env, CHAIN).await;
    for _ in 0..5 {
        if cli["steps"] != json!([]) {
            break;
        }
        cli = cli_status(&env, CHAIN).await;
    }
    assert_eq!((cli["status"].as_str(), cli["run_id"].as_str()), (Some("active"), Some(run.to_string().as_str())));
    let step = cli["steps"].as_array().unwrap();
    assert_eq!(step.len(), 1, "{cli}");
    assert!(["sync_courses", "sync_enrollments"].contains(&step[0].as_str().unwrap()), "{cli}");
    // The other chain of the integration is not running.
    assert_eq!(api_status(&api, "moodle_enrollments").await["status"], "idle");

    // After the run: idle again, with the run that ended, whose rows equal the sandbox's.
    let ended = env.wait(run, Duration::from_secs(120)).await;
    assert_eq!(ended.status, "completed", "{ended:#?}");
    let s = api_status(&api, CHAIN).await;
    assert_eq!((s["status"].as_str(), &s["run_id"], &s["steps"]), (Some("idle"), &Value::Null, &json!([])), "{s}");
    assert_eq!(s["last_run"]["run_id"].as_str(), Some(run.to_string().as_str()));
    assert_eq!(s["last_run"]["status"], "completed");
    assert_eq!(cli_status(&env, CHAIN).await, s);
    let active: i64 = env.value("SELECT count(*) FROM moodle_enrollments WHERE is_active").await;
    assert_eq!(active as usize, expected_enrollments(&sandbox).await.len());

    // The plain CLI answer is one line.
    let out = env.cli().args(["status", CHAIN, "--integration", "uni"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("{CHAIN} for uni: idle; last run {run} completed")), "{text}");
    let out = env.cli().args(["status", "nope", "--integration", "uni"]).output().await.unwrap();
    assert!(!out.status.success());
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
