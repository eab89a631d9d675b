//! Test harness: every test gets its own PostgreSQL database and Redis key namespace on the
//! machine's real servers, starts the real producer and workers (in-process on port 0, or as
//! child processes of the built binaries), and cleans up after itself.

pub mod chaos;
pub mod hostile;
pub mod moodle;
pub mod partner;
pub mod processes;

use std::{
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use syncfleet_cli::wait_for;
use syncfleet_producer::{Ops, ops::Trigger};
use syncfleet_runtime::telemetry;
use syncfleet_sdk::Registry;
use syncfleet_shared::{
    chain::Mode,
    config::{Config, DatabaseConfig, Secret},
    ids::RunId,
};
use syncfleet_store::{self as store, runs::TriggerKind, views::RunView};
use syncfleet_worker::{Engine, worker_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub struct TestEnv {
    pub id: String,
    pub config: Config,
    pub config_path: PathBuf,
    pub ops: Ops,
    pub pool: PgPool,
    /// The packs this test runs: the build's (`syncfleet_registry::builtin()`), or the test's own.
    pub registry: Registry,
}

/// A producer or worker engine running in this process.
pub struct Running {
    pub token: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub addr: Option<std::net::SocketAddr>,
    pub name: String,
}

impl Running {
    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

impl TestEnv {
    /// A fresh database and namespace; `extra_toml` is appended to the generated config.
    pub async fn new(extra_toml: &str) -> TestEnv {
        Self::build(REDIS_URL, "", "", extra_toml).await
    }

    /// `top_lines` are top-level keys of the config (`min_interval_secs = 60`).
    pub async fn with_top_level(top_lines: &str, extra_toml: &str) -> TestEnv {
        Self::build(REDIS_URL, top_lines, "", extra_toml).await
    }

    /// `producer_lines` go into the `[producer]` table.
    pub async fn with_producer(producer_lines: &str, extra_toml: &str) -> TestEnv {
        Self::build(REDIS_URL, "", producer_lines, extra_toml).await
    }

    pub async fn with_redis(redis_url: &str, extra_toml: &str) -> TestEnv {
        Self::build(redis_url, "", "", extra_toml).await
    }

    /// A test env whose producer and workers run the packs of `registry` (a test's own pack).
    pub async fn with_registry(registry: Registry, extra_toml: &str) -> TestEnv {
        Self::build_with(registry, REDIS_URL, "", "", extra_toml).await
    }

    async fn build(redis_url: &str, top_lines: &str, producer_lines: &str, extra_toml: &str) -> TestEnv {
        Self::build_with(syncfleet_registry::builtin(), redis_url, top_lines, producer_lines, extra_toml).await
    }

    async fn build_with(
        registry: Registry,
        redis_url: &str,
        top_lines: &str,
        producer_lines: &str,
        extra_toml: &str,
    ) -> TestEnv {
        Self::build_on(PG_SERVER, registry, redis_url, top_lines, producer_lines, extra_toml).await
    }

    /// A test env on the PostgreSQL server of `server` (`postgres://SUPERUSER@HOST:PORT`, as
    /// [`PG_SERVER`]): the harness creates the test roles there ([`test_roles`]), creates and
    /// migrates the test's database as [`OWNER_ROLE`] (registering the config's integrations), and
    /// the producer, the workers and the CLI connect as [`RUNTIME_ROLE`]. The config file holds
    /// only the runtime role's URL, as a deployment's producers and workers do.
    pub async fn build_on(
        server: &str,
        registry: Registry,
        redis_url: &str,
        top_lines: &str,
        producer_lines: &str,
        extra_toml: &str,
    ) -> TestEnv {
        telemetry::init_test();
        test_roles(server).await;
        let id = format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        let database = format!("sf_test_{id}");
        let runtime_url = store::roles::with_user(&format!("{server}/{database}"), RUNTIME_ROLE);
        // Secrets are files under the test's own `[secrets] dir` (the sandbox's keys among them),
        // which the spawned worker processes read through the same config file.
        let secrets_dir = std::env::temp_dir().join(format!("syncfleet-test-secrets-{id}"));
        syncfleet_sandbox::write_secret_files(&secrets_dir, &syncfleet_sandbox::SandboxConfig::default())
            .expect("write the test's secret files");
        let secrets_dir = secrets_dir.display();
        // The sandbox and the tests' own upstreams listen on loopback, which the upstream policy
        // refuses unless allowed; a test that declares its own `[upstream]` decides itself.
        let upstream = if extra_toml.contains("[upstream]") {
            ""
        } else {
            "[upstream]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\n"
        };
        let toml = format!(
            "environment = \"test\"\n{top_lines}\n\
             [database]\nurl = \"{runtime_url}\"\nmax_connections = 20\n\
             [redis]\nurl = \"{redis_url}\"\nnamespace = \"sft-{id}\"\n\
             [worker]\nconcurrency = 4\npoll_interval_ms = 20\nheartbeat_secs = 1\nlease_ttl_secs = 4\nlease_retry_ms = 50\ndrain_timeout_secs = 30\nlisten = \"127.0.0.1:0\"\n\
             [producer]\nlisten = \"127.0.0.1:0\"\nreconcile_interval_ms = 100\nstale_after_secs = 4\nredeliver_after_secs = 2\n{producer_lines}\n\
             [secrets]\ndir = \"{secrets_dir}\"\n\
             {upstream}{extra_toml}\n"
        );
        let config = registry.config_from_toml(&toml).expect("test config is valid");
        let config_path = std::env::temp_dir().join(format!("syncfleet-test-{id}.toml"));
        std::fs::write(&config_path, &toml).expect("write test config");
        // The owner path runs here, once; what the test starts sees only the runtime role.
        let mut owner = config.clone();
        owner.database.owner_url = Some(Secret::new(owner_url(&config.database)));
        let mut ops =
            syncfleet_producer::connect(&owner, registry.clone()).await.expect("connect to PostgreSQL and Redis");
        ops.config.database.owner_url = None;
        let pool = ops.pool.clone();
        TestEnv { id, config, config_path, ops, pool, registry }
    }

    /// A pool of the owner role on this test's database, for what the runtime role may not do
    /// (DDL: tables, triggers; `_sqlx_migrations`).
    pub async fn owner_pool(&self) -> PgPool {
        let config = DatabaseConfig {
            url: Secret::new(owner_url(&self.config.database)),
            max_connections: 2,
            ..self.config.database.clone()
        };
        store::connect(&config).await.expect("connect as the owner role")
    }

    /// Creates (or updates) an integration of the demo pack.
    pub async fn demo_integration(&self, name: &str, settings: serde_json::Value) {
        store::upsert_integration(&self.pool, name, "demo", &settings).await.expect("integration");
    }

    pub async fn spawn_producer(&self) -> Running {
        let token = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(syncfleet_producer::run_with(listener, self.ops.clone(), token.clone()));
        Running { token, handle, addr: Some(addr), name: "producer".into() }
    }

    /// A worker engine in this process (its own worker name, shared pool).
    pub async fn spawn_worker(&self, prefix: &str) -> Running {
        let token = CancellationToken::new();
        let (chains, handlers) = self.registry.build(&self.config).unwrap();
        let name = worker_name(Some(prefix));
        let engine = Arc::new(Engine::new(
            self.config.clone(),
            self.pool.clone(),
            self.ops.queues.clone(),
            chains.clone(),
            handlers,
            name.clone(),
        ));
        let handle = tokio::spawn(syncfleet_worker::run_engine(engine, chains.queues(), token.clone()));
        Running { token, handle, addr: None, name }
    }

    /// A real `syncfleet-worker` process with this test's config.
    pub fn spawn_worker_process(&self, name: &str) -> tokio::process::Child {
        self.worker_process(name).spawn().expect("spawn syncfleet-worker (build it first: cargo build --bins)")
    }

    /// The command [`TestEnv::spawn_worker_process`] runs, to add settings (`SYNCFLEET__…`) first.
    pub fn worker_process(&self, name: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(binary("syncfleet-worker"));
        c.env("SYNCFLEET_CONFIG", &self.config_path)
            .env("SYNCFLEET__WORKER__NAME", name)
            .env("SYNCFLEET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        c
    }

    /// The `syncfleet` CLI with this test's config.
    pub fn cli(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(binary("syncfleet"));
        c.env("SYNCFLEET_CONFIG", &self.config_path).env("SYNCFLEET_LOG", "error");
        c
    }

    pub async fn trigger(&self, chain: &str, integration: &str) -> RunId {
        self.trigger_with(chain, integration, Mode::Full, false).await
    }

    pub async fn trigger_with(&self, chain: &str, integration: &str, mode: Mode, force_sweep: bool) -> RunId {
        self.trigger_manual(chain, integration, mode, force_sweep, None).await
    }

    /// A manual trigger of the whole chain, or of `step` alone.
    async fn trigger_manual(
        &self,
        chain: &str,
        integration: &str,
        mode: Mode,
        force_sweep: bool,
        step: Option<&str>,
    ) -> RunId {
        self.ops
            .trigger(Trigger {
                chain: chain.into(),
                integration: integration.into(),
                mode,
                kind: TriggerKind::Manual,
                triggered_by: "test".into(),
                tick_key: None,
                force_sweep,
                step: step.map(Into::into),
                step_modes: Default::default(),
            })
            .await
            .expect("trigger")
    }

    /// Triggers `chain` for `integration` and waits for the run to end.
    pub async fn run_to_end(&self, chain: &str, integration: &str, mode: Mode, force_sweep: bool) -> RunView {
        let run = self.trigger_with(chain, integration, mode, force_sweep).await;
        self.wait(run, Duration::from_secs(60)).await
    }

    /// Triggers one step of `chain` on its own (`syncfleet trigger --step`) and waits for the run
    /// to end (up to two minutes).
    pub async fn run_step(&self, chain: &str, integration: &str, step: &str, mode: Mode) -> RunView {
        let run = self.trigger_manual(chain, integration, mode, false, Some(step)).await;
        self.wait(run, Duration::from_secs(120)).await
    }

    pub async fn wait(&self, run: RunId, limit: Duration) -> RunView {
        wait_for(&self.ops, run, false, limit).await.expect("run ends in time")
    }

    /// Polls `f` until it returns `Some`, or panics after `limit`.
    pub async fn eventually<T, F, Fut>(&self, limit: Duration, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (up to 10 s) until each of `tables` has planner statistics from an `ANALYZE` (not
    /// autovacuum's, which is off on the test machine).
    pub async fn wait_analyzed(&self, tables: &[&str]) {
        let sql = "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY($1) AND last_analyze IS NOT NULL";
        self.eventually(Duration::from_secs(10), &format!("an ANALYZE of each of {tables:?}"), || async {
            let analyzed: i64 = sqlx::query_scalar(sql).bind(tables).fetch_one(&self.pool).await.unwrap();
            (analyzed == tables.len() as i64).then_some(())
        })
        .await
    }

    /// One value about this run: `sql` selects one column of one row, with the run id as `$1`.
    pub async fn scalar<T>(&self, sql: &'static str, run: RunId) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sql).bind(run.0).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One value from a query without parameters.
    pub async fn value<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Effects the demo steps applied, per (step, shard).
    pub async fn effects(&self, run: RunId) -> Vec<(String, i32, i64)> {
        sqlx::query_as("SELECT step, shard, count(*) FROM demo_effects WHERE run_id = $1 GROUP BY step, shard ORDER BY step, shard")
            .bind(run.0)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Drops the database and this namespace's Redis keys.
    /// A new API token with `role` (viewer, operator or admin).
    pub async fn token(&self, role: &str) -> String {
        let name = format!("{role}-{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
        let role = role.parse().expect("viewer, operator or admin");
        store::tokens::create(&self.pool, &name, role, "test").await.expect("create token").1
    }

    /// An API client for `producer` authenticated with a new token of `role`.
    pub async fn api(&self, producer: &Running, role: &str) -> Api {
        Api::new(producer, Some(self.token(role).await))
    }

    pub async fn finish(self) {
        self.pool.close().await;
        drop_test_database(&self.config.database).await;
        self.ops.queues.purge_namespace().await.ok();
        std::fs::remove_file(&self.config_path).ok();
        if let Some(dir) = &self.config.secrets.dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// The PostgreSQL server of the tests, as its superuser (trust authentication).
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// The role that owns every test database and runs its migrations (may create databases).
pub const OWNER_ROLE: &str = "sf_test_owner";
/// The role the tests' producers, workers and CLI connect as: no superuser, no CREATEDB, no
/// CREATEROLE, granted by the owner path.
pub const RUNTIME_ROLE: &str = "sf_test_runtime";

/// Creates [`OWNER_ROLE`] and [`RUNTIME_ROLE`] on the server of `server` (its superuser) unless
/// they exist; safe when tests in several processes do it at once.
pub async fn test_roles(server: &str) {
    let options: PgConnectOptions = format!("{server}/postgres").parse().expect("server URL");
    let mut conn = PgConnection::connect_with(&options).await.expect("connect to PostgreSQL as its superuser");
    store::roles::ensure_role(&mut conn, OWNER_ROLE, "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE")
        .await
        .expect("owner role");
    store::roles::ensure_role(&mut conn, RUNTIME_ROLE, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        .await
        .expect("runtime role");
    conn.close().await.ok();
}

/// The owner role's URL of the database of `database` (a test config's runtime URL).
pub fn owner_url(database: &DatabaseConfig) -> String {
    store::roles::with_user(database.url.expose(), OWNER_ROLE)
}

/// Drops the database of a test config, as the server's superuser (which may end the runtime
/// role's sessions on it).
pub async fn drop_test_database(database: &DatabaseConfig) {
    let superuser = DatabaseConfig {
        url: Secret::new(store::roles::with_user(database.url.expose(), "postgres")),
        owner_url: None,
        ..database.clone()
    };
    store::drop_database(&superuser).await.ok();
}

/// Path of a workspace binary next to the test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` first", path.display());
    path
}

/// A private `redis-server` on a free port, for tests that flush or kill Redis.
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The sandbox upstreams in this process, with its control API.
pub struct Sandbox {
    pub handle: syncfleet_sandbox::SandboxHandle,
    http: reqwest::Client,
}

impl Sandbox {
    /// A sandbox at `small` scale with every rate limit off.
    pub async fn start() -> Sandbox {
        Self::start_with(syncfleet_sandbox::SandboxConfig::default().unlimited()).await
    }

    pub async fn start_with(config: syncfleet_sandbox::SandboxConfig) -> Sandbox {
        let handle = syncfleet_sandbox::spawn(config).await.expect("sandbox starts");
        Sandbox { handle, http: reqwest::Client::new() }
    }

    /// Calls the control API (`/_sandbox{path}`) and returns its JSON answer.
    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let url = format!("{}{path}", self.handle.control_url());
        let mut req = self.http.request(method, &url).bearer_auth("sandbox-control");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Sets fault fields of one API (`erp`, `northpass`, …); fields not given keep their value.
    pub async fn faults(&self, api: &str, faults: serde_json::Value) {
        self.control(reqwest::Method::PUT, &format!("/faults/{api}"), Some(faults)).await;
    }

    /// `POST /_sandbox/mutate` for `api`/`resource`: returns (changed, deleted, added) ids.
    pub async fn mutate(&self, api: &str, resource: &str, change: serde_json::Value) -> serde_json::Value {
        let mut body = serde_json::json!({ "api": api, "resource": resource });
        if let (Some(b), Some(c)) = (body.as_object_mut(), change.as_object()) {
            b.extend(c.clone());
        }
        self.control(reqwest::Method::POST, "/mutate", Some(body)).await
    }

    /// The request counter `field` (`requests`, `throttled`, …) of one endpoint: `method` and the
    /// end of its route, e.g. `("GET", "/items")`.
    pub async fn counter(&self, api: &str, method: &str, route_end: &str, field: &str) -> i64 {
        let counters = self.control(reqwest::Method::GET, "/counters", None).await;
        counters
            .pointer(&format!("/{api}/endpoints"))
            .and_then(|e| e.as_object())
            .and_then(|e| {
                e.iter()
                    .find(|(k, _)| k.starts_with(&format!("{method} ")) && k.ends_with(route_end))
                    .map(|(_, v)| v.clone())
            })
            .and_then(|v| v.get(field).and_then(|f| f.as_i64()))
            .unwrap_or(0)
    }

    pub async fn reset_counters(&self) {
        self.control(reqwest::Method::POST, "/counters/reset", None).await;
    }
}

pub use syncfleet_sandbox::erp_integration_toml;

/// A small client of the admin API: every call returns the status and the JSON body (`Null`
/// when the body is not JSON).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(producer: &Running, token: Option<String>) -> Api {
        Api {
            base: format!("http://{}", producer.addr.expect("a producer has an address")),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The same producer with another token (or none).
    pub fn with_token(&self, token: Option<String>) -> Api {
        Api { token, ..self.clone() }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}
