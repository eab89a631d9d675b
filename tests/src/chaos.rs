//! The chaos suite's tools (`tests/tests/chaos*.rs`, described in `tests/CHAOS.md`): a fleet of
//! real worker processes and a producer process to kill and restart, private Redis and PostgreSQL
//! servers to flush, kill and restart, and the checks every chaos test ends with:
//!
//! - **the database equals the sandbox**: row count and an md5 of the synced columns of every
//!   active row, computed in PostgreSQL and from what the sandbox's ERP API serves;
//! - **no entity written by two workers at once**: triggers installed in the test's database log
//!   every step status change ([`STEP_LOG`]) and every write to the synced table with the writing
//!   connection's `application_name` (each worker process gets its own); the running intervals of
//!   one entity never overlap, and every write falls inside a running attempt of its writer;
//! - **no step ran twice to completion**: at most one `succeeded` transition per step row, and as
//!   many running intervals as the row counts attempts.
//!
//! Sizes: the bounded form (CI) by default, the long form with `CHAOS_LONG=1` (`tests/chaos-long.sh`).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{Value, json};
use sqlx::PgPool;
use syncfleet_shared::{config::Config, ids::RunId, queue::QueueClient, store, store::views::RunView};

use crate::{Sandbox, TestEnv, binary};

/// Whether the long form runs (`CHAOS_LONG=1`).
pub fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// `bounded` in CI, `long` with `CHAOS_LONG=1`.
pub fn size(bounded: usize, long_form: usize) -> usize {
    if long() { long_form } else { bounded }
}

/// A free TCP port on 127.0.0.1 (for servers that must come back on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, up: bool, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} on port {port} did not come {}", updown(up));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn updown(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

/// One chaos test at a time on this machine: each starts a producer, several workers and servers,
/// and two at once on 2 cores starve the heartbeats they measure. Held until dropped.
pub struct Serial(std::fs::File);

impl Serial {
    pub async fn acquire() -> Serial {
        let path = std::env::temp_dir().join("syncfleet-chaos.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        tokio::task::spawn_blocking(move || {
            file.lock().expect("lock the chaos lock file");
            Serial(file)
        })
        .await
        .unwrap()
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.0.unlock().ok();
    }
}

/// A `redis-server` on a fixed free port that can be killed and started again on that port.
pub struct RestartableRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RestartableRedis {
    pub fn start() -> RestartableRedis {
        let mut r = RestartableRedis { port: free_port(), child: None };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty: no persistence).
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        wait_port(self.port, true, "redis");
    }

    /// SIGKILLs the server: every key is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
        wait_port(self.port, false, "redis");
    }
}

impl Drop for RestartableRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// A private PostgreSQL cluster (`initdb` + `pg_ctl` as user postgres) on a free port, in a
/// temporary directory removed on drop. Durable enough for a crash (`pg_ctl -m immediate`).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("sf-chaos-pg-{:08x}", rand::rng().random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
        assert!(status.success(), "chown {}", dir.display());
        let pg = PrivatePostgres { port: free_port(), dir };
        as_postgres(&["initdb", "-D", &pg.data(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn up(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        as_postgres(&["pg_ctl", "-D", &self.data(), "-o", &opts, "-l", &log, "-w", "-s", "start"]);
        wait_port(self.port, true, "postgres");
    }

    /// Stops the server the hard way (`-m immediate`: no checkpoint, connections cut; the next
    /// start recovers from the WAL, as after a crash).
    pub fn crash(&self) {
        as_postgres(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "-s", "stop"]);
        wait_port(self.port, false, "postgres");
    }
}

fn as_postgres(args: &[&str]) {
    let out = std::process::Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "-s", "stop"])
            .stderr(Stdio::null())
            .status();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A test env whose PostgreSQL is `database_base` (`postgres://…:PORT`) and Redis `redis_url`, with
