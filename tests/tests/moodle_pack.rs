//! The `moodle` pack's chain against the sandbox at `small` scale (2 campuses, 30 categories, 16
//! programs, 32 courses, 150 users): every synced row is checked against the sandbox's Moodle, read
//! through its web services the way a client would.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_tests::moodle::{
    categories, course_ids, courses_in, expected_enrollments, expected_users, programs, uni_toml,
};
use syncfleet_tests::partner::step;
use syncfleet_tests::{Running, Sandbox, TestEnv};

const CHAIN: &str = "moodle_institutional";

async fn env_with(sandbox: &Sandbox, settings: &str) -> (TestEnv, Running) {
    let env = TestEnv::new(&uni_toml(sandbox, settings)).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

async fn pairs(env: &TestEnv, sql: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let rows: Vec<(String, Vec<Option<String>>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chain_mirrors_the_institution_and_deactivates_a_removed_enrollment() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "concurrency = 4").await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    for s in &run.steps {
        assert_eq!(s.status, "succeeded", "{s:#?}");
        assert!(s.duration_ms.is_some(), "{s:#?}");
    }
    // The derivation steps read whole tables: they were planned on fresh statistics (autovacuum is
    // off on the test machine, so nothing else analyzed them).
    env.wait_analyzed(&["moodle_users", "moodle_enrollments", "moodle_courses"]).await;
    // Moodle was called once for the categories, once per program, once per course: no extra calls for sections.
    let calls = sandbox.handle.counters()["moodle"]["functions"].clone();
    assert_eq!(
        calls,
        json!({"core_course_get_categories": 1, "core_course_get_courses_by_field": 16, "core_enrol_get_enrolled_users": 32})
    );

    // Categories: the hierarchy from each category's path, written out independently of the pack.
    let cats = categories(&sandbox).await;
    assert_eq!(cats.len(), 30);
    let expected: BTreeMap<String, Vec<Option<String>>> = cats
        .iter()
        .map(|c| {
            let path: Vec<String> =
                c["path"].as_str().unwrap().trim_matches('/').split('/').map(str::to_owned).collect();
            let depth = c["depth"].as_u64().unwrap() as usize;
            let kind = ["campus", "semester", "department", "program"][depth - 1];
            let up = |level: usize| (depth > level + 1).then(|| path[level].clone());
            (
                c["id"].to_string(),
                vec![Some(kind.into()), up(0), up(1), up(2), Some(c["name"].as_str().unwrap().into())],
            )
        })
        .collect();
    let local = pairs(
        &env,
        "SELECT external_id, ARRAY[kind, campus_id, semester_id, department_id, name] FROM moodle_categories WHERE is_active",
    )
    .await;
    assert_eq!(local, expected, "the hierarchy equals the sandbox's");
    let codes: Vec<String> =
        sqlx::query_scalar("SELECT code FROM moodle_categories WHERE kind = 'campus' ORDER BY code")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(codes, ["NORTHGATE", "RIVERSIDE"]);
    let c = step(&run, "sync_categories");
    assert_eq!((c.fetched, c.inserted, c.errors, c.api_calls), (30, 30, 0, 1), "{c:#?}");

    // Courses: per program, field by field.
    let mut expected = BTreeMap::new();
    for p in programs(&sandbox).await {
        for c in courses_in(&sandbox, &p).await {
            expected
                .insert(c["id"].to_string(), vec![Some(c["shortname"].as_str().unwrap().to_owned()), Some(p.clone())]);
        }
    }
    assert_eq!(expected.len(), 32);
    let local =
        pairs(&env, "SELECT external_id, ARRAY[shortname, program_id] FROM moodle_courses WHERE is_active").await;
    assert_eq!(local, expected, "courses equal the sandbox's");
    let c = step(&run, "sync_courses");
    assert_eq!((c.fetched, c.inserted, c.errors, c.api_calls), (32, 32, 0, 16), "one call per program: {c:#?}");

    // Enrollments with the section of the user's first group and the role; users once each.
    let enrollments = expected_enrollments(&sandbox).await;
    let local: BTreeMap<String, (Option<String>, Option<String>)> =
        sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
            "SELECT external_id, section_id, role FROM moodle_enrollments WHERE is_active",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, s, r)| (id, (s, r)))
        .collect();
    assert_eq!(local, enrollments, "enrollments equal the sandbox's");
    let users = expected_users(&sandbox).await;
    let local: BTreeSet<(String, String)> =
        sqlx::query_as("SELECT external_id, username FROM moodle_users WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(local, users, "users equal the sandbox's enrolled users");
    assert!(enrollments.len() > users.len() + 50, "users are enrolled in several courses");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.fetched, e.inserted, e.errors), (enrollments.len() as i64, enrollments.len() as i64, 0), "{e:#?}");
    assert_eq!(e.api_calls, 32, "one call per course, none for sections: {e:#?}");
    let guard = e.guard.clone().unwrap_or_default();
    assert!(
        guard.contains(&format!(
            "users: {} distinct of {} enrollment row(s), upserted in one batch ({} inserted",
            users.len(),
            enrollments.len(),
            users.len()
        )),
        "{guard}"
    );

    // Sections: the groups users are in, per course.
    let sections: BTreeSet<String> = enrollments.values().filter_map(|(s, _)| s.clone()).collect();
    let local: BTreeSet<String> = sqlx::query_scalar("SELECT external_id FROM moodle_sections WHERE is_active")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(local.is_superset(&sections) && !sections.is_empty(), "{local:?} ⊇ {sections:?}");
    let orphan: i64 = env
        .value("SELECT count(*) FROM moodle_enrollments e WHERE section_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM moodle_sections s WHERE s.external_id = e.section_id AND s.course_id = e.course_id)")
        .await;
    assert_eq!(orphan, 0, "every enrollment's section is one of its course's sections");

    // Enrollments removed in the sandbox are deactivated, the others untouched.
    let removed = sandbox.mutate("moodle", "enrolments", json!({"delete": 3})).await;
    let removed: BTreeSet<String> =
        removed["deleted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(removed.len(), 3);
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.inserted, e.updated, e.deactivated), (0, 0, 3), "{e:#?}");
    let inactive: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM moodle_enrollments WHERE NOT is_active AND deleted_at IS NOT NULL")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(inactive, removed);
    let c = step(&run, "sync_categories");
    assert_eq!((c.inserted, c.updated, c.deactivated), (0, 0, 0), "an unchanged institution writes nothing: {c:#?}");
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_envelope_is_an_error_and_a_failing_program_leaves_the_others_synced() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "").await;

    // HTTP 200 with `exception`: the step fails at once (no retry of a considered answer), nothing is written.
    sandbox.faults("moodle", json!({"exceptions": ["core_course_get_categories"]})).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "failed", "{run:#?}");
    let c = step(&run, "sync_categories");
    assert_eq!((c.status.as_str(), c.attempts), ("failed", 1), "{c:#?}");
    assert!(c.error.as_deref().unwrap_or("").contains("Moodle answered moodle_exception"), "{c:#?}");
    assert_eq!(step(&run, "sync_courses").status, "skipped");
    // The run record names each phase's outcome as the run record does.
    let outcomes: Vec<Option<&str>> = run.steps.iter().map(|s| s.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("failed"), Some("skipped"), Some("skipped"), Some("skipped"), Some("skipped")]);
    let rows: i64 = env.value("SELECT count(*) FROM moodle_categories").await;
    assert_eq!(rows, 0, "an error envelope is not data");

    // One program's courses answer the envelope: the other 15 sync, the step records the failure.
    sandbox.faults("moodle", json!({"exceptions": []})).await;
    let failing = programs(&sandbox).await[3].clone();
    sandbox
        .faults("moodle", json!({"exceptions": [format!("core_course_get_courses_by_field:value={failing}")]}))
        .await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "partial", "one program failed, so the run is partial: {run:#?}");
    let c = step(&run, "sync_courses");
    assert_eq!((c.status.as_str(), c.partial, c.inserted, c.errors), ("succeeded", true, 30, 1), "{c:#?}");
    assert_eq!(c.outcome.as_deref(), Some("success"), "a partial step's phase still succeeded: {c:#?}");
    for later in ["sync_enrollments", "user_scope_backfill", "role_derivation"] {
        let s = step(&run, later);
        assert_eq!((s.status.as_str(), s.partial), ("succeeded", false), "the chain goes on: {s:#?}");
    }
    assert!(
        c.guard.as_deref().unwrap_or("").contains(&format!("partial: 1 of 16 program(s) failed ({failing})")),
        "{c:#?}"
    );
    let by_program: Vec<(String, i64)> = sqlx::query_as(
        "SELECT program_id, count(*) FROM moodle_courses WHERE is_active GROUP BY program_id ORDER BY program_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(by_program.len(), 15);
    assert!(by_program.iter().all(|(p, n)| *p != failing && *n == 2), "{by_program:?}");
    let open: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM item_errors WHERE resolved_at IS NULL AND entity = 'courses'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(open, [format!("program:{failing}")]);
    const ACTIVE_ENROLLMENTS: &str = "SELECT count(*) FROM moodle_enrollments WHERE is_active";
    let partial_enrollments: i64 = env.value(ACTIVE_ENROLLMENTS).await;

    // The program recovers and the partial run is resumed: its partial step runs again, then the
    // steps downstream of it (they read what it wrote), the program's courses and their
    // enrollments arrive, its error is resolved and the run completes.
    sandbox.faults("moodle", json!({"exceptions": []})).await;
    let expected = expected_enrollments(&sandbox).await.len() as i64;
    assert!(partial_enrollments < expected, "the missing program's enrollments are missing: {partial_enrollments}");
    let run_id = run.id.parse().unwrap();
    env.ops.resume(run_id, "test").await.unwrap();
    let run = env.wait(run_id, std::time::Duration::from_secs(60)).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let c = step(&run, "sync_courses");
    assert_eq!((c.partial, c.attempts, c.inserted, c.errors), (false, 2, 2, 0), "{c:#?}");
    assert_eq!(step(&run, "sync_categories").attempts, 1, "steps upstream of the partial one are not repeated");
    for later in ["sync_enrollments", "user_scope_backfill", "role_derivation"] {
        let s = step(&run, later);
        assert_eq!((s.status.as_str(), s.attempts), ("succeeded", 2), "downstream steps run again: {s:#?}");
    }
    assert_eq!(env.value::<i64>(ACTIVE_ENROLLMENTS).await, expected, "the recovered program's enrollments arrived");
    let open: i64 =
        env.value("SELECT count(*) FROM item_errors WHERE resolved_at IS NULL AND entity = 'courses'").await;
    assert_eq!(open, 0);
    assert_eq!(course_ids(&sandbox).await.len(), 32);
    let active: i64 = env.value("SELECT count(*) FROM moodle_courses WHERE is_active").await;
    assert_eq!(active, 32);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_batch_that_fails_falls_back_to_rows_and_only_the_bad_row_is_an_error() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox, "").await;
    // Another active row already holds one sandbox user's username: the batch statement fails on the
    // unique username index; every other user still lands, row by row.
    let users = expected_users(&sandbox).await;
    let (taken_id, taken) = users.iter().nth(7).cloned().unwrap();
    let integration: i64 = env.value("SELECT id FROM integrations WHERE name = 'uni'").await;
    sqlx::query("INSERT INTO moodle_users (integration_id, external_id, username) VALUES ($1, 'old-account', $2)")
        .bind(integration)
        .bind(&taken)
        .execute(&env.pool)
        .await
        .unwrap();
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!(e.errors, 1, "{e:#?}");
    assert!(e.guard.as_deref().unwrap_or("").contains("per row after the batch failed"), "{e:#?}");
    let synced: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM moodle_users WHERE external_id <> 'old-account'")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let expected: BTreeSet<String> = users.iter().map(|(id, _)| id.clone()).filter(|id| *id != taken_id).collect();
    assert_eq!(synced, expected);
    let (id, message): (String, String) =
        sqlx::query_as("SELECT external_id, message FROM item_errors WHERE entity = 'users' AND resolved_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(id, taken_id);
    assert!(message.contains("moodle_users_username"), "{message}");
    // Enrollments do not depend on the user row: all of them are there.
    let enrollments: i64 = env.value("SELECT count(*) FROM moodle_enrollments WHERE is_active").await;
    assert_eq!(enrollments as usize, expected_enrollments(&sandbox).await.len());
    let _: Value = Value::Null;
    worker.stop().await;
    env.finish().await;
}
