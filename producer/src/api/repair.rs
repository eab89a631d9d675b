//! Operator tools for data repair (admin role), for the API and the CLI alike (the CLI calls the
//! same [`Ops`] methods): what a full run's sweep would deactivate now, with the deletion guard's
//! decision, before anyone forces it (`GET /api/chains/{chain}/sweep-preview`, `syncfleet sweep
//! preview`), and moving an entity's incremental cursor (`POST
//! /api/integrations/{name}/cursors/{entity}/reset`, `syncfleet cursor reset`). Each is recorded
//! in the audit trail in its own transaction (`sweep.preview`, `cursor.reset`).
//!
//! The preview reads no upstream: it answers from what the tables record (see
//! `syncfleet_store::repair`): the active rows the last full read of the chain did not see, nor any
//! run since. The guard's decision is the SDK's (`sweep::refusal`, `sweep::decide`) on those counts,
//! with the integration's `max_deactivate_share` (the entity's, else the integration's, else the
//! SDK's 15 %); the rules that need the read itself (short pages, unreadable ids, a total that
//! disagrees) are in the last full read's own `guard`, shown beside it.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use syncfleet_sdk::sync::sweep;
use syncfleet_store::{
    self as store, StoreError,
    audit::Audited,
    repair::{self, FullRead},
};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, ErrorBody};
use crate::{auth::Admin, ops::Ops};

/// The SDK's default share limit of a full sweep (`PullSpec::new`).
const DEFAULT_SHARE: f64 = 0.15;

/// Ids listed per table unless asked otherwise.
pub const DEFAULT_LIMIT: i64 = 1_000;

/// What a full run of a chain would deactivate now, per synced table, and the guard's decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SweepPreview {
    pub chain: String,
    pub integration: String,
    /// The read the preview is measured against; absent when the chain never completed a full run
    /// for the integration (nothing can be told before one has read everything).
    #[schema(value_type = Option<Object>)]
    pub last_full_read: Option<Value>,
    pub tables: Vec<TableSweep>,
    /// One line saying what the preview means and what to do.
    pub note: String,
}

/// One table of a [`SweepPreview`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TableSweep {
    pub table: String,
    /// Active rows of the integration.
    pub active: i64,
    /// Rows a full run would deactivate now (not seen by the last full read nor since).
    pub would_deactivate: i64,
    /// Their external ids (at most the preview's limit).
    pub external_ids: Vec<String>,
    /// The guard's decision: `sweep` (a full run deactivates them), `refused` (only
    /// `--force-sweep` does), or `nothing` (nothing to deactivate).
    pub decision: String,
    /// Why the guard refuses, when it does.
    pub reason: Option<String>,
    pub max_deactivate_share: f64,
}

/// The share limit the integration's settings give `table`: the entity's writing to it, else the
/// integration's, else the SDK's default.
fn share_of(settings: &Value, table: &str) -> f64 {
    let entity = settings["entities"]
        .as_object()
        .and_then(|entities| entities.values().find(|e| e["table"].as_str() == Some(table)));
    entity
        .and_then(|e| e["max_deactivate_share"].as_f64())
        .or_else(|| settings["max_deactivate_share"].as_f64())
        .unwrap_or(DEFAULT_SHARE)
}

/// The table an `--entity` names: the table of the integration's entity of that name (its
/// settings' `entities.<name>.table`), else a table of that name.
fn table_of(settings: &Value, entity: &str) -> String {
    settings["entities"][entity]["table"].as_str().unwrap_or(entity).to_owned()
}

fn full_read_json(read: &FullRead) -> Value {
    serde_json::to_value(read).unwrap_or(Value::Null)
}

