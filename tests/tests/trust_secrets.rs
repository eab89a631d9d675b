//! Secrets as references only: a secret is an environment variable with the deployment's prefix or
//! a regular file under its secrets directory, named by `secret_env` / `secret_file` /
//! `webhook_secret_ref`; anything else is refused by the config loader and the admin API naming
//! the key. A short HMAC key never authenticates. And the grep test: distinctive secret values
//! configured for a real sync through a real producer and worker process appear in no API answer
//! (as a viewer), no CLI listing, no process log and no database row.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use syncfleet_producer::auth;
use syncfleet_shared::ids::RunId;
use syncfleet_tests::{Api, Sandbox, TestEnv, binary, erp_integration_toml, signal};
use tokio::process::{Child, Command};

fn secrets_dir(env: &TestEnv) -> PathBuf {
    env.config.secrets.dir.clone().expect("the harness sets a secrets directory")
}

fn http_json(auth: Value) -> Value {
    json!({ "base_url": "http://127.0.0.1:9/api", "auth": auth })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_refuses_secrets_that_are_not_references_under_the_policy() {
    let env = TestEnv::new("").await;
    std::fs::write(secrets_dir(&env).join("erp-webhook"), "k".repeat(40)).unwrap();
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let bearer = |extra: Value| {
        let mut auth = json!({ "style": "bearer" });
        auth.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        auth
    };
    let refused = [
        (http_json(bearer(json!({ "secret_env": "SYNCFLEET__DATABASE__URL" }))), None, "settings.auth.secret_env"),
        (http_json(bearer(json!({ "secret_env": "PATH" }))), None, "settings.auth.secret_env"),
        (http_json(bearer(json!({ "secret_file": "/dev/zero" }))), None, "settings.auth.secret_file"),
        (http_json(bearer(json!({ "secret_file": "/etc/passwd" }))), None, "settings.auth.secret_file"),
        (http_json(bearer(json!({ "secret_file": "../../etc/passwd" }))), None, "settings.auth.secret_file"),
        (http_json(bearer(json!({ "secret": "hunter2-inline" }))), None, "settings.auth.secret"),
        (http_json(bearer(json!({}))), Some("env:SYNCFLEET__DATABASE__URL"), "webhook_secret_ref"),
        (http_json(bearer(json!({}))), Some("file:/dev/zero"), "webhook_secret_ref"),
        (http_json(bearer(json!({}))), Some("file:/dev/null"), "webhook_secret_ref"),
        (http_json(bearer(json!({}))), Some("file:../outside"), "webhook_secret_ref"),
        (http_json(bearer(json!({}))), Some("hunter2"), "webhook_secret_ref"),
    ];
    for (i, (settings, hook, key)) in refused.iter().enumerate() {
        let mut settings = settings.clone();
        if hook.is_some() {
            // A valid settings reference, so only the webhook's is at fault.
            settings["auth"]["secret_file"] = json!("erp-token");
        }
        let mut body = json!({ "name": format!("bad-{i}"), "pack": "http-json", "settings": settings });
        if let Some(h) = hook {
            body["webhook_secret_ref"] = json!(h);
        }
        let (status, answer) = admin.post("/api/integrations", body.clone()).await;
        let message = answer["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(message.starts_with(&format!("{key}:")), "{body}: {message} should name {key}");
        assert!(!message.contains("hunter2-inline"), "{message}");
    }
    let stored: i64 = env.value("SELECT count(*) FROM integrations WHERE name LIKE 'bad-%'").await;
    assert_eq!(stored, 0);

    // The same through an update, and what the policy allows is accepted.
    let good = json!({ "name": "good", "pack": "http-json", "webhook_secret_ref": "file:erp-webhook",
                       "settings": http_json(bearer(json!({ "secret_file": "erp-token" }))) });
    let (status, created) = admin.post("/api/integrations", good).await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = admin.put("/api/integrations/good", json!({ "webhook_secret_ref": "file:/dev/zero" })).await;
    assert!(status == 400 && answer["message"].as_str().unwrap().starts_with("webhook_secret_ref:"), "{answer}");
    let env_ref = json!({ "settings": http_json(bearer(json!({ "secret_env": "SYNCFLEET_SECRET_ERP" }))) });
    assert_eq!(admin.put("/api/integrations/good", env_ref).await.0, 200);
    let (status, answer) = admin
        .put("/api/integrations/good", json!({ "settings": http_json(bearer(json!({ "secret_env": "HOME" }))) }))
        .await;
    assert!(status == 400 && answer["message"].as_str().unwrap().starts_with("settings.auth.secret_env:"), "{answer}");

    producer.stop().await;
    env.finish().await;
}

#[test]
fn the_config_loader_refuses_them_naming_the_key() {
    let base = erp_integration_toml("erp", "http://127.0.0.1:9/erp/api", "erp_items", 100, "");
    let registry = syncfleet_registry::builtin();
    assert!(registry.config_from_toml(&base).is_ok(), "the sandbox's integration names a secret file");
    let auth = "auth = { style = \"bearer\", secret_file = \"erp-token\" }";
    assert!(base.contains(auth));
    for (replacement, key) in [
        ("auth = { style = \"bearer\", secret = \"erp-token\" }", "integrations.erp.auth.secret"),
        (
            "auth = { style = \"bearer\", secret_env = \"SYNCFLEET__DATABASE__URL\" }",
            "integrations.erp.auth.secret_env",
        ),
        ("auth = { style = \"bearer\", secret_file = \"/dev/zero\" }", "integrations.erp.auth.secret_file"),
        ("auth = { style = \"bearer\", secret_file = \"/var/run/x\" }", "integrations.erp.auth.secret_file"),
        ("auth = { style = \"bearer\", secret_file = \"a/../../x\" }", "integrations.erp.auth.secret_file"),
        ("auth = { style = \"bearer\" }", "integrations.erp.auth"),
        (&format!("{auth}\nwebhook_secret_ref = \"env:HOME\""), "integrations.erp.webhook_secret_ref"),
        (&format!("{auth}\nwebhook_secret_ref = \"file:/dev/zero\""), "integrations.erp.webhook_secret_ref"),
    ] {
        let text = base.replace(auth, replacement);
        let err = registry.config_from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{replacement}: {err}");
    }
    // A deployment's own prefix and directory.
    let own = format!(
        "[secrets]\nenv_prefix = \"ACME_SECRET_\"\ndir = \"/srv/keys\"\n{}",
        base.replace(auth, "auth = { style = \"bearer\", secret_env = \"ACME_SECRET_ERP\" }")
    );
    assert!(registry.config_from_toml(&own).is_ok());
    let err =
        registry.config_from_toml(&own.replace("ACME_SECRET_ERP", "SYNCFLEET_SECRET_ERP")).unwrap_err().to_string();
    assert!(err.contains("ACME_SECRET_"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_or_empty_webhook_key_never_authenticates() {
    let sandbox = Sandbox::start().await;
    let erp = sandbox.handle.erp_url();
    let toml = [
        erp_integration_toml("short", &erp, "short_items", 100, "webhook_secret_ref = \"file:short\""),
        erp_integration_toml("empty", &erp, "empty_items", 100, "webhook_secret_ref = \"file:empty\""),
        erp_integration_toml("long", &erp, "long_items", 100, "webhook_secret_ref = \"file:long\""),
    ]
    .concat();
    let env = TestEnv::new(&toml).await;
    let dir = secrets_dir(&env);
    let short = "s".repeat(31);
    let long = "l".repeat(32);
    std::fs::write(dir.join("short"), &short).unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("long"), format!("{long}\n")).unwrap();
    let producer = env.spawn_producer().await;
    let base = format!("http://{}", producer.addr.unwrap());
    let http = reqwest::Client::new();
    let item = serde_json::to_vec(&json!({ "id": 1, "sku": "S", "name": "N", "quantity": 1, "warehouse": "W",
                                            "updated_at": "2026-11-01T10:00:00Z" }))
    .unwrap();
    let call = |name: &str, key: &str| {
        let path = format!("/api/integrations/{name}/items/items");
        let at = chrono::Utc::now().timestamp();
        http.post(format!("{base}{path}"))
            .header(auth::TIMESTAMP_HEADER, at.to_string())
            .header(auth::SIGNATURE_HEADER, auth::sign(key.as_bytes(), at, "POST", &path, &item))
            .body(item.clone())
            .send()
    };
    for (name, key) in [("short", short.as_str()), ("empty", ""), ("empty", "\n")] {
        let r = call(name, key).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{name}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({ "error": "unauthorized", "message": "invalid webhook signature" })
        );
    }
    assert_eq!(call("long", &long).await.unwrap().status().as_u16(), 200, "a 32-byte key is enough");
    producer.stop().await;
    env.finish().await;
}

/// A process of the build with this test's config, logging at debug level to `log`.
fn process(env: &TestEnv, binary_name: &str, log: &Path) -> Command {
    let mut c = Command::new(binary(binary_name));
    c.env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET__WORKER__NAME", format!("grep-{}", env.id))
        .env("SYNCFLEET_LOG", "info,syncfleet_sdk=debug,syncfleet_worker=debug,syncfleet_producer=debug")
        .env("SYNCFLEET_LOG_JSON", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    c
}

/// Waits until `log` holds a JSON line with `message`; returns its `addr` field.
async fn logged(log: &Path, message: &str) -> String {
    for _ in 0..600 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if let Ok(entry) = serde_json::from_str::<Value>(line)
                && entry["fields"]["message"] == message
            {
                return entry["fields"]["addr"].as_str().unwrap_or_default().to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {message:?} in {}: {}", log.display(), std::fs::read_to_string(log).unwrap_or_default());
}

async fn stop(mut child: Child) {
    signal(&child, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_value_reaches_a_listing_a_log_or_the_database() {
    let tag = format!("{:08x}", rand::random::<u32>());
    let bearer = format!("sfBearer{tag}Zq");
    let wrong = format!("sfWrong{tag}Zq");
    let header = format!("sfHeader{tag}Zq");
    let query = format!("sfQuery{tag}Zq");
    let user = format!("sfUser{tag}Zq");
    let password = format!("sfPass{tag}Zq");
    let hook = format!("sfHook{tag}Zq-0123456789-0123456789-0123456789");
    let secrets = [&bearer, &wrong, &header, &query, &user, &password, &hook];

    let sandbox = Sandbox::start_with(syncfleet_sandbox::SandboxConfig {
        erp_token: bearer.clone(),
        ..syncfleet_sandbox::SandboxConfig::default().unlimited()
    })
    .await;
    let erp = sandbox.handle.erp_url().replace("http://", &format!("http://{user}:{password}@"));
    let extra = format!("headers = {{ X-Static = \"{header}\" }}\nwebhook_secret_ref = \"file:hook\"");
    let with_query = |toml: String, table: &str| {
        toml.replace(
            &format!("table = \"{table}\""),
            &format!("table = \"{table}\"\nquery = {{ access = \"{query}\" }}"),
        )
    };
    // `erp` syncs; `erp-wrong` sends a wrong token and fails, so its errors are recorded too.
    let toml = with_query(erp_integration_toml("erp", &erp, "erp_items", 100, &extra), "erp_items")
        + &with_query(erp_integration_toml("erp-wrong", &erp, "wrong_items", 100, &extra), "wrong_items")
            .replace("secret_file = \"erp-token\"", "secret_file = \"wrong-token\"");
    let env = TestEnv::new(&toml).await;
    let dir = secrets_dir(&env);
    std::fs::write(dir.join("erp-token"), format!("{bearer}\n")).unwrap();
    std::fs::write(dir.join("wrong-token"), &wrong).unwrap();
    std::fs::write(dir.join("hook"), &hook).unwrap();

    // A real producer and a real worker process, logging at debug level into files.
    let logs = std::env::temp_dir().join(format!("syncfleet-grep-{}", env.id));
    std::fs::create_dir_all(&logs).unwrap();
    let (producer_log, worker_log) = (logs.join("producer.log"), logs.join("worker.log"));
    let producer = process(&env, "syncfleet-producer", &producer_log).spawn().unwrap();
    let addr = logged(&producer_log, "Producer started.").await;
    let worker = process(&env, "syncfleet-worker", &worker_log).spawn().unwrap();
    let api = |token: String| Api { base: format!("http://{addr}"), token: Some(token), http: reqwest::Client::new() };
    let operator = api(env.token("operator").await);
    let viewer = api(env.token("viewer").await);

    let mut runs = vec![];
    for integration in ["erp", "erp-wrong"] {
        let (status, created) =
            operator.post("/api/chains/http_json_sync/runs", json!({ "integration": integration })).await;
        assert_eq!(status, 201, "{created}");
        runs.push(created["run_id"].as_str().unwrap().to_owned());
    }
    let ok = env.wait(RunId(runs[0].parse::<uuid::Uuid>().unwrap()), Duration::from_secs(90)).await;
    assert_eq!(ok.status, "completed", "{ok:#?}");
    let synced: i64 = env.value("SELECT count(*) FROM erp_items").await;
    assert!(synced > 0, "the sync read the upstream with the bearer token, header and query");
    let failed = env.wait(RunId(runs[1].parse::<uuid::Uuid>().unwrap()), Duration::from_secs(90)).await;
    assert_eq!(failed.status, "failed", "{failed:#?}");

    // A signed webhook, so the webhook secret is read too.
    let path = "/api/integrations/erp/items/items";
    let body = serde_json::to_vec(&json!({ "id": 920001, "sku": "G", "name": "Grep", "quantity": 1,
                                            "warehouse": "W", "updated_at": "2026-11-01T10:00:00Z" }))
    .unwrap();
    let at = chrono::Utc::now().timestamp();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header(auth::TIMESTAMP_HEADER, at.to_string())
        .header(auth::SIGNATURE_HEADER, auth::sign(hook.as_bytes(), at, "POST", path, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Every GET of the admin API, as a viewer.
    let mut answers = vec![];
    let (_, doc) = viewer.get("/api/openapi.json").await;
    answers.push(doc.to_string());
    let mut gets = vec![
        "/api/integrations".to_owned(),
        "/api/integrations/erp".into(),
        "/api/integrations/erp-wrong".into(),
        "/api/audit?limit=500".into(),
        "/metrics".into(),
    ];
    for run in &runs {
        gets.push(format!("/api/runs/{run}"));
        gets.push(format!("/api/runs/{run}/errors"));
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_some() {
            gets.push(
                path.replace("{name}", "erp")
                    .replace("{id}", &runs[1])
                    .replace("{chain}", "http_json_sync")
                    .replace("{username}", "pat"),
            );
        }
    }
    for path in &gets {
        let r = viewer.http.get(format!("{}{path}", viewer.base)).bearer_auth(viewer.token.as_deref().unwrap());
        let text = r.send().await.unwrap().text().await.unwrap();
        answers.push(format!("GET {path}: {text}"));
    }
    let (_, list) = viewer.get("/api/integrations").await;
    assert_eq!(list[0]["settings"]["headers"]["X-Static"], "<redacted>", "{list}");
    assert_eq!(list[0]["settings"]["auth"]["secret_file"], "erp-token", "{list}");
    let (_, errors) = viewer.get(&format!("/api/runs/{}", runs[1])).await;
    assert!(errors.to_string().contains("401"), "the failed run says why: {errors}");

    // The CLI's listing.
    for args in [vec!["integrations"], vec!["integrations", "--json"]] {
        let out = env.cli().args(&args).output().await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        answers.push(format!(
            "syncfleet {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    stop(worker).await;
    stop(producer).await;
    let logs_text = [&producer_log, &worker_log].map(|l| std::fs::read_to_string(l).unwrap());
    assert!(logs_text[1].contains("pull"), "the worker logged its work: {}", logs_text[1]);

    // The database: integrations, runs, steps, errors, audit.
    let mut rows = vec![];
    for table in ["integrations", "chain_runs", "step_runs", "item_errors", "audit_log", "cursors"] {
        let text: String = env.value(&format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t")).await;
        rows.push(format!("{table}: {text}"));
    }

    for (what, texts) in [("an API or CLI answer", &answers), ("a process log", &logs_text.to_vec()), ("a row", &rows)]
    {
        for text in texts {
            for secret in secrets {
                assert!(!text.contains(secret.as_str()), "{secret} in {what}: {text}");
            }
        }
    }
    std::fs::remove_dir_all(&logs).ok();
    env.finish().await;
}
