//! The Moodle pack's user scopes and roles: the derivation rules each shown on the sandbox's data
//! (majority, the alphabetical tie-break, the manual source skipping the user whole, no-op writes,
//! campus filled only when empty), roles granted by hand surviving a sync, login-time hydration
//! deciding as the chain does, and the derivations fanned out by user deciding as one step does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::json;
use syncfleet_pack_moodle::{roles, scope, scope::Users};
use syncfleet_producer::ops::Trigger;
use syncfleet_shared::chain::Mode;
use syncfleet_store::runs::TriggerKind;
use syncfleet_tests::moodle::uni_toml;
use syncfleet_tests::partner::step;
use syncfleet_tests::{Running, Sandbox, TestEnv};

const CHAIN: &str = "moodle_institutional";

async fn env_with(sandbox: &Sandbox) -> (TestEnv, Running) {
    let toml = format!("{}\n[packs.moodle]\ndisable_sync_category_on_startup = true\n", uni_toml(sandbox, ""));
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// Runs one step of the chain alone and returns that step's view.
async fn run_step(env: &TestEnv, name: &str) -> syncfleet_store::views::StepView {
    let run = env
        .ops
        .trigger(Trigger {
            chain: CHAIN.into(),
            integration: "uni".into(),
            mode: Mode::Full,
            kind: TriggerKind::Manual,
            triggered_by: "test".into(),
            tick_key: None,
            force_sweep: false,
            step: Some(name.into()),
            step_modes: Default::default(),
        })
        .await
        .unwrap();
    let view = env.wait(run, std::time::Duration::from_secs(60)).await;
    step(&view, name).clone()
}

type Scope = (Option<String>, Option<String>, Option<String>);

async fn scopes(env: &TestEnv) -> BTreeMap<String, Scope> {
    let rows: Vec<(String, Vec<Option<String>>)> = sqlx::query_as(
        "SELECT username, ARRAY[campus_id, department_id, program_id] FROM moodle_users WHERE is_active",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(u, s)| (u, (s[0].clone(), s[1].clone(), s[2].clone()))).collect()
}

/// The rules, written out independently of the pack: the most common, ties to the first in text order.
fn majority<'a>(votes: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut counts: BTreeMap<&String, i32> = BTreeMap::new();
    for v in votes {
        *counts.entry(v).or_default() += 1;
    }
    let best = counts.values().max().copied()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(k, _)| k.clone())
}

