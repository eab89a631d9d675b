//! Observability of real processes: a trace per run from the producer's trigger, and one per step
//! job on the workers linked to it, over OTLP/HTTP and OTLP/gRPC; `/metrics` histograms, record counters and queue depth; `/readyz` and the
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
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
};
use prost::Message;
use serde_json::{Value, json};
use syncfleet_shared::{chain::Mode, ids::RunId};
use syncfleet_store::views::{RunView, StepView};
use syncfleet_tests::{
    PrivateRedis, REDIS_URL, Sandbox, TestEnv, binary, chaos::PrivatePostgres, erp_integration_toml, signal,
};
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
    /// The resource's `service.version`.
    version: String,
    /// `(trace id, span id)` of each linked span.
    links: Vec<(String, String)>,
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

    /// Starts an OTLP/gRPC trace service (tonic) on a free port; returns the receiver and the
    /// endpoint to give the processes.
    async fn start_grpc() -> (Receiver, String) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(receiver.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        (receiver, endpoint)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = |key: &str| {
                resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == key)
                    .map(|a| text(&a.value))
                    .unwrap_or_default()
            };
            let (service, version) = (resource("service.name"), resource("service.version"));
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|a| (a.key.clone(), text(&a.value))).collect(),
                    version: version.clone(),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                });
            }
        }
        self.spans.lock().unwrap().extend(received);
    }
}

async fn receive(State(receiver): State<Receiver>, body: Bytes) -> Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    receiver.keep(request);
    // An empty `ExportTraceServiceResponse` encodes to no bytes.
    ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new()).into_response()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
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

