//! The worker: apalis-redis workers (one per queue) feeding the step engine.
//!
//! Each process has a unique worker name (host + random suffix, new on every restart of the
//! apalis worker), polls Redis every `worker.poll_interval_ms`, runs up to `worker.concurrency`
//! steps at once, and on shutdown stops fetching and lets running steps finish within
//! `worker.drain_timeout_secs`. Attempts and retries are decided in PostgreSQL by the engine;
//! apalis only delivers. [`run`] also serves `/metrics`, `/livez` and `/readyz` on `worker.listen`.

pub mod engine;
pub mod http;

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use rand::Rng;
use syncfleet_sdk::Registry;
use syncfleet_shared::{config::Config, job::JobPayload, retry::Backoff};
use syncfleet_store::{self as store, queue::QueueClient};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use engine::Engine;

pub use syncfleet_runtime::shutdown_signal;

/// A unique worker name: prefix (config, else host name) plus a random suffix.
pub fn worker_name(prefix: Option<&str>) -> String {
    let base = prefix
        .map(str::to_owned)
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "worker".into());
    let suffix: u32 = rand::rng().random();
    format!("{base}-{}-{suffix:08x}", std::process::id())
}

/// Connects (the runtime role; the owner path first when `database.owner_url` is set:
/// `syncfleet_store::roles::start`), then runs the steps of `registry`'s packs until `shutdown` is cancelled and running
/// steps have drained. The HTTP listener on `worker.listen` (unless empty) answers until the
/// drain is over.
pub async fn run(config: Config, registry: &Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = store::roles::start(&config, registry).await?;
    let queues = QueueClient::connect(config.redis.url.expose(), &config.redis.namespace).await?;
    let (chains, handlers) = registry.build(&config)?;
    let name = worker_name(config.worker.name.as_deref());
    let engine = Arc::new(Engine::new(config.clone(), pool, queues, chains.clone(), handlers, name.clone()));
    let http_stop = CancellationToken::new();
    let server = match config.worker.listen.as_str() {
        "" => None,
        listen => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("worker.listen {listen}: {e}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(worker = %name, %addr, "Worker HTTP listening.");
            Some(tokio::spawn(http::serve(listener, engine.clone(), http_stop.clone())))
        }
    };
    let result = run_engine(engine, chains.queues(), shutdown).await;
    http_stop.cancel();
    if let Some(server) = server {
        server.await.ok();
    }
    result
}

/// Runs apalis workers for `queues` until `shutdown`, then drains running steps.
pub async fn run_engine(engine: Arc<Engine>, queues: Vec<String>, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(worker = %engine.name, queues = ?queues, "Worker started.");
    let mut supervisors = Vec::new();
    for queue in queues {
        supervisors.push(tokio::spawn(supervise(engine.clone(), queue, shutdown.clone())));
    }
    for s in supervisors {
        s.await.ok();
    }
    let tracker: &TaskTracker = &engine.tracker;
    tracker.close();
    let drain = Duration::from_secs(engine.config.worker.drain_timeout_secs);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(running = tracker.len(), "Drain timeout: steps still running are left to the reconciler.");
        engine.hard_stop.cancel();
    }
    tracing::info!(worker = %engine.name, "Worker stopped.");
    Ok(())
}

/// Keeps one apalis worker running on `queue`; a worker that stops without a shutdown request
/// (Redis stall, flushed worker registry) is restarted under a new name after a jittered backoff
/// ([`Backoff::WORKER_RESTART`]), so the workers of a fleet that lost Redis together do not return
/// together.
async fn supervise(engine: Arc<Engine>, queue: String, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let name = format!("{}:{}", engine.name, failures);
        let wc = &engine.config.worker;
        let config = engine
            .queues
            .apalis_config(&queue)
            .batch_size(1)
            .heartbeat_interval(Duration::from_secs(wc.heartbeat_secs.max(1)))
            .missed_heartbeats(5);
        let storage = RedisStorage::<JobPayload>::new(engine.queues.connection())
            .with_config(config)
            .poll_with_interval(Duration::from_millis(wc.poll_interval_ms));
        let worker = WorkerBuilder::new(name.as_str())
            .backend(storage)
            .concurrency(wc.concurrency)
            .data(QueueWorker { engine: engine.clone(), queue: queue.as_str().into() })
            .build(handle_job);
        let stop = shutdown.clone();
        let result = worker
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if shutdown.is_cancelled() {
            return;
        }
        failures += 1;
        let backoff = Backoff::WORKER_RESTART.delay(failures);
        match result {
            Ok(()) => tracing::warn!(worker = %name, %queue, "Queue worker stopped on its own; restarting."),
            Err(error) => tracing::warn!(worker = %name, %queue, %error, "Queue worker failed; restarting."),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What the handler of one queue's apalis worker needs.
#[derive(Clone)]
struct QueueWorker {
    engine: Arc<Engine>,
    queue: Arc<str>,
}

/// The apalis handler. The step runs on a tracked task of its own, so it finishes even when the
/// apalis worker is stopping; the handler returns `Ok` once the outcome is in PostgreSQL.
async fn handle_job(job: JobPayload, worker: Data<QueueWorker>) -> Result<(), BoxDynError> {
    let QueueWorker { engine, queue } = (*worker).clone();
    let e = engine.clone();
    let handle = engine.tracker.spawn(async move { e.execute(&queue, job).await });
    match handle.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::error!(%error, "Step job could not be processed; Redis will deliver it again.");
            Err(error.into())
        }
        Err(join) => Err(format!("step task panicked: {join}").into()),
    }
}
