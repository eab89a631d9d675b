//! What one delivery of a step job does (`Engine::execute`): the job names the step's entity, the
//! worker takes that entity's lease before any query, and the claim, fenced on the job id, turns a
//! stale delivery away.

use std::time::Duration;

use serde_json::json;
use syncfleet_shared::{
    ids::{RunId, StepName},
    job::JobPayload,
};
use syncfleet_tests::TestEnv;
use syncfleet_worker::{Engine, engine::Executed, worker_name};

/// The step row's (status, attempts, job id, lease waits).
async fn row(env: &TestEnv, id: i64) -> (String, i32, String, i32) {
    sqlx::query_as("SELECT status, attempts, job_id, lease_waits FROM step_runs WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// A job pushed under an id PostgreSQL no longer names, or of a run it does not have, does nothing
/// and lets the entity's lease go; the current job, while another job holds the lease, is
/// delivered again under a new id without spending an attempt; once the lease is free, the step
/// runs once and its run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_delivery_does_nothing_and_leaves_the_entity_lease_free() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    // No worker runs: the step waits ready under its job id.
    let run = env.trigger("demo_ping", "acme").await;
    let (id, job_id, entity, queue): (i64, String, String, String) =
        sqlx::query_as("SELECT id, job_id, entity_key, queue FROM step_runs WHERE run_id = $1")
            .bind(run.0)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(row(&env, id).await, ("ready".into(), 0, job_id.clone(), 0));

    let (chains, handlers) = env.registry.build(&env.config).unwrap();
    let engine = Engine::new(
        env.config.clone(),
        env.pool.clone(),
        env.ops.queues.clone(),
        chains,
        handlers,
        worker_name(Some("deliveries")),
    );
    let job = |job_id: &str| JobPayload::StepV1 {
        run_id: RunId(run.0),
        step_run_id: id,
        step: StepName::parse("ping").unwrap(),
        shard: 0,
        job_id: job_id.to_owned(),
        trace_context: None,
        due_at_ms: None,
        entity: Some(entity.clone()),
    };
    let lease_key = format!("{}:lease:{entity}", env.config.redis.namespace);
    let mut redis = env.ops.queues.connection();
    let holder = async |redis: &mut redis::aio::ConnectionManager| -> Option<String> {
        redis::cmd("GET").arg(&lease_key).query_async(redis).await.unwrap()
    };

    // An id the step row does not name (a spent attempt's, say): nothing happens.
    let spent = format!("{job_id}:a9");
    assert_eq!(engine.execute(&queue, job(&spent)).await.unwrap(), Executed::Stale);
    assert_eq!(holder(&mut redis).await, None, "the stale delivery let the entity's lease go");
    assert_eq!(row(&env, id).await, ("ready".into(), 0, job_id.clone(), 0), "the step row is untouched");

    // A job of a run PostgreSQL does not have (a trigger pushes before its commit reaches the
    // disk: a crash of the server in between loses the run, not the job): nothing happens either.
    let lost_run = uuid::Uuid::new_v4();
    let lost = JobPayload::StepV1 {
        run_id: RunId(lost_run),
        step_run_id: id + 1_000_000,
        step: StepName::parse("ping").unwrap(),
        shard: 0,
        job_id: format!("{lost_run}:ping"),
        trace_context: None,
        due_at_ms: None,
        entity: Some(entity.clone()),
    };
    assert_eq!(engine.execute(&queue, lost).await.unwrap(), Executed::Stale);
    assert_eq!(holder(&mut redis).await, None, "the lost run's delivery let the entity's lease go");
    assert_eq!(row(&env, id).await, ("ready".into(), 0, job_id.clone(), 0), "the step row is untouched");

    // Another job holds the entity: the current job is delivered again later, no attempt spent.
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("another-job")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(engine.execute(&queue, job(&job_id)).await.unwrap(), Executed::LeaseBusy);
    let (status, attempts, next_id, waits) = row(&env, id).await;
    assert_eq!((status.as_str(), attempts, waits), ("ready", 0, 1));
    assert_eq!(next_id, format!("{job_id}:w1"), "re-delivered under a new id");
    // The old id, delivered again while the lease is busy, requeues nothing.
    assert_eq!(engine.execute(&queue, job(&job_id)).await.unwrap(), Executed::Stale);
    assert_eq!(row(&env, id).await.3, 1, "no second lease wait");
    assert_eq!(holder(&mut redis).await.as_deref(), Some("another-job"), "the holder's lease stays");

    // The lease is free: the current job runs once, and the run completes.
    let _: () = redis::cmd("DEL").arg(&lease_key).query_async(&mut redis).await.unwrap();
    assert_eq!(engine.execute(&queue, job(&next_id)).await.unwrap(), Executed::Succeeded);
    assert_eq!(holder(&mut redis).await, None, "released after the step");
    let view = env.wait(run, Duration::from_secs(30)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    assert_eq!(row(&env, id).await.0, "succeeded");
    assert_eq!(row(&env, id).await.1, 1, "one attempt");
    let effects: i64 = env.scalar("SELECT count(*) FROM demo_effects WHERE run_id = $1", run).await;
    assert_eq!(effects, 1, "the step's effect applied once");
    env.finish().await;
}
