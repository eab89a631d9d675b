//! The README's first command, `syncfleet demo`, at `small` scale: the partner sync in full, a 1 %
//! change upstream, then incrementally — both runs complete, the data is in the tables, and the
//! incremental run reads a small share of what the full run read.

use serde_json::Value;
use syncfleet_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_partner_sync_in_full_then_incrementally() {
    let env = TestEnv::new("").await;
    let out = env.cli().args(["demo", "--scale", "small", "--json"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 2, "a full and an incremental run");
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
    env.finish().await;
}
