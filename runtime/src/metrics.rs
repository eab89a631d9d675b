//! Prometheus metrics of the producer and the workers (the readiness probe, which reads PostgreSQL
//! and Redis, is `syncfleet_store::health`).
//!
//! Each process installs one recorder ([`install`]) and renders it in its own `/metrics` handler
//! (no exporter listener). Histograms have buckets, so they render as Prometheus histograms. Series
//! read from PostgreSQL or Redis at scrape time are not kept in the recorder: the scrape renders them
//! ([`ScrapeSeries`], [`render_with`]), and leaves out those whose source cannot be read, so they
//! are never shown stale. Counters a query alerts on are registered at 0 when the process starts
//! ([`preregister_runs`], [`preregister_producer`]), so a new pod's first increment is seen.
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `syncfleet_queue_depth` | gauge | `queue`, `state` (ready, runnable, scheduled, inflight, dead, blocked) | producer, read from Redis (and PostgreSQL for `blocked`, `runnable`) at every scrape; left out when unreadable |
//! | `syncfleet_dependency_up` | gauge | `dependency` (postgres, redis) | producer, at every scrape: 1 when the dependency answered the scrape's reads |
//! | `syncfleet_job_wait_seconds` | histogram | `queue`, `step` | worker: from the step becoming due to its start |
//! | `syncfleet_step_duration_seconds` | histogram | `chain`, `step`, `outcome` (succeeded, retrying, failed, fenced) | worker: claim to recorded outcome |
//! | `syncfleet_records_total` | counter | `integration`, `entity`, `outcome` (inserted, updated, unchanged, deactivated, error) | pull steps: pages as they commit, deactivations when swept |
//! | `syncfleet_upstream_calls_total` | counter | `upstream` | HTTP client, per try sent |
//! | `syncfleet_upstream_throttled_total` | counter | `upstream` | HTTP client, per 429 answer |
//! | `syncfleet_lease_waits_total` | counter | `queue` | worker: entity lease busy, step delivered again later |
//! | `syncfleet_runs_total` | counter | `chain`, `status` (completed, partial, failed, cancelled) | the process whose transaction ended the run; 0 for every known chain × status from start-up |
//! | `syncfleet_reconciler_redeliveries_total` | counter | | producer: step jobs pushed again after Redis lost them |
//! | `syncfleet_reconciler_errors_total` | counter | | producer: reconcile passes that failed (0 from start-up) |
//! | `syncfleet_scheduler_errors_total` | counter | | producer: scheduler passes and scheduled triggers that failed (0 from start-up) |
//! | `syncfleet_worker_last_heartbeat_timestamp_seconds` | gauge | `queue` | producer, at every scrape: the freshest heartbeat (epoch s) of the workers registered on the queue in Redis, 0 when none is; left out when Redis is unreadable |
//! | `syncfleet_last_success_timestamp_seconds` | gauge | `chain`, `integration` | producer, at every scrape: finish time (epoch s) of the latest completed run, from PostgreSQL; left out when unreadable |
//! | `syncfleet_api_request_duration_seconds` | histogram | `method`, `route` (the matched path template), `status` | producer: every routed request |
//! | `syncfleet_db_pool_connections` | gauge | `state` (idle, in_use) | producer and worker, at every scrape ([`observe_db_pool`]) |
//! | `syncfleet_db_pool_max` | gauge | | producer and worker: the pool's `max_connections` |
//! | `syncfleet_build_info` | gauge | `version`, `commit` (when built with `SYNCFLEET_GIT_COMMIT`) | every process: 1 |
//! | `process_*` | | | every process (`metrics-process`): resident memory, CPU seconds, open fds, start time, threads |

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const QUEUE_DEPTH: &str = "syncfleet_queue_depth";
pub const JOB_WAIT: &str = "syncfleet_job_wait_seconds";
pub const STEP_DURATION: &str = "syncfleet_step_duration_seconds";
pub const RECORDS: &str = "syncfleet_records_total";
pub const UPSTREAM_CALLS: &str = "syncfleet_upstream_calls_total";
pub const UPSTREAM_THROTTLED: &str = "syncfleet_upstream_throttled_total";
pub const LEASE_WAITS: &str = "syncfleet_lease_waits_total";
pub const RUNS: &str = "syncfleet_runs_total";
pub const RECONCILER_REDELIVERIES: &str = "syncfleet_reconciler_redeliveries_total";
pub const WORKER_HEARTBEAT: &str = "syncfleet_worker_last_heartbeat_timestamp_seconds";
pub const DEPENDENCY_UP: &str = "syncfleet_dependency_up";
pub const LAST_SUCCESS: &str = "syncfleet_last_success_timestamp_seconds";
pub const RECONCILER_ERRORS: &str = "syncfleet_reconciler_errors_total";
pub const SCHEDULER_ERRORS: &str = "syncfleet_scheduler_errors_total";
pub const API_REQUEST_DURATION: &str = "syncfleet_api_request_duration_seconds";
pub const DB_POOL_CONNECTIONS: &str = "syncfleet_db_pool_connections";
pub const DB_POOL_MAX: &str = "syncfleet_db_pool_max";
pub const BUILD_INFO: &str = "syncfleet_build_info";

