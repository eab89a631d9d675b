//! The worker: a supervised consumer (apalis-redis worker) per queue feeding the step engine.
//!
//! Each process has a unique worker name (host + random suffix; each run of a queue's consumer
//! registers as `{name}:{n}`), polls Redis every `worker.poll_interval_ms`, and runs up to
//! `worker.concurrency` steps per queue at once. Attempts and retries are decided in PostgreSQL
//! by the engine; apalis only delivers. A consumer that fails is restarted and its failure
//! reported once per incident; one that stalls is restarted and fails the probes if restarting
//! does not help ([`consumers`]). On shutdown the drain starts at the signal ([`run_consumers`]).
//! [`run`] also serves `/metrics`, `/livez` and `/readyz` on `worker.listen`.

pub mod consumers;
pub mod engine;
pub mod http;
mod settles;
mod together;
pub mod wake;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use futures::FutureExt;
use rand::Rng;
use syncfleet_sdk::Registry;
use syncfleet_shared::{config::Config, job::JobPayload, retry::Backoff};
use syncfleet_store::{self as store, queue::QueueClient};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::instrument::WithSubscriber;

use consumers::{Consumer, Consumers, LIVENESS_STALLS, Stall, Watched, summary};
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
/// `syncfleet_store::roles::start`), then runs the steps of `registry`'s packs until `shutdown` is
/// cancelled and the drain is over ([`run_engine`]). The HTTP listener on `worker.listen` (unless
/// empty) answers until then; its `/readyz` and `/livez` include the queue consumers' health.
pub async fn run(config: Config, registry: &Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = store::roles::start(&config, registry).await?;
    let queues = QueueClient::connect_to(&config.redis).await?;
    let (chains, handlers) = registry.build(&config)?;
    let name = worker_name(config.worker.name.as_deref());
    let engine = Arc::new(Engine::new(config.clone(), pool, queues, chains.clone(), handlers, name.clone()));
    let consumers = Arc::new(Consumers::new(&config.worker, &name, &chains.queues()));
    let http_stop = CancellationToken::new();
    let server = match config.worker.listen.as_str() {
        "" => None,
        listen => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("worker.listen {listen}: {e}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(worker = %name, %addr, "Worker HTTP listening.");
            Some(tokio::spawn(http::serve(listener, engine.clone(), consumers.clone(), http_stop.clone())))
        }
    };
    let result = run_consumers(engine, consumers, shutdown).await;
    http_stop.cancel();
    if let Some(server) = server {
        server.await.ok();
    }
    result
}

/// After the drain timeout, how long stopped steps get to record their lost attempt before the
/// worker exits anyway (the reconciler then takes the step back after `stale_after_secs`).
pub const HARD_STOP_GRACE: Duration = Duration::from_secs(10);
/// After the steps, how long the queue consumers get to acknowledge their last jobs.
const CONSUMERS_CLOSE: Duration = Duration::from_secs(5);

/// Runs a consumer (apalis worker) per queue of `queues` until `shutdown`, then drains.
pub async fn run_engine(engine: Arc<Engine>, queues: Vec<String>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumers = Arc::new(Consumers::new(&engine.config.worker, &engine.name, &queues));
    run_consumers(engine, consumers, shutdown).await
}

