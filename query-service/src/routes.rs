//! HTTP routes of the query service.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use uts_common::error::ApiError;

use crate::{admin_api, dashboard, jobs_api, monthly_api, token_service, AppState};

/// The public API router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .nest(admin_api::BASE_PATH, admin_api::router(state.clone()))
        .nest(uts_common::API_BASE, jobs_api::router().merge(monthly_api::router()))
        .route(&format!("{}/openapi.json", uts_common::API_BASE), axum::routing::get(openapi))
        .merge(dashboard::router())
        .merge(token_service::router())
        .fallback(|| async { ApiError::no_match("no such endpoint") })
        .method_not_allowed_fallback(uts_common::http::method_not_allowed)
        // Bodies are read by `admin_api::read_object` with its limit and an mdsp error.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state("query", uts_common::telemetry::record_http_request))
        .with_state(state)
}

/// The OpenAPI 3 document of the whole public API (gateway and query service), `docs/openapi.json`;
/// `e2e/tests/openapi.rs` checks every documented operation against the running services.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}
