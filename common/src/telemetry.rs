//! One init function for logs, metrics and traces.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryArgs};

/// Buckets for every `*_seconds` histogram: from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the tracing subscriber (filter from `RUST_LOG`, default `info`), the Prometheus
/// metrics recorder and, with an OTLP endpoint, the span exporter of `service`. Safe to call
/// more than once (tests build several apps in one process).
pub fn init(args: &TelemetryArgs, service: &'static str) -> PrometheusHandle {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A second init in the same process fails harmlessly: the first subscriber stays.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Empty is off too (compose passes an unset variable on as empty).
    if let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        if let Err(err) = crate::trace::init(endpoint, service, args.trace_sample_ratio.clamp(0.0, 1.0)) {
            tracing::error!(error = format!("{err:#}"), "traces are off");
        }
    }
    metrics_handle()
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples wait in a buffer until a render or an upkeep folds them into
            // the buckets: unscraped, the buffer grew without bound (the soak benchmark saw the
            // gateway, which it did not scrape, go from 35 to 65 MB in 10 minutes; alone under
            // full load, 21 to 108 MB in 4 minutes). An upkeep every 5 s bounds it.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5)); // a periodic job, not a wait for a result
                upkeep.run_upkeep();
            });
            if let Err(err) = spawned {
                tracing::warn!(%err, "could not start the metrics upkeep thread; histograms fold only when scraped");
            }
            handle
        })
        .clone()
}

/// Logs an error with its whole cause chain, one `caused by` per line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// HTTP middleware: counts requests by method, route and status and times them, as
/// `uts_<service>_http_requests_total` and `uts_<service>_http_request_duration_seconds`, and
/// with traces on makes the request's server span ([`crate::trace::server_span`]).
/// Use with `axum::middleware::from_fn_with_state("gateway", record_http_request)`.
pub async fn record_http_request(
    axum::extract::State(service): axum::extract::State<&'static str>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let span = crate::trace::server_span(&mut request, &route);
    let response = next.run(request).await;
    if let Some(span) = &span {
        span.set_attribute(crate::trace::KeyValue::new(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        ));
        if response.status().is_server_error() {
            span.fail(response.status().as_str());
        }
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!(format!("uts_{service}_http_requests_total"), "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(format!("uts_{service}_http_request_duration_seconds"), "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
