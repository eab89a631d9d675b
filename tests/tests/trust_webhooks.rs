//! Signed webhooks v2 against a real producer, PostgreSQL and Redis: a signature covers the
//! timestamp, the method, the path with its query (naming the integration) and the body; it is
//! accepted once, within 5 minutes; every authentication failure answers the same 401; and a
//! `?fetch=` answer carries the outcome only, never the upstream's data.

use serde_json::{Value, json};
use syncfleet_producer::auth;
use syncfleet_tests::{Sandbox, TestEnv, erp_integration_toml};

/// The HMAC key both integrations share (at least 32 bytes).
const KEY: &[u8] = b"trust-webhooks-shared-key-0123456789abcdef";
const PATH_A: &str = "/api/integrations/erp/items/items";
const PATH_B: &str = "/api/integrations/erp2/items/items";

struct Caller {
    base: String,
    http: reqwest::Client,
}

impl Caller {
    /// POSTs `body` to `path_and_query` with the given headers (`None` leaves one out).
    async fn send(
        &self,
        path_and_query: &str,
        body: &[u8],
        at: Option<i64>,
        signature: Option<String>,
    ) -> (u16, Value) {
        let mut r = self.http.post(format!("{}{path_and_query}", self.base)).body(body.to_vec());
        r = r.header("content-type", "application/json");
        if let Some(at) = at {
            r = r.header(auth::TIMESTAMP_HEADER, at.to_string());
        }
        if let Some(s) = signature {
            r = r.header(auth::SIGNATURE_HEADER, s);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Signs `path_and_query` and `body` at `at` with `key`, and sends it to `sent_to`.
    async fn signed(&self, sent_to: &str, signed_path: &str, body: &[u8], at: i64, key: &[u8]) -> (u16, Value) {
        self.send(sent_to, body, Some(at), Some(auth::sign(key, at, "POST", signed_path, body))).await
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_webhooks_are_accepted_once_within_their_window_and_for_their_path_only() {
    let sandbox = Sandbox::start().await;
    let erp = sandbox.handle.erp_url();
    let hook = "webhook_secret_ref = \"file:hooks/erp\"";
    let toml = [
        erp_integration_toml("erp", &erp, "erp_items", 100, hook),
        erp_integration_toml("erp2", &erp, "erp2_items", 100, hook),
        erp_integration_toml("erp3", &erp, "erp3_items", 100, ""),
    ]
    .concat();
    let env = TestEnv::new(&toml).await;
    let dir = env.config.secrets.dir.clone().unwrap();
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    std::fs::write(dir.join("hooks/erp"), [KEY, b"\n"].concat()).unwrap();
    let producer = env.spawn_producer().await;
    let caller = Caller { base: format!("http://{}", producer.addr.unwrap()), http: reqwest::Client::new() };
    let unauthorized = json!({ "error": "unauthorized", "message": "invalid webhook signature" });

    // A correctly signed call is accepted and writes its row.
    let item = json!({ "id": 910001, "sku": "SKU-W", "name": "Signed item", "quantity": 4, "warehouse": "W1",
                       "updated_at": "2026-11-01T10:00:00Z" });
    let body = serde_json::to_vec(&item).unwrap();
    let at = now();
    let signature = auth::sign(KEY, at, "POST", PATH_A, &body);
    let (status, answer) = caller.send(PATH_A, &body, Some(at), Some(signature.clone())).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("inserted")), "{answer}");
    let stored: i64 = env.value("SELECT count(*) FROM erp_items WHERE external_id = '910001'").await;
    assert_eq!(stored, 1);

    // The same call again is a replay.
    let (status, answer) = caller.send(PATH_A, &body, Some(at), Some(signature.clone())).await;
    assert_eq!((status, &answer), (401, &unauthorized), "a replay");
    // So is the same signature written in upper case.
    let upper = format!("v2={}", signature.trim_start_matches("v2=").to_uppercase());
    let (status, answer) = caller.send(PATH_A, &body, Some(at), Some(upper)).await;
    assert_eq!((status, &answer), (401, &unauthorized), "a replay in other letters");

    // A stale timestamp, correctly signed, is refused; so is one from the future.
    let mut later = item.clone();
    later["quantity"] = json!(1);
    let later = serde_json::to_vec(&later).unwrap();
    for at in [now() - 600, now() + 600] {
        let (status, answer) = caller.signed(PATH_A, PATH_A, &later, at, KEY).await;
        assert_eq!((status, &answer), (401, &unauthorized), "timestamp {at}");
    }
    // A signed path with `?fetch=` added (or another query) is refused.
    let at = now();
    for query in ["?fetch=3", "?fetch=910001", "?x=1"] {
        let (status, answer) = caller.signed(&format!("{PATH_A}{query}"), PATH_A, &later, at, KEY).await;
        assert_eq!((status, &answer), (401, &unauthorized), "{query}");
    }
    // Integration A's signature on integration B, which shares the secret, is refused.
    let (status, answer) = caller.signed(PATH_B, PATH_A, &later, at + 1, KEY).await;
    assert_eq!((status, &answer), (401, &unauthorized), "A's signature on B");
    let mut other_method = caller.http.put(format!("{}{PATH_A}", caller.base)).body(later.clone());
    other_method = other_method
        .header(auth::TIMESTAMP_HEADER, at.to_string())
        .header(auth::SIGNATURE_HEADER, auth::sign(KEY, at, "PUT", PATH_A, &later));
    assert_ne!(other_method.send().await.unwrap().status().as_u16(), 200, "only POST is routed");
    let stored: i64 = env.value("SELECT quantity FROM erp_items WHERE external_id = '910001'").await;
    assert_eq!(stored, 4, "no refused call wrote anything");

    // Unknown integration, no webhook secret, bad signature, no timestamp, no signature, a signature
    // of another scheme: the same 401, word for word.
    let at = now();
    let cases: Vec<(&str, (u16, Value))> = vec![
        (
            "unknown integration",
            caller
                .signed("/api/integrations/nope/items/items", "/api/integrations/nope/items/items", &later, at, KEY)
                .await,
        ),
        (
            "no webhook secret",
            caller
                .signed("/api/integrations/erp3/items/items", "/api/integrations/erp3/items/items", &later, at, KEY)
                .await,
        ),
        ("bad signature", caller.signed(PATH_A, PATH_A, &later, at, b"another-key-another-key-another-key!").await),
        ("no timestamp", caller.send(PATH_A, &later, None, Some(auth::sign(KEY, at, "POST", PATH_A, &later))).await),
        ("no signature", caller.send(PATH_A, &later, Some(at), None).await),
        ("malformed signature", caller.send(PATH_A, &later, Some(at), Some("v2=zz".into())).await),
        ("old scheme", caller.send(PATH_A, &later, Some(at), Some(format!("sha256={}", "0".repeat(64)))).await),
    ];
    for (what, (status, answer)) in cases {
        assert_eq!((status, &answer), (401, &unauthorized), "{what}");
    }

    // B accepts its own signature.
    let (status, answer) = caller.signed(PATH_B, PATH_B, &later, now(), KEY).await;
    assert_eq!((status, answer["integration"].as_str()), (200, Some("erp2")), "{answer}");

    // `?fetch=` answers the outcome only: none of the upstream record's values.
    let record: Value = reqwest::Client::new()
        .get(format!("{erp}/items/3"))
        .bearer_auth("erp-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fetch = format!("{PATH_A}?fetch=3");
    let (status, answer) = caller.signed(&fetch, &fetch, b"", now(), KEY).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("inserted")), "{answer}");
    assert_eq!(answer, json!({ "integration": "erp", "entity": "items", "external_id": "3", "outcome": "inserted" }));
    let text = answer.to_string();
    for field in ["sku", "name", "warehouse", "updated_at"] {
        let value = record[field].as_str().unwrap_or_else(|| panic!("the sandbox's item has `{field}`: {record}"));
        assert!(!text.contains(value), "{field} = {value} in {text}");
    }
    let synced: i64 = env.value("SELECT count(*) FROM erp_items WHERE external_id = '3'").await;
    assert_eq!(synced, 1, "the fetched record was written");

    // An upstream failure answers a fixed 502 and nothing of the upstream's answer.
    let missing = format!("{PATH_A}?fetch=99999999");
    let (status, answer) = caller.signed(&missing, &missing, b"", now(), KEY).await;
    assert_eq!(
        (status, answer),
        (502, json!({ "error": "upstream_failed", "message": "the upstream failed; see the producer log" }))
    );

    // The OpenAPI document describes v2.
    let doc: Value =
        caller.http.get(format!("{}/api/openapi.json", caller.base)).send().await.unwrap().json().await.unwrap();
    let op = &doc["paths"]["/api/integrations/{name}/items/{entity}"]["post"];
    let params = op["parameters"].to_string();
    assert!(params.contains("x-syncfleet-timestamp") && params.contains("v2="), "{params}");
    assert!(op["responses"].get("403").is_none(), "one 401 for every refusal: {}", op["responses"]);

    producer.stop().await;
    env.finish().await;
}