/// Runs a supervised consumer per queue of `consumers` until `shutdown`. The drain starts at the
/// signal: the consumers fetch nothing more at once, running steps get `worker.drain_timeout_secs`
/// to finish, then the engine's hard stop cancels those still running (each attempt is recorded
/// as lost to the infrastructure: retried at once, no error budget spent; pages already written
/// stay) and the worker returns within [`HARD_STOP_GRACE`] more.
pub async fn run_consumers(
    engine: Arc<Engine>,
    consumers: Arc<Consumers>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let queues: Vec<String> = consumers.queues().cloned().collect();
    tracing::info!(worker = %engine.name, queues = ?queues, "Worker started.");
    match engine.queues.forget_stale_registrations().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(forgotten = n, "Forgot registrations of queues that no longer exist."),
        Err(error) => tracing::debug!(%error, "Could not tidy the queue registrations."),
    }
    let mut supervisors = Vec::new();
    for queue in queues {
        supervisors.push(tokio::spawn(supervise(engine.clone(), consumers.clone(), queue, shutdown.clone())));
    }
    shutdown.cancelled().await;
    let signalled = Instant::now();
    let tracker: &TaskTracker = &engine.tracker;
    tracker.close();
    let drain = Duration::from_secs(engine.config.worker.drain_timeout_secs);
    if !tracker.is_empty() {
        tracing::info!(
            running = tracker.len(),
            drain_secs = drain.as_secs(),
            "Stopping: no new jobs; running steps get the drain timeout."
        );
    }
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            running = tracker.len(),
            drain_secs = drain.as_secs(),
            "Drain timeout: stopping the steps still running; each attempt is retried, spending no error budget."
        );
        engine.hard_stop.cancel();
        if tokio::time::timeout(HARD_STOP_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!(running = tracker.len(), "Steps did not stop in time; the reconciler takes them back.");
        }
    }
    let consumers_closed = futures::future::join_all(supervisors);
    if tokio::time::timeout(CONSUMERS_CLOSE, consumers_closed).await.is_err() {
        tracing::warn!("Queue consumers did not close in time; Redis hands their jobs out again.");
    }
    tracing::info!(worker = %engine.name, stopping_ms = signalled.elapsed().as_millis() as u64, "Worker stopped.");
    Ok(())
}

/// How one run of a queue's consumer ended.
enum Ended {
    /// The worker is stopping.
    Shutdown,
    /// The apalis worker failed (Redis lost its registration, a Redis error).
    Failed(String),
    /// The apalis worker ended without being asked to.
    Stopped,
    /// The consumer stopped showing signs of life ([`Consumer::stall`]).
    Stalled(Stall),
}

