//! Item errors (`item_errors`): one open row per (integration, entity, external id), recorded by
//! the pull and push engines and by packs that write in their own transactions, resolved when the
//! item syncs again or a complete full read no longer lists it.

use sqlx::PgConnection;

use crate::ids::RunId;

/// Records item errors of `entity`: one open row per item, a repeat counts an occurrence. For
/// packs whose steps write outside [`pull`] (per-program or per-course transactions).
pub async fn record_errors(
    conn: &mut PgConnection,
    run: Option<RunId>,
    step: &str,
    integration_id: i64,
    entity: &str,
    failed: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let (ids, messages): (Vec<&str>, Vec<&str>) = failed.iter().map(|(i, m)| (i.as_str(), m.as_str())).unzip();
    sqlx::query(
        "INSERT INTO item_errors (run_id, step, integration_id, entity, external_id, message)
         SELECT $1, $2, $3, $4, e, m FROM UNNEST($5::text[], $6::text[]) AS x(e, m)
         ON CONFLICT (integration_id, entity, external_id) WHERE resolved_at IS NULL DO UPDATE SET
             run_id = EXCLUDED.run_id, step = EXCLUDED.step, message = EXCLUDED.message,
             occurrences = item_errors.occurrences + 1, last_seen_at = now()",
    )
    .bind(run.map(|r| r.0))
    .bind(step)
    .bind(integration_id)
    .bind(entity)
    .bind(ids)
    .bind(messages)
    .execute(conn)
    .await?;
    Ok(())
}

/// Resolves the open item errors of `entity` for the items written successfully (`ids`).
pub async fn resolve(
    conn: &mut PgConnection,
    integration_id: i64,
    entity: &str,
    ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE item_errors SET resolved_at = now()
         WHERE integration_id = $1 AND entity = $2 AND resolved_at IS NULL AND external_id = ANY($3)",
    )
    .bind(integration_id)
    .bind(entity)
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Resolves the open item errors of `entity` that `run` did not see again (a complete full read).
pub(crate) async fn resolve_unrepeated(
    conn: &mut PgConnection,
    integration_id: i64,
    entity: &str,
    run: RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE item_errors SET resolved_at = now()
         WHERE integration_id = $1 AND entity = $2 AND resolved_at IS NULL AND run_id IS DISTINCT FROM $3",
    )
    .bind(integration_id)
    .bind(entity)
    .bind(run.0)
    .execute(conn)
    .await?;
    Ok(())
}
