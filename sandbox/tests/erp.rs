//! ERP inventory: bearer auth, offset/limit paging with a total, updated_since, errors, the item-count
//! override, bulk and single PATCH with their writes log.

mod common;

use std::time::{Duration, Instant};

use common::{Sb, start, start_small};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use syncfleet_sandbox::SandboxConfig;

#[tokio::test]
async fn pages_items_with_total_and_rejects_bad_token() {
    let sb = start_small().await;
    let r = sb.http.get(format!("{}/items", sb.h.erp_url())).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let expected = sb.count("erp", "items").await;
    let mut all = Vec::new();
    loop {
        let off = all.len().to_string();
        let (s, body) = sb.erp(&[("offset", &off), ("limit", "60")]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["total"], expected);
        let items = body["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        all.extend(items);
    }
    assert_eq!(all.len() as u64, expected);
    for key in ["id", "sku", "name", "quantity", "updated_at"] {
        assert!(all[0].get(key).is_some(), "{key}");
    }
    let mut times: Vec<&str> = all.iter().map(|i| i["updated_at"].as_str().unwrap()).collect();
    times.sort();
    let cut = times[times.len() / 2];
    let (_, body) = sb.erp(&[("updated_since", cut), ("limit", "1000")]).await;
    assert_eq!(body["total"].as_u64().unwrap(), times.iter().filter(|t| **t >= cut).count() as u64);
    let (s, body) = sb.erp(&[("limit", "0")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
}

#[tokio::test]
async fn erp_items_override_sets_the_count_keeps_the_prefix_and_survives_reset() {
    let sb = start(SandboxConfig { erp_items: Some(1234), ..SandboxConfig::default().unlimited() }).await;
    assert_eq!(sb.count("erp", "items").await, 1234);
    assert_eq!(sb.h.info()["counts"]["erp"]["items"], 1234);
    assert_eq!(sb.count("northpass", "people").await, 300, "other APIs keep the scale's sizes");
    let (_, last) = sb.erp(&[("offset", "1230"), ("limit", "10")]).await;
    assert_eq!(last["total"], 1234);
    let ids: Vec<i64> = last["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1231, 1232, 1233, 1234]);
    // Deterministic: the same seed serves the same items, and the scale's 250 are the prefix.
    let twin = start(SandboxConfig { erp_items: Some(1234), ..SandboxConfig::default().unlimited() }).await;
    let plain = start_small().await;
    let page = [("offset", "200"), ("limit", "100")];
    let (_, a) = sb.erp(&page).await;
    let (_, b) = twin.erp(&page).await;
    assert_eq!(a, b);
    let (_, p) = plain.erp(&[("offset", "200"), ("limit", "50")]).await;
    assert_eq!(a["items"].as_array().unwrap()[..50], p["items"].as_array().unwrap()[..]);
    // Reset regenerates the overridden count.
    sb.control_post("/mutate", json!({"api": "erp", "resource": "items", "delete": 4, "add": 1})).await;
    assert_eq!(sb.count("erp", "items").await, 1231);
    let reset = sb.control_post("/reset", json!({})).await;
    assert_eq!(reset["counts"]["erp"]["items"], 1234);
    let (_, again) = sb.erp(&page).await;
    assert_eq!(again, a);
}

#[tokio::test]
async fn a_million_items_generate_quickly_and_page_from_the_end() {
    let t = Instant::now();
    let sb = start(SandboxConfig { erp_items: Some(1_000_000), ..SandboxConfig::default().unlimited() }).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(20), "debug-build generation of 1M items took {took:?}");
    assert_eq!(sb.count("erp", "items").await, 1_000_000);
    let (s, body) = sb.erp(&[("offset", "999000"), ("limit", "1000")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["total"], 1_000_000);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    assert_eq!(items[999]["id"], 1_000_000);
    let (s, one) = sb.erp_item(1_000_000).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one, items[999]);
}

async fn patch(sb: &Sb, path: &str, body: Value) -> (StatusCode, Value) {
    Sb::send_json(sb.erp_req(Method::PATCH, path).json(&body)).await
}

#[tokio::test]
async fn bulk_and_single_patch_apply_per_item_and_record_writes() {
    let sb = start_small().await;
    let (_, before) = sb.erp_item(3).await;
    let (s, body) = patch(
        &sb,
        "/items",
        json!([
            {"id": 3, "quantity": 5, "warehouse": "MEL-2"},
            {"id": 9_999_999, "quantity": 1},
            {"id": 4, "quantity": "5"},
            {"id": 5, "name": "Renamed Bolt"},
            {"quantity": 1},
            {"id": 6, "sku": "X"},
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!({"results": [
            {"id": 3, "status": "ok"},
            {"id": 9_999_999, "status": "error", "message": "item 9999999 not found"},
            {"id": 4, "status": "error", "message": "quantity must be an integer"},
            {"id": 5, "status": "ok"},
            {"id": null, "status": "error", "message": "id is required"},
            {"id": 6, "status": "error", "message": "field 'sku' cannot be patched"},
        ]})
    );
    let (_, three) = sb.erp_item(3).await;
    assert_eq!((three["quantity"].as_i64(), three["warehouse"].as_str()), (Some(5), Some("MEL-2")));
    assert_eq!(three["name"], before["name"], "fields not sent are kept");
    let bumped = three["updated_at"].as_str().unwrap();
    assert!(bumped > before["updated_at"].as_str().unwrap(), "updated_at is bumped to now");
    assert!(bumped >= "2026-01-01", "wall clock, after all generated data");
    assert_eq!(sb.erp_item(5).await.1["name"], "Renamed Bolt");
    let (_, four) = sb.erp_item(4).await;
    assert!(four["updated_at"].as_str().unwrap() < "2026-01-01", "a failed entry changes nothing");
    // Incremental readers see exactly the patched items.
    let (_, since) = sb.erp(&[("updated_since", "2026-01-01T00:00:00Z")]).await;
    let ids: Vec<i64> = since["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [3, 5]);

    // Single PATCH answers the item; unknown ids are 404, wrong types 400, both in the ERP envelope.
    let (s, item) = patch(&sb, "/items/3", json!({"quantity": 7, "name": "Steel Bolt 9mm"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((item["id"].as_i64(), item["quantity"].as_i64()), (Some(3), Some(7)));
    assert_eq!(item, sb.erp_item(3).await.1);
    let (s, e) = patch(&sb, "/items/9999999", json!({"quantity": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e, json!({"error": "not_found", "message": "item 9999999 not found"}));
    let (s, e) = patch(&sb, "/items/3", json!({"warehouse": 12})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"], "bad_request");

    // Writes: one count per applied patch, fields merged per id; failed entries are not writes.
    let w = sb.control_get("/writes").await;
    assert_eq!(w["erp"]["patches"], 3);
    assert_eq!(
        w["erp"]["patched_fields"],
        json!({
            "3": {"quantity": 7, "warehouse": "MEL-2", "name": "Steel Bolt 9mm"},
            "5": {"name": "Renamed Bolt"},
        })
    );
    sb.control_post("/writes/reset", json!({})).await;
    assert_eq!(sb.control_get("/writes").await["erp"], json!({"patches": 0, "patched_fields": {}}));

    // The body must be an array of 1..=500 entries.
    for bad in [json!([]), json!({"id": 1}), Value::Array(vec![json!({"id": 1, "quantity": 1}); 501])] {
        let (s, e) = patch(&sb, "/items", bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(e["error"], "bad_request", "{e}");
        assert!(e["message"].is_string());
    }
    let (s, body) = patch(&sb, "/items", Value::Array(vec![json!({"id": 1, "quantity": 1}); 500])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["results"].as_array().unwrap().len(), 500);
}

#[tokio::test]
async fn patches_go_through_the_guard() {
    let sb = start_small().await;
    let r = sb.http.patch(format!("{}/items", sb.h.erp_url())).bearer_auth("wrong").json(&json!([{"id": 1}])).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    sb.set_faults("erp", json!({"error_5xx_share": 1.0})).await;
    let (s, e) = patch(&sb, "/items/1", json!({"quantity": 1})).await;
    assert!(s.is_server_error());
    assert_eq!(e["error"], "server_error");
    // One request per second: six in a row cross at most one window boundary.
    sb.set_faults("erp", json!({"error_5xx_share": 0.0, "rate_per_sec": 1})).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(patch(&sb, "/items", json!([{"id": 1, "quantity": 2}])).await.0);
    }
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
    let c = sb.control_get("/counters").await;
    let bulk = &c["erp"]["endpoints"]["PATCH /erp/api/items"];
    let throttled = bulk["throttled"].as_u64().unwrap();
    assert_eq!(bulk["requests"], 7);
    assert_eq!(bulk["unauthorized"], 1);
    assert!(throttled >= 4, "{bulk}");
    assert_eq!(c["erp"]["endpoints"]["PATCH /erp/api/items/{id}"]["errors_5xx"], 1);
    assert_eq!(sb.control_get("/writes").await["erp"]["patches"], 6 - throttled, "only served patches are writes");
}
