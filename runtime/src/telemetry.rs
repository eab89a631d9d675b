//! Tracing set up once: logs for people or for machines, traces for OpenTelemetry, a test writer in
//! tests.
//!
//! **Logs** go to stderr: one JSON object per line with `--log-json` / `SYNCFLEET_LOG_JSON`, and by
//! default when the config's `environment` is `production` and stderr is not a terminal
//! ([`json_by_default`]); compact text otherwise. `SYNCFLEET_LOG` (an `EnvFilter` directive)
//! overrides the default level. In JSON, a line written inside a traced span carries `trace_id` and
//! `span_id`.
//!
//! **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! the producer and the workers export spans over OTLP from a background thread: over HTTP with
//! protobuf bodies (`{endpoint}/v1/traces`) by default, over gRPC when
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL` is `grpc` (`http/protobuf`
//! names the default; anything else turns export off with a message). The standard variables apply
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_SCHEDULE_DELAY`, …). The resource carries `service.name` (the
//! binary's) and `service.version` (the build's) unless those variables set them. Without an
//! endpoint there is no exporter and no OpenTelemetry layer: spans cost what tracing costs.
//!
//! A trace per run, and one per step job linked to it: the producer's `trigger` span is the root
//! of the run's trace. Its W3C `traceparent` is stored with the run (`chain_runs.trace_context`)
//! and carried in every step job's payload. The worker's `process` span (messaging attributes, kind
//! consumer) starts a trace of its own with a span link to the run's `trigger`, so a long full sync
//! is many small traces rather than one huge one; the step's upstream HTTP tries, upsert batches
//! and pushes of the next steps are its descendants. Pushes to Redis are `send` spans (kind
//! producer). Spans made only for tracing use the target [`OTEL_TARGET`] and stay out of the logs.

use std::{collections::HashMap, io::IsTerminal};

use opentelemetry::{
    KeyValue, global,
    trace::{Status, TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::Targets,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::{Format, Json, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

use syncfleet_shared::{config::Environment, job::JobPayload};

/// Default filter of the services.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,apalis=warn";

/// Target of spans made only for tracing (messaging, HTTP and SQL spans): exported, never logged.
pub const OTEL_TARGET: &str = "syncfleet_otel";

/// Spans and events the trace exporter takes: ours at info and above.
const TRACE_TARGETS: [&str; 1] = ["syncfleet"];

/// The variables that turn trace export on.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

fn filter(default: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    filter.add_directive(format!("{OTEL_TARGET}=off").parse().expect("a valid directive"))
}

/// Whether a service logs JSON lines when not told: in production, unless a person watches stderr.
pub fn json_by_default(environment: Environment) -> bool {
    environment == Environment::Production && !std::io::stderr().is_terminal()
}

/// Logs only (the CLI): JSON lines when `json`, else compact text.
pub fn init(json: bool, default_filter: &str) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    install(json, default_filter, None);
}

/// A service's telemetry: logs, plus trace export when the environment configures an OTLP endpoint.
/// Keep the guard until the process ends: dropping it flushes the spans still buffered.
pub fn init_service(service: &'static str, json: bool) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match tracer_provider(service) {
        Ok(provider) => provider,
        Err(error) => {
            // Logging is not up yet, and a service without traces still does its work.
            eprintln!("syncfleet: trace export is off: {error}");
            None
        }
    };
    install(json, SERVICE_FILTER, provider.as_ref());
    if provider.is_some() {
        let protocol = protocol().map(Protocol::name).unwrap_or_default();
        tracing::info!(service, protocol, "Exporting traces over OTLP.");
    }
    Telemetry { provider }
}

/// Flushes and stops trace export when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("syncfleet: flushing traces failed: {error}");
        }
    }
}

/// The variables naming the OTLP protocol, the more specific first.
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];

/// The OTLP transports this build exports over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

impl Protocol {
    /// The name the OpenTelemetry variables use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }

    /// Reads a protocol variable's value; the error names the values this build takes.
    pub fn parse(value: &str) -> Result<Protocol, String> {
        match value.trim() {
            "" | "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!("OTLP protocol `{other}` is not supported: use `http/protobuf` or `grpc`")),
        }
    }
}

/// The protocol the environment asks for (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`).
pub fn protocol() -> Result<Protocol, String> {
    let set =
        PROTOCOL_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|v| !v.trim().is_empty()).map(|x| (*v, x)));
    match set {
        Some((var, value)) => Protocol::parse(&value).map_err(|m| format!("{var}: {m}")),
        None => Ok(Protocol::HttpProtobuf),
    }
}

fn tracer_provider(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let configured = ENDPOINT_VARS.iter().any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol()? {
        Protocol::HttpProtobuf => builder.with_http().with_protocol(opentelemetry_otlp::Protocol::HttpBinary).build(),
        // tonic's channel runs on the tokio runtime current here (the service's).
        Protocol::Grpc => builder.with_tonic().build(),
    }
    .map_err(|e| e.to_string())?;
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource(service)).build()))
}