/// the harness's settings (see [`TestEnv::new`]); for tests that restart PostgreSQL.
pub async fn env_on(database_base: &str, redis_url: &str, extra_toml: &str) -> TestEnv {
    // Built from the harness's own config, so both stay the same but for the servers.
    let template = TestEnv::with_redis(redis_url, "").await;
    let text = std::fs::read_to_string(&template.config_path).unwrap();
    let id = template.id.clone();
    template.finish().await;
    let database = format!("sf_test_{id}");
    let text =
        text.replace(&format!("postgres://postgres@127.0.0.1:5432/{database}"), &format!("{database_base}/{database}"));
    let toml = format!("{text}\n{extra_toml}\n");
    let config = Config::from_toml(&toml).expect("test config is valid");
    let config_path = std::env::temp_dir().join(format!("syncfleet-test-{id}.toml"));
    std::fs::write(&config_path, &toml).unwrap();
    let ops = syncfleet_producer::connect(&config).await.expect("connect to the private PostgreSQL");
    let pool = ops.pool.clone();
    TestEnv { id, config, config_path, ops, pool }
}

/// Drops the test's database and Redis keys and kills nothing else: armed until [`Cleanup::disarm`],
/// so a failing test (panic) still cleans up.
pub struct Cleanup {
    config: Config,
    config_path: PathBuf,
    armed: bool,
}

impl Cleanup {
    pub fn new(env: &TestEnv) -> Cleanup {
        Cleanup { config: env.config.clone(), config_path: env.config_path.clone(), armed: true }
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let config = self.config.clone();
        std::fs::remove_file(&self.config_path).ok();
        // A fresh runtime on its own thread: this may run inside the test's runtime, unwinding.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let drop_db = store::drop_database(&config.database);
                tokio::time::timeout(Duration::from_secs(10), drop_db).await.ok();
                if let Ok(Ok(q)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    QueueClient::connect(config.redis.url.expose(), &config.redis.namespace),
                )
                .await
                {
                    tokio::time::timeout(Duration::from_secs(10), q.purge_namespace()).await.ok();
                }
            });
        });
        cleanup.join().ok();
    }
}

/// Worker processes (`target/debug/syncfleet-worker`) and a producer process of one test. Each
/// worker has its own name, which is also the `application_name` of its PostgreSQL connections, so
/// the write log names the process that wrote. Children are killed when the fleet is dropped.
pub struct Fleet {
    config_path: PathBuf,
    database_url: String,
    id: String,
    started: usize,
    pub workers: Vec<(String, tokio::process::Child)>,
    pub producer: Option<tokio::process::Child>,
    /// Extra `SYNCFLEET__…` settings of every worker.
    pub worker_env: Vec<(String, String)>,
}

impl Fleet {
    pub fn new(env: &TestEnv) -> Fleet {
        Fleet {
            config_path: env.config_path.clone(),
            database_url: env.config.database.url.expose().to_owned(),
            id: env.id.clone(),
            started: 0,
            workers: vec![],
            producer: None,
            worker_env: vec![],
        }
    }

    /// Starts the `syncfleet-producer` process (scheduler, reconciler, API on a free port).
    pub fn start_producer(&mut self) {
        let child = tokio::process::Command::new(binary("syncfleet-producer"))
            .env("SYNCFLEET_CONFIG", &self.config_path)
            .env("SYNCFLEET_LOG", "error")
            .env("SYNCFLEET__DATABASE__URL", format!("{}?application_name=producer-{}", self.database_url, self.id))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn syncfleet-producer (build it first: cargo build --bins)");
        self.producer = Some(child);
    }

    /// Starts one more worker process; returns its name (`w{n}-{test id}`).
    pub fn start_worker(&mut self) -> String {
        self.started += 1;
        let name = format!("w{:03}-{}", self.started, self.id);
        let mut cmd = tokio::process::Command::new(binary("syncfleet-worker"));
        cmd.env("SYNCFLEET_CONFIG", &self.config_path)
            .env("SYNCFLEET__WORKER__NAME", &name)
            .env("SYNCFLEET__DATABASE__URL", format!("{}?application_name={name}", self.database_url))
            .env("SYNCFLEET_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &self.worker_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn syncfleet-worker (build it first: cargo build --bins)");
        self.workers.push((name.clone(), child));
        name
    }

