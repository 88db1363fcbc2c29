//! HTTP routes of the receiver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Serialize;
use uts_common::domain::format_datetime;
use uts_common::error::{ApiError, MessageParameter};
use uts_common::telemetry::error_chain;
use uuid::Uuid;

use crate::failures::{FailureMode, FailurePlan};
use crate::record;
use crate::store::{Receipt, Submission};
use crate::AppState;

/// Where the billing-forwarder posts records, and where they are listed.
pub const RECORDS_PATH: &str = "/billing/v1/records";

/// Failure injection.
pub const FAILURES_PATH: &str = "/admin/failures";

/// Largest accepted request body. A record is a few hundred bytes plus one entry per job.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The receiver's router: everything but `/healthz` requires the token when one is configured.
pub fn app(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route(RECORDS_PATH, get(list_records).post(post_record))
        .route(&format!("{RECORDS_PATH}/{{record_id}}"), get(get_record))
        .route(FAILURES_PATH, get(get_failures).post(set_failures).delete(clear_failures))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(guarded)
        .fallback(|| async { ApiError::no_match("no such endpoint") })
        .method_not_allowed_fallback(uts_common::http::method_not_allowed)
        // Bodies are read by `read_body` with its own limit and an mdsp error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Where and how receipts are sent when the receiver works asynchronously.
pub(crate) struct ReceiptCallback {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) http: reqwest::Client,
}

impl ReceiptCallback {
    /// Sends the receipt of `key` until it is taken (2xx), refused for good (4xx other than
    /// 429) or the receiver stops; the delay doubles from 100 ms up to 10 s.
    async fn deliver(&self, key: String, record_id: Uuid, stopping: CancellationToken) {
        let body = serde_json::json!({"idempotencyKey": key, "recordId": record_id.to_string()});
        let mut delay = Duration::from_millis(100);
        loop {
            let mut request = self.http.post(&self.url).json(&body);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(answer) if answer.status().is_success() => {
                    count_outcome("receipt_delivered");
                    return;
                }
                Ok(answer) if answer.status().is_client_error() && answer.status() != StatusCode::TOO_MANY_REQUESTS => {
                    count_outcome("receipt_refused");
                    tracing::warn!(idempotency_key = %key, status = %answer.status(), "the receipt was refused; not retried");
                    return;
                }
                Ok(answer) => {
                    tracing::info!(idempotency_key = %key, status = %answer.status(), "receipt not taken yet; retrying")
                }
                Err(err) => tracing::info!(idempotency_key = %key, %err, "receipt not delivered yet; retrying"),
            }
            tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// With receipts by callback: 202 now, the receipt later (for a duplicate too: the sender may
/// have missed the first one).
fn accepted_later(state: &Arc<AppState>, key: &str, receipt: &Receipt, duplicate: bool) -> Option<Response> {
    state.receipts.as_ref()?;
    let (state_for_task, key_for_task, record_id) = (state.clone(), key.to_owned(), receipt.record_id);
    tokio::spawn(async move {
        let callback = state_for_task.receipts.as_ref().expect("checked above");
        callback.deliver(key_for_task, record_id, state_for_task.stopping.clone()).await;
    });
    Some((StatusCode::ACCEPTED, Json(RecordReceipt::new(*receipt, duplicate))).into_response())
}

/// The answer to a record POST.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordReceipt {
    record_id: Uuid,
    received_at: String,
    duplicate: bool,
}

impl RecordReceipt {
    fn new(receipt: Receipt, duplicate: bool) -> Self {
        Self { record_id: receipt.record_id, received_at: format_datetime(receipt.received_at), duplicate }
    }
}

/// Checks run in this order: token (401, by the middleware), injected failure, Idempotency-Key
/// (400), body (413, 400), then the key's earlier use (200 duplicate, 409 conflict).
async fn post_record(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    // Before anything about the request is looked at: a billing system that is down does not
    // read bodies either, and a test can count on exactly N failures whatever it sends.
    if let Some(mode) = state.failures.next_failure(Instant::now()) {
        count_outcome("injected_failure");
        tracing::info!(mode = mode.as_str(), "injected failure: nothing stored");
        return Err(injected(&state, mode).await);
    }
    let key = record::idempotency_key(&headers)?;
    let bytes = uts_common::http::read_body(body, MAX_BODY_BYTES).await?;
    let record = record::parse(&bytes)?;

    // The store fsyncs the data file: keep that off the async workers.
    let store = state.store.clone();
    let stored_key = key.clone();
    let body = record.body;
    let submission = tokio::task::spawn_blocking(move || store.submit(&stored_key, body, Utc::now()))
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| ApiError::internal(error_chain(&err)))?;

