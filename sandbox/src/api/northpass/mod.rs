//! Northpass v2 (JSON:API) under `/northpass/v2`: people, groups and memberships, courses, course
//! properties, transcripts and course enrollments.

mod courses;
mod groups;
pub mod list;
pub mod views;

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use self::list::{ListRequest, NpItem, api_base, select};
use crate::api::envelope::{api_error, json_response, np_not_found, ok};
use crate::config::Api;
use crate::data::northpass::Person;
use crate::state::{AppState, lock};
use crate::util::{fmt_utc, now_secs, uuid_v4};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/people", get(list_people).post(create_person))
        .route("/people/{id}", get(get_person).patch(patch_person))
        .route("/groups", get(groups::list).post(groups::create))
        .route("/groups/{id}", get(groups::get_one).delete(groups::delete))
        .route("/groups/{id}/memberships", get(groups::memberships))
        .route("/groups/{id}/people", get(groups::people))
        .route(
            "/groups/{id}/relationships/people",
            axum::routing::post(groups::add_people).delete(groups::remove_people),
        )
        .route("/courses", get(courses::list))
        .route("/courses/{id}", get(courses::get_one))
        .route("/courses/{id}/enrollments", get(courses::enrollments))
        .route("/properties/courses", get(courses::properties))
        .route("/properties/courses/{id}", get(courses::one_property))
        .route("/properties/school", get(courses::school))
        .route("/transcripts/{person_id}", get(courses::transcripts))
}

pub(crate) fn unprocessable(detail: &str, pointer: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"errors": [{"status": "422", "title": "Invalid Attribute", "detail": detail, "source": {"pointer": pointer}}]}),
    )
}

pub(crate) fn bad_json() -> Response {
    api_error(Api::Northpass, StatusCode::BAD_REQUEST, "bad_request", "The request body is not valid JSON:API.")
}

async fn list_people(State(st): State<Arc<AppState>>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let sel = select(np, np.people.iter(), &list.q);
    list.page(np, &sel, "/people")
}

async fn get_person(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let base = api_base(&headers, &st.base_url);
    let data = st.read();
    let np = &data.northpass;
    match np.person(&id) {
        Some(p) => ok(&json!({"data": p.view(np, &base)})),
        None => np_not_found("Person"),
    }
}

async fn create_person(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_json();
    };
    let attrs = &v["data"]["attributes"];
    let Some(email) = attrs["email"].as_str().filter(|e| e.contains('@')) else {
        return unprocessable("Email is invalid", "/data/attributes/email");
    };
    let base = api_base(&headers, &st.base_url);
    let mut data = st.write();
    let np = &mut data.northpass;
    if np.people.iter().any(|p| p.email.eq_ignore_ascii_case(email)) {
        return unprocessable("Email has already been taken", "/data/attributes/email");
    }
    let now = now_secs();
    let key = np.take_key();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64_key(st.config.seed, key);
    let person = Person {
        key,
        id: uuid_v4(&mut rng),
        email: email.to_string(),
        first_name: attrs["first_name"].as_str().unwrap_or("").to_string(),
        last_name: attrs["last_name"].as_str().unwrap_or("").to_string(),
        created_at: now,
        updated_at: now,
        activated_at: None,
        deactivated_at: None,
        last_active_at: None,
    };
    let id = person.id.clone();
    np.people.push(person);
    np.reindex();
    lock(&st.writes).northpass.people_created.push(json!({"person_id": id, "email": email, "at": fmt_utc(now)}));
    let p = np.person(&id).map(|p| json!({"data": p.view(np, &base)}));
    json_response(StatusCode::CREATED, &p)
}

async fn patch_person(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad_json();
    };
    let Some(attrs) = v["data"]["attributes"].as_object() else {
        return unprocessable("data.attributes is required", "/data/attributes");
    };
    let base = api_base(&headers, &st.base_url);
    let mut data = st.write();
    let np = &mut data.northpass;
    let Some(&i) = np.person_idx.get(&id) else {
        return np_not_found("Person");
    };
    if let Some(email) = attrs.get("email").and_then(Value::as_str)
        && np.people.iter().any(|p| p.id != id && p.email.eq_ignore_ascii_case(email))
    {
        return unprocessable("Email has already been taken", "/data/attributes/email");
    }
    let now = now_secs();
    let p = &mut np.people[i];
    for (k, val) in attrs {
        match (k.as_str(), val) {
            ("deactivated", Value::Bool(true)) => p.deactivated_at = p.deactivated_at.or(Some(now)),
            ("deactivated", Value::Bool(false)) => p.deactivated_at = None,
            ("first_name", Value::String(s)) => p.first_name = s.clone(),
            ("last_name", Value::String(s)) => p.last_name = s.clone(),
            ("email", Value::String(s)) => p.email = s.clone(),
            _ => {}
        }
    }
    p.updated_at = now.max(p.updated_at + 1);
    lock(&st.writes).northpass.person_patches.push(json!({"person_id": id, "attributes": attrs, "at": fmt_utc(now)}));
    let p = &np.people[i];
    ok(&json!({"data": p.view(np, &base)}))
}

/// People keys from a JSON:API `{"data":[{"type":"people","id":..}]}` body; `Err` names the bad ids.
pub(crate) fn people_keys(np: &crate::data::northpass::Northpass, body: &Value) -> Result<Vec<u32>, String> {
    let Some(items) = body["data"].as_array() else {
        return Err("data must be an array".into());
    };
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    let mut seen = HashSet::new();
    for it in items {
        let id = it["id"].as_str().unwrap_or("");
        match np.person(id) {
            Some(p) => {
                if seen.insert(p.key) {
                    keys.push(p.key);
                }
            }
            None => bad.push(id.to_string()),
        }
    }
    if bad.is_empty() { Ok(keys) } else { Err(format!("Invalid person ids: {}", bad.join(", "))) }
}

/// Seeding a ChaCha stream from (seed, key) for records created at run time.
trait SeedKey {
    fn seed_from_u64_key(seed: u64, key: u32) -> Self;
}

impl SeedKey for rand_chacha::ChaCha8Rng {
    fn seed_from_u64_key(seed: u64, key: u32) -> Self {
        use rand::SeedableRng;
        rand_chacha::ChaCha8Rng::seed_from_u64(crate::util::mix(seed ^ 0x7275_6e74) ^ u64::from(key))
    }
}

pub(crate) fn new_rng(seed: u64, key: u32) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64_key(seed, key)
}
