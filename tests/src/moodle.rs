//! Helpers of the Moodle pack's tests: the integration `uni` on a sandbox, and the sandbox's Moodle
//! read through its web services the way a client would.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::Sandbox;

/// The `moodle` integration `uni` on this sandbox; `settings` are further lines of the integration.
pub fn uni_toml(sandbox: &Sandbox, settings: &str) -> String {
    syncfleet_sandbox::moodle_integration_toml("uni", &sandbox.handle.moodle_url(), settings)
}

/// Calls a Moodle web service function on the sandbox; panics on an error envelope.
pub async fn call(sandbox: &Sandbox, function: &str, params: &[(&str, &str)]) -> Value {
    let mut query: Vec<(&str, &str)> =
        vec![("wstoken", "moodle-token"), ("wsfunction", function), ("moodlewsrestformat", "json")];
    query.extend_from_slice(params);
    let body: Value = reqwest::Client::new()
        .get(sandbox.handle.moodle_url())
        .query(&query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("exception").is_none(), "{function}: {body}");
    body
}

pub async fn categories(sandbox: &Sandbox) -> Vec<Value> {
    call(sandbox, "core_course_get_categories", &[]).await.as_array().unwrap().clone()
}

/// Program (depth 4) category ids.
pub async fn programs(sandbox: &Sandbox) -> Vec<String> {
    categories(sandbox).await.iter().filter(|c| c["depth"] == 4).map(|c| c["id"].to_string()).collect()
}

pub async fn courses_in(sandbox: &Sandbox, program: &str) -> Vec<Value> {
    let body = call(sandbox, "core_course_get_courses_by_field", &[("field", "category"), ("value", program)]).await;
    body["courses"].as_array().unwrap().clone()
}

/// Every course id of every program.
pub async fn course_ids(sandbox: &Sandbox) -> Vec<String> {
    let mut out = vec![];
    for p in programs(sandbox).await {
        out.extend(courses_in(sandbox, &p).await.iter().map(|c| c["id"].to_string()));
    }
    out
}

pub async fn enrolled(sandbox: &Sandbox, course: &str) -> Vec<Value> {
    call(sandbox, "core_enrol_get_enrolled_users", &[("courseid", course)]).await.as_array().unwrap().clone()
}

/// What the sandbox says the enrollments are: `{course}:{user}` → (section = first group, role).
pub async fn expected_enrollments(sandbox: &Sandbox) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out = BTreeMap::new();
    for course in course_ids(sandbox).await {
        for u in enrolled(sandbox, &course).await {
            let section = u["groups"].as_array().and_then(|g| g.first()).map(|g| g["id"].to_string());
            let role = u["roles"].as_array().and_then(|r| r.first()).and_then(|r| r["shortname"].as_str());
            out.insert(format!("{course}:{}", u["id"]), (section, role.map(str::to_owned)));
        }
    }
    out
}

/// (user id, username) of every enrolled user, each once.
pub async fn expected_users(sandbox: &Sandbox) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for course in course_ids(sandbox).await {
        for u in enrolled(sandbox, &course).await {
            out.insert((u["id"].to_string(), u["username"].as_str().unwrap().to_owned()));
        }
    }
    out
}