    match submission {
        Submission::Stored(receipt) => {
            count_outcome("stored");
            if let Some(response) = accepted_later(&state, &key, &receipt, false) {
                return Ok(response);
            }
            tracing::info!(
                record_id = %receipt.record_id,
                idempotency_key = %key,
                bucket = %record.bucket,
                version = record.version,
                "record stored"
            );
            let location = format!("{RECORDS_PATH}/{}", receipt.record_id);
            let mut response = (StatusCode::CREATED, Json(RecordReceipt::new(receipt, false))).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        Submission::Duplicate(original) => {
            count_outcome("duplicate");
            if let Some(response) = accepted_later(&state, &key, &original, true) {
                return Ok(response);
            }
            tracing::info!(record_id = %original.record_id, idempotency_key = %key, "duplicate record: answered the original");
            Ok((StatusCode::OK, Json(RecordReceipt::new(original, true))).into_response())
        }
        Submission::Conflict(original) => {
            count_outcome("conflict");
            let mut err = error(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "Idempotency-Key was already used for record {} with a different body; nothing was stored",
                    original.record_id
                ),
            );
            err.parameters.push(MessageParameter { name: "parameter".into(), value: "Idempotency-Key".into() });
            Err(err)
        }
    }
}

async fn list_records(State(state): State<Arc<AppState>>) -> Response {
    Json(state.store.list()).into_response()
}

async fn get_record(State(state): State<Arc<AppState>>, Path(record_id): Path<String>) -> Result<Response, ApiError> {
    Uuid::parse_str(&record_id)
        .ok()
        .and_then(|id| state.store.get(id))
        .map(|stored| Json(stored).into_response())
        .ok_or_else(|| ApiError::no_match(format!("no record {record_id}")))
}

async fn get_failures(State(state): State<Arc<AppState>>) -> Response {
    Json(state.failures.status(Instant::now())).into_response()
}

async fn set_failures(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let plan = FailurePlan::parse(&uts_common::http::read_body(body, MAX_BODY_BYTES).await?)?;
    let now = Instant::now();
    state.failures.set(&plan, now);
    tracing::info!(
        mode = plan.mode.as_str(),
        count = plan.count,
        seconds = plan.duration.map(|d| d.as_secs_f64()),
        "failure injection set"
    );
    Ok(Json(state.failures.status(now)).into_response())
}

async fn clear_failures(State(state): State<Arc<AppState>>) -> StatusCode {
    state.failures.clear();
    tracing::info!("failure injection cleared");
    StatusCode::NO_CONTENT
}

/// The answer of an injected failure. Nothing has been read or stored.
async fn injected(state: &AppState, mode: FailureMode) -> ApiError {
    match mode {
        FailureMode::Http500 => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internalServerError",
            "injected failure (http500); nothing was stored",
        ),
        FailureMode::Http503 => ApiError::service_unavailable("injected failure (http503); nothing was stored", 1),
        FailureMode::Http422 => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessableEntity",
            "injected failure (http422): the record is refused for good; nothing was stored",
        ),
        FailureMode::Timeout => {
            tokio::select! {
                () = tokio::time::sleep(state.timeout_hold) => error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gatewayTimeout",
                    format!("injected failure (timeout) after {} ms; nothing was stored", state.timeout_hold.as_millis()),
                ),
                // A held request must not hold up a graceful shutdown for the whole hold time.
                () = state.stopping.cancelled() => ApiError::service_unavailable(
                    "shutting down; nothing was stored",
                    1,
                ),
            }
        }
    }
}

/// When a token is configured, every guarded route needs `Authorization: Bearer <token>`.
async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim());
        if !presented.is_some_and(|presented| token.matches(presented)) {
            let mut response = ApiError::unauthorized("a valid bearer token is required").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// An error with a status and code that `ApiError` has no constructor for (409, 504, an
/// injected 500 that must not be logged as an internal error).
fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

fn count_outcome(outcome: &'static str) {
    metrics::counter!("uts_billing_receiver_records_total", "outcome" => outcome).increment(1);
}
