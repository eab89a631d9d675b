//! The Moodle answers that cost good rows before (issue #19, item 11), each a sandbox fault, with
//! every row checked against the sandbox's Moodle:
//!
//! - `no_groups`: Moodle leaves out the users' `groups` (a token without
//!   `moodle/site:accessallgroups`). Sections are not deactivated and enrollments keep their
//!   section; what does not depend on groups (an enrollment removed upstream) still syncs, and the
//!   step's result says why the sections were left alone.
//! - `capability_exceptions`: every course answers `required_capability_exception`. The step fails
//!   after one attempt (asking again gets the same answer) with Moodle's message in the run error;
//!   one course refused is an item error and a partial step.
//!
//! And the run status rule kept from the engine: a required phase that failed makes the run
//! `failed` (the phases after it did not run), a phase that failed only in part makes it `partial`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use syncfleet_shared::chain::Mode;
use syncfleet_tests::moodle::{course_ids, expected_enrollments, uni_toml};
use syncfleet_tests::partner::step;
use syncfleet_tests::{Running, Sandbox, TestEnv};

const CHAIN: &str = "moodle_institutional";
const CAPABILITY: &str = "Sorry, but you do not currently have permissions to do that (View participants).";

async fn env_with(sandbox: &Sandbox) -> (TestEnv, Running) {
    let env = TestEnv::new(&uni_toml(sandbox, "")).await;
    let worker = env.spawn_worker("w").await;
    (env, worker)
}

/// Every section: id → (course, active).
async fn sections(env: &TestEnv) -> BTreeMap<String, (String, bool)> {
    let rows: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT external_id, course_id, is_active FROM moodle_sections")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(id, course, active)| (id, (course, active))).collect()
}

