//! One job's trace across the processes: every stage a real process exporting over OTLP/HTTP to
//! a collector inside the test. A job posted with a client's `traceparent` must come back as one
//! trace: the gateway's server span (child of the client's), then in the verifier, the
//! aggregator and the billing-forwarder a span per message, each the child of the span of the
//! stage before it (the context travels in Kafka headers), the forwarder's send to billing
//! (through its outbox row), the query service's projection of the job and its statuses, and a
//! GET through the gateway forwarded to the query service. A job posted without a context starts
//! its trace in the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chrono::{SecondsFormat, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_testkit::isolated_kafka;

use super::stages::{billing_receiver, database_url, environment, seed, Stages, SECRET};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// The OTLP/HTTP trace endpoint: decodes each export and keeps its spans.
async fn export(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut received = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(a.value.as_ref().and_then(|v| v.value.as_ref()))))
                    .collect(),
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CLIENT_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";

/// One usage, `days_ago` days ago: the two jobs fall into different buckets, each bucket version
/// then belongs to one job's trace (a version folding several jobs carries the deciding job's).
fn one_usage(days_ago: u64) -> Value {
    let now = Utc::now().checked_sub_days(chrono::Days::new(days_ago)).unwrap();
    let now = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({"users":[{"tenantId":"op","userId":"u","resources":[{"application":"app","resource":"r",
        "usages":[{"value": 2.5, "unit": "trace-unit", "datetime": now}]}]}]})
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn one_jobs_trace_crosses_every_process(pool: PgPool) {
    let kafka = isolated_kafka(2).await;
    seed(&pool, "trace-unit").await;

    let spans: Spans = Arc::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", collector.local_addr().unwrap());
    let app = axum::Router::new().route("/v1/traces", post(export)).with_state(spans.clone());
    tokio::spawn(async move { axum::serve(collector, app).await });

    let (billing_url, receiver_shutdown) = billing_receiver().await;

    let mut env = environment(&kafka, &database_url(&pool), &billing_url);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector_url));
    // Export every 100 ms instead of 5 s.
    env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let mut stages = Stages::start(&env, &[]).await;
    let port = stages.port;

    let api = format!("http://127.0.0.1:{port}/api/usagetransparency/v3");
    let token = mint_hs256(SECRET, "op", "trace", &["uts.usages.write", "uts.usages.read"], 3600).unwrap();
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let client = reqwest::Client::new();
    let post_job = |context: Option<String>, days_ago: u64| {
        let (client, api, token) = (client.clone(), api.clone(), token.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut request =
                    client.post(format!("{api}/usagesJobs")).bearer_auth(&token).json(&one_usage(days_ago));
                if let Some(context) = &context {
                    request = request.header("traceparent", context);
                }
                // The gateway may still be starting.
                if let Ok(answer) = request.send().await {
                    assert_eq!(answer.status(), 202, "POST /usagesJobs");
                    let body: Value = answer.json().await.unwrap();
                    return body["id"].as_str().unwrap().to_owned();
                }
                assert!(Instant::now() < deadline, "the gateway never answered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let traced = post_job(Some(traceparent.clone()), 0).await;
    let untraced = post_job(None, 1).await;

    // Both jobs COMPLETED (billed), read through the one address with the client's context.
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in [&traced, &untraced] {
        loop {
            let answer = client
                .get(format!("{api}/usagesJobs/{id}"))
                .bearer_auth(&token)
                .header("traceparent", &traceparent)
                .send()
                .await
                .unwrap();
            let job: Value = answer.json().await.unwrap_or_default();
            if job["status"] == "COMPLETED" {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} never COMPLETED: {job}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Every expected span of the client's trace, each with the parent the chain implies.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (chain, untraced_chain) = loop {
        let received = spans.lock().unwrap().clone();
        let chain = TraceChain::find(&received, CLIENT_TRACE, &traced, CLIENT_SPAN);
        let untraced_chain = received
            .iter()
            .find(|s| s.service == "verifier" && s.attributes.get("messaging.kafka.message.key") == Some(&untraced))
            .map(|verifier| {
                let gateway = received.iter().find(|s| s.span_id == verifier.parent).cloned();
                (verifier.clone(), gateway)
            });
        match (chain, untraced_chain) {
            (Ok(chain), Some((verifier, Some(gateway)))) => break (chain, (verifier, gateway)),
            (chain, untraced_chain) => {
                assert!(
                    Instant::now() < deadline,
                    "the trace is incomplete: {:?}; untraced job: {untraced_chain:?}; received: {received:#?}",
                    chain.err()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(chain.gateway.name, "POST /api/usagetransparency/v3/usagesJobs");
    assert_eq!(chain.gateway.attributes["http.response.status_code"], "202");
    assert!(chain.verifier.name.starts_with("process ") && chain.verifier.name.ends_with(".usage-jobs"));
    assert!(chain.aggregator.name.ends_with(".usages.verified"), "{:?}", chain.aggregator);
    assert!(chain.forwarder.name.ends_with(".aggregates"), "{:?}", chain.forwarder);
    assert_eq!(chain.billing_send.name, "send billing record");

    let (verifier, gateway) = untraced_chain;
    assert_eq!(gateway.service, "ingest-gateway");
    assert_eq!(gateway.parent, "", "a job posted without a context starts its trace in the gateway");
    assert_ne!(gateway.trace_id, CLIENT_TRACE);
    assert_eq!(verifier.trace_id, gateway.trace_id);

    receiver_shutdown.cancel();
    stages.stop().await;
}

/// The spans of one job's trace, stage by stage.
#[derive(Debug)]
struct TraceChain {
    gateway: Received,
    verifier: Received,
    aggregator: Received,
    forwarder: Received,
    billing_send: Received,
}

impl TraceChain {
    /// The chain of `job` in `trace`, or what is missing.
    fn find(received: &[Received], trace: &str, job: &str, client_span: &str) -> Result<Self, String> {
        let spans: Vec<&Received> = received.iter().filter(|s| s.trace_id == trace).collect();
        let child = |service: &str, parent: &Received, what: &str| {
            spans
                .iter()
                .find(|s| s.service == service && s.parent == parent.span_id && s.name.contains(what))
                .map(|s| (*s).clone())
                .ok_or(format!("no {service} span \"{what}\" under {} ({})", parent.name, parent.service))
        };
        let gateway = spans
            .iter()
            .find(|s| s.service == "ingest-gateway" && s.parent == client_span && s.name.starts_with("POST"))
            .map(|s| (*s).clone())
            .ok_or("no gateway POST span under the client's span")?;
        let verifier = child("verifier", &gateway, ".usage-jobs")?;
        if verifier.attributes.get("messaging.kafka.message.key").map(String::as_str) != Some(job) {
            return Err(format!("the verifier's span is not of job {job}: {verifier:?}"));
        }
        let aggregator = child("aggregator", &verifier, ".usages.verified")?;
        let forwarder = child("billing-forwarder", &aggregator, ".aggregates")?;
        let billing_send = child("billing-forwarder", &forwarder, "send billing record")?;
        // The query service projects the job itself and the statuses of every stage.
        child("query-service", &gateway, ".usage-jobs")?;
        for stage in [&verifier, &aggregator] {
            child("query-service", stage, ".status")?;
        }
        child("query-service", &forwarder, ".status")?;
        // A GET through the one address: the gateway's span, then the query service's under it
        // (the first GETs may have come before the query service listened).
        let gets: Vec<&&Received> = spans
            .iter()
            .filter(|s| s.service == "ingest-gateway" && s.parent == client_span && s.name == "GET")
            .collect();
        if !gets.iter().any(|get| child("query-service", get, "GET /api/usagetransparency/v3/usagesJobs/{id}").is_ok())
        {
            return Err(format!("no query-service GET span under any of the gateway's {} GET spans", gets.len()));
        }
        Ok(TraceChain { gateway, verifier, aggregator, forwarder, billing_send })
    }
}
