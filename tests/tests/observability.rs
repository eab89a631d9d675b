//! Observability of real processes: one trace per run from the producer's trigger through every step
//! job on the workers; `/metrics` histograms, record counters and queue depth; `/readyz` and the
//! migrations.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value},
};
use prost::Message;
use serde_json::{Value, json};
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::{RunView, StepView};
use syncfleet_tests::{Sandbox, TestEnv, binary, erp_integration_toml, signal};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// OTLP span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const KIND_CLIENT: i32 = 3;
const KIND_PRODUCER: i32 = 4;
const KIND_CONSUMER: i32 = 5;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A minimal OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf bodies) keeping spans in memory.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    /// Starts on a free port; returns the receiver and the endpoint to give the processes.
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, endpoint)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(receiver): State<Receiver>, body: Bytes) -> Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: span.attributes.iter().map(|a| (a.key.clone(), text(&a.value))).collect(),
            });
        }
    }
    receiver.spans.lock().unwrap().extend(received);
    // An empty `ExportTraceServiceResponse` encodes to no bytes.
    ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new()).into_response()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spawns `cmd` (JSON logs on a pipe), waits for its log line `message` and returns the child and
/// that line's `addr` field. Later lines go on to this test's stderr.
async fn spawn_until(mut cmd: Command, message: &str) -> (Child, String) {
    let mut child = cmd.spawn().expect("spawn (build the binaries first: cargo build --workspace --bins)");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("{line}");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
            if entry["fields"]["message"] == message {
                return entry["fields"]["addr"].as_str().expect("the line has the address").to_owned();
            }
        }
        panic!("the process exited before logging {message:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {message:?} within 60 s"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    (child, addr)
}

/// SIGTERM, then wait: the process drains and flushes its spans before it exits.
async fn stop(mut child: Child) {
    signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "clean exit after SIGTERM: {status:?}");
}

/// A `syncfleet-worker` process logging JSON (its listening address included).
fn worker_process(env: &TestEnv, name: &str) -> Command {
    let mut c = env.worker_process(name);
    c.env("SYNCFLEET_LOG", "warn,syncfleet_worker=info").env("SYNCFLEET_LOG_JSON", "true").stderr(Stdio::piped());
    c
}

/// A `syncfleet-producer` process with this test's config, logging JSON.
fn producer_process(env: &TestEnv) -> Command {
    let mut c = Command::new(binary("syncfleet-producer"));
    c.env("SYNCFLEET_CONFIG", &env.config_path)
        .env("SYNCFLEET_LOG", "warn,syncfleet_producer=info")
        .env("SYNCFLEET_LOG_JSON", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Points a process's trace export at `endpoint`, flushing every 100 ms.
fn export_traces(cmd: &mut Command, endpoint: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint).env("OTEL_BSP_SCHEDULE_DELAY", "100");
}

/// Whether `span` descends from the span `ancestor` within `spans`.
fn descends_from(span: &ReceivedSpan, ancestor: &str, spans: &[ReceivedSpan]) -> bool {
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut parent = span.parent.as_str();
    for _ in 0..32 {
        if parent == ancestor {
            return true;
        }
        match by_id.get(parent) {
            Some(p) => parent = p.parent.as_str(),
            None => return false,
        }
    }
    false
}

/// A run's trace (the trace id and root span id of its stored `traceparent`) and its spans.
fn trace_of<'a>(traceparent: &str, spans: &'a [ReceivedSpan]) -> (String, Vec<&'a ReceivedSpan>) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, root) = (parts[1], parts[2].to_owned());
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    assert!(!trace.is_empty(), "no span of trace {trace_id} arrived");
    (root, trace)
}

