//! The queue consumers of one worker process and what they last did: the supervisor's and the
//! probes' view of whether each queue is still being fetched from.
//!
//! A healthy consumer shows a sign of life on two beats of its own: its backend is polled every
//! `worker.poll_interval_ms` while it has room for a job ([`Watched`] stamps each poll), and
//! apalis-redis refreshes its registration in `{ns}:{queue}:workers` every `worker.heartbeat_secs`
//! (the `HeartBeat` event, also while every slot is busy). A consumer that misses either beat for
//! its limit ([`Limits`]) is **stalled**: the supervisor (`supervise` in `lib.rs`) restarts it and
//! logs why once; `/readyz` fails while a consumer is stalled or restarting after a stall, and
//! `/livez` fails once restarts no longer help ([`LIVENESS_STALLS`] in a row), so the orchestrator
//! replaces the process.
//!
//! Failures of the consumers themselves (Redis lost their registration on a flush, the connection
//! failed) are gathered into one **incident** per worker: one log line once they re-registered
//! (or once [`INCIDENT_WINDOW`] passed without it), instead of a block of lines per queue.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use syncfleet_shared::config::WorkerConfig;

/// A consumer with room for a job that was not polled for this many poll intervals is stalled
/// (at least [`MIN_STALL`]).
pub const STALL_POLL_INTERVALS: u32 = 40;
/// A consumer whose registration was not refreshed for this many heartbeats is stalled (other
/// workers drop a registration after 5).
pub const STALL_HEARTBEATS: u32 = 3;
/// The shortest silence called a stall: a fetch or a heartbeat may wait on Redis this long.
pub const MIN_STALL: Duration = Duration::from_secs(2);
/// Stall restarts in a row, without a sign of life between them, after which `/livez` fails.
pub const LIVENESS_STALLS: u32 = 3;
/// How long an incident waits for its consumers to re-register before it is logged anyway.
pub const INCIDENT_WINDOW: Duration = Duration::from_secs(30);

/// When a consumer counts as stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// No poll for this long while the consumer had room for a job.
    pub poll: Duration,
    /// No registration refresh for this long.
    pub heartbeat: Duration,
    /// Jobs one consumer runs at once (`worker.concurrency`).
    pub concurrency: usize,
}

impl Limits {
    pub fn new(config: &WorkerConfig) -> Limits {
        let poll = Duration::from_millis(config.poll_interval_ms.max(1)) * STALL_POLL_INTERVALS;
        let heartbeat = Duration::from_secs(config.heartbeat_secs.max(1)) * STALL_HEARTBEATS;
        Limits { poll: poll.max(MIN_STALL), heartbeat: heartbeat.max(MIN_STALL), concurrency: config.concurrency }
    }

    /// How often the supervisor looks.
    pub fn check_every(&self) -> Duration {
        (self.poll.min(self.heartbeat) / 4).max(Duration::from_millis(50))
    }
}

/// Why a consumer counts as stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// It had room for a job but did not poll Redis.
    NoPoll { silent: Duration },
    /// Its registration in `{ns}:{queue}:workers` was not refreshed.
    NoHeartbeat { silent: Duration },
}

impl Stall {
    pub fn silent(&self) -> Duration {
        match self {
            Stall::NoPoll { silent } | Stall::NoHeartbeat { silent } => *silent,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Stall::NoPoll { .. } => "it had room for a job but stopped polling Redis",
            Stall::NoHeartbeat { .. } => "it stopped refreshing its registration in Redis",
        }
    }
}

/// Not running (between two runs of its apalis worker, or stopped).
const NOT_RUNNING: u64 = u64::MAX;

/// One queue's consumer. Times are milliseconds since the process's [`Consumers`] were made.
#[derive(Debug)]
pub struct Consumer {
    epoch: Instant,
    /// The current run of its apalis worker started; [`NOT_RUNNING`] between runs.
    running_since: AtomicU64,
    last_poll: AtomicU64,
    last_heartbeat: AtomicU64,
    /// Jobs its handler is running now.
    in_flight: AtomicUsize,
    /// Stall restarts in a row without a sign of life since.
    stalls: AtomicU32,
    /// The run registered in Redis (its first heartbeat) since it started.
    registered: AtomicU64,
}

