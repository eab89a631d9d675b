//! Impartner writes: single and bulk PATCH (bulk answers per-item success at top-level `results`),
//! PUT create (one or many; `NOT_UNIQUE` on a taken email), DELETE one or many. Successful writes are
//! logged for `GET /_sandbox/writes`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::view::RecordView;
use super::{bad_request, filter, not_found, unknown_object};
use crate::api::envelope::{api_error, json_response, ok};
use crate::config::Api;
use crate::data::impartner::{FieldType, Table, Val};
use crate::state::{AppState, lock};
use crate::util::{now_secs, param, parse_pairs, parse_time};

/// Converts a JSON value for a field of type `ty`.
fn coerce(ty: FieldType, v: &Value) -> Result<Val, String> {
    Ok(match (ty, v) {
        (_, Value::Null) => Val::Null,
        (FieldType::Int, Value::Number(n)) => Val::Int(n.as_i64().ok_or("expected an integer")?),
        (FieldType::Int, Value::String(s)) => {
            Val::Int(s.trim().parse().map_err(|_| format!("'{s}' is not an integer"))?)
        }
        (FieldType::Float, Value::Number(n)) => Val::Float(n.as_f64().ok_or("expected a number")?),
        (FieldType::Float, Value::String(s)) => {
            Val::Float(s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?)
        }
        (FieldType::Text, Value::String(s)) => Val::Text(s.clone()),
        (FieldType::Text, Value::Number(n)) => Val::Text(n.to_string()),
        (FieldType::Text, Value::Bool(b)) => Val::Text(b.to_string()),
        (FieldType::Bool, Value::Bool(b)) => Val::Bool(*b),
        (FieldType::Bool, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Val::Bool(true),
            "false" => Val::Bool(false),
            _ => return Err(format!("'{s}' is not a boolean")),
        },
        (FieldType::Time, Value::String(s)) => Val::Time(parse_time(s).ok_or_else(|| format!("'{s}' is not a date"))?),
        (_, other) => return Err(format!("unexpected value {other}")),
    })
}

/// Applies one PATCH dictionary to record `id`; returns the error `(code, message)` on failure
/// (nothing is changed then).
fn apply_patch(table: &mut Table, id: i64, body: &Map<String, Value>, now: i64) -> Result<(), (String, String)> {
    let schema = table.schema;
    let mut changes = Vec::new();
    for (k, v) in body {
        let Some(f) = schema.field(k) else {
            return Err(("INVALID_FIELD".into(), format!("Field '{k}' does not exist on {}.", schema.entity)));
        };
        if f == 0 {
            continue;
        }
        if schema.fields[f].read_only {
            return Err(("READ_ONLY".into(), format!("Field '{}' is read-only.", schema.fields[f].pascal)));
        }
        let val = coerce(schema.fields[f].ty, v)
            .map_err(|e| ("INVALID_VALUE".to_string(), format!("{}: {e}", schema.fields[f].pascal)))?;
        changes.push((f, val));
    }
    let updated_idx = table.updated_idx;
    let Some(rec) = table.get_mut(id) else {
        return Err(("NOT_FOUND".into(), format!("{} {id} was not found.", schema.entity)));
    };
    for (f, val) in changes {
        rec.vals[f] = val;
    }
    let prev = match rec.vals[updated_idx] {
        Val::Time(t) => t,
        _ => 0,
    };
    rec.vals[updated_idx] = Val::Time(now.max(prev + 1));
    Ok(())
}

fn record_patch(st: &AppState, entity: &str, id: i64, body: &Map<String, Value>) {
    let mut w = lock(&st.writes);
    w.impartner.patches.push(json!({"entity": entity, "id": id, "fields": body}));
    let merged = w.impartner.patched_fields.entry(entity.to_string()).or_default().entry(id.to_string()).or_default();
    for (k, v) in body {
        if !k.eq_ignore_ascii_case("id") {
            merged.insert(k.clone(), v.clone());
        }
    }
}

