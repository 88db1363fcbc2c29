//! The receipts endpoint: `POST /billing/v1/receipts`, where a billing system that answered a
//! record with 202 Accepted confirms it later.
//!
//! Body: `{"idempotencyKey": "<the record's Idempotency-Key>", "recordId": "<its own id>"}`
//! (`recordId` optional), with `Authorization: Bearer <--receipts-token>`. The row is marked
//! `received`, then the record's history is produced (SENTFORBILLING → RECEIVEDFORBILLING, with
//! the same fixed event ids as a synchronous receipt, so a repeated or early receipt changes
//! nothing twice); then 200. A key never sent → 404 `noMatch`; a record refused for good → 409 `conflict`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::error::ApiError;

/// Where receipts are posted.
pub const PATH: &str = "/billing/v1/receipts";

/// Largest receipt body.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub(crate) struct ReceiptsState {
    pub(crate) pool: PgPool,
    pub(crate) history: crate::history::Producer,
    pub(crate) token: Option<String>,
}

pub(crate) fn router(state: Arc<ReceiptsState>) -> Router {
    Router::new()
        .route(PATH, post(post_receipt))
        .fallback(|| async { ApiError::no_match("no such endpoint") })
        .method_not_allowed_fallback(uts_common::http::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Compares in time independent of where the first difference is.
fn same_secret(expected: &str, presented: &str) -> bool {
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorise(state: &ReceiptsState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(ApiError::unauthorized("receipts are not accepted: the forwarder has no --receipts-token"));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if same_secret(expected, presented) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("missing or wrong bearer token"))
    }
}

/// The receipt's fields: the record's Idempotency-Key and the billing system's record id.
fn parse(bytes: &[u8]) -> Result<(String, Option<String>), ApiError> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::invalid_body_property("body", format_args!("is not JSON: {err}")))?;
    let object = body.as_object().ok_or_else(|| ApiError::invalid_body_property("body", "must be a JSON object"))?;
    let key = match object.get("idempotencyKey") {
        None | Some(Value::Null) => return Err(ApiError::missing_body_property("idempotencyKey")),
        Some(Value::String(key)) if !key.is_empty() && key.len() <= 1024 => key.clone(),
        Some(_) => {
            return Err(ApiError::invalid_body_property(
                "idempotencyKey",
                "must be a non-empty string of at most 1024 characters",
            ))
        }
    };
    let record_id = match object.get("recordId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.len() <= 200 => Some(id.clone()),
        Some(_) => {
            return Err(ApiError::invalid_body_property("recordId", "must be a string of at most 200 characters"))
        }
    };
    Ok((key, record_id))
}

async fn post_receipt(
    State(state): State<Arc<ReceiptsState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorise(&state, &headers)?;
    let (key, record_id) = parse(&body)?;
    let row_state: Option<String> = sqlx::query_scalar("SELECT state FROM billing_outbox WHERE record_key = $1")
        .bind(&key)
        .fetch_optional(&state.pool)
        .await
        .map_err(storage_error)?;
    let Some(row_state) = row_state else {
        count("unknown");
        return Err(ApiError::no_match(format!("no billing record with Idempotency-Key {key}")));
    };
    if row_state == "rejected" {
        count("rejected");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("record {key} was refused for good; it has no receipt"),
        ));
    }
    // The row first, its events pending; then the record's whole history (fixed event ids). If
    // producing fails, the forwarder's next round produces it; the billing system may retry.
    sqlx::query(
        "UPDATE billing_outbox
         SET state = 'received', record_id = coalesce($2, record_id), events_pending = true, updated_at = now()
         WHERE record_key = $1 AND state <> 'rejected'",
    )
    .bind(&key)
    .bind(&record_id)
    .execute(&state.pool)
    .await
    .map_err(storage_error)?;
    state
        .history
        .produce(std::slice::from_ref(&key))
        .await
        .map_err(|err| ApiError::service_unavailable(format!("Kafka did not take the receipt's events: {err:#}"), 1))?;
    count(if row_state == "received" { "repeated" } else { "received" });
    tracing::info!(idempotency_key = %key, record_id = ?record_id, "billing receipt by callback");
    Ok(Json(json!({"idempotencyKey": key, "state": "received"})))
}

fn count(outcome: &'static str) {
    metrics::counter!("uts_billing_forwarder_receipts_total", "outcome" => outcome).increment(1);
}

fn storage_error(err: sqlx::Error) -> ApiError {
    tracing::warn!(%err, "receipts: database error");
    ApiError::service_unavailable("the database is not reachable", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_name_their_record_and_nothing_else_passes() {
        assert_eq!(
            parse(br#"{"idempotencyKey":"p/c/a/u/2026-11-22:3","recordId":"r-1"}"#).unwrap(),
            ("p/c/a/u/2026-11-22:3".to_owned(), Some("r-1".to_owned()))
        );
        assert_eq!(parse(br#"{"idempotencyKey":"k"}"#).unwrap(), ("k".to_owned(), None));
        let named = |body: &[u8]| parse(body).unwrap_err().message;
        assert!(named(b"{}").starts_with("idempotencyKey"));
        assert!(named(br#"{"idempotencyKey":""}"#).starts_with("idempotencyKey"));
        assert!(named(br#"{"idempotencyKey":"k","recordId":7}"#).starts_with("recordId"));
        assert!(named(b"[1]").starts_with("body"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
