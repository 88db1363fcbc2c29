//! OpenTelemetry traces: off unless an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! One job's trace crosses the stages in its messages' W3C trace context (`traceparent` and
//! `tracestate` Kafka headers, as in HTTP): the gateway's server span for the POST, then in every
//! consumer stage a `process <topic>` span per message, child of the context the message carries,
//! and whatever the stage produces for that message carries the new span's context on. The
//! billing-forwarder keeps a record's context in its outbox row, so the send to the billing
//! system (and its `traceparent` header) joins the trace of the job that made the version.
//!
//! A stage without an endpoint passes the context it received on unchanged, so a trace stays
//! whole across a stage that does not export. Contexts from outside (an HTTP client's header) are
//! parsed, never copied: an invalid one is dropped, a `tracestate` over 512 bytes too (W3C limit).
//!
//! Spans are exported in batches from a thread of their own (the SDK's batch processor:
//! `OTEL_BSP_*` settings apply); a full queue drops spans, never blocks a stage.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
pub use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The W3C header names, also used as Kafka header keys.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

const MAX_TRACESTATE: usize = 512;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);
static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracer> = OnceLock::new();

/// A trace context as it travels: the W3C `traceparent` and, if any, `tracestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Carrier {
    /// Reads a context from `(name, value)` pairs (Kafka or HTTP headers); `None` unless it
    /// holds a valid `traceparent`.
    pub fn read<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<Self> {
        let mut carrier = Carrier::default();
        for (name, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else { continue };
            if name.eq_ignore_ascii_case(TRACEPARENT) {
                value.clone_into(&mut carrier.traceparent);
            } else if name.eq_ignore_ascii_case(TRACESTATE) && value.len() <= MAX_TRACESTATE {
                carrier.tracestate = Some(value.to_owned());
            }
        }
        if carrier.traceparent.is_empty() {
            return None;
        }
        // Parsed and written again: only a valid context goes on.
        Carrier::of(&carrier.context())
    }

    /// A context kept in two columns (`traceparent`, `tracestate`), as the billing outbox does.
    pub fn from_columns(traceparent: Option<String>, tracestate: Option<String>) -> Option<Self> {
        traceparent.map(|traceparent| Carrier { traceparent, tracestate })
    }

    /// The `(name, value)` headers to send.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once((TRACEPARENT, self.traceparent.as_str()))
            .chain(self.tracestate.as_deref().map(|state| (TRACESTATE, state)))
    }

    fn context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    fn of(context: &Context) -> Option<Self> {
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(context, &mut carrier);
        (!carrier.traceparent.is_empty()).then_some(carrier)
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// Starts exporting spans of `service` to the OTLP/HTTP endpoint `endpoint` (the base URL, as
/// in `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go to `<endpoint>/v1/traces`), sampling `ratio` of
/// the traces that start here (a propagated context's decision is kept). A second call in the
/// same process (tests) keeps the first.
pub fn init(endpoint: &str, service: &'static str, ratio: f64) -> anyhow::Result<()> {
    let mut installed = PROVIDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if installed.is_some() {
        return Ok(());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingClient::default())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(Duration::from_secs(10))
        .build()
        .context("building the OTLP span exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    let _ = TRACER.set(provider.tracer("uts"));
    *installed = Some(provider);
    ENABLED.store(true, Relaxed);
    tracing::info!(endpoint, service, ratio, "exporting traces over OTLP/HTTP");
    Ok(())
}

/// Exports the spans still queued and stops the exporter: the last step of a process.
pub fn shutdown() {
    let provider = PROVIDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    if let Some(provider) = provider {
        ENABLED.store(false, Relaxed);
        if let Err(err) = provider.shutdown() {
            tracing::warn!(%err, "flushing the last spans failed");
        }
    }
}

/// Whether this process exports spans.
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// A span of this process, ended when dropped.
pub struct Span(Context);

impl Span {
    /// Starts a span named `name` of `kind`, child of `parent` (a new trace without one);
    /// `None` when traces are off.
    pub fn start(name: String, kind: SpanKind, parent: Option<&Carrier>, attributes: Vec<KeyValue>) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let tracer = TRACER.get()?;
        let parent = parent.map(Carrier::context).unwrap_or_default();
        let span =
            tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(tracer, &parent);
        Some(Span(parent.with_span(span)))
    }

    /// The context to send on with what this span's work produces.
    pub fn carrier(&self) -> Option<Carrier> {
        Carrier::of(&self.0)
    }

    pub fn set_attribute(&self, attribute: KeyValue) {
        self.0.span().set_attribute(attribute);
    }

    /// Marks the span failed with `reason`.
    pub fn fail(&self, reason: &str) {
        self.0.span().set_status(Status::error(reason.to_owned()));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// The span of a consumed Kafka message: `process <topic>`, child of the message's context.
pub fn consumer_span(origin: &crate::runner::Origin, key: Option<&[u8]>, parent: Option<&Carrier>) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let topic = &origin.topic;
    let mut attributes = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.destination.name", topic.clone()),
        KeyValue::new("messaging.destination.partition.id", origin.partition.to_string()),
        KeyValue::new("messaging.kafka.offset", origin.offset),
    ];
    if let Some(key) = key {
        attributes.push(KeyValue::new("messaging.kafka.message.key", String::from_utf8_lossy(key).into_owned()));
    }
    Span::start(format!("process {topic}"), SpanKind::Consumer, parent, attributes)
}

/// The span of an HTTP request this process serves, `<METHOD> <route>`, child of the context in
/// its headers. The request's trace headers are replaced by the new span's context, so what the
/// handler sends on (a Kafka message, a forwarded request) continues this span.
pub fn server_span<B>(request: &mut http::Request<B>, route: &str) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let parent = of_headers(request.headers());
    let method = request.method().as_str().to_owned();
    let attributes =
        vec![KeyValue::new("http.request.method", method.clone()), KeyValue::new("http.route", route.to_owned())];
    // Without a route (a path no route matched: forwarded, or 404) the name is the method alone.
    let name = if route == "unmatched" { method } else { format!("{method} {route}") };
    let span = Span::start(name, SpanKind::Server, parent.as_ref(), attributes)?;
    let headers = request.headers_mut();
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    for (name, value) in span.carrier().iter().flat_map(Carrier::headers) {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    Some(span)
}

/// The trace context of an HTTP request's headers.
pub fn of_headers(headers: &http::HeaderMap) -> Option<Carrier> {
    Carrier::read(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())))
}