pub(super) async fn patch_one(
    State(st): State<Arc<AppState>>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("INVALID_BODY", "Expected an object of field values.");
    };
    let pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    let mut data = st.write();
    let Some(table) = data.impartner.table_mut(&object) else {
        return unknown_object(&object);
    };
    let Ok(id) = id.parse::<i64>() else {
        return not_found(table.schema.entity, &id);
    };
    let entity = table.schema.entity;
    match apply_patch(table, id, &body, now_secs()) {
        Ok(()) => {}
        Err((code, msg)) if code == "NOT_FOUND" => {
            return api_error(Api::Impartner, StatusCode::NOT_FOUND, &code, &msg);
        }
        Err((code, msg)) => return bad_request(&code, &msg),
    }
    record_patch(&st, entity, id, &body);
    let fields = match filter::parse_fields(param(&pairs, "returnFields"), table.schema) {
        Ok(f) => f,
        Err(e) => return bad_request("INVALID_FIELD", &e),
    };
    let Some(rec) = table.get(id) else {
        return not_found(entity, &id.to_string());
    };
    ok(&json!({"success": true, "data": RecordView { schema: table.schema, rec, fields: &fields, malformed: false }}))
}

pub(super) async fn patch_many(State(st): State<Arc<AppState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("INVALID_BODY", "Expected an array of objects with Id.");
    };
    let now = now_secs();
    let mut data = st.write();
    let Some(table) = data.impartner.table_mut(&object) else {
        return unknown_object(&object);
    };
    let entity = table.schema.entity;
    let mut results = Vec::with_capacity(items.len());
    let mut all_ok = true;
    for item in &items {
        let Some(obj) = item.as_object() else {
            all_ok = false;
            results.push(json!({"success": false, "data": null, "errors": [{"code": "INVALID_BODY", "message": "Expected an object."}]}));
            continue;
        };
        let id = obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("id"))
            .and_then(|(_, v)| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
        let Some(id) = id else {
            all_ok = false;
            results.push(json!({"success": false, "data": null, "errors": [{"code": "MISSING_ID", "message": "Id is required."}]}));
            continue;
        };
        match apply_patch(table, id, obj, now) {
            Ok(()) => {
                record_patch(&st, entity, id, obj);
                results.push(json!({"success": true, "data": {"id": id}, "errors": null}));
            }
            Err((code, message)) => {
                all_ok = false;
                results.push(
                    json!({"success": false, "data": {"id": id}, "errors": [{"code": code, "message": message}]}),
                );
            }
        }
    }
    let message = if all_ok { Value::Null } else { Value::from("One or more records failed to update.") };
    ok(&json!({"success": all_ok, "message": message, "errors": null, "results": results}))
}

/// `PUT /{Object}`: create one (object body) or many (array body).
pub(super) async fn create(State(st): State<Arc<AppState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("INVALID_BODY", "Expected an object or an array.");
    };
    let many = body.is_array();
    let items: Vec<Value> = match body {
        Value::Array(a) => a,
        other => vec![other],
    };
    let now = now_secs();
    let mut data = st.write();
    let accounts_names: HashMap<i64, String> = data
        .impartner
        .accounts
        .records
        .iter()
        .map(|r| (r.id(), data.impartner.accounts.val(r, "Name").as_str().unwrap_or("").to_string()))
        .collect();
    let Some(table) = data.impartner.table_mut(&object) else {
        return unknown_object(&object);
    };
    let entity = table.schema.entity;
    let mut results = Vec::new();
    let mut all_ok = true;
    for item in &items {
        let outcome = create_one(table, item, now, &accounts_names);
        match outcome {
            Ok(id) => {
                lock(&st.writes).impartner.creates.push(json!({"entity": entity, "id": id, "fields": item}));
                results.push(json!({"success": true, "data": {"id": id}, "errors": null}));
            }
            Err((code, message)) => {
                all_ok = false;
                results.push(json!({"success": false, "data": null, "errors": [{"code": code, "message": message}]}));
            }
        }
    }
    if many {
        return ok(&json!({"success": all_ok, "message": null, "errors": null, "results": results}));
    }
    match results.pop() {
        Some(r) if r["success"] == true => ok(&json!({"success": true, "data": r["data"]})),
        Some(r) => {
            let e = &r["errors"][0];
            let msg = e["message"].as_str().unwrap_or("Create failed.");
            json_response(StatusCode::BAD_REQUEST, &json!({"success": false, "message": msg, "errors": [e]}))
        }
        None => bad_request("INVALID_BODY", "Nothing to create."),
    }
}

