//! Schedules, integrations, tokens and the audit trail: how the fleet is configured (admin role
//! for changes). Each change commits in one transaction with its audit row
//! ([`syncfleet_store::audit::Audited`]).

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use syncfleet_shared::config::ScheduleSpec;
use syncfleet_store::{
    self as store, StoreError,
    audit::{AuditEntry, Audited},
    integrations::{self, IntegrationChange, IntegrationView},
    tokens::{self, Role, TokenInfo},
};
use utoipa::ToSchema;

use crate::{
    auth::{Admin, Viewer},
    ops::{Ops, ScheduleView},
};

use super::{ApiError, ApiResult, ErrorBody};

/// Every schedule (configured or stored) with its next execution.
#[utoipa::path(get, path = "/api/schedules", tag = "schedules", security(("bearer" = [])),
    responses((status = 200, body = Vec<ScheduleView>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_schedules(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<ScheduleView>> {
    Ok(Json(ops.schedules().await.map_err(ApiError::Internal)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScheduleQuery {
    /// The integration whose schedule of this chain to read.
    integration: String,
    /// `incremental` or `full`: which of the chain's schedules (default: the incremental one when
    /// there is one, else the first).
    mode: Option<String>,
}

fn mode_param(mode: Option<&str>) -> Result<Option<syncfleet_shared::chain::Mode>, ApiError> {
    mode.map(|m| {
        syncfleet_shared::chain::Mode::parse(m).ok_or_else(|| {
            ApiError::from(StoreError::Invalid(format!("mode: `{m}` is neither `incremental` nor `full`")))
        })
    })
    .transpose()
}

fn known_chain(ops: &Ops, chain: &str) -> Result<(), ApiError> {
    ops.chains.get(chain).map(|_| ()).ok_or_else(|| StoreError::UnknownChain(chain.into()).into())
}

/// The schedule of a chain for one integration, with its next execution.
#[utoipa::path(get, path = "/api/chains/{chain}/schedule", tag = "schedules", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name"), ScheduleQuery),
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_schedule(
    _: Viewer,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    q: Result<Query<ScheduleQuery>, QueryRejection>,
) -> ApiResult<ScheduleView> {
    let Query(q) = q?;
    known_chain(&ops, &chain)?;
    let mode = mode_param(q.mode.as_deref())?;
    store::integration_by_name(&ops.pool, &q.integration).await?;
    let all = ops.schedules().await.map_err(ApiError::Internal)?;
    let mut of: Vec<ScheduleView> =
        all.into_iter().filter(|s| s.chain == chain && s.integration == q.integration).collect();
    match mode {
        Some(m) => of.retain(|s| s.mode == m.as_str()),
        None => of.sort_by_key(|s| s.mode != "incremental"),
    }
    of.into_iter().next().map(Json).ok_or_else(|| {
        let mode = mode.map(|m| format!(" {}", m.as_str())).unwrap_or_default();
        ApiError::NotFound(format!("chain `{chain}` has no{mode} schedule for integration `{}`", q.integration))
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    integration: String,
    /// `incremental` (default) or `full`: the mode of the runs it fires. A chain has one schedule
    /// per mode for an integration.
    mode: Option<String>,
    /// Per-step modes of the runs it fires (`{"sync_enrollments": "incremental"}`).
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    step_modes: Option<std::collections::BTreeMap<String, String>>,
    /// Run every this many seconds (at least the deployment's minimum interval).
    interval_secs: Option<u64>,
    /// Or a crontab expression (`0 2 * * *`: 5 fields, 0 or 7 is Sunday; or 6 with seconds first),
    /// firing no more often than the minimum.
    cron: Option<String>,
    /// IANA time zone the cron expression is read in (default `UTC`).
    tz: Option<String>,
    /// False switches the schedule off (default true): the given mode's, or without a mode every
    /// schedule of the chain for the integration.
    enabled: Option<bool>,
}

/// Stores the schedule of a chain for one integration (overrides the config).
#[utoipa::path(put, path = "/api/chains/{chain}/schedule", tag = "schedules", security(("bearer" = [])),
    params(("chain" = String, Path, description = "Chain name")),
    request_body = ScheduleBody,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn put_schedule(
    who: Admin,
    State(ops): State<Ops>,
    Path(chain): Path<String>,
    body: Result<Json<ScheduleBody>, JsonRejection>,
) -> ApiResult<ScheduleView> {
    let Json(b) = body?;
    known_chain(&ops, &chain)?;
    let mode = mode_param(b.mode.as_deref())?;
    let mut step_modes = std::collections::BTreeMap::new();
    for (step, m) in b.step_modes.unwrap_or_default() {
        let parsed = mode_param(Some(&m)).map_err(|_| {
            ApiError::from(StoreError::Invalid(format!("step_modes: `{m}` is neither `incremental` nor `full`")))
        })?;
        step_modes.insert(step, parsed.unwrap_or_default());
    }
    let spec = ScheduleSpec {
        interval_secs: b.interval_secs,
        cron: b.cron.clone(),
        mode,
        tz: b.tz.clone(),
        step_modes,
        enabled: b.enabled,
    };
    ops.set_schedule(&chain, &b.integration, &spec, &who.actor()).await?;
    let shown = match mode {
        Some(m) => m.as_str(),
        None if !spec.is_enabled() => store::schedules::ALL_MODES,
        None => "incremental",
    };
    let all = ops.schedules().await.map_err(ApiError::Internal)?;
    all.into_iter()
        .find(|s| s.chain == chain && s.integration == b.integration && s.mode == shown)
        .map(Json)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored schedule not found after writing it")))
}

/// Every integration (secrets only as references).
#[utoipa::path(get, path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = Vec<IntegrationView>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_integrations(_: Viewer, State(ops): State<Ops>) -> ApiResult<Vec<IntegrationView>> {
    Ok(Json(integrations::list(&ops.pool).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    name: String,
    /// The pack: `demo` or `http-json`.
    pack: String,
    /// The pack's settings (secrets only as `secret_env` references).
    #[schema(value_type = Option<Object>)]
    settings: Option<serde_json::Value>,
    enabled: Option<bool>,
    /// `env:NAME` or `file:/path` of the webhook HMAC secret.
    webhook_secret_ref: Option<String>,
}

/// Creates an integration; its settings are checked against its pack.
#[utoipa::path(post, path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    request_body = CreateIntegration,
    responses((status = 201, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_integration(
    who: Admin,
    State(ops): State<Ops>,
    body: Result<Json<CreateIntegration>, JsonRejection>,
) -> Result<(StatusCode, Json<IntegrationView>), ApiError> {
    let Json(b) = body?;
    let change = IntegrationChange {
        pack: Some(b.pack),
        settings: b.settings,
        enabled: b.enabled,
        webhook_secret_ref: b.webhook_secret_ref,
    };
    // The row, its tables and its audit row commit together: a refused create leaves none of them.
    let mut tx = Audited::begin(&ops.pool).await?;
    integrations::create_in(tx.conn(), ops.registry.as_ref(), &b.name, &change).await?;
    let detail = json!({ "pack": change.pack, "enabled": change.enabled.unwrap_or(true) });
    tx.commit(&who.actor(), "integration.create", &b.name, detail).await?;
    let view = integrations::get(&ops.pool, &b.name).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One integration.
#[utoipa::path(get, path = "/api/integrations/{name}", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_integration(
    _: Viewer,
    State(ops): State<Ops>,
    Path(name): Path<String>,
) -> ApiResult<IntegrationView> {
    Ok(Json(integrations::get(&ops.pool, &name).await?))
}

/// Updates the given fields of an integration.
#[utoipa::path(put, path = "/api/integrations/{name}", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    request_body = IntegrationChange,
    responses((status = 200, body = IntegrationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_integration(
    who: Admin,
    State(ops): State<Ops>,
    Path(name): Path<String>,
    body: Result<Json<IntegrationChange>, JsonRejection>,
) -> ApiResult<IntegrationView> {
    let Json(change) = body?;
    let mut tx = Audited::begin(&ops.pool).await?;
    integrations::update_in(tx.conn(), ops.registry.as_ref(), &name, &change).await?;
    let detail = json!({ "pack": change.pack, "settings_changed": change.settings.is_some(), "enabled": change.enabled,
                         "webhook_secret_ref": change.webhook_secret_ref });
    tx.commit(&who.actor(), "integration.update", &name, detail).await?;
    Ok(Json(integrations::get(&ops.pool, &name).await?))
}

/// Disables an integration: no new runs (scheduled or manual) start for it.
#[utoipa::path(post, path = "/api/integrations/{name}/disable", tag = "integrations", security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name")),
    responses((status = 200, body = IntegrationView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn disable_integration(
    who: Admin,
    State(ops): State<Ops>,
    Path(name): Path<String>,
) -> ApiResult<IntegrationView> {
    let change = IntegrationChange { enabled: Some(false), ..Default::default() };
    let mut tx = Audited::begin(&ops.pool).await?;
    integrations::update_in(tx.conn(), ops.registry.as_ref(), &name, &change).await?;
    tx.commit(&who.actor(), "integration.disable", &name, json!({})).await?;
    Ok(Json(integrations::get(&ops.pool, &name).await?))
}

/// API tokens (never their secrets).
#[utoipa::path(get, path = "/api/tokens", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_tokens(_: Admin, State(ops): State<Ops>) -> ApiResult<Vec<TokenInfo>> {
    Ok(Json(tokens::list(&ops.pool).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token; shown once, stored only hashed.
    pub token: String,
}

/// Creates a token; its plaintext is in this answer only.
#[utoipa::path(post, path = "/api/tokens", tag = "fleet", security(("bearer" = [])),
    request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn create_token(
    who: Admin,
    State(ops): State<Ops>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let Json(b) = body?;
    let mut tx = Audited::begin(&ops.pool).await?;
    let (info, token) = tokens::create(tx.conn(), &b.name, b.role, &who.actor()).await?;
    tx.commit(&who.actor(), "token.create", &b.name, json!({ "role": b.role })).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { info, token })))
}

/// Revokes a token by name.
#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = String, Path, description = "Token name")),
    responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(who: Admin, State(ops): State<Ops>, Path(name): Path<String>) -> ApiResult<TokenInfo> {
    let mut tx = Audited::begin(&ops.pool).await?;
    let info = tokens::revoke(tx.conn(), &name).await?;
    tx.commit(&who.actor(), "token.revoke", &name, json!({})).await?;
    Ok(Json(info))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// 1–1000, default 100.
    limit: Option<i64>,
    offset: Option<i64>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "fleet", security(("bearer" = [])), params(Page),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn audit_log(
    _: Admin,
    State(ops): State<Ops>,
    page: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Vec<AuditEntry>> {
    let Query(p) = page?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit: must be between 1 and 1000, not {limit}")));
    }
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::BadRequest(format!("offset: must not be negative, not {offset}")));
    }
    Ok(Json(store::audit::list(&ops.pool, limit, offset).await?))
}
