//! Bearer-token auth of the admin API. Handlers take the role they need as their first extractor
//! (`Viewer`, `Operator`, `Admin`), so a request is authenticated before its path, query or body is
//! looked at: 401 without a valid token, 403 for a role too low.
//!
//! Webhook single-item endpoints authenticate with an HMAC signature per integration instead
//! ([`verify_signature`], signed webhooks v2): the signature covers the timestamp, the method, the
//! path with its query (which names the integration) and the body, so a captured call cannot be
//! sent later, to another integration sharing the secret, or with another query.

use axum::{extract::FromRequestParts, http::request::Parts};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use syncfleet_store::tokens::{self, Principal, Role};

use crate::{error::ApiError, ops::Ops};

/// The header carrying a webhook's signature: `v2=<hex of HMAC-SHA256(secret, "{timestamp}\n{METHOD}\n{path with query}\n" + body)>`.
pub const SIGNATURE_HEADER: &str = "x-syncfleet-signature";
/// The header carrying the unix seconds a webhook call was signed at.
pub const TIMESTAMP_HEADER: &str = "x-syncfleet-timestamp";

pub(crate) async fn principal(parts: &Parts, ops: &Ops, needs: Role) -> Result<Principal, ApiError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))) else {
        return Err(ApiError::Unauthorized("missing bearer token (Authorization: Bearer <token>)".into()));
    };
    let principal = tokens::authenticate(&ops.pool, token.trim())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid or revoked token".into()))?;
    if principal.role < needs {
        return Err(ApiError::Forbidden(format!(
            "token `{}` has role {}; this needs {needs}",
            principal.name, principal.role
        )));
    }
    Ok(principal)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Principal);

        impl FromRequestParts<Ops> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, ops: &Ops) -> Result<Self, ApiError> {
                principal(parts, ops, $role).await.map($name)
            }
        }

        impl $name {
            /// The audit actor: `token:<name>`.
            pub fn actor(&self) -> String {
                format!("token:{}", self.0.name)
            }
        }
    };
}

role_extractor!(Viewer, Role::Viewer, "A token with at least the viewer role (read).");
role_extractor!(Operator, Role::Operator, "A token with at least the operator role (trigger, resume, cancel, pause).");
role_extractor!(Admin, Role::Admin, "A token with the admin role (schedules, integrations, tokens).");

/// Why a webhook call was refused: logged server-side (never the secret), while the caller gets
/// the same 401 for every reason ([`WEBHOOK_UNAUTHORIZED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRefusal {
    UnknownIntegration,
    NoSecret,
    UnreadableSecret,
    MissingTimestamp,
    BadTimestamp,
    StaleTimestamp,
    MissingSignature,
    BadSignature,
    Replayed,
}

impl WebhookRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            WebhookRefusal::UnknownIntegration => "no such integration",
            WebhookRefusal::NoSecret => "the integration has no webhook_secret_ref",
            WebhookRefusal::UnreadableSecret => "the webhook secret cannot be read or is too short",
            WebhookRefusal::MissingTimestamp => "no X-Syncfleet-Timestamp header",
            WebhookRefusal::BadTimestamp => "X-Syncfleet-Timestamp is not unix seconds",
            WebhookRefusal::StaleTimestamp => "X-Syncfleet-Timestamp is outside the 5-minute window",
            WebhookRefusal::MissingSignature => "no X-Syncfleet-Signature header",
            WebhookRefusal::BadSignature => "the signature does not match",
            WebhookRefusal::Replayed => "the signature was used before",
        }
    }
}

/// What every refused webhook call gets, whatever the reason: a stranger learns nothing of which
/// integrations exist or how they are set up.
pub const WEBHOOK_UNAUTHORIZED: &str = "invalid webhook signature";

/// How far a webhook's timestamp may be from the producer's clock, either way.
pub const SIGNATURE_WINDOW_SECS: i64 = 300;

/// What a signature covers: `"{timestamp}\n{METHOD}\n{path with query}\n"` followed by the body.
fn signed_payload(mac: &mut Hmac<Sha256>, timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) {
    mac.update(format!("{timestamp}\n{}\n{path_and_query}\n", method.to_ascii_uppercase()).as_bytes());
    mac.update(body);
}

/// Checks a webhook call's [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`] (`v2=<hex>`) against
/// HMAC-SHA256(secret, timestamp, method, path with query, body), in constant time, with the
/// timestamp within [`SIGNATURE_WINDOW_SECS`] of `now` (unix seconds). Returns the signature's
/// bytes, which the caller remembers to refuse a replay.
pub fn verify_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
) -> Result<Vec<u8>, WebhookRefusal> {
    let timestamp = timestamp.ok_or(WebhookRefusal::MissingTimestamp)?.trim();
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookRefusal::BadTimestamp);
    }
    let timestamp: i64 = timestamp.parse().map_err(|_| WebhookRefusal::BadTimestamp)?;
    if (now - timestamp).abs() > SIGNATURE_WINDOW_SECS {
        return Err(WebhookRefusal::StaleTimestamp);
    }
    let signature = signature.ok_or(WebhookRefusal::MissingSignature)?.trim();
    let hex = signature.strip_prefix("v2=").ok_or(WebhookRefusal::BadSignature)?;
    let bytes = decode_hex(hex).ok_or(WebhookRefusal::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    signed_payload(&mut mac, timestamp, method, path_and_query, body);
    mac.verify_slice(&bytes).map_err(|_| WebhookRefusal::BadSignature)?;
    Ok(bytes)
}

/// `v2=<hex>` for a call under `secret` (what a sender puts in [`SIGNATURE_HEADER`], beside
/// `timestamp` in [`TIMESTAMP_HEADER`]): `path_and_query` exactly as requested, e.g.
/// `/api/integrations/erp/items/items?fetch=7`.
pub fn sign(secret: &[u8], timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    signed_payload(&mut mac, timestamp, method, path_and_query, body);
    format!("v2={}", hex(&mac.finalize().into_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