/// Runs both chains once through real `syncfleet-producer` and `syncfleet-worker` processes
/// exporting to `endpoint` over `protocol` (`OTEL_EXPORTER_OTLP_PROTOCOL`), and checks the spans
/// `spans()` then holds: each run is a trace rooted at the producer's `trigger`, each step job a
/// trace of its own rooted at the worker's `process` span with a link to the `trigger`; every span
/// carries `service.version`. The producer triggers both runs itself (a start-up schedule), so
/// nothing in this process takes part in the traces.
async fn runs_and_step_jobs_are_linked_traces(protocol: &str, endpoint: &str, spans: impl Fn() -> Vec<ReceivedSpan>) {
    let sandbox = Sandbox::start().await;
    let erp = erp_integration_toml("erp", &sandbox.handle.erp_url(), "erp_items", 100, "");
    let schedules = "[schedules.demo_diamond.acme]\ninterval_secs = 3600\n\
                     [schedules.http_json_sync.erp]\ninterval_secs = 3600\n";
    let env = TestEnv::new(&format!("{erp}\n{schedules}")).await;
    env.demo_integration("acme", json!({ "step_ms": 20 })).await;

    let mut workers = Vec::new();
    for i in 0..2 {
        let mut c = worker_process(&env, &format!("otel-w{i}-{}", env.id));
        export_traces(&mut c, endpoint);
        c.env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
        workers.push(spawn_until(c, "Worker HTTP listening.").await.0);
    }
    let mut p = producer_process(&env);
    export_traces(&mut p, endpoint);
    p.env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
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

    let spans = spans();
    let version = env!("CARGO_PKG_VERSION");
    for s in &spans {
        assert_eq!(s.version, version, "service.version of {s:?}");
    }
    let mut run_traces = BTreeSet::new();
    let mut job_traces = BTreeSet::new();
    for (id, chain, traceparent) in &runs {
        let traceparent = traceparent.as_deref().unwrap_or_else(|| panic!("{chain}: the run stores its trace context"));
        let (root, trace) = trace_of(traceparent, &spans);
        let run_trace = trace[0].trace_id.clone();
        run_traces.insert(run_trace.clone());

        // The run's trace: the producer's trigger and its pushes to Redis, no step's work.
        let trigger = trace.iter().find(|s| s.span_id == root).unwrap_or_else(|| panic!("{chain}: no trigger span"));
        assert_eq!((trigger.service.as_str(), trigger.name.as_str()), ("syncfleet-producer", "trigger"));
        assert_eq!(trigger.parent, "", "the trigger starts the trace");
        assert_eq!(trigger.attr("chain"), Some(chain.as_str()));
        let send = trace
            .iter()
            .find(|s| s.service == "syncfleet-producer" && s.kind == KIND_PRODUCER)
            .unwrap_or_else(|| panic!("{chain}: no send span of the producer"));
        assert_eq!(send.parent, root);
        assert_eq!(
            (send.attr("messaging.system"), send.attr("messaging.operation.type")),
            (Some("redis"), Some("send"))
        );
        assert!(trace.iter().all(|s| s.kind != KIND_CONSUMER), "{chain}: no step job in the run's trace");

        // Every job a worker processed: a trace of its own, linked to the trigger.
        let run_prefix = id.to_string();
        let process: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| {
                s.kind == KIND_CONSUMER && s.attr("messaging.message.id").is_some_and(|m| m.starts_with(&run_prefix))
            })
            .collect();
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
            assert_eq!(span.attr("messaging.system"), Some("redis"));
            assert_eq!(span.attr("messaging.destination.name"), Some(queue.as_str()));
            assert_eq!(span.attr("messaging.operation.type"), Some("process"));
        }
        for p in &process {
            assert_eq!(p.parent, "", "{}: the job's span starts a trace", p.name);
            assert_ne!(p.trace_id, run_trace, "{}: not in the run's trace", p.name);
            assert_eq!(p.links, [(run_trace.clone(), root.clone())], "{}: linked to the run's trigger", p.name);
            assert!(job_traces.insert(p.trace_id.clone()), "one trace per step job: {p:?}");
            let own: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == p.trace_id).collect();
            assert!(own.iter().all(|s| s.service == "syncfleet-worker"), "{own:#?}");
            assert!(
                own.iter().any(|s| s.name == "step" && s.parent == p.span_id),
                "the step span runs inside {}",
                p.name
            );
        }

        if chain == "demo_diamond" {
            // `right` fails once: its retry is a job, and a trace, of its own.
            assert!(processed.iter().any(|j| j.ends_with(":right:a2")), "{processed:?}");
        } else {
            // The pull's upstream requests and upsert batches are spans inside the pull's trace.
            let pull_job =
                steps.iter().find(|(step, _, _)| step == "pull").map(|(_, _, job)| job).expect("the pull's job");
            let pull = process.iter().find(|p| p.attr("messaging.message.id") == Some(pull_job)).expect("its span");
            let own: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == pull.trace_id).cloned().collect();
            let http: Vec<_> = own.iter().filter(|s| s.kind == KIND_CLIENT && s.name == "GET").collect();
            assert_eq!(http.len(), 3, "250 items in pages of 100: {http:#?}");
            for h in &http {
                assert_eq!(h.attr("http.response.status_code"), Some("200"));
                assert!(h.attr("url.full").is_some_and(|u| u.contains("/items")), "{h:?}");
                assert!(descends_from(h, &pull.span_id, &own), "{h:?}");
            }
            let upserts: Vec<_> = own.iter().filter(|s| s.name == "INSERT erp_items").collect();
            assert_eq!(upserts.len(), 3, "one statement per page");
            let rows: i64 =
                upserts.iter().map(|u| u.attr("db.operation.batch.size").unwrap().parse::<i64>().unwrap()).sum();
            assert_eq!(rows, 250);
            assert!(upserts.iter().all(|u| u.attr("db.system.name") == Some("postgresql")));
        }
    }
    assert_eq!(run_traces.len(), 2, "one trace per run");
    env.finish().await;
}

