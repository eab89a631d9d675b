//! The control API under `/_sandbox` (bearer `control_token`): info, reset, mutate, counters, writes
//! and fault settings per API.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::envelope::{json_response, ok};
use crate::config::{Api, FaultSettings};
use crate::data::{Dataset, Sizes};
use crate::mutate::{MutateRequest, mutate};
use crate::state::{AppState, Writes, lock};

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/info", get(info))
        .route("/reset", post(reset))
        .route("/mutate", post(mutate_handler))
        .route("/counters", get(counters))
        .route("/counters/reset", post(reset_counters))
        .route("/writes", get(writes))
        .route("/writes/reset", post(reset_writes))
        .route("/faults", get(all_faults))
        .route("/faults/{api}", get(get_faults).put(put_faults))
        .route_layer(middleware::from_fn_with_state(state, auth))
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"error": message}))
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let token =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if token.map(str::trim) != Some(st.config.control_token.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "control token required (Authorization: Bearer <token>)");
    }
    next.run(req).await
}

/// What `GET /_sandbox/info` returns (also [`crate::SandboxHandle::info`]).
pub fn info_value(st: &AppState) -> Value {
    let c = &st.config;
    let b = &st.base_url;
    json!({
        "seed": c.seed,
        "scale": c.scale.to_string(),
        "base_url": b,
        "control": {"url": format!("{b}/_sandbox"), "header": "Authorization", "value": format!("Bearer {}", c.control_token)},
        "apis": {
            "northpass": {"base_url": format!("{b}/northpass/v2"), "header": "X-Api-Key", "key": c.northpass_key},
            "impartner": {"base_url": format!("{b}/impartner/api/objects/v1"), "header": "Authorization", "value": format!("prm-key {}", c.impartner_key), "tenant_header": "X-PRM-TenantId", "tenant": c.impartner_tenant},
            "moodle": {"base_url": format!("{b}/moodle/webservice/rest/server.php"), "wstoken": c.moodle_token},
            "erp": {"base_url": format!("{b}/erp/api"), "header": "Authorization", "value": format!("Bearer {}", c.erp_token)},
        },
        "counts": st.read().counts(),
    })
}

async fn info(State(st): State<Arc<AppState>>) -> Response {
    ok(&info_value(&st))
}

/// Regenerates the data and clears faults, counters and writes.
pub async fn reset_all(st: &Arc<AppState>) {
    let (seed, sizes) = (st.config.seed, Sizes::for_config(&st.config));
    let fresh = tokio::task::spawn_blocking(move || Dataset::generate(seed, &sizes)).await;
    if let Ok(d) = fresh {
        *st.write() = d;
    }
    st.reset_faults();
    st.reset_counters();
    *lock(&st.writes) = Writes::default();
    st.mutations.store(0, Ordering::Relaxed);
}

async fn reset(State(st): State<Arc<AppState>>) -> Response {
    reset_all(&st).await;
    ok(&json!({"reset": true, "counts": st.read().counts()}))
}

