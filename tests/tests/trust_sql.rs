//! Trust boundaries of the database side (issue #18): SQL and table creation only from the config
//! file, push queries read-only, identifiers quoted, integration changes atomic and audited with
//! their audit row, `enabled` owned by the API once set, and no transaction held open while an
//! `http-json` step reads its upstream.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncfleet_shared::{chain::Mode, config::Secret};
use syncfleet_tests::{Sandbox, TestEnv, owner_url};

/// `http-json` settings the API accepts (no secret, no network needed to store them).
fn api_settings(extra: Value) -> Value {
    let mut s = json!({
        "base_url": "https://erp.example.com/api",
        "entities": { "items": { "path": "/items", "paging": { "style": "offset" }, "id": "/id",
                                 "table": "api_items", "columns": { "name": { "path": "/name", "type": "text" } } } },
    });
    s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    s
}

async fn audit_rows(env: &TestEnv, target: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT action FROM audit_log WHERE target = $1 ORDER BY id")
        .bind(target)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn integration_rows(env: &TestEnv, name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM integrations WHERE name = $1")
        .bind(name)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_refuses_push_sql_and_table_creation_and_the_worker_takes_sql_from_the_file_only() {
    let env = TestEnv::new("").await;
    // The services' role creates no table: the owner does, and the runtime role is granted it.
    sqlx::raw_sql("CREATE TABLE api_items (id BIGSERIAL PRIMARY KEY, integration_id BIGINT NOT NULL, external_id TEXT NOT NULL, name TEXT, is_active BOOLEAN NOT NULL DEFAULT TRUE, deleted_at TIMESTAMPTZ, last_seen_run UUID, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), UNIQUE (integration_id, external_id))")
        .execute(&env.owner_pool().await)
        .await
        .unwrap();
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;

    // Push SQL from an admin token: 400 naming the key; nothing stored, nothing audited.
    let stolen =
        "SELECT name AS external_id, jsonb_build_object('h', encode(secret_hash, 'hex')) AS fields FROM api_tokens";
    let sql = api_settings(json!({ "pushes": { "leak": { "query": stolen, "path": "/leak" } } }));
    let (status, answer) =
        admin.post("/api/integrations", json!({ "name": "evil", "pack": "http-json", "settings": sql })).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["message"].as_str(),
        Some("settings.pushes.leak.query: push queries are accepted from the config file only"),
        "{answer}"
    );
    assert_eq!(integration_rows(&env, "evil").await, 0, "no integration row is left");
    assert!(audit_rows(&env, "evil").await.is_empty(), "a refused create is not audited");

    // Table creation from the API: 400 as well.
    let mut create = api_settings(json!({}));
    create["entities"]["items"]["create_table"] = json!(true);
    create["entities"]["items"]["table"] = json!("made_by_api");
    let (status, answer) =
        admin.post("/api/integrations", json!({ "name": "maker", "pack": "http-json", "settings": create })).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["message"].as_str(),
        Some("settings.entities.items.create_table: tables are created from the config file only")
    );
    let made: bool = env.value("SELECT to_regclass('made_by_api') IS NOT NULL").await;
    assert!(!made && integration_rows(&env, "maker").await == 0);

    // A table the API names must exist: a failing preparation is 400 and leaves nothing behind.
    let mut missing = api_settings(json!({}));
    missing["entities"]["items"]["table"] = json!("nowhere");
    let (status, answer) =
        admin.post("/api/integrations", json!({ "name": "lost", "pack": "http-json", "settings": missing })).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("table `nowhere` does not exist"), "{answer}");
    assert_eq!(integration_rows(&env, "lost").await, 0);
    assert!(audit_rows(&env, "lost").await.is_empty());

    // A push declared through the API without its SQL is stored (exactly one audit row) ...
    let declared = api_settings(json!({ "pushes": { "stock": { "path": "/items" } } }));
    let (status, answer) =
        admin.post("/api/integrations", json!({ "name": "declared", "pack": "http-json", "settings": declared })).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(audit_rows(&env, "declared").await, ["integration.create"]);
    // ... and adding the SQL later through an update is refused too, the stored settings unchanged.
    let sql = api_settings(json!({ "pushes": { "stock": { "path": "/items", "query": "SELECT 1" } } }));
    let (status, answer) = admin.put("/api/integrations/declared", json!({ "settings": sql })).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().starts_with("settings.pushes.stock.query:"), "{answer}");
    let stored: Value = env.value("SELECT settings FROM integrations WHERE name = 'declared'").await;
    assert!(stored["pushes"]["stock"].get("query").is_none(), "{stored}");
    assert_eq!(audit_rows(&env, "declared").await, ["integration.create"], "a refused update is not audited");

    // The worker refuses a push whose SQL the config file does not hold, before any request.
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end("http_json_push", "declared", Mode::Full, false).await;
    assert_eq!(run.status, "failed", "{run:#?}");
    let error = run.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("push `stock` has no query in the config file (`integrations.declared.pushes.stock.query`)"),
        "{error}"
    );
    assert_eq!(run.steps[0].api_calls, 0);

    // Token changes commit with their audit row too: a refused one leaves none.
    let (status, _) = admin.post("/api/tokens", json!({ "name": "ci", "role": "viewer" })).await;
    assert_eq!(status, 201);
    let (status, _) = admin.post("/api/tokens", json!({ "name": "ci", "role": "viewer" })).await;
    assert_eq!(status, 400);
    assert_eq!(audit_rows(&env, "ci").await, ["token.create"]);
    assert_eq!(admin.delete("/api/tokens/ci").await.0, 200);
    assert_eq!(admin.delete("/api/tokens/ci").await.0, 404);
    assert_eq!(audit_rows(&env, "ci").await, ["token.create", "token.revoke"]);

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_push_runs_read_only() {
    let sandbox = Sandbox::start().await;
    let erp = sandbox.handle.erp_url();
    let push = |name: &str, query: &str| {
        format!(
            r#"
[integrations.{name}]
pack = "http-json"
base_url = "{erp}"
auth = {{ style = "bearer", secret_file = "erp-token" }}
[integrations.{name}.pushes.stock]
query = "{query}"
path = "/items"
numeric_id = true
"#
        )
    };
    let good = "SELECT external_id, jsonb_build_object('quantity', quantity) AS fields FROM stock_targets WHERE integration_id = $1";
    let evil = "SELECT external_id, jsonb_build_object('quantity', quantity) AS fields FROM stock_targets WHERE sf_drop_targets() >= 0";
    let env = TestEnv::new(&format!("{}{}", push("erp", good), push("evil", evil))).await;
    sqlx::raw_sql(
        "CREATE TABLE stock_targets (integration_id BIGINT, external_id TEXT, quantity BIGINT);
         INSERT INTO stock_targets SELECT i.id, g::text, 500 + g FROM integrations i, generate_series(1, 3) g;
         CREATE FUNCTION sf_drop_targets() RETURNS bigint LANGUAGE plpgsql AS
             'BEGIN DELETE FROM stock_targets; RETURN 0; END';",
    )
    .execute(&env.owner_pool().await)
    .await
    .unwrap();
    let worker = env.spawn_worker("w").await;

    // The config file's push runs.
    let run = env.run_to_end("http_json_push", "erp", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    assert_eq!((run.steps[0].fetched, run.steps[0].updated), (3, 3), "{run:#?}");

    // A push query that writes fails in its read-only transaction; the table is unchanged.
    let run = env.run_to_end("http_json_push", "evil", Mode::Full, false).await;
    assert_eq!(run.status, "failed", "{run:#?}");
    let error = run.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("read-only transaction"), "{error}");
    assert_eq!(run.steps[0].attempts, 1, "a write refused is no transient failure");
    let left: i64 = env.value("SELECT count(*) FROM stock_targets").await;
    assert_eq!(left, 6);

    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserved_words_are_identifiers_and_a_failed_preparation_leaves_nothing() {
    let sandbox = Sandbox::start().await;
    let toml = format!(
        r#"
[integrations.shop]
pack = "http-json"
base_url = "{erp}"
auth = {{ style = "bearer", secret_file = "erp-token" }}
[integrations.shop.entities.items]
path = "/items"
paging = {{ style = "offset", limit = 100, total = "/total" }}
records = "/items"
id = "/id"
table = "order"
create_table = true
[integrations.shop.entities.items.columns]
select = {{ path = "/sku", type = "text" }}
"from" = {{ path = "/quantity", type = "bigint" }}
"#,
        erp = sandbox.handle.erp_url()
    );
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    let run = env.run_to_end("http_json_sync", "shop", Mode::Full, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    let landed: i64 =
        env.value(r#"SELECT count(*) FROM "order" WHERE "select" IS NOT NULL AND "from" IS NOT NULL"#).await;
    assert_eq!(landed, 250);
    let again = env.run_to_end("http_json_sync", "shop", Mode::Full, false).await;
    assert_eq!((again.steps[0].unchanged, again.steps[0].deactivated), (250, 0), "{again:#?}");

    // Registration from the config file: the first entity's table would be created, the second
    // entity's table cannot hold its column: nothing of the integration stays, not even the table.
    let owner = env.owner_pool().await;
    sqlx::raw_sql("CREATE TABLE wrong_types (integration_id BIGINT, external_id TEXT, qty TEXT)")
        .execute(&owner)
        .await
        .unwrap();
    let spec: syncfleet_shared::config::IntegrationSpec = serde_json::from_value(json!({
        "pack": "http-json",
        "base_url": "https://erp.example.com",
        "entities": {
            "a": { "path": "/a", "paging": { "style": "page" }, "id": "/id", "table": "fresh_table",
                   "create_table": true, "columns": { "qty": { "path": "/q", "type": "bigint" } } },
            "b": { "path": "/b", "paging": { "style": "page" }, "id": "/id", "table": "wrong_types",
                   "columns": { "qty": { "path": "/q", "type": "bigint" } } },
        },
    }))
    .unwrap();
    let integrations = [("halfway".to_owned(), spec)].into_iter().collect();
    let err = syncfleet_store::register_integrations(&owner, &env.registry, &integrations).await.unwrap_err();
    assert!(err.to_string().contains("wrong_types"), "{err}");
    assert_eq!(integration_rows(&env, "halfway").await, 0);
    let created: bool = env.value("SELECT to_regclass('fresh_table') IS NOT NULL").await;
    assert!(!created, "the first entity's table went with the failed registration");

    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_integration_disabled_through_the_api_stays_disabled() {
    let env = TestEnv::new("[integrations.acme]\npack = \"demo\"\nstep_ms = 0\n").await;
    let producer = env.spawn_producer().await;
    let admin = env.api(&producer, "admin").await;
    let enabled = || async { env.value::<bool>("SELECT enabled FROM integrations WHERE name = 'acme'").await };
    assert!(enabled().await, "the config file enables a new integration");

    let (status, answer) = admin.post("/api/integrations/acme/disable", json!({})).await;
    assert_eq!((status, answer["enabled"].as_bool()), (200, Some(false)), "{answer}");
    assert_eq!(audit_rows(&env, "acme").await, ["integration.disable"]);

    // A producer start registers the config file's integrations again (as the owner, which
    // migrates and registers; a producer without `owner_url` registers nothing) ...
    let mut owner = env.config.clone();
    owner.database.owner_url = Some(Secret::new(owner_url(&env.config.database)));
    drop(syncfleet_producer::connect(&owner, env.registry.clone()).await.expect("connect as the owner"));
    assert!(!enabled().await, "a producer start does not re-enable it");
    drop(syncfleet_producer::connect(&env.config, env.registry.clone()).await.expect("connect"));
    assert!(!enabled().await);
    // ... and so does every CLI command.
    let out = env.cli().args(["integrations", "--json"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["enabled"], false, "{listed}");
    assert!(!enabled().await, "a CLI command does not re-enable it");

    // Enabling is the API's (or the CLI's) too, and sticks likewise.
    let (status, _) = admin.put("/api/integrations/acme", json!({ "enabled": true })).await;
    assert_eq!(status, 200);
    drop(syncfleet_producer::connect(&owner, env.registry.clone()).await.expect("connect"));
    assert!(enabled().await);
    assert_eq!(audit_rows(&env, "acme").await, ["integration.disable", "integration.update"]);

    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_json_run_holds_no_transaction_open_while_it_reads() {
    let sandbox = Sandbox::start().await;
    let erp = sandbox.handle.erp_url();
    let mut toml = format!(
        "[integrations.erp]\npack = \"http-json\"\nbase_url = \"{erp}\"\nauth = {{ style = \"bearer\", secret_file = \"erp-token\" }}\n"
    );
    for entity in ["a", "b", "c"] {
        toml.push_str(&format!(
            r#"
[integrations.erp.entities.{entity}]
path = "/items"
paging = {{ style = "offset", limit = 50, total = "/total" }}
records = "/items"
id = "/id"
table = "erp_{entity}"
create_table = true
[integrations.erp.entities.{entity}.columns]
sku = {{ path = "/sku", type = "text" }}
"#
        ));
    }
    let env = TestEnv::new(&toml).await;
    let worker = env.spawn_worker("w").await;
    // 5 pages per entity, each answered after 400 ms: the run reads for about 6 s.
    sandbox.faults("erp", json!({ "latency_ms": 400 })).await;

    let run = env.trigger_with("http_json_sync", "erp", Mode::Full, false).await;
    // The age of every transaction found waiting for its client (not of its last statement: a
    // completion transaction opened early would run a statement per entity and wait in between).
    let mut longest = 0.0f64;
    let started = Instant::now();
    loop {
        let idle: f64 = env
            .value(
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8
                   FROM pg_stat_activity
                  WHERE datname = current_database() AND state = 'idle in transaction'",
            )
            .await;
        longest = longest.max(idle);
        let status: String = sqlx::query_scalar("SELECT status FROM chain_runs WHERE id = $1")
            .bind(run.0)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if status != "running" && status != "queued" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the run ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = env.wait(run, Duration::from_secs(5)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let step = &view.steps[0];
    assert_eq!((step.fetched, step.inserted), (750, 750), "{step:#?}");
    assert!(step.api_calls >= 15, "{step:#?}");
    assert_eq!(
        step.guard.as_deref(),
        Some(
            "a: swept: 0 of 250 active rows deactivated; b: swept: 0 of 250 active rows deactivated; c: swept: 0 of 250 active rows deactivated"
        )
    );
    assert!(started.elapsed() > Duration::from_secs(5), "the reads were slow: {:?}", started.elapsed());
    assert!(longest < 1.5, "a transaction stayed open for {longest:.1} s while the step read its upstream");

    worker.stop().await;
    env.finish().await;
}