/// The spans are real OTLP/HTTP exports (protobuf bodies) of real processes, received by a small
/// OTLP receiver inside the test that keeps them in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_a_trace_and_each_step_job_a_trace_linked_to_it_over_otlp_http() {
    let (receiver, endpoint) = Receiver::start().await;
    runs_and_step_jobs_are_linked_traces("http/protobuf", &endpoint, || receiver.spans()).await;
}

/// The same over OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`), received by a tonic server of the
/// OTLP trace service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_a_trace_and_each_step_job_a_trace_linked_to_it_over_otlp_grpc() {
    let (receiver, endpoint) = Receiver::start_grpc().await;
    runs_and_step_jobs_are_linked_traces("grpc", &endpoint, || receiver.spans()).await;
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
        for state in ["ready", "runnable", "scheduled", "inflight", "dead", "blocked"] {
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

/// The labels of every sample of `name` in a Prometheus text exposition.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))).collect()
}

/// A GET of the producer's API with a bearer token.
async fn api_get(url: &str, token: &str) -> (u16, Value) {
    let response =
        reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// A fresh `syncfleet-producer` process lists, before anything ran: `syncfleet_runs_total` at 0 for
/// every chain × run status (so `increase(…{status="failed"}[15m]) > 0` sees the first failure of a
/// new pod), its error counters at 0, `syncfleet_build_info`, its process and database pool figures,
/// both dependencies up and the depth of every queue, runnable included. After one API call, that
/// call's request histogram under the route's template; after a run, its finish time as the chain's
/// last success for the integration. A worker process lists the run counters at 0 and its process
/// figures too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_producer_lists_counters_at_zero_build_info_pool_requests_and_last_success() {
    let env = TestEnv::new("").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let (producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");
    let (status, text) = get(&metrics_url).await;
    assert_eq!(status, 200, "{text}");

    let chains: Vec<String> = env.ops.chains.all().map(|c| c.name.as_str().to_owned()).collect();
    assert!(chains.len() >= 4, "{chains:?}");
    for chain in &chains {
        for status in ["completed", "partial", "failed", "cancelled"] {
            let runs = sample(&text, "syncfleet_runs_total", &[("chain", chain), ("status", status)]);
            assert_eq!(runs, Some(0.0), "{chain} {status}: {text}");
        }
    }
    for counter in ["syncfleet_reconciler_errors_total", "syncfleet_scheduler_errors_total"] {
        assert_eq!(sample(&text, counter, &[]), Some(0.0), "{counter}: {text}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&text, "syncfleet_build_info", &[("version", version)]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_db_pool_max", &[]), Some(env.config.database.max_connections as f64));
    let idle = sample(&text, "syncfleet_db_pool_connections", &[("state", "idle")]).expect("idle connections");
    let in_use = sample(&text, "syncfleet_db_pool_connections", &[("state", "in_use")]).expect("busy connections");
    assert!(idle + in_use >= 1.0 && idle + in_use <= env.config.database.max_connections as f64, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{text}");
    assert!(sample(&text, "process_open_fds", &[]).is_some_and(|n| n > 0.0), "{text}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");
    for dependency in ["postgres", "redis"] {
        assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", dependency)]), Some(1.0), "{text}");
    }
    for queue in env.ops.chains.queues() {
        for state in ["ready", "runnable", "scheduled", "inflight", "dead", "blocked"] {
            let depth = sample(&text, "syncfleet_queue_depth", &[("queue", &queue), ("state", state)]);
            assert_eq!(depth, Some(0.0), "{queue} {state}: {text}");
        }
    }
    assert!(series(&text, "syncfleet_last_success_timestamp_seconds").is_empty(), "no run yet: {text}");

    // A run on an engine in this process; the producer process reads its end from PostgreSQL.
    let engine = env.spawn_worker("fresh").await;
    let run = env.run_to_end("demo_ping", "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    engine.stop().await;
    let finished: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM finished_at)::float8 FROM chain_runs WHERE id::text = $1")
            .bind(&run.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let token = env.token("viewer").await;
    let run_url = format!("http://{addr}/api/runs/{}", run.id);
    assert_eq!(api_get(&run_url, &token).await.0, 200);

    let (_, text) = get(&metrics_url).await;
    let last = [("chain", "demo_ping"), ("integration", "acme")];
    assert_eq!(sample(&text, "syncfleet_last_success_timestamp_seconds", &last), Some(finished), "{text}");
    assert_eq!(series(&text, "syncfleet_last_success_timestamp_seconds").len(), 1, "{text}");
    let request = [("method", "GET"), ("route", "/api/runs/{id}"), ("status", "200")];
    assert_eq!(sample(&text, "syncfleet_api_request_duration_seconds_count", &request), Some(1.0), "{text}");
    assert!(!text.contains(&run.id.to_string()), "a raw path with an id is never a label: {text}");
    let scrape = [("method", "GET"), ("route", "/metrics"), ("status", "200")];
    assert!(sample(&text, "syncfleet_api_request_duration_seconds_count", &scrape).is_some(), "{text}");
    stop(producer).await;

    // A worker process: the same counters at 0 from its start, and its own process figures.
    let (worker, addr) =
        spawn_until(worker_process(&env, &format!("fresh-w-{}", env.id)), "Worker HTTP listening.").await;
    let (status, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{text}");
    assert_eq!(sample(&text, "syncfleet_build_info", &[("version", version)]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_db_pool_max", &[]), Some(env.config.database.max_connections as f64));
    stop(worker).await;
    env.finish().await;
}

/// With its Redis gone, a producer's `/metrics` still answers 200, in time: Redis shows down, the
/// depth and heartbeat series it cannot read are left out (neither stale nor 0), and every other
/// series stays, counters with their values (a cancelled run counted before Redis went, reconcile
/// passes failing since).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_answer_with_redis_stopped_leaving_out_only_what_redis_holds() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(&redis.url(), "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let (producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");

    // A run the producer process ends itself (cancelled, no worker), so its counter is 1.
    let token = env.token("operator").await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{addr}/api/chains/demo_ping/runs"))
        .bearer_auth(&token)
        .json(&json!({ "integration": "acme" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = created["run_id"].as_str().unwrap_or_else(|| panic!("{created}"));
    let cancel =
        client.post(format!("http://{addr}/api/runs/{run_id}/cancel")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(cancel.status().as_u16(), 200);

    let (status, before) = get(&metrics_url).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(1.0), "{before}");
    let ready = [("queue", "demo"), ("state", "ready")];
    assert!(sample(&before, "syncfleet_queue_depth", &ready).is_some(), "{before}");
    assert!(!series(&before, "syncfleet_worker_last_heartbeat_timestamp_seconds").is_empty(), "{before}");
    let cancelled = [("chain", "demo_ping"), ("status", "cancelled")];
    assert_eq!(sample(&before, "syncfleet_runs_total", &cancelled), Some(1.0), "{before}");

    drop(redis);
    // The reconciler's passes fail from now on; its error counter shows it.
    let text = env
        .eventually(Duration::from_secs(30), "reconcile errors counted with Redis down", || async {
            let started = std::time::Instant::now();
            let (status, text) = get(&metrics_url).await;
            assert_eq!(status, 200, "/metrics answers without Redis: {text}");
            assert!(started.elapsed() < Duration::from_secs(8), "a scrape without Redis took {:?}", started.elapsed());
            sample(&text, "syncfleet_reconciler_errors_total", &[]).is_some_and(|n| n >= 1.0).then_some(text)
        })
        .await;
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]), Some(1.0), "{text}");
    assert!(series(&text, "syncfleet_queue_depth").is_empty(), "no depth without Redis: {text}");
    assert!(series(&text, "syncfleet_worker_last_heartbeat_timestamp_seconds").is_empty(), "{text}");
    assert_eq!(sample(&text, "syncfleet_runs_total", &cancelled), Some(1.0), "counters intact: {text}");
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    let cancel_route = [("route", "/api/runs/{id}/cancel"), ("status", "200")];
    assert_eq!(sample(&text, "syncfleet_api_request_duration_seconds_count", &cancel_route), Some(1.0), "{text}");
    assert!(sample(&text, "syncfleet_build_info", &[]).is_some(), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some(), "{text}");

    stop(producer).await;
    tokio::time::timeout(Duration::from_secs(30), env.finish()).await.ok();
}

/// With PostgreSQL gone, a producer's `/metrics` still answers 200, in time: PostgreSQL shows down,
/// what it holds (`blocked`, `runnable`, the latest successes) is left out, while Redis's depth
/// states and every recorded series stay; once PostgreSQL is back, so is all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_answer_with_postgres_stopped_leaving_out_only_what_postgres_holds() {
    let pg = PrivatePostgres::start();
    let server = format!("postgres://postgres@127.0.0.1:{}", pg.port);
    let env = TestEnv::build_on(&server, syncfleet_registry::builtin(), REDIS_URL, "", "", "").await;
    env.demo_integration("acme", json!({ "step_ms": 0 })).await;
    let engine = env.spawn_worker("pg-down").await;
    let run = env.run_to_end("demo_ping", "acme", Mode::Incremental, false).await;
    assert_eq!(run.status, "completed", "{run:#?}");
    engine.stop().await;
    let (mut producer, addr) = spawn_until(producer_process(&env), "Producer started.").await;
    let metrics_url = format!("http://{addr}/metrics");
    let (status, text) = get(&metrics_url).await;
    assert_eq!(status, 200);
    let last = [("chain", "demo_ping"), ("integration", "acme")];
    assert!(sample(&text, "syncfleet_last_success_timestamp_seconds", &last).is_some(), "{text}");
    let runnable = [("queue", "demo"), ("state", "runnable")];
    assert_eq!(sample(&text, "syncfleet_queue_depth", &runnable), Some(0.0), "{text}");

    pg.crash();
    let text = env
        .eventually(Duration::from_secs(30), "PostgreSQL down in /metrics", || async {
            let started = std::time::Instant::now();
            let (status, text) = get(&metrics_url).await;
            assert_eq!(status, 200, "/metrics answers without PostgreSQL: {text}");
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "a scrape without PostgreSQL took {:?}",
                started.elapsed()
            );
            (sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]) == Some(0.0)).then_some(text)
        })
        .await;
    assert_eq!(sample(&text, "syncfleet_dependency_up", &[("dependency", "redis")]), Some(1.0), "{text}");
    for state in ["ready", "scheduled", "inflight", "dead"] {
        let depth = sample(&text, "syncfleet_queue_depth", &[("queue", "demo"), ("state", state)]);
        assert_eq!(depth, Some(0.0), "{state}: {text}");
    }
    for state in ["blocked", "runnable"] {
        let depth = sample(&text, "syncfleet_queue_depth", &[("queue", "demo"), ("state", state)]);
        assert_eq!(depth, None, "{state} needs PostgreSQL: {text}");
    }
    assert!(series(&text, "syncfleet_last_success_timestamp_seconds").is_empty(), "{text}");
    let failed = [("chain", "demo_ping"), ("status", "failed")];
    assert_eq!(sample(&text, "syncfleet_runs_total", &failed), Some(0.0), "{text}");
    assert!(sample(&text, "syncfleet_db_pool_max", &[]).is_some(), "{text}");

    pg.up();
    env.eventually(Duration::from_secs(30), "PostgreSQL back in /metrics", || async {
        let (_, text) = get(&metrics_url).await;
        let back = sample(&text, "syncfleet_dependency_up", &[("dependency", "postgres")]) == Some(1.0)
            && sample(&text, "syncfleet_queue_depth", &runnable) == Some(0.0)
            && sample(&text, "syncfleet_last_success_timestamp_seconds", &last).is_some();
        back.then_some(())
    })
    .await;
    producer.kill().await.ok();
    env.finish().await;
}
