//! Northpass v2: auth, paging to the end, filters, sort, quirks, writes, error envelopes, rate limit.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{start, start_small};
use reqwest::StatusCode;
use serde_json::{Value, json};
use syncfleet_sandbox::SandboxConfig;

#[tokio::test]
async fn rejects_missing_or_wrong_key_with_json_api_error() {
    let sb = start_small().await;
    let r = sb.http.get(format!("{}/people?limit=100", sb.h.northpass_url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["status"], "401");
    let r = sb.http.get(format!("{}/people", sb.h.northpass_url())).header("X-Api-Key", "wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let counters = sb.control_get("/counters").await;
    assert_eq!(counters["northpass"]["endpoints"]["GET /northpass/v2/people"]["unauthorized"], 2);
}

#[tokio::test]
async fn pages_every_list_to_the_end_with_generated_counts() {
    let sb = start_small().await;
    let people = sb.np_all("/people?limit=100").await;
    assert_eq!(people.len() as u64, sb.count("northpass", "people").await);
    let ids: HashSet<&str> = people.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), people.len(), "ids are unique");
    assert_eq!(people[0]["type"], "people");
    for key in [
        "email",
        "first_name",
        "last_name",
        "full_name",
        "created_at",
        "updated_at",
        "activated_at",
        "deactivated_at",
        "last_active_at",
    ] {
        assert!(people[0]["attributes"].get(key).is_some(), "person has {key}");
    }
    let groups = sb.np_all("/groups?limit=7").await;
    assert_eq!(groups.len() as u64, sb.count("northpass", "groups").await);
    let courses = sb.np_all("/courses?limit=100").await;
    assert_eq!(courses.len() as u64, sb.count("northpass", "courses").await);
    let props = sb.np_all("/properties/courses?limit=100").await;
    assert_eq!(props.len(), courses.len());
    // Sum of course enrollments equals the enrollment count.
    let mut enrollments = 0;
    for c in &courses {
        enrollments +=
            sb.np_all(&format!("/courses/{}/enrollments?limit=100", c["id"].as_str().unwrap())).await.len() as u64;
    }
    assert_eq!(enrollments, sb.count("northpass", "enrollments").await);
    // Memberships across groups.
    let mut members = 0;
    for g in &groups {
        members +=
            sb.np_all(&format!("/groups/{}/memberships?limit=100", g["id"].as_str().unwrap())).await.len() as u64;
    }
    assert_eq!(members, sb.count("northpass", "memberships").await);
}

