//! Prometheus `/metrics` of the producer: every `syncfleet_*` metric this process records, plus
//! what is read fresh at each scrape, since autoscaling and alerts read it: the depth of every queue
//! the chains use and the freshest worker heartbeat of each (Redis, and PostgreSQL for `blocked`
//! and `runnable`), the latest successful run per chain and integration (PostgreSQL), and
//! `syncfleet_dependency_up` for both. The scrape always answers 200: a series whose source cannot
//! be read within [`READ_TIMEOUT`] is left out (never shown stale, never 0), and everything else
//! stays. The API's request histogram is recorded here too ([`observe_request`]).

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use syncfleet_runtime::metrics::{self, ScrapeSeries};
use syncfleet_store::{health, queue::QueueDepth, queues};

use crate::ops::Ops;

/// How long a scrape waits for PostgreSQL or Redis before leaving their series out (well inside
/// Prometheus's default 10 s scrape timeout).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// `/metrics`. Installs the recorder and registers the counters alerts read at 0 (every known
/// chain × run status, the reconciler's and the scheduler's errors), and reports `ops`'s pool.
pub fn router(ops: &Ops) -> Router<Ops> {
    // Installed when the API is built, so what the producer records from its start is kept.
    metrics::install();
    metrics::preregister_runs(ops.chains.all().map(|c| c.name.as_str()));
    metrics::preregister_producer();
    let pool = ops.pool.clone();
    metrics::observe_db_pool(move || (pool.size(), pool.num_idle(), pool.options().get_max_connections()));
    Router::new().route("/metrics", get(scrape))
}

/// What a scrape read from Redis for one queue: its depth there and its registered workers.
type RedisQueue = (QueueDepth, Vec<(String, f64)>);

async fn scrape(State(ops): State<Ops>) -> Response {
    let queue_names = ops.chains.queues();
    let chains: Vec<String> = ops.chains.all().map(|c| c.name.as_str().to_owned()).collect();
    let postgres = async {
        let facts = queues::depth_facts(&ops.pool).await?;
        let last = health::last_successes(&ops.pool, &chains).await?;
        Ok::<_, syncfleet_store::StoreError>((facts, last))
    };
    let redis = async {
        let mut out: Vec<RedisQueue> = Vec::with_capacity(queue_names.len());
        for q in &queue_names {
            out.push((ops.queues.depth(q).await?, ops.queues.workers(q).await?));
        }
        Ok::<_, syncfleet_store::queue::QueueError>(out)
    };
    let (postgres, redis) =
        tokio::join!(tokio::time::timeout(READ_TIMEOUT, postgres), tokio::time::timeout(READ_TIMEOUT, redis));
    let postgres = flatten(postgres, "PostgreSQL");
    let redis = flatten(redis, "Redis");

    let mut s = ScrapeSeries::default();
    let mut redis_up = redis.is_some();
    if let Some(queues) = &redis {
        let facts = postgres.as_ref().map(|(facts, _)| facts);
        for (depth, workers) in queues {
            let complete = match facts {
                Some(facts) => {
                    match tokio::time::timeout(READ_TIMEOUT, facts.complete(&ops.queues, depth.clone())).await {
                        Ok(Ok(d)) => Some(d),
                        Ok(Err(error)) => {
                            tracing::warn!(%error, queue = %depth.queue, "Runnable depth unreadable; left out of /metrics.");
                            redis_up = false;
                            None
                        }
                        Err(_) => {
                            tracing::warn!(queue = %depth.queue, "Runnable depth not read in time; left out of /metrics.");
                            redis_up = false;
                            None
                        }
                    }
                }
                None => None,
            };
            depth_series(&mut s, depth, complete.as_ref());
            let heartbeat = metrics::freshest_heartbeat(workers);
            s.gauge(metrics::WORKER_HEARTBEAT, &[("queue", &depth.queue)], heartbeat);
        }
    }
    if let Some((_, last)) = &postgres {
        for (chain, integration, at) in last {
            s.gauge(metrics::LAST_SUCCESS, &[("chain", chain), ("integration", integration)], *at);
        }
    }
    let up = |ok: bool| if ok { 1.0 } else { 0.0 };
    s.gauge(metrics::DEPENDENCY_UP, &[("dependency", "postgres")], up(postgres.is_some()));
    s.gauge(metrics::DEPENDENCY_UP, &[("dependency", "redis")], up(redis_up));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render_with(s)).into_response()
}

/// The value of a read that had [`READ_TIMEOUT`], or `None` (logged) when it failed or ran late.
fn flatten<T, E: std::fmt::Display>(read: Result<Result<T, E>, tokio::time::error::Elapsed>, what: &str) -> Option<T> {
    match read {
        Ok(Ok(v)) => Some(v),
        Ok(Err(error)) => {
            tracing::warn!(%error, "{what} unreadable; its series are left out of /metrics.");
            None
        }
        Err(_) => {
            tracing::warn!(
                timeout_secs = READ_TIMEOUT.as_secs(),
                "{what} not read in time; its series are left out of /metrics."
            );
            None
        }
    }
}

/// The depth gauges of one queue: Redis's states, and `blocked` and `runnable` when PostgreSQL's
/// part was read too (`complete`).
fn depth_series(s: &mut ScrapeSeries, redis: &QueueDepth, complete: Option<&QueueDepth>) {
    let mut states = vec![
        ("ready", redis.ready),
        ("scheduled", redis.scheduled),
        ("inflight", redis.inflight),
        ("dead", redis.dead),
    ];
    if let Some(d) = complete {
        states.extend([("blocked", d.blocked), ("runnable", d.runnable)]);
    }
    for (state, n) in states {
        s.gauge(metrics::QUEUE_DEPTH, &[("queue", &redis.queue), ("state", state)], n as f64);
    }
}

/// Records `syncfleet_api_request_duration_seconds` for a routed request, labelled with the route's
/// path template (a route layer: only matched routes have one).
pub async fn observe_request(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let route = matched.as_ref().map(MatchedPath::as_str).unwrap_or("unmatched");
    metrics::api_request(method, route, response.status().as_u16(), started.elapsed());
    response
}
