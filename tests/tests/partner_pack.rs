//! The `partner` pack against the sandbox at `small` scale: every synced row is checked against the
//! sandbox's own data, read through its APIs (Northpass, Impartner) the way a client would.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_tests::partner::{acme_toml, impartner_all, northpass_all, s, step};
use syncfleet_tests::{Running, Sandbox, TestEnv};

const DAILY: &str = "partner_daily";
const IMPARTNER: &str = "partner_impartner";

async fn env_with(sandbox: &Sandbox, northpass_extra: &str, extra_toml: &str) -> (TestEnv, Running) {
    let env = TestEnv::new(&format!("{}\n{extra_toml}", acme_toml(sandbox, northpass_extra, ""))).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// The filters the issue names, written out independently of the pack.
fn expected_partner(a: &Value) -> bool {
    !a["partner_Tier__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("pending"))
        && !a["account_Status__cf"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("inactive"))
}

fn expected_contact(u: &Value) -> bool {
    let email = s(u, "email").to_lowercase();
    !email.ends_with("@nintex.com") && !email.starts_with("test.user")
}

async fn rows(env: &TestEnv, sql: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let rows: Vec<(String, Vec<Option<String>>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn courses_and_npcu_equal_the_sandbox_full_then_incremental() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    // Courses: every sandbox course, field by field.
    let courses = northpass_all(&sandbox, "/courses").await;
    assert_eq!(courses.len(), 30);
    let expected: BTreeMap<String, Vec<Option<String>>> = courses
        .iter()
        .map(|c| {
            let a = &c["attributes"];
            (s(c, "id"), vec![Some(s(a, "name")), Some(s(a, "status")), Some(a["published"].to_string())])
        })
        .collect();
    let local =
        rows(&env, "SELECT external_id, ARRAY[name, status, published::text] FROM partner_courses WHERE is_active")
            .await;
    assert_eq!(local, expected, "courses equal the sandbox's");
    let c = step(&run, "sync_courses");
    assert_eq!((c.fetched, c.inserted, c.errors), (30, 30, 0), "{c:#?}");

    // NPCU: every course whose single properties call answers, with its value; the 403s skipped.
    let http = reqwest::Client::new();
    let (mut npcu, mut forbidden) = (BTreeMap::new(), BTreeSet::new());
    for c in &courses {
        let id = s(c, "id");
        let resp = http
            .get(format!("{}/properties/courses/{id}", sandbox.handle.northpass_url()))
            .header("X-Api-Key", "np-key")
            .send()
            .await
            .unwrap();
        if resp.status() == 403 {
            forbidden.insert(id);
            continue;
        }
        let body: Value = resp.json().await.unwrap();
        let value = body.pointer("/data/attributes/properties/npcu").and_then(Value::as_str).map(str::to_owned);
        npcu.insert(id, vec![value]);
    }
    let counts = &sandbox.handle.info()["counts"]["northpass"];
    assert_eq!(forbidden.len() as i64, counts["courses_properties_forbidden"].as_i64().unwrap());
    assert_eq!(forbidden.len(), 2, "the small scale has two courses whose properties answer 403");
    let with_npcu = npcu.values().filter(|v| v[0].as_deref().is_some_and(|n| n != "0")).count() as i64;
    assert_eq!(with_npcu, counts["courses_with_npcu"].as_i64().unwrap());
    let local = rows(&env, "SELECT external_id, ARRAY[npcu::text] FROM partner_course_npcu WHERE is_active").await;
    assert_eq!(local, npcu, "NPCU values equal the sandbox's");
    let n = step(&run, "sync_npcu");
    assert_eq!(n.status, "succeeded");
    assert_eq!((n.fetched, n.inserted, n.errors), (28, 28, 0), "{n:#?}");
    assert_eq!(n.api_calls, 30, "one properties call per course");
    assert!(n.guard.as_deref().unwrap_or("").contains("skipped: 2 course(s)"), "{n:#?}");

    // Incremental: only the changed courses are read again (plus those at the cursor itself).
    let changed = sandbox.mutate("northpass", "courses", json!({"change_percent": 10})).await;
    let changed: BTreeSet<String> =
        changed["changed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(changed.len(), 3);
    let run = env.run_to_end(DAILY, "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    // The chain reads Impartner in full in every run unless the trigger says otherwise.
    let i = step(&run, "impartner_sync");
    assert_eq!((i.mode.as_deref(), step(&run, "sync_users").mode.as_deref()), (Some("full"), Some("incremental")));
    assert!(i.guard.as_deref().unwrap_or("").contains("swept"), "{i:#?}");
    let c = step(&run, "sync_courses");
    assert_eq!((c.inserted, c.updated), (0, 3), "{c:#?}");
    assert!(c.fetched < 30 && c.fetched >= 3, "{c:#?}");
    let n = step(&run, "sync_npcu");
    let readable_changed = changed.iter().filter(|id| !forbidden.contains(*id)).count() as i64;
    assert!(n.fetched >= readable_changed && n.fetched < 28, "{n:#?}");
    assert_eq!(n.updated, 0, "NPCU values did not change: {n:#?}");
    let now_changed: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM partner_courses WHERE source_updated_at > '2026-01-01'")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(now_changed, changed, "the changed courses carry their new change time");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impartner_sync_filters_and_soft_deletes_in_full_and_incremental_mode() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let run = env.run_to_end(IMPARTNER, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    let check = |label: &'static str| {
        let (env, sandbox) = (&env, &sandbox);
        async move {
            let accounts = impartner_all(sandbox, "Account").await;
            let expected: BTreeMap<String, Vec<Option<String>>> = accounts
                .iter()
                .filter(|a| expected_partner(a))
                .map(|a| {
                    (a["id"].to_string(), vec![Some(s(a, "name")), a["partner_Tier__cf"].as_str().map(str::to_owned)])
                })
                .collect();
            let local = rows(env, "SELECT external_id, ARRAY[name, tier] FROM partner_partners WHERE is_active").await;
            assert_eq!(local, expected, "{label}: active partners equal the sandbox's, filtered");
            let users = impartner_all(sandbox, "User").await;
            let expected: BTreeMap<String, Vec<Option<String>>> = users
                .iter()
                .filter(|u| expected_contact(u))
                .map(|u| (u["id"].to_string(), vec![Some(s(u, "email")), Some(u["accountId"].to_string())]))
                .collect();
            let local =
                rows(env, "SELECT external_id, ARRAY[email, partner_id] FROM partner_contacts WHERE is_active").await;
            assert_eq!(local, expected, "{label}: active contacts equal the sandbox's, filtered");
            (accounts, users)
        }
    };
    let (accounts, users) = check("full").await;
    let included = accounts.iter().filter(|a| expected_partner(a)).count();
    assert!(included < accounts.len() && included > 30, "{included} of {}", accounts.len());
    let s1 = step(&run, "impartner_sync");
    let contacts = users.iter().filter(|u| expected_contact(u)).count() as i64;
    assert_eq!(s1.fetched, included as i64 + contacts, "{s1:#?}");
    assert!(s1.guard.as_deref().unwrap_or("").contains("contacts: swept: 0"), "{s1:#?}");

    // Upstream deletions, changes, and a partner moved to the Pending tier.
    let deleted_accounts = sandbox.mutate("impartner", "accounts", json!({"change_percent": 5, "delete": 2})).await;
    let deleted_users = sandbox.mutate("impartner", "users", json!({"change_percent": 2, "delete": 3})).await;
    let pending = accounts.iter().find(|a| expected_partner(a)).unwrap()["id"].to_string();
    let resp = reqwest::Client::new()
        .patch(format!("{}/Account/{pending}", sandbox.handle.impartner_url()))
        .header("Authorization", "prm-key prm-key")
        .json(&json!({"Partner_Tier__cf": "Pending"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    // Incremental: `Updated` brings the changes (the Pending partner among them), `_deleted` the
    // deletions; all are soft-deleted.
    let run = env.run_to_end(IMPARTNER, "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    check("incremental").await;
    let s2 = step(&run, "impartner_sync");
    assert!(s2.fetched < s1.fetched / 4, "incremental reads only changes: {s2:#?}");
    let gone: Vec<String> = deleted_accounts["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .chain(deleted_users["deleted"].as_array().unwrap())
        .map(|v| v.to_string())
        .chain([pending.clone()])
        .collect();
    let soft: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT external_id, is_active, deleted_at IS NOT NULL FROM partner_partners WHERE external_id = ANY($1)
         UNION ALL
         SELECT external_id, is_active, deleted_at IS NOT NULL FROM partner_contacts WHERE external_id = ANY($1)",
    )
    .bind(&gone)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(!soft.is_empty());
    assert!(soft.iter().all(|(_, active, deleted)| !active && *deleted), "soft-deleted: {soft:?}");
    assert_eq!(s2.deactivated, soft.len() as i64, "{s2:#?}");

    // Full again: nothing left to sweep, and a deletion the incremental run could not see (none
    // here) would be swept under the guard.
    sandbox.mutate("impartner", "users", json!({"delete": 2})).await;
    let run = env.run_to_end(IMPARTNER, "acme", Mode::Full, false).await;
    check("full after changes").await;
    let s3 = step(&run, "impartner_sync");
    assert!(s3.deactivated <= 2, "{s3:#?}");
    assert!(s3.guard.as_deref().unwrap_or("").contains("swept"), "{s3:#?}");
    worker.stop().await;
    env.finish().await;
}

/// The group names the sandbox generates for a partner (its own list of variations).
fn group_variants(name: &str) -> Vec<String> {
    let stripped =
        name.trim_end_matches(" Inc.").trim_end_matches(", Inc.").trim_end_matches(" Ltd").trim_end_matches(" LLC");
    vec![
        name.to_owned(),
        format!("ptr_{name}"),
        name.to_lowercase(),
        name.to_uppercase(),
        name.replace([',', '.', '-'], ""),
        if stripped.len() < name.len() { stripped.to_owned() } else { format!("{name} Inc.") },
        format!("{stripped} Ltd"),
        format!("ptr_{}", name.to_lowercase()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_link_to_contacts_and_groups_match_partners() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "", "").await;
    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    let accounts = impartner_all(&sandbox, "Account").await;
    let users = impartner_all(&sandbox, "User").await;
    let partners: BTreeMap<String, String> =
        accounts.iter().filter(|a| expected_partner(a)).map(|a| (a["id"].to_string(), s(a, "name"))).collect();
    let contacts: BTreeMap<String, (String, String)> = users
        .iter()
        .filter(|u| expected_contact(u))
        .map(|u| (s(u, "email").to_lowercase(), (u["id"].to_string(), u["accountId"].to_string())))
        .collect();

    // Users: every person, linked by email (any case) to its contact and that contact's partner.
    let people = northpass_all(&sandbox, "/people").await;
    assert_eq!(people.len(), 300);
    let expected: BTreeMap<String, Vec<Option<String>>> = people
        .iter()
        .map(|p| {
            let email = s(&p["attributes"], "email");
            let contact = contacts.get(&email.to_lowercase());
            let partner = contact.map(|c| c.1.clone()).filter(|p| partners.contains_key(p));
            (s(p, "id"), vec![Some(email), contact.map(|c| c.0.clone()), partner])
        })
        .collect();
    let local =
        rows(&env, "SELECT external_id, ARRAY[email, contact_id, partner_id] FROM partner_lms_users WHERE is_active")
            .await;
    assert_eq!(local, expected, "LMS users and their links equal the sandbox's");
    let linked = expected.values().filter(|v| v[1].is_some()).count();
    let case_differs = people
        .iter()
        .filter(|p| {
            let e = s(&p["attributes"], "email");
            contacts.contains_key(&e.to_lowercase()) && e != e.to_lowercase()
        })
        .count();
    assert!(linked > 100 && linked < 300, "{linked} linked; non-partner users are kept");
    assert!(case_differs > 0, "some emails differ in case only");

    // Groups: linked where exactly one partner generated the name, reported otherwise.
    let groups = northpass_all(&sandbox, "/groups").await;
    assert_eq!(groups.len(), 40);
    let mut by_variant: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, name) in &partners {
        for v in group_variants(name) {
            by_variant.entry(v).or_default().insert(id.clone());
        }
    }
    let mut expected_links = BTreeMap::new();
    for g in &groups {
        let name = s(&g["attributes"], "name");
        if let Some(ids) = by_variant.get(&name)
            && ids.len() == 1
        {
            expected_links.insert(s(g, "id"), vec![ids.iter().next().cloned()]);
        }
    }
    let links = rows(&env, "SELECT external_id, ARRAY[partner_id] FROM partner_group_links WHERE is_active").await;
    assert_eq!(links, expected_links, "group links equal the partners the sandbox made the groups for");
    let issues: BTreeMap<String, Vec<Option<String>>> =
        rows(&env, "SELECT external_id, ARRAY[issue, group_name] FROM partner_group_match_issues WHERE is_active")
            .await;
    let unlinked: BTreeSet<String> = groups
        .iter()
        .filter(|g| s(&g["attributes"], "name") != "All Partners")
        .map(|g| s(g, "id"))
        .filter(|id| !links.contains_key(id))
        .collect();
    assert_eq!(issues.keys().cloned().collect::<BTreeSet<_>>(), unlinked, "every unlinked group is reported");
    let g = step(&run, "sync_groups");
    let report = g.guard.as_deref().unwrap_or("");
    assert!(report.contains(&format!("matching: {} group(s) linked", links.len())), "{g:#?}");
    let methods: Vec<(String, i64)> = sqlx::query_as(
        "SELECT method, count(*) FROM partner_group_links WHERE is_active GROUP BY method ORDER BY method",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(methods.len(), 3, "exact, prefix and fuzzy matches all occur: {methods:?}");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sync_users_stops_the_chain_and_resume_does_not_repeat_tier_one() {
    let sandbox = Sandbox::start().await;
    let limits = ", limits = { rate_per_sec = 10.0, max_retries = 1, backoff_base_ms = 20, backoff_max_ms = 50 }";
    let chains = "[chains.partner_daily.steps.sync_users]\nmax_attempts = 1\n";
    let (env, worker) = env_with(&sandbox, limits, chains).await;
    sandbox.faults("northpass", json!({"error_5xx_share": 1.0, "routes": ["GET /northpass/v2/people"]})).await;

    let run = env.run_to_end(DAILY, "acme", Mode::Full, false).await;
    assert_eq!(run.status, "failed", "{run:#?}");
    for tier_one in ["sync_courses", "impartner_sync", "sync_npcu"] {
        assert_eq!(step(&run, tier_one).status, "succeeded", "{run:#?}");
    }
    assert_eq!(step(&run, "sync_users").status, "failed", "{run:#?}");
    assert_eq!(step(&run, "sync_groups").status, "skipped", "downstream steps never start: {run:#?}");
    let groups: i64 = env.value("SELECT count(*) FROM partner_lms_groups").await;
    assert_eq!(groups, 0, "no downstream data written");
    let courses_calls = sandbox.counter("northpass", "GET", "/courses", "requests").await;
    let properties_calls = sandbox.counter("northpass", "GET", "/properties/courses/{id}", "requests").await;
    let account_calls = sandbox.counter("impartner", "GET", "/{object}", "requests").await;
    assert_eq!(properties_calls, 30);

    sandbox.faults("northpass", json!({"error_5xx_share": 0.0, "routes": []})).await;
    env.ops.resume(run.id.parse().unwrap(), "test").await.unwrap();
    let resumed = env.wait(run.id.parse().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(resumed.status, "completed", "{resumed:#?}");
    for tier_one in ["sync_courses", "impartner_sync", "sync_npcu"] {
        let (before, after) = (step(&run, tier_one), step(&resumed, tier_one));
        assert_eq!((after.attempts, after.started_at), (before.attempts, before.started_at), "{tier_one} not repeated");
    }
    assert_eq!(step(&resumed, "sync_users").attempts, 2);
    assert_eq!(step(&resumed, "sync_users").fetched, 300);
    assert_eq!(step(&resumed, "sync_groups").status, "succeeded");
    assert_eq!(
        sandbox.counter("northpass", "GET", "/courses", "requests").await,
        courses_calls,
        "courses not read again"
    );
    assert_eq!(
        sandbox.counter("northpass", "GET", "/properties/courses/{id}", "requests").await,
        properties_calls,
        "properties not read again"
    );
    assert_eq!(sandbox.counter("impartner", "GET", "/{object}", "requests").await, account_calls, "PRM not read again");
    let groups: i64 = env.value("SELECT count(*) FROM partner_lms_groups WHERE is_active").await;
    assert_eq!(groups, 40);
    worker.stop().await;
    env.finish().await;
}
