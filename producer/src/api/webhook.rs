//! Single-item sync for webhooks, authenticated by the integration's HMAC signature (its secret
//! read from `webhook_secret_ref` by `syncfleet_sdk::secrets`).

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::HeaderMap,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use syncfleet_sdk::{
    pack::{ItemInput, ItemSyncError},
    secrets,
    sync::table::RowOutcome,
};
use syncfleet_store::{
    self as store, StoreError,
    integrations::{self},
};
use utoipa::ToSchema;

use crate::{
    auth::{self},
    ops::Ops,
};

use super::{ApiError, ApiResult, ErrorBody};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Fetch the record with this id from the upstream instead of reading it from the body.
    fetch: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemSynced {
    pub integration: String,
    pub entity: String,
    pub external_id: String,
    /// inserted, updated or unchanged.
    pub outcome: String,
}

/// Single-item sync (webhooks). Authenticated by the integration's HMAC signature
/// (`X-Syncfleet-Signature: sha256=<hex HMAC-SHA256 of the body>`), not a bearer token. The body
/// is the record as the upstream sends it, or `?fetch=<id>` fetches it; it goes through the
/// entity's mapping and the pull path's upsert.
#[utoipa::path(post, path = "/api/integrations/{name}/items/{entity}", tag = "integrations",
    params(("name" = String, Path, description = "Integration name"), ("entity" = String, Path, description = "Entity name"),
        ("x-syncfleet-signature" = String, Header, description = "sha256=<hex HMAC-SHA256(secret, body)>"), ItemQuery),
    request_body(content = Object, description = "The record as the upstream sends it", content_type = "application/json"),
    responses((status = 200, body = ItemSynced), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "The integration has no webhook secret"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(super) async fn sync_item(
    State(ops): State<Ops>,
    Path((name, entity)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<ItemQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult<ItemSynced> {
    let view = integrations::get(&ops.pool, &name).await?;
    let Some(secret_ref) = view.webhook_secret_ref.as_deref() else {
        return Err(ApiError::Forbidden(format!(
            "integration `{name}` has no webhook secret; set its webhook_secret_ref to accept signed items"
        )));
    };
    let Some(signature) = headers.get(auth::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::Unauthorized(format!(
            "missing {} header (sha256=<hex HMAC-SHA256 of the body>)",
            auth::SIGNATURE_HEADER
        )));
    };
    let secret = secrets::resolve_ref("webhook_secret_ref", secret_ref)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("webhook secret of integration `{name}`: {}", e.message)))?;
    auth::verify_signature(secret.expose().as_bytes(), &body, signature)?;
    let Query(q) = q?;
    let integration = store::integration_by_name(&ops.pool, &name).await?;
    if !integration.enabled {
        return Err(StoreError::IntegrationDisabled(name).into());
    }
    let Some(items) = ops.registry.pack(&integration.pack).and_then(|p| p.item_sync()) else {
        return Err(ApiError::Unprocessable(format!(
            "integration `{name}` is a `{}` integration, which has no single-item sync",
            integration.pack
        )));
    };
    let input = match q.fetch {
        Some(id) => ItemInput::FetchId(id),
        None => ItemInput::Record(
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: not JSON: {e}")))?,
        ),
    };
    let (external_id, outcome) =
        items.sync_item(&ops.pool, &ops.http, &integration, &entity, input).await.map_err(|e| match e {
            ItemSyncError::UnknownEntity(..) => ApiError::NotFound(e.to_string()),
            ItemSyncError::NoItemPath(_) | ItemSyncError::Invalid(_) => ApiError::Unprocessable(e.to_string()),
            ItemSyncError::Upstream(m) => ApiError::BadGateway(m),
            ItemSyncError::Db(e) => ApiError::Internal(e.into()),
        })?;
    let outcome = match outcome {
        RowOutcome::Inserted => "inserted",
        RowOutcome::Updated => "updated",
        RowOutcome::Unchanged => "unchanged",
    };
    ops.audit(
        &format!("webhook:{name}"),
        "item.sync",
        &format!("{name}/{entity}/{external_id}"),
        json!({ "outcome": outcome }),
    )
    .await;
    Ok(Json(ItemSynced { integration: name, entity, external_id, outcome: outcome.into() }))
}
