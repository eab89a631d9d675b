//! Impartner PRM objects v1 under `/impartner/api/objects/v1/{Object}` (also `/impartner/prm/api/...`):
//! search with `fields`/`filter`/`orderby`/`skip`/`take`, get, single and bulk PATCH, PUT create,
//! DELETE, `_deleted` and `_describe`. Responses use the `ApiResult` envelope with camelCase keys.

pub mod filter;
mod view;
mod writes;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use self::view::{RecordView, is_malformed};
use self::writes::{create, delete_many, delete_one, patch_many, patch_one};
use crate::api::envelope::{api_error, ok};
use crate::config::Api;
use crate::data::impartner::{FieldType, Record};
use crate::state::AppState;
use crate::util::{param, parse_pairs, parse_time};

pub const DEFAULT_TAKE: usize = 20;
pub const MAX_TAKE: usize = 1000;

pub fn router() -> Router<Arc<AppState>> {
    let objects = Router::new()
        .route("/{object}", get(search).post(search_body).patch(patch_many).put(create).delete(delete_many))
        .route("/{object}/_deleted", get(deleted))
        .route("/{object}/_describe", get(describe))
        .route("/{object}/{id}", get(get_one).patch(patch_one).delete(delete_one));
    Router::new().nest("/api/objects/v1", objects.clone()).nest("/prm/api/objects/v1", objects)
}

fn bad_request(code: &str, msg: &str) -> Response {
    api_error(Api::Impartner, StatusCode::BAD_REQUEST, code, msg)
}

fn unknown_object(object: &str) -> Response {
    api_error(Api::Impartner, StatusCode::NOT_FOUND, "UNKNOWN_OBJECT", &format!("Object '{object}' does not exist."))
}

fn not_found(entity: &str, id: &str) -> Response {
    api_error(Api::Impartner, StatusCode::NOT_FOUND, "NOT_FOUND", &format!("{entity} {id} was not found."))
}

#[derive(serde::Serialize)]
struct SearchData<'a> {
    count: usize,
    entity: &'static str,
    results: Vec<RecordView<'a>>,
}

#[derive(serde::Serialize)]
struct SearchResult<'a> {
    success: bool,
    data: SearchData<'a>,
}

struct Search {
    fields: Option<String>,
    filter: Option<String>,
    orderby: Option<String>,
    q: Option<String>,
    skip: usize,
    take: usize,
}

fn run_search(st: &AppState, object: &str, s: Search) -> Response {
    let faults = st.faults(Api::Impartner);
    let data = st.read();
    let Some(table) = data.impartner.table(object) else {
        return unknown_object(object);
    };
    let schema = table.schema;
    let fields = match filter::parse_fields(s.fields.as_deref(), schema) {
        Ok(f) => f,
        Err(e) => return bad_request("INVALID_FIELD", &e),
    };
    let expr = match s.filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => match filter::parse(f, schema) {
            Ok(e) => Some(e),
            Err(e) => return bad_request("INVALID_FILTER", &format!("Invalid filter: {e}")),
        },
        None => None,
    };
    let order = match s.orderby.as_deref() {
        Some(o) => match filter::parse_orderby(o, schema) {
            Ok(o) => o,
            Err(e) => return bad_request("INVALID_ORDERBY", &e),
        },
        None => Vec::new(),
    };
    let q = s.q.as_deref().map(str::to_lowercase).filter(|q| !q.is_empty());
    let mut sel: Vec<&Record> = table
        .records
        .iter()
        .filter(|r| expr.as_ref().is_none_or(|e| e.eval(r)))
        .filter(|r| {
            q.as_ref().is_none_or(|q| {
                r.vals.iter().any(|v| v.as_str().is_some_and(|t| t.to_lowercase().contains(q.as_str())))
            })
        })
        .collect();
    if !order.is_empty() {
        sel.sort_by(|a, b| {
            for &(f, desc) in &order {
                let o = filter::cmp_vals(&a.vals[f], &b.vals[f]);
                let o = if desc { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            a.id().cmp(&b.id())
        });
    }
    if faults.empty_list {
        sel.clear();
    }
    let count = sel.len();
    // A repeated page serves the previous page's items again.
    let skip = if faults.repeats(s.skip / s.take + 1) { s.skip.saturating_sub(s.take) } else { s.skip };
    let start = skip.min(count);
    let mut end = (start + s.take).min(count);
    if faults.truncate_page && end > start {
        end = start + (end - start).div_ceil(2);
    }
    let seed = st.config.seed;
    let results: Vec<RecordView<'_>> = sel[start..end]
        .iter()
        .map(|r| RecordView { schema, rec: r, fields: &fields, malformed: is_malformed(&faults, seed, r.id()) })
        .collect();
    if crate::odd::any(&faults) {
        let results: Vec<Value> = results
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                crate::odd::apply(&faults, &crate::odd::id_of(&v), &mut v);
                v
            })
            .collect();
        let data = serde_json::json!({ "count": count, "entity": schema.entity, "results": results });
        return crate::odd::respond(&serde_json::json!({ "success": true, "data": data }));
    }
    ok(&SearchResult { success: true, data: SearchData { count, entity: schema.entity, results } })
}

