//! Stopping a worker and watching its queue consumers, against real `syncfleet-worker` processes.
//!
//! SIGTERM starts the drain at once: the worker fetches nothing more, running steps get
//! `worker.drain_timeout_secs`, then they are stopped, each attempt recorded as lost to the
//! infrastructure (retried at once, no error budget spent), and the process exits. The steps here
//! never end on their own: one waits out a `Retry-After` of 10 minutes, one pages without end.
//! A queue consumer whose Redis registration vanished registers again and takes the next job.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views;
use syncfleet_tests::{TestEnv, signal};

/// What the upstream answers.
const WAIT: u8 = 0;
const PAGING: u8 = 1;
const DONE: u8 = 2;

/// The drain timeout the stopping workers get.
const DRAIN_SECS: u64 = 2;

/// An upstream serving `GET /items?page=N`: in [`WAIT`] 503 with `Retry-After: 600` (under the
/// 900 s cap, so the client waits it out), in [`PAGING`] two records and a link to page N+1 after
/// 100 ms, without end, in [`DONE`] two records and no next link.
struct Upstream {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
}

impl Upstream {
    async fn start(mode: u8) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared { mode: Arc::new(AtomicU8::new(mode)), requests: Arc::default() };
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Upstream { addr, mode: shared.mode, requests: shared.requests, handle }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn answer(State(shared): State<Shared>, Query(q): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let page: u64 = q.iter().find(|(k, _)| k == "page").and_then(|(_, v)| v.parse().ok()).unwrap_or(1);
    let own = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    let items =
        json!([{ "id": (2 * page - 1).to_string(), "name": "a" }, { "id": (2 * page).to_string(), "name": "b" }]);
    match shared.mode.load(Ordering::SeqCst) {
        WAIT => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("600"));
            r
        }
        PAGING => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            axum::Json(json!({ "items": items, "next": format!("http://{own}/items?page={}", page + 1) }))
                .into_response()
        }
        _ => axum::Json(json!({ "items": items, "next": null })).into_response(),
    }
}

fn integration(base_url: &str) -> String {
    format!(
        r#"
[integrations.stuck]
pack = "http-json"
base_url = "{base_url}"
auth = {{ style = "bearer", secret_file = "stuck-token" }}
limits = {{ max_retries = 5, timeout_ms = 20000 }}
[integrations.stuck.entities.items]
path = "/items"
paging = {{ style = "page", limit = 2, next = "/next" }}
records = "/items"
id = "/id"
table = "stuck_items"
create_table = true
[integrations.stuck.entities.items.columns]
name = {{ path = "/name", type = "text" }}
"#
    )
}