fn create_one(
    table: &mut Table,
    item: &Value,
    now: i64,
    account_names: &HashMap<i64, String>,
) -> Result<i64, (String, String)> {
    let Some(obj) = item.as_object() else {
        return Err(("INVALID_BODY".into(), "Expected an object.".into()));
    };
    let schema = table.schema;
    let get = |name: &str| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    match schema.entity {
        "User" => {
            let email = get("Email").and_then(Value::as_str).unwrap_or("");
            if get("UserName").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(("REQUIRED".into(), "UserName is required.".into()));
            }
            let email_idx = schema.field("Email").unwrap_or(0);
            if !email.is_empty()
                && table
                    .records
                    .iter()
                    .any(|r| r.vals[email_idx].as_str().is_some_and(|e| e.eq_ignore_ascii_case(email)))
            {
                return Err(("NOT_UNIQUE".into(), format!("Email '{email}' is not a unique value.")));
            }
        }
        _ => {
            if schema.field("Name").is_some() && get("Name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(("REQUIRED".into(), "Name is required.".into()));
            }
        }
    }
    let mut rec = table.blank();
    let id = rec.id();
    for (k, v) in obj {
        let Some(f) = schema.field(k) else {
            return Err(("INVALID_FIELD".into(), format!("Field '{k}' does not exist on {}.", schema.entity)));
        };
        if f == 0 || schema.fields[f].read_only {
            continue;
        }
        rec.vals[f] = coerce(schema.fields[f].ty, v).map_err(|e| ("INVALID_VALUE".to_string(), e))?;
    }
    if schema.entity == "User" {
        let first = get("FirstName").and_then(Value::as_str).unwrap_or("");
        let last = get("LastName").and_then(Value::as_str).unwrap_or("");
        rec.vals[schema.field("FullName").unwrap_or(0)] = Val::Text(format!("{first} {last}").trim().to_string());
        if let Some(aid) = get("AccountId").and_then(Value::as_i64)
            && let Some(n) = account_names.get(&aid)
        {
            rec.vals[schema.field("AccountName").unwrap_or(0)] = Val::Text(n.clone());
        }
    }
    rec.vals[0] = Val::Int(id);
    rec.vals[table.created_idx] = Val::Time(now);
    rec.vals[table.updated_idx] = Val::Time(now);
    table.push(rec);
    Ok(id)
}

pub(super) async fn delete_one(
    State(st): State<Arc<AppState>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let mut data = st.write();
    let Some(table) = data.impartner.table_mut(&object) else {
        return unknown_object(&object);
    };
    let entity = table.schema.entity;
    let Some(n) = id.parse::<i64>().ok().filter(|n| table.get(*n).is_some()) else {
        return not_found(entity, &id);
    };
    table.delete(&[n], now_secs());
    lock(&st.writes).impartner.deletes.push(json!({"entity": entity, "id": n}));
    ok(&json!({"success": true, "data": true}))
}

pub(super) async fn delete_many(State(st): State<Arc<AppState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Array(ids)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("INVALID_BODY", "Expected an array of ids.");
    };
    let mut data = st.write();
    let Some(table) = data.impartner.table_mut(&object) else {
        return unknown_object(&object);
    };
    let entity = table.schema.entity;
    let now = now_secs();
    let mut results = Vec::new();
    let mut all_ok = true;
    for v in &ids {
        let id = v.as_i64().unwrap_or(-1);
        if table.delete(&[id], now).is_empty() {
            all_ok = false;
            results.push(json!({"success": false, "data": {"id": v}, "errors": [{"code": "NOT_FOUND", "message": format!("{entity} {v} was not found.")}]}));
        } else {
            lock(&st.writes).impartner.deletes.push(json!({"entity": entity, "id": id}));
            results.push(json!({"success": true, "data": {"id": id}, "errors": null}));
        }
    }
    ok(&json!({"success": all_ok, "message": null, "errors": null, "results": results}))
}