impl Consumer {
    fn new(epoch: Instant) -> Consumer {
        Consumer {
            epoch,
            running_since: AtomicU64::new(NOT_RUNNING),
            last_poll: AtomicU64::new(0),
            last_heartbeat: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            stalls: AtomicU32::new(0),
            registered: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A new run of its apalis worker begins.
    pub fn started(&self) {
        self.registered.store(0, Ordering::SeqCst);
        self.running_since.store(self.now(), Ordering::SeqCst);
    }

    /// Its apalis worker ended (or was dropped): not registered until the next run registers.
    pub fn stopped(&self) {
        self.running_since.store(NOT_RUNNING, Ordering::SeqCst);
        self.registered.store(0, Ordering::SeqCst);
    }

    /// Its backend was polled for a job.
    pub fn polled(&self) {
        self.last_poll.store(self.now(), Ordering::Relaxed);
    }

    /// apalis-redis registered it or refreshed its registration.
    pub fn heartbeat(&self) {
        let now = self.now();
        self.last_heartbeat.store(now, Ordering::Relaxed);
        self.registered.compare_exchange(0, now.max(1), Ordering::SeqCst, Ordering::SeqCst).ok();
        self.stalls.store(0, Ordering::Relaxed);
    }

    /// Whether the current run has registered in Redis.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst) != 0
    }

    /// A job entered its handler; the guard marks it left.
    pub fn job(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Counts a restart for a stall; returns the stalls in a row.
    pub fn stalled_again(&self) -> u32 {
        self.stalls.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stall restarts in a row without a sign of life since.
    pub fn stalls(&self) -> u32 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Whether the running consumer is stalled now under `limits`.
    pub fn stall(&self, limits: &Limits) -> Option<Stall> {
        let since = self.running_since.load(Ordering::SeqCst);
        if since == NOT_RUNNING {
            return None;
        }
        let now = self.now();
        let silent = |last: u64| Duration::from_millis(now.saturating_sub(last.max(since)));
        let heartbeat = silent(self.last_heartbeat.load(Ordering::Relaxed));
        if heartbeat > limits.heartbeat {
            return Some(Stall::NoHeartbeat { silent: heartbeat });
        }
        let poll = silent(self.last_poll.load(Ordering::Relaxed));
        if poll > limits.poll && self.in_flight.load(Ordering::SeqCst) < limits.concurrency {
            return Some(Stall::NoPoll { silent: poll });
        }
        None
    }
}

/// Marks a job as out of its consumer's handler when dropped.
pub struct InFlight(Arc<Consumer>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A failure of some consumers, reported as one line.
#[derive(Debug, Default)]
struct Incident {
    /// Queue → the error of its first failure in this incident.
    queues: BTreeMap<String, String>,
    failures: u32,
}

/// The consumers of one worker process, by queue.
#[derive(Debug)]
pub struct Consumers {
    pub limits: Limits,
    worker: String,
    queues: BTreeMap<String, Arc<Consumer>>,
    incident: Mutex<Option<Incident>>,
}

/// What the probes say about the consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// A consumer is stalled or restarting after a stall: not ready.
    Stalled(String),
    /// Restarts did not help: not alive.
    Dead(String),
}

impl Consumers {
    pub fn new(config: &WorkerConfig, worker: &str, queues: &[String]) -> Consumers {
        let epoch = Instant::now();
        Consumers {
            limits: Limits::new(config),
            worker: worker.to_owned(),
            queues: queues.iter().map(|q| (q.clone(), Arc::new(Consumer::new(epoch)))).collect(),
            incident: Mutex::new(None),
        }
    }

    /// The queues, in name order.
    pub fn queues(&self) -> impl Iterator<Item = &String> {
        self.queues.keys()
    }

    /// The consumer of `queue` (one of those given to [`Consumers::new`]).
    pub fn get(&self, queue: &str) -> Arc<Consumer> {
        self.queues.get(queue).cloned().unwrap_or_else(|| panic!("queue `{queue}` has no consumer"))
    }

    /// The probes' verdict.
    pub fn health(&self) -> Health {
        let mut stalled = Vec::new();
        for (queue, c) in &self.queues {
            if c.stalls() >= LIVENESS_STALLS {
                return Health::Dead(format!(
                    "queue consumer `{queue}` stalled {} times in a row; restarting it did not help",
                    c.stalls()
                ));
            }
            if let Some(stall) = c.stall(&self.limits) {
                // The supervisor restarts a stalled consumer at once; still stalled at twice the
                // limit means nothing restarts it.
                if stall.silent() > 2 * self.limits.poll.max(self.limits.heartbeat) {
                    return Health::Dead(format!(
                        "queue consumer `{queue}` is stalled for {} s: {}",
                        stall.silent().as_secs(),
                        stall.reason()
                    ));
                }
                stalled.push(format!("`{queue}` ({} for {} ms)", stall.reason(), stall.silent().as_millis()));
            } else if c.stalls() > 0 {
                stalled.push(format!("`{queue}` (restarted after a stall, not fetching yet)"));
            }
        }
        if stalled.is_empty() {
            Health::Ok
        } else {
            Health::Stalled(format!("queue consumers stalled: {}", stalled.join(", ")))
        }
    }

    /// Records that `queue`'s consumer failed with `error` and is being restarted. The first
    /// failure of an incident returns `true`: the caller then runs [`Consumers::report`].
    pub fn failed(&self, queue: &str, error: &str) -> bool {
        let mut incident = self.incident.lock().unwrap_or_else(|p| p.into_inner());
        let opens = incident.is_none();
        let i = incident.get_or_insert_with(Incident::default);
        i.queues.entry(queue.to_owned()).or_insert_with(|| error.to_owned());
        i.failures += 1;
        opens
    }

    /// Waits until every consumer of the open incident has registered again (or
    /// [`INCIDENT_WINDOW`] passed, or `stop`), then logs the incident as one line and closes it.
    pub async fn report(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let started = Instant::now();
        let settled = loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = stop.cancelled() => return,
            }
            let pending = self.pending();
            if pending.is_empty() || started.elapsed() >= INCIDENT_WINDOW {
                break pending;
            }
        };
        let Some(incident) = self.incident.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let queues = incident.queues.keys().cloned().collect::<Vec<_>>().join(",");
        let lost = incident.queues.values().all(|e| state_lost(e));
        let error = incident.queues.values().next().map(|e| summary(e)).unwrap_or_default();
        let took_ms = started.elapsed().as_millis() as u64;
        let failures = incident.failures;
        match (lost, settled.is_empty()) {
            (true, true) => tracing::warn!(
                worker = %self.worker,
                %queues,
                took_ms,
                "Redis no longer held this worker's queue registrations (flushed or restarted, or the worker \
                 was taken for dead); the worker re-registered."
            ),
            (false, true) => tracing::warn!(
                worker = %self.worker,
                %queues,
                %error,
                failures,
                took_ms,
                "Queue consumers failed; the worker restarted and re-registered them."
            ),
            (_, false) => tracing::warn!(
                worker = %self.worker,
                %queues,
                %error,
                failures,
                not_registered = %settled.join(","),
                "Queue consumers failed and are not registered again yet; the worker keeps retrying."
            ),
        }
    }

    /// The queues of the open incident whose consumer has not registered again.
    fn pending(&self) -> Vec<String> {
        let incident = self.incident.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = incident.as_ref() else { return vec![] };
        i.queues.keys().filter(|q| !self.queues.get(*q).is_some_and(|c| c.is_registered())).cloned().collect()
    }
}

/// Whether `error` is apalis-redis refusing this worker's state because Redis no longer holds it
/// (flushed or restarted, or the worker was taken for dead): a script refusing an unregistered
/// worker ("… worker not registered"), or the ack of a task that is no longer in the worker's
/// in-flight set ("task not executed by worker": the step running when Redis lost it finishes).
fn state_lost(error: &str) -> bool {
    error.contains("not registered") || error.contains("task not executed by worker")
}

/// An error as one short phrase: apalis-redis's script errors end in the script's hash.
pub fn summary(error: &str) -> String {
    let text = error.split(" script:").next().unwrap_or(error).trim();
    let text = text.rsplit("ResponseError: ").next().unwrap_or(text);
    text.chars().take(200).collect()
}

/// A poll strategy that stamps its consumer at every poll of the backend, around `S`.
#[derive(Debug, Clone)]
pub struct Watched<S> {
    inner: S,
    consumer: Arc<Consumer>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, consumer: Arc<Consumer>) -> Watched<S> {
        Watched { inner, consumer }
    }
}