/// The issue asks for "a test with an in-memory exporter [that] shows a run's spans share one trace
/// id across producer and worker processes' spans". This test does that more honestly: the spans
/// are real OTLP/HTTP exports of real `syncfleet-producer` and `syncfleet-worker` processes, received
/// by a small OTLP receiver inside the test that keeps them in memory. The producer triggers both
/// runs itself (a start-up schedule), so nothing in this process takes part in the traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_one_trace_from_the_producer_trigger_through_every_worker_job() {
    let (receiver, endpoint) = Receiver::start().await;
    let sandbox = Sandbox::start().await;
    let erp = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "");
    let schedules = "[schedules.demo_diamond.acme]\ninterval_secs = 3600\n\
                     [schedules.http_json_sync.erp]\ninterval_secs = 3600\n";
    let env = TestEnv::new(&format!("{erp}\n{schedules}")).await;
    env.demo_integration("acme", json!({ "step_ms": 20 })).await;

    let mut workers = Vec::new();
    for i in 0..2 {
        let mut c = worker_process(&env, &format!("otel-w{i}-{}", env.id));
        export_traces(&mut c, &endpoint);
        workers.push(spawn_until(c, "Worker HTTP listening.").await.0);
    }
    let mut p = producer_process(&env);
    export_traces(&mut p, &endpoint);
    p.env("SYNCFLEET__PRODUCER__STARTUP_TRIGGER", "true");
    let (producer, _) = spawn_until(p, "Producer started.").await;

    let runs: Vec<(uuid::Uuid, String, Option<String>)> = env
        .eventually(Duration::from_secs(30), "the producer's start-up runs", || async {
            let rows: Vec<(uuid::Uuid, String, Option<String>)> =
                sqlx::query_as("SELECT id, chain, trace_context FROM chain_runs ORDER BY chain")
                    .fetch_all(&env.pool)
                    .await
                    .unwrap();
            (rows.len() == 2).then_some(rows)
        })
        .await;
    for (id, chain, _) in &runs {
        let view = env.wait(RunId(*id), Duration::from_secs(60)).await;
        assert_eq!(view.status, "completed", "{chain}: {view:#?}");
    }
    for w in workers {
        stop(w).await;
    }
    stop(producer).await;

    let spans = receiver.spans();
    let mut trace_ids = BTreeSet::new();
    for (id, chain, traceparent) in &runs {
        let traceparent = traceparent.as_deref().unwrap_or_else(|| panic!("{chain}: the run stores its trace context"));
        let (root, trace) = trace_of(traceparent, &spans);
        trace_ids.insert(trace[0].trace_id.clone());

        // The root: the producer's trigger.
        let trigger = trace.iter().find(|s| s.span_id == root).unwrap_or_else(|| panic!("{chain}: no trigger span"));
        assert_eq!((trigger.service.as_str(), trigger.name.as_str()), ("syncfleet-producer", "trigger"));
        assert_eq!(trigger.parent, "", "the trigger starts the trace");
        assert_eq!(trigger.attr("chain"), Some(chain.as_str()));

        // Its pushes to Redis.
        let send = trace
            .iter()
            .find(|s| s.service == "syncfleet-producer" && s.kind == KIND_PRODUCER)
            .unwrap_or_else(|| panic!("{chain}: no send span of the producer"));
        assert_eq!(send.parent, root);
        assert_eq!(
            (send.attr("messaging.system"), send.attr("messaging.operation.type")),
            (Some("redis"), Some("send"))
        );

        // Every job a worker processed continues the trigger's trace.
        let process: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.kind == KIND_CONSUMER).collect();
        let steps: Vec<(String, String, String)> =
            sqlx::query_as("SELECT step, queue, job_id FROM step_runs WHERE run_id = $1")
                .bind(id)
                .fetch_all(&env.pool)
                .await
                .unwrap();
        let processed: BTreeSet<&str> = process.iter().filter_map(|s| s.attr("messaging.message.id")).collect();
        for (step, queue, job_id) in &steps {
            assert!(
                processed.contains(job_id.as_str()),
                "{chain}: no process span for {step} ({job_id}): {processed:?}"
            );
            let span = process.iter().find(|s| s.attr("messaging.message.id") == Some(job_id)).unwrap();
            assert_eq!(span.service, "syncfleet-worker");
            assert_eq!(span.name, format!("process {queue}"));
            assert_eq!(span.parent, root, "{job_id}: the worker's span is a child of the trigger");
            assert_eq!(span.attr("messaging.system"), Some("redis"));
            assert_eq!(span.attr("messaging.destination.name"), Some(queue.as_str()));
            assert_eq!(span.attr("messaging.operation.type"), Some("process"));
        }
        for p in &process {
            assert!(p.attr("messaging.message.id").is_some_and(|m| m.starts_with(&id.to_string())), "{p:?}");
            assert!(
                trace.iter().any(|s| s.name == "step" && s.parent == p.span_id),
                "the step span runs inside {}",
                p.name
            );
        }
        let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(services, BTreeSet::from(["syncfleet-producer", "syncfleet-worker"]));

        if chain == "demo_diamond" {
            // `right` fails once: its retry is a job of its own in the same trace.
            assert!(processed.iter().any(|j| j.ends_with(":right:a2")), "{processed:?}");
        } else {
            // The pull's upstream requests and upsert batches are spans inside the step.
            let http: Vec<_> = trace.iter().filter(|s| s.kind == KIND_CLIENT && s.name == "GET").collect();
            assert_eq!(http.len(), 3, "250 items in pages of 100: {http:#?}");
            for h in &http {
                assert_eq!(h.attr("http.response.status_code"), Some("200"));
                assert!(h.attr("url.full").is_some_and(|u| u.contains("/items")), "{h:?}");
                assert!(descends_from(h, &root, &spans) && h.service == "syncfleet-worker", "{h:?}");
            }
            let upserts: Vec<_> = trace.iter().filter(|s| s.name == "INSERT erp_items").collect();
            assert_eq!(upserts.len(), 3, "one statement per page");
            let rows: i64 =
                upserts.iter().map(|u| u.attr("db.operation.batch.size").unwrap().parse::<i64>().unwrap()).sum();
            assert_eq!(rows, 250);
            assert!(upserts.iter().all(|u| u.attr("db.system.name") == Some("postgresql")));
        }
    }
    assert_eq!(trace_ids.len(), 2, "one trace per run");
    env.finish().await;
}

