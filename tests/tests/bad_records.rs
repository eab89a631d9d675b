//! Bad or odd upstream answers never cost good rows, and a refused sweep is visible (issue #19):
//! a repeated page, a NUL in a text or inside a JSON value, a value too long for an index, bytes that
//! are not UTF-8, string booleans, and a guard refusal that ends the run `partial` with the CLI's
//! partial exit code and a one-line hint. Every case asserts the rows against the sandbox.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_store::views::RunView;
use syncfleet_tests::partner::{acme_toml, impartner_all, northpass_all, s, step};
use syncfleet_tests::{Running, Sandbox, TestEnv, erp_integration_toml};

const DAILY: &str = "partner_daily";

/// The partner integration `acme` with Northpass pages of 25 (300 people: 12 pages) and a worker.
async fn partner_env(sandbox: &Sandbox) -> (TestEnv, Running) {
    let env = TestEnv::new(&acme_toml(sandbox, ", page_size = 25", "")).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// Runs one step of the daily chain on its own, in full mode, and waits for the run to end.
async fn full_step(env: &TestEnv, name: &str) -> RunView {
    env.run_step(DAILY, "acme", name, Mode::Full).await
}

/// `partner_lms_users`: external id → is_active.
async fn people_rows(env: &TestEnv) -> BTreeMap<String, bool> {
    sqlx::query_as::<_, (String, bool)>("SELECT external_id, is_active FROM partner_lms_users")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The people Northpass serves now: id → first name.
async fn upstream_people(sandbox: &Sandbox) -> BTreeMap<String, String> {
    northpass_all(sandbox, "/people").await.iter().map(|p| (s(p, "id"), s(&p["attributes"], "first_name"))).collect()
}

/// The open item errors of `entity`: external id → message.
async fn open_errors(env: &TestEnv, entity: &str) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT external_id, message FROM item_errors WHERE entity = $1 AND resolved_at IS NULL",
    )
    .bind(entity)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn odd(id: &str, field: &str, kind: &str) -> Value {
    json!({ "id": id, "field": field, "kind": kind })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_page_stops_the_sweep_and_the_run_says_why() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = partner_env(&sandbox).await;
    let first = full_step(&env, "sync_users").await;
    assert_eq!(first.status, "completed", "{first:#?}");
    let upstream = upstream_people(&sandbox).await;
    assert!(upstream.len() > 100, "{}", upstream.len());

    // Page 2 answers page 1 again: 25 people (8 %, under the share limit) are never served.
    sandbox.faults("northpass", json!({ "repeat_pages": [2] })).await;
    let run = full_step(&env, "sync_users").await;
    let s = step(&run, "sync_users");
    assert_eq!(run.status, "partial", "{run:#?}");
    assert!(s.partial, "{s:#?}");
    assert_eq!(s.deactivated, 0, "{s:#?}");
    let guard = s.guard.as_deref().unwrap_or("");
    assert!(
        guard.starts_with("blocked: id ")
            && guard.contains("seen twice in one read: the upstream's paging repeated records (25 ids repeated)"),
        "{guard}"
    );
    let hint = run.unapplied_deletions.as_deref().unwrap_or("");
    assert!(hint.starts_with("deletions not applied: sync_users (blocked: id "), "{hint}");
    assert!(hint.contains("--force-sweep") && hint.contains("syncfleet sweep preview partner_daily"), "{hint}");
    // Every person still served upstream keeps an active row.
    let rows = people_rows(&env).await;
    let wrongly_inactive: Vec<&String> = upstream.keys().filter(|id| rows.get(*id) != Some(&true)).collect();
    assert!(wrongly_inactive.is_empty(), "{wrongly_inactive:?}");

    // The paging behaves again: the run completes.
    sandbox.faults("northpass", json!({ "repeat_pages": [] })).await;
    let again = full_step(&env, "sync_users").await;
    assert_eq!(again.status, "completed", "{again:#?}");
    assert!(again.unapplied_deletions.is_none(), "{again:#?}");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_page_in_a_first_load_writes_each_person_once() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = partner_env(&sandbox).await;
    let upstream = upstream_people(&sandbox).await;
    // The first load's page 2 answers page 1 again: its 25 people are listed twice (the second
    // copy is written with the upsert, over the rows page 1 copied), page 2's never.
    sandbox.faults("northpass", json!({ "repeat_pages": [2] })).await;
    let run = full_step(&env, "sync_users").await;
    let s = step(&run, "sync_users");
    assert_eq!(run.status, "partial", "{run:#?}");
    let rows = people_rows(&env).await;
    assert_eq!(rows.len(), upstream.len() - 25, "every person served once has one row");
    assert!(rows.values().all(|active| *active), "{rows:?}");
    assert!(rows.keys().all(|id| upstream.contains_key(id)), "{rows:?}");
    assert_eq!(s.fetched, upstream.len() as i64, "{s:#?}");
    assert_eq!((s.inserted, s.updated, s.unchanged), (rows.len() as i64, 0, 25), "{s:#?}");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_value_is_one_item_error_and_spares_its_row_from_the_sweep() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = partner_env(&sandbox).await;
    let upstream = upstream_people(&sandbox).await;
    let ids: Vec<&String> = upstream.keys().collect();
    let (nul, long, latin1, surrogate) = (ids[3].clone(), ids[10].clone(), ids[20].clone(), ids[30].clone());

    // First load: each odd value costs its own record only.
    sandbox
        .faults(
            "northpass",
            json!({ "odd_values": [
                odd(&long, "attributes.email", "long"),
                odd(&latin1, "attributes.last_name", "latin1"),
                odd(&surrogate, "attributes.first_name", "surrogate"),
            ] }),
        )
        .await;
    let run = full_step(&env, "sync_users").await;
    let s = step(&run, "sync_users");
    assert_eq!((s.fetched, s.inserted, s.errors), (upstream.len() as i64, upstream.len() as i64 - 3, 3), "{run:#?}");
    assert_eq!(run.status, "completed", "{run:#?}");
    let errors = open_errors(&env, "users").await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[&long].contains("field `email`") && errors[&long].contains("2000-byte limit"), "{errors:?}");
    assert!(errors[&latin1].contains("field `last_name`: undecodable text"), "{errors:?}");
    assert!(errors[&surrogate].contains("field `first_name`: undecodable text"), "{errors:?}");
    let rows = people_rows(&env).await;
    assert_eq!(rows.len(), upstream.len() - 3);
    assert!(rows.values().all(|a| *a) && !rows.contains_key(&long) && !rows.contains_key(&latin1));

    // Fixed upstream: they are written and their errors resolved.
    sandbox.faults("northpass", json!({ "odd_values": [] })).await;
    let run = full_step(&env, "sync_users").await;
    assert_eq!(step(&run, "sync_users").inserted, 3, "{run:#?}");
    assert!(open_errors(&env, "users").await.is_empty());

    // A NUL in one person's name while another person is deleted upstream: the full run sweeps the
    // deleted one and keeps the one whose record could not be written.
    let deleted = sandbox.mutate("northpass", "people", json!({ "delete": 1 })).await;
    let deleted = deleted["deleted"][0].as_str().unwrap().to_owned();
    assert_ne!(deleted, nul);
    sandbox.faults("northpass", json!({ "odd_values": [odd(&nul, "attributes.first_name", "nul")] })).await;
    let run = full_step(&env, "sync_users").await;
    let s = step(&run, "sync_users");
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!((s.errors, s.deactivated), (1, 1), "{s:#?}");
    let errors = open_errors(&env, "users").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[&nul].starts_with("field `first_name`: text contains a NUL character"), "{errors:?}");
    let rows = people_rows(&env).await;
    assert!(rows[&nul], "the person whose name failed is still upstream: not deactivated");
    assert!(!rows[&deleted], "the deleted person is swept");
    assert_eq!(rows.values().filter(|a| **a).count(), upstream.len() - 1);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_inside_a_course_property_costs_that_course_only() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = partner_env(&sandbox).await;
    assert_eq!(full_step(&env, "sync_courses").await.status, "completed");
    let courses: Vec<String> = sqlx::query_scalar("SELECT external_id FROM partner_courses ORDER BY external_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    // A course whose properties can be read (some answer 403 in the sandbox).
    let mut bad = None;
    for c in &courses {
        let url = format!("{}/properties/courses/{c}", sandbox.handle.northpass_url());
        let (code, _) = syncfleet_tests::partner::get(&url, &[("X-Api-Key", "np-key")]).await;
        if code == 200 {
            bad = Some(c.clone());
            break;
        }
    }
    let bad = bad.expect("a readable course");
    sandbox.faults("northpass", json!({ "odd_values": [odd(&bad, "attributes.properties.name", "nul")] })).await;
    let run = full_step(&env, "sync_npcu").await;
    let s = step(&run, "sync_npcu");
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!(s.errors, 1, "{s:#?}");
    let errors = open_errors(&env, "npcu").await;
    assert!(
        errors[&bad].starts_with("field `properties`: JSON value at $.name: text contains a NUL character"),
        "{errors:?}"
    );
    let written: i64 = env.value("SELECT count(*) FROM partner_course_npcu").await;
    assert_eq!(written, s.inserted);
    assert!(written > 10, "every other course's NPCU row is written: {written}");

    sandbox.faults("northpass", json!({ "odd_values": [] })).await;
    let run = full_step(&env, "sync_npcu").await;
    let s = step(&run, "sync_npcu");
    assert_eq!((s.inserted, s.errors, s.deactivated), (1, 0, 0), "{s:#?}");
    let now: i64 = env.value("SELECT count(*) FROM partner_course_npcu WHERE is_active").await;
    assert_eq!(now, written + 1);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impartner_string_booleans_are_read_as_booleans() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = partner_env(&sandbox).await;
    let accounts: BTreeMap<String, bool> = impartner_all(&sandbox, "Account")
        .await
        .iter()
        .filter_map(|a| Some((a["id"].to_string(), a["isActive"].as_bool()?)))
        .collect();
    assert!(accounts.values().any(|a| *a) && accounts.values().any(|a| !*a), "both values served: {accounts:?}");
    sandbox.faults("impartner", json!({ "odd_values": [odd("*", "isActive", "string_bool")] })).await;
    let served = impartner_all(&sandbox, "Account").await;
    assert!(served.iter().all(|a| matches!(a["isActive"].as_str(), Some("True" | "False"))), "{:?}", served[0]);

    let run = full_step(&env, "impartner_sync").await;
    let s = step(&run, "impartner_sync");
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!(s.errors, 0, "{s:#?}");
    let rows: BTreeMap<String, bool> =
        sqlx::query_as::<_, (String, bool)>("SELECT external_id, upstream_active FROM partner_partners")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let expected: BTreeMap<String, bool> =
        accounts.iter().filter(|(id, _)| rows.contains_key(*id)).map(|(id, a)| (id.clone(), *a)).collect();
    assert!(!rows.is_empty());
    assert_eq!(rows, expected, "every partner row carries the upstream's boolean");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_sweep_ends_the_run_partial_and_the_cli_says_how_to_apply_it() {
    let sandbox = Sandbox::start().await;
    let toml = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "");
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    let cli = |args: Vec<String>| {
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
    let trigger: Vec<String> =
        ["trigger", "http_json_sync", "--integration", "erp", "--mode", "full", "--wait", "--json"]
            .map(String::from)
            .to_vec();
    let (code, out, err) = cli(trigger.clone()).await;
    assert_eq!(code, Some(0), "{out}{err}");

    // 50 of 250 gone upstream (20 %): the guard refuses, the run is partial, exit code 3.
    let deleted = sandbox.mutate("erp", "items", json!({ "delete": 50 })).await;
    assert_eq!(deleted["deleted"].as_array().unwrap().len(), 50);
    let (code, out, err) = cli(trigger.clone()).await;
    assert_eq!(code, Some(3), "the partial exit code: {out}{err}");
    let run: RunView = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(run.status, "partial");
    let active: i64 = env.value("SELECT count(*) FROM erp_items WHERE is_active").await;
    assert_eq!(active, 250, "nothing deactivated");

    let (code, out, err) = cli(vec!["runs".into(), "show".into(), run.id.clone()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let hints: Vec<&str> = out.lines().filter(|l| l.starts_with("deletions not applied:")).collect();
    assert_eq!(hints.len(), 1, "{out}");
    assert!(
        hints[0].starts_with(
            "deletions not applied: pull (blocked: 50 of 250 active rows (20.0%) would be deactivated, over the 15% limit)"
        ) && hints[0].contains("`syncfleet sweep preview http_json_sync --integration erp`")
            && hints[0].contains("`syncfleet trigger http_json_sync --integration erp --mode full --force-sweep`"),
        "{out}"
    );

    // Forced as the hint says: the deletions are applied and the run completes.
    let mut forced = trigger.clone();
    forced.push("--force-sweep".into());
    let (code, out, err) = cli(forced).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let active: i64 = env.value("SELECT count(*) FROM erp_items WHERE is_active").await;
    assert_eq!(active, 200);
    worker.stop().await;
    env.finish().await;
}
