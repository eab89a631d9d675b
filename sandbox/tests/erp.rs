//! ERP inventory: bearer auth, offset/limit paging with a total, updated_since, errors.

mod common;

use common::start_small;
use reqwest::StatusCode;
use serde_json::Value;

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
