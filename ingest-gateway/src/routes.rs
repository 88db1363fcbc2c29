//! HTTP routes of the gateway.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{SubsecRound, Utc};
use serde::Serialize;
use uts_common::auth::{Principal, Scope};
use uts_common::domain::{format_datetime, job_id, to_timestamp};
use uts_common::error::ApiError;
use uts_common::proto::{v1, Message};
use uts_common::{kafka, API_BASE};

use crate::idempotency::{self, Claim, Original};
use crate::payload::{self, Batch};
use crate::{forward, AppState};

/// The public API router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        // The GETs of /usagesJobs, and every other path, belong to the query service.
        .route(&format!("{API_BASE}/usagesJobs"), post(post_usages_jobs).get(forward::forward))
        .route(&format!("{API_BASE}/usages"), post(post_usages))
        .fallback(forward::forward)
        .method_not_allowed_fallback(uts_common::http::method_not_allowed)
        // Bodies are read by `read_body` with the configured limit and an mdsp error.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state("gateway", uts_common::telemetry::record_http_request))
        .with_state(state)
}

/// The answer of `POST /usagesJobs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsagesJob {
    id: String,
    time: String,
    status: &'static str,
    usages_count: u32,
}

async fn post_usages_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (accepted, replayed) = accept(&state, &headers, body, v1::Origin::UsagesJobs).await?;
    let location = format!("{API_BASE}/usagesJobs/{}", accepted.job_id);
    let answer = UsagesJob {
        id: accepted.job_id,
        time: format_datetime(accepted.received_at),
        status: "ACCEPTED",
        usages_count: accepted.usages_count,
    };
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    mark_replay(&mut response, replayed);
    Ok(response)
}

/// `Idempotent-Replayed: true` on the answer to a retry of an already accepted request (the
/// `Idempotency-Key` found the original): a client can tell a resend from a new job.
fn mark_replay(response: &mut Response, replayed: bool) {
    if replayed {
        response.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    }
}

const REPLAYED: header::HeaderName = header::HeaderName::from_static("idempotent-replayed");

/// The older endpoint answers 200 with the original's text and does not reveal the job id.
async fn post_usages(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (_, replayed) = accept(&state, &headers, body, v1::Origin::Usages).await?;
    let mut response = (StatusCode::OK, "Data is successfully saved to the database").into_response();
    mark_replay(&mut response, replayed);
    Ok(response)
}

/// Authenticates, validates and makes the job durable in Kafka. Returns only once Kafka has
/// acknowledged it; with whether it is the replay of a request accepted earlier.
async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    origin: v1::Origin,
) -> Result<(Original, bool), ApiError> {
    let principal = state.auth.authenticate(headers).await?;
    principal.require(Scope::UsagesWrite)?;
    if let Some(throttle) = &state.throttle {
        throttle.check(&principal.tenant)?;
    }
    check_submitter(state, &principal).await?;
    uts_common::http::require_json(headers)?;
    let key = headers.get(idempotency::HEADER).map(idempotency::parse_key).transpose()?;
    let bytes = uts_common::http::read_body(body, state.max_body_bytes).await?;
    let batch = match origin {
        v1::Origin::Usages => payload::parse_legacy_usages(&bytes)?,
        _ => payload::parse_usages_jobs(&bytes)?,
    };

    let mut job = Original {
        job_id: job_id::mint(),
        // Millisecond precision: the `time` answered is exactly what is stored and replayed.
        received_at: Utc::now().trunc_subsecs(3),
        usages_count: batch.usages_count,
    };
    let mut replayed = false;
    if let Some(key) = &key {
        let route = if origin == v1::Origin::Usages { "usages" } else { "usagesJobs" };
        let hash = idempotency::request_hash(route, &bytes);
        let claim = idempotency::claim(&state.pool, &principal.tenant, key, &hash, &job, state.idempotency_window)
            .await
            .map_err(|err| unavailable("PostgreSQL", &err, 1))?;
        match claim {
            Claim::New => {}
            // Re-produce under the original id: the first attempt may never have reached Kafka.
            Claim::Replay(original) => {
                job = original;
                replayed = true;
            }
            Claim::Mismatch => {
                return Err(ApiError::invalid_parameter(
                    "Idempotency-Key",
                    "was already used with a different request body",
                ))
            }
        }
    }

    if state.kafka_health.is_down() {
        metrics::counter!("uts_gateway_kafka_produce_failures_total").increment(1);
        return Err(ApiError::service_unavailable(
            "Kafka is unavailable; nothing was accepted, retry later",
            state.kafka_health.retry_after_seconds(),
        ));
    }
    let message = to_message(&principal, &job, origin, key, batch);
    let started = Instant::now();
    // The request's context (its server span's, see uts_common::trace) goes on with the job.
    let trace = uts_common::trace::of_headers(headers);
    let payload = message.encode_to_vec();
    let outgoing = kafka::Outgoing::new(&state.jobs_topic, job.job_id.as_bytes(), &payload, trace.as_ref());
    let produced = kafka::produce_one(&state.producer, outgoing, state.produce_timeout).await;
    metrics::histogram!("uts_gateway_kafka_produce_duration_seconds").record(started.elapsed().as_secs_f64());
    if let Err(err) = produced {
        if matches!(
            err,
            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
        ) {
            state.kafka_health.mark_down();
        }
        metrics::counter!("uts_gateway_kafka_produce_failures_total").increment(1);
        return Err(unavailable("Kafka", &err, state.kafka_health.retry_after_seconds()));
    }
    metrics::counter!("uts_gateway_usages_accepted_total").increment(u64::from(job.usages_count));
    metrics::counter!("uts_gateway_jobs_accepted_total").increment(1);
    Ok((job, replayed))
}

fn to_message(
    principal: &Principal,
    job: &Original,
    origin: v1::Origin,
    key: Option<String>,
    batch: Batch,
) -> v1::UsageJob {
    v1::UsageJob {
        job_id: job.job_id.clone(),
        submitter_tenant: principal.tenant.clone(),
        submitter_user: principal.user.clone(),
        received_at: Some(to_timestamp(job.received_at)),
        origin: origin as i32,
        idempotency_key: key.unwrap_or_default(),
        usages_count: batch.usages_count,
        users: batch.users,
    }
}

/// Only developer and operator tenants may submit usages (DESIGN.md §3).
async fn check_submitter(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let tenant = state.tenants.get(&principal.tenant).await.map_err(|err| unavailable("PostgreSQL", &err, 1))?;
    match tenant {
        Some(tenant) if tenant.tenant_type.may_submit_usages() => Ok(()),
        Some(tenant) => Err(ApiError::forbidden(format!(
            "tenant {} is a {} tenant; only developer and operator tenants may submit usages",
            principal.tenant,
            tenant.tenant_type.as_str()
        ))),
        None => Err(ApiError::forbidden(format!(
            "tenant {} is not registered as a developer or operator tenant",
            principal.tenant
        ))),
    }
}

fn unavailable(dependency: &str, err: &dyn std::fmt::Display, retry_after_seconds: u64) -> ApiError {
    tracing::warn!(%err, dependency, "dependency unavailable; request refused with 503");
    ApiError::service_unavailable(
        format!("{dependency} is unavailable; nothing was accepted, retry later"),
        retry_after_seconds,
    )
}
