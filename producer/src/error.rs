//! The one conversion of every admin API error into an answer: a stable code and an opaque
//! message for the client, the whole cause chain in the log.

use axum::{
    Json,
    extract::rejection::{JsonRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;
use syncfleet_store::StoreError;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: unauthorized, forbidden, bad_request, not_found, active_run, conflict, …
    pub error: String,
    /// What went wrong; for bad input it starts with the field at fault.
    pub message: String,
}

#[derive(Debug)]
pub enum ApiError {
    Store(StoreError),
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    /// The request was understood but the item cannot be synced (bad record, unknown entity).
    Unprocessable(String),
    NotFound(String),
    /// The upstream failed while fetching the item.
    BadGateway(String),
    Internal(anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadRequest(format!("body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(format!("query: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, extra) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone(), json!({})),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone(), json!({})),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone(), json!({})),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_item", m.clone(), json!({})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), json!({})),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "upstream_failed", m.clone(), json!({})),
            ApiError::Store(e) => match e {
                StoreError::ActiveRun { run_id, .. } => {
                    (StatusCode::CONFLICT, "active_run", e.to_string(), json!({ "run_id": run_id }))
                }
                StoreError::Excluded { running_chain, running_run, .. } => (
                    StatusCode::CONFLICT,
                    "exclusive_run",
                    e.to_string(),
                    json!({ "running_chain": running_chain, "run_id": running_run }),
                ),
                StoreError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state", e.to_string(), json!({})),
                StoreError::DuplicateTick(_) => (StatusCode::CONFLICT, "duplicate_tick", e.to_string(), json!({})),
                StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict", e.to_string(), json!({})),
                StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request", e.to_string(), json!({})),
                StoreError::UnknownIntegration(_)
                | StoreError::UnknownChain(_)
                | StoreError::RunNotFound(_)
                | StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", e.to_string(), json!({})),
                StoreError::PackMismatch { .. } | StoreError::IntegrationDisabled(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_trigger", e.to_string(), json!({}))
                }
                // Data exceptions (class 22: a NUL in text, a bad Unicode escape, a number out
                // of range) come from what the client sent.
                StoreError::Db(sqlx::Error::Database(d)) if d.code().is_some_and(|c| c.starts_with("22")) => (
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("input PostgreSQL cannot store: {}", d.message()),
                    json!({}),
                ),
                StoreError::Unconfirmed { run_id, source } => {
                    tracing::error!(run_id, error = %source, "A trigger's run was not confirmed on disk.");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unconfirmed",
                        format!(
                            "run {run_id} was created but PostgreSQL did not confirm it is on disk; read the run \
                             before triggering again"
                        ),
                        json!({ "run_id": run_id }),
                    )
                }
                StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Integration(_) => {
                    tracing::error!(error = ?e, "Request failed.");
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), json!({}))
                }
            },
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "Request failed.");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), json!({}))
            }
        };
        let mut body = json!({ "error": code, "message": message });
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<Json<T>, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A trigger whose run PostgreSQL did not confirm on disk answers 503 with the run's id, and
    /// not the database error's text.
    #[tokio::test]
    async fn an_unconfirmed_run_answers_503_with_its_id() {
        let e = ApiError::Store(StoreError::Unconfirmed { run_id: "r-1".into(), source: sqlx::Error::PoolTimedOut });
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "unconfirmed");
        assert_eq!(body["run_id"], "r-1");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("run r-1 was created") && !message.contains("pool"), "{body}");
    }
}
