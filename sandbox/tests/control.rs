//! Control API and cross-cutting behaviour: auth, info, determinism, mutate, reset, counters, faults.

mod common;

use std::time::{Duration, Instant};

use common::{start, start_small};
use reqwest::StatusCode;
use serde_json::{Value, json};
use syncfleet_sandbox::{FaultSettings, SandboxConfig, Scale};

#[tokio::test]
async fn control_requires_the_token() {
    let sb = start_small().await;
    let r = sb.http.get(format!("{}/info", sb.h.control_url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sb.http.get(format!("{}/info", sb.h.control_url())).bearer_auth("nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let info = sb.control_get("/info").await;
    assert_eq!(info["scale"], "small");
    assert_eq!(info["seed"], 42);
    assert_eq!(info["apis"]["northpass"]["base_url"], sb.h.northpass_url());
    assert_eq!(info["apis"]["northpass"]["key"], "np-key");
    assert_eq!(info, sb.h.info());
    let c = &info["counts"];
    assert_eq!(c["northpass"]["people"], 300);
    assert_eq!(c["northpass"]["groups"], 40);
    assert_eq!(c["northpass"]["courses"], 30);
    assert_eq!(c["impartner"]["Account"], 60);
    assert_eq!(c["impartner"]["User"], 400);
}

async fn fetch_bytes(sb: &common::Sb) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let key = &sb.h.config.northpass_key;
    for path in ["/people?limit=100&page=2", "/groups?limit=100", "/courses?limit=100", "/properties/courses?limit=100"]
    {
        let r = sb.http.get(format!("{}{path}", sb.h.northpass_url())).header("X-Api-Key", key).send().await.unwrap();
        let text = r.text().await.unwrap();
        // Links carry the port; compare the data only.
        out.push(text.replace(&sb.h.base_url, "BASE").into_bytes());
    }
    for path in ["/Account?take=1000", "/User?take=1000", "/Lead?take=1000"] {
        let r = sb.ip(reqwest::Method::GET, path).send().await.unwrap();
        out.push(r.bytes().await.unwrap().to_vec());
    }
    let r = sb
        .http
        .get(format!("{}/items?limit=1000", sb.h.erp_url()))
        .bearer_auth(&sb.h.config.erp_token)
        .send()
        .await
        .unwrap();
    out.push(r.bytes().await.unwrap().to_vec());
    let r = sb
        .http
        .get(sb.h.moodle_url())
        .query(&[
            ("wstoken", "moodle-token"),
            ("wsfunction", "core_course_get_courses_by_field"),
            ("moodlewsrestformat", "json"),
        ])
        .send()
        .await
        .unwrap();
    out.push(r.bytes().await.unwrap().to_vec());
    out
}

#[tokio::test]
async fn same_seed_serves_identical_bytes_and_another_seed_differs() {
    let a = start_small().await;
    let b = start_small().await;
    let c = start(SandboxConfig { seed: 7, ..SandboxConfig::default().unlimited() }).await;
    let (ba, bb, bc) = (fetch_bytes(&a).await, fetch_bytes(&b).await, fetch_bytes(&c).await);
    for (i, (x, y)) in ba.iter().zip(&bb).enumerate() {
        assert!(x == y, "response {i} identical for the same seed");
    }
    for (i, (x, z)) in ba.iter().zip(&bc).enumerate() {
        assert!(x != z, "response {i} differs for another seed");
    }
}

#[tokio::test]
async fn mutate_changes_deletes_and_adds_then_reset_restores() {
    let sb = start_small().await;
    let people = sb.count("northpass", "people").await;
    let before = sb.np_all("/people?limit=100").await;
    let max_updated = before.iter().map(|p| p["attributes"]["updated_at"].as_str().unwrap().to_string()).max().unwrap();
    let res = sb
        .control_post(
            "/mutate",
            json!({"api": "northpass", "resource": "people", "change_percent": 5, "delete": 3, "add": 2}),
        )
        .await;
    assert_eq!(res["changed"].as_array().unwrap().len(), 15);
    assert_eq!(res["deleted"].as_array().unwrap().len(), 3);
    assert_eq!(res["added"].as_array().unwrap().len(), 2);
    assert_eq!(sb.count("northpass", "people").await, people - 1);
    let after = sb.np_all("/people?limit=100").await;
    assert_eq!(after.len() as u64, people - 1);
    // Changed and added people show up past the old maximum updated_at.
    let newer = sb.np_all(&format!("/people?limit=100&filter[updated_at][gt]={}", common::enc(&max_updated))).await;
    let ids: Vec<&Value> = newer.iter().map(|p| &p["id"]).collect();
    assert_eq!(newer.len(), 17);
    for id in res["changed"].as_array().unwrap().iter().chain(res["added"].as_array().unwrap()) {
        assert!(ids.contains(&id));
    }
    let gone = res["deleted"][0].as_str().unwrap();
    assert_eq!(sb.np(&format!("/people/{gone}")).await.status(), StatusCode::NOT_FOUND);

    // Impartner: deletions appear in _deleted.
    let res = sb
        .control_post(
            "/mutate",
            json!({"api": "impartner", "resource": "accounts", "change_percent": 10, "delete": 2, "add": 1}),
        )
        .await;
    assert_eq!(res["deleted"].as_array().unwrap().len(), 2);
    let (_, del) = sb.ip_get("/Account/_deleted", &[]).await;
    assert_eq!(del["data"], res["deleted"]);
    assert_eq!(sb.count("impartner", "Account").await, 59);
    // Other APIs and resources.
    for (api, resource) in [
        ("northpass", "groups"),
        ("northpass", "courses"),
        ("northpass", "enrollments"),
        ("impartner", "contacts"),
        ("impartner", "leads"),
        ("moodle", "users"),
        ("moodle", "courses"),
        ("moodle", "enrolments"),
        ("erp", "items"),
    ] {
        let r = sb
            .control_post(
                "/mutate",
                json!({"api": api, "resource": resource, "change_percent": 2, "delete": 1, "add": 1}),
            )
            .await;
        assert_eq!(r["deleted"].as_array().unwrap().len(), 1, "{api}/{resource}");
        assert_eq!(r["added"].as_array().unwrap().len(), 1, "{api}/{resource}");
    }
    let r = sb
        .http
        .post(format!("{}/mutate", sb.h.control_url()))
        .bearer_auth("sandbox-control")
        .json(&json!({"api": "erp", "resource": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    sb.control_post("/reset", json!({})).await;
    assert_eq!(sb.count("northpass", "people").await, people);
    assert_eq!(sb.np_all("/people?limit=100").await, before);
}

#[tokio::test]
async fn counters_per_endpoint_and_reset() {
    let sb = start_small().await;
    sb.np_json("/people").await;
    sb.np_json("/people").await;
    let id = sb.np_json("/people").await["data"][0]["id"].as_str().unwrap().to_string();
    sb.np_json(&format!("/people/{id}")).await;
    sb.ip_get("/Account", &[]).await;
    sb.moodle("core_course_get_categories", &[]).await;
    sb.erp(&[]).await;
    let c = sb.control_get("/counters").await;
    assert_eq!(c["northpass"]["endpoints"]["GET /northpass/v2/people"]["requests"], 3);
    assert_eq!(c["northpass"]["endpoints"]["GET /northpass/v2/people/{id}"]["requests"], 1);
    assert_eq!(c["northpass"]["requests"], 4);
    assert_eq!(c["impartner"]["endpoints"]["GET /impartner/api/objects/v1/{object}"]["requests"], 1);
    assert_eq!(c["moodle"]["functions"]["core_course_get_categories"], 1);
    assert_eq!(c["erp"]["requests"], 1);
    sb.control_post("/counters/reset", json!({})).await;
    let c = sb.control_get("/counters").await;
    assert_eq!(c["northpass"]["requests"], 0);
}

#[tokio::test]
async fn server_error_fault_uses_each_envelope_and_turns_off() {
    let sb = start_small().await;
    for api in ["northpass", "impartner", "moodle", "erp"] {
        let f = sb.set_faults(api, json!({"error_5xx_share": 1.0})).await;
        assert_eq!(f["error_5xx_share"], 1.0);
    }
    let r = sb.np("/people").await;
    assert!(r.status().is_server_error());
    let b: Value = r.json().await.unwrap();
    assert!(b["errors"][0]["status"].as_str().unwrap().starts_with('5'));
    let r = sb.ip(reqwest::Method::GET, "/Account").send().await.unwrap();
    assert!(r.status().is_server_error());
    assert_eq!(r.json::<Value>().await.unwrap()["success"], false);
    let r = sb.http.get(format!("{}/items", sb.h.erp_url())).bearer_auth("erp-token").send().await.unwrap();
    assert!(r.status().is_server_error());
    let r = sb
        .http
        .get(sb.h.moodle_url())
        .query(&[
            ("wstoken", "moodle-token"),
            ("wsfunction", "core_course_get_categories"),
            ("moodlewsrestformat", "json"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    assert!(r.json::<Value>().await.unwrap()["exception"].is_string());
    let c = sb.control_get("/counters").await;
    assert_eq!(c["northpass"]["errors_5xx"], 1);
    for api in ["northpass", "impartner", "moodle", "erp"] {
        sb.set_faults(api, json!({"error_5xx_share": 0.0})).await;
    }
    assert_eq!(sb.np("/people").await.status(), StatusCode::OK);
    // A half share fails some and passes some.
    sb.set_faults("northpass", json!({"error_5xx_share": 0.5})).await;
    let mut failed = 0;
    for _ in 0..40 {
        if sb.np("/people").await.status().is_server_error() {
            failed += 1;
        }
    }
    assert!((8..=32).contains(&failed), "failed {failed} of 40");
}

#[tokio::test]
async fn timeout_and_latency_faults() {
    let sb = start_small().await;
    sb.set_faults("erp", json!({"timeout_share": 1.0})).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let t = Instant::now();
    let r = client.get(format!("{}/items", sb.h.erp_url())).bearer_auth("erp-token").send().await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    assert!(t.elapsed() < Duration::from_secs(2));
    sb.set_faults("erp", json!({"timeout_share": 0.0, "latency_ms": 150})).await;
    let t = Instant::now();
    let r = client.get(format!("{}/items", sb.h.erp_url())).bearer_auth("erp-token").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(150));
    let f = sb.set_faults("erp", json!({"latency_ms": 0})).await;
    assert_eq!(f["latency_ms"], 0);
    let all: Value = sb.control_get("/faults").await;
    assert_eq!(all["northpass"]["rate_per_sec"], Value::Null, "tests run unlimited");
    let c = sb.control_get("/counters").await;
    assert_eq!(c["erp"]["endpoints"]["GET /erp/api/items"]["timeouts"], 1);
}

#[tokio::test]
async fn truncated_pages_and_malformed_items() {
    let sb = start_small().await;
    // Truncated: the total stays, the pages end early.
    sb.set_faults("impartner", json!({"truncate_page": true})).await;
    let (_, b) = sb.ip_get("/User", &[("take", "100")]).await;
    assert_eq!(b["data"]["count"], 400);
    assert_eq!(b["data"]["results"].as_array().unwrap().len(), 50);
    sb.set_faults("erp", json!({"truncate_page": true})).await;
    let (_, b) = sb.erp(&[("limit", "100")]).await;
    assert_eq!(b["total"], 250);
    assert_eq!(b["items"].as_array().unwrap().len(), 50);
    sb.set_faults("northpass", json!({"truncate_page": true})).await;
    let b = sb.np_json("/people?limit=100").await;
    assert_eq!(b["data"].as_array().unwrap().len(), 50);
    assert!(b["links"]["next"].is_string());
    for api in ["impartner", "erp", "northpass"] {
        sb.set_faults(api, json!({"truncate_page": false})).await;
    }
    assert_eq!(sb.ip_get("/User", &[("take", "100")]).await.1["data"]["results"].as_array().unwrap().len(), 100);

    // Empty list: no items, a total of 0 and no next page, whatever the data holds.
    for api in ["impartner", "erp", "northpass"] {
        assert_eq!(sb.set_faults(api, json!({"empty_list": true})).await["empty_list"], true);
    }
    let (_, b) = sb.ip_get("/User", &[("take", "100")]).await;
    assert_eq!((b["data"]["count"].as_i64(), b["data"]["results"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let (_, b) = sb.erp(&[("limit", "100")]).await;
    assert_eq!((b["total"].as_i64(), b["items"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let b = sb.np_json("/people?limit=100").await;
    assert_eq!(b["data"].as_array().map(Vec::len), Some(0));
    assert!(b["links"]["next"].is_null());
    for api in ["impartner", "erp", "northpass"] {
        sb.set_faults(api, json!({"empty_list": false})).await;
    }
    assert_eq!(sb.erp(&[("limit", "100")]).await.1["total"], 250);

    // Malformed: every item loses its id or carries a wrong-typed field.
    sb.set_faults("northpass", json!({"malformed_share": 1.0})).await;
    let b = sb.np_json("/people?limit=20").await;
    for p in b["data"].as_array().unwrap() {
        assert!(p.get("id").is_none() || p["attributes"]["updated_at"].is_number(), "{p}");
    }
    sb.set_faults("impartner", json!({"malformed_share": 1.0})).await;
    let (_, b) = sb.ip_get("/Account", &[("take", "20")]).await;
    for a in b["data"]["results"].as_array().unwrap() {
        assert!(a.get("id").is_none() || a["updated"].is_number(), "{a}");
    }
    sb.set_faults("erp", json!({"malformed_share": 0.3})).await;
    let (_, b) = sb.erp(&[("limit", "250")]).await;
    let bad =
        b["items"].as_array().unwrap().iter().filter(|i| i.get("id").is_none() || i["quantity"].is_string()).count();
    assert!((30..=120).contains(&bad), "about 30 % malformed: {bad}");
    for api in ["northpass", "impartner", "erp"] {
        sb.set_faults(api, json!({"malformed_share": 0.0})).await;
    }
    let b = sb.np_json("/people?limit=20").await;
    assert!(b["data"].as_array().unwrap().iter().all(|p| p["id"].is_string()));
    // Reset puts the start-up faults back.
    sb.set_faults("northpass", json!({"latency_ms": 5})).await;
    sb.control_post("/reset", json!({})).await;
    assert_eq!(sb.control_get("/faults/northpass").await["latency_ms"], 0);
}

#[tokio::test]
async fn exact_malformed_ids_on_every_api() {
    let erp_faults = FaultSettings { malformed_ids: vec![2], ..FaultSettings::default() };
    let sb = start(SandboxConfig { erp_faults, ..SandboxConfig::default().unlimited() }).await;
    assert_eq!(sb.control_get("/faults/erp").await["malformed_ids"], json!([2]), "start-up list");
    // ERP: exactly the listed ids, in the list and from the single-item GET alike.
    let f = sb.set_faults("erp", json!({"malformed_ids": [4, 7]})).await;
    assert_eq!((f["malformed_ids"].clone(), f["malformed_share"].as_f64()), (json!([4, 7]), Some(0.0)));
    let f = sb.set_faults("erp", json!({"latency_ms": 0})).await;
    assert_eq!(f["malformed_ids"], json!([4, 7]), "a partial update keeps the list");
    let (_, b) = sb.erp(&[("limit", "10")]).await;
    let items = b["items"].as_array().unwrap();
    assert!(items[3].get("id").is_none() && items[3]["sku"] == "SKU-010003", "even id loses its id: {}", items[3]);
    assert_eq!((items[6]["id"].as_i64(), items[6]["quantity"].as_str()), (Some(7), Some("many")));
    for (i, it) in items.iter().enumerate().filter(|(i, _)| ![3, 6].contains(i)) {
        assert!(it["id"].as_i64() == Some(i as i64 + 1) && it["quantity"].is_i64(), "{it}");
    }
    assert_eq!(sb.erp_item(4).await, (StatusCode::OK, items[3].clone()));
    assert_eq!(sb.erp_item(7).await, (StatusCode::OK, items[6].clone()));
    assert_eq!(sb.erp_item(5).await.1, items[4]);
    // The list adds to the share.
    sb.set_faults("erp", json!({"malformed_share": 0.3})).await;
    let (_, b) = sb.erp(&[("limit", "10")]).await;
    assert_eq!(b["items"][6]["quantity"], "many");

    // Impartner: record ids.
    let query = [("take", "4"), ("orderby", "Id")];
    let (_, before) = sb.ip_get("/Account", &query).await;
    let id = before["data"]["results"][1]["id"].as_u64().unwrap();
    sb.set_faults("impartner", json!({"malformed_ids": [id]})).await;
    let (_, after) = sb.ip_get("/Account", &query).await;
    for (i, (a, b)) in before["data"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["data"]["results"].as_array().unwrap())
        .enumerate()
    {
        if i == 1 {
            assert!(b.get("id").is_none() || b["updated"].is_number(), "{b}");
        } else {
            assert_eq!(a, b);
        }
    }

    // Moodle: user ids.
    let (course, before) = sb.moodle_first_course().await;
    let uid = before[0]["id"].as_u64().unwrap();
    sb.set_faults("moodle", json!({"malformed_ids": [uid]})).await;
    let after = sb.moodle("core_enrol_get_enrolled_users", &[("courseid", &course)]).await;
    assert!(after[0].get("id").is_none() || after[0]["lastaccess"] == "yesterday", "{}", after[0]);
    assert_eq!(before.as_array().unwrap()[1..], after.as_array().unwrap()[1..]);

    // Northpass: the internal record keys, numbered in creation order (the first two people are 1 and 2).
    let before = sb.np_json("/people?limit=3").await;
    sb.set_faults("northpass", json!({"malformed_ids": [1, 2]})).await;
    let after = sb.np_json("/people?limit=3").await;
    assert_eq!(after["data"][0]["attributes"]["updated_at"], 12345, "odd key: wrong-typed attribute");
    assert!(after["data"][1].get("id").is_none(), "even key: no id");
    assert_eq!(after["data"][2], before["data"][2]);

    // `[]` clears the list; reset restores the start-up one.
    sb.set_faults("erp", json!({"malformed_ids": [], "malformed_share": 0.0})).await;
    assert!(sb.erp_item(7).await.1["quantity"].is_i64());
    sb.control_post("/reset", json!({})).await;
    assert_eq!(sb.control_get("/faults/erp").await["malformed_ids"], json!([2]));
    assert!(sb.erp_item(2).await.1.get("id").is_none());
    assert_eq!(sb.control_get("/faults/northpass").await["malformed_ids"], json!([]));
}

#[tokio::test]
async fn seed_scale_generates_the_documented_sizes_quickly() {
    let t = Instant::now();
    let sb = start(SandboxConfig { scale: Scale::Seed, ..SandboxConfig::default().unlimited() }).await;
    let took = t.elapsed();
    let c = sb.control_get("/info").await["counts"].clone();
    assert_eq!(c["northpass"]["people"], 22_000);
    assert_eq!(c["northpass"]["groups"], 1_600);
    assert_eq!(c["northpass"]["courses"], 452);
    assert_eq!(c["northpass"]["enrollments"], 28_000);
    assert_eq!(c["impartner"]["Account"], 1_500);
    assert_eq!(c["impartner"]["User"], 40_000);
    assert!(took < Duration::from_secs(20), "debug-build generation took {took:?}");
    let (_, b) = sb.ip_get("/User", &[("take", "1")]).await;
    assert_eq!(b["data"]["count"], 40_000);
}
