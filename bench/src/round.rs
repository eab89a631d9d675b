//! The scratch machinery every scenario that runs the engine shares.
//!
//! - [`Scratch`]: a scratch database `sf_bench_<tag>` (migrated, the config's integrations
//!   registered) and Redis namespace `bench-<tag>`, and the config file worker processes read.
//! - [`Round`]: a scratch plus the producer in this process, release `syncfleet-worker` processes
//!   and, optionally, the in-process sandbox the integrations read.
//!
//! Both are removed at the end, also when the measurement fails: use [`with_scratch`] and
//! [`with_round`], which clean up whatever the body returned.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use syncfleet_producer::{Ops, ops::Trigger};
use syncfleet_sandbox::SandboxHandle;
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::{self as store, runs::TriggerKind, views::RunView};
use tokio_util::sync::CancellationToken;

/// How long a round waits for its worker processes to register.
const REGISTER_WITHIN: Duration = Duration::from_secs(30);

/// A random tag for scratch database, namespace and file names.
pub fn tag() -> String {
    format!("{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff)
}

/// How the scratch reaches PostgreSQL.
#[derive(Debug, Clone, Default)]
pub enum PgServer {
    /// `127.0.0.1:5432`, as deployed; another port with `BENCH_PG_PORT` (e.g. a private server
    /// started with `pg_stat_statements`, to see where a scenario's statements spend their time).
    #[default]
    Tcp,
    /// The Unix socket in this directory (no Nagle / delayed-ACK interplay on the connection).
    Socket(PathBuf),
}

impl PgServer {
    fn url(&self, database: &str) -> String {
        match self {
            PgServer::Tcp => format!("postgres://postgres@127.0.0.1:{}/{database}", tcp_port()),
            PgServer::Socket(dir) => format!("postgres://postgres@localhost/{database}?host={}", dir.display()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PgServer::Tcp => format!("tcp 127.0.0.1:{}", tcp_port()),
            PgServer::Socket(dir) => format!("unix socket {}", dir.display()),
        }
    }
}

/// PostgreSQL's TCP port: `BENCH_PG_PORT`, or 5432.
fn tcp_port() -> String {
    std::env::var("BENCH_PG_PORT").unwrap_or_else(|_| "5432".into())
}

/// A scratch database and Redis namespace, and the config file a worker process reads.
pub struct Scratch {
    pub ops: Ops,
    pub config_path: PathBuf,
}

impl Scratch {
    /// `body` is the config after `[database]` and `[redis]` (sections `[worker]`, `[producer]`,
    /// integrations, chain overrides).
    pub async fn new(pg: &PgServer, body: &str) -> anyhow::Result<Scratch> {
        let tag = tag();
        // The sandbox's keys, as files under the round's `[secrets] dir` (the integrations name them).
        let secrets_dir = std::env::temp_dir().join(format!("syncfleet-bench-secrets-{tag}"));
        syncfleet_sandbox::write_secret_files(&secrets_dir, &syncfleet_sandbox::SandboxConfig::default())?;
        // The superuser is both roles here: the owner path creates and migrates the scratch
        // database, and every process of the round, given the same file, finds it so.
        let url = pg.url(&format!("sf_bench_{tag}"));
        let toml = format!(
            "[database]\nurl = \"{url}\"\nowner_url = \"{url}\"\nmax_connections = 20\n\
             [redis]\nnamespace = \"bench-{tag}\"\n\
             [upstream]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\
             [secrets]\ndir = \"{}\"\n{body}",
            secrets_dir.display()
        );
        let registry = syncfleet_registry::builtin();
        let config = registry.config_from_toml(&toml)?;
        let config_path = std::env::temp_dir().join(format!("syncfleet-bench-{tag}.toml"));
        std::fs::write(&config_path, &toml)?;
        match syncfleet_producer::connect(&config, registry).await {
            Ok(ops) => Ok(Scratch { ops, config_path }),
            Err(e) => {
                // `connect` may have created the database (and used the namespace) before it failed.
                store::drop_database(&config.database).await.ok();
                if let Ok(queues) =
                    syncfleet_store::queue::QueueClient::connect(config.redis.url.expose(), &config.redis.namespace)
                        .await
                {
                    queues.purge_namespace().await.ok();
                }
                std::fs::remove_file(&config_path).ok();
                Err(e)
            }
        }
    }

    pub async fn remove(self) {
        self.ops.queues.purge_namespace().await.ok();
        self.ops.pool.close().await;
        store::drop_database(&self.ops.config.database).await.ok();
        std::fs::remove_file(&self.config_path).ok();
    }
}

/// Runs `body` on a fresh [`Scratch`], which is removed afterwards whatever `body` returned.
pub async fn with_scratch<T>(
    pg: &PgServer,
    config: &str,
    body: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let scratch = Scratch::new(pg, config).await?;
    let result = body(&scratch).await;
    scratch.remove().await;
    result
}

/// What a round runs.
pub struct Setup {
    /// The sandbox the integrations read (owned by the round from here on, shut down with it).
    pub sandbox: Option<SandboxHandle>,
    pub pg: PgServer,
    /// `syncfleet-worker` processes.
    pub workers: usize,
    /// `[worker] concurrency` of each process: steps it runs at once.
    pub concurrency: usize,
    pub reconcile_interval_ms: u64,
    /// Integrations and chain overrides (TOML after the `[worker]` and `[producer]` sections).
    pub config: String,
}

impl Setup {
    /// `workers` processes of concurrency `concurrency`, over TCP, the reconciler every 100 ms.
    pub fn new(sandbox: Option<SandboxHandle>, workers: usize, concurrency: usize, config: String) -> Setup {
        Setup { sandbox, pg: PgServer::Tcp, workers, concurrency, reconcile_interval_ms: 100, config }
    }
}

/// One round's scratch: database, namespace, producer in this process, worker processes, sandbox.
pub struct Round {
    pub scratch: Scratch,
    sandbox: Option<SandboxHandle>,
    token: CancellationToken,
    producer: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub workers: Vec<tokio::process::Child>,
}

impl Round {
    /// Starts everything and waits until every worker process has registered.
    pub async fn start(setup: Setup) -> anyhow::Result<Round> {
        let body = format!(
            "[worker]\nconcurrency = {}\nlisten = \"\"\n\
             [producer]\nreconcile_interval_ms = {}\nscheduler_enabled = false\n{}",
            setup.concurrency, setup.reconcile_interval_ms, setup.config
        );
        let scratch = async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            anyhow::Ok((listener, Scratch::new(&setup.pg, &body).await?))
        };
        let (listener, scratch) = match scratch.await {
            Ok(s) => s,
            Err(e) => {
                if let Some(sandbox) = setup.sandbox {
                    sandbox.shutdown().await.ok();
                }
                return Err(e);
            }
        };
        let token = CancellationToken::new();
        let producer = tokio::spawn(syncfleet_producer::run_with(listener, scratch.ops.clone(), token.clone()));
        let mut round = Round { scratch, sandbox: setup.sandbox, token, producer, workers: vec![] };
        let started = async {
            for i in 0..setup.workers {
                round.workers.push(spawn_worker(&round.scratch.config_path, &format!("bench-{i}"))?);
            }
            round.registered(setup.workers).await
        };
        match started.await {
            Ok(()) => Ok(round),
            Err(e) => {
                round.stop().await;
                Err(e)
            }
        }
    }

    /// Waits until `n` worker processes are registered in Redis.
    async fn registered(&mut self, n: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            for w in &mut self.workers {
                if let Some(status) = w.try_wait()? {
                    anyhow::bail!("a worker process exited at start-up ({status})");
                }
            }
            if self.ops().workers().await?.len() >= n {
                return Ok(());
            }
            anyhow::ensure!(start.elapsed() < REGISTER_WITHIN, "{n} worker process(es) did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ops(&self) -> &Ops {
        &self.scratch.ops
    }

    /// The round's sandbox; a round started without one is a mistake of the scenario.
    pub fn sandbox(&self) -> &SandboxHandle {
        self.sandbox.as_ref().expect("this round was started without a sandbox")
    }

    /// Triggers `chain` of `integration` by hand; `step_modes` replace single steps' modes.
    pub async fn trigger(
        &self,
        chain: &str,
        integration: &str,
        mode: Mode,
        step_modes: &[(&str, Mode)],
    ) -> anyhow::Result<RunId> {
        Ok(self
            .ops()
            .trigger(Trigger {
                chain: chain.into(),
                integration: integration.into(),
                mode,
                kind: TriggerKind::Manual,
                triggered_by: "bench".into(),
                tick_key: None,
                force_sweep: false,
                step: None,
                step_modes: step_modes.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
            })
            .await?)
    }

    /// Waits for `run` to end within `limit`; an end other than `completed` is an error.
    pub async fn completed(&self, run: RunId, limit: Duration) -> anyhow::Result<RunView> {
        let view = syncfleet_cli::wait_for(self.ops(), run, false, limit).await?;
        anyhow::ensure!(
            view.status == "completed",
            "{} of {} ended {}: {:?}",
            view.chain,
            view.integration,
            view.status,
            view.error
        );
        Ok(view)
    }

    /// Runs the chain to a `completed` end; returns the run and its wall time (trigger to end), in s.
    pub async fn run(
        &self,
        chain: &str,
        integration: &str,
        mode: Mode,
        step_modes: &[(&str, Mode)],
    ) -> anyhow::Result<(RunView, f64)> {
        let started = Instant::now();
        let run = self.trigger(chain, integration, mode, step_modes).await?;
        let view = self.completed(run, Duration::from_secs(1800)).await?;
        Ok((view, started.elapsed().as_secs_f64()))
    }

    /// Per step of `run`, in start order: seconds from its first shard's start to the next step's
    /// start (the last step: to now, so read it right after the run ended): the step's own time
    /// plus the hand-over to the next, which is what a chain's wall time is made of.
    pub async fn step_spans(&self, run: RunId) -> anyhow::Result<Vec<(String, f64)>> {
        Ok(sqlx::query_as(
            "SELECT step, extract(epoch FROM (coalesce(lead(s) OVER (ORDER BY s), clock_timestamp()) - s))::float8
               FROM (SELECT step, min(started_at) AS s FROM step_runs WHERE run_id = $1 GROUP BY step) x
              ORDER BY s",
        )
        .bind(run.0)
        .fetch_all(&self.ops().pool)
        .await?)
    }

    /// The longest idle hand-over in `run`, in seconds, and the step it delayed: for each step, the
    /// wait from its last prerequisite's end (every shard of it; a step without prerequisites: the
    /// run's creation) to its first shard's start. Retries and lease waits of the step itself
    /// count, since the chain waits for them too.
    pub async fn idle_gap_max_s(&self, run: &str) -> anyhow::Result<(f64, String)> {
        let row: Option<(f64, String)> = sqlx::query_as(
            "WITH steps AS (
                 SELECT step, min(started_at) AS started, max(finished_at) AS finished,
                        min(prerequisites) AS prerequisites
                   FROM step_runs WHERE run_id = $1::uuid AND started_at IS NOT NULL GROUP BY step)
             SELECT extract(epoch FROM (s.started - coalesce(
                        (SELECT max(p.finished) FROM steps p WHERE p.step = ANY(s.prerequisites)),
                        (SELECT created_at FROM chain_runs WHERE id = $1::uuid))))::float8 AS gap, s.step
               FROM steps s ORDER BY gap DESC LIMIT 1",
        )
        .bind(run)
        .fetch_optional(&self.ops().pool)
        .await?;
        row.context("the run started no step")
    }

    /// The largest peak RSS (`VmHWM`) of the worker processes, in MiB.
    pub fn workers_peak_rss_mb(&self) -> anyhow::Result<f64> {
        let mut peak: f64 = 0.0;
        for w in &self.workers {
            let pid = w.id().context("a worker process exited during the run")?;
            peak = peak.max(peak_rss_mb(pid)?);
        }
        Ok(peak)
    }

    pub async fn stop(mut self) {
        for w in &mut self.workers {
            w.kill().await.ok();
        }
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.producer).await;
        self.scratch.remove().await;
        if let Some(sandbox) = self.sandbox {
            sandbox.shutdown().await.ok();
        }
    }
}

/// Runs `body` on a fresh [`Round`] and always cleans the round up.
pub async fn with_round<T>(setup: Setup, body: impl AsyncFnOnce(&Round) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let round = Round::start(setup).await?;
    let out = body(&round).await;
    round.stop().await;
    out
}

/// A release `syncfleet-worker` process (next to the bench binary) reading `config_path`.
fn spawn_worker(config_path: &Path, name: &str) -> anyhow::Result<tokio::process::Child> {
    let bin = std::env::current_exe()?.parent().context("exe dir")?.join("syncfleet-worker");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: run `cargo build --release -p bench -p syncfleet-worker` first",
        bin.display()
    );
    Ok(tokio::process::Command::new(&bin)
        .env("SYNCFLEET_CONFIG", config_path)
        .env("SYNCFLEET__WORKER__NAME", name)
        .env("SYNCFLEET_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// `VmHWM` (peak resident set) of a process, in MiB.
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kb / 1024.0)
}
