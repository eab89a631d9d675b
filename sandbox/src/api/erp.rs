//! ERP inventory under `/erp/api`: `GET /items?offset=&limit=&updated_since=` with a total,
//! `GET /items/{id}`, bulk `PATCH /items` (per-entry results) and `PATCH /items/{id}`; bearer-token auth
//! (checked by the guard). Applied patches are logged for `GET /_sandbox/writes`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::envelope::{api_error, ok};
use crate::config::{Api, FaultSettings};
use crate::data::erp::{Erp, Item};
use crate::state::{AppState, lock};
use crate::util::{fmt_utc, now_secs, param, parse_pairs, parse_time};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Most entries one bulk `PATCH /items` may carry.
pub const MAX_PATCH_ITEMS: usize = 500;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/items", get(list).patch(patch_many)).route("/items/{id}", get(get_one).patch(patch_one))
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
        warehouse: &it.warehouse,
        updated_at: fmt_utc(it.updated_at),
    }
}

/// Whether `it` is served malformed under `faults`.
fn is_malformed(faults: &FaultSettings, seed: u64, it: &Item) -> bool {
    faults.serves_malformed(Api::Erp, seed, it.id as u64)
}

/// The item as a malformed record: an even id loses its `id`, an odd id gets `"quantity": "many"`.
fn malformed_view(it: &Item) -> Value {
    let mut v = serde_json::to_value(view(it)).unwrap_or(Value::Null);
    if it.id % 2 == 0 {
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
        }
    } else {
        v["quantity"] = Value::from("many");
    }
    v
}

fn bad(msg: &str) -> Response {
    api_error(Api::Erp, StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn not_found(id: &str) -> Response {
    api_error(Api::Erp, StatusCode::NOT_FOUND, "not_found", &format!("item {id} not found"))
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
    if faults.empty_list {
        return ok(&ItemsPage::<ItemView<'_>> { items: vec![], total: 0, offset, limit });
    }
    let data = st.read();
    let items = &data.erp.items;
    let bounds = |total: usize| {
        let start = offset.min(total);
        let mut end = (start + limit).min(total);
        if faults.truncate_page && end > start {
            end = start + (end - start).div_ceil(2);
        }
        (start, end)
    };
    // Without a filter the page is a slice (constant time however many items there are).
    let (total, page): (usize, Vec<&Item>) = match since {
        None => {
            let (start, end) = bounds(items.len());
            (items.len(), items[start..end].iter().collect())
        }
        Some(s) => {
            let keep = |it: &&Item| it.updated_at >= s;
            let total = items.iter().filter(keep).count();
            let (start, end) = bounds(total);
            (total, items.iter().filter(keep).skip(start).take(end - start).collect())
        }
    };
    let seed = st.config.seed;
    if page.iter().any(|it| is_malformed(&faults, seed, it)) {
        let items: Vec<Value> = page
            .iter()
            .map(|it| {
                if is_malformed(&faults, seed, it) {
                    malformed_view(it)
                } else {
                    serde_json::to_value(view(it)).unwrap_or(Value::Null)
                }
            })
            .collect();
        return ok(&ItemsPage { items, total, offset, limit });
    }
    let items: Vec<ItemView<'_>> = page.iter().map(|it| view(it)).collect();
    ok(&ItemsPage { items, total, offset, limit })
}

async fn get_one(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let faults = st.faults(Api::Erp);
    let data = st.read();
    match id.parse::<i64>().ok().and_then(|id| data.erp.position(id)) {
        Some(i) => {
            let it = &data.erp.items[i];
            if is_malformed(&faults, st.config.seed, it) { ok(&malformed_view(it)) } else { ok(&view(it)) }
        }
        None => not_found(&id),
    }
}

/// A validated change to one item.
#[derive(Debug, Default)]
struct ItemPatch {
    quantity: Option<i64>,
    name: Option<String>,
    warehouse: Option<String>,
}

impl ItemPatch {
    /// Reads the patchable fields of `obj` (`id` is skipped); a wrong-typed or unknown field is an error.
    fn parse(obj: &Map<String, Value>) -> Result<ItemPatch, String> {
        let mut p = ItemPatch::default();
        let text = |k: &str, v: &Value| v.as_str().map(str::to_string).ok_or_else(|| format!("{k} must be a string"));
        for (k, v) in obj {
            match k.as_str() {
                "id" => {}
                "quantity" => p.quantity = Some(v.as_i64().ok_or("quantity must be an integer")?),
                "name" => p.name = Some(text(k, v)?),
                "warehouse" => p.warehouse = Some(text(k, v)?),
                other => return Err(format!("field '{other}' cannot be patched")),
            }
        }
        Ok(p)
    }

    /// The fields as written, for `GET /_sandbox/writes`.
    fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(q) = self.quantity {
            m.insert("quantity".into(), Value::from(q));
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), Value::from(n.as_str()));
        }
        if let Some(w) = &self.warehouse {
            m.insert("warehouse".into(), Value::from(w.as_str()));
        }
        m
    }

    /// Applies the patch to item `id`, bumping its `updated_at` when any field is set; the item's index,
    /// `None` when there is no such item.
    fn apply(self, erp: &mut Erp, id: i64, now: i64) -> Option<usize> {
        let i = erp.position(id)?;
        let it = &mut erp.items[i];
        let mut touched = false;
        if let Some(q) = self.quantity {
            it.quantity = q;
            touched = true;
        }
        if let Some(n) = self.name {
            it.name = n;
            touched = true;
        }
        if let Some(w) = self.warehouse {
            it.warehouse = w.into();
            touched = true;
        }
        if touched {
            it.updated_at = now.max(it.updated_at + 1);
        }
        Some(i)
    }
}