/// Statuses a run ends in ([`RUNS`]).
pub const RUN_STATUSES: [&str; 4] = ["completed", "partial", "failed", "cancelled"];

/// Upper bounds (seconds) of the job wait buckets: milliseconds when the fleet keeps up, up to an
/// hour when it does not.
const WAIT_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];
/// Upper bounds (seconds) of the step duration buckets: a demo step to a long full sync.
const DURATION_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];
/// Upper bounds (seconds) of the API request buckets: a cached read to a slow listing.
const REQUEST_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// How often histogram samples are folded in when nobody scrapes (bounds their memory).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Record outcomes of [`RECORDS`].
pub const RECORD_OUTCOMES: [&str; 5] = ["inserted", "updated", "unchanged", "deactivated", "error"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// This process's resource usage, collected at every render.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
/// Reads the database pool's (size, idle, max) at every render ([`observe_db_pool`]).
type PoolReader = Box<dyn Fn() -> (u32, usize, u32) + Send + Sync>;
static DB_POOL: Mutex<Option<PoolReader>> = Mutex::new(None);

/// Installs this process's recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(JOB_WAIT.into()), WAIT_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), DURATION_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(API_REQUEST_DURATION.into()), REQUEST_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("Another metrics recorder is installed; /metrics shows only syncfleet's own.");
        }
        describe();
        PROCESS.get_or_init(metrics_process::Collector::default).describe();
        build_info();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "Metrics upkeep thread did not start; scrapes still fold samples in.");
        }
        handle
    })
}

/// The Prometheus text exposition of everything this process recorded, with its process and
/// database pool figures as of now.
pub fn render() -> String {
    render_with(ScrapeSeries::default())
}

/// [`render`] followed by the series `scraped` read for this scrape.
pub fn render_with(scraped: ScrapeSeries) -> String {
    let handle = install();
    if let Some(process) = PROCESS.get() {
        process.collect();
    }
    if let Some(read) = DB_POOL.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let (size, idle, max) = read();
        let idle = idle.min(size as usize);
        gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
        gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set((size as usize - idle) as f64);
        gauge!(DB_POOL_MAX).set(max as f64);
    }
    let mut text = handle.render();
    text.push_str(&scraped.finish());
    text
}

/// Reports this process's database pool in [`DB_POOL_CONNECTIONS`] and [`DB_POOL_MAX`] at every
/// render: `read` returns the pool's (open connections, idle connections, max connections). The
/// last pool given wins.
pub fn observe_db_pool(read: impl Fn() -> (u32, usize, u32) + Send + Sync + 'static) {
    *DB_POOL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(read));
}

/// Series read from PostgreSQL or Redis for one scrape, rendered after the recorder's by
/// [`render_with`]: what could not be read is simply not added, so nothing is shown stale.
#[derive(Debug, Default)]
pub struct ScrapeSeries {
    /// Metric name → its sample lines.
    families: BTreeMap<&'static str, Vec<String>>,
}

