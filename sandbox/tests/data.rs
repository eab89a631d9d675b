//! The generated data is realistic and linked the way real tenants are: shared (sometimes re-cased)
//! emails between contacts and LMS people, partner names in LMS groups with their variations.

mod common;

use std::collections::{HashMap, HashSet};

use common::start_small;
use serde_json::Value;

#[tokio::test]
async fn lms_people_and_groups_link_to_partners_with_real_world_variations() {
    let sb = start_small().await;
    let people = sb.np_all("/people?limit=100").await;
    let groups = sb.np_all("/groups?limit=100").await;
    let (_, users) = sb.ip_get("/User", &[("take", "1000"), ("fields", "Email,AccountId")]).await;
    let (_, accounts) = sb.ip_get("/Account", &[("take", "1000"), ("fields", "Name")]).await;
    let contacts: HashSet<String> =
        users["data"]["results"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_string()).collect();
    let contacts_lower: HashSet<String> = contacts.iter().map(|e| e.to_lowercase()).collect();
    let emails: Vec<&str> = people.iter().map(|p| p["attributes"]["email"].as_str().unwrap()).collect();
    let exact = emails.iter().filter(|e| contacts.contains(**e)).count();
    let case_only =
        emails.iter().filter(|e| !contacts.contains(**e) && contacts_lower.contains(&e.to_lowercase())).count();
    let unmatched = emails.len() - exact - case_only;
    assert!(exact > emails.len() / 3, "most LMS people are partner contacts: {exact}");
    assert!(case_only > 0, "some emails differ only in case");
    assert!(unmatched > 0, "some LMS people are not contacts");
    assert!(emails.iter().any(|e| e.ends_with("@nintex.com")), "internal-domain LMS users");

    let partner_names: Vec<String> = accounts["data"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    let exact_names: HashSet<&str> = partner_names.iter().map(String::as_str).collect();
    let lower: HashMap<String, &str> = partner_names.iter().map(|n| (n.to_lowercase(), n.as_str())).collect();
    let names: Vec<&str> = groups.iter().map(|g| g["attributes"]["name"].as_str().unwrap()).collect();
    let norm = |s: &str| {
        s.to_lowercase()
            .replace([',', '.', '-'], "")
            .trim_end_matches(" inc")
            .trim_end_matches(" ltd")
            .trim_end_matches(" llc")
            .to_string()
    };
    let norm_names: HashSet<String> = partner_names.iter().map(|n| norm(n)).collect();
    let kinds = names.iter().fold(HashMap::<&str, usize>::new(), |mut m, n| {
        let bare = n.strip_prefix("ptr_").unwrap_or(n);
        let kind = if exact_names.contains(n) {
            "exact"
        } else if n.starts_with("ptr_") && exact_names.contains(bare) {
            "ptr_prefix"
        } else if lower.contains_key(&bare.to_lowercase()) {
            "case"
        } else if norm_names.contains(&norm(bare)) {
            "punctuation_or_suffix"
        } else {
            "unmatched"
        };
        *m.entry(kind).or_default() += 1;
        m
    });
    for kind in ["exact", "ptr_prefix", "unmatched"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) > 0, "groups of kind {kind}: {kinds:?}");
    }
    assert!(
        kinds.get("case").copied().unwrap_or(0) + kinds.get("punctuation_or_suffix").copied().unwrap_or(0) > 0,
        "{kinds:?}"
    );
    assert!(names.contains(&"All Partners"));
    let suffixes =
        partner_names.iter().filter(|n| n.ends_with("Inc.") || n.ends_with("Ltd") || n.ends_with("LLC")).count();
    assert!(suffixes > 0, "partners carry company suffixes");
}

#[tokio::test]
async fn every_list_is_deterministic_within_one_instance() {
    let sb = start_small().await;
    let a: Vec<Value> = sb.np_all("/courses?limit=100").await;
    let b: Vec<Value> = sb.np_all("/courses?limit=100").await;
    assert_eq!(a, b);
}
