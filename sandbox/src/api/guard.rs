//! The middleware in front of every upstream API: counts the request, checks the credential, applies
//! the rate limit and the injected faults (latency, timeouts, 5xx) before the handler runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::envelope::api_error;
use crate::config::Api;
use crate::state::AppState;

#[derive(Clone)]
pub struct GuardState {
    pub app: Arc<AppState>,
    pub api: Api,
}

/// The credential the request presents, when it is the right one. Moodle checks `wstoken` itself,
/// since the token may come in the form body.
fn credential(app: &AppState, api: Api, headers: &HeaderMap) -> Result<String, &'static str> {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    match api {
        Api::Northpass => match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            Some(k) if k == app.config.northpass_key => Ok(k.to_string()),
            Some(_) => Err("The API key is invalid."),
            None => Err("The X-Api-Key header is missing."),
        },
        Api::Impartner => {
            if let Some(t) = headers.get("x-prm-tenantid").and_then(|v| v.to_str().ok())
                && t.trim() != app.config.impartner_tenant
            {
                return Err("Unknown tenant.");
            }
            match get(header::AUTHORIZATION).and_then(|v| v.strip_prefix("prm-key ")) {
                Some(k) if k.trim() == app.config.impartner_key => Ok(k.trim().to_string()),
                Some(_) => Err("Invalid API key."),
                None => Err("Authorization: prm-key <key> is required."),
            }
        }
        Api::Erp => match get(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")) {
            Some(k) if k.trim() == app.config.erp_token => Ok(k.trim().to_string()),
            _ => Err("A valid bearer token is required."),
        },
        Api::Moodle => Ok("moodle".to_string()),
    }
}

pub async fn guard(State(g): State<GuardState>, req: Request, next: Next) -> Response {
    let endpoint = match req.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", req.method(), p.as_str()),
        None => format!("{} {}", req.method(), req.uri().path()),
    };
    let (app, api) = (&g.app, g.api);
    app.count(api, &endpoint, |c| c.requests += 1);

    let cred = match credential(app, api, req.headers()) {
        Ok(c) => c,
        Err(msg) => {
            app.count(api, &endpoint, |c| c.unauthorized += 1);
            return api_error(api, StatusCode::UNAUTHORIZED, "unauthorized", msg);
        }
    };
    let faults = app.faults(api);
    if let Some(rate) = faults.rate_per_sec
        && !app.take_rate(api, &cred, rate)
    {
        {
            app.count(api, &endpoint, |c| c.throttled += 1);
            let mut resp = api_error(
                api,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &format!("Rate limit of {rate} requests per second exceeded."),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    }
    if !faults.routes.is_empty() && !faults.routes.contains(&endpoint) {
        return next.run(req).await;
    }
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.timeout_share > 0.0 && app.roll(api) < faults.timeout_share {
        app.count(api, &endpoint, |c| c.timeouts += 1);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(app.config.timeout_fault_secs)) => {}
            () = app.shutdown.cancelled() => {}
        }
        return api_error(api, StatusCode::GATEWAY_TIMEOUT, "timeout", "The upstream timed out.");
    }
    if faults.error_5xx_share > 0.0 {
        let r = app.roll(api);
        if r < faults.error_5xx_share {
            app.count(api, &endpoint, |c| c.errors_5xx += 1);
            let status = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE]
                [(r * 1e6) as usize % 3];
            return api_error(api, status, "server_error", "Injected upstream failure.");
        }
    }
    next.run(req).await
}
