//! Issue #18, the upstream policy: a hostile upstream ([`Hostile`], started by each test) cannot make
//! a step read without end, loop, send the integration's credentials elsewhere, freeze the other
//! integrations on its upstream key, reach private networks, or put secrets into step errors.
//!
//! Every integration is `http-json`, pointed at a scenario of the hostile server, and carries three
//! credentials the tests grep for: a bearer token (a secret file), a static `X-Api-Key` header and
//! an `access` query parameter. Outcomes are checked as a user would: the run and step records of
//! the store's views (what `GET /api/runs/{id}` shows), the hostile servers' own request logs, and
//! the worker process's peak memory.

use std::time::{Duration, Instant};

use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::{self, RunView, StepView};
use syncfleet_tests::{TestEnv, hostile::Hostile};

const TOKEN: &str = "trust-bearer-7f3a9c1e5b";
const API_KEY: &str = "trust-static-key-2d8e4b6a";
const QUERY_SECRET: &str = "trust-query-secret-9b1c";
/// Secret-looking values the hostile server puts into its own error body.
const UPSTREAM_SECRETS: [&str; 2] = ["hunter2-upstream", "0123456789abcdef0123456789abcdef"];

/// An `http-json` integration `name` reading `{base_url}/items` page by page (next link at `/next`),
/// with the three credentials, under the budget key `upstream`.
fn integration(name: &str, base_url: &str, upstream: &str) -> String {
    format!(
        r#"
[integrations.{name}]
pack = "http-json"
base_url = "{base_url}"
upstream = "{upstream}"
auth = {{ style = "bearer", secret_file = "trust-token" }}
headers = {{ "X-Api-Key" = "{API_KEY}" }}
limits = {{ max_retries = 2, backoff_base_ms = 50, backoff_max_ms = 100, timeout_ms = 20000 }}
[integrations.{name}.entities.items]
path = "/items"
query = {{ access = "{QUERY_SECRET}" }}
paging = {{ style = "page", limit = 2, next = "/next" }}
records = "/items"
id = "/id"
table = "trust_{name}"
create_table = true
[integrations.{name}.entities.items.columns]
name = {{ path = "/name", type = "text" }}
"#
    )
}

/// A test env with `toml`'s integrations and the bearer token in its secrets directory.
async fn env_with(toml: &str) -> TestEnv {
    let env = TestEnv::new(toml).await;
    write_token(&env);
    env
}

fn write_token(env: &TestEnv) {
    let dir = env.config.secrets.dir.clone().expect("the harness sets a secrets directory");
    std::fs::write(dir.join("trust-token"), format!("{TOKEN}\n")).unwrap();
}

async fn run_view(env: &TestEnv, run: RunId) -> RunView {
    views::run(&env.pool, run).await.expect("the run's view")
}

/// The only step of an `http_json_sync` run.
fn pull_step(run: &RunView) -> &StepView {
    run.steps.iter().find(|s| s.step == "pull").expect("a pull step")
}

/// The step's error, asserting it has one.
fn step_error(run: &RunView) -> String {
    pull_step(run).error.clone().unwrap_or_else(|| panic!("the step has an error: {run:#?}"))
}

/// Asserts that nothing of `run` as the API shows it carries a credential or an upstream secret.
fn assert_no_secret(run: &RunView) {
    let shown = serde_json::to_string(run).unwrap();
    for secret in [TOKEN, API_KEY, QUERY_SECRET].iter().chain(UPSTREAM_SECRETS.iter()) {
        assert!(!shown.contains(secret), "`{secret}` is shown in the run record: {shown}");
    }
}

