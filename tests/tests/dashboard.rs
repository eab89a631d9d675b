//! The operator dashboard: its assets are served without a token, and end to end in headless
//! Chromium (`tests/e2e/dashboard.mjs`, playwright-core) against a producer and a worker in this
//! process.
//!
//! The browser test needs Chromium (`apt-get install -y chromium`; `CHROMIUM` overrides
//! `/usr/bin/chromium`), Node and `npm ci` in `tests/e2e`. Without Chromium it is skipped, unless
//! `CI` is set: then it fails. It keeps the screenshot at `target/e2e/dashboard.png`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::json;
use syncfleet_store::tokens::{self, Role};
use syncfleet_tests::TestEnv;

/// The whole browser session: three sign-ins, a run to completion and a cancellation.
const BROWSER_LIMIT: Duration = Duration::from_secs(180);

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace")
}

/// `target/e2e/` of the build this test belongs to (the test binary is `target/<profile>/deps/…`).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps/<test>");
    let dir = target.join("e2e");
    std::fs::create_dir_all(&dir).expect("create target/e2e");
    dir
}

/// Chromium's path; `None` (after saying why) when the browser test is to be skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing and CI is set: install it (apt-get install -y chromium) so the dashboard is tested",
        path.display()
    );
    eprintln!(
        "SKIPPED dashboard browser test: {} is missing (apt-get install -y chromium, or set CHROMIUM); \
         with CI set this test fails instead",
        path.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_is_served_without_a_token_and_its_data_is_not() {
    let env = TestEnv::new("").await;
    let producer = env.spawn_producer().await;
    let base = format!("http://{}", producer.addr.unwrap());
    let http = reqwest::Client::new();

    for (path, content_type) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/api.js", "text/javascript"),
        ("/assets/dom.js", "text/javascript"),
        ("/assets/runs.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        assert!(header("content-security-policy").contains("script-src 'self'"), "{path}");
        assert!(!resp.text().await.unwrap().is_empty(), "{path}");
    }
    let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<script type=\"module\" src=\"/assets/app.js\">"), "{page}");

    // The page learns the role from whoami; without a token the API answers with its error body.
    let resp = http.get(format!("{base}/api/whoami")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_in_chromium_triggers_a_run_to_completion_and_offers_viewers_no_actions() {
    let Some(chromium) = chromium() else { return };
    let e2e = workspace().join("tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/e2e`"
    );

    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({})).await;
    // A run that stays active while the page is looked at: its first step sleeps ten minutes.
    env.demo_integration("slowco", json!({ "slow": { "start": 600_000 } })).await;
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let (_, operator) = tokens::create(&env.pool, "e2e", Role::Operator, "test").await.expect("operator token");
    let (_, viewer) = tokens::create(&env.pool, "e2e-viewer", Role::Viewer, "test").await.expect("viewer token");
    let slow = env.trigger("demo_diamond", "slowco").await;

    let screenshot = artifacts().join("dashboard.png");
    std::fs::remove_file(&screenshot).ok();
    let base = format!("http://{}", producer.addr.unwrap());
    let script = tokio::process::Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .arg(&base)
        .arg(&operator)
        .arg(&screenshot)
        .arg(&viewer)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_LIMIT, script)
        .await
        .unwrap_or_else(|_| panic!("the browser session took longer than {BROWSER_LIMIT:?}"))
        .expect("run node (is Node installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("dashboard.mjs:\n{stdout}{stderr}");
    assert!(out.status.success(), "dashboard.mjs failed ({}):\n{stdout}{stderr}", out.status);
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot {} is missing or empty", screenshot.display());

    // What the page did, as PostgreSQL records it.
    let (status, by): (String, String) = sqlx::query_as(
        "SELECT r.status, r.triggered_by FROM chain_runs r JOIN integrations i ON i.id = r.integration_id
          WHERE i.name = 'acme' AND r.chain = 'demo_diamond'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("one acme run, triggered from the page");
    assert_eq!(status, "completed");
    assert!(by.contains("e2e"), "triggered by {by}");
    let slow_status: String = env.scalar("SELECT status FROM chain_runs WHERE id = $1", slow).await;
    assert_eq!(slow_status, "cancelled", "the operator cancels the slow run from the page");

    producer.stop().await;
    // The slow run's first step still sleeps; a graceful drain would wait for it.
    worker.token.cancel();
    worker.handle.abort();
    env.finish().await;
}
