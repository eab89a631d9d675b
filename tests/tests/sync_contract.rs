//! The sync contract against the sandbox ERP, through the generic `http-json` pack declared in the
//! config: incremental reads, cursors, the deletion guard, item errors, single-item sync.

use std::{collections::BTreeMap, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;
use syncfleet_tests::{Running, Sandbox, TestEnv, erp_integration_toml};

const SYNC: &str = "http_json_sync";

/// A test env with one ERP integration `erp` (table `erp_items`, from the migration) and a worker.
async fn erp_env(sandbox: &Sandbox, page_size: u32, extra_toml: &str) -> (TestEnv, Running) {
    let toml = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", page_size, "");
    let env = TestEnv::new(&format!("{toml}\n{extra_toml}")).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

fn step(view: &RunView) -> &syncfleet_store::views::StepView {
    view.steps.iter().find(|s| s.step == "pull").expect("pull step")
}

/// Rows of `erp_items`: external id → (quantity, is_active, updated_at).
async fn rows(env: &TestEnv) -> BTreeMap<String, (Option<i64>, bool, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as::<_, (String, Option<i64>, bool, chrono::DateTime<chrono::Utc>)>(
        "SELECT external_id, quantity, is_active, updated_at FROM erp_items",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, q, a, u)| (id, (q, a, u)))
    .collect()
}

/// Every item the sandbox serves now: id → quantity.
async fn upstream(sandbox: &Sandbox) -> BTreeMap<String, i64> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/items?limit=1000", sandbox.handle.erp_url()))
        .bearer_auth("erp-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["total"].as_i64().unwrap() <= 1000, "the test reads one page");
    body["items"].as_array().unwrap().iter().map(|i| (i["id"].to_string(), i["quantity"].as_i64().unwrap())).collect()
}

async fn assert_in_step(env: &TestEnv, sandbox: &Sandbox) {
    let up = upstream(sandbox).await;
    let local: BTreeMap<String, i64> = rows(env)
        .await
        .into_iter()
        .filter(|(_, (_, active, _))| *active)
        .map(|(id, (q, _, _))| (id, q.unwrap()))
        .collect();
    assert_eq!(local, up, "active rows equal the upstream");
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_run_reads_and_writes_only_what_changed() {
    let sandbox = Sandbox::start().await;
    // Lookback 0: the incremental read starts exactly at the cursor, so the count of fetched items
    // is exactly the count of changed ones.
    let (env, worker) = erp_env(&sandbox, 100, "").await;
    sqlx::query("UPDATE integrations SET settings = jsonb_set(settings, '{entities,items,lookback_secs}', '0')")
        .execute(&env.pool)
        .await
        .unwrap();

    let first = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:#?}");
    let s = step(&first);
    assert_eq!((s.fetched, s.inserted, s.updated, s.unchanged, s.errors), (250, 250, 0, 0, 0), "{s:#?}");
    assert_eq!(s.api_calls, 3, "250 items in pages of 100");
    assert!(s.cursor_after.is_some());
    assert_in_step(&env, &sandbox).await;
    let before = rows(&env).await;

    let changed = ids(&sandbox.mutate("erp", "items", json!({ "change_percent": 1 })).await, "changed");
    assert!(!changed.is_empty());
    // The read is inclusive (`updated_since >= cursor`), so the record(s) at the cursor itself come again.
    let at_cursor: Vec<String> = sqlx::query_scalar(
        "SELECT external_id FROM erp_items WHERE source_updated_at >= (SELECT value::timestamptz FROM cursors)",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(at_cursor.iter().all(|id| !changed.contains(id)));
    sandbox.reset_counters().await;
    let second = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    assert_eq!(second.status, "completed", "{second:#?}");
    let s = step(&second);
    assert_eq!(sandbox.counter("erp", "GET", "/items", "requests").await, 1, "one page of changes");
    assert_eq!(s.fetched as usize, changed.len() + at_cursor.len(), "only the changed records are fetched");
    assert_eq!(s.updated as usize, changed.len());
    assert_eq!((s.inserted, s.unchanged as usize), (0, at_cursor.len()));
    assert_in_step(&env, &sandbox).await;
    let after = rows(&env).await;
    for (id, (_, _, updated_at)) in &after {
        if changed.contains(id) {
            assert!(*updated_at > before[id].2, "changed row {id} has a new updated_at");
        } else {
            assert_eq!(*updated_at, before[id].2, "unchanged row {id} keeps its updated_at");
        }
    }
    // A full run over unchanged data writes no data: everything is unchanged.
    let third = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    let s = step(&third);
    assert_eq!((s.fetched, s.inserted, s.updated, s.unchanged), (250, 0, 0, 250), "{s:#?}");
    assert!(rows(&env).await.iter().all(|(id, (_, _, u))| *u == after[id].2));
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_fails_halfway_leaves_the_cursor_and_the_next_run_catches_up() {
    let sandbox = Sandbox::start().await;
    // Pages of 10; one attempt; a 1 s timeout that slow pages overrun part-way.
    let chains = "[chains.http_json_sync.steps.pull]\nmax_attempts = 1\ntimeout_secs = 1\n";
    let (env, worker) = erp_env(&sandbox, 10, chains).await;
    let first = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:#?}");
    let cursor_before: String = env.value("SELECT value FROM cursors").await;

    let changed = ids(&sandbox.mutate("erp", "items", json!({ "change_percent": 20 })).await, "changed");
    assert!(changed.len() >= 40, "{}", changed.len());
    sandbox.faults("erp", json!({ "latency_ms": 300 })).await;
    let failed = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    assert_eq!(failed.status, "failed", "{failed:#?}");
    assert!(step(&failed).error.as_deref().unwrap_or("").contains("timed out"), "{failed:#?}");
    let cursor_now: String = env.value("SELECT value FROM cursors").await;
    assert_eq!(cursor_now, cursor_before, "a failed run does not move the cursor");
    let partly: i64 = env
        .value(&format!(
            "SELECT count(*) FROM erp_items WHERE updated_at > (SELECT started_at FROM chain_runs WHERE id = '{}')",
            failed.id
        ))
        .await;
    assert!(partly > 0 && (partly as usize) < changed.len(), "the failed run wrote some pages: {partly}");

    sandbox.faults("erp", json!({ "latency_ms": 0 })).await;
    let next = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    assert_eq!(next.status, "completed", "{next:#?}");
    let s = step(&next);
    assert!(s.fetched as usize >= changed.len(), "the next run reads everything since the old cursor");
    assert_eq!(s.updated as usize + partly as usize, changed.len(), "and writes what the failed run missed");
    assert_in_step(&env, &sandbox).await;
    assert_ne!(s.cursor_after, s.cursor_before);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deletion_guard_refuses_bad_sweeps_and_records_why() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = erp_env(&sandbox, 100, "").await;
    let full = |force| env.run_to_end(SYNC, "erp", Mode::Full, force);
    let first = full(false).await;
    assert_eq!(step(&first).guard.as_deref(), Some("swept: 0 of 250 active rows deactivated"));

    // Pages of half the size asked for (the upstream's own page cap, or pages cut short): the read
    // goes on from the last item received, so every item is read and the sweep runs.
    sandbox.faults("erp", json!({ "truncate_page": true })).await;
    let run = full(false).await;
    let s = step(&run);
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!((s.fetched, s.deactivated), (250, 0), "{s:#?}");
    assert_eq!(s.guard.as_deref(), Some("swept: 0 of 250 active rows deactivated"));
    assert!(s.api_calls > 3, "more pages than 3 of 100: {s:#?}");
    sandbox.faults("erp", json!({ "truncate_page": false })).await;

    // An item whose id cannot be read (even ids lose theirs when malformed).
    sandbox.faults("erp", json!({ "malformed_ids": [2] })).await;
    let s = step(&full(false).await).clone();
    assert_eq!(s.guard.as_deref(), Some("blocked: 1 item(s) had no readable id"), "{s:#?}");
    assert_eq!((s.errors, s.deactivated), (1, 0));
    sandbox.faults("erp", json!({ "malformed_ids": [] })).await;

    // More than 15 % gone upstream: refused; forced: exactly the missing rows go.
    let deleted = ids(&sandbox.mutate("erp", "items", json!({ "delete": 50 })).await, "deleted");
    assert_eq!(deleted.len(), 50);
    let s = step(&full(false).await).clone();
    assert_eq!(
        s.guard.as_deref(),
        Some("blocked: 50 of 250 active rows (20.0%) would be deactivated, over the 15% limit"),
        "{s:#?}"
    );
    assert_eq!(s.deactivated, 0);
    assert!(rows(&env).await.values().all(|(_, active, _)| *active));
    let forced = full(true).await;
    let s = step(&forced);
    assert_eq!(s.deactivated, 50);
    assert!(s.guard.as_deref().unwrap().starts_with("forced: swept: 50 of 250"), "{s:#?}");
    let inactive: Vec<String> =
        rows(&env).await.into_iter().filter(|(_, (_, active, _))| !active).map(|(id, _)| id).collect();
    let mut expected = deleted.clone();
    expected.sort();
    assert_eq!(inactive, expected, "exactly the missing rows are deactivated");
    let deleted_at: i64 = env.value("SELECT count(*) FROM erp_items WHERE deleted_at IS NOT NULL").await;
    assert_eq!(deleted_at, 50);

    // They come back upstream: the next full run reactivates them.
    sandbox.control(Method::POST, "/reset", None).await;
    let back = full(false).await;
    let s = step(&back);
    assert_eq!((s.updated, s.deactivated), (50, 0), "{s:#?}");
    assert!(rows(&env).await.values().all(|(_, active, _)| *active));
    let deleted_at: i64 = env.value("SELECT count(*) FROM erp_items WHERE deleted_at IS NOT NULL").await;
    assert_eq!(deleted_at, 0);

    // An empty list while rows are active.
    sandbox.mutate("erp", "items", json!({ "delete": 250 })).await;
    let s = step(&full(false).await).clone();
    assert_eq!(s.guard.as_deref(), Some("blocked: fetch returned nothing while 250 rows are active"));
    assert_eq!(s.cursor_after, s.cursor_before, "an empty read does not move the cursor");
    assert!(rows(&env).await.values().all(|(_, active, _)| *active));
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_item_is_an_item_error_that_the_next_run_retries_and_clears() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = erp_env(&sandbox, 100, "").await;
    // Odd ids keep their id and get `"quantity": "many"`.
    sandbox.faults("erp", json!({ "malformed_ids": [7] })).await;
    let run = env.run_to_end(SYNC, "erp", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let s = step(&run);
    assert_eq!((s.fetched, s.inserted, s.errors), (250, 249, 1), "{s:#?}");
    let (id, message, resolved): (String, String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT external_id, message, resolved_at FROM item_errors WHERE run_id = $1")
            .bind(uuid::Uuid::parse_str(&run.id).unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(id, "7");
    assert_eq!(message, "field `quantity`: expected bigint, got \"many\"");
    assert!(resolved.is_none());
    assert!(!rows(&env).await.contains_key("7"));

    // Still broken: the incremental run reads it again (the cursor stayed before it) and the error stays open.
    let again = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    assert_eq!(step(&again).errors, 1, "{again:#?}");
    let open: i64 = env.value("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL").await;
    assert_eq!(open, 1, "one open error per item, not one per run");

    sandbox.faults("erp", json!({ "malformed_ids": [] })).await;
    let fixed = env.run_to_end(SYNC, "erp", Mode::Incremental, false).await;
    let s = step(&fixed);
    assert_eq!((s.errors, s.inserted), (0, 1), "{s:#?}");
    let open: i64 = env.value("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL").await;
    assert_eq!(open, 0, "the error is cleared");
    assert_in_step(&env, &sandbox).await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_item_sync_goes_through_the_same_mapping_and_upsert() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = erp_env(&sandbox, 100, "").await;
    let producer = env.spawn_producer().await;
    let base = format!("http://{}/api/integrations", producer.addr.unwrap());
    let http = reqwest::Client::new();
    // Webhooks authenticate with the integration's HMAC secret, kept in a file under the
    // deployment's secrets directory that the integration references.
    const KEY: &[u8] = b"s3cret-webhook-s3cret-webhook-s3cret";
    let secrets_dir = env.config.secrets.dir.clone().unwrap();
    std::fs::write(secrets_dir.join("erp-webhook"), [KEY, b"\n"].concat()).unwrap();
    let change = syncfleet_store::integrations::IntegrationChange {
        webhook_secret_ref: Some("file:erp-webhook".into()),
        ..Default::default()
    };
    syncfleet_store::integrations::update(&env.pool, env.ops.registry.as_ref(), "erp", &change).await.unwrap();
    // Signed webhooks v2: each call its own timestamp, so a repeated body is no replay.
    let calls = std::sync::atomic::AtomicI64::new(0);
    let signed = |url: &str, bytes: &[u8]| {
        let at = chrono::Utc::now().timestamp() - calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let u = reqwest::Url::parse(url).unwrap();
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        (at.to_string(), syncfleet_producer::auth::sign(KEY, at, "POST", &path, bytes))
    };
    let post = |path: String, body: Value| {
        let http = http.clone();
        let bytes = serde_json::to_vec(&body).unwrap();
        let (at, signature) = signed(&path, &bytes);
        async move {
            let r = http
                .post(path)
                .header("content-type", "application/json")
                .header("x-syncfleet-timestamp", at)
                .header("x-syncfleet-signature", signature)
                .body(bytes)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Unsigned or wrongly signed: 401, and nothing is written.
    let probe = json!({ "id": 900002, "sku": "SKU-Y", "name": "Unsigned", "quantity": 1, "warehouse": "W1",
                        "updated_at": "2026-11-01T10:00:00Z" });
    let r = http.post(format!("{base}/erp/items/items")).json(&probe).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let now = chrono::Utc::now().timestamp();
    let r = http
        .post(format!("{base}/erp/items/items"))
        .header("x-syncfleet-timestamp", now.to_string())
        .header(
            "x-syncfleet-signature",
            syncfleet_producer::auth::sign(
                b"wrong",
                now,
                "POST",
                "/api/integrations/erp/items/items",
                probe.to_string().as_bytes(),
            ),
        )
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(!rows(&env).await.contains_key("900002"));
    let item = json!({ "id": 900001, "sku": "SKU-X", "name": "Webhook item", "quantity": 5, "warehouse": "W1",
                       "updated_at": "2026-11-01T10:00:00Z" });
    let (status, body) = post(format!("{base}/erp/items/items"), item.clone()).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("inserted")), "{body}");
    assert_eq!(body["external_id"], "900001");
    let (_, body) = post(format!("{base}/erp/items/items"), item.clone()).await;
    assert_eq!(body["outcome"], "unchanged");
    let mut changed = item.clone();
    changed["quantity"] = json!(6);
    let (_, body) = post(format!("{base}/erp/items/items"), changed).await;
    assert_eq!(body["outcome"], "updated");
    assert_eq!(rows(&env).await["900001"].0, Some(6));

    let mut bad = item.clone();
    bad["quantity"] = json!("lots");
    let (status, body) = post(format!("{base}/erp/items/items"), bad).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["message"], "item 900001: field `quantity`: expected bigint, got \"lots\"");
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM item_errors WHERE external_id = '900001' AND resolved_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(open, 1, "a refused webhook record is kept as an item error");
    assert_eq!(rows(&env).await["900001"].0, Some(6), "and changes nothing");

    // Fetch by id from the upstream.
    let (status, body) = post(format!("{base}/erp/items/items?fetch=3"), json!(null)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("inserted")), "{body}");
    assert_eq!(rows(&env).await["3"].0, Some(upstream(&sandbox).await["3"]));
    let (status, _) = post(format!("{base}/erp/items/items?fetch=99999999"), json!(null)).await;
    assert_eq!(status, 502, "the upstream answered 404");

    let (status, body) = post(format!("{base}/erp/items/nope"), item.clone()).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(format!("{base}/missing/items/items"), item.clone()).await;
    assert_eq!(status, 401, "an unknown integration is no different from a bad signature: {body}");
    let (at, signature) = signed(&format!("{base}/erp/items/items"), b"not json");
    let r = http
        .post(format!("{base}/erp/items/items"))
        .header("x-syncfleet-timestamp", at)
        .header("x-syncfleet-signature", signature)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_pull_leaves_the_other_to_finish_with_nothing_lost_or_doubled() {
    let sandbox = Sandbox::start().await;
    // Pages of 25 at 200 ms each: the pull takes about 2 s.
    let toml = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 25, "");
    let env = TestEnv::new(&toml).await;
    let producer = env.spawn_producer().await;
    sandbox.faults("erp", json!({ "latency_ms": 200 })).await;
    let mut victim = env.spawn_worker_process(&format!("victim-{}", env.id));
    let run = env.trigger_with(SYNC, "erp", Mode::Full, false).await;
    env.eventually(Duration::from_secs(30), "some pages written by the victim", || async {
        let n: i64 = env.value("SELECT count(*) FROM erp_items").await;
        (n > 0).then_some(())
    })
    .await;
    syncfleet_tests::signal(&victim, "KILL");
    victim.wait().await.ok();
    let mut survivor = env.spawn_worker_process(&format!("survivor-{}", env.id));

    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let s = step(&view);
    assert_eq!(s.attempts, 2, "the killed attempt counts; the survivor's succeeded");
    assert_eq!(s.fetched, 250);
    assert_eq!(s.inserted + s.updated + s.unchanged, 250, "{s:#?}");
    assert_eq!(s.guard.as_deref(), Some("swept: 0 of 250 active rows deactivated"));
    let rows_total: i64 = env.value("SELECT count(*) FROM erp_items").await;
    assert_eq!(rows_total, 250, "no row doubled");
    assert_in_step(&env, &sandbox).await;
    survivor.kill().await.ok();
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_load_meets_a_row_written_meanwhile_and_upserts_it() {
    let sandbox = Sandbox::start().await;
    // Pages of 25 at 150 ms each: the first load writes its pages as new rows, one `COPY` each.
    let (env, worker) = erp_env(&sandbox, 25, "").await;
    sandbox.faults("erp", json!({ "latency_ms": 150 })).await;
    let up = upstream(&sandbox).await;
    let last = up.keys().max_by_key(|id| id.parse::<i64>().unwrap()).unwrap().clone();
    let run = env.trigger(SYNC, "erp").await;
    env.eventually(Duration::from_secs(30), "the first page written", || async {
        let n: i64 = env.value("SELECT count(*) FROM erp_items").await;
        (n > 0).then_some(())
    })
    .await;
    // Meanwhile a row of the last page appears (as a webhook would write it), with a stale quantity.
    let written: u64 = sqlx::query(
        "INSERT INTO erp_items (integration_id, external_id, quantity)
         SELECT id, $1, -1 FROM integrations WHERE name = 'erp'",
    )
    .bind(&last)
    .execute(&env.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(written, 1);

    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let s = step(&view);
    assert_eq!(s.attempts, 1, "{s:#?}");
    assert_eq!((s.fetched, s.inserted, s.updated, s.unchanged), (250, 249, 1, 0), "{s:#?}");
    let rows_total: i64 = env.value("SELECT count(*) FROM erp_items").await;
    assert_eq!(rows_total, 250, "no row doubled");
    assert_in_step(&env, &sandbox).await;
    assert_ne!(rows(&env).await[&last].0, Some(-1), "the row written meanwhile took the upstream's values");
    worker.stop().await;
    env.finish().await;
}