    /// Sends `sig` to worker `i` (by position).
    pub fn signal(&self, i: usize, sig: &str) {
        crate::signal(&self.workers[i].1, sig);
    }

    /// SIGKILLs a random live worker and reaps it; returns its name.
    pub async fn kill_random(&mut self) -> String {
        let i = rand::rng().random_range(0..self.workers.len());
        let (name, mut child) = self.workers.swap_remove(i);
        crate::signal(&child, "KILL");
        child.wait().await.ok();
        name
    }

    /// SIGTERMs every worker and waits for each to exit; returns (name, exit code, seconds taken).
    pub async fn terminate_all(&mut self, limit: Duration) -> Vec<(String, Option<i32>, f64)> {
        let started = Instant::now();
        for (_, child) in &self.workers {
            crate::signal(child, "TERM");
        }
        let mut out = vec![];
        for (name, mut child) in self.workers.drain(..) {
            let left = limit.saturating_sub(started.elapsed());
            let status = tokio::time::timeout(left, child.wait()).await;
            let code = match status {
                Ok(Ok(s)) => s.code(),
                _ => None,
            };
            out.push((name, code, started.elapsed().as_secs_f64()));
        }
        out
    }
}

/// Installs the step log on `step_runs` and the write log on each of `tables` (tables with an
/// `integration_id`), in the test's own database. Run before any worker starts.
pub async fn install_logs(pool: &PgPool, tables: &[&str]) {
    sqlx::raw_sql(STEP_LOG).execute(pool).await.expect("install the step log");
    for table in tables {
        let sql = format!(
            "CREATE TRIGGER chaos_write_log AFTER INSERT OR UPDATE ON {table}
             FOR EACH ROW EXECUTE FUNCTION chaos_log_write('{table}');"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await.expect("install the write log");
    }
}

/// Every status change of a step row, and every row written to a watched table, with the time of
/// the statement (`clock_timestamp()`); a rolled-back change leaves no line.
pub const STEP_LOG: &str = r#"
CREATE TABLE chaos_step_log (
    seq BIGSERIAL PRIMARY KEY,
    step_run_id BIGINT NOT NULL,
    run_id UUID NOT NULL,
    entity_key TEXT NOT NULL,
    job_id TEXT,
    worker TEXT,
    attempts INT NOT NULL,
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    error TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_log_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO chaos_step_log (step_run_id, run_id, entity_key, job_id, worker, attempts, old_status, new_status, error)
        VALUES (NEW.id, NEW.run_id, NEW.entity_key, NEW.job_id, COALESCE(NEW.worker, OLD.worker), NEW.attempts,
                OLD.status, NEW.status, NEW.error);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_step_log AFTER UPDATE OF status ON step_runs
    FOR EACH ROW EXECUTE FUNCTION chaos_log_step();
CREATE TABLE chaos_write_log (
    seq BIGSERIAL PRIMARY KEY,
    tbl TEXT NOT NULL,
    integration_id BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    app TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_write_log (tbl, integration_id, external_id, app)
    VALUES (TG_ARGV[0], NEW.integration_id, NEW.external_id, current_setting('application_name'));
    RETURN NULL;
END $$;
"#;

/// Running intervals: one per attempt, from the claim to the next status change of the row.
const ATTEMPTS: &str = "
    WITH l AS (
        SELECT seq, step_run_id, run_id, entity_key, worker, new_status, at,
               lead(at) OVER (PARTITION BY step_run_id ORDER BY seq) AS ended
          FROM chaos_step_log)
    SELECT seq, step_run_id, run_id, entity_key, worker, at AS began, COALESCE(ended, 'infinity') AS ended
      FROM l WHERE new_status = 'running'";

/// What the fleet checks found; each list must be empty.
#[derive(Debug, Default)]
pub struct FleetReport {
    /// Pairs of attempts on one entity whose running intervals overlap.
    pub overlaps: Vec<String>,
    /// Step rows that reached `succeeded` more than once.
    pub double_completions: Vec<String>,
    /// Step rows whose attempt count differs from their running intervals.
    pub unaccounted_attempts: Vec<String>,
    /// Writes that fell outside every running attempt of their writer on that integration's step.
    pub stray_writes: Vec<String>,
    /// Counts, for the record: attempts, attempts that ended without success, writes checked.
    pub attempts: i64,
    pub lost_attempts: i64,
    pub writes: i64,
}

impl FleetReport {
    /// Panics with the findings unless every list is empty.
    pub fn assert_clean(&self) {
        assert!(
            self.overlaps.is_empty()
                && self.double_completions.is_empty()
                && self.unaccounted_attempts.is_empty()
                && self.stray_writes.is_empty(),
            "fleet invariants broken: {self:#?}"
        );
    }
}

/// Reads the step and write logs; see [`FleetReport`]. `write_step` is the step that writes the
/// watched tables (e.g. `pull`).
pub async fn fleet_report(pool: &PgPool, write_step: &str) -> FleetReport {
    let overlaps = texts(
        pool,
        &format!(
            "WITH a AS ({ATTEMPTS})
             SELECT format('%s: %s %s .. %s overlaps %s %s .. %s', a.entity_key, a.worker, a.began, a.ended,
                           b.worker, b.began, b.ended)
               FROM a JOIN a b ON a.entity_key = b.entity_key AND a.seq < b.seq
                              AND a.began < b.ended AND b.began < a.ended
              LIMIT 20"
        ),
        "",
    )
    .await;
    let mut r = FleetReport { overlaps, ..FleetReport::default() };
    let doubles: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT step_run_id, count(*) FROM chaos_step_log WHERE new_status = 'succeeded'
          GROUP BY step_run_id HAVING count(*) > 1 LIMIT 20",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    r.double_completions = doubles.into_iter().map(|d| format!("step run {} succeeded {} times", d.0, d.1)).collect();
    let unaccounted: Vec<(i64, i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.attempts, count(a.seq) FROM step_runs s LEFT JOIN ({ATTEMPTS}) a ON a.step_run_id = s.id
          GROUP BY s.id, s.attempts HAVING s.attempts <> count(a.seq) LIMIT 20"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    r.unaccounted_attempts =
        unaccounted.into_iter().map(|u| format!("step run {}: {} attempts, {} claims", u.0, u.1, u.2)).collect();
    // A write by worker process `app` (its connections' application_name, the prefix of its
    // worker name) must fall inside one of its attempts of the writing step for that integration.
    r.stray_writes = texts(
        pool,
        &format!(
            "WITH a AS ({ATTEMPTS})
             SELECT format('%s of integration %s by %s at %s; its attempts: %s', w.tbl, w.integration_id, w.app, w.at,
                    (SELECT string_agg(format('%s %s .. %s', a.worker, a.began, a.ended), '; ' ORDER BY a.seq)
                       FROM a JOIN step_runs s ON s.id = a.step_run_id JOIN chain_runs r ON r.id = s.run_id
                      WHERE s.step = $1 AND r.integration_id = w.integration_id))
               FROM chaos_write_log w
              WHERE NOT EXISTS (
                    SELECT 1 FROM a JOIN step_runs s ON s.id = a.step_run_id JOIN chain_runs r ON r.id = s.run_id
                     WHERE s.step = $1 AND r.integration_id = w.integration_id
                       AND a.worker LIKE w.app || '-%' AND w.at >= a.began AND w.at <= a.ended)
              ORDER BY w.seq LIMIT 20"
        ),
        write_step,
    )
    .await;
    let (attempts, lost): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE old_status = 'running'),
                count(*) FILTER (WHERE old_status = 'running' AND new_status <> 'succeeded')
           FROM chaos_step_log",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (r.attempts, r.lost_attempts) = (attempts, lost);
    r.writes = sqlx::query_scalar("SELECT count(*) FROM chaos_write_log").fetch_one(pool).await.unwrap();
    r
}

/// One text column of `sql` (which may use `$1`, bound to `arg`).
async fn texts(pool: &PgPool, sql: &str, arg: &str) -> Vec<String> {
    let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()));
    let q = if sql.contains("$1") { q.bind(arg) } else { q };
    q.fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Attempts the reconciler took from a worker that stopped sending heartbeats (killed, or cut off).
pub async fn reaped_attempts(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM chaos_step_log WHERE old_status = 'running' AND error LIKE 'worker % lost: %'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The running steps (entity key, task id) and, for each, who holds its entity lease in Redis now.
pub async fn running_leases(env: &TestEnv, running: &[(String, String)]) -> Vec<(String, String, Option<String>)> {
    let mut conn = env.ops.queues.connection();
    let mut out = vec![];
    for (entity, job) in running {
        let key = format!("{}:lease:{entity}", env.config.redis.namespace);
        let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
        out.push((entity.clone(), job.clone(), holder));
    }
    out
}

/// Waits until none of `runs` is active, then returns their views.
pub async fn wait_runs(env: &TestEnv, runs: &[RunId], limit: Duration) -> Vec<RunView> {
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    let start = Instant::now();
    loop {
        let active: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM chain_runs WHERE id = ANY($1) AND status IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_one(&env.pool)
        .await;
        if active.as_ref().is_ok_and(|n| *n == 0) {
            break;
        }
        assert!(start.elapsed() < limit, "runs still active after {limit:?}: {active:?} of {}", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut views = vec![];
    for r in runs {
        views.push(store::views::run(&env.pool, *r).await.expect("run view"));
    }
    views
}

/// Every run completed, each step of it succeeded.
pub fn assert_all_completed(views: &[RunView]) {
    for v in views {
        assert_eq!(v.status, "completed", "{v:#?}");
        assert!(v.steps.iter().all(|s| s.status == "succeeded"), "{v:#?}");
    }
}

/// Every fault of the sandbox's ERP API off.
pub async fn clear_erp_faults(sandbox: &Sandbox) {
    let off = json!({ "latency_ms": 0, "rate_per_sec": null, "error_5xx_share": 0.0, "timeout_share": 0.0,
                      "truncate_page": false, "empty_list": false, "malformed_share": 0.0, "malformed_ids": [] });
    sandbox.faults("erp", off).await;
}

/// What the sandbox's ERP API serves now, one line per item (`id|sku|name|quantity|warehouse|updated
/// epoch`) in id order. Reads with the faults off.
pub async fn sandbox_items(sandbox: &Sandbox) -> Vec<(i64, String)> {
    clear_erp_faults(sandbox).await;
    let http = reqwest::Client::new();
    let mut out = vec![];
    loop {
        let url = format!("{}/items?offset={}&limit=1000", sandbox.handle.erp_url(), out.len());
        let body: Value = http.get(url).bearer_auth("erp-token").send().await.unwrap().json().await.unwrap();
        let items = body["items"].as_array().expect("items");
        for i in items {
            let updated = chrono::DateTime::parse_from_rfc3339(i["updated_at"].as_str().unwrap()).unwrap().timestamp();
            let id = i["id"].as_i64().unwrap();
            let line = format!(
                "{id}|{}|{}|{}|{}|{updated}",
                i["sku"].as_str().unwrap(),
                i["name"].as_str().unwrap(),
                i["quantity"].as_i64().unwrap(),
                i["warehouse"].as_str().unwrap()
            );
            out.push((id, line));
        }
        if items.is_empty() || out.len() as i64 >= body["total"].as_i64().unwrap() {
            return out;
        }
    }
}

/// The same lines from the active rows of `table` for `integration`.
const TABLE_LINES: &str = "
    SELECT external_id::bigint AS id,
           external_id || '|' || sku || '|' || name || '|' || quantity || '|' || warehouse || '|'
               || extract(epoch FROM source_updated_at)::bigint AS line
      FROM {table} WHERE integration_id = (SELECT id FROM integrations WHERE name = $1) AND is_active";

/// Asserts that the active rows of `table` for each integration equal what the sandbox serves:
/// the same count and the same md5 over the synced columns (PostgreSQL's `md5` on both sides'
/// lines), and that no row of an item the sandbox still serves is inactive.
pub async fn assert_matches_sandbox(env: &TestEnv, sandbox: &Sandbox, table: &str, integrations: &[String]) {
    let upstream = sandbox_items(sandbox).await;
    let text: String = upstream.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n");
    let (want_md5,): (String,) = sqlx::query_as("SELECT md5($1)").bind(&text).fetch_one(&env.pool).await.unwrap();
    let ids: Vec<String> = upstream.iter().map(|(id, _)| id.to_string()).collect();
    let lines = TABLE_LINES.replace("{table}", table);
    for name in integrations {
        let sql = format!("SELECT count(*), COALESCE(md5(string_agg(line, E'\\n' ORDER BY id)), '') FROM ({lines}) t");
        let (count, md5): (i64, String) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(name).fetch_one(&env.pool).await.unwrap();
        let wrongly_inactive: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE integration_id = (SELECT id FROM integrations WHERE name = $1)
               AND NOT is_active AND external_id = ANY($2)"
        )))
        .bind(name)
        .bind(&ids)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(wrongly_inactive, 0, "{name}: rows of items the upstream still serves are inactive");
        if (count, &md5) != (upstream.len() as i64, &want_md5) {
            let ours: Vec<(i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(lines.clone())).bind(name).fetch_all(&env.pool).await.unwrap();
            let ours: std::collections::BTreeMap<i64, String> = ours.into_iter().collect();
            let theirs: std::collections::BTreeMap<i64, String> = upstream.iter().cloned().collect();
            let differing: Vec<_> = theirs
                .iter()
                .filter(|(id, l)| ours.get(id) != Some(l))
                .map(|(id, l)| (id, l, ours.get(id)))
                .chain(ours.iter().filter(|(id, _)| !theirs.contains_key(id)).map(|(id, l)| (id, l, None)))
                .take(10)
                .collect();
            panic!(
                "{name}: {count} active rows (md5 {md5}) but the sandbox serves {} (md5 {want_md5}); first differences \
                 (id, sandbox or ours, ours): {differing:?}",
                upstream.len()
            );
        }
    }
}

/// `n` ERP integrations `erp-000…` of the `http-json` pack reading the sandbox's items into
/// `erp_items`, pages of `page`, with `extra` lines in each (limits, upstream key).
pub fn erp_integrations(sandbox: &Sandbox, n: usize, page: u32, extra: &str) -> (String, Vec<String>) {
    let names: Vec<String> = (0..n).map(|i| format!("erp-{i:03}")).collect();
    let toml = names
        .iter()
        .map(|name| crate::erp_integration_toml(name, &sandbox.handle.erp_url(), "erp_items", page, extra))
        .collect();
    (toml, names)
}

/// Config lines giving every step of `chains` (chain → steps) `attempts` attempts and short
/// backoffs: the chaos tests measure what survives faults, not how soon a budget runs out.
pub fn attempts_override(chains: &[(&str, &[&str])], attempts: u32) -> String {
    let mut out = String::new();
    for (chain, steps) in chains {
        for step in *steps {
            out.push_str(&format!(
                "[chains.{chain}.steps.{step}]\nmax_attempts = {attempts}\nbackoff_base_ms = 100\nbackoff_max_ms = 1000\n"
            ));
        }
    }
    out
}