/// (status, worker, attempts, lost attempts) of the run's `pull` step.
async fn pull_state(env: &TestEnv, run: RunId) -> (String, Option<String>, i32, i32) {
    sqlx::query_as(
        "SELECT status::text, worker, attempts, lost_attempts FROM step_runs WHERE run_id = $1 AND step = 'pull'",
    )
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Runs a step that never ends on its own (`mode`) on a worker process, sends SIGTERM once the
/// step is under way (`requests` seen by the upstream), and checks what a user would: the process
/// exits within the drain timeout plus a few seconds, the attempt is lost (not failed), and a
/// second worker completes the run once the upstream answers. Returns the exit time.
async fn sigterm_stops(mode: u8, requests: u64) -> Duration {
    let upstream = Upstream::start(mode).await;
    let env = TestEnv::new(&integration(&upstream.url())).await;
    let dir = env.config.secrets.dir.clone().expect("the harness sets a secrets directory");
    std::fs::write(dir.join("stuck-token"), "stuck-token\n").unwrap();
    let producer = env.spawn_producer().await;
    let name = format!("stopping-{}", env.id);
    let mut worker = env
        .worker_process(&name)
        .env("SYNCFLEET__WORKER__DRAIN_TIMEOUT_SECS", DRAIN_SECS.to_string())
        .spawn()
        .expect("spawn syncfleet-worker");
    let run = env.trigger_with("http_json_sync", "stuck", Mode::Incremental, false).await;
    env.eventually(Duration::from_secs(30), "the step to be under way on the worker", || async {
        let (status, on, _, _) = pull_state(&env, run).await;
        (status == "running" && on.is_some_and(|w| w.starts_with(&name)) && upstream.requests() >= requests)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(&worker, "TERM");
    let signalled = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker exits within a minute")
        .unwrap();
    let exited_in = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "a drained worker exits 0");
    assert!(
        exited_in < Duration::from_secs(DRAIN_SECS + 4),
        "SIGTERM with a {DRAIN_SECS} s drain timeout: the worker exited after {exited_in:?}"
    );
    let (status, _, attempts, lost) = pull_state(&env, run).await;
    assert_eq!(
        (status.as_str(), attempts, lost),
        ("ready", 1, 1),
        "the stopped attempt is lost to the infrastructure and the step is ready again at once"
    );
    let view = views::run(&env.pool, run).await.unwrap();
    assert_eq!(view.status, "running", "the run goes on: {view:#?}");

    // The upstream answers again: another worker completes the run.
    upstream.mode.store(DONE, Ordering::SeqCst);
    let next = env.spawn_worker("next").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let (_, on, attempts, lost) = pull_state(&env, run).await;
    assert_eq!((attempts, lost), (2, 1), "one lost attempt, one that succeeded");
    assert!(on.is_some_and(|w| w.starts_with("next")));
    let error_budget_left: i32 = sqlx::query_scalar(
        "SELECT max_attempts - (attempts - lost_attempts) FROM step_runs WHERE run_id = $1 AND step = 'pull'",
    )
    .bind(run.0)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(error_budget_left >= 2, "the lost attempt spent no error budget ({error_budget_left} left)");

    next.stop().await;
    producer.stop().await;
    env.finish().await;
    exited_in
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_step_waiting_out_a_long_retry_after_within_the_drain_timeout() {
    let exited_in = sigterm_stops(WAIT, 1).await;
    println!("step in a 600 s Retry-After wait: worker exited {exited_in:?} after SIGTERM (drain {DRAIN_SECS} s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_step_paging_without_end_within_the_drain_timeout() {
    let exited_in = sigterm_stops(PAGING, 5).await;
    println!("step paging without end: worker exited {exited_in:?} after SIGTERM (drain {DRAIN_SECS} s)");
}

/// The members of `{namespace}:{queue}:workers`.
async fn registered(env: &TestEnv, queue: &str) -> Vec<String> {
    env.ops.queues.workers(queue).await.unwrap().into_iter().map(|(name, _)| name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_whose_registration_vanished_registers_again_and_takes_the_next_job() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 10 })).await;
    let producer = env.spawn_producer().await;
    let name = format!("watched-{}", env.id);
    let worker = env.spawn_worker_process(&name);
    // The process is `{name}-{pid}-{suffix}`; each run of a queue's consumer adds `:{n}`.
    let first = env
        .eventually(Duration::from_secs(30), "the demo consumer to register", || async {
            registered(&env, "demo").await.into_iter().find(|w| w.starts_with(&name) && w.ends_with(":0"))
        })
        .await;

    // Redis loses the registration (as another worker does when it takes this one for dead).
    let mut conn = env.ops.queues.connection();
    let key = format!("{}:demo:workers", env.config.redis.namespace);
    let _: i64 = redis::cmd("ZREM").arg(&key).arg(&first).query_async(&mut conn).await.unwrap();
    let lost = Instant::now();
    let again = env
        .eventually(Duration::from_secs(15), "the demo consumer to register again", || async {
            registered(&env, "demo").await.into_iter().find(|w| w.starts_with(&name) && *w != first)
        })
        .await;
    println!("registration deleted: `{again}` registered {:?} later", lost.elapsed());
    let process = first.strip_suffix(":0").unwrap();
    assert_eq!(again, format!("{process}:1"), "the next run of the consumer registers under the next name");

    let run = env.trigger("demo_diamond", "acme").await;
    let view = env.wait(run, Duration::from_secs(60)).await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let ran_on: Vec<String> = sqlx::query_scalar("SELECT worker FROM step_runs WHERE run_id = $1")
        .bind(run.0)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(ran_on.iter().all(|w| w.starts_with(&name)), "the only worker ran every step: {ran_on:?}");

    drop(worker);
    producer.stop().await;
    env.finish().await;
}

/// A worker process under mixed load (demo chains on `demo`, an `http-json` pull on `sync`, idle
/// `partner` and `moodle` consumers) for `SYNCFLEET_SOAK_SECS` (default 60): every consumer stays
/// registered with a fresh heartbeat the whole time, and none stalls. Run it long by hand:
/// `SYNCFLEET_SOAK_SECS=3600 cargo nextest run -p syncfleet-tests --test worker_stop --run-ignored all
/// -E 'test(soak)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak: minutes long"]
async fn soak_every_consumer_keeps_fetching_under_mixed_load() {
    let soak =
        Duration::from_secs(std::env::var("SYNCFLEET_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let upstream = Upstream::start(DONE).await;
    let env = TestEnv::new(&integration(&upstream.url())).await;
    let dir = env.config.secrets.dir.clone().expect("the harness sets a secrets directory");
    std::fs::write(dir.join("stuck-token"), "stuck-token\n").unwrap();
    env.demo_integration("acme", json!({ "step_ms": 50 })).await;
    let producer = env.spawn_producer().await;
    let name = format!("soak-{}", env.id);
    let mut worker =
        env.worker_process(&name).stderr(std::process::Stdio::piped()).spawn().expect("spawn syncfleet-worker");
    let stderr = worker.stderr.take().unwrap();
    let lines = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    let queues = env.registry.build(&env.config).unwrap().0.queues();
    let started = Instant::now();
    let (mut runs, mut checks, mut stale) = (0, 0, Vec::new());
    while started.elapsed() < soak {
        for (chain, integration, mode) in
            [("demo_diamond", "acme", Mode::Full), ("http_json_sync", "stuck", Mode::Incremental)]
        {
            let run = env.trigger_with(chain, integration, mode, false).await;
            let view = env.wait(run, Duration::from_secs(60)).await;
            assert_eq!(view.status, "completed", "{view:#?}");
            runs += 1;
        }
        let now = chrono::Utc::now().timestamp() as f64;
        for queue in &queues {
            let workers = env.ops.queues.workers(queue).await.unwrap();
            let fresh = workers.iter().any(|(w, seen)| w.starts_with(&name) && now - seen <= 5.0);
            if !fresh {
                stale.push(format!("{queue} at {:?}: {workers:?}", started.elapsed()));
            }
        }
        checks += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    signal(&worker, "TERM");
    tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("the worker exits").unwrap();
    let lines = lines.await.unwrap();
    let stalls: Vec<&String> =
        lines.iter().filter(|l| l.contains("stalled") || l.contains("Queue consumers")).collect();
    println!("soak {soak:?}: {runs} runs, {checks} registration checks, stale: {stale:?}, stall lines: {stalls:#?}");
    assert!(stale.is_empty(), "a consumer's registration went stale: {stale:#?}");
    assert!(stalls.is_empty(), "{stalls:#?}");
    producer.stop().await;
    env.finish().await;
}
