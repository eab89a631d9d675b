//! Single-item sync for webhooks, authenticated by the integration's HMAC signature (signed
//! webhooks v2, [`crate::auth::verify_signature`]; the secret read from `webhook_secret_ref` by
//! `syncfleet_sdk::secrets` under the deployment's `[secrets]`, at least 32 bytes). A replayed
//! signature is refused: each accepted one is remembered in Redis beyond its window.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, Method, Uri},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use syncfleet_sdk::{
    pack::{ItemInput, ItemSyncError},
    secrets,
    sync::table::RowOutcome,
};
use syncfleet_store::{
    self as store, Integration, StoreError,
    integrations::{self},
};
use utoipa::ToSchema;

use crate::{
    auth::{self, WebhookRefusal},
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

/// Single-item sync (webhooks), authenticated by the integration's HMAC signature (signed
/// webhooks v2), not a bearer token. The sender sends `X-Syncfleet-Timestamp: <unix seconds>` and
/// `X-Syncfleet-Signature: v2=<hex HMAC-SHA256(secret, "{timestamp}\n{METHOD}\n{path with
/// query}\n" + body)>`, the path exactly as requested (it names the integration and the entity).
/// The timestamp must be within 5 minutes of the producer's clock, and each signature is accepted
/// once. Every authentication failure (unknown integration, no or unreadable secret, missing,
/// stale or bad timestamp or signature, a replay) answers the same 401. The body is the record as
/// the upstream sends it, or `?fetch=<id>` fetches it; it goes through the entity's mapping and
/// the pull path's upsert. The answer carries only the outcome, never the record.
#[utoipa::path(post, path = "/api/integrations/{name}/items/{entity}", tag = "integrations",
    params(("name" = String, Path, description = "Integration name"), ("entity" = String, Path, description = "Entity name"),
        ("x-syncfleet-timestamp" = String, Header, description = "Unix seconds the call was signed at; within 5 minutes of the producer's clock"),
        ("x-syncfleet-signature" = String, Header,
            description = "v2=<hex HMAC-SHA256(secret, \"{timestamp}\\n{METHOD}\\n{path with query}\\n\" + body)>; each signature is accepted once"),
        ItemQuery),
    request_body(content = Object, description = "The record as the upstream sends it", content_type = "application/json"),
    responses((status = 200, body = ItemSynced),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody, description = "Not authenticated (one answer for every reason)"),
        (status = 404, body = ErrorBody, description = "The integration has no such entity"),
        (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The upstream failed (`?fetch=`); the detail is in the producer log")))]
pub(super) async fn sync_item(
    State(ops): State<Ops>,
    Path((name, entity)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    q: Result<Query<ItemQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult<ItemSynced> {
    let path_and_query = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let integration = authenticate(&ops, &name, method.as_str(), &path_and_query, &headers, &body).await?;
    let Query(q) = q?;
    if !integration.enabled {
        return Err(StoreError::IntegrationDisabled(name).into());
    }
    let Some(items) = ops.registry.pack(&integration.pack).and_then(|p| p.item_sync()) else {
        return Err(ApiError::Unprocessable(format!(
            "integration `{name}` is a `{}` integration, which has no single-item sync",
            integration.pack
        )));
    };
    let fetched = q.fetch.is_some();
    // A `?fetch=` request sends the file's own settings for an integration it declares.
    let integration = syncfleet_sdk::registry::with_declared_settings(&ops.config, integration);
    let input = match q.fetch {
        Some(id) => ItemInput::FetchId(id),
        None => ItemInput::Record(
            serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: not JSON: {e}")))?,
        ),
    };
    let (external_id, outcome) =
        items.sync_item(&ops.pool, &ops.http, &integration, &entity, input).await.map_err(|e| match e {
            ItemSyncError::UnknownEntity(..) => ApiError::NotFound(e.to_string()),
            ItemSyncError::NoItemPath(_) => ApiError::Unprocessable(e.to_string()),
            // A fetched record is the upstream's data: what is wrong with it stays in the log.
            ItemSyncError::Invalid(m) if fetched => {
                tracing::warn!(integration = %name, %entity, error = %m, "Webhook fetch: the fetched record was refused.");
                ApiError::Unprocessable(FETCHED_INVALID.into())
            }
            ItemSyncError::Invalid(_) => ApiError::Unprocessable(e.to_string()),
            ItemSyncError::Upstream(m) => {
                tracing::warn!(integration = %name, %entity, error = %m, "Webhook fetch: the upstream failed.");
                ApiError::BadGateway(UPSTREAM_FAILED.into())
            }
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

/// The answer of a `?fetch=` whose upstream failed (the detail goes to the producer log only).
pub const UPSTREAM_FAILED: &str = "the upstream failed; see the producer log";
/// The answer of a `?fetch=` whose record could not be synced (the detail goes to the log only).
pub const FETCHED_INVALID: &str = "the fetched record could not be synced; see the producer log";
/// How long an accepted signature is remembered: twice the window, so it outlives its timestamp.
const SEEN_TTL: Duration = Duration::from_secs(2 * auth::SIGNATURE_WINDOW_SECS as u64);

/// Authenticates a webhook call for integration `name`; every failure is the same 401, its reason
/// logged here (naming the integration, never the secret).
async fn authenticate(
    ops: &Ops,
    name: &str,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Integration, ApiError> {
    let refuse = |why: WebhookRefusal| {
        tracing::info!(integration = %name, reason = why.reason(), "Webhook call refused.");
        ApiError::Unauthorized(auth::WEBHOOK_UNAUTHORIZED.into())
    };
    let integration = match store::integration_by_name(&ops.pool, name).await {
        Ok(i) => i,
        Err(StoreError::UnknownIntegration(_)) => return Err(refuse(WebhookRefusal::UnknownIntegration)),
        Err(e) => return Err(e.into()),
    };
    let view = integrations::get(&ops.pool, name).await?;
    let Some(secret_ref) = view.webhook_secret_ref.as_deref() else {
        return Err(refuse(WebhookRefusal::NoSecret));
    };
    let secret = match secrets::resolve_hmac_key("webhook_secret_ref", secret_ref, &ops.config.secrets.policy()) {
        Ok(secret) => secret,
        Err(e) => {
            tracing::warn!(integration = %name, error = %e, "Webhook secret unusable; every call is refused.");
            return Err(refuse(WebhookRefusal::UnreadableSecret));
        }
    };
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let signature = auth::verify_signature(
        secret.expose().as_bytes(),
        header(auth::TIMESTAMP_HEADER),
        header(auth::SIGNATURE_HEADER),
        method,
        path_and_query,
        body,
        now,
    )
    .map_err(refuse)?;
    let first = ops
        .queues
        .webhook_signature_first_use(&auth::hex(&signature), SEEN_TTL)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("remembering a webhook signature: {e}")))?;
    if !first {
        return Err(refuse(WebhookRefusal::Replayed));
    }
    Ok(integration)
}
