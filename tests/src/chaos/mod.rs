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

mod checks;
mod scene;
mod servers;

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use rand::Rng;
use syncfleet_shared::config::Config;
use syncfleet_store::queue::QueueClient;

pub use checks::*;
pub use scene::*;
pub use servers::*;

use crate::{Sandbox, TestEnv, binary};

/// Whether the long form runs (`CHAOS_LONG=1`).
pub fn long() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// `bounded` in CI, `long` with `CHAOS_LONG=1`.
pub fn size(bounded: usize, long_form: usize) -> usize {
    if long() { long_form } else { bounded }
}
/// A test env whose PostgreSQL is `database_base` (`postgres://…:PORT`) and Redis `redis_url`, with
/// the harness's settings (see [`TestEnv::new`]); for tests that restart PostgreSQL.
pub async fn env_on(database_base: &str, redis_url: &str, extra_toml: &str) -> TestEnv {
    TestEnv::build_on(database_base, syncfleet_registry::builtin(), redis_url, "", "", extra_toml).await
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
                let drop_db = crate::drop_test_database(&config.database);
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
