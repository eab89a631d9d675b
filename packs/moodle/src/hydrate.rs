//! The single-user paths: login-time hydration (the user read from Moodle by username, then their
//! scope and roles decided by the same [`scope::backfill`] and [`roles::apply`] the chain uses) and
//! the hand-set scope sources (`auto` | `manual`). Both answer the user's [`UserView`].

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::{
    Settings,
    client::Moodle,
    enrolled::user_fields,
    roles,
    scope::{self, Outcome},
    tables,
};
use syncfleet_sdk::{http::HttpClients, pack::RouteError, step::Integration};

/// `auto` (derived by the sync) or `manual` (set by hand; the derivation leaves the user alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Auto,
    Manual,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Manual => "manual",
        }
    }
}

/// A user's scope and roles.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub username: String,
    /// Moodle's user id.
    pub user_id: String,
    pub campus_id: Option<String>,
    pub department_id: Option<String>,
    pub program_id: Option<String>,
    pub department_source: String,
    pub program_source: String,
    /// `ROLE` or `ROLE (manual)` for roles granted by hand.
    pub roles: Vec<String>,
    /// What the derivation decided (hydrate only): derived, manual_skipped or no_enrollments.
    pub outcome: Option<Outcome>,
    /// The campus was empty and the username named one (hydrate only).
    pub campus_assigned: Option<bool>,
}

/// The body of a scope change: a given id is stored and makes its source `manual` unless a source
/// is given too; `auto` hands the field back to the derivation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeChange {
    pub department_source: Option<Source>,
    pub program_source: Option<Source>,
    pub department_id: Option<String>,
    pub program_id: Option<String>,
}

fn settings(integration: &Integration) -> Result<Settings, RouteError> {
    Settings::parse(&integration.settings)
        .map_err(|(k, m)| RouteError::Invalid(format!("integration `{}`: `{k}`: {m}", integration.name)))
}

/// A `moodle_users` row's id and scope: id, campus, department, program, department source, program source.
type ScopeRow = (String, Option<String>, Option<String>, Option<String>, String, String);

/// The stored view of `username`.
pub async fn view(pool: &PgPool, integration_id: i64, username: &str) -> Result<UserView, RouteError> {
    let row: Option<ScopeRow> = sqlx::query_as(
        "SELECT external_id, campus_id, department_id, program_id, department_source, program_source
         FROM moodle_users WHERE integration_id = $1 AND username = $2 AND is_active",
    )
    .bind(integration_id)
    .bind(username)
    .fetch_optional(pool)
    .await?;
    let Some((user_id, campus_id, department_id, program_id, department_source, program_source)) = row else {
        return Err(RouteError::NotFound(format!("username: no active user `{username}`")));
    };
    let roles: Vec<(String, String)> = sqlx::query_as(
        "SELECT role, granted_by FROM moodle_user_roles WHERE integration_id = $1 AND user_id = $2 ORDER BY role",
    )
    .bind(integration_id)
    .bind(&user_id)
    .fetch_all(pool)
    .await?;
    let roles = roles.into_iter().map(|(r, by)| if by == "manual" { format!("{r} (manual)") } else { r }).collect();
    Ok(UserView {
        username: username.to_owned(),
        user_id,
        campus_id,
        department_id,
        program_id,
        department_source,
        program_source,
        roles,
        outcome: None,
        campus_assigned: None,
    })
}

/// Login-time hydration: reads `username` from Moodle, upserts the user, then derives their scope and
/// roles exactly as the chain does, in one transaction.
pub async fn hydrate(
    pool: &PgPool,
    http: &HttpClients,
    integration: &Integration,
    deployment_concurrency: Option<u32>,
    username: &str,
) -> Result<UserView, RouteError> {
    let settings = settings(integration)?;
    // The integration's concurrency, else the deployment's (`[packs.moodle] sync_concurrency`), else
    // the default sizes the gate, as for the chain's steps.
    let concurrency = settings.concurrency(deployment_concurrency).map_err(RouteError::Invalid)?;
    let client = settings.client(http, concurrency);
    let api =
        Moodle::new(&settings, &client, tokio_util::sync::CancellationToken::new()).map_err(RouteError::Invalid)?;
    let raw = api
        .user_by_username(username)
        .await
        .map_err(|e| RouteError::Upstream(e.to_string()))?
        .ok_or_else(|| RouteError::NotFound(format!("username: Moodle has no user `{username}`")))?;
    let id = raw
        .get("id")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| RouteError::Upstream("user without an id".into()))?;
    let fields = user_fields(&raw).map_err(|m| RouteError::Upstream(format!("user {id}: {m}")))?;
    let table = tables::users();
    let mut columns = Vec::with_capacity(table.columns.len());
    for c in &table.columns {
        let v = c.ty.convert(fields.get(&c.name).unwrap_or(&serde_json::Value::Null));
        columns.push(vec![v.map_err(|m| RouteError::Upstream(format!("user {id}: `{}`: {m}", c.name)))?]);
    }
    let mut tx = pool.begin().await?;
    table.upsert(&mut tx, integration.id, None, &[id.to_string()], &columns).await?;
    let report = scope::backfill(&mut tx, integration.id, scope::Users::named(username)).await?;
    roles::apply(&mut tx, integration.id, &settings.roles, scope::Users::named(username)).await?;
    tx.commit().await?;
    let mut view = view(pool, integration.id, username).await?;
    if let Some((_, plan)) = report.plans.first() {
        view.outcome = Some(plan.outcome);
        view.campus_assigned = Some(plan.campus_assigned);
    }
    Ok(view)
}

/// Sets a user's scope sources (and ids) by hand.
pub async fn set_scope(
    pool: &PgPool,
    integration_id: i64,
    username: &str,
    change: &ScopeChange,
) -> Result<UserView, RouteError> {
    let department_source =
        change.department_source.or(change.department_id.as_ref().map(|_| Source::Manual)).map(Source::as_str);
    let program_source =
        change.program_source.or(change.program_id.as_ref().map(|_| Source::Manual)).map(Source::as_str);
    if department_source.is_none() && program_source.is_none() {
        return Err(RouteError::Invalid(
            "body: give department_source, program_source, department_id or program_id".into(),
        ));
    }
    for (field, id) in [("department_id", &change.department_id), ("program_id", &change.program_id)] {
        let Some(id) = id else { continue };
        let kind = field.trim_end_matches("_id");
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM moodle_categories WHERE integration_id = $1 AND external_id = $2
                            AND is_active AND kind = $3)",
        )
        .bind(integration_id)
        .bind(id)
        .bind(kind)
        .fetch_one(pool)
        .await?;
        if !known {
            return Err(RouteError::Invalid(format!("{field}: `{id}` is not an active {kind} category")));
        }
    }
    let changed = sqlx::query(
        "UPDATE moodle_users SET
             department_source = COALESCE($3, department_source), program_source = COALESCE($4, program_source),
             department_id = CASE WHEN $5::text IS NULL THEN department_id ELSE $5 END,
             program_id = CASE WHEN $6::text IS NULL THEN program_id ELSE $6 END,
             updated_at = now()
         WHERE integration_id = $1 AND username = $2 AND is_active",
    )
    .bind(integration_id)
    .bind(username)
    .bind(department_source)
    .bind(program_source)
    .bind(&change.department_id)
    .bind(&change.program_id)
    .execute(pool)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(RouteError::NotFound(format!("username: no active user `{username}`")));
    }
    view(pool, integration_id, username).await
}
