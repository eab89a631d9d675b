//! Impartner objects v1: auth, envelope and casing, paging to the end, filters, orderby, fields,
//! single/bulk PATCH, create, delete and `_deleted`, error envelopes.

mod common;

use common::start_small;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn fetch_all(sb: &common::Sb, object: &str, filter: Option<&str>, take: usize) -> (u64, Vec<Value>) {
    let mut out = Vec::new();
    let mut count;
    loop {
        let skip = out.len().to_string();
        let take_s = take.to_string();
        let mut q = vec![("skip", skip.as_str()), ("take", take_s.as_str())];
        if let Some(f) = filter {
            q.push(("filter", f));
        }
        let (s, body) = sb.ip_get(&format!("/{object}"), &q).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true);
        assert_eq!(body["data"]["entity"], object);
        count = body["data"]["count"].as_u64().unwrap();
        let page = body["data"]["results"].as_array().unwrap().clone();
        let n = page.len();
        out.extend(page);
        if n < take {
            break;
        }
    }
    (count, out)
}

#[tokio::test]
async fn rejects_bad_credentials_with_error_envelope() {
    let sb = start_small().await;
    let url = format!("{}/Account", sb.h.impartner_url());
    for req in [
        sb.http.get(&url),
        sb.http.get(&url).header("Authorization", "prm-key wrong"),
        sb.http
            .get(&url)
            .header("Authorization", format!("prm-key {}", sb.h.config.impartner_key))
            .header("X-PRM-TenantId", "999"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["success"], false);
        assert!(body["errors"][0]["code"].is_string() && body["message"].is_string());
    }
    // The tenant header is optional.
    let r = sb
        .http
        .get(&url)
        .header("Authorization", format!("prm-key {}", sb.h.config.impartner_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn pages_every_object_with_total_count_and_camel_case_keys() {
    let sb = start_small().await;
    for (object, what) in [("Account", "Account"), ("User", "User"), ("Lead", "Lead")] {
        let expected = sb.count("impartner", what).await;
        let (count, all) = fetch_all(&sb, object, None, 37).await;
        assert_eq!(count, expected, "{object} count is the total");
        assert_eq!(all.len() as u64, expected, "{object} paged to the end");
    }
    let (_, accounts) = fetch_all(&sb, "Account", None, 100).await;
    let a = &accounts[0];
    for key in [
        "id",
        "name",
        "partner_Tier__cf",
        "account_Status__cf",
        "website",
        "updated",
        "created",
        "total_NPCU__cf",
        "lmS_Account_ID__cf",
        "lmS_Group_Name__cf",
        "memberCount",
        "crmId",
    ] {
        assert!(a.get(key).is_some(), "account has {key}: {a}");
    }
    assert!(a.get("Name").is_none(), "no PascalCase in responses");
    assert!(a["updated"].as_str().unwrap().ends_with("-07:00"));
    // Data quirks: Pending, blank and null tiers, Inactive status, test partners.
    let tiers: Vec<&Value> = accounts.iter().map(|a| &a["partner_Tier__cf"]).collect();
    assert!(tiers.iter().any(|t| *t == "Pending"));
    assert!(tiers.iter().any(|t| t.is_null()));
    assert!(accounts.iter().any(|a| a["account_Status__cf"] == "Inactive"));
    let (_, users) = fetch_all(&sb, "User", None, 100).await;
    let u = &users[0];
    for key in [
        "id",
        "email",
        "firstName",
        "lastName",
        "fullName",
        "accountId",
        "accountName",
        "isActive",
        "contact_Status__cf",
        "updated",
    ] {
        assert!(u.get(key).is_some(), "user has {key}");
    }
    assert!(users.iter().any(|u| u["email"].as_str().unwrap().ends_with("@nintex.com")), "internal-domain contacts");
    assert!(users.iter().any(|u| u["email"].as_str().unwrap().starts_with("test.")), "test accounts");
    assert!(users.iter().any(|u| u["isActive"] == false));
}

#[tokio::test]
async fn filter_fields_and_orderby() {
    let sb = start_small().await;
    let (_, users) = fetch_all(&sb, "User", None, 1000).await;
    let email = users[10]["email"].as_str().unwrap();
    // = is case-insensitive on text; field names are case-insensitive.
    let (s, body) = sb
        .ip_get(
            "/User",
            &[("filter", &format!("email = '{}'", email.to_uppercase())), ("fields", "Id,Email,AccountId")],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"]["count"], 1);
    let r = &body["data"]["results"][0];
    assert_eq!(r["email"], email);
    assert!(r.get("firstName").is_none(), "only the requested fields");
    // != , in (), and/or, boolean, null.
    let account = users[10]["accountId"].as_i64().unwrap();
    let same_account = users.iter().filter(|u| u["accountId"] == account).count() as u64;
    let (_, b) = sb.ip_get("/User", &[("filter", &format!("AccountId = {account}")), ("take", "1")]).await;
    assert_eq!(b["data"]["count"], same_account);
    let (_, b) = sb.ip_get("/User", &[("filter", &format!("AccountId != {account}"))]).await;
    assert_eq!(b["data"]["count"].as_u64().unwrap(), users.len() as u64 - same_account);
    let ids = format!("Id in ({}, {})", users[0]["id"], users[1]["id"]);
    let (_, b) = sb.ip_get("/User", &[("filter", &ids)]).await;
    assert_eq!(b["data"]["count"], 2);
    let active = users.iter().filter(|u| u["isActive"] == true).count() as u64;
    let (_, b) = sb.ip_get("/User", &[("filter", "IsActive = true")]).await;
    assert_eq!(b["data"]["count"], active);
    let (_, b) = sb.ip_get("/User", &[("filter", &format!("(IsActive = false) or ({ids})"))]).await;
    let expected = users
        .iter()
        .filter(|u| u["isActive"] == false || u["id"] == users[0]["id"] || u["id"] == users[1]["id"])
        .count() as u64;
    assert_eq!(b["data"]["count"], expected);
    let titled = users.iter().filter(|u| !u["title"].is_null()).count() as u64;
    let (_, b) = sb.ip_get("/User", &[("filter", "Title != null")]).await;
    assert_eq!(b["data"]["count"], titled);
    // Updated > '...' (ISO without zone).
    let (_, accounts) = fetch_all(&sb, "Account", None, 1000).await;
    let (_, b) = sb.ip_get("/Account", &[("filter", "Updated > '2025-06-01T00:00:00.000'")]).await;
    let newer = accounts
        .iter()
        .filter(|a| {
            let t = chrono::DateTime::parse_from_rfc3339(a["updated"].as_str().unwrap()).unwrap();
            t > chrono::DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z").unwrap()
        })
        .count() as u64;
    assert_eq!(b["data"]["count"], newer);
    // orderby Name desc.
    let (_, b) = sb.ip_get("/Account", &[("orderby", "Name desc"), ("take", "1000"), ("fields", "Name")]).await;
    let names: Vec<String> =
        b["data"]["results"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_lowercase()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(names, sorted);
    // Bad filters are 400 with the envelope: OData syntax and unknown fields.
    for bad in ["CrmId eq 'x'", "Nope = 1", "Name = 'unterminated"] {
        let (s, b) = sb.ip_get("/Account", &[("filter", bad)]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(b["success"], false);
        assert!(b["errors"][0]["code"].is_string());
    }
    let (s, _) = sb.ip_get("/Account", &[("fields", "Nope")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn single_and_bulk_patch_record_writes() {
    let sb = start_small().await;
    let (_, b) = sb.ip_get("/Account", &[("take", "3")]).await;
    let ids: Vec<i64> = b["data"]["results"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
    // Single PATCH returns the updated record, camelCase.
    let r = sb.ip(Method::PATCH, &format!("/Account/{}", ids[0]))
        .json(&json!({"Nintex_CE_Certifications__cf": 5, "Total_NPCU__cf": 12, "LMS_Group_Name__cf": "ptr_Acme Corporation"}))
        .send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["total_NPCU__cf"], 12.0);
    assert_eq!(body["data"]["lmS_Group_Name__cf"], "ptr_Acme Corporation");
    let before = b["data"]["results"][0]["updated"].as_str().unwrap().to_string();
    assert_ne!(body["data"]["updated"].as_str().unwrap(), before, "Updated is bumped");
    // Read-only field on single PATCH is 400.
    let r = sb
        .ip(Method::PATCH, &format!("/Account/{}", ids[0]))
        .json(&json!({"Account_Status__cf": "Active"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Unknown id is 404.
    let r = sb.ip(Method::PATCH, "/Account/1").json(&json!({"Total_NPCU__cf": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Bulk PATCH: per-item success at top-level results.
    let r = sb
        .ip(Method::PATCH, "/Account")
        .json(&json!([
            {"Id": ids[1], "Name": "Renamed Partner", "Total_NPCU__cf": 3, "LMS_Account_ID__cf": "42"},
            {"Id": ids[2], "LMS_User_Count__cf": 9},
            {"Id": 1, "Total_NPCU__cf": 1},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], false, "false when any item fails");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[0]["data"]["id"], ids[1]);
    assert_eq!(results[1]["success"], false);
    assert_eq!(results[1]["errors"][0]["code"], "INVALID_FIELD");
    assert_eq!(results[2]["errors"][0]["code"], "NOT_FOUND");
    let (_, one) = sb.ip_get(&format!("/Account/{}", ids[1]), &[("fields", "Name,LMS_Account_ID__cf")]).await;
    assert_eq!(one["data"]["name"], "Renamed Partner");
    assert_eq!(one["data"]["lmS_Account_ID__cf"], "42");
    // Writes: merged fields per id.
    let w = sb.control_get("/writes").await;
    let pf = &w["impartner"]["patched_fields"]["Account"];
    assert_eq!(pf[ids[0].to_string()]["Total_NPCU__cf"], 12);
    assert_eq!(pf[ids[1].to_string()]["LMS_Account_ID__cf"], "42");
    assert!(pf.get(ids[2].to_string()).is_none(), "failed items are not writes");
    assert_eq!(w["impartner"]["patches"].as_array().unwrap().len(), 2);
    // Bulk user deactivation, Northpass_PP style.
    let (_, u) = sb.ip_get("/User", &[("take", "1"), ("filter", "IsActive = true")]).await;
    let uid = u["data"]["results"][0]["id"].as_i64().unwrap();
    let r = sb
        .ip(Method::PATCH, "/User")
        .json(&json!([{"Id": uid, "IsActive": false, "Contact_Status__cf": "Inactive"}]))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], true);
    let (_, u) = sb.ip_get(&format!("/User/{uid}"), &[]).await;
    assert_eq!(u["data"]["isActive"], false);
}

#[tokio::test]
async fn create_delete_and_deleted_endpoint() {
    let sb = start_small().await;
    let (_, a) = sb.ip_get("/Account", &[("take", "1")]).await;
    let account = a["data"]["results"][0]["id"].as_i64().unwrap();
    let new_user = json!({"Email": "new.person@example.com", "UserName": "new.person@example.com", "FirstName": "New", "LastName": "Person", "AccountId": account, "IsActive": true, "Title": ""});
    let r = sb.ip(Method::PUT, "/User").json(&new_user).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let id = body["data"]["id"].as_i64().unwrap();
    let r = sb.ip(Method::PUT, "/User").json(&new_user).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NOT_UNIQUE");
    assert!(body["message"].as_str().unwrap().contains("not a unique value"));
    let (_, u) = sb.ip_get(&format!("/User/{id}"), &[]).await;
    assert_eq!(u["data"]["fullName"], "New Person");

    let r = sb.ip(Method::DELETE, &format!("/User/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, body) = sb.ip_get(&format!("/User/{id}"), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
    let (s, body) =
        sb.ip_get("/User/_deleted", &[("fromUtc", "2020-01-01T00:00:00"), ("toUtc", "2100-01-01T00:00:00")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"], json!([id]));
    let (_, body) =
        sb.ip_get("/User/_deleted", &[("fromUtc", "2000-01-01T00:00:00"), ("toUtc", "2001-01-01T00:00:00")]).await;
    assert_eq!(body["data"], json!([]));
    let (s, body) = sb.ip_get("/Nope", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false);
}