/// Keeps one consumer (an apalis worker) running on `queue`. Each run registers under a new name
/// (`{worker}:{n}`). A run that fails or ends on its own is restarted after a jittered backoff
/// ([`Backoff::WORKER_RESTART`], so the workers of a fleet that lost Redis together do not return
/// together) and reported once per incident ([`Consumers::failed`]); a run that stalls is dropped
/// and restarted at once, and the stall logged once. apalis's own log lines are not emitted: they
/// repeat each failure per queue and per poll.
async fn supervise(engine: Arc<Engine>, consumers: Arc<Consumers>, queue: String, shutdown: CancellationToken) {
    let consumer = consumers.get(&queue);
    let (mut generation, mut failures): (u32, u32) = (0, 0);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let name = format!("{}:{}", engine.name, generation);
        generation += 1;
        let started = Instant::now();
        let ended = run_consumer(&engine, &consumers, &queue, &name, &shutdown).await;
        let delay = match ended {
            Ended::Shutdown => return,
            Ended::Stalled(stall) => {
                let stalls = consumer.stalled_again();
                let silent_ms = stall.silent().as_millis() as u64;
                if stalls == 1 {
                    tracing::warn!(worker = %name, %queue, silent_ms, reason = stall.reason(),
                        "Queue consumer stalled; restarting it.");
                } else if stalls == LIVENESS_STALLS {
                    tracing::error!(worker = %name, %queue, stalls, reason = stall.reason(),
                        "Queue consumer stays stalled after restarts; /livez now fails.");
                }
                Duration::ZERO
            }
            Ended::Failed(_) | Ended::Stopped => {
                let error = match ended {
                    Ended::Failed(error) => error,
                    _ => "the consumer ended on its own".to_owned(),
                };
                // A run that went well for a while starts the backoff over.
                failures = if started.elapsed() > Duration::from_secs(60) { 1 } else { failures + 1 };
                tracing::debug!(worker = %name, %queue, %error, "Queue consumer failed; restarting it.");
                if consumers.failed(&queue, &error) {
                    tokio::spawn(consumers.clone().report(shutdown.clone()));
                }
                Backoff::WORKER_RESTART.delay(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One run of `queue`'s consumer under `name`, watched for stalls, until it ends or `shutdown`.
async fn run_consumer(
    engine: &Arc<Engine>,
    consumers: &Arc<Consumers>,
    queue: &str,
    name: &str,
    shutdown: &CancellationToken,
) -> Ended {
    let consumer = consumers.get(queue);
    let wc = &engine.config.worker;
    // No apalis task lock: a fetched job is already in this worker's in-flight set (re-enqueued
    // if the worker dies), and PostgreSQL's fence and the entity lease decide what runs. The lock
    // costs a Redis round trip (and a scan of the active list) before every step starts.
    let config = engine
        .queues
        .apalis_config(queue)
        .batch_size(1)
        .lock_tasks(false)
        .heartbeat_interval(Duration::from_secs(wc.heartbeat_secs.max(1)))
        .missed_heartbeats(5);
    let polls = Watched::new(engine.wake.strategy(queue, Duration::from_millis(wc.poll_interval_ms)), consumer.clone());
    let storage =
        RedisStorage::<JobPayload>::new(engine.queues.connection()).with_config(config).poll_with_strategy(polls);
    let context = WorkerContext::new(name);
    let beats = consumer.clone();
    let worker = WorkerBuilder::new(&context)
        .backend(storage)
        .concurrency(wc.concurrency)
        .data(QueueWorker { engine: engine.clone(), queue: queue.into(), consumer: consumer.clone() })
        .on_event(move |_, event| {
            if matches!(event, Event::HeartBeat) {
                beats.heartbeat();
            }
        })
        .build(handle_job);
    consumer.started();
    // apalis's own lines (per poll and per queue) would repeat what the supervisor reports once.
    let quiet = tracing::Dispatch::none();
    let mut run = Box::pin(worker.run().with_subscriber(quiet.clone()));
    let mut check = tokio::time::interval(consumers.limits.check_every());
    let mut stopping = false;
    let ended = loop {
        tokio::select! {
            result = &mut run => break match result {
                _ if stopping || shutdown.is_cancelled() => Ended::Shutdown,
                Ok(()) => Ended::Stopped,
                Err(error) => Ended::Failed(summary(&error.to_string())),
            },
            () = shutdown.cancelled(), if !stopping => {
                // Fetch nothing more; the run ends once its running jobs are acknowledged.
                stopping = true;
                if tracing::dispatcher::with_default(&quiet, || context.stop()).is_err() {
                    break Ended::Shutdown; // not started: nothing to wait for
                }
            }
            _ = check.tick(), if !stopping => {
                if let Some(stall) = consumer.stall(&consumers.limits) {
                    break Ended::Stalled(stall);
                }
            }
        }
    };
    consumer.stopped();
    tracing::dispatcher::with_default(&quiet, || drop((run, context)));
    ended
}

/// What the handler of one queue's apalis worker needs.
#[derive(Clone)]
struct QueueWorker {
    engine: Arc<Engine>,
    queue: Arc<str>,
    consumer: Arc<Consumer>,
}

/// What a panic carried, when it is text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "(no message)",
    }
}

/// The apalis handler. The step runs on a tracked task of its own, so it finishes even when the
/// apalis worker is stopping; the handler returns `Ok` once the outcome is in PostgreSQL. Its first
/// poll is made here, in the consumer's task, before the task is spawned: it asks for the entity
/// lease, which so reaches Redis before the consumer's next fetch, and the step's task is woken by
/// the lease's answer.
async fn handle_job(job: JobPayload, worker: Data<QueueWorker>) -> Result<(), BoxDynError> {
    let QueueWorker { engine, queue, consumer } = (*worker).clone();
    let _in_flight = consumer.job();
    let e = engine.clone();
    // A panic, in the first poll as on the step's task, ends this job alone.
    let mut step = Box::pin(
        std::panic::AssertUnwindSafe(
            async move {
                let executed = e.execute(&queue, job).await;
                if let Err(error) = &executed {
                    tracing::error!(%error, "Step job could not be processed; Redis will deliver it again.");
                }
                executed
            }
            .with_subscriber(engine.dispatch().clone()),
        )
        .catch_unwind(),
    );
    let ended = match futures::poll!(step.as_mut()) {
        std::task::Poll::Ready(ended) => ended,
        std::task::Poll::Pending => {
            engine.tracker.spawn(step).await.map_err(|join| format!("step task ended: {join}"))?
        }
    };
    let executed = ended.map_err(|panic| format!("step task panicked: {}", panic_text(&*panic)))?;
    match executed {
        Ok(_) => Ok(()),
        Err(error) => Err(error.into()),
    }
}