async fn mutate_handler(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match mutate_value(&st, &body) {
        Ok(r) => ok(&r),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// Applies a `POST /mutate` body and returns its answer (also used in-process by the handle).
pub fn mutate_value(st: &AppState, body: &[u8]) -> Result<Value, String> {
    let req: MutateRequest = serde_json::from_slice(body).map_err(|e| format!("bad mutate body: {e}"))?;
    let round = st.mutations.fetch_add(1, Ordering::Relaxed);
    let result = mutate(&mut st.write(), st.config.seed, round, &req)?;
    serde_json::to_value(result).map_err(|e| e.to_string())
}

/// Counters per API: totals and per endpoint (`METHOD /route/{template}`).
pub fn counters_value(st: &AppState) -> Value {
    let mut out = Map::new();
    for api in Api::ALL {
        let counters = lock(&st.api(api).counters).clone();
        let total: u64 = counters.values().map(|c| c.requests).sum();
        let throttled: u64 = counters.values().map(|c| c.throttled).sum();
        let errors: u64 = counters.values().map(|c| c.errors_5xx).sum();
        let mut entry = json!({"requests": total, "throttled": throttled, "errors_5xx": errors, "endpoints": counters});
        if api == Api::Moodle {
            entry["functions"] = json!(*lock(&st.moodle_functions));
        }
        out.insert(api.to_string(), entry);
    }
    Value::Object(out)
}

async fn counters(State(st): State<Arc<AppState>>) -> Response {
    ok(&counters_value(&st))
}

async fn reset_counters(State(st): State<Arc<AppState>>) -> Response {
    st.reset_counters();
    ok(&json!({"reset": true}))
}

async fn writes(State(st): State<Arc<AppState>>) -> Response {
    let w = lock(&st.writes).clone();
    ok(&w)
}

async fn reset_writes(State(st): State<Arc<AppState>>) -> Response {
    *lock(&st.writes) = Writes::default();
    ok(&json!({"reset": true}))
}

async fn all_faults(State(st): State<Arc<AppState>>) -> Response {
    let m: Map<String, Value> = Api::ALL.iter().map(|&a| (a.to_string(), json!(st.faults(a)))).collect();
    ok(&m)
}

async fn get_faults(State(st): State<Arc<AppState>>, Path(api): Path<String>) -> Response {
    match Api::from_str(&api) {
        Ok(a) => ok(&st.faults(a)),
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// Every field optional; `"rate_per_sec": null` turns the limit off, an absent field keeps its value.
#[derive(Deserialize)]
struct FaultPatch {
    latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "some")]
    rate_per_sec: Option<Option<u32>>,
    error_5xx_share: Option<f64>,
    timeout_share: Option<f64>,
    truncate_page: Option<bool>,
    empty_list: Option<bool>,
    malformed_share: Option<f64>,
    /// Replaces the list; `[]` clears it.
    malformed_ids: Option<Vec<u64>>,
    /// Replaces the list; `[]` = every endpoint.
    routes: Option<Vec<String>>,
    /// Moodle: replaces the list of calls answered with the error envelope; `[]` clears it.
    exceptions: Option<Vec<String>>,
    /// Replaces the list of calls answered with nothing to list; `[]` clears it.
    empty_answers: Option<Vec<String>>,
    /// Replaces the list of pages that repeat the previous page; `[]` clears it.
    repeat_pages: Option<Vec<u32>>,
    /// Replaces the list of odd values; `[]` clears it.
    odd_values: Option<Vec<crate::config::OddValue>>,
    /// Northpass: replaces the list of lists that fail on every call; `[]` clears it.
    failing_answers: Option<Vec<String>>,
    /// Moodle: replaces the list of calls refused for a missing capability; `[]` clears it.
    capability_exceptions: Option<Vec<String>>,
    /// Moodle: enrolled users come without their `groups` key.
    no_groups: Option<bool>,
}

fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

async fn put_faults(State(st): State<Arc<AppState>>, Path(api): Path<String>, body: Bytes) -> Response {
    let api = match Api::from_str(&api) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let patch: FaultPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad fault body: {e}")),
    };
    let share = |v: Option<f64>| v.map(|s| s.clamp(0.0, 1.0));
    let updated: FaultSettings = {
        let mut f = lock(&st.api(api).faults);
        if let Some(v) = patch.latency_ms {
            f.latency_ms = v;
        }
        if let Some(v) = patch.rate_per_sec {
            f.rate_per_sec = v;
        }
        if let Some(v) = share(patch.error_5xx_share) {
            f.error_5xx_share = v;
        }
        if let Some(v) = share(patch.timeout_share) {
            f.timeout_share = v;
        }
        if let Some(v) = patch.truncate_page {
            f.truncate_page = v;
        }
        if let Some(v) = patch.empty_list {
            f.empty_list = v;
        }
        if let Some(v) = share(patch.malformed_share) {
            f.malformed_share = v;
        }
        if let Some(v) = patch.malformed_ids {
            f.malformed_ids = v;
        }
        if let Some(v) = patch.routes {
            f.routes = v;
        }
        if let Some(v) = patch.exceptions {
            f.exceptions = v;
        }
        if let Some(v) = patch.empty_answers {
            f.empty_answers = v;
        }
        if let Some(v) = patch.repeat_pages {
            f.repeat_pages = v;
        }
        if let Some(v) = patch.odd_values {
            f.odd_values = v;
        }
        if let Some(v) = patch.failing_answers {
            f.failing_answers = v;
        }
        if let Some(v) = patch.capability_exceptions {
            f.capability_exceptions = v;
        }
        if let Some(v) = patch.no_groups {
            f.no_groups = v;
        }
        f.clone()
    };
    ok(&updated)
}
