//! The upstream HTTP client against the sandbox and the real Redis: a rate budget shared by several
//! worker processes, `Retry-After` shared as a cool-down, retries on 5xx, no retry on 401.
//!
//! Every test starts its own sandbox in-process and uses its own Redis namespace `sft-http-<random>`.

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use syncfleet_sdk::http::{HttpClient, HttpClients, HttpError, Limits, RateBudget, Reservation};
use syncfleet_tests::{REDIS_URL, Sandbox};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const ERP_TOKEN: &str = "erp-token";

/// The sandbox listens on loopback, which the upstream policy refuses unless allowed.
fn loopback() -> syncfleet_shared::config::UpstreamConfig {
    syncfleet_shared::config::UpstreamConfig { allow_networks: vec!["127.0.0.0/8".into()], ..Default::default() }
}

fn namespace() -> String {
    format!("sft-http-{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff)
}

/// A budget on its own Redis connection, as one worker process has.
async fn budget(namespace: &str) -> RateBudget {
    let client = redis::Client::open(REDIS_URL).unwrap();
    RateBudget::new(client.get_connection_manager().await.expect("Redis on 127.0.0.1:6379"), namespace)
}

/// Deletes the keys of `upstream` (they also expire by themselves).
async fn purge(budget: &RateBudget, upstream: &str) {
    let mut conn = redis::Client::open(REDIS_URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(budget.rate_key(upstream))
        .arg(budget.cool_down_key(upstream))
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn erp_items(sandbox: &Sandbox) -> String {
    format!("{}/items", sandbox.handle.erp_url())
}

fn erp_auth(token: &str) -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {token}"))]
}

fn one_item() -> Vec<(String, String)> {
    vec![("limit".into(), "1".into())]
}

/// Quick retries so the tests stay short.
fn fast_limits() -> Limits {
    Limits { timeout_ms: 5_000, backoff_base_ms: 20, backoff_max_ms: 200, ..Limits::default() }
}

fn load(c: &std::sync::atomic::AtomicI64) -> i64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

async fn get_item(client: &HttpClient, sandbox: &Sandbox) -> Result<Value, HttpError> {
    client.get_json(&erp_items(sandbox), &erp_auth(ERP_TOKEN), &one_item(), &CancellationToken::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_one_rate_budget() {
    let sandbox = Sandbox::start().await;
    sandbox.faults("erp", json!({ "rate_per_sec": 10 })).await;
    let ns = namespace();
    let limits = Limits { rate_per_sec: Some(8.0), burst: 1, concurrency: 4, ..fast_limits() };
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(HttpClients::new(Some(budget(&ns).await), &loopback()).client(
            "erp-shared",
            &erp_items(&sandbox),
            &limits,
        ));
    }

    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in &clients {
        for _ in 0..16 {
            let (client, url) = (client.clone(), erp_items(&sandbox));
            tasks.spawn(async move {
                client.get_json(&url, &erp_auth(ERP_TOKEN), &one_item(), &CancellationToken::new()).await
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        let body = done.unwrap().expect("every request succeeds");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    }
    let elapsed = start.elapsed();

    let counters = sandbox.handle.counters()["erp"].clone();
    let calls: i64 = clients.iter().map(|c| load(&c.stats().api_calls)).sum();
    let waited: i64 = clients.iter().map(|c| load(&c.stats().waited_ms)).sum();
    assert!(counters["throttled"].as_u64().unwrap() <= 1, "the budget kept the fleet under the limit: {counters}");
    assert_eq!(counters["requests"].as_i64(), Some(calls));
    assert!(calls >= 48);
    // 48 requests at 8/s with a burst of 1: the last goes 47 intervals of 125 ms after the first.
    assert!(elapsed >= Duration::from_millis(5_500), "the budget held the workers back: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(clients.iter().all(|c| load(&c.stats().waited_ms) > 0), "every worker waited for its slots");
    println!("48 requests by 3 workers in {elapsed:?}, {waited} ms waited in total, counters {counters}");
    purge(&budget(&ns).await, "erp-shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_of_a_429_holds_back_every_worker() {
    let sandbox = Sandbox::start().await;
    sandbox.faults("erp", json!({ "rate_per_sec": 2 })).await;
    let ns = namespace();
    let upstream = "erp-cooling";
    let observer = budget(&ns).await;
    // No rate on our side: only the upstream's 429 and its `Retry-After: 1` slow the clients down.
    let limits = Limits { rate_per_sec: None, concurrency: 1, ..fast_limits() };
    let a = HttpClients::new(Some(budget(&ns).await), &loopback()).client(upstream, &erp_items(&sandbox), &limits);
    let b = HttpClients::new(Some(budget(&ns).await), &loopback()).client(upstream, &erp_items(&sandbox), &limits);

    // A sends one request after another until one is throttled (it then waits and retries).
    let worker_a = {
        let (a, url) = (a.clone(), erp_items(&sandbox));
        tokio::spawn(async move {
            for _ in 0..8 {
                a.get_json(&url, &erp_auth(ERP_TOKEN), &one_item(), &CancellationToken::new()).await.unwrap();
                if load(&a.stats().throttled) > 0 {
                    break;
                }
            }
        })
    };
    let start = Instant::now();
    let cooling = loop {
        if let Some(left) = observer.cooling(upstream).await.unwrap() {
            break left;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "A's 429 never set a cool-down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(cooling <= Duration::from_secs(1), "{cooling:?}");

    // B starts during the cool-down: it must wait it out instead of being throttled.
    let b_started = Instant::now();
    get_item(&b, &sandbox).await.expect("B succeeds after the cool-down");
    let b_took = b_started.elapsed();
    worker_a.await.unwrap();

    let b_stats = b.stats();
    assert_eq!(load(&b_stats.api_calls), 1, "B sent once, after the cool-down");
    assert_eq!(load(&b_stats.throttled), 0);
    assert_eq!(load(&b_stats.retries), 0);
    assert!(load(&b_stats.waited_ms) >= 500, "B waited for the cool-down: {b_stats:?}");
    assert!(b_took >= Duration::from_millis(500), "{b_took:?}");
    assert_eq!(load(&a.stats().throttled), 1);
    assert_eq!(load(&a.stats().retries), 1);
    let counters = sandbox.handle.counters()["erp"].clone();
    assert_eq!(counters["throttled"].as_u64(), Some(1), "only A's first 429: {counters}");
    assert_eq!(observer.cooling(upstream).await.unwrap(), None, "the cool-down ended");
    println!("cool-down seen {cooling:?}, B waited {} ms and took {b_took:?}", load(&b_stats.waited_ms));
    purge(&observer, upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_success() {
    let sandbox = Sandbox::start().await;
    sandbox.faults("erp", json!({ "error_5xx_share": 0.5 })).await;
    let client = HttpClients::new(None, &loopback()).client(
        "erp",
        &erp_items(&sandbox),
        &Limits { max_retries: 10, ..fast_limits() },
    );
    let requests = 8;
    for _ in 0..requests {
        let body = get_item(&client, &sandbox).await.expect("succeeds after retries");
        assert!(body["items"].is_array());
    }
    let stats = client.stats();
    let retries = load(&stats.retries);
    assert!(retries > 0, "half the answers were 5xx: {stats:?}");
    assert_eq!(load(&stats.api_calls), retries + requests);
    assert_eq!(load(&stats.throttled), 0);
    let counters = sandbox.handle.counters()["erp"].clone();
    assert_eq!(counters["errors_5xx"].as_i64(), Some(retries), "{counters}");
    assert_eq!(counters["requests"].as_i64(), Some(retries + requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_fails_at_once() {
    let sandbox = Sandbox::start().await;
    let client = HttpClients::new(None, &loopback()).client("erp", &erp_items(&sandbox), &fast_limits());
    let cancel = CancellationToken::new();
    let err = client.get_json(&erp_items(&sandbox), &erp_auth("wrong-token"), &one_item(), &cancel).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(matches!(&err, HttpError::Status { method, .. } if method == "GET"), "{err:?}");
    assert!(!err.to_string().contains("wrong-token"), "no credential in the error: {err}");
    assert_eq!(load(&client.stats().api_calls), 1);
    assert_eq!(load(&client.stats().retries), 0);
    assert_eq!(sandbox.handle.counters()["erp"]["requests"].as_u64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_a_decode_error_without_the_token() {
    let sandbox = Sandbox::start().await;
    let client = HttpClients::new(None, &loopback()).client("moodle", &sandbox.handle.moodle_url(), &fast_limits());
    // Without `moodlewsrestformat=json` Moodle answers XML.
    let query =
        vec![("wstoken".into(), "moodle-token".into()), ("wsfunction".into(), "core_course_get_categories".into())];
    let url = sandbox.handle.moodle_url();
    let err = client.get_json(&url, &[], &query, &CancellationToken::new()).await.unwrap_err();
    let HttpError::Decode { url, message } = &err else { panic!("expected a decode error, got {err:?}") };
    assert!(url.contains("wstoken=***") && !url.contains("moodle-token"), "{url}");
    assert!(message.contains("<?xml"), "the start of the body is kept: {message}");
    assert_eq!(load(&client.stats().api_calls), 1);
}

#[tokio::test]
async fn the_budget_spaces_slots_and_cool_downs_only_extend() {
    let ns = namespace();
    let budget = budget(&ns).await;
    // Burst 3 at 10/s: three slots now, then one every 100 ms.
    for _ in 0..3 {
        assert_eq!(budget.reserve("gcra", 10.0, 3).await.unwrap(), Reservation::Slot(Duration::ZERO));
    }
    let Reservation::Slot(fourth) = budget.reserve("gcra", 10.0, 3).await.unwrap() else { panic!("not cooling") };
    let Reservation::Slot(fifth) = budget.reserve("gcra", 10.0, 3).await.unwrap() else { panic!("not cooling") };
    assert!(fourth > Duration::from_millis(50) && fourth <= Duration::from_millis(100), "{fourth:?}");
    assert!(fifth > Duration::from_millis(150) && fifth <= Duration::from_millis(200), "{fifth:?}");

    budget.cool_down("gcra", Duration::from_secs(2)).await.unwrap();
    budget.cool_down("gcra", Duration::from_millis(100)).await.unwrap();
    let left = budget.cooling("gcra").await.unwrap().expect("cooling");
    assert!(left > Duration::from_millis(1_500), "a shorter cool-down does not shorten it: {left:?}");
    match budget.reserve("gcra", 10.0, 3).await.unwrap() {
        Reservation::CoolingDown(d) => assert!(d > Duration::from_millis(1_500), "{d:?}"),
        other => panic!("a slot was reserved during the cool-down: {other:?}"),
    }
    purge(&budget, "gcra").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_request_waiting_for_the_cool_down() {
    let ns = namespace();
    let budget = budget(&ns).await;
    budget.cool_down("held", Duration::from_secs(5)).await.unwrap();
    let client =
        HttpClients::new(Some(budget.clone()), &loopback()).client("held", "http://127.0.0.1:9", &fast_limits());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
    });
    let start = Instant::now();
    // Nothing listens on port 9: a request sent would fail, but none is sent.
    let err = client.get_json("http://127.0.0.1:9/items", &[], &[], &cancel).await.unwrap_err();
    assert!(matches!(err, HttpError::Cancelled), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(load(&client.stats().api_calls), 0);
    purge(&budget, "held").await;
}