/// The OTLP exporter's HTTP client: reqwest's blocking client, built on the batch processor's
/// own thread on first use (a blocking client must not be made or dropped inside the async
/// runtime), sharing the build of the one reqwest the workspace has.
#[derive(Debug, Default)]
struct BlockingClient(OnceLock<reqwest::blocking::Client>);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.0.get_or_init(|| {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_else(|_| reqwest::blocking::Client::new())
        });
        let (parts, body) = request.into_parts();
        let mut builder = client.request(parts.method, parts.uri.to_string()).body(body.to_vec());
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send()?;
        let status = response.status();
        let bytes = response.bytes()?;
        Ok(http::Response::builder().status(status).body(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_context_is_carried_on() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let read = Carrier::read([(TRACEPARENT, parent.as_bytes()), (TRACESTATE, b"a=1".as_slice())]).unwrap();
        assert_eq!(read, Carrier { traceparent: parent.into(), tracestate: Some("a=1".into()) });
        assert_eq!(Carrier::read([("Traceparent", parent.as_bytes())]).unwrap().traceparent, parent);
        for bad in ["", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage", "00-xyz-01"] {
            assert_eq!(Carrier::read([(TRACEPARENT, bad.as_bytes())]), None, "{bad:?}");
        }
        let long = format!("a={}", "x".repeat(600));
        assert_eq!(
            Carrier::read([(TRACEPARENT, parent.as_bytes()), (TRACESTATE, long.as_bytes())]).unwrap().tracestate,
            None
        );
        assert_eq!(Carrier::read([(TRACEPARENT, [0xff_u8, 0xfe].as_slice())]), None);
    }

    #[test]
    fn without_an_endpoint_no_span_is_made() {
        let origin = crate::runner::Origin { topic: "t".into(), partition: 0, offset: 1 };
        assert!(consumer_span(&origin, None, None).is_none());
    }
}
