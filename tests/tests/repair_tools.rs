//! Operator tools for data repair: `sweep preview` (what a full run would deactivate now, and the
//! guard's decision) and `cursor reset` (the next incremental run reads from a time), through the
//! CLI and the admin API, each audited, against the sandbox ERP.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::{RunView, StepView};
use syncfleet_tests::{Sandbox, TestEnv, erp_integration_toml};

const SYNC: &str = "http_json_sync";

fn step(view: &RunView) -> &StepView {
    view.steps.iter().find(|s| s.step == "pull").expect("pull step")
}

/// Runs the CLI with `args`; its stdout as JSON.
async fn cli_json(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.cli().args(args).output().await.expect("run syncfleet (build it: cargo build --bins)");
    assert!(out.status.success(), "syncfleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// (actor, target, detail) of the audit rows of `action`, oldest first.
async fn audit(env: &TestEnv, action: &str) -> Vec<(String, String, Value)> {
    sqlx::query_as("SELECT actor, target, detail FROM audit_log WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Active / inactive external ids of `erp_items`.
async fn inactive(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar("SELECT external_id FROM erp_items WHERE NOT is_active ORDER BY external_id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = v[key].as_array().unwrap().iter().map(|i| i.to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweep_preview_lists_exactly_what_a_forced_full_run_deactivates() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "")).await;
    let worker = env.spawn_worker("w").await;
    let producer = env.spawn_producer().await;
    let preview = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let mut all = vec!["sweep", "preview", SYNC, "--integration", "erp", "--json"];
            all.extend_from_slice(args);
            cli_json(env, &all).await
        }
    };

    // Before any full run, nothing can be told.
    let p = preview(&[]).await;
    assert!(p["last_full_read"].is_null() && p["tables"].as_array().unwrap().is_empty(), "{p:#}");
    assert!(p["note"].as_str().unwrap().contains("no completed full run"), "{p:#}");

    let first = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    assert_eq!(step(&first).inserted, 250);
    let p = preview(&["--entity", "items"]).await;
    assert_eq!(p["last_full_read"]["run_id"], json!(first.id));
    let t = &p["tables"][0];
    assert_eq!(
        (t["table"].as_str(), t["active"].as_i64(), t["would_deactivate"].as_i64()),
        (Some("erp_items"), Some(250), Some(0))
    );
    assert_eq!(t["decision"], "nothing");

    // 50 of 250 deleted upstream: the full run's guard refuses (20 % > 15 %) and the rows stay.
    let deleted = ids(&sandbox.mutate("erp", "items", json!({ "delete": 50 })).await, "deleted");
    let refused = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    assert!(step(&refused).guard.as_deref().unwrap().starts_with("blocked: 50 of 250"), "{refused:#?}");
    assert!(inactive(&env).await.is_empty());

    // The preview lists those 50 and the guard's decision, before anyone forces it.
    let before = audit(&env, "sweep.preview").await.len();
    let p = preview(&["--entity", "items"]).await;
    assert_eq!(audit(&env, "sweep.preview").await.len(), before + 1, "one audit row per preview");
    assert_eq!(p["last_full_read"]["run_id"], json!(refused.id));
    assert!(p["last_full_read"]["guard"].as_str().unwrap().starts_with("blocked: "), "{p:#}");
    let tables = p["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1, "{p:#}");
    let t = &tables[0];
    assert_eq!((t["active"].as_i64(), t["would_deactivate"].as_i64()), (Some(250), Some(50)));
    let listed: Vec<String> =
        t["external_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, deleted, "the preview lists exactly the rows deleted upstream");
    assert_eq!(t["decision"], "refused");
    assert_eq!(t["reason"], "50 of 250 active rows (20.0%) would be deactivated, over the 15% limit");
    assert!(p["note"].as_str().unwrap().contains("--force-sweep"));
    let (actor, target, detail) = audit(&env, "sweep.preview").await.pop().unwrap();
    assert!(actor.starts_with("cli:"), "{actor}");
    assert_eq!(target, format!("{SYNC}/erp"));
    assert_eq!(detail["tables"][0]["would_deactivate"], 50);

    // The forced run deactivates exactly the rows the preview listed.
    let forced = env.run_to_end(SYNC, "erp", Mode::Full, true).await;
    assert_eq!(step(&forced).deactivated, 50, "{forced:#?}");
    assert_eq!(inactive(&env).await, listed, "a forced full run deactivates exactly the previewed rows");
    let p = preview(&[]).await;
    assert_eq!(p["tables"][0]["would_deactivate"], 0, "nothing left: {p:#}");

    // The API route needs admin; an admin's preview is audited under the token.
    let operator = env.api(&producer, "operator").await;
    let path = format!("/api/chains/{SYNC}/sweep-preview?integration=erp");
    assert_eq!(operator.get(&path).await.0, 403);
    assert_eq!(operator.with_token(None).get(&path).await.0, 401);
    let before = audit(&env, "sweep.preview").await.len();
    let admin = env.api(&producer, "admin").await;
    let (status, body) = admin.get(&format!("{path}&entity=erp_items")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tables"][0]["table"], "erp_items");
    let rows = audit(&env, "sweep.preview").await;
    assert_eq!(rows.len(), before + 1);
    assert!(rows.last().unwrap().0.starts_with("token:admin-"));
    assert_eq!(admin.get(&format!("{path}&entity=nope")).await.0, 404);
    assert_eq!(admin.get("/api/chains/nope/sweep-preview?integration=erp").await.0, 404);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// external id → quantity of the active rows.
async fn quantities(env: &TestEnv) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT external_id, quantity FROM erp_items WHERE is_active")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_reset_makes_the_next_incremental_run_read_again_from_that_time() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "")).await;
    sqlx::query("UPDATE integrations SET settings = jsonb_set(settings, '{entities,items,lookback_secs}', '0')")
        .execute(&env.pool)
        .await
        .unwrap();
    let worker = env.spawn_worker("w").await;
    let producer = env.spawn_producer().await;
    assert_eq!(env.run_to_end(SYNC, "erp", Mode::Full, false).await.status, "completed");

    // Records change upstream (set A, then a second later set B) and an incremental run reads
    // them; once past the cursor's margin, the cursor lands on B's change time.
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let a = ids(&sandbox.mutate("erp", "items", json!({ "change_percent": 4 })).await, "changed");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let b = ids(&sandbox.mutate("erp", "items", json!({ "change_percent": 2 })).await, "changed");
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let read = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    let both: std::collections::BTreeSet<&String> = a.iter().chain(&b).collect();
    assert_eq!(step(&read).updated as usize, both.len(), "{read:#?}");
    let upstream = quantities(&env).await;

    // A's rows are then damaged locally (a bad manual fix): an incremental run from the cursor
    // reads only what changed at or after it (B), not A again.
    let damaged: Vec<String> = a.iter().filter(|id| !b.contains(id)).cloned().collect();
    assert!(damaged.len() >= 5, "{a:?} {b:?}");
    sqlx::query("UPDATE erp_items SET quantity = -1 WHERE external_id = ANY($1)")
        .bind(&damaged)
        .execute(&env.pool)
        .await
        .unwrap();
    let plain = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    assert_eq!(step(&plain).fetched as usize, b.len(), "{plain:#?}");
    assert_eq!(step(&plain).updated, 0);
    assert_ne!(quantities(&env).await, upstream);

    // Reset to before the change: the next incremental run reads every record changed since.
    let cursor_before: String = env.value("SELECT value FROM cursors WHERE entity = 'items'").await;
    let since_text = since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let reset = cli_json(&env, &["cursor", "reset", "erp", "items", "--since", &since_text, "--json"]).await;
    assert_eq!(reset["previous"], json!(cursor_before));
    assert_eq!(reset["value"], json!(since_text));
    let rows = audit(&env, "cursor.reset").await;
    assert_eq!(rows.len(), 1, "one audit row");
    assert_eq!(rows[0].1, "erp/items");
    assert_eq!(rows[0].2["previous"], json!(cursor_before));
    let again = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    let s = step(&again);
    assert_eq!(s.cursor_before.as_deref(), Some(since_text.as_str()), "{s:#?}");
    let changed_since: i64 =
        env.value(&format!("SELECT count(*) FROM erp_items WHERE source_updated_at >= '{since_text}'")).await;
    assert_eq!(s.fetched, changed_since, "every record changed since the reset time is read");
    assert_eq!(s.fetched as usize, both.len());
    assert_eq!(s.updated as usize, damaged.len(), "the damaged rows are written again");
    assert_eq!(quantities(&env).await, upstream, "the rows equal the upstream again");

    // An entity without a cursor is refused; the API route needs admin.
    let out = env.cli().args(["cursor", "reset", "erp", "nope"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cursor for `nope` (cursors: items)"));
    let operator = env.api(&producer, "operator").await;
    let path = "/api/integrations/erp/cursors/items/reset";
    assert_eq!(operator.post(path, json!({ "since": since_text })).await.0, 403);
    let admin = env.api(&producer, "admin").await;
    let (status, body) = admin.post(path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["value"].is_null(), "no `since`: the cursor is removed");
    let left: i64 = env.value("SELECT count(*) FROM cursors").await;
    assert_eq!(left, 0);
    assert_eq!(audit(&env, "cursor.reset").await.len(), 2);
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    assert_eq!(admin.post(path, json!({ "since": future })).await.0, 400);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
