//! Exclusion between chains of one integration: the partner pack's chains that write its tables
//! (`Pack::exclusive_chains`) never run at the same time for one integration. A run that would
//! overlap waits `queued` behind the running one and starts when it ends (also when it failed); a
//! manual trigger is refused with 409 unless it asks to queue. Real producer, workers, PostgreSQL,
//! Redis and the sandbox.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use syncfleet_producer::{
    ops::Trigger,
    scheduler::{Fired, Scheduler},
};
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::{StoreError, runs::TriggerKind};
use syncfleet_tests::partner::{acme_toml, northpass_all};
use syncfleet_tests::{Sandbox, TestEnv};

const DAILY: &str = "partner_daily";
const ENROLLMENTS: &str = "partner_enrollments";
const LEADS: &str = "partner_leads";
const CLEANUP: &str = "partner_cleanup";

type Interval = (String, DateTime<Utc>, DateTime<Utc>);

/// Every attempt of the run's steps as (step, started_at, finished_at).
async fn intervals(env: &TestEnv, run: &str) -> Vec<Interval> {
    let id: RunId = run.parse().unwrap();
    sqlx::query_as(
        "SELECT step, started_at, finished_at FROM step_runs
          WHERE run_id = $1 AND started_at IS NOT NULL ORDER BY started_at",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// No step interval of `a` overlaps one of `b`.
fn assert_disjoint(a: &[Interval], b: &[Interval]) {
    assert!(!a.is_empty() && !b.is_empty(), "both runs ran steps: {a:?} {b:?}");
    for (sa, a0, a1) in a {
        for (sb, b0, b1) in b {
            assert!(a1 <= b0 || b1 <= a0, "{sa} [{a0}, {a1}] overlaps {sb} [{b0}, {b1}]");
        }
    }
}

fn manual(chain: &str, integration: &str) -> Trigger {
    Trigger {
        chain: chain.into(),
        integration: integration.into(),
        mode: Mode::Full,
        kind: TriggerKind::Manual,
        triggered_by: "test".into(),
        tick_key: None,
        force_sweep: false,
        step: None,
        step_modes: Default::default(),
    }
}

/// The run as the API lists it (`GET /api/runs`).
async fn listed(api: &syncfleet_tests::Api, run: &str) -> Value {
    let (status, page) = api.get("/api/runs?limit=100").await;
    assert_eq!(status, 200, "{page}");
    page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run)
        .cloned()
        .unwrap_or_else(|| panic!("{run} in {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_chains_wait_for_each_other_and_never_overlap() {
    let sandbox = Sandbox::start().await;
    // Slow enough that the daily run is still running while the others are triggered.
    sandbox.faults("northpass", json!({ "latency_ms": 15 })).await;
    let env = TestEnv::new(&acme_toml(&sandbox, "", "")).await;
    let producer = env.spawn_producer().await;
    let (w1, w2) = (env.spawn_worker("w1").await, env.spawn_worker("w2").await);
    let api = env.api(&producer, "operator").await;

    let (status, daily) =
        api.post(&format!("/api/chains/{DAILY}/runs"), json!({ "integration": "acme", "mode": "full" })).await;
    assert_eq!(status, 201, "{daily}");
    assert!(daily.get("waiting_for").is_none(), "{daily}");
    let daily = daily["run_id"].as_str().unwrap().to_owned();

    // A manual trigger of another chain of the group: 409 naming the running chain and run.
    let (status, refused) =
        api.post(&format!("/api/chains/{ENROLLMENTS}/runs"), json!({ "integration": "acme" })).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "exclusive_run");
    assert_eq!(refused["running_chain"], DAILY);
    assert_eq!(refused["run_id"], daily.as_str());
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains(DAILY) && message.contains(&daily), "{message}");
    // The CLI says the same and exits 4.
    let out = env.cli().args(["trigger", ENROLLMENTS, "--integration", "acme"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains(DAILY) && stderr.contains(&daily), "{stderr}");

    // Asking to queue: created queued behind the daily run; a scheduled run queues by itself.
    let (status, queued) =
        api.post(&format!("/api/chains/{ENROLLMENTS}/runs"), json!({ "integration": "acme", "queue": true })).await;
    assert_eq!(status, 201, "{queued}");
    assert_eq!((queued["status"].as_str(), queued["waiting_for"].as_str()), (Some("queued"), Some(daily.as_str())));
    let enrollments = queued["run_id"].as_str().unwrap().to_owned();
    let fired =
        Scheduler::new(env.ops.clone()).fire(LEADS, "acme", 1_900_000_000, TriggerKind::Schedule).await.unwrap();
    let Fired::Created(leads) = fired else { panic!("scheduled run created: {fired:?}") };

    // A chain outside the group runs beside them.
    let (status, cleanup) = api.post(&format!("/api/chains/{CLEANUP}/runs"), json!({ "integration": "acme" })).await;
    assert_eq!(status, 201, "{cleanup}");
    assert!(cleanup.get("waiting_for").is_none(), "{cleanup}");
    let cleanup: RunId = cleanup["run_id"].as_str().unwrap().parse().unwrap();
    let cleanup = env.wait(cleanup, Duration::from_secs(60)).await;
    assert_eq!(cleanup.status, "completed", "{cleanup:#?}");

    // While they wait, the API lists them queued, with the run they wait behind; nothing ran.
    let view = listed(&api, &enrollments).await;
    assert_eq!(
        (view["status"].as_str(), view["waiting_for"].as_str()),
        (Some("queued"), Some(daily.as_str())),
        "{view}"
    );
    assert_eq!(listed(&api, &leads).await["status"], "queued");
    let daily_view = listed(&api, &daily).await;
    assert_eq!(daily_view["status"], "running", "the cleanup ran while the daily run was running: {daily_view}");
    assert!(intervals(&env, &enrollments).await.is_empty() && intervals(&env, &leads).await.is_empty());

    // All three complete, one after the other.
    let ids: Vec<RunId> = [&daily, &enrollments, &leads].iter().map(|r| r.parse().unwrap()).collect();
    for id in &ids {
        let run = env.wait(*id, Duration::from_secs(120)).await;
        assert_eq!(run.status, "completed", "{run:#?}");
    }
    let (d, e, l) = (intervals(&env, &daily).await, intervals(&env, &enrollments).await, intervals(&env, &leads).await);
    assert_disjoint(&d, &e);
    assert_disjoint(&d, &l);
    assert_disjoint(&e, &l);

    // The data is whole: every Northpass person is an active user, and enrollments were read.
    let people = northpass_all(&sandbox, "/people").await;
    let users: i64 = env.value("SELECT count(*) FROM partner_lms_users WHERE is_active").await;
    assert_eq!(users, people.len() as i64);
    let enrolled: i64 = env.value("SELECT count(*) FROM partner_enrollments WHERE is_active").await;
    assert!(enrolled > 0);

    producer.stop().await;
    w1.stop().await;
    w2.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_run_starts_after_its_blocker_fails_and_a_cancelled_one_never_runs() {
    let sandbox = Sandbox::start().await;
    // The daily run's `sync_courses` fails for good at its first attempt.
    sandbox.faults("northpass", json!({ "failing_answers": ["/courses"] })).await;
    let chains = "[chains.partner_daily.steps.sync_courses]\nmax_attempts = 1\n";
    let env = TestEnv::new(&format!("{}\n{chains}", acme_toml(&sandbox, "", ""))).await;
    let producer = env.spawn_producer().await;
    let api = env.api(&producer, "operator").await;

    let daily = env.ops.trigger(manual(DAILY, "acme")).await.unwrap();
    let leads = env.ops.trigger_or_queue(manual(LEADS, "acme"), true).await.unwrap();
    let impartner = env.ops.trigger_or_queue(manual("partner_impartner", "acme"), true).await.unwrap();
    assert_eq!(listed(&api, &leads.to_string()).await["waiting_for"], daily.to_string().as_str());
    // Cancelling a queued run works; it never runs.
    let (status, body) = api.post(&format!("/api/runs/{impartner}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&api, &impartner.to_string()).await["status"], "cancelled");

    // Workers only now: the runs cannot have started before.
    let worker = env.spawn_worker("w").await;
    let daily = env.wait(daily, Duration::from_secs(60)).await;
    assert_eq!(daily.status, "failed", "{daily:#?}");
    let leads = env.wait(leads, Duration::from_secs(60)).await;
    assert_eq!(leads.status, "completed", "{leads:#?}");
    assert!(leads.started_at.unwrap() >= daily.finished_at.unwrap(), "{leads:#?}");
    assert_disjoint(&intervals(&env, &daily.id).await, &intervals(&env, &leads.id).await);
    let impartner = env.wait(impartner, Duration::from_secs(5)).await;
    assert_eq!(impartner.status, "cancelled");
    assert!(intervals(&env, &impartner.id).await.is_empty(), "{impartner:#?}");

    producer.stop().await;
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_triggers_start_one_and_other_integrations_run_side_by_side() {
    let sandbox = Sandbox::start().await;
    let beta = acme_toml(&sandbox, "", "").replace("integrations.acme", "integrations.beta");
    let env = TestEnv::new(&format!("{}\n{beta}", acme_toml(&sandbox, "", ""))).await;

    // Two manual triggers of exclusive chains at one instant: exactly one starts, the other is
    // refused naming it.
    for round in 0..5 {
        let (a, b) = tokio::join!(env.ops.trigger(manual(DAILY, "acme")), env.ops.trigger(manual(ENROLLMENTS, "acme")));
        let (started, refused) = match (a, b) {
            (Ok(run), Err(e)) => ((DAILY, run), e),
            (Err(e), Ok(run)) => ((ENROLLMENTS, run), e),
            other => panic!("round {round}: exactly one starts: {other:?}"),
        };
        match refused {
            StoreError::Excluded { running_chain, running_run, .. } => {
                assert_eq!((running_chain.as_str(), running_run), (started.0, started.1.to_string()))
            }
            other => panic!("round {round}: expected Excluded, got {other:?}"),
        }
        // Queued triggers at one instant: one starts, the other waits.
        let (c, d) = tokio::join!(
            env.ops.trigger_or_queue(manual(LEADS, "beta"), true),
            env.ops.trigger_or_queue(manual("partner_impartner", "beta"), true)
        );
        let waiting: i64 =
            env.value("SELECT count(*) FROM chain_runs WHERE status = 'queued' AND waiting_for IS NOT NULL").await;
        assert_eq!(waiting, 1, "round {round}");
        for run in [started.1, c.unwrap(), d.unwrap()] {
            env.ops.cancel(run, "test").await.unwrap();
        }
    }

    // The same chain for another integration is not excluded: both start at once.
    let acme = env.ops.trigger(manual(DAILY, "acme")).await.unwrap();
    let beta = env.ops.trigger(manual(DAILY, "beta")).await.unwrap();
    let ready: i64 = env
        .value(&format!(
            "SELECT count(DISTINCT run_id) FROM step_runs WHERE run_id IN ('{acme}', '{beta}') AND status = 'ready'"
        ))
        .await;
    assert_eq!(ready, 2, "both runs' root steps are ready");
    let worker = env.spawn_worker("w").await;
    for run in [acme, beta] {
        assert_eq!(env.wait(run, Duration::from_secs(120)).await.status, "completed");
    }
    // They ran side by side: their intervals overlap.
    let (a, b) = (intervals(&env, &acme.to_string()).await, intervals(&env, &beta.to_string()).await);
    let (a0, a1) = (a.iter().map(|i| i.1).min().unwrap(), a.iter().map(|i| i.2).max().unwrap());
    let (b0, b1) = (b.iter().map(|i| i.1).min().unwrap(), b.iter().map(|i| i.2).max().unwrap());
    assert!(a0 < b1 && b0 < a1, "acme [{a0}, {a1}] and beta [{b0}, {b1}] overlap");

    worker.stop().await;
    env.finish().await;
}
