//! The stored reports (table `reports`, written by report steps such as the partner pack's weekly
//! reports): `GET /api/reports` lists them without their HTML, `GET /api/reports/{id}` serves one
//! report's HTML. Both need a viewer token; routes are registered in [`super::api_routes`].

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use syncfleet_store::StoreError;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody};
use crate::{auth::Viewer, ops::Ops};

/// A stored report, without its HTML.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ReportInfo {
    pub id: i64,
    /// `pam_weekly`, `executive_weekly`, …
    pub kind: String,
    pub integration: String,
    /// The period covered, e.g. `2025-W14`.
    pub period: String,
    /// Who the report is for (a manager's email or name, `executive`).
    pub recipient: String,
    /// The addresses it was mailed to.
    pub sent_to: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportFilter {
    /// Only reports of this kind.
    kind: Option<String>,
    /// Only reports of this integration.
    integration: Option<String>,
    /// 1–1000, default 100.
    limit: Option<i64>,
}

/// Stored reports, newest first, without their HTML.
#[utoipa::path(get, path = "/api/reports", tag = "reports", security(("bearer" = [])), params(ReportFilter),
    responses((status = 200, body = Vec<ReportInfo>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_reports(
    _: Viewer,
    State(ops): State<Ops>,
    filter: Result<Query<ReportFilter>, QueryRejection>,
) -> Result<Json<Vec<ReportInfo>>, ApiError> {
    let Query(filter) = filter?;
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit: must be between 1 and 1000, not {limit}")));
    }
    let reports = sqlx::query_as(
        "SELECT r.id, r.kind, i.name AS integration, r.period, r.recipient, r.sent_to, r.created_at
         FROM reports r JOIN integrations i ON i.id = r.integration_id
         WHERE ($1::text IS NULL OR r.kind = $1) AND ($2::text IS NULL OR i.name = $2)
         ORDER BY r.created_at DESC, r.id DESC LIMIT $3",
    )
    .bind(filter.kind)
    .bind(filter.integration)
    .bind(limit)
    .fetch_all(&ops.pool)
    .await
    .map_err(StoreError::from)?;
    Ok(Json(reports))
}

/// One report's HTML (`text/html`).
#[utoipa::path(get, path = "/api/reports/{id}", tag = "reports", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Report id")),
    responses((status = 200, content_type = "text/html", body = String), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_report(
    _: Viewer,
    State(ops): State<Ops>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("id: `{id}` is not a report id (a positive integer)")))?;
    let html: Option<String> = sqlx::query_scalar("SELECT html FROM reports WHERE id = $1")
        .bind(id)
        .fetch_optional(&ops.pool)
        .await
        .map_err(StoreError::from)?;
    let html = html.ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}
