//! `sync_leads`: Impartner leads, like `impartner_sync`: full mode reads every lead and sweeps the
//! ones gone upstream under the deletion guard; incremental mode reads what changed (`Updated`) and
//! deactivates the leads `_deleted` lists since the cursor. A lead first seen with status
//! `Converted` gets `converted_at` (in the step's completion transaction); the step reports how many
//! leads converted and how many went away.

use futures::{FutureExt, future::BoxFuture};

use super::{
    impartner::{Impartner, LEAD},
    pull_spec, settings_of,
};
use syncfleet_sdk::{
    chain::Mode,
    step::{StepContext, StepError, StepHandler},
    sync::{
        pull, sweep,
        table::{Column, ColumnType, Table, parse_timestamp},
    },
};

/// The status Impartner gives a converted lead.
pub const CONVERTED: &str = "Converted";

pub fn leads_table() -> Table {
    use ColumnType::{Double, Text, Timestamptz};
    let columns = [
        ("first_name", Text),
        ("last_name", Text),
        ("email", Text),
        ("company", Text),
        ("status", Text),
        ("lead_source", Text),
        ("partner_id", Text),
        ("estimated_value", Double),
        ("source_created_at", Timestamptz),
        ("source_updated_at", Timestamptz),
    ];
    let columns = columns.iter().map(|(n, ty)| Column { name: (*n).to_owned(), ty: *ty }).collect();
    Table::new("partner_leads", columns).expect("the leads table declaration is valid")
}

pub struct SyncLeads;

impl StepHandler for SyncLeads {
    fn run<'a>(&'a self, ctx: &'a mut StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        async move {
            let settings = settings_of(&ctx.integration)?;
            let client = settings.impartner_client(&ctx.http);
            let api = Impartner::new(&settings, &client, ctx.cancel.clone()).map_err(StepError::abort)?;
            let spec = pull_spec(&settings, "leads", leads_table());
            let outcome = pull::pull(ctx, &spec, &mut api.list(&LEAD)).await;
            let mut result = match outcome {
                Ok(r) => r,
                Err(e) => {
                    ctx.record_calls(&[&client]);
                    return Err(e);
                }
            };
            let mut deleted = 0;
            if ctx.mode == Mode::Incremental
                && let Some(since) = result.cursor_before.as_deref().and_then(parse_timestamp)
            {
                let gone = api.deleted(&LEAD, since - spec.lookback).await;
                ctx.record_calls(&[&client]);
                let integration_id = ctx.integration.id;
                deleted = sweep::deactivate_ids(ctx.tx().await?, &spec.table, integration_id, &gone?).await?;
                result.deactivated += deleted;
            }
            ctx.record_calls(&[&client]);
            let swept = result.deactivated - deleted;
            pull::merge(&mut ctx.result, "leads", result, 1);
            let integration_id = ctx.integration.id;
            let converted = sqlx::query(
                "UPDATE partner_leads SET converted_at = COALESCE(source_updated_at, now())
                 WHERE integration_id = $1 AND is_active AND status = $2 AND converted_at IS NULL",
            )
            .bind(integration_id)
            .bind(CONVERTED)
            .execute(&mut *ctx.tx().await?)
            .await?
            .rows_affected();
            ctx.note(format!("leads: {converted} newly converted, {} deleted upstream", deleted + swept));
            Ok(())
        }
        .boxed()
    }
}
