//! Groups and memberships: list, get, create (an existing name returns the existing group), delete,
//! members, and adding/removing people (re-adding a member is a no-op).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::list::{ListRequest, NpItem, api_base, select};
use super::views::Membership;
use super::{bad_json, new_rng, people_keys, unprocessable};
use crate::api::envelope::{json_response, np_not_found, ok};
use crate::data::northpass::Group;
use crate::state::{AppState, lock};
use crate::util::{fmt_utc, now_secs, uuid_v4};

pub async fn list(State(st): State<Arc<AppState>>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let sel = select(np, np.groups.iter(), &list.q);
    list.page(np, &sel, "/groups")
}

pub async fn get_one(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let base = api_base(&headers, &st.base_url);
    let data = st.read();
    let np = &data.northpass;
    match np.group_idx.get(&id) {
        Some(&i) => ok(&json!({"data": np.groups[i].view(np, &base)})),
        None => np_not_found("Group"),
    }
}

pub async fn create(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_json();
    };
    let Some(name) = v["data"]["attributes"]["name"].as_str().map(str::trim).filter(|n| !n.is_empty()) else {
        return unprocessable("Name can't be blank", "/data/attributes/name");
    };
    let base = api_base(&headers, &st.base_url);
    let mut data = st.write();
    let np = &mut data.northpass;
    if let Some(g) = np.groups.iter().find(|g| g.name == name) {
        lock(&st.writes).northpass.group_creations.push(json!({"group_id": g.id, "name": name, "existing": true}));
        return ok(&json!({"data": g.view(np, &base)}));
    }
    let now = now_secs();
    let key = np.take_key();
    let id = uuid_v4(&mut new_rng(st.config.seed, key));
    np.groups.push(Group {
        key,
        id: id.clone(),
        name: name.to_string(),
        created_at: now,
        updated_at: now,
        members: Default::default(),
    });
    np.reindex();
    lock(&st.writes)
        .northpass
        .group_creations
        .push(json!({"group_id": id, "name": name, "existing": false, "at": fmt_utc(now)}));
    let g = &np.groups[np.groups.len() - 1];
    json_response(StatusCode::CREATED, &json!({"data": g.view(np, &base)}))
}

pub async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let mut data = st.write();
    let np = &mut data.northpass;
    let Some(&i) = np.group_idx.get(&id) else {
        return np_not_found("Group");
    };
    let g = np.groups.remove(i);
    np.reindex();
    lock(&st.writes).northpass.group_deletions.push(json!({"group_id": id, "name": g.name, "at": fmt_utc(now_secs())}));
    StatusCode::NO_CONTENT.into_response()
}

pub async fn memberships(State(st): State<Arc<AppState>>, Path(id): Path<String>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let Some(&gi) = np.group_idx.get(&id) else {
        return np_not_found("Group");
    };
    let group = &np.groups[gi];
    let items: Vec<Membership<'_>> = group
        .members
        .iter()
        .filter_map(|(k, &at)| {
            np.person_by_key.get(k).map(|&pi| Membership { group, person: &np.people[pi], created_at: at })
        })
        .collect();
    let sel = select(np, items.iter(), &list.q);
    list.page(np, &sel, &format!("/groups/{id}/memberships"))
}

pub async fn people(State(st): State<Arc<AppState>>, Path(id): Path<String>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let Some(&gi) = np.group_idx.get(&id) else {
        return np_not_found("Group");
    };
    let people = np.groups[gi].members.keys().filter_map(|k| np.person_by_key.get(k).map(|&pi| &np.people[pi]));
    let sel = select(np, people, &list.q);
    list.page(np, &sel, &format!("/groups/{id}/people"))
}

async fn change_members(st: Arc<AppState>, id: String, body: Bytes, add: bool) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_json();
    };
    let mut data = st.write();
    let np = &mut data.northpass;
    let Some(&gi) = np.group_idx.get(&id) else {
        return np_not_found("Group");
    };
    let keys = match people_keys(np, &v) {
        Ok(k) => k,
        Err(msg) => return unprocessable(&msg, "/data"),
    };
    let now = now_secs();
    let mut changed = Vec::new();
    let group = &mut np.groups[gi];
    for k in keys {
        let did = if add {
            match group.members.entry(k) {
                std::collections::btree_map::Entry::Occupied(_) => false,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(now);
                    true
                }
            }
        } else {
            group.members.remove(&k).is_some()
        };
        if did {
            changed.push(k);
        }
    }
    if !changed.is_empty() {
        group.updated_at = now;
    }
    let mut w = lock(&st.writes);
    for k in changed {
        let pid = np.person_by_key.get(&k).map(|&i| np.people[i].id.clone()).unwrap_or_default();
        let entry = json!({"group_id": id, "person_id": pid, "at": fmt_utc(now)});
        if add { w.northpass.membership_adds.push(entry) } else { w.northpass.membership_removes.push(entry) }
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn add_people(State(st): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Response {
    change_members(st, id, body, true).await
}

pub async fn remove_people(State(st): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Response {
    change_members(st, id, body, false).await
}
