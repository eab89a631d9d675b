//! The admin API as an operator uses it: bearer tokens and roles, every endpoint's success, 401,
//! 403, 404 and bad input, the OpenAPI document against the routes, pausing a queue, schedules,
//! integrations, workers, tokens and the audit trail.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};
use syncfleet_tests::{Api, TestEnv};

/// Every documented operation, with the role it needs. The OpenAPI test checks this list is the
/// document's, so a new route without a row here fails.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/api/whoami", "viewer"),
    ("GET", "/api/chains", "viewer"),
    ("POST", "/api/chains/{chain}/runs", "operator"),
    ("GET", "/api/chains/{chain}/status", "viewer"),
    ("GET", "/api/runs", "viewer"),
    ("GET", "/api/runs/{id}", "viewer"),
    ("GET", "/api/runs/{id}/errors", "viewer"),
    ("POST", "/api/runs/{id}/resume", "operator"),
    ("POST", "/api/runs/{id}/cancel", "operator"),
    ("GET", "/api/queues", "viewer"),
    ("POST", "/api/queues/{queue}/pause", "operator"),
    ("POST", "/api/queues/{queue}/resume", "operator"),
    ("GET", "/api/schedules", "viewer"),
    ("GET", "/api/chains/{chain}/schedule", "viewer"),
    ("PUT", "/api/chains/{chain}/schedule", "admin"),
    ("GET", "/api/integrations", "viewer"),
    ("POST", "/api/integrations", "admin"),
    ("GET", "/api/integrations/{name}", "viewer"),
    ("PUT", "/api/integrations/{name}", "admin"),
    ("POST", "/api/integrations/{name}/disable", "admin"),
    ("POST", "/api/integrations/{name}/items/{entity}", "signature"),
    ("POST", "/api/integrations/{name}/users/{username}/hydrate", "operator"),
    ("PUT", "/api/integrations/{name}/users/{username}/scope", "admin"),
    ("GET", "/api/workers", "viewer"),
    ("GET", "/api/tokens", "admin"),
    ("POST", "/api/tokens", "admin"),
    ("DELETE", "/api/tokens/{name}", "admin"),
    ("GET", "/api/audit", "admin"),
    ("GET", "/api/reports", "viewer"),
    ("GET", "/api/reports/{id}", "viewer"),
    ("GET", "/api/chains/{chain}/sweep-preview", "admin"),
    ("POST", "/api/integrations/{name}/cursors/{entity}/reset", "admin"),
];

fn method(m: &str) -> reqwest::Method {
    m.parse().unwrap()
}

