//! The `http-json` pack's paging and auth styles, each against an API that really pages that way:
//! page + next link with a header key (Northpass people), offset + total with a custom header
//! (Impartner accounts), a query-parameter token with fixed parameters (Moodle courses), and an
//! opaque cursor token (a small server in this test; no sandbox API pages by token).

use std::sync::Arc;

use serde_json::{Value, json};
use syncfleet_shared::chain::Mode;
use syncfleet_tests::{Sandbox, TestEnv};

async fn full_sync(env: &TestEnv, integration: &str) -> syncfleet_store::views::StepView {
    let run = env.run_to_end("http_json_sync", integration, Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    run.steps[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_offset_and_query_styles_read_every_record() {
    let sandbox = Sandbox::start().await;
    let counts = sandbox.handle.info()["counts"].clone();
    let toml = format!(
        r#"
[integrations.np]
pack = "http-json"
base_url = "{np}"
auth = {{ style = "header", name = "X-Api-Key", secret_file = "np-key" }}
[integrations.np.entities.people]
path = "/people"
paging = {{ style = "page", limit = 40, next = "/links/next" }}
records = "/data"
id = "/id"
updated_at = "/attributes/updated_at"
table = "np_people"
create_table = true
[integrations.np.entities.people.columns]
email = {{ path = "/attributes/email", type = "text" }}
deactivated_at = {{ path = "/attributes/deactivated_at", type = "timestamptz" }}
unsubscribed = {{ path = "/attributes/unsubscribed", type = "boolean" }}

[integrations.prm]
pack = "http-json"
base_url = "{prm}"
auth = {{ style = "header", name = "Authorization", secret_file = "prm-authorization" }}
[integrations.prm.entities.accounts]
path = "/Account"
query = {{ fields = "Id,Name,Updated", orderby = "Id" }}
paging = {{ style = "offset", offset_param = "skip", limit_param = "take", limit = 25, total = "/data/count" }}
records = "/data/results"
id = "/id"
updated_at = "/updated"
table = "prm_accounts"
create_table = true
[integrations.prm.entities.accounts.columns]
name = {{ path = "/name", type = "text" }}

[integrations.lms]
pack = "http-json"
base_url = "{moodle}"
auth = {{ style = "query", param = "wstoken", secret_file = "moodle-token" }}
[integrations.lms.entities.courses]
path = ""
query = {{ wsfunction = "core_course_get_courses_by_field", moodlewsrestformat = "json" }}
paging = {{ style = "page", limit = 1000 }}
records = "/courses"
id = "/id"
table = "lms_courses"
create_table = true
[integrations.lms.entities.courses.columns]
shortname = {{ path = "/shortname", type = "text" }}
category = {{ path = "/categoryid", type = "integer" }}
"#,
        np = sandbox.handle.northpass_url(),
        prm = sandbox.handle.impartner_url(),
        moodle = sandbox.handle.moodle_url(),
    );
    let env = TestEnv::new(&toml).await;
    // Impartner's `Authorization: prm-key <key>` is one secret value, in a file of its own.
    let secrets_dir = env.config.secrets.dir.clone().expect("the harness sets a secrets directory");
    std::fs::write(secrets_dir.join("prm-authorization"), "prm-key prm-key\n").unwrap();
    let worker = env.spawn_worker("w").await;

    let people = counts["northpass"]["people"].as_i64().unwrap();
    let s = full_sync(&env, "np").await;
    assert_eq!((s.fetched, s.inserted, s.errors), (people, people, 0), "{s:#?}");
    assert_eq!(s.api_calls, (people + 39) / 40, "one call per page, following `links.next`");
    let with_email: i64 = env.value("SELECT count(*) FROM np_people WHERE email LIKE '%@%'").await;
    assert_eq!(with_email, people);

    let accounts = counts["impartner"]["Account"].as_i64().unwrap();
    let s = full_sync(&env, "prm").await;
    assert_eq!((s.fetched, s.inserted, s.errors), (accounts, accounts, 0), "{s:#?}");
    assert_eq!(s.guard.as_deref(), Some(&*format!("swept: 0 of {accounts} active rows deactivated")));
    let named: i64 = env.value("SELECT count(*) FROM prm_accounts WHERE name <> ''").await;
    assert_eq!(named, accounts);

    let courses = counts["moodle"]["courses"].as_i64().unwrap();
    let s = full_sync(&env, "lms").await;
    assert_eq!((s.fetched, s.inserted, s.api_calls), (courses, courses, 1), "{s:#?}");
    let categorised: i64 = env.value("SELECT count(*) FROM lms_courses WHERE category IS NOT NULL").await;
    assert_eq!(categorised, courses);
    worker.stop().await;
    env.finish().await;
}

/// Serves 95 records in pages of at most `limit`, linked by an opaque token.
async fn cursor_server() -> String {
    use axum::{Json, Router, extract::Query, routing::get};
    let records: Arc<Vec<Value>> =
        Arc::new((1..=95).map(|i| json!({ "key": format!("r{i:03}"), "value": i * 10 })).collect());
    let app = Router::new().route(
        "/things",
        get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let records = records.clone();
            async move {
                let start: usize =
                    q.get("after").and_then(|t| t.strip_prefix("tok-")).and_then(|n| n.parse().ok()).unwrap_or(0);
                let limit: usize = q.get("size").and_then(|n| n.parse().ok()).unwrap_or(10);
                let end = (start + limit).min(records.len());
                let next = (end < records.len()).then(|| format!("tok-{end}"));
                Json(json!({ "things": records[start..end], "meta": { "next": next } }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_style_follows_the_token_to_the_end() {
    let base = cursor_server().await;
    let toml = format!(
        r#"
[integrations.things]
pack = "http-json"
base_url = "{base}"
[integrations.things.entities.things]
path = "/things"
paging = {{ style = "cursor", cursor_param = "after", limit_param = "size", limit = 20, next = "/meta/next" }}
records = "/things"
id = "/key"
table = "things"
create_table = true
[integrations.things.entities.things.columns]
value = {{ path = "/value", type = "numeric" }}
"#
    );
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    let s = full_sync(&env, "things").await;
    assert_eq!((s.fetched, s.inserted, s.api_calls), (95, 95, 5), "{s:#?}");
    let sum: i64 = env.value("SELECT sum(value)::bigint FROM things").await;
    assert_eq!(sum, (1..=95).map(|i| i * 10).sum::<i64>());
    worker.stop().await;
    env.finish().await;
}