/// The resource of a service's spans: the standard detectors (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), then `service.name` and `service.version` where they set none.
fn resource(service: &'static str) -> Resource {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    if !attributes.split(',').any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == "service.version")) {
        resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    resource.build()
}

fn install(json: bool, default_filter: &str, provider: Option<&SdkTracerProvider>) {
    let json_logs = json.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .event_format(WithTraceIds(fmt::format().json().with_current_span(false)))
            .with_filter(filter(default_filter))
    });
    let text_logs = (!json).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter(default_filter))
    });
    let traces = provider.map(|provider| {
        let targets = TRACE_TARGETS.iter().fold(Targets::new(), |t, name| t.with_target(*name, tracing::Level::INFO));
        tracing_opentelemetry::layer().with_tracer(provider.tracer("syncfleet")).with_filter(targets)
    });
    tracing_subscriber::registry().with(json_logs).with(text_logs).with(traces).try_init().ok();
}

/// For tests: output captured by the test harness.
pub fn init_test() {
    tracing_subscriber::registry().with(fmt::layer().with_test_writer().with_filter(filter("warn"))).try_init().ok();
}

/// The JSON line format with the current trace's `trace_id` and `span_id` first.
struct WithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let current = opentelemetry::Context::map_current(|cx| cx.span().span_context().clone());
        if !current.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let rest = line.strip_prefix('{').unwrap_or(&line);
        write!(writer, "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}", current.trace_id(), current.span_id())
    }
}

/// The W3C `traceparent` of the current span, when it is traced.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(1);
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span a W3C `traceparent` names (another process's). Call it before the
/// span is first entered; an absent or unreadable value leaves the span where it is.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        // Fails only when the span is not traced (no exporter) or already started.
        span.set_parent(cx).ok();
    }
}

/// The span context a W3C `traceparent` names, when it names one.
fn remote_span_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The span of processing one step job taken from `queue` (kind consumer): the root of a trace of
/// its own, linked to the span the job's `traceparent` names (the run's `trigger`).
pub fn process_span(queue: &str, job_id: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        target: OTEL_TARGET,
        parent: None,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.destination.name = queue,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = job_id,
    );
    if !span.is_disabled()
        && let Some(run) = traceparent.and_then(remote_span_context)
    {
        span.add_link_with_attributes(run, vec![KeyValue::new("syncfleet.link", "run")]);
    }
    span
}

/// The span of one push of step jobs to `queue` (kind producer). Work outside any trace (the
/// reconciler) joins the run's trace when every job belongs to the same run.
pub fn send_span(queue: &str, jobs: &[(String, JobPayload)]) -> tracing::Span {
    let span = tracing::info_span!(
        target: OTEL_TARGET,
        "send",
        otel.name = %format_args!("send {queue}"),
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.destination.name = queue,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.batch.message_count = tracing::field::Empty,
        messaging.message.id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    match jobs {
        [(id, _)] => span.record("messaging.message.id", id.as_str()),
        _ => span.record("messaging.batch.message_count", jobs.len()),
    };
    if current_traceparent().is_none() {
        let mut contexts = jobs.iter().map(|(_, job)| job.trace_context());
        if let Some(first) = contexts.next()
            && contexts.all(|c| c == first)
        {
            continue_trace(&span, first);
        }
    }
    span
}

/// Marks `span` as failed in the trace.
pub fn mark_error(span: &tracing::Span, message: &str) {
    span.set_status(Status::error(message.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_not_invented_without_a_tracer() {
        let span = tracing::info_span!("untraced");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
        continue_trace(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        continue_trace(&span, Some("not a traceparent"));
    }

    #[test]
    fn the_protocol_is_read_as_the_specification_names_it() {
        assert_eq!(Protocol::parse("grpc"), Ok(Protocol::Grpc));
        assert_eq!(Protocol::parse("http/protobuf"), Ok(Protocol::HttpProtobuf));
        assert_eq!(Protocol::parse(""), Ok(Protocol::HttpProtobuf));
        let err = Protocol::parse("http/json").unwrap_err();
        assert!(err.contains("`http/json`") && err.contains("grpc"), "{err}");
    }

    #[test]
    fn a_traceparent_round_trips_through_the_propagator() {
        let provider = SdkTracerProvider::builder().build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let remote = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("process");
            continue_trace(&span, Some(remote));
            let traceparent = span.in_scope(current_traceparent).expect("traced");
            assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");
            assert_ne!(traceparent, remote, "the child has a span id of its own");
            let root = tracing::info_span!(parent: None, "trigger");
            let own = root.in_scope(current_traceparent).expect("traced");
            assert!(!own.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "a root starts a trace of its own");
        });
    }
}
