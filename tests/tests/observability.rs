//! Traces of real processes: a trace per run from the producer's trigger, and one per step job on
//! the workers linked to it, over OTLP/HTTP and OTLP/gRPC. (`/metrics` and `/readyz`: `metrics.rs`.)

use std::{
    collections::{BTreeMap, BTreeSet},
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
use serde_json::json;
use syncfleet_shared::ids::RunId;
use syncfleet_tests::{
    Sandbox, TestEnv, erp_integration_toml,
    processes::{producer_process, spawn_until, stop, worker_process},
};
use tokio::process::Command;

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
            // A first load: each page's rows are new, written with one `COPY`.
            let upserts: Vec<_> = own.iter().filter(|s| s.name == "COPY erp_items").collect();
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
