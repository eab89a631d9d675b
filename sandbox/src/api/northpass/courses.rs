//! Courses, course properties (the single call answers 403 for some courses), transcripts (404 for
//! people with none) and course enrollments.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::list::{ListRequest, NpItem, api_base, select};
use super::views::{CourseEnrollment, CourseProperties, TranscriptItem, properties_view};
use crate::api::envelope::{api_error, np_not_found, ok};
use crate::config::Api;
use crate::state::AppState;

pub async fn list(State(st): State<Arc<AppState>>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let sel = select(np, np.courses.iter(), &list.q);
    list.page(np, &sel, "/courses")
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

pub async fn enrollments(State(st): State<Arc<AppState>>, Path(id): Path<String>, list: ListRequest) -> Response {
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
    list.page(np, &sel, &format!("/courses/{id}/enrollments"))
}

pub async fn transcripts(
    State(st): State<Arc<AppState>>,
    Path(person_id): Path<String>,
    mut list: ListRequest,
) -> Response {
    list.q.filters.clear();
    list.q.sort.clear();
    let data = st.read();
    let np = &data.northpass;
    let Some(person) = np.person(&person_id) else {
        return np_not_found("Person");
    };
    let Some(enrollments) = np.by_person.get(&person.key).filter(|l| !l.is_empty()) else {
        return np_not_found("Transcript");
    };
    let items: Vec<TranscriptItem<'_>> = enrollments.iter().map(|&e| TranscriptItem(&np.enrollments[e])).collect();
    let sel: Vec<&TranscriptItem<'_>> = items.iter().collect();
    list.page(np, &sel, &format!("/transcripts/{person_id}"))
}

/// `GET /v2/properties/courses`: every course with its properties, paged like the other lists.
pub async fn properties(State(st): State<Arc<AppState>>, list: ListRequest) -> Response {
    let data = st.read();
    let np = &data.northpass;
    let items: Vec<CourseProperties<'_>> = np.courses.iter().map(CourseProperties).collect();
    let sel = select(np, items.iter(), &list.q);
    list.page(np, &sel, "/properties/courses")
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
        Some(&i) => {
            let mut view = properties_view(&np.courses[i]);
            let faults = st.faults(Api::Northpass);
            crate::odd::apply(&faults, &id, &mut view);
            crate::odd::respond(&json!({ "data": view }))
        }
        None => np_not_found("Course"),
    }
}

pub async fn school() -> Response {
    ok(&json!({"data": {"id": super::views::SCHOOL_ID, "type": "school_properties",
        "attributes": {"properties": {"name": "Sandbox Partner Academy"}}}}))
}
