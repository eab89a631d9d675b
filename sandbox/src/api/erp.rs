//! ERP inventory under `/erp/api`: `GET /items?offset=&limit=&updated_since=` with a total, and
//! `GET /items/{id}`; bearer-token auth (checked by the guard).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;

use crate::api::envelope::{api_error, ok};
use crate::config::Api;
use crate::data::erp::Item;
use crate::state::AppState;
use crate::util::{fmt_utc, param, parse_pairs, parse_time};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/items", get(list)).route("/items/{id}", get(get_one))
}

#[derive(Serialize)]
struct ItemView<'a> {
    id: i64,
    sku: &'a str,
    name: &'a str,
    quantity: i64,
    warehouse: &'a str,
    updated_at: String,
}

#[derive(Serialize)]
struct ItemsPage<T: Serialize> {
    items: Vec<T>,
    total: usize,
    offset: usize,
    limit: usize,
}

fn view(it: &Item) -> ItemView<'_> {
    ItemView {
        id: it.id,
        sku: &it.sku,
        name: &it.name,
        quantity: it.quantity,
        warehouse: it.warehouse,
        updated_at: fmt_utc(it.updated_at),
    }
}

fn bad(msg: &str) -> Response {
    api_error(Api::Erp, StatusCode::BAD_REQUEST, "bad_request", msg)
}

async fn list(State(st): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    let pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    let offset: usize = match param(&pairs, "offset").map(str::parse) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => return bad("offset must be a non-negative integer"),
    };
    let limit: usize = match param(&pairs, "limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return bad("limit must be between 1 and 1000"),
    };
    let since = match param(&pairs, "updated_since").map(parse_time) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => return bad("updated_since must be an ISO-8601 timestamp"),
    };
    let faults = st.faults(Api::Erp);
    let data = st.read();
    let sel: Vec<&Item> = data.erp.items.iter().filter(|it| since.is_none_or(|s| it.updated_at >= s)).collect();
    let total = sel.len();
    let start = offset.min(total);
    let mut end = (start + limit).min(total);
    if faults.truncate_page && end > start {
        end = start + (end - start).div_ceil(2);
    }
    let page = &sel[start..end];
    let seed = st.config.seed;
    let broken = |it: &Item| faults.serves_malformed(Api::Erp, seed, it.id as u64);
    if page.iter().any(|it| broken(it)) {
        let items: Vec<Value> = page
            .iter()
            .map(|it| {
                let mut v = serde_json::to_value(view(it)).unwrap_or(Value::Null);
                if broken(it) {
                    if it.id % 2 == 0 {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("id");
                        }
                    } else {
                        v["quantity"] = Value::from("many");
                    }
                }
                v
            })
            .collect();
        return ok(&ItemsPage { items, total, offset, limit });
    }
    let items: Vec<ItemView<'_>> = page.iter().map(|it| view(it)).collect();
    ok(&ItemsPage { items, total, offset, limit })
}

async fn get_one(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let data = st.read();
    match id.parse::<i64>().ok().and_then(|id| data.erp.items.binary_search_by_key(&id, |it| it.id).ok()) {
        Some(i) => ok(&view(&data.erp.items[i])),
        None => api_error(Api::Erp, StatusCode::NOT_FOUND, "not_found", &format!("item {id} not found")),
    }
}
