//! Courses, course properties (the single call answers 403 for some courses), transcripts (404 for
//! people with none) and course enrollments.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::list::{ListQuery, NpItem, api_base, break_item, is_malformed, page, select};
use super::views::{CourseEnrollment, TranscriptItem, properties_view};
use crate::api::envelope::{api_error, np_not_found, ok};
use crate::config::Api;
use crate::state::AppState;

pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let q = ListQuery::parse(raw.as_deref());
    let base = api_base(&headers, &st.base_url);
    let faults = st.faults(Api::Northpass);
    let data = st.read();
    let np = &data.northpass;
    let sel = select(np, np.courses.iter(), &q);
    page(np, &sel, &q, &base, "/courses", &faults, st.config.seed)
}

pub async fn get_one(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let base = api_base(&headers, &st.base_url);
    let data = st.read();
    let np = &data.northpass;
    match np.course_idx.get(&id) {
        Some(&i) => ok(&json!({"data": np.courses[i].view(np, &base)})),
        None => np_not_found("Course"),
    }
}

pub async fn enrollments(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = ListQuery::parse(raw.as_deref());
    let base = api_base(&headers, &st.base_url);
    let faults = st.faults(Api::Northpass);
    let data = st.read();
    let np = &data.northpass;
    let Some(&ci) = np.course_idx.get(&id) else {
        return np_not_found("Course");
    };
    let items: Vec<CourseEnrollment<'_>> = np
        .by_course
        .get(&np.courses[ci].key)
        .map(|v| {
            v.iter().enumerate().map(|(rank, &e)| CourseEnrollment { e: &np.enrollments[e], rank: rank + 1 }).collect()
        })
        .unwrap_or_default();
    let sel: Vec<&CourseEnrollment<'_>> = items.iter().collect();
    page(np, &sel, &q, &base, &format!("/courses/{id}/enrollments"), &faults, st.config.seed)
}

pub async fn transcripts(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(person_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let mut q = ListQuery::parse(raw.as_deref());
    q.filters.clear();
    q.sort.clear();
    let base = api_base(&headers, &st.base_url);
    let faults = st.faults(Api::Northpass);
    let data = st.read();
    let np = &data.northpass;
    let Some(person) = np.person(&person_id) else {
        return np_not_found("Person");
    };
    let Some(list) = np.by_person.get(&person.key).filter(|l| !l.is_empty()) else {
        return np_not_found("Transcript");
    };
    let items: Vec<TranscriptItem<'_>> = list.iter().map(|&e| TranscriptItem(&np.enrollments[e])).collect();
    let sel: Vec<&TranscriptItem<'_>> = items.iter().collect();
    page(np, &sel, &q, &base, &format!("/transcripts/{person_id}"), &faults, st.config.seed)
}

/// `GET /v2/properties/courses`: every course with its properties, paged like the other lists.
pub async fn properties(State(st): State<Arc<AppState>>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let q = ListQuery::parse(raw.as_deref());
    let base = api_base(&headers, &st.base_url);
    let faults = st.faults(Api::Northpass);
    let data = st.read();
    let np = &data.northpass;
    let sel = select(np, np.courses.iter(), &q);
    let total = sel.len();
    let start = (q.page - 1).saturating_mul(q.limit).min(total);
    let mut end = (start + q.limit).min(total);
    if faults.truncate_page && end > start {
        end = start + (end - start).div_ceil(2);
    }
    let items: Vec<Value> = sel[start..end]
        .iter()
        .map(|c| {
            let v = properties_view(c);
            if is_malformed(&faults, st.config.seed, c.key) { break_item(v, c.key) } else { v }
        })
        .collect();
    let url = format!("{base}/properties/courses");
    let mut links = serde_json::Map::new();
    let qs = |p: usize| format!("{url}?page={p}&limit={}", q.limit);
    links.insert("self".into(), Value::from(qs(q.page)));
    if q.page > 1 {
        links.insert("prev".into(), Value::from(qs(q.page - 1)));
    }
    if q.page * q.limit < total {
        links.insert("next".into(), Value::from(qs(q.page + 1)));
    }
    ok(&json!({"data": items, "links": links}))
}

pub async fn one_property(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let data = st.read();
    let np = &data.northpass;
    match np.course_idx.get(&id) {
        Some(&i) if np.courses[i].properties_forbidden => api_error(
            Api::Northpass,
            StatusCode::FORBIDDEN,
            "forbidden",
            "You are not allowed to access this course's properties.",
        ),
        Some(&i) => ok(&json!({"data": properties_view(&np.courses[i])})),
        None => np_not_found("Course"),
    }
}

pub async fn school() -> Response {
    ok(&json!({"data": {"id": super::views::SCHOOL_ID, "type": "school_properties",
        "attributes": {"properties": {"name": "Sandbox Partner Academy"}}}}))
}