/// Logs applied patches (`(id, fields)`, empty field sets skipped) for `GET /_sandbox/writes`.
fn record_patches(st: &AppState, applied: Vec<(i64, Map<String, Value>)>) {
    let mut w = lock(&st.writes);
    for (id, fields) in applied {
        if fields.is_empty() {
            continue;
        }
        w.erp.patches += 1;
        w.erp.patched_fields.entry(id.to_string()).or_default().extend(fields);
    }
}

/// `PATCH /items` with `[{"id", "quantity"?, "name"?, "warehouse"?}, ...]` (1..=500 entries): applies
/// each valid entry and answers `{"results": [{"id", "status": "ok"|"error", "message"?}]}`.
async fn patch_many(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&body) else {
        return bad("expected a JSON array of item patches");
    };
    if !(1..=MAX_PATCH_ITEMS).contains(&entries.len()) {
        return bad(&format!("between 1 and {MAX_PATCH_ITEMS} item patches per request, got {}", entries.len()));
    }
    let now = now_secs();
    let mut results = Vec::with_capacity(entries.len());
    let mut applied = Vec::new();
    {
        let mut data = st.write();
        for entry in &entries {
            let Some(obj) = entry.as_object() else {
                results.push(json!({"id": null, "status": "error", "message": "expected an object"}));
                continue;
            };
            let raw_id = obj.get("id").cloned().unwrap_or(Value::Null);
            let Some(id) = raw_id.as_i64() else {
                let message = if raw_id.is_null() { "id is required" } else { "id must be an integer" };
                results.push(json!({"id": raw_id, "status": "error", "message": message}));
                continue;
            };
            let patch = match ItemPatch::parse(obj) {
                Ok(p) => p,
                Err(message) => {
                    results.push(json!({"id": id, "status": "error", "message": message}));
                    continue;
                }
            };
            let fields = patch.fields();
            match patch.apply(&mut data.erp, id, now) {
                Some(_) => {
                    applied.push((id, fields));
                    results.push(json!({"id": id, "status": "ok"}));
                }
                None => results.push(json!({"id": id, "status": "error", "message": format!("item {id} not found")})),
            }
        }
    }
    record_patches(&st, applied);
    ok(&json!({ "results": results }))
}

/// `PATCH /items/{id}` with `{"quantity"?, "name"?, "warehouse"?}`: the updated item, 404 when unknown.
async fn patch_one(State(st): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&body) else {
        return bad("expected a JSON object of item fields");
    };
    let patch = match ItemPatch::parse(&obj) {
        Ok(p) => p,
        Err(message) => return bad(&message),
    };
    let Ok(n) = id.parse::<i64>() else {
        return not_found(&id);
    };
    let fields = patch.fields();
    let response = {
        let mut data = st.write();
        match patch.apply(&mut data.erp, n, now_secs()) {
            Some(i) => ok(&view(&data.erp.items[i])),
            None => return not_found(&id),
        }
    };
    record_patches(&st, vec![(n, fields)]);
    response
}
