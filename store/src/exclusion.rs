//! Exclusion between chains (`Pack::exclusive_chains`, migration `0017`): the per-(integration,
//! group) lock around the check and the insert of a run, the run a waiting run is queued behind,
//! and the error naming the active run of a group. `runs` calls these when it creates runs and
//! promotes waiting ones (`runs::promote_waiting_in`).

use sqlx::{PgConnection, PgPool};

use crate::{StoreError, ids::RunId};

/// The run another run of an exclusion group waits behind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Blocker {
    pub(crate) id: uuid::Uuid,
    pub(crate) chain: String,
    pub(crate) status: String,
}

/// Takes the transaction-scoped lock of an integration's exclusion group: creations and
/// promotions in one group are serialized, so two triggers at one instant never both start.
pub(crate) async fn lock_group(conn: &mut PgConnection, integration_id: i64, group: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('run-exclusion:' || $1::text || ':' || $2, 0))")
        .bind(integration_id)
        .bind(group)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a new run of the group must wait behind: the group's active run that is not waiting
/// itself, else a run of the group with a step still running (a cancelled run's running steps
/// finish), else the oldest waiting run (waiting runs start in the order they were created).
pub(crate) async fn group_blocker(
    conn: &mut PgConnection,
    integration_id: i64,
    group: &str,
) -> Result<Option<Blocker>, sqlx::Error> {
    sqlx::query_as::<_, Blocker>(
        "SELECT id, chain, status FROM (
             SELECT r.id, r.chain, r.status, 0 AS rank, r.created_at FROM chain_runs r
              WHERE r.integration_id = $1 AND r.exclusion_group = $2
                AND r.status IN ('queued', 'running') AND r.waiting_for IS NULL
             UNION ALL
             SELECT r.id, r.chain, r.status, 1, r.created_at FROM step_runs s JOIN chain_runs r ON r.id = s.run_id
              WHERE s.status = 'running' AND r.integration_id = $1 AND r.exclusion_group = $2
             UNION ALL
             SELECT r.id, r.chain, r.status, 2, r.created_at FROM chain_runs r
              WHERE r.integration_id = $1 AND r.exclusion_group = $2
                AND r.status = 'queued' AND r.waiting_for IS NOT NULL
         ) b ORDER BY rank, created_at LIMIT 1",
    )
    .bind(integration_id)
    .bind(group)
    .fetch_optional(conn)
    .await
}

/// The `Excluded` error for `run_id`, naming the active run of its exclusion group.
pub(crate) async fn excluded_error(pool: &PgPool, run_id: RunId) -> StoreError {
    #[derive(sqlx::FromRow)]
    struct Found {
        chain: String,
        integration: String,
        running_chain: String,
        running_run: uuid::Uuid,
        running_status: String,
    }
    let found: Result<Option<Found>, _> = sqlx::query_as(
        "SELECT r.chain, i.name AS integration, a.chain AS running_chain, a.id AS running_run,
                a.status AS running_status
           FROM chain_runs r JOIN integrations i ON i.id = r.integration_id
           JOIN chain_runs a ON a.integration_id = r.integration_id AND a.exclusion_group = r.exclusion_group
                            AND a.status IN ('queued', 'running') AND a.waiting_for IS NULL AND a.id <> r.id
          WHERE r.id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await;
    match found {
        Ok(Some(f)) => StoreError::Excluded {
            chain: f.chain,
            integration: f.integration,
            running_chain: f.running_chain,
            running_run: f.running_run.to_string(),
            running_status: f.running_status,
        },
        Ok(None) => StoreError::Conflict(format!("run {run_id}: another run of its exclusion group is active")),
        Err(e) => StoreError::Db(e),
    }
}