/// A concrete path for a route template: names that exist in the test's setup.
fn concrete(template: &str, run_id: &str) -> String {
    template
        .replace("{chain}", "demo_diamond")
        .replace("{id}", run_id)
        .replace("{queue}", "demo")
        .replace("{entity}", "items")
        .replace("{name}", "acme")
        .replace("{username}", "pat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_needs_a_token_and_the_right_role() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    // The webhook route checks the integration's signature instead of a token.
    let change = syncfleet_store::integrations::IntegrationChange {
        webhook_secret_ref: Some("file:absent-only-the-signature-check-is-reached".into()),
        ..Default::default()
    };
    syncfleet_store::integrations::update(&env.pool, env.ops.registry.as_ref(), "acme", &change).await.unwrap();
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let (status, created) = admin.post("/api/chains/demo_ping/runs", json!({ "integration": "acme" })).await;
    assert_eq!(status, 201, "{created}");
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let anonymous = admin.with_token(None);
    let forged = admin.with_token(Some("sf_000000000000_0000".into()));
    let viewer = env.api(&producer, "viewer").await;
    let operator = env.api(&producer, "operator").await;

    for (m, template, needs) in ROUTES {
        let path = concrete(template, &run_id);
        let body = (*m != "GET" && *m != "DELETE").then(|| json!({}));
        for (who, client) in [("no token", &anonymous), ("a forged token", &forged)] {
            let (status, b) = client.send(method(m), &path, body.clone()).await;
            assert_eq!(status, 401, "{m} {path} with {who}: {b}");
            if *needs != "signature" {
                assert_eq!(b["error"], "unauthorized", "{m} {path}");
            }
        }
        let lower: &[&Api] = match *needs {
            "operator" => &[&viewer],
            "admin" => &[&viewer, &operator],
            _ => &[],
        };
        for client in lower {
            let (status, b) = client.send(method(m), &path, body.clone()).await;
            assert_eq!(status, 403, "{m} {path}: {b}");
            assert_eq!(b["error"], "forbidden");
            assert!(b["message"].as_str().unwrap().contains(&format!("this needs {needs}")), "{b}");
        }
    }
    // A revoked token stops working at once.
    let (status, t) = admin.post("/api/tokens", json!({ "name": "short-lived", "role": "viewer" })).await;
    assert_eq!(status, 201, "{t}");
    let short = admin.with_token(Some(t["token"].as_str().unwrap().to_owned()));
    assert_eq!(short.get("/api/whoami").await, (200, json!({ "name": "short-lived", "role": "viewer" })));
    assert_eq!(admin.delete("/api/tokens/short-lived").await.0, 200);
    assert_eq!(short.get("/api/whoami").await.0, 401);
    // Tokens are stored hashed: the table never holds the secret.
    let secret = t["token"].as_str().unwrap().rsplit('_').next().unwrap().to_owned();
    let leaked: i64 = env
        .value(&format!("SELECT count(*) FROM api_tokens WHERE encode(secret_hash, 'escape') LIKE '%{secret}%'"))
        .await;
    assert_eq!(leaked, 0);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_matches_the_routes() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let (status, doc) = admin.with_token(None).get("/api/openapi.json").await;
    assert_eq!(status, 200, "the document is public");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                continue;
            }
            documented.insert((m.to_uppercase(), path.clone()));
            // Every operation documents its answers, and every protected one its 401.
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|c| c.starts_with('2')), "{m} {path} documents no success");
            assert!(responses.contains_key("401"), "{m} {path} documents no 401");
            // Every `$ref` in it resolves.
            check_refs(op, &doc, &format!("{m} {path}"));
        }
    }
    let tested: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, tested, "documented routes and the tested routes differ");

    // Every documented route is served (it answers with the API's own error, not the router's).
    let (_, created) = admin.post("/api/chains/demo_ping/runs", json!({ "integration": "acme" })).await;
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    for (m, p) in &documented {
        let path = concrete(p, &run_id);
        let (status, body) = admin.send(method(m), &path, Some(json!({}))).await;
        assert_ne!(status, 405, "{m} {path} is documented but not routed");
        assert_ne!(body["message"], "no such route", "{m} {path} is documented but not routed");
    }
    // And an undocumented one is not.
    let (status, body) = admin.get("/api/nothing-here").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    producer.stop().await;
    env.finish().await;
}

