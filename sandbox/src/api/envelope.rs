//! Each API's own error body, built in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::config::Api;

/// A JSON response with the given status (serialized once, no intermediate `Value`).
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
            resp
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub fn ok<T: Serialize>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

/// The API's error envelope with `status`; Moodle errors keep HTTP 200 unless `status` is a 5xx/429.
pub fn api_error(api: Api, status: StatusCode, code: &str, message: &str) -> Response {
    match api {
        Api::Northpass => json_response(
            status,
            &json!({"errors": [{
                "status": status.as_str(),
                "title": status.canonical_reason().unwrap_or("Error"),
                "detail": message,
                "code": code,
            }]}),
        ),
        Api::Impartner => json_response(
            status,
            &json!({"success": false, "message": message, "errors": [{"code": code, "message": message}]}),
        ),
        Api::Moodle => {
            let status = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                status
            } else {
                StatusCode::OK
            };
            json_response(status, &json!({"exception": "moodle_exception", "errorcode": code, "message": message}))
        }
        Api::Erp => json_response(status, &json!({"error": code, "message": message})),
    }
}

/// Northpass 404 for an unknown id.
pub fn np_not_found(what: &str) -> Response {
    api_error(Api::Northpass, StatusCode::NOT_FOUND, "not_found", &format!("{what} not found"))
}
