//! The chaos suite, the world around the fleet: an upstream that misbehaves (5xx, timeouts, 429
//! storms, pages smaller than asked for, empty lists, malformed items) and a thousand integrations triggered at
//! once, on real worker and producer processes (the fleet's own parts failing: `chaos.rs`). The
//! same checks end every test; what each does and its last result: `tests/CHAOS.md`.

use std::time::{Duration, Instant};

use serde_json::json;
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::RunView;
use syncfleet_tests::{
    Sandbox, TestEnv,
    chaos::{
        self, Cleanup, FANOUT, Fleet, SYNC, Scene, Serial, Setup, assert_fleet_invariants, attempts, finish, size,
    },
};

/// Runs the full or incremental sync of every integration; returns the views.
async fn sync_all(env: &TestEnv, names: &[String], mode: Mode) -> Vec<RunView> {
    let mut runs = vec![];
    for name in names {
        runs.push(env.trigger_with(SYNC, name, mode, false).await);
    }
    chaos::wait_runs(env, &runs, Duration::from_secs(size(90, 300) as u64)).await
}

/// Rows of items the sandbox still serves that are inactive (must be none).
async fn wrongly_inactive(env: &TestEnv, sandbox: &Sandbox) -> i64 {
    let ids: Vec<String> = chaos::sandbox_items(sandbox).await.into_iter().map(|(id, _)| id.to_string()).collect();
    sqlx::query_scalar("SELECT count(*) FROM erp_items WHERE NOT is_active AND external_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Each run completed, or failed cleanly: an error recorded, the cursor not moved, nothing swept.
fn assert_completed_or_failed_cleanly(views: &[RunView]) -> usize {
    let mut failed = 0;
    for v in views {
        let s = &v.steps[0];
        match v.status.as_str() {
            "completed" => {}
            "failed" => {
                failed += 1;
                assert!(v.error.is_some() && s.error.is_some(), "{v:#?}");
                assert_eq!(s.cursor_after, s.cursor_before, "a failed run does not move the cursor: {v:#?}");
                assert_eq!(s.deactivated, 0, "{v:#?}");
            }
            other => panic!("run ended {other}: {v:#?}"),
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_upstream_never_deactivates_a_row_wrongly() {
    let _serial = Serial::acquire().await;
    let n = size(8, 16);
    // Timeout faults hang 2 s; the client gives up after 1 s and tries again.
    let sandbox = Sandbox::start_with(syncfleet_sandbox::SandboxConfig {
        timeout_fault_secs: 2,
        ..syncfleet_sandbox::SandboxConfig::default().unlimited()
    })
    .await;
    let limits = "limits = { timeout_ms = 1000, max_retries = 6, backoff_base_ms = 100, backoff_max_ms = 2000 }";
    let setup = Setup { erps: n, page: 20, erp_extra: limits, latency_ms: 0, demos: 0, step_ms: 0 };
    let scene = Scene::start(&sandbox, setup, async |toml| TestEnv::new(&toml).await).await;
    let (env, erps) = (&scene.env, &scene.erps);
    let storm = json!({ "error_5xx_share": 0.05, "timeout_share": 0.03, "rate_per_sec": 20 });

    // 5 % 5xx, 3 % timeouts and 429 storms (the upstream takes 20 requests/s; the fleet sends more).
    sandbox.faults("erp", storm.clone()).await;
    let first = sync_all(env, erps, Mode::Full).await;
    let mut failed = assert_completed_or_failed_cleanly(&first);
    let counters = sandbox.handle.counters();
    let (throttled, errors) =
        (counters["erp"]["throttled"].as_i64().unwrap(), counters["erp"]["errors_5xx"].as_i64().unwrap());
    let timeouts = counters["erp"]["endpoints"]["GET /erp/api/items"]["timeouts"].as_i64().unwrap_or(0);
    assert!(
        throttled > 0 && errors > 0 && timeouts > 0,
        "the storm happened: {throttled} 429s, {errors} 5xx, {timeouts} timeouts"
    );
    // Upstream: 2 % of the items change and 3 % are deleted; incremental runs under the same storm.
    let deleted = sandbox.mutate("erp", "items", json!({ "change_percent": 2, "delete": size(8, 30) })).await;
    let deleted: Vec<String> = deleted["deleted"].as_array().unwrap().iter().map(|i| i.to_string()).collect();
    sandbox.faults("erp", storm).await;
    failed += assert_completed_or_failed_cleanly(&sync_all(env, erps, Mode::Incremental).await);
    assert_eq!(wrongly_inactive(env, &sandbox).await, 0);

    // Full runs against an empty list and malformed items: they end `partial`, the guard refuses
    // every sweep, nothing is deactivated. After an empty read the cursor stays; after malformed
    // items it may only move back, to just before the earliest failed one.
    let faults = [
        (json!({ "empty_list": true }), "blocked: fetch returned nothing while", true),
        (json!({ "malformed_share": 0.05 }), "blocked: ", false),
    ];
    for (fault, guard, cursor_stays) in faults {
        chaos::clear_erp_faults(&sandbox).await;
        sandbox.faults("erp", fault.clone()).await;
        for v in sync_all(env, erps, Mode::Full).await {
            let s = &v.steps[0];
            assert_eq!(v.status, "partial", "{fault}: a refused sweep ends the run partial: {v:#?}");
            assert!(s.guard.as_deref().unwrap_or("").starts_with(guard), "{fault}: {v:#?}");
            assert_eq!(s.deactivated, 0, "{fault}: {v:#?}");
            if cursor_stays {
                assert_eq!(s.cursor_after, s.cursor_before, "{fault}: the cursor stays");
            } else {
                assert!(s.cursor_after <= s.cursor_before, "{fault}: the cursor does not advance: {s:#?}");
            }
        }
        assert_eq!(wrongly_inactive(env, &sandbox).await, 0, "{fault}");
        let inactive: i64 = env.value("SELECT count(*) FROM erp_items WHERE NOT is_active").await;
        assert_eq!(inactive, 0, "{fault}: nothing is deactivated while the upstream misbehaves");
    }

    // The upstream behaves again, but for pages of half the size asked for (its own page cap): each
    // read goes on from the last item received, so one full run sweeps exactly the deleted items,
    // and the database equals the sandbox.
    chaos::clear_erp_faults(&sandbox).await;
    sandbox.faults("erp", json!({ "truncate_page": true })).await;
    for v in sync_all(env, erps, Mode::Full).await {
        assert_eq!(v.status, "completed", "{v:#?}");
        assert_eq!(v.steps[0].deactivated as usize, deleted.len(), "{v:#?}");
    }
    let mut gone: Vec<String> = sqlx::query_scalar("SELECT DISTINCT external_id FROM erp_items WHERE NOT is_active")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let mut want = deleted.clone();
    gone.sort();
    want.sort();
    assert_eq!(gone, want, "exactly the deleted items are inactive");
    let open: i64 = env.value("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL").await;
    assert_eq!(open, 0, "the malformed items' errors are resolved");
    chaos::assert_matches_sandbox(env, &sandbox, "erp_items", erps).await;
    let report = assert_fleet_invariants(env).await;
    eprintln!("chaos: {throttled} 429s, {errors} 5xx, {timeouts} timeouts, {failed} runs failed cleanly, {report:?}");
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_integrations_triggered_at_once_all_complete_without_wedging() {
    let _serial = Serial::acquire().await;
    let (n, cap) = (size(1000, 3000), 100);
    let chain = if chaos::long() { FANOUT } else { "demo_ping" };
    let env = TestEnv::with_producer(&format!("dispatch_cap = {cap}"), &attempts()).await;
    let cleanup = Cleanup::new(&env);
    chaos::install_logs(&env.owner_pool().await, &[]).await;
    sqlx::query(
        "INSERT INTO integrations (name, pack, settings)
         SELECT format('bulk-%s', lpad(g::text, 5, '0')), 'demo', '{\"step_ms\": 20}' FROM generate_series(1, $1) g",
    )
    .bind(n as i32)
    .execute(&env.pool)
    .await
    .unwrap();
    let mut fleet = Fleet::new(&env);
    fleet.worker_env.push(("SYNCFLEET__WORKER__CONCURRENCY".into(), "8".into()));
    fleet.start_producer();

    // All at once, before any worker runs: Redis takes the cap, PostgreSQL keeps the rest.
    let started = Instant::now();
    let triggers = (1..=n).map(|i| {
        let name = format!("bulk-{i:05}");
        let env = &env;
        async move { env.trigger_with(chain, &name, Mode::Full, false).await }
    });
    let runs: Vec<RunId> = futures::future::join_all(triggers).await;
    let triggered_in = started.elapsed();
    let waiting = env.ops.queues.waiting("demo").await.unwrap();
    assert_eq!(waiting, cap, "the queue holds exactly the cap");
    for _ in 0..3 {
        fleet.start_worker();
    }

    // The queue never holds more than the cap and the fleet never stalls.
    let (mut done, mut last_progress, mut most_waiting) = (0i64, Instant::now(), waiting);
    let limit = Duration::from_secs(size(150, 900) as u64);
    while done < n as i64 {
        let waiting = env.ops.queues.waiting("demo").await.unwrap();
        most_waiting = most_waiting.max(waiting);
        assert!(waiting <= cap, "{waiting} tasks wait in Redis, over the cap of {cap}");
        let now: i64 = env.value("SELECT count(*) FROM chain_runs WHERE status NOT IN ('queued', 'running')").await;
        if now > done {
            (done, last_progress) = (now, Instant::now());
        }
        assert!(last_progress.elapsed() < Duration::from_secs(20), "no run ended for 20 s: wedged at {done} of {n}");
        assert!(started.elapsed() < limit, "{done} of {n} runs ended in {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let views = chaos::wait_runs(&env, &runs, Duration::from_secs(10)).await;
    chaos::assert_all_completed(&views);
    let report = assert_fleet_invariants(&env).await;
    let effects: (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (run_id, step, shard)) FROM demo_effects")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let steps: i64 = env.value("SELECT count(*) FROM step_runs").await;
    assert_eq!(effects, (steps, steps), "every step's effect applied exactly once");
    eprintln!(
        "chaos: {n} runs triggered in {triggered_in:?}, all ended in {elapsed:?}, at most {most_waiting} waiting, {report:?}"
    );
    drop(fleet);
    finish(env, cleanup).await;
}
