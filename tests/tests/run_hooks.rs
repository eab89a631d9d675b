//! Run lifecycle hooks: a signed `POST` of the run record on `run.started` and `run.ended`,
//! fleet-wide (`[hooks]`) or per integration (`hooks_url`), delivered by the producer's reconciler
//! with retries recorded in `run_hooks`, never holding up the run.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    routing::post,
};
use serde_json::{Value, json};
use syncfleet_producer::auth;
use syncfleet_shared::chain::Mode;
use syncfleet_tests::TestEnv;
use tokio::net::TcpListener;

const FLEET_KEY: &[u8] = b"fleet-hook-key-0123456789abcdef0123456789";
const ACME_KEY: &[u8] = b"acme-hook-key-0123456789abcdef0123456789ab";

/// One call the receiver got.
#[derive(Debug, Clone)]
struct Call {
    path_and_query: String,
    timestamp: Option<String>,
    signature: Option<String>,
    event: Option<String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A hook receiver on loopback that fails the first `failures` calls with 500.
#[derive(Clone)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<AtomicUsize>,
    url: String,
}

impl Receiver {
    async fn start(failures: usize, path_and_query: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path_and_query}", listener.local_addr().unwrap());
        let r = Receiver { calls: Arc::default(), failures: Arc::new(AtomicUsize::new(failures)), url };
        let app = Router::new().route("/{*path}", post(receive)).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The accepted calls of `event` for `run`.
    fn accepted(&self, run: &str, event: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 200 && c.event.as_deref() == Some(event) && c.json()["run"]["id"] == run)
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let failing = r.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if failing { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    r.calls.lock().unwrap().push(Call {
        path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        timestamp: header("x-syncfleet-timestamp"),
        signature: header("x-syncfleet-signature"),
        event: header("x-syncfleet-event"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

/// Checks the call's signature with `key`, as our own webhook endpoint checks incoming ones.
fn verifies(call: &Call, key: &[u8]) -> bool {
    auth::verify_signature(
        key,
        call.timestamp.as_deref(),
        call.signature.as_deref(),
        "POST",
        &call.path_and_query,
        &call.body,
        chrono::Utc::now().timestamp(),
    )
    .is_ok()
}

fn write_secret(env: &TestEnv, name: &str, key: &[u8]) {
    let dir = env.config.secrets.dir.clone().unwrap();
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    std::fs::write(dir.join("hooks").join(name), [key, b"\n"].concat()).unwrap();
}

/// (event, state, attempts, last_error, delivered) of the run's hooks, `run.started` first.
async fn hook_rows(env: &TestEnv, run: &str) -> Vec<(String, String, i32, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT event, state, attempts, last_error, delivered_at IS NOT NULL FROM run_hooks
          WHERE run_id = $1::uuid ORDER BY event DESC",
    )
    .bind(run)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_post_signed_run_records_and_retry_until_delivered() {
    // The fleet-wide receiver fails twice, then accepts.
    let fleet = Receiver::start(2, "/hooks/syncfleet?channel=runs").await;
    let toml = format!(
        "[hooks]\nurl = \"{}\"\nsecret_file = \"hooks/fleet\"\nretry_secs = 1\n\n\
         [integrations.acme]\npack = \"demo\"\nstep_ms = 0\n",
        fleet.url
    );
    let env = TestEnv::new(&toml).await;
    write_secret(&env, "fleet", FLEET_KEY);
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    let view = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let run = view.id.clone();

    let ended = env
        .eventually(Duration::from_secs(30), "run.ended delivered", || {
            let fleet = fleet.clone();
            let run = run.clone();
            async move { fleet.accepted(&run, "run.ended").pop() }
        })
        .await;
    let started = fleet.accepted(&run, "run.started");
    assert_eq!(started.len(), 1, "run.started delivered once: {:#?}", fleet.calls());
    let started = &started[0];

    // Two failed deliveries of run.started, then the third accepted, before run.ended (in order).
    let calls = fleet.calls();
    let events: Vec<(Option<&str>, u16)> = calls.iter().map(|c| (c.event.as_deref(), c.status)).collect();
    assert_eq!(
        events,
        [(Some("run.started"), 500), (Some("run.started"), 500), (Some("run.started"), 200), (Some("run.ended"), 200)],
        "run.started tried three times, run.ended after it"
    );
    for c in &calls {
        assert!(verifies(c, FLEET_KEY), "the signature verifies with the configured key: {c:?}");
        assert!(!verifies(c, ACME_KEY), "and with no other key");
        assert_eq!(c.path_and_query, "/hooks/syncfleet?channel=runs", "signed over the hook's path and query");
    }

    // The body is the event and the run record the API returns.
    let (started, ended) = (started.json(), ended.json());
    assert_eq!(started["event"], "run.started");
    assert_eq!(ended["event"], "run.ended");
    let api = env.api(&producer, "viewer").await;
    let (status, record) = api.get(&format!("/api/runs/{run}")).await;
    assert_eq!(status, 200);
    assert_eq!(ended["run"], record, "run.ended carries the run record as the API shows it");
    assert_eq!(ended["run"]["status"], "completed");
    assert_eq!(started["run"]["id"], json!(run));
    assert_eq!(started["run"]["chain"], "demo_diamond");
    assert_eq!(started["run"]["integration"], "acme");

    // The table records the attempts.
    let rows = hook_rows(&env, &run).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (event, state, attempts, last_error, delivered) = &rows[0];
    assert_eq!((event.as_str(), state.as_str(), *attempts, *delivered), ("run.started", "delivered", 3, true));
    assert!(last_error.is_none(), "a delivery clears the error: {last_error:?}");
    let (event, state, attempts, _, delivered) = &rows[1];
    assert_eq!((event.as_str(), state.as_str(), *attempts, *delivered), ("run.ended", "delivered", 1, true));

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_integrations_own_hook_replaces_the_fleets_and_a_receiver_that_hangs_never_delays_a_run() {
    // The fleet-wide hook accepts connections and never answers.
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://user:pw@{}/hang?token=s3cr3t", hanging.local_addr().unwrap());
    let held = Arc::new(Mutex::new(vec![]));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hanging.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let own = Receiver::start(0, "/acme").await;
    let toml = format!(
        "[hooks]\nurl = \"{hanging_url}\"\nsecret_file = \"hooks/fleet\"\nretry_secs = 1\ntimeout_secs = 3\n\n\
         [integrations.acme]\npack = \"demo\"\nstep_ms = 0\nhooks_url = \"{}\"\nhooks_secret_ref = \"file:hooks/acme\"\n\n\
         [integrations.beta]\npack = \"demo\"\nstep_ms = 0\n",
        own.url
    );
    let env = TestEnv::new(&toml).await;
    write_secret(&env, "fleet", FLEET_KEY);
    write_secret(&env, "acme", ACME_KEY);
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;

    // The usual time of a run whose hook answers at once…
    let t = Instant::now();
    let acme = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    let usual = t.elapsed();
    assert_eq!(acme.status, "completed");
    // …and of runs while the fleet's receiver holds every delivery for its whole timeout.
    for _ in 0..2 {
        let t = Instant::now();
        let beta = env.run_to_end("demo_diamond", "beta", Mode::Full, false).await;
        assert_eq!(beta.status, "completed");
        assert!(
            t.elapsed() < usual * 3 + Duration::from_secs(1),
            "a hanging hook receiver does not delay the run: {:?} vs {usual:?}",
            t.elapsed()
        );
    }

    // acme's hooks go to its own receiver, signed with its own key.
    let run = acme.id.clone();
    env.eventually(Duration::from_secs(20), "acme's hooks delivered", || {
        let own = own.clone();
        let run = run.clone();
        async move { (!own.accepted(&run, "run.ended").is_empty()).then_some(()) }
    })
    .await;
    assert_eq!(own.accepted(&run, "run.started").len(), 1);
    assert!(own.calls().iter().all(|c| verifies(c, ACME_KEY) && c.json()["run"]["integration"] == "acme"));

    // beta's deliveries time out and are retried; the error names the hook without its secrets.
    let beta_run: String =
        env.value("SELECT id::text FROM chain_runs WHERE integration_id = (SELECT id FROM integrations WHERE name = 'beta') ORDER BY created_at LIMIT 1").await;
    let rows = env
        .eventually(Duration::from_secs(30), "a failed delivery recorded", || {
            let env = &env;
            let run = beta_run.clone();
            async move {
                let rows = hook_rows(env, &run).await;
                rows.iter().any(|r| r.0 == "run.started" && r.3.is_some()).then_some(rows)
            }
        })
        .await;
    let (_, state, attempts, error, delivered) = &rows[0];
    assert_eq!((state.as_str(), *delivered), ("pending", false), "{rows:?}");
    assert!(*attempts >= 1);
    let error = error.as_deref().unwrap();
    assert!(!error.contains("s3cr3t") && !error.contains("pw@"), "no query value or user info: {error}");
    assert!(rows.iter().all(|r| !(r.0 == "run.ended" && r.2 > 0)), "run.ended waits for run.started: {rows:?}");

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_run_sends_its_end() {
    let fleet = Receiver::start(0, "/runs").await;
    let toml = format!(
        "[hooks]\nurl = \"{}\"\nsecret_file = \"hooks/fleet\"\nretry_secs = 1\n\n\
         [integrations.slow]\npack = \"demo\"\nstep_ms = 3000\n",
        fleet.url
    );
    let env = TestEnv::new(&toml).await;
    write_secret(&env, "fleet", FLEET_KEY);
    let producer = env.spawn_producer().await;
    let worker = env.spawn_worker("w").await;
    let run = env.trigger("demo_diamond", "slow").await.to_string();
    env.eventually(Duration::from_secs(20), "run.started delivered", || {
        let fleet = fleet.clone();
        let run = run.clone();
        async move { (!fleet.accepted(&run, "run.started").is_empty()).then_some(()) }
    })
    .await;
    env.ops.cancel(run.parse().unwrap(), "test").await.unwrap();
    let ended = env
        .eventually(Duration::from_secs(20), "run.ended delivered", || {
            let fleet = fleet.clone();
            let run = run.clone();
            async move { fleet.accepted(&run, "run.ended").pop() }
        })
        .await;
    assert_eq!(ended.json()["run"]["status"], "cancelled");
    assert!(verifies(&ended, FLEET_KEY));

    worker.stop().await;
    producer.stop().await;
    env.finish().await;
}
