//! Integrations as the admin API and the CLI manage them: list, create, update, disable. Secrets
//! only by reference: settings holding an inline `secret` are refused, and listings never carry one.
//! The store reads no secret; `syncfleet_sdk::secrets` resolves the references where they are used.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::{Origin, PackCatalog, StoreError};
pub use syncfleet_shared::secret::{REDACTED, check_secret_ref, redact_settings};

/// An integration as listed.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct IntegrationView {
    pub name: String,
    pub pack: String,
    pub enabled: bool,
    /// The pack's settings: secrets appear only as references (`secret_env`, `secret_file`);
    /// static header and query values read `<redacted>`, URLs lose their user info and query values.
    pub settings: serde_json::Value,
    /// Where the webhook HMAC secret lives (`env:NAME` or `file:NAME`).
    pub webhook_secret_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a create or an update sets; `None` keeps the current value on update.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegrationChange {
    pub pack: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    pub enabled: Option<bool>,
    /// `env:NAME` or `file:NAME` (under the deployment's `[secrets]`); an empty string removes it.
    pub webhook_secret_ref: Option<String>,
}

const SELECT: &str =
    "SELECT name, pack, enabled, settings, webhook_secret_ref, created_at, updated_at FROM integrations";

pub async fn list(pool: &PgPool) -> Result<Vec<IntegrationView>, StoreError> {
    let q = format!("{SELECT} ORDER BY name");
    let rows = sqlx::query_as::<_, IntegrationView>(sqlx::AssertSqlSafe(q)).fetch_all(pool).await?;
    Ok(rows.into_iter().map(redacted).collect())
}

pub async fn get(pool: &PgPool, name: &str) -> Result<IntegrationView, StoreError> {
    let q = format!("{SELECT} WHERE name = $1");
    sqlx::query_as::<_, IntegrationView>(sqlx::AssertSqlSafe(q))
        .bind(name)
        .fetch_optional(pool)
        .await?
        .map(redacted)
        .ok_or_else(|| StoreError::UnknownIntegration(name.to_owned()))
}

/// The view as listings show it: settings through [`redact_settings`] (static header and query
/// values masked, URL user info removed), so a viewer sees where secrets live and nothing else.
fn redacted(mut v: IntegrationView) -> IntegrationView {
    redact_settings(&mut v.settings);
    v
}

/// Where the first inline secret sits in `settings` (`auth.secret`), if any.
fn inline_secret(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k == "secret" && !v.is_null() { Some(here) } else { inline_secret(v, &here) }
        }),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, v)| inline_secret(v, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// Where the first NUL character sits in `settings` (PostgreSQL text and JSONB cannot hold one).
fn nul_at(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            if k.contains('\0') { Some(here) } else { nul_at(v, &here) }
        }),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, v)| nul_at(v, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// The names of the enabled integrations of `pack`, in name order.
pub async fn enabled_of_pack(pool: &PgPool, pack: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT name FROM integrations WHERE enabled AND pack = $1 ORDER BY name")
        .bind(pack)
        .fetch_all(pool)
        .await?)
}

/// The enabled integrations with their pack: `(name, pack)`, in no particular order.
pub async fn enabled(pool: &PgPool) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as("SELECT name, pack FROM integrations WHERE enabled").fetch_all(pool).await?)
}

/// Checks the settings for the pack: names the key at fault. Settings from the API refuse inline
/// secrets and what the pack accepts from the config file only ([`Origin::Api`]; settings written
/// by the config file are the deployment's own business).
fn check(packs: &dyn PackCatalog, pack: &str, settings: &serde_json::Value, origin: Origin) -> Result<(), StoreError> {
    if !settings.is_object() {
        return Err(StoreError::Invalid("settings: expected an object".into()));
    }
    if let Some(at) = nul_at(settings, "") {
        return Err(StoreError::Invalid(format!("settings.{at}: text may not contain a NUL character")));
    }
    if let Some(at) = inline_secret(settings, "").filter(|_| origin == Origin::Api) {
        return Err(StoreError::Invalid(format!(
            "settings.{at}: inline secrets are refused; name the secret with `secret_file` (a file under the secrets directory) or `secret_env`"
        )));
    }
    packs.check_settings(pack, settings, origin).map_err(|(key, message)| {
        if key == "pack" {
            StoreError::Invalid(format!("pack: {message}"))
        } else {
            StoreError::Invalid(format!("settings.{key}: {message}"))
        }
    })
}

/// Creates an integration; `Invalid` naming the field when something is wrong. The row and the
/// pack's preparation (its tables) commit together or not at all.
pub async fn create(
    pool: &PgPool,
    packs: &dyn PackCatalog,
    name: &str,
    change: &IntegrationChange,
) -> Result<IntegrationView, StoreError> {
    let mut tx = pool.begin().await?;
    create_in(&mut tx, packs, name, change).await?;
    tx.commit().await?;
    get(pool, name).await
}