impl<S: PollStrategy> PollStrategy for Watched<S> {
    fn poll_drive(&mut self, cx: &mut Context<'_>, snapshot: &PollSnapshot) -> Poll<Option<()>> {
        self.consumer.polled();
        self.inner.poll_drive(cx, snapshot)
    }

    fn on_poll(&mut self, snapshot: &PollSnapshot) {
        self.inner.on_poll(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { poll: Duration::from_millis(200), heartbeat: Duration::from_millis(300), concurrency: 2 }
    }

    #[test]
    fn limits_follow_the_config_with_a_floor() {
        let mut config = syncfleet_shared::config::Config::default().worker;
        config.poll_interval_ms = 50;
        config.heartbeat_secs = 2;
        let l = Limits::new(&config);
        assert_eq!((l.poll, l.heartbeat), (Duration::from_secs(2), Duration::from_secs(6)));
        config.poll_interval_ms = 500;
        assert_eq!(Limits::new(&config).poll, Duration::from_secs(20));
    }

    #[test]
    fn a_consumer_that_stops_polling_with_room_is_stalled_a_busy_one_is_not() {
        let c = Arc::new(Consumer::new(Instant::now()));
        assert_eq!(c.stall(&limits()), None, "not running: never stalled");
        c.started();
        c.polled();
        c.heartbeat();
        assert_eq!(c.stall(&limits()), None);
        std::thread::sleep(Duration::from_millis(250));
        c.heartbeat();
        assert!(matches!(c.stall(&limits()), Some(Stall::NoPoll { .. })), "room for a job, no poll");
        let (_a, _b) = (c.job(), c.job());
        assert_eq!(c.stall(&limits()), None, "every slot busy: not polling is expected");
        std::thread::sleep(Duration::from_millis(350));
        assert!(matches!(c.stall(&limits()), Some(Stall::NoHeartbeat { .. })), "busy, but no heartbeat either");
        c.stopped();
        assert_eq!(c.stall(&limits()), None);
    }

    #[test]
    fn probes_fail_readiness_on_a_stall_and_liveness_when_restarts_do_not_help() {
        let queues = vec!["demo".to_owned(), "sync".to_owned()];
        let mut consumers = Consumers::new(&syncfleet_shared::config::Config::default().worker, "w", &queues);
        consumers.limits = limits();
        let demo = consumers.get("demo");
        demo.started();
        demo.heartbeat();
        demo.polled();
        assert_eq!(consumers.health(), Health::Ok);
        std::thread::sleep(Duration::from_millis(250));
        demo.heartbeat();
        assert!(matches!(consumers.health(), Health::Stalled(m) if m.contains("`demo`")));
        for _ in 0..LIVENESS_STALLS {
            demo.stalled_again();
        }
        assert!(matches!(consumers.health(), Health::Dead(m) if m.contains("restarting it did not help")));
        demo.heartbeat();
        demo.polled();
        assert_eq!(consumers.health(), Health::Ok, "a sign of life clears it");
    }

    #[tokio::test]
    async fn an_incident_is_reported_once_after_its_consumers_registered_again() {
        let queues = vec!["demo".to_owned(), "sync".to_owned()];
        let consumers = Arc::new(Consumers::new(&syncfleet_shared::config::Config::default().worker, "w", &queues));
        let demo = consumers.get("demo");
        demo.started();
        demo.heartbeat();
        demo.stopped();
        assert!(consumers.failed("demo", "Cant fetch next: worker not registered"), "the first failure opens it");
        assert!(!consumers.failed("demo", "Cant fetch next: worker not registered"), "a repeat joins it");
        assert_eq!(consumers.pending(), ["demo"]);
        demo.started();
        assert_eq!(consumers.pending(), ["demo"], "restarted, not registered yet");
        demo.heartbeat();
        assert!(consumers.pending().is_empty());
        let reported = tokio::time::timeout(
            Duration::from_secs(5),
            consumers.clone().report(tokio_util::sync::CancellationToken::new()),
        )
        .await;
        assert!(reported.is_ok(), "reported as soon as every consumer registered again");
        assert!(consumers.failed("sync", "connection refused"), "a later failure is a new incident");
    }

    #[test]
    fn a_lost_registration_and_a_lost_in_flight_task_are_both_redis_losing_the_worker() {
        assert!(state_lost("ResponseError: Cant fetch next: worker not registered script: f053fd9b6a1e"));
        assert!(state_lost(
            "An error was signalled by the server - ResponseError: user_script:29: task not executed by worker"
        ));
        assert!(!state_lost("connection refused"));
    }

    #[test]
    fn an_error_summary_drops_the_script_hash() {
        let e = "An error was signalled by the server - ResponseError: Cant fetch next: worker not registered \
                 script: f053fd9b6a1e, on @user_script:20.";
        assert_eq!(summary(e), "Cant fetch next: worker not registered");
    }
}