/// Every active enrollment: id → section.
async fn enrollment_sections(env: &TestEnv) -> BTreeMap<String, Option<String>> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT external_id, section_id FROM moodle_enrollments WHERE is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_groups_sections_and_enrollment_sections_stay_and_the_step_says_why() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let with_groups = expected_enrollments(&sandbox).await;
    let sections_before = sections(&env).await;
    let links_before = enrollment_sections(&env).await;
    assert!(sections_before.values().all(|(_, active)| *active) && !sections_before.is_empty());
    let linked = links_before.values().filter(|s| s.is_some()).count();
    assert!(linked > 50, "enrollments have sections: {linked}");
    let expected: BTreeMap<String, Option<String>> =
        with_groups.iter().map(|(id, (section, _))| (id.clone(), section.clone())).collect();
    assert_eq!(links_before, expected, "enrollments and their sections equal the sandbox's");

    // The token loses `accessallgroups`, and two enrollments are removed upstream.
    sandbox.faults("moodle", json!({"no_groups": true})).await;
    let sample = syncfleet_tests::moodle::enrolled(&sandbox, &course_ids(&sandbox).await[0]).await;
    assert!(sample.iter().all(|u| u.get("groups").is_none()), "the fault leaves `groups` out");
    let removed = sandbox.mutate("moodle", "enrolments", json!({"delete": 2})).await;
    let removed: BTreeSet<String> =
        removed["deleted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(removed.len(), 2);

    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.attempts, e.deactivated, e.errors), (1, 2, 0), "only the removed enrollments went: {e:#?}");
    let guard = e.guard.clone().unwrap_or_default();
    assert!(
        guard.contains("groups not read for 32 of 32 course(s): Moodle left out the users' `groups` (the token lacks \
                        moodle/site:accessallgroups), so their sections and the enrollments' sections were left as they were"),
        "{guard}"
    );
    // Sections: every one as it was, none deactivated.
    assert_eq!(sections(&env).await, sections_before, "sections untouched");
    // Enrollments: the sandbox's (the two removed gone), each with the section it had.
    let after = enrollment_sections(&env).await;
    let mut expected_after = links_before.clone();
    expected_after.retain(|id, _| !removed.contains(id));
    assert_eq!(after, expected_after, "enrollments keep their sections");
    let upstream: BTreeSet<String> = expected_enrollments(&sandbox).await.into_keys().collect();
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), upstream, "enrollments equal the sandbox's");
    let inactive: BTreeSet<String> =
        sqlx::query_scalar("SELECT external_id FROM moodle_enrollments WHERE NOT is_active")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(inactive, removed);

    // The capability comes back: sections are read again and nothing changed in between.
    sandbox.faults("moodle", json!({"no_groups": false})).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert!(!e.guard.clone().unwrap_or_default().contains("groups not read"), "{e:#?}");
    let expected: BTreeMap<String, Option<String>> =
        expected_enrollments(&sandbox).await.into_iter().map(|(id, (section, _))| (id, section)).collect();
    assert_eq!(enrollment_sections(&env).await, expected);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capability_refused_on_every_course_fails_at_once_with_moodles_message() {
    let sandbox = Sandbox::start().await;
    let (env, worker) = env_with(&sandbox).await;
    sandbox.faults("moodle", json!({"capability_exceptions": ["core_enrol_get_enrolled_users"]})).await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;

    // A required phase failed: the run is `failed` (the phases after it did not run).
    assert_eq!(run.status, "failed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.status.as_str(), e.attempts), ("failed", 1), "no retry of Moodle's considered answer: {e:#?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("every course's enrolled users failed (32)"), "{error}");
    assert!(error.contains("required_capability_exception (nopermissions)"), "{error}");
    assert!(error.contains(CAPABILITY), "Moodle's own message is in the run error: {error}");
    for later in ["user_scope_backfill", "role_derivation"] {
        assert_eq!(step(&run, later).status, "skipped");
    }
    // What the phases before it wrote is there and equals the sandbox's; no enrollment was written.
    assert_eq!(step(&run, "sync_courses").status, "succeeded");
    let courses: BTreeSet<String> = sqlx::query_scalar("SELECT external_id FROM moodle_courses WHERE is_active")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(courses, course_ids(&sandbox).await.into_iter().collect::<BTreeSet<_>>());
    let enrollments: i64 = env.value("SELECT count(*) FROM moodle_enrollments").await;
    assert_eq!(enrollments, 0);
    let messages: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM item_errors WHERE entity = 'enrollments' AND resolved_at IS NULL ORDER BY external_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(messages.len(), 32);
    assert!(messages.iter().all(|m| m.contains(CAPABILITY)), "{messages:?}");

    // One course refused: an item error with Moodle's message, the step partial, the run partial,
    // every other course's enrollments equal the sandbox's.
    let refused = course_ids(&sandbox).await[5].clone();
    sandbox.faults("moodle", json!({"capability_exceptions": []})).await;
    let upstream: BTreeSet<String> =
        expected_enrollments(&sandbox).await.into_keys().filter(|id| !id.starts_with(&format!("{refused}:"))).collect();
    sandbox
        .faults(
            "moodle",
            json!({"capability_exceptions": [format!("core_enrol_get_enrolled_users:courseid={refused}")]}),
        )
        .await;
    let run = env.run_to_end(CHAIN, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "partial", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.status.as_str(), e.partial, e.errors, e.attempts), ("succeeded", true, 1, 1), "{e:#?}");
    assert!(e.guard.clone().unwrap_or_default().contains("partial: 1 of 32 course(s) failed"), "{e:#?}");
    let open: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_id, message FROM item_errors WHERE entity = 'enrollments' AND resolved_at IS NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].0, format!("course:{refused}"));
    assert!(open[0].1.contains(CAPABILITY), "{open:?}");
    let local: BTreeSet<String> = sqlx::query_scalar("SELECT external_id FROM moodle_enrollments WHERE is_active")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(local, upstream);
    worker.stop().await;
    env.finish().await;
}
