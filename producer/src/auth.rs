//! Bearer-token auth of the admin API. Handlers take the role they need as their first extractor
//! (`Viewer`, `Operator`, `Admin`), so a request is authenticated before its path, query or body is
//! looked at: 401 without a valid token, 403 for a role too low.
//!
//! Webhook single-item endpoints authenticate with an HMAC signature per integration instead
//! ([`verify_signature`]).

use axum::{extract::FromRequestParts, http::request::Parts};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use syncfleet_store::tokens::{self, Principal, Role};

use crate::{error::ApiError, ops::Ops};

/// The header carrying a webhook's signature: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-syncfleet-signature";

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

/// Checks `signature` (`sha256=<hex>`) against HMAC-SHA256(secret, body), in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], sig: &str) -> Result<(), ApiError> {
    let hex = sig.trim().strip_prefix("sha256=").unwrap_or(sig.trim());
    let bytes = decode_hex(hex).ok_or_else(|| ApiError::Unauthorized(format!("{SIGNATURE_HEADER} is not hex")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&bytes).map_err(|_| ApiError::Unauthorized("signature does not match the body".into()))
}

/// `sha256=<hex>` for `body` under `secret` (what a sender puts in [`SIGNATURE_HEADER`]).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let out = mac.finalize().into_bytes();
    format!("sha256={}", out.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
