//! The README's first command, `syncfleet demo`, at `small` scale: the partner sync in full, a 1 %
//! change upstream, then incrementally — both runs complete, the data is in the tables, and the
//! incremental run reads a small share of what the full run read; then a person is deleted
//! upstream and the pack's nightly full run finds it.

use serde_json::Value;
use syncfleet_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_partner_sync_in_full_then_incrementally() {
    let env = TestEnv::new("").await;
    let out = env.cli().args(["demo", "--scale", "small", "--json"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 3, "a full, an incremental and the nightly run");
    let calls =
        |r: &Value| r["steps"].as_array().unwrap().iter().map(|s| s["api_calls"].as_i64().unwrap()).sum::<i64>();
    for (run, mode) in runs.iter().zip(["full", "incremental"]) {
        assert_eq!((run["chain"].as_str(), run["mode"].as_str()), (Some("partner_daily"), Some(mode)));
        assert_eq!(run["status"], "completed", "{run:#}");
    }
    let inc_steps = runs[1]["steps"].as_array().unwrap();
    assert!(inc_steps.iter().all(|s| s["mode"] == "incremental"), "every step incremental: {inc_steps:#?}");
    let (full, incremental) = (calls(&runs[0]), calls(&runs[1]));
    assert!(full > 100 && incremental * 5 < full, "full {full} calls, incremental {incremental}");

    let (enrollments, users): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM partner_enrollments WHERE is_active), (SELECT count(*) FROM partner_lms_users)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(enrollments > 0 && users > 0, "{enrollments} enrollments, {users} users");

    // The nightly run: full, as the pack's default schedule says, and its sweep found the deletion.
    let night = &runs[2];
    assert_eq!((night["mode"].as_str(), night["status"].as_str()), (Some("full"), Some("completed")), "{night:#}");
    let sync_users = night["steps"].as_array().unwrap().iter().find(|s| s["step"] == "sync_users").unwrap();
    assert_eq!(sync_users["deactivated"], 1, "{sync_users:#}");
    let inactive: i64 = sqlx::query_scalar("SELECT count(*) FROM partner_lms_users WHERE NOT is_active")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(inactive >= 1, "the person deleted in Northpass is inactive");
    env.finish().await;
}

/// `syncfleet demo --chain moodle`: the institution in full, then the sandbox drops 20 enrolments
/// and the chain runs again. The rows equal the same (seeded) sandbox's data, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moodle_demo_syncs_the_institution_then_deactivates_dropped_enrolments() {
    let env = TestEnv::new("").await;
    let out = env.cli().args(["demo", "--chain", "moodle", "--scale", "small", "--json"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 2, "two runs of the chain");
    for run in &runs {
        assert_eq!(run["chain"], "moodle_institutional");
        assert_eq!(run["status"], "completed", "{run:#}");
    }
    let step =
        |run: &Value, name: &str| run["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).cloned().unwrap();
    assert_eq!(step(&runs[1], "sync_enrollments")["deactivated"], 20, "{:#}", runs[1]);

    // The demo's sandbox is seeded: the same one here tells what the tables must hold.
    let sandbox = syncfleet_sandbox::spawn(syncfleet_sandbox::SandboxConfig {
        scale: syncfleet_sandbox::Scale::Small,
        ..Default::default()
    })
    .await
    .unwrap();
    let count = |p: &str| sandbox.info().pointer(p).and_then(Value::as_i64).unwrap();
    let (courses, users, enrolments) =
        (count("/counts/moodle/courses"), count("/counts/moodle/users"), count("/counts/moodle/enrolments"));
    let (db_courses, db_users, db_active, db_inactive): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM moodle_courses WHERE is_active), (SELECT count(*) FROM moodle_users),
                (SELECT count(*) FROM moodle_enrollments WHERE is_active),
                (SELECT count(*) FROM moodle_enrollments WHERE NOT is_active)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((db_courses, db_active, db_inactive), (courses, enrolments - 20, 20));
    assert!(db_users > 0 && db_users <= users, "{db_users} users synced of {users}");
    env.finish().await;
}
