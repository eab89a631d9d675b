//! What the producer's and the workers' probes and scrapes (and the CLI's `healthcheck`) read from
//! PostgreSQL and Redis: readiness, a plain ping, the latest successful runs, and which run a
//! transaction just ended. (The queue depth is `Ops::queue_depths`, with `queues::DepthFacts`.)

use sqlx::{PgConnection, PgPool};

use crate::ids::RunId;
use crate::queue::QueueClient;

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

/// At most this many (chain, integration) pairs are reported by [`last_successes`].
pub const LAST_SUCCESSES_MAX: i64 = 10_000;

/// The finish time (epoch s) of the latest completed run of each of `chains` for each integration
/// that has one: one index lookup per pair (`chain_runs_last_success`), at most
/// [`LAST_SUCCESSES_MAX`] pairs. Freshness alerts read it.
pub async fn last_successes(pool: &PgPool, chains: &[String]) -> Result<Vec<(String, String, f64)>, crate::StoreError> {
    Ok(sqlx::query_as(
        "SELECT c.chain, i.name, extract(epoch FROM r.finished_at)::float8
           FROM unnest($1::text[]) AS c(chain)
          CROSS JOIN integrations i
          CROSS JOIN LATERAL (
                SELECT finished_at FROM chain_runs
                 WHERE chain = c.chain AND integration_id = i.id AND status = 'completed'
                   AND finished_at IS NOT NULL
                 ORDER BY finished_at DESC LIMIT 1) r
          ORDER BY 1, 2
          LIMIT $2",
    )
    .bind(chains)
    .bind(LAST_SUCCESSES_MAX)
    .fetch_all(pool)
    .await?)
}

/// The chain and status of the run of step `step_run_id` when the caller's transaction just ended
/// it (`finished_at` is this transaction's `now()`), with its `run.ended` hook written. Call after
/// the finish, before the commit, and count the run with `syncfleet_runtime::metrics::run_ended`
/// once the commit succeeded.
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
    hook_ended(conn, ended).await
}

/// [`run_ended_in_tx`] by the run's id.
pub async fn run_ended_of_run_in_tx(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let ended: Option<(String, String, uuid::Uuid)> =
        sqlx::query_as("SELECT chain, status, id FROM chain_runs WHERE id = $1 AND finished_at = now()")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await?;
    hook_ended(conn, ended).await
}

/// Writes the `run.ended` hook of a run this transaction ended (delivered by the producer,
/// committed with the end); returns its chain and status.
async fn hook_ended(
    conn: &mut PgConnection,
    ended: Option<(String, String, uuid::Uuid)>,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let Some((chain, status, run_id)) = ended else {
        return Ok(None);
    };
    crate::hooks::run_ended_in_tx(conn, run_id).await?;
    Ok(Some((chain, status)))
}
