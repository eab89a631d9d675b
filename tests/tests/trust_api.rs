//! The admin API against clients that do not play fair: a half-sent request, a body that never
//! finishes, more connections than the server serves, a connection stuck at shutdown; the headers
//! of every answer; and who may change a Moodle user's scope, with the audit rows of pack routes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncfleet_tests::{Running, Sandbox, TestEnv, moodle::uni_toml};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The limits every test here runs the producer with.
const LIMITS: &str =
    "header_read_timeout_secs = 1\nrequest_timeout_secs = 2\nmax_connections = 8\nshutdown_timeout_secs = 2";

async fn env() -> TestEnv {
    TestEnv::with_producer(LIMITS, "").await
}

fn addr(producer: &Running) -> std::net::SocketAddr {
    producer.addr.expect("a producer has an address")
}

/// Reads until the server closes the connection or `limit` passes: what it sent, and whether it
/// closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// One HTTP/1.1 answer read off `stream`: status, lower-case headers, body (by Content-Length).
async fn read_answer<R: AsyncReadExt + Unpin>(stream: &mut R) -> (u16, Vec<(String, String)>, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize =
                headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed in the middle of an answer");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (status, headers, String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned());
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_sent_request_is_closed_at_the_header_timeout() {
    let env = env().await;
    let producer = env.spawn_producer().await;

    let mut half = TcpStream::connect(addr(&producer)).await.unwrap();
    let started = Instant::now();
    half.write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (sent, closed) = read_until_closed(&mut half, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(closed, "a half-sent request stayed open for 10 s");
    assert!(!sent.contains("200 OK"), "{sent}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "closed after {waited:?}");

    // A connection that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(addr(&producer)).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed && started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // The server answers on.
    let api = env.api(&producer, "viewer").await;
    assert_eq!(api.get("/api/whoami").await.0, 200);
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_arrives_too_slowly_gets_408_with_the_error_body() {
    let env = env().await;
    let producer = env.spawn_producer().await;
    let token = env.token("admin").await;

    let stream = TcpStream::connect(addr(&producer)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let body = br#"{"name": "slow-token", "role": "viewer"}"#;
    let head = format!(
        "POST /api/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await.unwrap();
    // One byte every 300 ms: the whole body would take 12 s.
    let trickle = tokio::spawn(async move {
        for b in body {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let started = Instant::now();
    let (status, headers, text) =
        tokio::time::timeout(Duration::from_secs(8), read_answer(&mut read)).await.expect("an answer in time");
    let waited = started.elapsed();
    trickle.abort();
    assert_eq!(status, 408, "{text}");
    assert!(waited >= Duration::from_millis(1800) && waited < Duration::from_secs(6), "answered after {waited:?}");
    let body: Value = serde_json::from_str(&text).expect("a JSON error body");
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(body["message"].as_str().unwrap().contains("2 s"), "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    // The token was never created.
    let made: i64 = env.value("SELECT count(*) FROM api_tokens WHERE name = 'slow-token'").await;
    assert_eq!(made, 0);
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_wait_and_the_server_stays_up() {
    let env = env().await;
    let producer = env.spawn_producer().await;
    let base = format!("http://{}", addr(&producer));

    // Eight half-sent requests hold every connection the server serves.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr(&producer)).await.unwrap();
        s.write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Twenty more clients wait in the backlog; none is answered while the eight are held.
    let started = Instant::now();
    let excess: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{base}/livez");
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
                let status = client.get(url).timeout(Duration::from_secs(15)).send().await.map(|r| r.status().as_u16());
                (status, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(excess.iter().all(|t| !t.is_finished()), "a request beyond the limit was served at once");
    // The held ones time out (1 s), and every waiting client is served.
    for t in excess {
        let (status, at) = t.await.unwrap();
        assert_eq!(status.ok(), Some(200));
        assert!(at - started >= Duration::from_millis(500), "served after {:?}", at - started);
    }
    for mut s in held {
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "a held connection outlived the header timeout");
    }
    let api = env.api(&producer, "viewer").await;
    assert_eq!(api.get("/api/whoami").await.0, 200);
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_with_a_stuck_connection_returns_by_the_deadline() {
    let env = env().await;
    let producer = env.spawn_producer().await;
    // A client that asks for far more than the socket buffers hold and reads none of it: the
    // server's write of the answer in flight never finishes.
    let mut stuck = TcpStream::connect(addr(&producer)).await.unwrap();
    let request = "GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(400);
    stuck.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    producer.token.cancel();
    let handle = producer.handle;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!handle.is_finished(), "the stuck connection should hold the shutdown until the deadline");
    let result = tokio::time::timeout(Duration::from_secs(10), handle).await.expect("run_with returns");
    let waited = started.elapsed();
    result.unwrap().unwrap();
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5), "stopped after {waited:?}");
    drop(stuck);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_carries_nosniff_and_api_answers_no_store() {
    let env = env().await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let producer = env.spawn_producer().await;
    let base = format!("http://{}", addr(&producer));
    let admin = env.token("admin").await;
    let http = reqwest::Client::new();

    let (_, doc) = env.api(&producer, "admin").await.get("/api/openapi.json").await;
    let mut calls: Vec<(reqwest::Method, String, Option<Value>, Option<&str>)> = vec![
        // Created tokens: the answer holds the token's plaintext.
        (reqwest::Method::POST, "/api/tokens".into(), Some(json!({ "name": "fresh", "role": "viewer" })), Some(&admin)),
        (reqwest::Method::GET, "/api/openapi.json".into(), None, None),
        (reqwest::Method::GET, "/api/queues".into(), None, None),
        (reqwest::Method::GET, "/api/nothing-here".into(), None, Some(&admin)),
        (reqwest::Method::POST, "/api/integrations".into(), Some(json!({ "bad": 1 })), Some(&admin)),
    ];
    // Every documented GET without a path parameter, with an admin token.
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_some() && !path.contains('{') {
            calls.push((reqwest::Method::GET, path.clone(), None, Some(&admin)));
        }
    }
    calls.push((reqwest::Method::GET, "/api/integrations/acme".into(), None, Some(&admin)));
    assert!(calls.len() >= 15, "{}", calls.len());
    let mut created = None;
    for (method, path, body, token) in &calls {
        let mut req = http.request(method.clone(), format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let h = resp.headers();
        assert_eq!(h.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{method} {path}");
        assert_eq!(h.get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"), "{method} {path}");
        if path == "/api/tokens" && method == reqwest::Method::POST {
            assert_eq!(resp.status(), 201);
            created = resp.json::<Value>().await.unwrap()["token"].as_str().map(str::to_owned);
        }
    }
    assert!(created.is_some_and(|t| t.starts_with("sf_")), "the token answer was checked");

    // The dashboard may be cached (revalidated each load), is never framed, and is not sniffed;
    // the probes and metrics are not stored.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let h = page.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    for path in ["/livez", "/readyz", "/metrics"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_admin_sets_a_moodle_scope_and_hydrate_and_scope_are_audited() {
    let sandbox = Sandbox::start().await;
    let toml = format!("{}\n[packs.moodle]\ndisable_sync_category_on_startup = true\n", uni_toml(&sandbox, ""));
    let env = TestEnv::with_producer(LIMITS, &toml).await;
    let producer = env.spawn_producer().await;
    let operator = env.api(&producer, "operator").await;
    let admin = env.api(&producer, "admin").await;
    let username = syncfleet_tests::moodle::expected_users(&sandbox).await.into_iter().next().unwrap().1;
    let audit = |action: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, Value)>(
                "SELECT actor, target, detail FROM audit_log WHERE action = $1 ORDER BY id",
            )
            .bind(action)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };

    // An operator hydrates; the audit row names the token and the user.
    let (status, body) = operator.post(&format!("/api/integrations/uni/users/{username}/hydrate"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let rows = audit("user.hydrate").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.starts_with("token:operator-"), "{rows:?}");
    assert_eq!(rows[0].1, format!("uni/{username}"));
    assert_eq!(rows[0].2["outcome"], body["outcome"], "{rows:?}");

    // An operator may not set the scope: 403 before anything is read, nothing changed or audited.
    let scope = format!("/api/integrations/uni/users/{username}/scope");
    let (status, body) = operator.put(&scope, json!({ "department_source": "manual" })).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("this needs admin"), "{body}");
    let source: String =
        env.value(&format!("SELECT department_source FROM moodle_users WHERE username = '{username}'")).await;
    assert_eq!(source, "auto");
    assert!(audit("user.scope").await.is_empty());

    // An admin may, and the change is audited.
    let (status, body) = admin.put(&scope, json!({ "department_source": "manual" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["department_source"], "manual");
    let rows = audit("user.scope").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.starts_with("token:admin-"), "{rows:?}");
    assert_eq!(rows[0].1, format!("uni/{username}"));
    assert_eq!(rows[0].2["department_source"], "manual", "{rows:?}");

    // The document says which role each pack route needs.
    let (_, doc) = admin.get("/api/openapi.json").await;
    let path = &doc["paths"]["/api/integrations/{name}/users/{username}/scope"]["put"]["description"];
    assert!(path.as_str().unwrap().contains("Needs the `admin` role"), "{path}");
    producer.stop().await;
    env.finish().await;
}
