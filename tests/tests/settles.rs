//! A run's settle after its steps' finishes, against real PostgreSQL and Redis: what a finish
//! leaves to settle, the runs' settle turns in Redis, successes recorded together, a fan-out's
//! shards settling once their step is done, the reconciler's net for a settle that never ran, and
//! the settle's reads through the indexes.

use std::time::Duration;

use serde_json::json;
use syncfleet_store::queue::SettleMarks;
use syncfleet_tests::TestEnv;

/// Finishes a step as a worker that dies right after its finish commits would: claimed, the step
/// row committed `succeeded`, and no settle after it.
async fn finish_without_settle(env: &TestEnv, run: syncfleet_shared::ids::RunId, step: &str) {
    use syncfleet_store::runs::{self, Claim, Fence, Outcome};
    let (id, job): (i64, String) =
        sqlx::query_as("SELECT id, job_id FROM step_runs WHERE run_id = $1 AND step = $2 AND status = 'ready'")
            .bind(run.0)
            .bind(step)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(matches!(runs::claim(&env.pool, id, &job, "gone").await.unwrap(), Claim::Claimed(_)));
    let mut tx = env.pool.begin().await.unwrap();
    let fence = Fence { step_run_id: id, job_id: &job, worker: Some("gone") };
    let finished =
        runs::finish_step_in(&mut tx, &fence, &Outcome::Succeeded(Default::default())).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(finished.settle, Some(run), "the finish names its run to settle");
    assert!(finished.ready.is_empty(), "a finish writes its own row only");
}

