//! Triggers: schedules fired by several producers, manual triggers while a run is active.

use std::time::Duration;

use serde_json::json;
use syncfleet_producer::scheduler::{Fired, Scheduler};
use syncfleet_store::runs::TriggerKind;
use syncfleet_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_producers_firing_the_same_tick_create_one_run() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let (a, b) = (Scheduler::new(env.ops.clone()), Scheduler::new(env.ops.clone()));
    let tick = 1_900_000_000;
    let (fa, fb) = tokio::join!(
        a.fire("demo_diamond", "acme", tick, TriggerKind::Schedule),
        b.fire("demo_diamond", "acme", tick, TriggerKind::Schedule)
    );
    let mut fired = [fa.unwrap(), fb.unwrap()];
    fired.sort_by_key(|f| matches!(f, Fired::Created(_)));
    assert_eq!(fired[0], Fired::AlreadyFired);
    assert!(matches!(fired[1], Fired::Created(_)));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_runs WHERE tick_key = 'demo_diamond:acme:1900000000'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_live_producers_on_a_one_second_schedule_make_one_run_per_tick() {
    let env = TestEnv::new("[schedules.demo_diamond.acme]\ninterval_secs = 1\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0, "fail": { "right": "never" } })).await;
    let p1 = env.spawn_producer().await;
    let p2 = env.spawn_producer().await;
    let w = env.spawn_worker("w").await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    p1.stop().await;
    p2.stop().await;
    w.stop().await;
    let rows: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT tick_key, trigger_kind FROM chain_runs").fetch_all(&env.pool).await.unwrap();
    assert!(rows.len() >= 2, "the schedule fired: {rows:?}");
    let mut keys: Vec<String> = rows.iter().map(|r| r.0.clone().unwrap()).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "one run per tick");
    assert!(rows.iter().all(|r| r.1 == "schedule"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_trigger_while_a_run_is_active_answers_409_and_the_cli_says_why() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let api = env.api(&producer, "operator").await;

    let (status, first) = api.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    assert_eq!(status, 201, "{first}");
    let run_id = first["run_id"].as_str().unwrap().to_owned();

    let (status, body) = api.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "active_run");
    assert_eq!(body["run_id"], run_id.as_str());

    // Exit 4: refused, a run is active.
    let out = env.cli().args(["trigger", "demo_diamond", "--integration", "acme"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already active") && stderr.contains(&run_id), "{stderr}");

    // Bad requests get a 4xx with a message.
    let (status, bad) =
        api.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "mode": "sideways" })).await;
    assert_eq!(status, 400);
    assert_eq!(bad["message"], "mode: must be full or incremental, not `sideways`");
    let (status, _) = api.post("/api/chains/nope/runs", json!({ "integration": "acme" })).await;
    assert_eq!(status, 404);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trigger_sets_the_mode_of_single_steps_and_bad_step_modes_answer_400() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let api = env.api(&producer, "operator").await;

    let (status, bad) = api
        .post("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "step_modes": {"nope": "full"} }))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["message"].as_str().unwrap().starts_with("step_modes: chain `demo_diamond` has no step `nope`"),
        "{bad}"
    );
    let (status, bad) = api
        .post("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "step_modes": {"join": "sometimes"} }))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["message"], "step_modes.join: must be full or incremental, not `sometimes`");

    let (status, created) = api
        .post(
            "/api/chains/demo_diamond/runs",
            json!({ "integration": "acme", "mode": "incremental", "step_modes": {"join": "full"} }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let run: syncfleet_shared::ids::RunId = created["run_id"].as_str().unwrap().parse().unwrap();
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let modes: Vec<(String, Option<String>)> = view.steps.iter().map(|s| (s.step.clone(), s.mode.clone())).collect();
    for (step, mode) in &modes {
        let want = if step == "join" { "full" } else { "incremental" };
        assert_eq!(mode.as_deref(), Some(want), "{modes:?}");
    }
    let (status, shown) = api.get(&format!("/api/runs/{run}")).await;
    assert_eq!(status, 200);
    let join = shown["steps"].as_array().unwrap().iter().find(|s| s["step"] == "join").unwrap();
    assert_eq!(join["mode"], "full", "{shown}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_contract_runs_show_and_queues_json() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    let out = env
        .cli()
        .args(["trigger", "demo_diamond", "--integration", "acme", "--wait", "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["status"], "completed");

    let out = env.cli().args(["runs", "show", run["id"].as_str().unwrap(), "--json"]).output().await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["id", "chain", "integration", "status", "trigger", "started_at", "finished_at", "steps"] {
        assert!(shown.get(key).is_some(), "runs show lacks {key}");
    }
    let step = &shown["steps"][0];
    for key in [
        "step",
        "status",
        "attempts",
        "duration_ms",
        "fetched",
        "inserted",
        "updated",
        "unchanged",
        "deactivated",
        "errors",
        "api_calls",
        "throttled",
        "guard",
    ] {
        assert!(step.get(key).is_some(), "step lacks {key}");
    }
    assert_eq!(shown["steps"].as_array().unwrap().len(), 5);
    assert_eq!(step["inserted"], 1);

    let out = env.cli().args(["queues", "--json"]).output().await.unwrap();
    let queues: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let demo = queues.as_array().unwrap().iter().find(|q| q["queue"] == "demo").expect("demo queue listed");
    for key in ["ready", "scheduled", "inflight", "dead"] {
        assert!(demo[key].is_i64(), "queues lacks {key}");
    }
    assert_eq!(demo["ready"], 0);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