/// The value of the sample `name{labels…}` in a Prometheus text exposition (labels in any order;
/// the sample may have more).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let has_all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && has_all).then(|| value.parse().ok())?
    })
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

fn pull(view: &RunView) -> &StepView {
    view.steps.iter().find(|s| s.step == "pull").expect("pull step")
}

/// `/metrics` of a worker process and of a producer after real runs. The worker process ran the ERP
/// syncs alone, so its counters are exactly theirs. The producer's endpoint renders what its process
/// records: here the test process also hosts a worker engine (as `syncfleet demo` does), so its step
/// histograms show there too, and its queue depth is read at each scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_have_histograms_record_counts_and_fresh_queue_depth_and_readyz_checks_migrations() {
    let sandbox = Sandbox::start().await;
    let env = TestEnv::new(&erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "")).await;
    let (worker, addr) =
        spawn_until(worker_process(&env, &format!("metrics-w-{}", env.id)), "Worker HTTP listening.").await;
    let worker_url = format!("http://{addr}");
    let producer = env.spawn_producer().await;
    let producer_url = format!("http://{}", producer.addr.unwrap());

    // Two full ERP syncs on the worker process: inserts and an item error, then updates,
    // unchanged rows and deactivations.
    sandbox.faults("erp", json!({ "malformed_ids": [7] })).await;
    let first = env.run_to_end("http_json_sync", "erp", Mode::Full, false).await;
    assert_eq!(first.status, "completed", "{first:#?}");
    sandbox.faults("erp", json!({ "malformed_ids": [] })).await;
    sandbox.mutate("erp", "items", json!({ "change_percent": 10, "delete": 10 })).await;
    let second = env.run_to_end("http_json_sync", "erp", Mode::Full, false).await;
    assert_eq!(second.status, "completed", "{second:#?}");
    let (a, b) = (pull(&first), pull(&second));
    assert_eq!((a.inserted, a.errors), (249, 1), "{a:#?}");
    assert!(b.updated > 0 && b.unchanged > 0 && b.deactivated > 0, "{b:#?}");

    let (status, text) = get(&format!("{worker_url}/metrics")).await;
    assert_eq!(status, 200);
    let records = |outcome: &str| {
        sample(&text, "syncfleet_records_total", &[("integration", "erp"), ("entity", "items"), ("outcome", outcome)])
    };
    for (outcome, expected) in [
        ("inserted", a.inserted + b.inserted),
        ("updated", a.updated + b.updated),
        ("unchanged", a.unchanged + b.unchanged),
        ("deactivated", a.deactivated + b.deactivated),
        ("error", a.errors + b.errors),
    ] {
        assert_eq!(records(outcome), Some(expected as f64), "records {outcome} equal the runs' step metrics");
    }
    let queue = env.ops.chains.get("http_json_sync").unwrap().step("pull").unwrap().queue.clone();
    let wait = [("queue", queue.as_str()), ("step", "pull"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_job_wait_seconds_bucket", &wait), Some(2.0), "{text}");
    let duration = [("chain", "http_json_sync"), ("step", "pull"), ("outcome", "succeeded"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_step_duration_seconds_bucket", &duration), Some(2.0), "{text}");
    assert!(text.contains("# TYPE syncfleet_step_duration_seconds histogram"), "{text}");
    assert!(text.contains("syncfleet_job_wait_seconds_bucket{") && text.contains("le=\"0.1\""), "{text}");
    let upstream = reqwest::Url::parse(&sandbox.handle.erp_url()).unwrap();
    let upstream = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap());
    let calls = sample(&text, "syncfleet_upstream_calls_total", &[("upstream", &upstream)]);
    assert_eq!(calls, Some((a.api_calls + b.api_calls) as f64), "{text}");
    let runs = sample(&text, "syncfleet_runs_total", &[("chain", "http_json_sync"), ("status", "completed")]);
    assert_eq!(runs, Some(2.0), "{text}");

    // Readiness follows the migrations this build knows.
    assert_eq!(get(&format!("{worker_url}/livez")).await, (200, "ok".into()));
    assert_eq!(get(&format!("{worker_url}/readyz")).await, (200, "ready".into()));
    let version: i64 = env.value("SELECT max(version) FROM _sqlx_migrations").await;
    let owner = env.owner_pool().await; // `_sqlx_migrations` is the owner role's to change
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE saved_migration AS SELECT * FROM _sqlx_migrations WHERE version = {version};
         DELETE FROM _sqlx_migrations WHERE version = {version};"
    )))
    .execute(&owner)
    .await
    .unwrap();
    let (status, message) = get(&format!("{worker_url}/readyz")).await;
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("lacks migration") && message.contains(&version.to_string()), "{message}");
    let shared = syncfleet_store::health::readiness(&env.pool, &env.ops.queues).await;
    assert_eq!(shared, Err(message), "the producer's and the worker's probe say the same");
    sqlx::raw_sql("INSERT INTO _sqlx_migrations SELECT * FROM saved_migration; DROP TABLE saved_migration;")
        .execute(&owner)
        .await
        .unwrap();
    assert_eq!(get(&format!("{worker_url}/readyz")).await, (200, "ready".into()));
    stop(worker).await;

    // The producer: a demo run on an engine in this process, then the queue depth at scrape time.
    env.demo_integration("acme", json!({ "step_ms": 10 })).await;
    let engine = env.spawn_worker("in-process").await;
    let diamond = env.run_to_end("demo_diamond", "acme", Mode::Full, false).await;
    assert_eq!(diamond.status, "completed", "{diamond:#?}");
    engine.stop().await;
    let (status, text) = get(&format!("{producer_url}/metrics")).await;
    assert_eq!(status, 200);
    let start_queue = env.ops.chains.get("demo_diamond").unwrap().step("start").unwrap().queue.clone();
    let wait = [("queue", start_queue.as_str()), ("step", "start"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_job_wait_seconds_bucket", &wait), Some(1.0), "{text}");
    let duration = [("chain", "demo_diamond"), ("step", "right"), ("outcome", "retrying"), ("le", "+Inf")];
    assert_eq!(sample(&text, "syncfleet_step_duration_seconds_bucket", &duration), Some(1.0), "{text}");
    for queue in env.ops.chains.queues() {
        for state in ["ready", "scheduled", "inflight", "dead", "blocked"] {
            let depth = sample(&text, "syncfleet_queue_depth", &[("queue", &queue), ("state", state)]);
            assert_eq!(depth, Some(0.0), "{queue} {state}: {text}");
        }
    }
    // With no worker, a new run's root step waits in Redis: the next scrape shows it.
    env.trigger("demo_diamond", "acme").await;
    env.eventually(Duration::from_secs(5), "the root step in the ready depth", || async {
        let (_, text) = get(&format!("{producer_url}/metrics")).await;
        (sample(&text, "syncfleet_queue_depth", &[("queue", &start_queue), ("state", "ready")]) == Some(1.0))
            .then_some(())
    })
    .await;

    producer.stop().await;
    env.finish().await;
}