fn check_refs(v: &Value, doc: &Value, at: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.strip_prefix('#').expect("local ref");
                assert!(doc.pointer(pointer).is_some(), "{at}: dangling {r}");
                check_refs(doc.pointer(pointer).unwrap(), doc, at);
            }
            for x in map.values() {
                check_refs(x, doc, at);
            }
        }
        Value::Array(items) => items.iter().for_each(|x| check_refs(x, doc, at)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_endpoints_answer_success_404_and_bad_input_naming_the_field() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let op = env.api(&producer, "operator").await;

    let (status, created) =
        op.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "mode": "full" })).await;
    assert_eq!(status, 201);
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let run = env.wait(run_id.parse().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(run.status, "completed");

    // One run, and the list with per-phase metrics, filtered and paginated.
    let (status, one) = op.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["steps"].as_array().unwrap().len(), 5);
    let (status, page) = op.get("/api/runs?chain=demo_diamond&status=completed&limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!((page["total"].as_i64(), page["limit"].as_i64()), (Some(1), Some(1)));
    assert_eq!(page["runs"][0]["id"], run_id.as_str());
    assert_eq!(page["runs"][0]["steps"][0]["step"], "start", "the list carries the steps");
    let (_, empty) = op.get("/api/runs?integration=nobody").await;
    assert_eq!((empty["total"].as_i64(), empty["runs"].as_array().unwrap().len()), (Some(0), 0));
    let (status, errors) = op.get(&format!("/api/runs/{run_id}/errors")).await;
    assert_eq!((status, errors), (200, json!([])));

    // A single step on its own.
    let (status, single) =
        op.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "step": "join" })).await;
    assert_eq!(status, 201, "{single}");
    let single = env.wait(single["run_id"].as_str().unwrap().parse().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(single.status, "completed");
    assert_eq!(single.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(), ["join"]);

    // 404s.
    let missing = "0192f0c4-0000-7000-8000-000000000000";
    for path in [format!("/api/runs/{missing}"), format!("/api/runs/{missing}/errors")] {
        let (status, body) = op.get(&path).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{path}");
    }
    for path in [format!("/api/runs/{missing}/resume"), format!("/api/runs/{missing}/cancel")] {
        assert_eq!(op.post(&path, json!({})).await.0, 404, "{path}");
    }
    let (status, body) = op.post("/api/chains/nope/runs", json!({ "integration": "acme" })).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("unknown chain `nope`")));
    let (status, body) = op.post("/api/chains/demo_diamond/runs", json!({ "integration": "nobody" })).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("unknown integration `nobody`")));

    // Bad input: 400 naming the field.
    let bad: &[(&str, Value, &str)] = &[
        ("/api/chains/demo_diamond/runs", json!({}), "integration"),
        ("/api/chains/demo_diamond/runs", json!({ "integration": 7 }), "integration"),
        ("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "mode": "sideways" }), "mode:"),
        ("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "step": "nope" }), "step:"),
        ("/api/chains/demo_diamond/runs", json!({ "integration": "acme", "colour": "red" }), "colour"),
    ];
    for (path, body, field) in bad {
        let (status, answer) = op.post(path, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{body}: {answer} should name {field}");
    }
    for (query, field) in [
        ("status=sideways", "status:"),
        ("limit=0", "limit:"),
        ("limit=many", "limit"),
        ("offset=-1", "offset:"),
        ("colour=red", "colour"),
    ] {
        let (status, answer) = op.get(&format!("/api/runs?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{query}: {answer}");
    }
    let (status, answer) = op.get("/api/runs/not-a-uuid").await;
    assert_eq!(status, 400);
    assert!(answer["message"].as_str().unwrap().starts_with("id:"), "{answer}");
    let (status, answer) = op.post("/api/runs/not-a-uuid/resume", json!({})).await;
    assert!(status == 400 && answer["message"].as_str().unwrap().starts_with("id:"), "{answer}");
    // Text PostgreSQL cannot store is bad input, not a server error.
    let (status, answer) = op.post("/api/chains/demo_diamond/runs", json!({ "integration": "ac\0me" })).await;
    assert_eq!(status, 400, "{answer}");
    // A completed run cannot be cancelled.
    let (status, answer) = op.post(&format!("/api/runs/{run_id}/cancel"), json!({})).await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("wrong_state")));

    // Resume: a run failed by its settings completes once they are fixed, through the API alone.
    let admin = env.api(&producer, "admin").await;
    let broken = json!({ "settings": { "step_ms": 0, "fail": { "left": "always" } } });
    assert_eq!(admin.put("/api/integrations/acme", broken).await.0, 200);
    let (_, created) = op.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    let failed = created["run_id"].as_str().unwrap().to_owned();
    assert_eq!(env.wait(failed.parse().unwrap(), Duration::from_secs(60)).await.status, "failed");
    assert_eq!(admin.put("/api/integrations/acme", json!({ "settings": { "step_ms": 0 } })).await.0, 200);
    let (status, answer) = op.post(&format!("/api/runs/{failed}/resume"), json!({})).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("running")), "{answer}");
    let resumed = env.wait(failed.parse().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(resumed.status, "completed");
    assert_eq!(resumed.steps.iter().find(|s| s.step == "start").unwrap().attempts, 1, "start was not repeated");

    // Cancel: a slow run stops where it is.
    assert_eq!(
        admin.put("/api/integrations/acme", json!({ "settings": { "step_ms": 0, "slow": { "start": 3000 } } })).await.0,
        200
    );
    let (_, created) = op.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    let slow = created["run_id"].as_str().unwrap().to_owned();
    let (status, answer) = op.post(&format!("/api/runs/{slow}/cancel"), json!({})).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("cancelled")), "{answer}");
    assert_eq!(op.get(&format!("/api/runs/{slow}")).await.1["status"], "cancelled");

    // The chains and their steps, as the dashboard draws them.
    let (status, chains) = op.get("/api/chains").await;
    assert_eq!(status, 200);
    let diamond = chains.as_array().unwrap().iter().find(|c| c["name"] == "demo_diamond").unwrap();
    let join = diamond["steps"].as_array().unwrap().iter().find(|s| s["name"] == "join").unwrap();
    assert_eq!(join["prerequisites"], json!(["left", "right"]));

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_queue_gets_nothing_new_until_it_resumes() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let op = env.api(&producer, "operator").await;

    let (status, body) = op.post("/api/queues/demo/pause", json!({})).await;
    assert_eq!((status, &body), (200, &json!({ "queue": "demo", "paused": true, "changed": true })));
    assert_eq!(op.post("/api/queues/demo/pause", json!({})).await.1["changed"], false);
    let (status, body) = op.post("/api/queues/nope/pause", json!({})).await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().starts_with("unknown queue `nope` (queues: demo, "), "{body}");

    let (_, created) = op.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, run) = op.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["steps"][0]["status"], "ready");
    let undispatched: i64 =
        env.value("SELECT count(*) FROM step_runs WHERE status = 'ready' AND dispatched_at IS NULL").await;
    assert_eq!(undispatched, 1, "the ready step stays in PostgreSQL");
    let (_, queues) = op.get("/api/queues").await;
    assert_eq!(queues[0]["paused"], true);
    assert_eq!((queues[0]["ready"].as_i64(), queues[0]["inflight"].as_i64()), (Some(0), Some(0)), "{queues}");

    let (status, body) = op.post("/api/queues/demo/resume", json!({})).await;
    assert_eq!((status, body["changed"].as_bool()), (200, Some(true)));
    let run = env.wait(run_id.parse().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(run.status, "completed");
    assert_eq!(op.get("/api/queues").await.1[0]["paused"], false);

    let admin = env.api(&producer, "admin").await;
    let (_, audit) = admin.get("/api/audit").await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("queue.resume", "demo"), ("run.trigger", run_id.as_str()), ("queue.pause", "demo"), ("queue.pause", "demo")]
    );
    assert!(audit[0]["actor"].as_str().unwrap().starts_with("token:operator-"), "{audit}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_are_stored_with_the_minimum_enforced_and_show_their_next_run() {
    let env =
        TestEnv::with_top_level("min_interval_secs = 60", "[schedules.demo_diamond.acme]\ninterval_secs = 3600\n")
            .await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;

    let (status, s) = admin.get("/api/chains/demo_diamond/schedule?integration=acme").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["interval_secs"].as_i64(), s["source"].as_str()), (Some(3600), Some("config")));
    let next: chrono::DateTime<chrono::Utc> = serde_json::from_value(s["next_at"].clone()).unwrap();
    assert!(next > chrono::Utc::now() && next <= chrono::Utc::now() + chrono::Duration::seconds(3600));

    let (status, s) =
        admin.put("/api/chains/demo_diamond/schedule", json!({ "integration": "acme", "cron": "0 0 2 * * *" })).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["cron"].as_str(), s["source"].as_str()), (Some("0 0 2 * * *"), Some("stored")));
    let next: chrono::DateTime<chrono::Utc> = serde_json::from_value(s["next_at"].clone()).unwrap();
    assert_eq!(next.format("%H:%M:%S").to_string(), "02:00:00");
    assert!(s["updated_by"].as_str().unwrap().starts_with("token:admin-"));
    let (_, all) = admin.get("/api/schedules").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "the stored value replaces the configured one: {all}");

    for (body, field) in [
        (
            json!({ "integration": "acme", "interval_secs": 10 }),
            "interval_secs: interval 10s is below the minimum of 60s",
        ),
        (json!({ "integration": "acme", "cron": "* * * * * *" }), "cron: cron `* * * * * *` fires every 1s"),
        (json!({ "integration": "acme", "cron": "whenever" }), "cron: bad cron"),
        (json!({ "integration": "acme", "interval_secs": 60, "cron": "0 0 2 * * *" }), "either interval_secs or cron"),
        (json!({ "integration": "acme", "interval_secs": "hourly" }), "interval_secs"),
        (json!({ "interval_secs": 600 }), "integration"),
    ] {
        let (status, answer) = admin.put("/api/chains/demo_diamond/schedule", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{body}: {answer}");
    }
    let (status, _) =
        admin.put("/api/chains/nope/schedule", json!({ "integration": "acme", "interval_secs": 600 })).await;
    assert_eq!(status, 404);
    let (status, _) =
        admin.put("/api/chains/demo_diamond/schedule", json!({ "integration": "nobody", "interval_secs": 600 })).await;
    assert_eq!(status, 404);
    let (status, _) = admin.get("/api/chains/demo_diamond/schedule?integration=nobody").await;
    assert_eq!(status, 404);
    let (status, answer) = admin.get("/api/chains/demo_diamond/schedule").await;
    assert!(status == 400 && answer["message"].as_str().unwrap().contains("integration"), "{answer}");

    // Switched off: no next run.
    let (status, s) =
        admin.put("/api/chains/demo_diamond/schedule", json!({ "integration": "acme", "enabled": false })).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!((s["enabled"].as_bool(), &s["next_at"]), (Some(false), &Value::Null));

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn integrations_are_managed_with_secrets_only_by_reference() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;

    let (status, created) =
        admin.post("/api/integrations", json!({ "name": "beta", "pack": "demo", "settings": { "step_ms": 5 } })).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["name"].as_str(), created["enabled"].as_bool()), (Some("beta"), Some(true)));
    let (status, body) = admin.post("/api/integrations", json!({ "name": "beta", "pack": "demo" })).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));

    let http_json = json!({
        "base_url": "http://127.0.0.1:9/api",
        "auth": { "kind": "bearer", "secret": "inline-secret-value" },
        "entities": { "items": { "path": "/items", "table": "beta_items", "id": "id",
                                 "columns": { "name": { "path": "name", "type": "text" } } } }
    });
    for (body, field) in [
        (
            json!({ "name": "gamma", "pack": "http-json", "settings": http_json }),
            "settings.auth.secret: inline secrets",
        ),
        (json!({ "name": "gamma", "pack": "mystery" }), "pack: unknown pack `mystery`"),
        (json!({ "name": "Not Valid", "pack": "demo" }), "name: `Not Valid` is not a valid integration name"),
        (json!({ "name": "gamma" }), "missing field `pack`"),
        (json!({ "name": "gamma", "pack": "demo", "settings": [] }), "settings: expected an object"),
        (json!({ "name": "gamma", "pack": "demo", "webhook_secret_ref": "hunter2" }), "webhook_secret_ref: expected"),
        (json!({ "name": "gamma", "pack": "demo", "shiny": true }), "shiny"),
        (json!({ "name": "gamma", "pack": "demo", "settings": { "a": { "b\0": 1 } } }), "settings.a.b"),
        (json!({ "name": "gamma", "pack": "demo", "settings": { "label": "x\0y" } }), "settings.label: text may not"),
        (json!({ "pack": "demo" }), "name"),
    ] {
        let (status, answer) = admin.post("/api/integrations", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{body}: {answer} should contain {field}");
    }
    let stored: i64 = env.value("SELECT count(*) FROM integrations WHERE name = 'gamma'").await;
    assert_eq!(stored, 0, "nothing was stored by a refused request");

    // Update, read back, disable; a disabled integration gets no runs.
    let (status, updated) = admin
        .put(
            "/api/integrations/beta",
            json!({ "settings": { "step_ms": 9 }, "webhook_secret_ref": "env:SYNCFLEET_SECRET_BETA_HOOK" }),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["settings"]["step_ms"].as_i64(), updated["webhook_secret_ref"].as_str()),
        (Some(9), Some("env:SYNCFLEET_SECRET_BETA_HOOK"))
    );
    let (status, one) = admin.get("/api/integrations/beta").await;
    assert_eq!((status, one["settings"]["step_ms"].as_i64()), (200, Some(9)));
    let (status, _) = admin.put("/api/integrations/nobody", json!({ "enabled": true })).await;
    assert_eq!(status, 404);
    assert_eq!(admin.get("/api/integrations/nobody").await.0, 404);
    assert_eq!(admin.post("/api/integrations/nobody/disable", json!({})).await.0, 404);
    let (status, answer) = admin.put("/api/integrations/beta", json!({ "enabled": "yes" })).await;
    assert!(status == 400 && answer["message"].as_str().unwrap().contains("enabled"), "{answer}");
    let (status, disabled) = admin.post("/api/integrations/beta/disable", json!({})).await;
    assert_eq!((status, disabled["enabled"].as_bool()), (200, Some(false)));
    let (status, refused) = admin.post("/api/chains/demo_ping/runs", json!({ "integration": "beta" })).await;
    assert_eq!((status, refused["message"].as_str()), (422, Some("integration `beta` is disabled")));

    // Lists never carry a secret value, not even one a config file put inline.
    let mut from_config = http_json.clone();
    from_config["entities"]["items"]["table"] = json!("config_items");
    syncfleet_store::upsert_integration(&env.pool, "from-config", "http-json", &from_config).await.unwrap();
    let (_, list) = admin.get("/api/integrations").await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "beta", "from-config"]);
    assert!(!list.to_string().contains("inline-secret-value"), "{list}");
    assert_eq!(list[2]["settings"]["auth"]["secret"], "<redacted>");
    let (_, one) = admin.get("/api/integrations/from-config").await;
    assert_eq!(one["settings"]["auth"]["secret"], "<redacted>");

    let (_, audit) = admin.get("/api/audit?limit=3").await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["integration.disable", "integration.update", "integration.create"]);
    let (status, answer) = admin.get("/api/audit?limit=0").await;
    assert!(status == 400 && answer["message"].as_str().unwrap().starts_with("limit:"), "{answer}");

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_show_the_step_they_are_running_and_tokens_round_trip() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0, "slow": { "start": 3000 } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("busy").await;
    let admin = env.api(&producer, "admin").await;

    let (_, created) = admin.post("/api/chains/demo_diamond/runs", json!({ "integration": "acme" })).await;
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let workers = env
        .eventually(Duration::from_secs(10), "the worker runs `start`", || {
            let admin = admin.clone();
            async move {
                let (_, w) = admin.get("/api/workers").await;
                (w[0]["current"][0]["step"] == "start").then_some(w)
            }
        })
        .await;
    assert_eq!(workers.as_array().unwrap().len(), 1);
    assert_eq!(workers[0]["name"], worker.name.as_str());
    let queues: Vec<&str> = workers[0]["queues"].as_array().unwrap().iter().map(|q| q.as_str().unwrap()).collect();
    assert!(queues.contains(&"demo") && queues.contains(&"sync"), "a worker serves every queue: {queues:?}");
    assert_eq!(workers[0]["current"][0]["run_id"], run_id.as_str());

    // Tokens: create, list (no secrets), 400 naming the field, 404 on revoking an unknown one.
    let (status, t) = admin.post("/api/tokens", json!({ "name": "ci-bot", "role": "operator" })).await;
    assert_eq!(status, 201, "{t}");
    assert!(t["token"].as_str().unwrap().starts_with(&format!("sf_{}_", t["key"].as_str().unwrap())));
    let (_, list) = admin.get("/api/tokens").await;
    assert!(list.as_array().unwrap().iter().any(|k| k["name"] == "ci-bot" && k["role"] == "operator"));
    assert!(!list.to_string().contains(t["token"].as_str().unwrap()));
    for (body, field) in [
        (json!({ "name": "ci-bot", "role": "viewer" }), "name: a token named `ci-bot` already exists"),
        (json!({ "name": "x", "role": "root" }), "role"),
        (json!({ "name": "has space", "role": "viewer" }), "name: `has space` is not a valid token name"),
        (json!({ "role": "viewer" }), "name"),
    ] {
        let (status, answer) = admin.post("/api/tokens", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(field), "{body}: {answer}");
    }
    assert_eq!(admin.delete("/api/tokens/nobody").await.0, 404);
    let bot = admin.with_token(t["token"].as_str().map(str::to_owned));
    assert_eq!(bot.get("/api/whoami").await.1["role"], "operator");

    env.wait(run_id.parse().unwrap(), Duration::from_secs(30)).await;
    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_drives_the_same_operations_and_is_audited() {
    let env = TestEnv::with_top_level("min_interval_secs = 60", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let run = |args: &'static [&'static str]| {
        let mut c = env.cli();
        c.args(args);
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = run(&["tokens", "create", "--name", "ops", "--role", "admin", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let token: Value = serde_json::from_str(&out).unwrap();
    let producer = env.spawn_producer().await;
    let api = Api::new(&producer, token["token"].as_str().map(str::to_owned));
    assert_eq!(api.get("/api/whoami").await.1, json!({ "name": "ops", "role": "admin" }));

    let (code, out, err) = run(&["queue", "pause", "demo"]).await;
    assert_eq!((code, out.trim()), (Some(0), "queue demo paused"), "{err}");
    let (_, out, _) = run(&["queues", "--json"]).await;
    let q: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q[0]["paused"], true);
    let (code, _, err) = run(&["queue", "resume", "nope"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown queue `nope`"), "{err}");
    run(&["queue", "resume", "demo"]).await;

    let (code, out, err) =
        run(&["schedule", "set", "demo_diamond", "--integration", "acme", "--interval-secs", "3600"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("next run"), "{out}");
    let (code, _, err) =
        run(&["schedule", "set", "demo_diamond", "--integration", "acme", "--interval-secs", "1"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("interval_secs: interval 1s is below the minimum"), "{err}");
    let (_, out, _) = run(&["schedule", "get", "demo_diamond", "--json"]).await;
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s[0]["interval_secs"].as_i64(), s[0]["source"].as_str()), (Some(3600), Some("stored")));

    let (_, out, _) = run(&["integrations", "--json"]).await;
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["name"], "acme");
    let (code, out, _) = run(&["workers", "--json"]).await;
    assert_eq!((code, serde_json::from_str::<Value>(&out).unwrap()), (Some(0), json!([])));
    let (code, out, _) = run(&["tokens", "list"]).await;
    assert!(code == Some(0) && out.contains("ops") && out.contains("admin"), "{out}");
    let (code, out, _) = run(&["tokens", "revoke", "ops"]).await;
    assert_eq!((code, out.trim()), (Some(0), "token ops revoked"));
    assert_eq!(api.get("/api/whoami").await.0, 401);

    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM audit_log ORDER BY id").fetch_all(&env.pool).await.unwrap();
    let actions: Vec<&str> = actions.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(actions, ["token.create", "queue.pause", "queue.resume", "schedule.set", "token.revoke"]);
    let actor: String = env.value("SELECT actor FROM audit_log ORDER BY id LIMIT 1").await;
    assert!(actor.starts_with("cli:"), "{actor}");

    producer.stop().await;
    env.finish().await;
}