/// Triggers a full `http_json_sync` of `integration` and waits for the run to end.
async fn sync(env: &TestEnv, integration: &str, limit: Duration) -> (RunView, Duration) {
    let started = Instant::now();
    let run = env.trigger_with("http_json_sync", integration, Mode::Full, false).await;
    env.wait(run, limit).await;
    (run_view(env, run).await, started.elapsed())
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM in kB");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_300_mb_answer_fails_the_step_while_the_worker_stays_small() {
    let upstream = Hostile::start().await;
    let env = env_with(&integration("huge", &format!("{}/huge", upstream.url()), "trust-huge")).await;
    let mut worker = env.spawn_worker_process("trust-rss");
    let pid = worker.id().expect("the worker runs");

    let (run, took) = sync(&env, "huge", Duration::from_secs(90)).await;
    let peak = peak_rss(pid);
    worker.kill().await.ok();

    assert_eq!(run.status, "failed", "{run:#?}");
    let error = step_error(&run);
    assert!(error.contains("the answer is larger than 33554432 bytes (upstream.max_body_bytes); not read"), "{error}");
    assert_eq!(pull_step(&run).attempts, 1, "too large is permanent: not retried");
    assert_eq!(upstream.requests_to("/huge").len(), 1);
    let sent = upstream.huge_sent();
    assert!(sent < syncfleet_tests::hostile::HUGE_BYTES / 3, "the worker stopped reading early: {sent} bytes sent");
    assert!(peak < 150 * 1024 * 1024, "the worker's peak RSS is {} MB", peak / (1024 * 1024));
    assert_no_secret(&run);
    println!(
        "300 MB answer: step failed in {took:?}; worker peak RSS (VmHWM) {:.1} MB; the server handed out {:.1} MB",
        peak as f64 / 1_048_576.0,
        sent as f64 / 1_048_576.0
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_next_link_ends_the_step_within_seconds() {
    let upstream = Hostile::start().await;
    let env = env_with(&integration("looping", &format!("{}/loop", upstream.url()), "trust-loop")).await;
    let worker = env.spawn_worker("trust-loop").await;

    let (run, took) = sync(&env, "looping", Duration::from_secs(30)).await;
    worker.stop().await;

    assert_eq!(run.status, "failed", "{run:#?}");
    assert!(took < Duration::from_secs(10), "the step ended in {took:?}");
    let error = step_error(&run);
    assert!(error.contains("repeated after 2 pages: the upstream is looping"), "{error}");
    assert!(error.contains("/loop/items?page=***&sig=***"), "the link is shown redacted: {error}");
    assert!(!error.contains("hostile-signature"), "{error}");
    assert_eq!(pull_step(&run).attempts, 1, "a looping upstream is permanent: not retried");
    // The first page and the next link once; the repeat is refused before it is sent.
    assert_eq!(upstream.requests_to("/loop").len(), 2);
    assert_no_secret(&run);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_origin_links_and_redirects_receive_no_credential() {
    let upstream = Hostile::start().await;
    let elsewhere = Hostile::start().await;
    upstream.send_elsewhere(&elsewhere.url());
    let base = upstream.url();
    let toml = [
        integration("offorigin", &format!("{base}/offorigin"), "trust-origin"),
        integration("redirected", &format!("{base}/redirect"), "trust-origin"),
        integration("samehop", &format!("{base}/samehop"), "trust-origin"),
    ]
    .concat();
    let env = env_with(&toml).await;
    let worker = env.spawn_worker("trust-origin").await;

    let (link, _) = sync(&env, "offorigin", Duration::from_secs(30)).await;
    let (redirect, _) = sync(&env, "redirected", Duration::from_secs(30)).await;
    let (same, _) = sync(&env, "samehop", Duration::from_secs(30)).await;
    worker.stop().await;

    // The other origin got nothing at all: no request, so no header and no query parameter.
    assert!(elsewhere.requests().is_empty(), "the other origin was reached: {:#?}", elsewhere.requests());

    assert_eq!(link.status, "failed", "{link:#?}");
    let error = step_error(&link);
    let other = elsewhere.addr.to_string();
    assert!(
        error.contains(&format!("host {other} is not the integration's origin {base}"))
            && error.contains("nothing was sent"),
        "{error}"
    );
    assert!(error.contains("/collect/items?page=***"), "{error}");
    assert_eq!(pull_step(&link).attempts, 1, "an off-origin link is permanent");

    assert_eq!(redirect.status, "failed", "{redirect:#?}");
    let error = step_error(&redirect);
    assert!(
        error.contains(&format!("answered 302 redirecting to http://{other}/collect/items?page=***: not followed")),
        "{error}"
    );

    // The credentials were in play: the integration's own origin got all three of them, also after
    // a redirect on that origin, which is followed.
    assert_eq!(same.status, "completed", "{same:#?}");
    assert_eq!(pull_step(&same).fetched, 2);
    for path in ["/offorigin/items", "/redirect/items", "/ok/items"] {
        let requests = upstream.requests_to(path);
        assert!(!requests.is_empty(), "{path} was asked");
        for r in requests {
            assert_eq!(r.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()), "{}", r.text());
            assert_eq!(r.header("x-api-key"), Some(API_KEY), "{}", r.text());
            assert!(r.query.contains(&format!("access={QUERY_SECRET}")), "{}", r.text());
        }
    }
    for run in [&link, &redirect, &same] {
        assert_no_secret(run);
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_long_retry_after_leaves_the_other_integrations_on_its_upstream_running() {
    let upstream = Hostile::start().await;
    let base = upstream.url();
    let toml = [
        integration("throttled", &format!("{base}/throttle"), "trust-shared"),
        integration("neighbour", &format!("{base}/ok"), "trust-shared"),
    ]
    .concat();
    let env = env_with(&toml).await;
    let worker = env.spawn_worker("trust-throttle").await;

    let a = env.trigger_with("http_json_sync", "throttled", Mode::Full, false).await;
    let a_step = env
        .eventually(Duration::from_secs(15), "A's attempt to fail", || async {
            let run = run_view(&env, a).await;
            pull_step(&run).error.is_some().then(|| pull_step(&run).clone())
        })
        .await;
    let (b, b_took) = sync(&env, "neighbour", Duration::from_secs(30)).await;

    // B, on the same upstream key, ran at once: no fleet-wide cool-down was set.
    assert_eq!(b.status, "completed", "{b:#?}");
    assert_eq!(pull_step(&b).fetched, 2);
    assert!(b_took < Duration::from_secs(10), "B took {b_took:?}");
    let mut redis =
        redis::Client::open(env.config.redis.url.expose()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let cooling: i64 = redis::cmd("EXISTS")
        .arg(format!("{}:cooldown:trust-shared", env.config.redis.namespace))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cooling, 0, "no cool-down of the shared upstream");

    // A's step failed its attempt at once with a clear message, and waits to be retried after the
    // cap (15 minutes), not a day.
    let error = a_step.error.clone().unwrap();
    assert!(
        error.contains("/throttle/items?access=***&page=***&limit=*** answered 429 asking to wait 86400 s"),
        "{error}"
    );
    assert!(
        error.contains("more than upstream.max_retry_after_secs (900 s): not waited for, the step is retried later"),
        "{error}"
    );
    let run_a = run_view(&env, a).await;
    assert_eq!(run_a.status, "running", "A's run waits for its retry: {run_a:#?}");
    assert_eq!(pull_step(&run_a).status, "ready", "{run_a:#?}");
    assert_eq!(pull_step(&run_a).attempts, 1);
    let retry_in: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM not_before - now())::float8 FROM step_runs WHERE run_id = $1 AND step = 'pull'",
    )
    .bind(a.0)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!((800.0..=905.0).contains(&retry_in), "A is retried after the cap: in {retry_in} s");
    assert_eq!(upstream.requests_to("/throttle").len(), 1, "the hint was not waited for within the step");
    assert_no_secret(&run_a);
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_local_and_private_base_urls_are_refused_without_connecting() {
    let toml = [
        integration("metadata", "http://169.254.169.254/latest", "trust-private"),
        integration("intranet", "http://10.11.12.13:8080/api", "trust-private"),
        integration("mapped", "http://[::ffff:169.254.169.254]/latest", "trust-private"),
    ]
    .concat();
    let env = env_with(&toml).await;
    let worker = env.spawn_worker("trust-private").await;
    for (name, address, kind) in [
        ("metadata", "169.254.169.254", "link-local"),
        ("intranet", "10.11.12.13", "private"),
        ("mapped", "169.254.169.254", "link-local"),
    ] {
        let (run, took) = sync(&env, name, Duration::from_secs(30)).await;
        assert_eq!(run.status, "failed", "{run:#?}");
        // A connection to either address would wait out its connect timeout (10 s) on each try.
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        let error = step_error(&run);
        assert!(
            error.contains(&format!(
                "upstream address {address} is in a non-public network ({kind}); allow it with upstream.allow_networks"
            )),
            "{error}"
        );
        assert_eq!(pull_step(&run).attempts, 1, "refused for good");
        assert_eq!(pull_step(&run).api_calls, 0, "nothing was sent");
        assert_no_secret(&run);
    }
    worker.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loopback_is_refused_unless_allow_listed() {
    let upstream = Hostile::start().await;
    let port = upstream.addr.port();
    // This deployment allows no network: the harness's loopback allowance is replaced.
    let toml = [
        "[upstream]\nallow_networks = []\n".to_owned(),
        integration("by_address", &format!("http://127.0.0.1:{port}/ok"), "trust-loopback"),
        integration("by_name", &format!("http://localhost:{port}/ok"), "trust-loopback"),
    ]
    .concat();
    let env = env_with(&toml).await;
    assert!(env.config.upstream.allow_networks.is_empty());
    let worker = env.spawn_worker("trust-loopback").await;

    let (by_address, _) = sync(&env, "by_address", Duration::from_secs(30)).await;
    let (by_name, _) = sync(&env, "by_name", Duration::from_secs(30)).await;
    worker.stop().await;

    assert!(upstream.requests().is_empty(), "the loopback server was reached: {:#?}", upstream.requests());
    assert_eq!(by_address.status, "failed", "{by_address:#?}");
    let error = step_error(&by_address);
    assert!(
        error.contains(
            "upstream address 127.0.0.1 is in a non-public network (loopback); allow it with upstream.allow_networks"
        ),
        "{error}"
    );
    // A name is checked as it resolves, when the connection is made.
    assert_eq!(by_name.status, "failed", "{by_name:#?}");
    let error = step_error(&by_name);
    assert!(
        error.contains("(of localhost) is in a non-public network (loopback); allow it with upstream.allow_networks"),
        "{error}"
    );
    assert_eq!(pull_step(&by_name).attempts, 1, "refused for good");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_refusal_shows_no_credential_and_no_query_value() {
    let upstream = Hostile::start().await;
    let env = env_with(&integration("refused", &format!("{}/refuse", upstream.url()), "trust-refuse")).await;
    let worker = env.spawn_worker("trust-refuse").await;

    let (run, _) = sync(&env, "refused", Duration::from_secs(30)).await;
    worker.stop().await;

    assert_eq!(run.status, "failed", "{run:#?}");
    let error = step_error(&run);
    assert!(error.contains("GET "), "{error}");
    assert!(error.contains("/refuse/items?access=***&page=***&limit=*** answered 401: "), "{error}");
    assert!(error.contains("answered 401: "), "{error}");
    assert!(error.contains("invalid credentials"), "the start of the upstream's answer is kept: {error}");
    // Every query value is masked, every credential and upstream secret is gone from the step's
    // error, the run's error and everything else the run record shows.
    assert!(!error.contains("page=1") && !error.contains("limit=2"), "{error}");
    let excerpt = error.split("answered 401: ").nth(1).unwrap_or_default();
    assert!(excerpt.chars().count() <= 101, "a short excerpt: {excerpt}");
    println!("step error after a 401 that echoed the credentials: {error}");
    assert_no_secret(&run);
    // The upstream did get the credentials (it echoed them back).
    let got = upstream.requests_to("/refuse");
    assert_eq!(got.len(), 1, "a refusal is not retried");
    assert!(got[0].text().contains(TOKEN) && got[0].text().contains(API_KEY) && got[0].text().contains(QUERY_SECRET));
    env.finish().await;
}
