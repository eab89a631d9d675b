//! Helpers of the partner pack's tests: read the sandbox's Northpass and Impartner the way a client
//! would, and pick steps out of a run.

use serde_json::Value;
use syncfleet_store::views::{RunView, StepView};

use crate::Sandbox;

/// The partner integration `acme` on this sandbox, as the partner tests use it: incremental reads
/// without lookback (so they are exact) and Impartner pages of 25 (so paging is exercised).
/// `northpass_extra` goes inside the `northpass` table, `settings` are further lines.
pub fn acme_toml(sandbox: &Sandbox, northpass_extra: &str, settings: &str) -> String {
    syncfleet_sandbox::partner_integration_toml(
        "acme",
        &sandbox.handle.northpass_url(),
        &sandbox.handle.impartner_url(),
        25,
        northpass_extra,
        &format!("lookback_secs = 0\n{settings}"),
    )
}

/// The step `name` of a run (panics naming the run when it has none).
pub fn step<'a>(view: &'a RunView, name: &str) -> &'a StepView {
    view.steps.iter().find(|s| s.step == name).unwrap_or_else(|| panic!("step {name} in {view:#?}"))
}

/// `v[key]` as a string ("" when missing or not a string).
pub fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// A GET with headers: the status and the JSON body (`Null` when the body is not JSON).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every record of a Northpass list, following `links.next`; empty when the list answers 404.
pub async fn northpass_all(sandbox: &Sandbox, path: &str) -> Vec<Value> {
    let mut url = format!("{}{path}?limit=100", sandbox.handle.northpass_url());
    let mut out = vec![];
    loop {
        let (status, body) = get(&url, &[("X-Api-Key", "np-key")]).await;
        if status == 404 {
            return out;
        }
        out.extend(body["data"].as_array().unwrap_or_else(|| panic!("{url}: {body}")).iter().cloned());
        match body.pointer("/links/next").and_then(Value::as_str) {
            Some(next) => url = next.to_owned(),
            None => return out,
        }
    }
}

/// Every record of an Impartner object (one page of 1000 is all at `small` scale).
pub async fn impartner_all(sandbox: &Sandbox, object: &str) -> Vec<Value> {
    let url = format!("{}/{object}?take=1000&orderby=Id", sandbox.handle.impartner_url());
    let (_, body) = get(&url, &[("Authorization", "prm-key prm-key")]).await;
    assert!(body["data"]["count"].as_i64().unwrap() <= 1000, "the test reads one page");
    body["data"]["results"].as_array().unwrap().clone()
}