fn search_from_pairs(pairs: &[(String, String)]) -> Search {
    let get = |k: &str| pairs.iter().rev().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Search {
        fields: get("fields"),
        filter: get("filter"),
        orderby: get("orderby"),
        q: get("q"),
        skip: get("skip").and_then(|v| v.parse().ok()).unwrap_or(0),
        take: get("take").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_TAKE).clamp(1, MAX_TAKE),
    }
}

async fn search(State(st): State<Arc<AppState>>, Path(object): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    run_search(&st, &object, search_from_pairs(&pairs))
}

/// `POST /{Object}` with a `SearchCriteria` body (search, not create).
async fn search_body(State(st): State<Arc<AppState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("INVALID_BODY", "Expected a SearchCriteria object.");
    };
    let pairs: Vec<(String, String)> =
        body.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
    run_search(&st, &object, search_from_pairs(&pairs))
}

async fn get_one(
    State(st): State<Arc<AppState>>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    let data = st.read();
    let Some(table) = data.impartner.table(&object) else {
        return unknown_object(&object);
    };
    let fields = match filter::parse_fields(param(&pairs, "fields"), table.schema) {
        Ok(f) => f,
        Err(e) => return bad_request("INVALID_FIELD", &e),
    };
    match id.parse::<i64>().ok().and_then(|i| table.get(i)) {
        Some(rec) => ok(
            &json!({"success": true, "data": RecordView { schema: table.schema, rec, fields: &fields, malformed: false }}),
        ),
        None => not_found(table.schema.entity, &id),
    }
}

/// `GET /{Object}/_deleted?fromUtc=&toUtc=`: ids deleted in the window.
async fn deleted(State(st): State<Arc<AppState>>, Path(object): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    let get = |k: &str| pairs.iter().rev().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
    let from = match get("fromUtc").map(parse_time) {
        Some(None) => return bad_request("INVALID_DATE", "fromUtc is not a date."),
        Some(Some(t)) => t,
        None => i64::MIN,
    };
    let to = match get("toUtc").map(parse_time) {
        Some(None) => return bad_request("INVALID_DATE", "toUtc is not a date."),
        Some(Some(t)) => t,
        None => i64::MAX,
    };
    let data = st.read();
    let Some(table) = data.impartner.table(&object) else {
        return unknown_object(&object);
    };
    let ids: Vec<i64> = table.deleted.iter().filter(|(_, at)| *at >= from && *at <= to).map(|(id, _)| *id).collect();
    ok(&json!({"success": true, "data": ids}))
}

async fn describe(State(st): State<Arc<AppState>>, Path(object): Path<String>) -> Response {
    let data = st.read();
    let Some(table) = data.impartner.table(&object) else {
        return unknown_object(&object);
    };
    let fields: Vec<Value> = table
        .schema
        .fields
        .iter()
        .map(|f| {
            let ty = match f.ty {
                FieldType::Int => "Integer",
                FieldType::Float => "Double",
                FieldType::Text => "ShortText",
                FieldType::Bool => "Boolean",
                FieldType::Time => "DateTime",
            };
            json!({"name": f.pascal, "fieldType": ty, "isReadOnly": f.read_only})
        })
        .collect();
    ok(&json!({"success": true, "data": {"name": table.schema.entity, "fields": fields}}))
}