impl ScrapeSeries {
    /// Adds one gauge sample; `name` is one of this module's scrape-time gauges.
    pub fn gauge(&mut self, name: &'static str, labels: &[(&str, &str)], value: f64) {
        let mut line = name.to_owned();
        if !labels.is_empty() {
            line.push('{');
            for (i, (key, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(line, "{sep}{key}=\"{}\"", escape_label(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        self.families.entry(name).or_default().push(line);
    }

    /// Whether `name` has a sample.
    pub fn has(&self, name: &str) -> bool {
        self.families.contains_key(name)
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for (name, lines) in self.families {
            let _ = writeln!(out, "# HELP {name} {}", scrape_help(name));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

/// A label value as the text format writes it (`\\`, `\"` and `\n` escaped).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn scrape_help(name: &str) -> &'static str {
    match name {
        QUEUE_DEPTH => "Step jobs of a queue by state, read at scrape time.",
        DEPENDENCY_UP => "1 when the dependency answered this scrape's reads, else 0.",
        WORKER_HEARTBEAT => "Freshest heartbeat (epoch s) of the workers registered on a queue; 0 when none.",
        LAST_SUCCESS => "Finish time (epoch s) of the latest completed run of a chain for an integration.",
        _ => "Read at scrape time.",
    }
}

fn build_info() {
    let mut labels = vec![("version", env!("CARGO_PKG_VERSION").to_owned())];
    if let Some(commit) = option_env!("SYNCFLEET_GIT_COMMIT").filter(|c| !c.is_empty()) {
        labels.push(("commit", commit.to_owned()));
    }
    let labels: Vec<metrics::Label> = labels.into_iter().map(|(k, v)| metrics::Label::new(k, v)).collect();
    gauge!(BUILD_INFO, labels).set(1.0);
}

/// Registers [`RUNS`] at 0 for every chain in `chains` and every status of [`RUN_STATUSES`], so an
/// alert on its increase sees the first run this process ends.
pub fn preregister_runs<'a>(chains: impl IntoIterator<Item = &'a str>) {
    for chain in chains {
        for status in RUN_STATUSES {
            counter!(RUNS, "chain" => chain.to_owned(), "status" => status).increment(0);
        }
    }
}

/// Registers the producer's error counters at 0.
pub fn preregister_producer() {
    counter!(RECONCILER_ERRORS).increment(0);
    counter!(SCHEDULER_ERRORS).increment(0);
    counter!(RECONCILER_REDELIVERIES).increment(0);
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_histogram!(JOB_WAIT, metrics::Unit::Seconds, "From a step becoming due to a worker starting it.");
    describe_histogram!(STEP_DURATION, metrics::Unit::Seconds, "From claiming a step to recording its outcome.");
    describe_counter!(RECORDS, "Upstream records written by sync steps, by outcome.");
    describe_counter!(UPSTREAM_CALLS, "Requests sent to an upstream (each try).");
    describe_counter!(UPSTREAM_THROTTLED, "Upstream answers 429.");
    describe_counter!(LEASE_WAITS, "Step deliveries that found their entity lease busy.");
    describe_counter!(RUNS, "Runs ended, by status.");
    describe_counter!(RECONCILER_REDELIVERIES, "Step jobs pushed again after Redis lost them.");
    describe_counter!(RECONCILER_ERRORS, "Reconcile passes that failed.");
    describe_counter!(SCHEDULER_ERRORS, "Scheduler passes and scheduled triggers that failed.");
    describe_histogram!(
        API_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Requests to the producer's HTTP API by method, matched route and status."
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Connections of this process's database pool by state.");
    describe_gauge!(DB_POOL_MAX, "Most connections this process's database pool opens.");
    describe_gauge!(BUILD_INFO, "1, labelled with the version this process was built from.");
}

/// The freshest heartbeat of a queue's registered workers (name, last heartbeat in epoch seconds),
/// 0 when none is registered: what "no worker heartbeat" alerts read ([`WORKER_HEARTBEAT`]).
pub fn freshest_heartbeat(workers: &[(String, f64)]) -> f64 {
    workers.iter().map(|(_, seen)| *seen).fold(0.0, f64::max)
}

/// A worker started a step that became due `due_at_ms` (epoch ms) ago; clocks that disagree count
/// as no wait.
pub fn job_started(queue: &str, step: &str, due_at_ms: i64) {
    let waited_ms = chrono::Utc::now().timestamp_millis().saturating_sub(due_at_ms).max(0);
    histogram!(JOB_WAIT, "queue" => queue.to_owned(), "step" => step.to_owned()).record(waited_ms as f64 / 1000.0);
}

pub fn step_finished(chain: &str, step: &str, outcome: &'static str, started: Instant) {
    histogram!(STEP_DURATION, "chain" => chain.to_owned(), "step" => step.to_owned(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Adds `n` records of `outcome` (one of [`RECORD_OUTCOMES`]).
pub fn records(integration: &str, entity: &str, outcome: &'static str, n: i64) {
    counter!(RECORDS, "integration" => integration.to_owned(), "entity" => entity.to_owned(), "outcome" => outcome)
        .increment(n.max(0) as u64);
}

pub fn upstream_call(upstream: &str) {
    counter!(UPSTREAM_CALLS, "upstream" => upstream.to_owned()).increment(1);
}

pub fn upstream_throttled(upstream: &str) {
    counter!(UPSTREAM_THROTTLED, "upstream" => upstream.to_owned()).increment(1);
}

pub fn lease_wait(queue: &str) {
    counter!(LEASE_WAITS, "queue" => queue.to_owned()).increment(1);
}

pub fn run_ended(chain: &str, status: &str) {
    counter!(RUNS, "chain" => chain.to_owned(), "status" => status.to_owned()).increment(1);
}

pub fn reconciler_redeliveries(n: usize) {
    counter!(RECONCILER_REDELIVERIES).increment(n as u64);
}

pub fn reconciler_error() {
    counter!(RECONCILER_ERRORS).increment(1);
}

pub fn scheduler_error() {
    counter!(SCHEDULER_ERRORS).increment(1);
}

/// One answered request: `route` is the matched path template (`/api/runs/{id}`), never the raw path.
pub fn api_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    histogram!(
        API_REQUEST_DURATION,
        "method" => method.to_owned(),
        "route" => route.to_owned(),
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_buckets() {
        install();
        job_started("unit-q", "s", chrono::Utc::now().timestamp_millis() - 30);
        step_finished("unit-chain", "s", "succeeded", Instant::now());
        records("acme", "items", "inserted", 3);
        let text = render();
        assert!(text.contains("syncfleet_job_wait_seconds_bucket{queue=\"unit-q\",step=\"s\",le=\"0.05\"}"), "{text}");
        assert!(text.contains("syncfleet_step_duration_seconds_bucket{chain=\"unit-chain\""), "{text}");
        assert!(text.contains("# TYPE syncfleet_job_wait_seconds histogram"), "{text}");
        assert!(
            text.contains("syncfleet_records_total{integration=\"acme\",entity=\"items\",outcome=\"inserted\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn scrape_series_render_after_the_recorder_and_escape_labels() {
        install();
        preregister_runs(["unit_chain"]);
        let mut scraped = ScrapeSeries::default();
        scraped.gauge(QUEUE_DEPTH, &[("queue", "q"), ("state", "runnable")], 3.0);
        scraped.gauge(DEPENDENCY_UP, &[("dependency", "redis")], 0.0);
        scraped.gauge(QUEUE_DEPTH, &[("queue", "a\"b\\c"), ("state", "ready")], 1.0);
        let text = render_with(scraped);
        assert!(text.contains("syncfleet_runs_total{chain=\"unit_chain\",status=\"failed\"} 0"), "{text}");
        assert!(text.contains("syncfleet_build_info{version=\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        let depth = text.find("# TYPE syncfleet_queue_depth gauge").expect("one family header");
        assert_eq!(text.matches("# TYPE syncfleet_queue_depth gauge").count(), 1, "{text}");
        assert!(text[depth..].contains("syncfleet_queue_depth{queue=\"q\",state=\"runnable\"} 3\n"), "{text}");
        assert!(text.contains("syncfleet_queue_depth{queue=\"a\\\"b\\\\c\",state=\"ready\"} 1\n"), "{text}");
        assert!(text.contains("syncfleet_dependency_up{dependency=\"redis\"} 0\n"), "{text}");
        // Nothing read at scrape time stays for the next scrape.
        assert!(!render().contains("syncfleet_dependency_up"));
    }
}
