//! What the producer's and the workers' probes and scrapes (and the CLI's `healthcheck`) read from
//! PostgreSQL and Redis: readiness, a plain ping, the queue depth gauges, and which run a
//! transaction just ended.

use sqlx::{PgConnection, PgPool};
use syncfleet_runtime::metrics::QUEUE_DEPTH;

use crate::queue::{QueueClient, QueueDepth};

/// Readiness of a producer or worker: PostgreSQL answers and holds every migration this build
/// knows, and Redis answers. `Err` says what is missing.
pub async fn readiness(pool: &PgPool, queues: &QueueClient) -> Result<(), String> {
    migration_state(pool).await?;
    queues.ping().await.map_err(|e| format!("Redis: {e}"))
}

/// PostgreSQL answers and `_sqlx_migrations` holds every migration this build embeds (readiness,
/// and every service's start-up on the runtime role). `Err` says what is missing.
pub async fn migration_state(pool: &PgPool) -> Result<(), String> {
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => {
                "database has no migrations applied (run `syncfleet migrate`)".to_owned()
            }
            _ => format!("PostgreSQL: {e}"),
        })?;
    let missing: Vec<String> = crate::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        return Err(format!("database lacks migration(s) {}", missing.join(", ")));
    }
    Ok(())
}

/// PostgreSQL answers a query (the CLI's `healthcheck`; [`readiness`] checks the migrations too).
pub async fn ping(pool: &PgPool) -> Result<(), crate::StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Sets the depth gauges of one queue (what autoscaling reads).
pub fn set_queue_depth(d: &QueueDepth) {
    let states = [
        ("ready", d.ready),
        ("scheduled", d.scheduled),
        ("inflight", d.inflight),
        ("dead", d.dead),
        ("blocked", d.blocked),
    ];
    for (state, n) in states {
        metrics::gauge!(QUEUE_DEPTH, "queue" => d.queue.clone(), "state" => state).set(n as f64);
    }
}

/// The chain and status of the run of step `step_run_id` when the caller's transaction just ended
/// it (`finished_at` is this transaction's `now()`). Call after `finish_step`, before the commit,
/// and count the run with `syncfleet_runtime::metrics::run_ended` once the commit succeeded.
pub async fn run_ended_in_tx(
    conn: &mut PgConnection,
    step_run_id: i64,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let ended: Option<(String, String, uuid::Uuid)> = sqlx::query_as(
        "SELECT r.chain, r.status, r.id FROM chain_runs r
          WHERE r.id = (SELECT run_id FROM step_runs WHERE id = $1) AND r.finished_at = now()",
    )
    .bind(step_run_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((chain, status, run_id)) = ended else {
        return Ok(None);
    };
    // The run's `run.ended` hook, delivered by the producer: committed with the end.
    crate::hooks::run_ended_in_tx(conn, run_id).await?;
    Ok(Some((chain, status)))
}
