//! Scoped sweeps behind the deletion guard (issue #17, item 4): a Moodle program or course, or a
//! partner user's transcript, that answers an empty but valid list while its rows are active is
//! refused; its rows stay active, the step's `guard` records the refusal, and a run with
//! `force_sweep` goes past it and says so. And no pack writes a deactivation of its own.

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;
use syncfleet_producer::ops::Trigger;
use syncfleet_shared::chain::Mode;
use syncfleet_store::{runs::TriggerKind, views::RunView};
use syncfleet_tests::moodle::{courses_in, enrolled, programs, uni_toml};
use syncfleet_tests::partner::{acme_toml, step};
use syncfleet_tests::{Sandbox, TestEnv};

const MOODLE: &str = "moodle_institutional";

async fn ids(env: &TestEnv, sql: &str, scope: &str) -> BTreeSet<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(scope)
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_but_valid_moodle_program_keeps_its_courses_until_forced() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&uni_toml(&sandbox, "")).await;
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end(MOODLE, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let c = step(&run, "sync_courses");
    assert!(c.guard.as_deref().unwrap_or("").contains("courses: 16 of 16 program(s) swept, 0 deactivated"), "{c:#?}");

    const COURSES: &str = "SELECT external_id FROM moodle_courses WHERE is_active AND program_id = $1";
    let program = programs(&sandbox).await[5].clone();
    let expected: BTreeSet<String> = courses_in(&sandbox, &program).await.iter().map(|c| c["id"].to_string()).collect();
    assert!(!expected.is_empty());
    assert_eq!(ids(&env, COURSES, &program).await, expected);
    let enrollments = "SELECT e.external_id FROM moodle_enrollments e JOIN moodle_courses c
                        ON c.integration_id = e.integration_id AND c.external_id = e.course_id
                       WHERE e.is_active AND c.program_id = $1";
    let enrolled_before = ids(&env, enrollments, &program).await;
    assert!(!enrolled_before.is_empty());

    // Moodle answers the program with `{"courses": [], "warnings": []}`: valid, and empty.
    let call = format!("core_course_get_courses_by_field:value={program}");
    sandbox.faults("moodle", json!({ "empty_answers": [call] })).await;
    let run = env.run_to_end(MOODLE, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "a refused sweep is no failure: {run:#?}");
    let c = step(&run, "sync_courses");
    assert_eq!((c.partial, c.deactivated, c.errors), (false, 0, 0), "{c:#?}");
    let guard = c.guard.as_deref().unwrap_or("");
    assert!(
        guard.contains(&format!(
            "courses: 15 of 16 program(s) swept, 0 deactivated; blocked: program {program}: fetch returned nothing while {} rows are active",
            expected.len()
        )),
        "{guard}"
    );
    assert_eq!(ids(&env, COURSES, &program).await, expected, "the program's courses stay active");
    assert_eq!(ids(&env, enrollments, &program).await, enrolled_before, "and so do their enrollments");

    // An operator who knows the program is empty forces the sweep: the courses go, and the
    // enrollments of courses no longer active with them.
    let run = env.run_to_end(MOODLE, "uni", Mode::Full, true).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let c = step(&run, "sync_courses");
    assert_eq!(c.deactivated, expected.len() as i64, "{c:#?}");
    assert!(
        c.guard.as_deref().unwrap_or("").contains(&format!(
            "courses: forced: 16 of 16 program(s) swept, {n} deactivated (guard: program {program}: fetch returned nothing while {n} rows are active)",
            n = expected.len()
        )),
        "{c:#?}"
    );
    assert!(ids(&env, COURSES, &program).await.is_empty());
    let gone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM moodle_courses WHERE program_id = $1 AND NOT is_active AND deleted_at IS NOT NULL",
    )
    .bind(&program)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(gone, expected.len() as i64);
    assert_eq!(step(&run, "sync_enrollments").deactivated, enrolled_before.len() as i64);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_moodle_course_keeps_its_enrollments_until_forced() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&uni_toml(&sandbox, "")).await;
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end(MOODLE, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    const ENROLLMENTS: &str = "SELECT external_id FROM moodle_enrollments WHERE is_active AND course_id = $1";
    const SECTIONS: &str = "SELECT external_id FROM moodle_sections WHERE is_active AND course_id = $1";
    let course: String = env
        .value(
            "SELECT course_id FROM moodle_enrollments WHERE is_active AND section_id IS NOT NULL
             GROUP BY course_id ORDER BY count(*) DESC, course_id LIMIT 1",
        )
        .await;
    let expected: BTreeSet<String> =
        enrolled(&sandbox, &course).await.iter().map(|u| format!("{course}:{}", u["id"])).collect();
    assert!(expected.len() > 1, "{expected:?}");
    assert_eq!(ids(&env, ENROLLMENTS, &course).await, expected);
    let sections = ids(&env, SECTIONS, &course).await;
    assert!(!sections.is_empty());

    // Moodle answers the course's enrolled users with `[]`.
    sandbox
        .faults("moodle", json!({ "empty_answers": [format!("core_enrol_get_enrolled_users:courseid={course}")] }))
        .await;
    let run = env.run_to_end(MOODLE, "uni", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!((e.partial, e.deactivated, e.errors), (false, 0, 0), "{e:#?}");
    let guard = e.guard.as_deref().unwrap_or("");
    for (rows, n) in [("enrollments", expected.len()), ("sections", sections.len())] {
        assert!(
            guard.contains(&format!(
                "{rows}: 31 of 32 course(s) swept, 0 deactivated; blocked: course {course}: fetch returned nothing while {n} rows are active"
            )),
            "{guard}"
        );
    }
    assert_eq!(ids(&env, ENROLLMENTS, &course).await, expected, "the course's enrollments stay active");
    assert_eq!(ids(&env, SECTIONS, &course).await, sections, "and so do its sections");

    let run = env.run_to_end(MOODLE, "uni", Mode::Full, true).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let e = step(&run, "sync_enrollments");
    assert_eq!(e.deactivated, expected.len() as i64, "{e:#?}");
    assert!(
        e.guard.as_deref().unwrap_or("").contains(&format!(
            "enrollments: forced: 32 of 32 course(s) swept, {n} deactivated (guard: course {course}: fetch returned nothing while {n} rows are active)",
            n = expected.len()
        )),
        "{e:#?}"
    );
    assert!(ids(&env, ENROLLMENTS, &course).await.is_empty());
    assert!(ids(&env, SECTIONS, &course).await.is_empty());
    worker.stop().await;
    env.finish().await;
}

/// Runs `sync_enrollments` of `partner_enrollments` alone, in full, and waits for the run to end.
async fn sync_enrollments(env: &TestEnv, force_sweep: bool) -> RunView {
    let run = env
        .ops
        .trigger(Trigger {
            chain: "partner_enrollments".into(),
            integration: "acme".into(),
            mode: Mode::Full,
            kind: TriggerKind::Manual,
            triggered_by: "test".into(),
            tick_key: None,
            force_sweep,
            step: Some("sync_enrollments".into()),
            step_modes: Default::default(),
        })
        .await
        .expect("trigger");
    env.wait(run, Duration::from_secs(60)).await
}

/// The `guard` texts of the run's `sync_enrollments` shards.
async fn shard_guards(env: &TestEnv, run: &RunView) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT coalesce(guard, '') FROM step_runs WHERE run_id = $1::text::uuid AND step = 'sync_enrollments'
         ORDER BY shard",
    )
    .bind(&run.id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_transcript_of_a_partner_user_keeps_their_enrollments_until_forced() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&acme_toml(&sandbox, "", "")).await;
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end("partner_daily", "acme", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");

    const ROWS: &str = "SELECT external_id FROM partner_enrollments WHERE is_active AND person_id = $1";
    let person: String = env
        .value(
            "SELECT person_id FROM partner_enrollments WHERE is_active
             GROUP BY person_id ORDER BY count(*) DESC, person_id LIMIT 1",
        )
        .await;
    let before = ids(&env, ROWS, &person).await;
    assert!(!before.is_empty());
    let read_at = "SELECT transcript_read_at::text FROM partner_lms_users WHERE external_id = $1";
    let read_before: Option<String> = sqlx::query_scalar(read_at).bind(&person).fetch_one(&env.pool).await.unwrap();
    assert!(read_before.is_some());

    // Northpass answers the person's transcript with an empty page.
    sandbox.faults("northpass", json!({ "empty_answers": [format!("/transcripts/{person}")] })).await;
    let run = sync_enrollments(&env, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!(step(&run, "sync_enrollments").deactivated, 0, "{run:#?}");
    let refusal = format!("blocked: user {person}: fetch returned nothing while {} rows are active", before.len());
    let guards = shard_guards(&env, &run).await;
    assert_eq!(guards.iter().filter(|g| g.contains(&refusal)).count(), 1, "the user's shard records it: {guards:#?}");
    assert_eq!(ids(&env, ROWS, &person).await, before, "the user's enrollments stay active");
    let read_after: Option<String> = sqlx::query_scalar(read_at).bind(&person).fetch_one(&env.pool).await.unwrap();
    assert_eq!(read_after, read_before, "a refused transcript is not marked read");

    let run = sync_enrollments(&env, true).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!(step(&run, "sync_enrollments").deactivated, before.len() as i64, "{run:#?}");
    let forced = format!("(guard: user {person}: fetch returned nothing while {} rows are active)", before.len());
    let guards = shard_guards(&env, &run).await;
    assert!(guards.iter().any(|g| g.contains("enrollments: forced: ") && g.contains(&forced)), "{guards:#?}");
    assert!(ids(&env, ROWS, &person).await.is_empty());
    worker.stop().await;
    env.finish().await;
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_pack_deactivates_rows_itself() {
    let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("packs");
    let mut files = vec![];
    rust_files(&packs, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap().to_lowercase();
            let squeezed: String = text.split_whitespace().collect();
            squeezed.contains("setis_active=false")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "deactivate through syncfleet_sdk::sync::sweep, not in a pack: {offenders:?}");
}
