//! API bearer tokens. A token reads `sf_<key>_<secret>`: the key (public, 12 hex digits) finds the
//! row, the secret (64 hex digits) is kept only as its SHA-256 and compared in constant time.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::StoreError;

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Trigger, resume, cancel, pause.
    Operator,
    /// Schedules, integrations, tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role must be viewer, operator or admin, not `{s}`")),
        }
    }
}

/// The holder of a valid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub key: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    name: String,
    role: String,
    key: String,
    created_by: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for TokenInfo {
    fn from(r: TokenRow) -> TokenInfo {
        TokenInfo {
            id: r.id,
            name: r.name,
            role: r.role.parse().unwrap_or(Role::Viewer),
            key: r.key,
            created_by: r.created_by,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a token and returns it with its plaintext, which is shown once and stored nowhere.
pub async fn create(
    conn: impl sqlx::PgExecutor<'_>,
    name: &str,
    role: Role,
    created_by: &str,
) -> Result<(TokenInfo, String), StoreError> {
    let (key, secret) = {
        let mut rng = rand::rng();
        (hex(&rng.random::<[u8; 6]>()), hex(&rng.random::<[u8; 32]>()))
    };
    let row = sqlx::query_as::<_, TokenRow>(
        "INSERT INTO api_tokens (name, role, key, secret_hash, created_by) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, role, key, created_by, created_at, last_used_at, revoked_at",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(&key)
    .bind(digest(&secret))
    .bind(created_by)
    .fetch_one(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Invalid(format!("name: a token named `{name}` already exists"))
        }
        sqlx::Error::Database(d) if d.is_check_violation() => StoreError::Invalid(format!(
            "name: `{name}` is not a valid token name (letters, digits, _ . @ -; at most 63)"
        )),
        _ => StoreError::Db(e),
    })?;
    Ok((row.into(), format!("sf_{key}_{secret}")))
}

/// The principal of `token` if it is well formed, known, not revoked, and its secret matches.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Principal>, StoreError> {
    let Some((key, secret)) = token.strip_prefix("sf_").and_then(|t| t.split_once('_')) else {
        return Ok(None);
    };
    let row: Option<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT name, role, secret_hash FROM api_tokens WHERE key = $1 AND revoked_at IS NULL")
            .bind(key)
            .fetch_optional(pool)
            .await?;
    // Hash the secret even for an unknown key, so both paths cost the same.
    let presented = digest(secret);
    let Some((name, role, stored)) = row else {
        return Ok(None);
    };
    if !bool::from(presented.ct_eq(&stored)) {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = now()
          WHERE key = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key)
    .execute(pool)
    .await?;
    Ok(Some(Principal { name, role: role.parse().map_err(StoreError::Invalid)? }))
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, StoreError> {
    let rows = sqlx::query_as::<_, TokenRow>(
        "SELECT id, name, role, key, created_by, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Revokes the token with this name; `TokenNotFound` if no active token has it.
pub async fn revoke(conn: impl sqlx::PgExecutor<'_>, name: &str) -> Result<TokenInfo, StoreError> {
    sqlx::query_as::<_, TokenRow>(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
         RETURNING id, name, role, key, created_by, created_at, last_used_at, revoked_at",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?
    .map(Into::into)
    .ok_or_else(|| StoreError::NotFound(format!("no active token named `{name}`")))
}
