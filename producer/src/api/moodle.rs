//! The Moodle pack's single-user routes: login-time hydration of a user (scope and roles derived by
//! the same code as the `moodle_institutional` chain) and the hand-set scope sources.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
};
use serde_json::json;
use syncfleet_shared::{
    packs::moodle::{
        self,
        hydrate::{self, ScopeChange, UserError, UserView},
    },
    step::Integration,
    store::{self, StoreError},
};

use crate::{auth::Operator, ops::Ops};

use super::{ApiError, ApiResult, ErrorBody};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::NotFound(m) => ApiError::NotFound(m),
            UserError::Invalid(m) => ApiError::BadRequest(m),
            UserError::Upstream(m) => ApiError::BadGateway(m),
            UserError::Db(e) => ApiError::Store(StoreError::Db(e)),
        }
    }
}

/// The enabled `moodle` integration `name`.
async fn moodle_integration(ops: &Ops, name: &str) -> Result<Integration, ApiError> {
    let integration = store::integration_by_name(&ops.pool, name).await?;
    if !integration.enabled {
        return Err(StoreError::IntegrationDisabled(name.into()).into());
    }
    if integration.pack != moodle::PACK {
        return Err(ApiError::Unprocessable(format!(
            "integration `{name}` is a `{}` integration; users are hydrated from `moodle` integrations",
            integration.pack
        )));
    }
    Ok(integration)
}

/// Login-time hydration: reads the user from Moodle by username, stores them, and derives their
/// scope (campus, department, program) and roles with the same function as the chain.
#[utoipa::path(post, path = "/api/integrations/{name}/users/{username}/hydrate", tag = "integrations",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name (a `moodle` integration)"),
        ("username" = String, Path, description = "Moodle username")),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such integration, or Moodle has no such user"),
        (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(super) async fn hydrate_user(
    who: Operator,
    State(ops): State<Ops>,
    Path((name, username)): Path<(String, String)>,
) -> ApiResult<UserView> {
    let integration = moodle_integration(&ops, &name).await?;
    let view = hydrate::hydrate(&ops.pool, &ops.http, &integration, &username).await?;
    tracing::info!(integration = %name, %username, actor = %who.actor(), outcome = ?view.outcome, "User hydrated.");
    Ok(Json(view))
}

/// Sets a user's scope by hand: `department_source` / `program_source` `manual` keeps the derivation
/// away from the user (both fields), `auto` hands them back; a given `department_id` / `program_id` is
/// stored and makes its source `manual` unless the body says otherwise.
#[utoipa::path(put, path = "/api/integrations/{name}/users/{username}/scope", tag = "integrations",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Integration name (a `moodle` integration)"),
        ("username" = String, Path, description = "Moodle username")),
    request_body = ScopeChange,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn set_user_scope(
    who: Operator,
    State(ops): State<Ops>,
    Path((name, username)): Path<(String, String)>,
    body: Result<Json<ScopeChange>, JsonRejection>,
) -> ApiResult<UserView> {
    let integration = moodle_integration(&ops, &name).await?;
    let Json(change) = body?;
    let view = hydrate::set_scope(&ops.pool, integration.id, &username, &change).await?;
    ops.audit(
        &who.actor(),
        "user.scope",
        &format!("{name}/{username}"),
        json!({
            "department_source": view.department_source, "program_source": view.program_source,
            "department_id": view.department_id, "program_id": view.program_id,
        }),
    )
    .await;
    Ok(Json(view))
}