/// [`create`] on `conn`, a transaction the caller commits (with its audit row,
/// [`crate::audit::Audited`]); read the result with [`get`] after the commit.
pub async fn create_in(
    conn: &mut PgConnection,
    packs: &dyn PackCatalog,
    name: &str,
    change: &IntegrationChange,
) -> Result<(), StoreError> {
    if crate::ids::IntegrationName::parse(name).is_err() {
        return Err(StoreError::Invalid(format!(
            "name: `{name}` is not a valid integration name (lower-case letters, digits, _ and -; at most 63)"
        )));
    }
    let pack = change.pack.as_deref().ok_or_else(|| StoreError::Invalid("pack: required".into()))?;
    let settings = change.settings.clone().unwrap_or_else(|| serde_json::json!({}));
    check(packs, pack, &settings, Origin::Api)?;
    let secret_ref = change.webhook_secret_ref.as_deref().filter(|r| !r.is_empty());
    if let Some(r) = secret_ref {
        packs.check_secret_ref(r).map_err(|m| StoreError::Invalid(format!("webhook_secret_ref: {m}")))?;
    }
    let inserted = sqlx::query(
        "INSERT INTO integrations (name, pack, settings, enabled, webhook_secret_ref) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(pack)
    .bind(&settings)
    .bind(change.enabled.unwrap_or(true))
    .bind(secret_ref)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(StoreError::Conflict(format!("integration `{name}` already exists")));
    }
    packs.prepare(conn, name, pack, &settings).await.map_err(unprepared)
}

/// A preparation the API's settings fail (a table that does not exist or cannot hold a column) is
/// the request's fault: `Invalid`, naming the settings.
fn unprepared(message: String) -> StoreError {
    StoreError::Invalid(format!("settings: {message}"))
}

/// Updates the given fields of an integration. The row and the pack's preparation commit together
/// or not at all.
pub async fn update(
    pool: &PgPool,
    packs: &dyn PackCatalog,
    name: &str,
    change: &IntegrationChange,
) -> Result<IntegrationView, StoreError> {
    let mut tx = pool.begin().await?;
    update_in(&mut tx, packs, name, change).await?;
    tx.commit().await?;
    get(pool, name).await
}

/// [`update`] on `conn`, a transaction the caller commits (with its audit row,
/// [`crate::audit::Audited`]); read the result with [`get`] after the commit. New settings (or a
/// new pack) are checked as the API's ([`Origin::Api`]) and prepared; a change of `enabled` or of
/// the webhook reference alone leaves the settings as stored (a config file's included).
pub async fn update_in(
    conn: &mut PgConnection,
    packs: &dyn PackCatalog,
    name: &str,
    change: &IntegrationChange,
) -> Result<(), StoreError> {
    let current: Option<(String, serde_json::Value)> =
        sqlx::query_as("SELECT pack, settings FROM integrations WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let (current_pack, current_settings) = current.ok_or_else(|| StoreError::UnknownIntegration(name.to_owned()))?;
    let changes_settings = change.pack.is_some() || change.settings.is_some();
    let pack = change.pack.clone().unwrap_or(current_pack);
    let settings = change.settings.clone().unwrap_or(current_settings);
    if changes_settings {
        check(packs, &pack, &settings, Origin::Api)?;
    }
    if let Some(r) = change.webhook_secret_ref.as_deref().filter(|r| !r.is_empty()) {
        packs.check_secret_ref(r).map_err(|m| StoreError::Invalid(format!("webhook_secret_ref: {m}")))?;
    }
    sqlx::query(
        "UPDATE integrations SET pack = $2, settings = $3, enabled = coalesce($4, enabled),
                webhook_secret_ref = CASE WHEN $5::text IS NULL THEN webhook_secret_ref ELSE nullif($5, '') END,
                updated_at = now()
          WHERE name = $1",
    )
    .bind(name)
    .bind(&pack)
    .bind(&settings)
    .bind(change.enabled)
    .bind(change.webhook_secret_ref.as_deref())
    .execute(&mut *conn)
    .await?;
    if changes_settings {
        packs.prepare(conn, name, &pack, &settings).await.map_err(unprepared)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_with_their_path() {
        let v = serde_json::json!({ "a": { "b\u{0}": 1 }, "c": ["x", "y\u{0}"] });
        assert_eq!(nul_at(&v, ""), Some("a.b\u{0}".into()));
        let v = serde_json::json!({ "c": ["x", "y\u{0}"] });
        assert_eq!(nul_at(&v, ""), Some("c[1]".into()));
        assert!(
            matches!(check(&AnyPack, "demo", &v, Origin::Api), Err(StoreError::Invalid(m)) if m.starts_with("settings.c[1]: text may not"))
        );
    }

    /// A catalog that accepts every pack and settings: the checks above come before the pack's.
    struct AnyPack;

    impl PackCatalog for AnyPack {
        fn check_settings(&self, _: &str, _: &serde_json::Value, _: Origin) -> Result<(), (String, String)> {
            Ok(())
        }
        fn check_secret_ref(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn prepare<'a>(
            &'a self,
            _: &'a mut PgConnection,
            _: &'a str,
            _: &'a str,
            _: &'a serde_json::Value,
        ) -> futures::future::BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }
}