/// Successes recorded together (`runs::finish_successes`, one call for several): each under its own
/// fence, with its own counts; the run settled once its step is done, what the settle made ready and
/// the run's end given with the first success of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn successes_recorded_together_keep_each_fence_and_settle_their_run_once_done() {
    use syncfleet_shared::phase::PhaseResult;
    use syncfleet_store::runs::{self, Claim, Success};
    const WORKER: &str = "together";
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 4\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    // No worker runs: this test claims and finishes the steps itself.
    let run = env.trigger("demo_fanout", "acme").await;
    let ready = async |step: &str| -> Vec<(i64, String)> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, job_id FROM step_runs WHERE run_id = $1 AND step = $2 AND status = 'ready' ORDER BY shard",
        )
        .bind(run.0)
        .bind(step)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        for (id, job) in &rows {
            assert!(matches!(runs::claim(&env.pool, *id, job, WORKER).await.unwrap(), Claim::Claimed(_)));
        }
        rows
    };
    let success = |(id, job): &(i64, String), fetched: i64| Success {
        step_run_id: *id,
        job_id: job.clone(),
        result: PhaseResult { fetched, ..Default::default() },
    };
    let ids = |finished: &Option<syncfleet_store::runs::Finished>| -> Vec<i64> {
        finished.as_ref().map(|f| f.ready.iter().map(|r| r.id).collect()).unwrap_or_default()
    };

    let plan = ready("plan").await;
    let answers = runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some(WORKER), &[success(&plan[0], 0)])
        .await
        .unwrap();
    assert_eq!(ids(&answers[0]).len(), 4, "plan's settle made the four shards ready");

    // Three shards and one delivery under a spent job id, in one call: the stale one writes nothing;
    // the fourth shard still runs, so nothing settles.
    let fan = ready("fan").await;
    let stale = (fan[3].0, format!("{}:a9", fan[3].1));
    let batch = [success(&fan[0], 10), success(&fan[1], 11), success(&stale, 99), success(&fan[2], 12)];
    let answers = runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some(WORKER), &batch).await.unwrap();
    let recorded: Vec<bool> = answers.iter().map(Option::is_some).collect();
    assert_eq!(recorded, [true, true, false, true], "each success under its own fence");
    assert!(answers.iter().flatten().all(|f| f.ready.is_empty() && f.run_ended.is_none()), "{answers:?}");
    let rows: Vec<(i32, String, i64)> = sqlx::query_as(
        "SELECT shard, status, fetched FROM step_runs WHERE run_id = $1 AND step = 'fan' ORDER BY shard",
    )
    .bind(run.0)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let want: Vec<(i32, String, i64)> = vec![
        (0, "succeeded".into(), 10),
        (1, "succeeded".into(), 11),
        (2, "succeeded".into(), 12),
        (3, "running".into(), 0),
    ];
    assert_eq!(rows, want);

    // The last shard, under its own job id, and another worker's claim of it refused: its success
    // settles the run, and `collect` is ready.
    let another =
        runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some("another"), &[success(&fan[3], 13)])
            .await
            .unwrap();
    assert!(another[0].is_none(), "another worker's success of the shard is refused");
    let answers = runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some(WORKER), &[success(&fan[3], 13)])
        .await
        .unwrap();
    let collect = ready("collect").await;
    assert_eq!(ids(&answers[0]), vec![collect[0].0], "the last shard's success made collect ready");

    // `collect` ends the run: its end goes with the success.
    let answers =
        runs::finish_successes(&mut env.pool.acquire().await.unwrap(), Some(WORKER), &[success(&collect[0], 0)])
            .await
            .unwrap();
    assert_eq!(answers[0].as_ref().and_then(|f| f.run_ended.clone()), Some(("demo_fanout".into(), "completed".into())));
    assert_eq!(env.scalar::<String>("SELECT status FROM chain_runs WHERE id = $1", run).await, "completed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finish_whose_worker_died_before_the_settle_is_settled_by_the_reconciler() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 3\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;

    // `plan` finished, its settle never ran: the shards it unblocks are still pending.
    let run = env.trigger("demo_fanout", "acme").await;
    finish_without_settle(&env, run, "plan").await;
    let pending: i64 = env
        .scalar("SELECT count(*) FROM step_runs WHERE run_id = $1 AND step = 'fan' AND status = 'pending'", run)
        .await;
    assert_eq!(pending, 3);

    // The producer's reconciler settles the run; a worker runs the rest, each step once.
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let effects = env.effects(run).await;
    let names: Vec<(&str, i32, i64)> = effects.iter().map(|(s, shard, n)| (s.as_str(), *shard, *n)).collect();
    assert_eq!(names, vec![("collect", 0, 1), ("fan", 0, 1), ("fan", 1, 1), ("fan", 2, 1)]);

    // The last step finished, its settle never ran: the run has nothing open and is still
    // running until the reconciler ends it, with one `run.ended` hook.
    worker.stop().await;
    let ping = env.trigger("demo_ping", "acme").await;
    finish_without_settle(&env, ping, "ping").await;
    let status: String = env.scalar("SELECT status FROM chain_runs WHERE id = $1", ping).await;
    assert_eq!(status, "running");
    let view = env.wait(ping, Duration::from_secs(30)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let hooks: i64 = env.scalar("SELECT count(*) FROM run_hooks WHERE run_id = $1 AND event = 'run.ended'", ping).await;
    assert_eq!(hooks, 1);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_settle_turn_is_taken_marked_and_given_up_in_redis() {
    let env = TestEnv::new("").await;
    let (q, run, ttl) = (&env.ops.queues, syncfleet_shared::ids::RunId::new().to_string(), Duration::from_secs(10));

    assert!(q.settle_take(&run, ttl).await.unwrap(), "nobody holds the turn: taken");
    assert!(!q.settle_take(&run, ttl).await.unwrap(), "one holder at a time");
    assert!(!q.settle_follow(&run, None, ttl).await.unwrap(), "a finish during the settle marks the turn");
    assert!(!q.settle_follow(&run, Some(7), ttl).await.unwrap());
    assert_eq!(q.settle_again(&run, ttl).await.unwrap(), SettleMarks::Any, "the marks call for one more settle");
    // Successes alone mark the turn with their step rows: the holder checks their steps.
    assert!(!q.settle_follow(&run, Some(7), ttl).await.unwrap(), "a success during the settle marks the turn");
    assert!(!q.settle_follow(&run, Some(9), ttl).await.unwrap());
    let SettleMarks::Successes(mut succeeded) = q.settle_again(&run, ttl).await.unwrap() else {
        panic!("successes alone marked the turn");
    };
    succeeded.sort();
    assert_eq!(succeeded, [7, 9], "the successes' step rows, for one more settle unless their steps are still open");
    assert_eq!(q.settle_again(&run, ttl).await.unwrap(), SettleMarks::None, "no finish since: the turn is given up");
    assert!(q.settle_follow(&run, Some(7), ttl).await.unwrap(), "a finish after that takes the turn itself");
    assert_eq!(q.settle_again(&run, ttl).await.unwrap(), SettleMarks::None, "its own success marks nothing");

    // A holder that died: its turn lapses, and the next finish takes it.
    assert!(q.settle_take(&run, Duration::from_millis(50)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(q.settle_follow(&run, None, ttl).await.unwrap(), "the lapsed turn is taken");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finishes_under_a_settle_turn_whose_holder_died_are_settled_by_the_reconciler() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 6\n").await;
    env.demo_integration("acme", json!({ "step_ms": 20 })).await;

    // A holder of the run's settle turn that died without giving it up: every finish only marks
    // the turn and leaves its settle to the holder.
    let run = env.trigger("demo_fanout", "acme").await;
    let turn = run.to_string();
    assert!(env.ops.queues.settle_take(&turn, Duration::from_secs(600)).await.unwrap());

    let producer = env.spawn_producer().await;
    let (w1, w2) = (env.spawn_worker("w1").await, env.spawn_worker("w2").await);
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let effects = env.effects(run).await;
    let names: Vec<(&str, i32, i64)> = effects.iter().map(|(s, shard, n)| (s.as_str(), *shard, *n)).collect();
    let mut want = vec![("collect", 0, 1)];
    want.extend((0..6).map(|shard| ("fan", shard, 1)));
    want.push(("plan", 0, 1));
    assert_eq!(names, want, "every step once");
    let steps: Vec<i64> = sqlx::query_scalar("SELECT id FROM step_runs WHERE run_id = $1 ORDER BY id")
        .bind(run.0)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let SettleMarks::Successes(mut marked) = env.ops.queues.settle_again(&turn, Duration::from_secs(1)).await.unwrap()
    else {
        panic!("the finishes, every one a success, marked the turn with their step rows");
    };
    marked.sort();
    assert_eq!(marked, steps, "the finishes marked the turn rather than settling");

    w1.stop().await;
    w2.stop().await;
    producer.stop().await;
    env.finish().await;
}

/// A fan-out of `shards` shards run by two worker processes and no producer (a settle the finishes
/// missed would leave the run running; the reconciler's safety net would settle it), in a database
/// whose sessions count their PL/pgSQL calls (`pg_stat_user_functions`). Checks that the run
/// completed with every step once; returns the calls of each function, read once every session of
/// the workers ended (a session reports its calls as it ends).
async fn fan_out_function_calls(env: &TestEnv, shards: i64) -> std::collections::HashMap<String, i64> {
    // `track_functions` is a setting only a superuser may make.
    let url = syncfleet_store::roles::with_user(env.config.database.url.expose(), "postgres");
    let superuser = sqlx::PgPool::connect(&url).await.unwrap();
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&superuser).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{db}\" SET track_functions = 'pl'")))
        .execute(&superuser)
        .await
        .unwrap();

    // The worker processes' sessions start after the setting, named after their process.
    let names = [format!("settle-a-{}", env.id), format!("settle-b-{}", env.id)];
    let mut workers = names.clone().map(|name| {
        let url = format!("{}?application_name={name}", env.config.database.url.expose());
        env.worker_process(&name).env("SYNCFLEET__DATABASE__URL", url).spawn().unwrap()
    });
    let run = env.trigger("demo_fanout", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let (succeeded, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), sum(attempts)::bigint FROM step_runs WHERE run_id = $1",
    )
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((succeeded, attempts), (shards + 2, shards + 2), "plan, every shard and collect, once each");
    for w in &mut workers {
        w.kill().await.ok();
    }
    env.eventually(Duration::from_secs(30), "the workers' sessions to end", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1)")
            .bind(&names)
            .fetch_one(&superuser)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    let calls: Vec<(String, i64)> =
        sqlx::query_as("SELECT funcname::text, sum(calls)::bigint FROM pg_stat_user_functions GROUP BY funcname")
            .fetch_all(&superuser)
            .await
            .unwrap();
    superuser.close().await;
    calls.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shards_of_a_fan_out_settle_their_run_only_once_their_step_is_done() {
    const SHARDS: i64 = 150;
    let env = TestEnv::new(&format!("[chains.demo_fanout.steps.fan]\nshards = {SHARDS}\n")).await;
    // Steps that write nothing: their successes finish and settle in one round trip, several at once
    // (`step_succeed_settle`).
    env.demo_integration("acme", json!({ "step_ms": 0, "effects": false })).await;
    let calls = fan_out_function_calls(&env, SHARDS).await;
    let calls = |function: &str| calls.get(function).copied().unwrap_or(0);

    // Every success checks its step's other rows once (`step_siblings_open`).
    assert_eq!(calls("step_siblings_open"), SHARDS + 2, "every success's check counted");
    // Each worker process records the successes waiting at once in one call (`0029`).
    let calls_of_successes = calls("step_succeed_settle");
    assert!(calls_of_successes < SHARDS + 2, "{calls_of_successes} calls for {} successes", SHARDS + 2);
    let settles = calls("step_settle");
    // `plan`'s success settles (it makes the shards ready), and so do the shards that end once no
    // other shard is open: at most as many as run at once (2 workers of 4), `collect`'s settle ends
    // the run. Before `0028` every success settled: 152 settles.
    assert!((3..=2 + 8).contains(&settles), "{settles} settles for {SHARDS} shards");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shards_of_a_fan_out_writing_their_effects_settle_their_run_only_once_their_step_is_done() {
    const SHARDS: i64 = 150;
    let env = TestEnv::new(&format!("[chains.demo_fanout.steps.fan]\nshards = {SHARDS}\n")).await;
    // Steps that write their effect: each commits it with its step row, then settles in the run's
    // settle turn, or marks the turn for its holder (`worker/src/settles.rs`).
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let calls = fan_out_function_calls(&env, SHARDS).await;
    let calls = |function: &str| calls.get(function).copied().unwrap_or(0);

    assert_eq!(calls("step_finish"), SHARDS + 2, "one finish per step");
    let settles = calls("step_settle");
    // As without effects: `plan`'s settle, those of the shards ending once no other shard is open
    // (by themselves or by the holder of the turn they marked), `collect`'s. Before `0031`, a
    // holder settled again for every turn its shards marked, each reading the whole run.
    assert!((3..=2 + 8).contains(&settles), "{settles} settles for {SHARDS} shards");
    env.finish().await;
}

/// What one transaction of `step_settle` on `run` did: the steps it made ready, and the
/// sequential scans of `step_runs` it made (this transaction's statistics).
async fn settle_scans(env: &TestEnv, run: syncfleet_shared::ids::RunId) -> (Vec<i64>, bool, i64) {
    let mut tx = env.pool.begin().await.unwrap();
    let (ready, needs_end): (Vec<i64>, bool) = sqlx::query_as("SELECT ready_ids, needs_end FROM step_settle($1)")
        .bind(run.0)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let due: bool = sqlx::query_scalar("SELECT run_settle_due($1)").bind(run.0).fetch_one(&mut *tx).await.unwrap();
    assert!(!due, "a settle leaves nothing due");
    let scans: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(seq_scan), 0)::bigint FROM pg_stat_xact_user_tables WHERE relname = 'step_runs'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (ready, needs_end, scans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_of_a_large_fan_out_reads_its_steps_through_the_indexes() {
    let env = TestEnv::new("[chains.demo_fanout.steps.fan]\nshards = 2000\n").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;

    // A fan-out half done, on a `step_runs` that holds this run only, with fresh statistics: the
    // planner expects half the rows to be open, and the ended ones come first in the table.
    let run = env.trigger("demo_fanout", "acme").await;
    let owner = env.owner_pool().await;
    for sql in [
        "UPDATE chain_runs SET status = 'running', started_at = now() WHERE id = $1",
        "UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE run_id = $1 AND step = 'plan'",
        "UPDATE step_runs SET status = CASE WHEN shard < 1000 THEN 'succeeded' WHEN shard < 1008 THEN 'running'
                                             ELSE 'ready' END
          WHERE run_id = $1 AND step = 'fan'",
    ] {
        sqlx::query(sql).bind(run.0).execute(&owner).await.unwrap();
    }
    sqlx::raw_sql("VACUUM ANALYZE step_runs").execute(&owner).await.unwrap();

    // Nothing to promote, the run open: found by index probes, without reading the table.
    let (ready, needs_end, scans) = settle_scans(&env, run).await;
    assert!(ready.is_empty() && !needs_end, "{ready:?} {needs_end}");
    assert_eq!(scans, 0, "a settle read step_runs from its start");

    // The last shard ended: the settle promotes `collect`, still by index.
    sqlx::query("UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE run_id = $1 AND step = 'fan'")
        .bind(run.0)
        .execute(&owner)
        .await
        .unwrap();
    let collect: i64 = env.scalar("SELECT id FROM step_runs WHERE run_id = $1 AND step = 'collect'", run).await;
    let (ready, needs_end, scans) = settle_scans(&env, run).await;
    assert_eq!((ready, needs_end), (vec![collect], false));
    assert_eq!(scans, 0, "a settle read step_runs from its start");

    // `collect` ended: nothing is open, and the settle says the run must end.
    sqlx::query("UPDATE step_runs SET status = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(collect)
        .execute(&owner)
        .await
        .unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    let needs_end: bool =
        sqlx::query_scalar("SELECT needs_end FROM step_settle($1)").bind(run.0).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(needs_end, "a run with nothing open is ended");
    owner.close().await;
    env.finish().await;
}