impl Ops {
    /// What a full run of `chain` for `integration` would deactivate now (only `entity`'s table
    /// when given), with the guard's decision per table; recorded as `sweep.preview` by `actor`.
    pub async fn sweep_preview(
        &self,
        chain: &str,
        integration: &str,
        entity: Option<&str>,
        limit: i64,
        actor: &str,
    ) -> Result<SweepPreview, StoreError> {
        let def = self.chains.get(chain).ok_or_else(|| StoreError::UnknownChain(chain.into()))?;
        let i = store::integration_by_name(&self.pool, integration).await?;
        if def.pack != i.pack {
            return Err(StoreError::PackMismatch {
                chain: chain.into(),
                chain_pack: def.pack.clone(),
                integration: integration.into(),
                integration_pack: i.pack.clone(),
            });
        }
        let table = entity.map(|e| table_of(&i.settings, e));
        let mut audited = Audited::begin(&self.pool).await?;
        let read = repair::last_full_read(audited.conn(), chain, i.id).await?;
        let mut tables = vec![];
        if let Some(read) = &read {
            for t in repair::sweep_preview(audited.conn(), i.id, read, table.as_deref(), limit).await? {
                let share = share_of(&i.settings, &t.table);
                // What the guard knows without the read: the rows it saw, the rows active, the rows
                // it would deactivate.
                let facts = sweep::Facts {
                    fetched: t.active - t.missing,
                    active: t.active,
                    missing: t.missing,
                    ..Default::default()
                };
                let (decision, reason) = match sweep::decide(sweep::refusal(&facts, sweep::Limits::full(share)), false)
                {
                    Err(reason) => ("refused", Some(reason)),
                    Ok(_) if t.missing == 0 => ("nothing", None),
                    Ok(_) => ("sweep", None),
                };
                tables.push(TableSweep {
                    table: t.table,
                    active: t.active,
                    would_deactivate: t.missing,
                    external_ids: t.external_ids,
                    decision: decision.into(),
                    reason,
                    max_deactivate_share: share,
                });
            }
        }
        if let (Some(wanted), true) = (&table, read.is_some() && tables.is_empty()) {
            return Err(StoreError::NotFound(format!(
                "entity: `{}` names no table the last full read of `{chain}` wrote for `{integration}`",
                entity.unwrap_or(wanted)
            )));
        }
        let note = match (&read, tables.iter().any(|t| t.decision == "refused")) {
            (None, _) => format!(
                "`{chain}` has no completed full run for `{integration}`: run one (`syncfleet trigger {chain} --integration {integration} --mode full`), then preview"
            ),
            (Some(_), true) => format!(
                "the guard refuses a sweep: after checking the rows above, `syncfleet trigger {chain} --integration {integration} --mode full --force-sweep` deactivates them"
            ),
            (Some(_), false) => {
                "a full run deactivates the rows above, if the upstream is as the last full read found it".into()
            }
        };
        let detail = json!({
            "chain": chain,
            "entity": entity,
            "last_full_run": read.as_ref().map(|r| r.run_id.to_string()),
            "tables": tables.iter().map(|t| json!({ "table": t.table, "would_deactivate": t.would_deactivate, "decision": t.decision })).collect::<Vec<_>>(),
        });
        audited.commit(actor, "sweep.preview", &format!("{chain}/{integration}"), detail).await?;
        Ok(SweepPreview {
            chain: chain.into(),
            integration: integration.into(),
            last_full_read: read.as_ref().map(full_read_json),
            tables,
            note,
        })
    }

    /// Moves the incremental cursor of `entity` of `integration` to `since` (`None`: removes it, so
    /// the next run reads everything); recorded as `cursor.reset` by `actor`.
    pub async fn reset_cursor(
        &self,
        integration: &str,
        entity: &str,
        since: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<CursorReset, StoreError> {
        let i = store::integration_by_name(&self.pool, integration).await?;
        if since.is_some_and(|t| t > Utc::now()) {
            return Err(StoreError::Invalid("since: must not be in the future".into()));
        }
        let mut audited = Audited::begin(&self.pool).await?;
        let previous = repair::reset_cursor(audited.conn(), i.id, entity, since).await?;
        let value = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        audited
            .commit(
                actor,
                "cursor.reset",
                &format!("{integration}/{entity}"),
                json!({ "previous": previous, "value": value }),
            )
            .await?;
        Ok(CursorReset { integration: integration.into(), entity: entity.into(), previous, value })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// The integration (name).
    integration: String,
    /// Only this entity (its table), or a synced table by name.
    entity: Option<String>,
    /// Ids listed per table (1–100000, default 1000).
    limit: Option<i64>,
}

/// What a full run of the chain would deactivate now for an integration, and the deletion guard's
/// decision, from the last full read (no upstream is read). Recorded in the audit trail.
#[utoipa::path(get, path = "/api/chains/{chain}/sweep-preview", tag = "repair", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name"), PreviewQuery),
    responses((status = 200, body = SweepPreview), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "Unknown chain, integration or entity")))]
pub(super) async fn sweep_preview(
    who: Admin,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> ApiResult<SweepPreview> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit: must be between 1 and 100000, not {limit}")));
    }
    Ok(Json(ops.sweep_preview(&chain, &q.integration, q.entity.as_deref(), limit, &who.actor()).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorResetBody {
    /// The next incremental run reads changes from this time (RFC 3339; minus the entity's
    /// lookback). Absent or null: the cursor is removed and the next run reads everything.
    since: Option<DateTime<Utc>>,
}

/// An entity's cursor before and after a reset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CursorReset {
    pub integration: String,
    pub entity: String,
    pub previous: String,
    /// The new cursor; absent when it was removed.
    pub value: Option<String>,
}

/// Makes the next incremental run of an integration's entity read from a time. Recorded in the
/// audit trail.
#[utoipa::path(post, path = "/api/integrations/{name}/cursors/{entity}/reset", tag = "repair", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name"), ("entity" = String, Path, description = "Entity (cursor) name")),
    request_body = CursorResetBody,
    responses((status = 200, body = CursorReset), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "Unknown integration, or an entity without a cursor")))]
pub(super) async fn reset_cursor(
    who: Admin,
    State(ops): State<Ops>,
    Path((name, entity)): Path<(String, String)>,
    body: Result<Json<CursorResetBody>, JsonRejection>,
) -> ApiResult<CursorReset> {
    let Json(b) = body?;
    Ok(Json(ops.reset_cursor(&name, &entity, b.since, &who.actor()).await?))
}