#[tokio::test]
async fn links_are_absolute_keep_limit_and_next_is_omitted_at_the_end() {
    let sb = start_small().await;
    let total = sb.count("northpass", "people").await;
    let body = sb.np_json("/people?limit=25&page=2").await;
    let next = body["links"]["next"].as_str().unwrap();
    assert!(next.starts_with("http://127.0.0.1:"), "absolute: {next}");
    assert!(next.contains("limit=25") && next.contains("page=3"), "{next}");
    assert!(body["links"]["prev"].as_str().unwrap().contains("/northpass/v2/people"));
    let last_page = total.div_ceil(25);
    let body = sb.np_json(&format!("/people?limit=25&page={last_page}")).await;
    assert!(body["links"].get("next").is_none());
    let past = sb.np_json(&format!("/people?limit=25&page={}", last_page + 1)).await;
    assert_eq!(past["data"].as_array().unwrap().len(), 0);
    // Default page size 10, limit clamped to 100.
    assert_eq!(sb.np_json("/people").await["data"].as_array().unwrap().len(), 10);
    assert_eq!(sb.np_json("/people?limit=500").await["data"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn filters_and_sort() {
    let sb = start_small().await;
    let all = sb.np_all("/people?limit=100").await;
    let first = &all[3]["attributes"];
    let email = first["email"].as_str().unwrap();
    // eq is exact.
    let eq = sb.np_json(&format!("/people?filter[email][eq]={}", common::enc(email))).await;
    assert_eq!(eq["data"].as_array().unwrap().len(), 1);
    assert_eq!(eq["data"][0]["attributes"]["email"], email);
    // not_eq excludes exactly that one.
    let ne = sb.np_all(&format!("/people?limit=100&filter[email][not_eq]={}", common::enc(email))).await;
    assert_eq!(ne.len(), all.len() - 1);
    // cont (and the bare form) is a case-insensitive substring.
    let domain = email.split('@').nth(1).unwrap();
    let cont =
        sb.np_all(&format!("/people?limit=100&filter[email][cont]=@{}", common::enc(&domain.to_uppercase()))).await;
    let expected = all
        .iter()
        .filter(|p| {
            p["attributes"]["email"].as_str().unwrap().to_lowercase().contains(&format!("@{}", domain.to_lowercase()))
        })
        .count();
    assert_eq!(cont.len(), expected);
    assert!(expected >= 1);
    let bare = sb.np_all(&format!("/people?limit=100&filter[email]=@{}", common::enc(domain))).await;
    assert_eq!(bare.len(), expected);
    // gteq on updated_at.
    let mut times: Vec<&str> = all.iter().map(|p| p["attributes"]["updated_at"].as_str().unwrap()).collect();
    times.sort();
    let cut = times[times.len() / 2];
    let newer = sb.np_all(&format!("/people?limit=100&filter[updated_at][gteq]={}", common::enc(cut))).await;
    assert_eq!(newer.len(), times.iter().filter(|t| **t >= cut).count());
    // Groups by name; courses by published.
    let groups = sb.np_all("/groups?limit=100").await;
    let name = groups[5]["attributes"]["name"].as_str().unwrap();
    let by_name = sb.np_json(&format!("/groups?filter[name][eq]={}", common::enc(name))).await;
    assert_eq!(by_name["data"][0]["attributes"]["name"], name);
    let courses = sb.np_all("/courses?limit=100").await;
    let published = sb.np_all("/courses?limit=100&filter[published][eq]=true").await;
    assert_eq!(published.len(), courses.iter().filter(|c| c["attributes"]["status"] == "published").count());
    assert_eq!(published.len() as u64, sb.count("northpass", "courses_published").await);
    // Unknown filter attributes are silently ignored, as upstream.
    assert_eq!(sb.np_all("/people?limit=100&filter[nope][eq]=x").await.len(), all.len());
    // sort=-name and sort=name.
    let desc = sb.np_all("/groups?limit=100&sort=-name").await;
    let names: Vec<String> = desc.iter().map(|g| g["attributes"]["name"].as_str().unwrap().to_lowercase()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(names, sorted);
}

#[tokio::test]
async fn properties_transcripts_and_their_quirks() {
    let sb = start_small().await;
    let props = sb.np_all("/properties/courses?limit=100").await;
    let with_npcu =
        props.iter().filter(|p| p["attributes"]["properties"]["npcu"].as_str().is_some_and(|n| n != "0")).count();
    assert_eq!(with_npcu as u64, sb.count("northpass", "courses_with_npcu").await);
    assert!(with_npcu > 0);
    let (mut forbidden, mut fine) = (0, 0);
    for p in &props {
        let r = sb.np(&format!("/properties/courses/{}", p["id"].as_str().unwrap())).await;
        match r.status() {
            StatusCode::FORBIDDEN => {
                forbidden += 1;
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["errors"][0]["status"], "403");
            }
            StatusCode::OK => fine += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(fine > 0);
    assert_eq!(forbidden, sb.count("northpass", "courses_properties_forbidden").await);
    assert!(forbidden >= 1);

    let people = sb.np_all("/people?limit=100").await;
    let (mut with, mut without, mut items) = (0u64, 0u64, 0u64);
    for p in &people {
        let id = p["id"].as_str().unwrap();
        let r = sb.np(&format!("/transcripts/{id}?limit=100")).await;
        if r.status() == StatusCode::NOT_FOUND {
            without += 1;
        } else {
            assert_eq!(r.status(), StatusCode::OK);
            with += 1;
            let got = sb.np_all(&format!("/transcripts/{id}?limit=2")).await;
            for t in &got {
                assert_eq!(t["type"], "transcript_items");
                let s = t["attributes"]["progress_status"].as_str().unwrap();
                assert!(["enrolled", "in_progress", "completed"].contains(&s));
                assert_eq!(t["attributes"]["completed_at"].is_null(), s != "completed");
            }
            items += got.len() as u64;
        }
    }
    assert_eq!(without, sb.count("northpass", "people_without_transcript").await);
    assert!(without > 0 && with > 0);
    assert_eq!(items, sb.count("northpass", "enrollments").await);
    let r = sb.np("/transcripts/00000000-0000-4000-8000-000000000000").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn groups_memberships_and_person_writes() {
    let sb = start_small().await;
    let url = sb.h.northpass_url();
    let key = sb.h.config.northpass_key.clone();
    let post =
        |path: &str, body: Value| sb.http.post(format!("{url}{path}")).header("X-Api-Key", &key).json(&body).send();
    // Creating a group with an existing name returns the existing group.
    let groups = sb.np_all("/groups?limit=100").await;
    let existing = &groups[2];
    let r =
        post("/groups", json!({"data": {"type": "groups", "attributes": {"name": existing["attributes"]["name"]}}}))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["id"], existing["id"]);
    let r = post("/groups", json!({"data": {"type": "groups", "attributes": {"name": "ptr_Brand New Partner"}}}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let new_group: Value = r.json().await.unwrap();
    let gid = new_group["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(sb.np_all("/groups?limit=100").await.len(), groups.len() + 1);

    // Add two people; re-adding is a no-op; an unknown id is 422.
    let people = sb.np_all("/people?limit=100").await;
    let (a, b) = (people[0]["id"].clone(), people[1]["id"].clone());
    let rel = format!("/groups/{gid}/relationships/people");
    let r = post(&rel, json!({"data": [{"type": "people", "id": a}, {"type": "people", "id": b}]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = post(&rel, json!({"data": [{"type": "people", "id": a}]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let members = sb.np_all(&format!("/groups/{gid}/memberships")).await;
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["type"], "memberships");
    assert!(members.iter().any(|m| m["relationships"]["person"]["data"]["id"] == a));
    assert_eq!(sb.np_all(&format!("/groups/{gid}/people")).await.len(), 2);
    let r = post(&rel, json!({"data": [{"type": "people", "id": "nope"}]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["status"], "422");
    // Remove one.
    let r = sb
        .http
        .delete(format!("{url}{rel}"))
        .header("X-Api-Key", &key)
        .json(&json!({"data": [{"type": "people", "id": b}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.np_all(&format!("/groups/{gid}/memberships")).await.len(), 1);

    // Deactivate a person.
    let pid = people[5]["id"].as_str().unwrap();
    let r = sb
        .http
        .patch(format!("{url}/people/{pid}"))
        .header("X-Api-Key", &key)
        .json(&json!({"data": {"type": "people", "id": pid, "attributes": {"deactivated": true}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["data"]["attributes"]["deactivated_at"].is_string());
    // Creating a person with a taken email (other case) is 422 mentioning email and taken.
    let email = people[7]["attributes"]["email"].as_str().unwrap().to_uppercase();
    let r = post(
        "/people",
        json!({"data": {"type": "people", "attributes": {"email": email, "first_name": "A", "last_name": "B"}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = r.text().await.unwrap();
    assert!(text.contains("Email") && text.contains("taken"));
    // Delete the group.
    let r = sb.http.delete(format!("{url}/groups/{gid}")).header("X-Api-Key", &key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.np(&format!("/groups/{gid}")).await.status(), StatusCode::NOT_FOUND);

    let w = sb.control_get("/writes").await;
    let np = &w["northpass"];
    assert_eq!(np["membership_adds"].as_array().unwrap().len(), 2, "the re-add is not a write");
    assert_eq!(np["membership_removes"].as_array().unwrap().len(), 1);
    assert_eq!(np["group_creations"].as_array().unwrap().len(), 2);
    assert_eq!(np["group_creations"][0]["existing"], true);
    assert_eq!(np["group_deletions"].as_array().unwrap().len(), 1);
    assert_eq!(np["person_patches"][0]["person_id"], pid);
}

#[tokio::test]
async fn unknown_ids_get_json_api_404() {
    let sb = start_small().await;
    for path in [
        "/people/nope",
        "/groups/nope",
        "/courses/nope",
        "/courses/nope/enrollments",
        "/properties/courses/nope",
        "/nothing/here",
    ] {
        let r = sb.np(path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["status"], "404", "{path}");
    }
}

#[tokio::test]
async fn burst_beyond_ten_per_second_gets_429_with_retry_after() {
    let sb = start(SandboxConfig::default()).await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let r = sb.np("/people?limit=1").await;
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["errors"][0]["status"], "429");
        }
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(throttled > 0, "some throttled");
    assert!((10..=20).contains(&ok), "at most 10 per window, ok = {ok}");
    let counters = sb.control_get("/counters").await;
    assert_eq!(counters["northpass"]["throttled"], throttled as u64);
    assert_eq!(counters["northpass"]["endpoints"]["GET /northpass/v2/people"]["requests"], 25);
    // The budget comes back after the window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sb.np("/people?limit=1").await.status(), StatusCode::OK);
    // Turned off at run time.
    sb.set_faults("northpass", json!({"rate_per_sec": null})).await;
    for _ in 0..30 {
        assert_eq!(sb.np("/people?limit=1").await.status(), StatusCode::OK);
    }
}
