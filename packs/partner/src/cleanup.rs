//! `cleanup`: purges this integration's run history and item errors older than
//! `cleanup.retention_days` (default 30). A finished run (`completed`, `partial`, `failed`,
//! `cancelled`) goes with its step runs and item errors (`ON DELETE CASCADE`); item errors of kept
//! runs go when they were recorded before the cutoff. Active runs are never touched. Everything is
//! deleted in the step's completion transaction.
//!
//! ```toml
//! [integrations.acme.cleanup]
//! retention_days = 30
//! ```

use futures::{FutureExt, future::BoxFuture};
use serde::{Deserialize, Serialize};

use super::settings_of;
use syncfleet_sdk::step::{StepContext, StepError, StepHandler};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupSettings {
    /// Run history and item errors older than this many days are purged.
    pub retention_days: u32,
}

impl Default for CleanupSettings {
    fn default() -> Self {
        CleanupSettings { retention_days: 30 }
    }
}

pub struct Cleanup;

impl StepHandler for Cleanup {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let days = settings.cleanup.retention_days;
            if days == 0 {
                return Err(StepError::abort("`cleanup.retention_days` must be at least 1"));
            }
            let integration_id = ctx.integration.id;
            let conn = ctx.tx().await?;
            let (runs, steps, errors): (i64, i64, i64) = sqlx::query_as(
                "WITH old AS (
                     SELECT id FROM chain_runs
                     WHERE integration_id = $1
                       AND status IN ('completed', 'partial', 'failed', 'cancelled')
                       AND COALESCE(finished_at, created_at) < now() - make_interval(days => $2)
                 ),
                 counted AS (
                     SELECT (SELECT count(*) FROM step_runs WHERE run_id IN (SELECT id FROM old)) AS steps,
                            (SELECT count(*) FROM item_errors WHERE run_id IN (SELECT id FROM old)) AS errors
                 ),
                 gone AS (DELETE FROM chain_runs WHERE id IN (SELECT id FROM old) RETURNING id)
                 SELECT (SELECT count(*) FROM gone), steps, errors FROM counted",
            )
            .bind(integration_id)
            .bind(days as i32)
            .fetch_one(&mut *conn)
            .await?;
            let more_errors = sqlx::query(
                "DELETE FROM item_errors
                 WHERE integration_id = $1 AND created_at < now() - make_interval(days => $2)",
            )
            .bind(integration_id)
            .bind(days as i32)
            .execute(&mut *conn)
            .await?
            .rows_affected() as i64;
            // Delivery records only guard a run's retries.
            sqlx::query("DELETE FROM report_deliveries WHERE sent_at < now() - make_interval(days => $1)")
                .bind(days as i32)
                .execute(&mut *conn)
                .await?;
            ctx.result.deactivated = runs + steps + errors + more_errors;
            ctx.note(format!(
                "cleanup: {runs} run(s) with {steps} step run(s), {} item error(s) older than {days} day(s) purged",
                errors + more_errors
            ));
            Ok(())
        }
        .boxed()
    }
}
