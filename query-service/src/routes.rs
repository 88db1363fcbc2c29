//! HTTP routes of the query service.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use uts_common::error::ApiError;

use crate::{admin_api, jobs_api, monthly_api, AppState};

/// The public API router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .nest(admin_api::BASE_PATH, admin_api::router(state.clone()))
        .nest(uts_common::API_BASE, jobs_api::router().merge(monthly_api::router()))
        .route(&format!("{}/openapi.json", uts_common::API_BASE), axum::routing::get(openapi))
        .fallback(|| async { ApiError::no_match("no such endpoint") })
        // Bodies are read by `admin_api::read_object` with its limit and an mdsp error.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// The OpenAPI 3 document of the whole public API (gateway and query service), `docs/openapi.json`;
/// `e2e/tests/openapi.rs` checks every documented operation against the running services.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Counts requests by route and status and times them.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("uts_query_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("uts_query_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
