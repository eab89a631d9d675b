//! The stored reports (table `reports`, written by report steps such as the partner pack's weekly
//! reports): `GET /api/reports` lists them without their HTML, `GET /api/reports/{id}` serves one
//! report's HTML. Both need a viewer token; routes are registered in [`super::api_routes`].

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use syncfleet_store::reports;
pub use syncfleet_store::reports::ReportInfo;

use super::{ApiError, ErrorBody};
use crate::{auth::Viewer, ops::Ops};

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
    let reports = reports::list(&ops.pool, filter.kind.as_deref(), filter.integration.as_deref(), limit).await?;
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
    let html = reports::html(&ops.pool, id).await?;
    let html = html.ok_or_else(|| ApiError::NotFound(format!("no report {id}")))?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}