/// What each user's scope must be, from the synced enrollments and categories.
async fn expected_scopes(env: &TestEnv) -> BTreeMap<String, Scope> {
    let enrollments: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT u.username, c.program_id, k.parent_id FROM moodle_enrollments e
         JOIN moodle_users u ON u.external_id = e.user_id JOIN moodle_courses c ON c.external_id = e.course_id
         JOIN moodle_categories k ON k.external_id = c.program_id WHERE e.is_active",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let campuses: HashMap<String, String> =
        sqlx::query_as("SELECT upper(idnumber), external_id FROM moodle_categories WHERE depth = 1")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut by_user: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (u, p, d) in enrollments {
        by_user.entry(u).or_default().push((p, d));
    }
    by_user
        .into_iter()
        .map(|(u, e)| {
            let dept = majority(e.iter().map(|(_, d)| d));
            let prog = majority(e.iter().filter(|(_, d)| Some(d) == dept.as_ref()).map(|(p, _)| p));
            let campus = u.split_once('-').and_then(|(code, _)| campuses.get(&code.to_uppercase()).cloned());
            (u, (campus, dept, prog))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scopes_follow_the_majority_the_tie_break_and_the_manual_sources() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    // Majority: every user's scope is what the rules say.
    let expected = expected_scopes(&env).await;
    assert_eq!(expected.len(), 150);
    assert_eq!(scopes(&env).await, expected);
    let staff: Vec<&String> = expected.keys().filter(|u| !u.contains('-')).collect();
    assert!(!staff.is_empty(), "the sandbox has staff accounts without a campus prefix");
    assert!(staff.iter().all(|u| expected[*u].0.is_none()));
    let b = step(&run, "user_scope_backfill");
    assert_eq!((b.fetched, b.updated), (150, 150), "{b:#?}");
    assert!(
        b.guard.as_deref().unwrap_or("").contains(&format!(
            "150 derived, 0 manual skipped, 0 no enrollments, {} campus assigned",
            150 - staff.len()
        )),
        "{b:#?}"
    );

    // No-op: nothing changes, nothing is written, `updated_at` stays.
    let before: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT external_id, updated_at FROM moodle_users ORDER BY external_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let b = run_step(&env, "user_scope_backfill").await;
    assert_eq!((b.status.as_str(), b.updated, b.unchanged), ("succeeded", 0, 150), "{b:#?}");
    let after: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT external_id, updated_at FROM moodle_users ORDER BY external_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(before, after);

    // Tie-break: one enrollment in each of two departments whose ids order differently as text
    // and as numbers ("10" before "6"): the department first in text order wins, everywhere alike.
    let departments: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM moodle_categories WHERE kind = 'department'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let one = departments.iter().filter(|d| d.len() == 1).min().unwrap().clone();
    let two = departments.iter().filter(|d| d.len() == 2).max().unwrap().clone();
    let course_in = |dept: String| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT c.external_id, c.program_id FROM moodle_courses c JOIN moodle_categories k ON k.external_id = c.program_id
                 WHERE k.parent_id = $1 ORDER BY c.external_id LIMIT 1",
            )
            .bind(dept)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let ((c1, _), (c2, p2)) = (course_in(one.clone()).await, course_in(two.clone()).await);
    let tied = expected.keys().find(|u| u.contains('-')).unwrap().clone();
    let tied_id: String = sqlx::query_scalar("SELECT external_id FROM moodle_users WHERE username = $1")
        .bind(&tied)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE moodle_enrollments SET is_active = FALSE WHERE user_id = $1")
        .bind(&tied_id)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO moodle_enrollments (integration_id, external_id, course_id, user_id)
         SELECT i.id, c || ':' || $1, c, $1 FROM integrations i, UNNEST($2::text[]) AS c WHERE i.name = 'uni'
         ON CONFLICT (integration_id, external_id) DO UPDATE SET is_active = TRUE",
    )
    .bind(&tied_id)
    .bind(vec![c1, c2])
    .execute(&env.pool)
    .await
    .unwrap();
    let b = run_step(&env, "user_scope_backfill").await;
    assert_eq!(b.updated, 1, "{b:#?}");
    let s = &scopes(&env).await[&tied];
    assert_eq!((s.1.as_deref(), s.2.as_deref()), (Some(two.as_str()), Some(p2.as_str())), "{one} vs {two}");

    // Manual source: the user is skipped whole. The program is set by hand (so `manual`), the
    // department is spoiled in the table: the derivation would fix it, but leaves the user alone.
    let producer = env.spawn_producer().await;
    // A hand-set scope is an integration change: the admin role.
    let api = env.api(&producer, "admin").await;
    let manual = expected.keys().filter(|u| u.contains('-')).nth(5).unwrap().clone();
    let other_program =
        expected.values().filter_map(|s| s.2.clone()).find(|p| Some(p) != expected[&manual].2.as_ref()).unwrap();
    let (status, body) =
        api.put(&format!("/api/integrations/uni/users/{manual}/scope"), json!({"program_id": other_program})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["program_source"].as_str(), body["department_source"].as_str()), (Some("manual"), Some("auto")));
    assert_eq!(body["program_id"], other_program.as_str());
    sqlx::query("UPDATE moodle_users SET department_id = $2 WHERE username = $1")
        .bind(&manual)
        .bind(&one)
        .execute(&env.pool)
        .await
        .unwrap();
    let b = run_step(&env, "user_scope_backfill").await;
    assert!(b.guard.as_deref().unwrap_or("").contains("1 manual skipped"), "{b:#?}");
    let s = &scopes(&env).await[&manual];
    assert_eq!(
        (s.1.as_deref(), s.2.as_deref()),
        (Some(one.as_str()), Some(other_program.as_str())),
        "neither field moved"
    );
    // Back to auto: both derived again.
    let (status, body) =
        api.put(&format!("/api/integrations/uni/users/{manual}/scope"), json!({"program_source": "auto"})).await;
    assert_eq!((status, body["program_source"].as_str()), (200, Some("auto")), "{body}");
    run_step(&env, "user_scope_backfill").await;
    assert_eq!(scopes(&env).await[&manual], expected[&manual]);
    // Bad input names the field; an unknown user is 404.
    let (status, body) =
        api.put(&format!("/api/integrations/uni/users/{manual}/scope"), json!({"program_id": "nope"})).await;
    assert_eq!((status, body["message"].as_str().unwrap_or("").starts_with("program_id")), (400, true), "{body}");
    assert_eq!(api.put("/api/integrations/uni/users/nobody-1/scope", json!({"program_source": "auto"})).await.0, 404);

    // Campus: filled only when empty; an existing one is kept.
    let (kept, filled) = (
        expected.keys().filter(|u| u.contains('-')).nth(10).unwrap().clone(),
        expected.keys().filter(|u| u.contains('-')).nth(11).unwrap().clone(),
    );
    let campuses: Vec<String> = sqlx::query_scalar("SELECT external_id FROM moodle_categories WHERE kind = 'campus'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let foreign = campuses.iter().find(|c| Some(*c) != expected[&kept].0.as_ref()).unwrap().clone();
    sqlx::query("UPDATE moodle_users SET campus_id = $2 WHERE username = $1")
        .bind(&kept)
        .bind(&foreign)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE moodle_users SET campus_id = NULL WHERE username = $1")
        .bind(&filled)
        .execute(&env.pool)
        .await
        .unwrap();
    let b = run_step(&env, "user_scope_backfill").await;
    assert!(b.guard.as_deref().unwrap_or("").contains("1 campus assigned"), "{b:#?}");
    let now = scopes(&env).await;
    assert_eq!(now[&kept].0.as_deref(), Some(foreign.as_str()), "an existing campus is never overwritten");
    assert_eq!(now[&filled].0, expected[&filled].0, "an empty campus is filled from the username");
    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_granted_roles_survive_and_hydration_decides_as_the_chain_does() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let chain_scopes = scopes(&env).await;

    // Roles from enrollments: every user with an active student enrollment is a STUDENT, granted by the sync.
    let students: i64 =
        env.value("SELECT count(DISTINCT user_id) FROM moodle_enrollments WHERE is_active AND role = 'student'").await;
    let granted: i64 =
        env.value("SELECT count(*) FROM moodle_user_roles WHERE role = 'STUDENT' AND granted_by = 'sync'").await;
    assert_eq!(granted, students);
    // ADMIN by hand, and a stale sync grant: the next sync keeps the first and revokes the second.
    let user: String =
        env.value("SELECT user_id FROM moodle_enrollments WHERE role = 'student' ORDER BY user_id LIMIT 1").await;
    let instructor_elsewhere: i64 = env
        .value(&format!("SELECT count(*) FROM moodle_enrollments WHERE user_id = '{user}' AND role <> 'student'"))
        .await;
    assert_eq!(instructor_elsewhere, 0);
    sqlx::query(
        "INSERT INTO moodle_user_roles (integration_id, user_id, role, granted_by)
         SELECT id, $1, r, g FROM integrations, (VALUES ('ADMIN', 'manual'), ('INSTRUCTOR', 'sync')) AS x(r, g) WHERE name = 'uni'",
    )
    .bind(&user)
    .execute(&env.pool)
    .await
    .unwrap();
    let r = run_step(&env, "role_derivation").await;
    assert_eq!((r.status.as_str(), r.inserted, r.deactivated), ("succeeded", 0, 1), "{r:#?}");
    let roles: Vec<(String, String)> =
        sqlx::query_as("SELECT role, granted_by FROM moodle_user_roles WHERE user_id = $1 ORDER BY role")
            .bind(&user)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(roles, [("ADMIN".into(), "manual".into()), ("STUDENT".into(), "sync".into())]);

    // Hydration: the same decision as the chain, through the same function.
    let producer = env.spawn_producer().await;
    let api = env.api(&producer, "operator").await;
    let username: String = env.value(&format!("SELECT username FROM moodle_users WHERE external_id = '{user}'")).await;
    sqlx::query(
        "UPDATE moodle_users SET campus_id = NULL, department_id = NULL, program_id = NULL WHERE username = $1",
    )
    .bind(&username)
    .execute(&env.pool)
    .await
    .unwrap();
    let (status, body) = api.post(&format!("/api/integrations/uni/users/{username}/hydrate"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (c, d, p) = &chain_scopes[&username];
    assert_eq!(
        (body["campus_id"].as_str(), body["department_id"].as_str(), body["program_id"].as_str()),
        (c.as_deref(), d.as_deref(), p.as_deref())
    );
    assert_eq!((body["outcome"].as_str(), body["campus_assigned"].as_bool()), (Some("derived"), Some(true)), "{body}");
    assert_eq!(body["roles"], json!(["ADMIN (manual)", "STUDENT"]));
    assert_eq!(scopes(&env).await[&username], chain_scopes[&username], "stored as the chain stored it");

    // A user new to Moodle since the sync: stored, campus from the username, no enrollments yet.
    let added = sandbox.mutate("moodle", "users", json!({"add": 1})).await;
    let id = added["added"][0].as_i64().unwrap();
    let new_user = syncfleet_tests::moodle::call(
        &sandbox,
        "core_user_get_users_by_field",
        &[("field", "id"), ("values[0]", &id.to_string())],
    )
    .await;
    let new_name = new_user[0]["username"].as_str().unwrap().to_owned();
    let (status, body) = api.post(&format!("/api/integrations/uni/users/{new_name}/hydrate"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["outcome"].as_str(), body["user_id"].as_str()),
        (Some("no_enrollments"), Some(id.to_string().as_str())),
        "{body}"
    );
    assert!(body["campus_id"].is_string(), "{body}");
    // A manual user is left alone; unknown users and other packs are refused.
    let admin = env.api(&producer, "admin").await;
    admin.put(&format!("/api/integrations/uni/users/{username}/scope"), json!({"department_source": "manual"})).await;
    let (_, body) = api.post(&format!("/api/integrations/uni/users/{username}/hydrate"), json!({})).await;
    assert_eq!(body["outcome"], "manual_skipped", "{body}");
    let (status, body) = api.post("/api/integrations/uni/users/nobody-999/hydrate", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        api.with_token(None).post(&format!("/api/integrations/uni/users/{username}/hydrate"), json!({})).await.0,
        401
    );
    let viewer = env.api(&producer, "viewer").await;
    assert_eq!(viewer.post(&format!("/api/integrations/uni/users/{username}/hydrate"), json!({})).await.0, 403);
    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

/// Every active user's sync-granted roles as the integration's default map gives them, written out
/// independently of the pack: (user id, role).
async fn expected_roles(env: &TestEnv) -> BTreeSet<(String, String)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT e.user_id, r FROM moodle_enrollments e
         JOIN moodle_courses c ON c.external_id = e.course_id AND c.is_active
         JOIN moodle_users u ON u.external_id = e.user_id AND u.is_active,
         jsonb_array_elements_text(e.roles) AS r
         WHERE e.is_active",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let map = |r: &str| match r {
        "student" => Some("STUDENT"),
        "teacher" | "editingteacher" => Some("INSTRUCTOR"),
        "manager" => Some("PROGRAM_MANAGER"),
        _ => None,
    };
    rows.into_iter().filter_map(|(u, r)| map(&r).map(|role| (u, role.to_owned()))).collect()
}

async fn sync_roles(env: &TestEnv) -> BTreeSet<(String, String)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, role FROM moodle_user_roles WHERE granted_by = 'sync'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn derivations_in_shards_decide_as_one_step_over_every_user() {
    let sandbox = Sandbox::start().await;
    let toml = format!(
        "{}\n[packs.moodle]\ndisable_sync_category_on_startup = true\n\
         [chains.{CHAIN}.steps.user_scope_backfill]\nshards = 3\n[chains.{CHAIN}.steps.role_derivation]\nshards = 3\n",
        uni_toml(&sandbox, "")
    );
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    // The chain, each derivation in 3 shards: every user decided once, as the rules say.
    let expected = expected_scopes(&env).await;
    assert_eq!(expected.len(), 150);
    assert_eq!(scopes(&env).await, expected);
    let b = step(&run, "user_scope_backfill");
    assert_eq!((b.shards, b.shards_done, b.fetched, b.updated), (3, 3, 150, 150), "{b:#?}");
    let r = step(&run, "role_derivation");
    assert_eq!((r.shards, r.fetched), (3, 150), "{r:#?}");
    let roles = expected_roles(&env).await;
    assert!(roles.iter().any(|(_, r)| r == "STUDENT") && roles.iter().any(|(_, r)| r == "INSTRUCTOR"));
    assert_eq!(sync_roles(&env).await, roles);

    // Each shard, 7 users a page: its own users only, and together everything again.
    let integration: i64 = env.value("SELECT id FROM integrations WHERE name = 'uni'").await;
    sqlx::query("UPDATE moodle_users SET campus_id = NULL, department_id = NULL, program_id = NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM moodle_user_roles").execute(&env.pool).await.unwrap();
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM moodle_users WHERE is_active").fetch_all(&env.pool).await.unwrap();
    // The integration's roles map: the pack's default.
    let map: BTreeMap<String, String> = [
        ("student", "STUDENT"),
        ("teacher", "INSTRUCTOR"),
        ("editingteacher", "INSTRUCTOR"),
        ("manager", "PROGRAM_MANAGER"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    let mut conn = env.pool.acquire().await.unwrap();
    for k in 0..3 {
        let users = Users::shard(k, 3).paged(7);
        let mine = ids.iter().filter(|id| syncfleet_pack_moodle::shard_of(id, 3) == k).count() as i64;
        assert!(mine > 7, "shard {k} spans pages");
        let s = scope::backfill(&mut conn, integration, users).await.unwrap();
        assert_eq!((s.users, s.updated), (mine, mine), "shard {k}");
        let r = roles::apply(&mut conn, integration, &map, users).await.unwrap();
        assert_eq!(r.users, mine, "shard {k}");
    }
    assert_eq!(scopes(&env).await, expected);
    assert_eq!(sync_roles(&env).await, roles);
    drop(conn);
    worker.stop().await;
    env.finish().await;
}
