//! Prometheus metrics of the producer and the workers (the readiness probe and the queue depth
//! gauges, which read PostgreSQL and Redis, are `syncfleet_store::health`).
//!
//! Each process installs one recorder ([`install`]) and renders it in its own `/metrics` handler
//! (no exporter listener). Histograms have buckets, so they render as Prometheus histograms.
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `syncfleet_queue_depth` | gauge | `queue`, `state` (ready, scheduled, inflight, dead, blocked) | producer, read from Redis (and PostgreSQL for `blocked`) at every scrape |
//! | `syncfleet_job_wait_seconds` | histogram | `queue`, `step` | worker: from the step becoming due to its start |
//! | `syncfleet_step_duration_seconds` | histogram | `chain`, `step`, `outcome` (succeeded, retrying, failed, fenced) | worker: claim to recorded outcome |
//! | `syncfleet_records_total` | counter | `integration`, `entity`, `outcome` (inserted, updated, unchanged, deactivated, error) | pull steps: pages as they commit, deactivations when swept |
//! | `syncfleet_upstream_calls_total` | counter | `upstream` | HTTP client, per try sent |
//! | `syncfleet_upstream_throttled_total` | counter | `upstream` | HTTP client, per 429 answer |
//! | `syncfleet_lease_waits_total` | counter | `queue` | worker: entity lease busy, step delivered again later |
//! | `syncfleet_runs_total` | counter | `chain`, `status` (completed, partial, failed) | the process whose transaction ended the run |
//! | `syncfleet_reconciler_redeliveries_total` | counter | | producer: step jobs pushed again after Redis lost them |
//! | `syncfleet_worker_last_heartbeat_timestamp_seconds` | gauge | `queue` | producer, at every scrape: the freshest heartbeat (epoch s) of the workers registered on the queue in Redis, 0 when none is |

use std::{
    sync::OnceLock,
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

/// Upper bounds (seconds) of the job wait buckets: milliseconds when the fleet keeps up, up to an
/// hour when it does not.
const WAIT_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];
/// Upper bounds (seconds) of the step duration buckets: a demo step to a long full sync.
const DURATION_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];
/// How often histogram samples are folded in when nobody scrapes (bounds their memory).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Record outcomes of [`RECORDS`].
pub const RECORD_OUTCOMES: [&str; 5] = ["inserted", "updated", "unchanged", "deactivated", "error"];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(JOB_WAIT.into()), WAIT_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), DURATION_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("Another metrics recorder is installed; /metrics shows only syncfleet's own.");
        }
        describe();
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

/// The Prometheus text exposition of everything this process recorded.
pub fn render() -> String {
    install().render()
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_gauge!(QUEUE_DEPTH, "Step jobs of a queue by state, read at scrape time.");
    describe_histogram!(JOB_WAIT, metrics::Unit::Seconds, "From a step becoming due to a worker starting it.");
    describe_histogram!(STEP_DURATION, metrics::Unit::Seconds, "From claiming a step to recording its outcome.");
    describe_counter!(RECORDS, "Upstream records written by sync steps, by outcome.");
    describe_counter!(UPSTREAM_CALLS, "Requests sent to an upstream (each try).");
    describe_counter!(UPSTREAM_THROTTLED, "Upstream answers 429.");
    describe_counter!(LEASE_WAITS, "Step deliveries that found their entity lease busy.");
    describe_counter!(RUNS, "Runs ended, by status.");
    describe_counter!(RECONCILER_REDELIVERIES, "Step jobs pushed again after Redis lost them.");
    describe_gauge!(
        WORKER_HEARTBEAT,
        "Freshest heartbeat (epoch s) of the workers registered on a queue; 0 when none."
    );
}

/// Sets the freshest heartbeat of `queue` from its registered workers (name, last heartbeat in
/// epoch seconds), 0 when no worker is registered: "no worker heartbeat" alerts read it.
pub fn set_worker_heartbeat(queue: &str, workers: &[(String, f64)]) {
    let last = workers.iter().map(|(_, seen)| *seen).fold(0.0, f64::max);
    gauge!(WORKER_HEARTBEAT, "queue" => queue.to_owned()).set(last);
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
}
