//! The admin API (ours, DESIGN.md §3): tenants, application provisioning, rules and KPIs under
//! `/api/usagetransparency/v3/admin`, for tokens with the scope `uts.admin` (or `uts.su`).
//!
//! | endpoint | answer |
//! |---|---|
//! | `PUT /tenants/{tenantId}` | 201 created, 200 replaced |
//! | `GET /tenants/{tenantId}`, `GET /tenants?type=&page=&size=` | the tenant; a page of tenants |
//! | `PUT /tenants/{tenantId}/applications/{application}` | 201 provisioned, 200 already provisioned |
//! | `DELETE /tenants/{tenantId}/applications/{application}` | 204 |
//! | `GET /tenants/{tenantId}/applications` | `{applications:[…]}` |
//! | `POST /rules`, `GET`/`PUT`/`DELETE /rules/{ruleId}`, `GET /rules?application=&unit=&ownerTenantId=&page=&size=` | 201, 200, 200, 204, a page |
//! | `POST /kpis`, `GET`/`PUT`/`DELETE /kpis/{kpiId}`, `GET /kpis?application=&page=&size=` | 201, 200, 200, 204, a page |
//! | `POST /clients`, `GET`/`DELETE /clients/{clientId}`, `POST /clients/{clientId}/secret`, `GET /clients?tenantId=` | the token service's clients ([`clients`]) |
//! | `GET`/`POST /signingKeys` | its signing keys, and their rotation |
//!
//! Admin data is global: the scope belongs to whoever operates the service (see the crate
//! header). Checks run in the gateway's order, so a caller learns the most basic problem first:
//! authentication (401), scope (403), content type (415), body size (413, at most
//! [`MAX_BODY_BYTES`]), JSON syntax, then each property (400 naming it), then what needs the
//! database (an owner that must exist: 400; a duplicate name: 409 `conflict`). Unknown or malformed ids in the path are
//! 404 `noMatch`; query parameters are 400 `invalidParameter` naming the parameter; an empty
//! query parameter (`?unit=`) counts as absent. Lists are ordered by their natural key and paged
//! with `page` (0-based) and `size` (1–1000, default 20).

mod body;
mod clients;
mod kpis;
mod provisioning;
mod rules;
mod tenants;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uts_common::auth::Scope;
use uts_common::domain::format_datetime;
use uts_common::error::ApiError;

use crate::AppState;

/// Where the admin API lives.
pub const BASE_PATH: &str = "/api/usagetransparency/v3/admin";

/// Largest accepted request body (larger → 413). An admin resource is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest `size` of a page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// `size` when the request does not give one.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// The admin routes, relative to [`BASE_PATH`]. Every one of them requires the admin scope.
pub(crate) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/tenants", get(tenants::list))
        .route("/tenants/{tenant_id}", get(tenants::get).put(tenants::put))
        .route("/tenants/{tenant_id}/applications", get(provisioning::list))
        .route(
            "/tenants/{tenant_id}/applications/{application}",
            axum::routing::put(provisioning::put).delete(provisioning::delete),
        )
        .route("/rules", get(rules::list).post(rules::create))
        .route("/rules/{rule_id}", get(rules::get).put(rules::update).delete(rules::delete))
        .route("/kpis", get(kpis::list).post(kpis::create))
        .route("/kpis/{kpi_id}", get(kpis::get).put(kpis::update).delete(kpis::delete))
        .route("/clients", get(clients::list).post(clients::create))
        .route("/clients/{client_id}", get(clients::get).delete(clients::revoke))
        .route("/clients/{client_id}/secret", axum::routing::post(clients::rotate_secret))
        .route("/signingKeys", get(clients::list_keys).post(clients::rotate_key))
        // A route layer: runs only for matched routes, before any extractor, so an
        // unauthenticated caller learns nothing from path or body validation.
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// 401 without a valid token, 403 without `uts.admin` (or `uts.su`).
async fn require_admin(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Result<Response, ApiError> {
    let principal = state.auth.authenticate(request.headers()).await?;
    principal.require(Scope::Admin)?;
    Ok(next.run(request).await)
}

/// Reads a JSON object body: 415 unless the content type is JSON, 413 beyond
/// [`MAX_BODY_BYTES`], 400 unless it is one JSON object.
async fn read_object(headers: &HeaderMap, body: Body) -> Result<body::Object, ApiError> {
    uts_common::http::require_json(headers)?;
    let bytes = uts_common::http::read_body(body, MAX_BODY_BYTES).await?;
    body::parse_object(&bytes)
}

/// A path segment, or 400 naming it when it cannot be decoded.
fn path_segments<T>(path: Result<Path<T>, PathRejection>, name: &str) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|err| ApiError::invalid_parameter(name, format_args!("could not be read from the path: {err}")))
}

/// A uuid id from the path; anything else cannot name an existing resource, so it is 404.
fn path_uuid(path: Result<Path<String>, PathRejection>, what: &str) -> Result<uuid::Uuid, ApiError> {
    let text = path.map_err(|_| ApiError::no_match(format!("no {what} with this id")))?.0;
    uuid::Uuid::try_parse(&text).map_err(|_| ApiError::no_match(format!("no {what} with id {text}")))
}

/// The query parameters of a list request.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses parameters outside `known` and parameters given twice; drops empty values.
    pub(crate) fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query
            .map_err(|err| ApiError::invalid_parameter("query string", format_args!("could not be decoded: {err}")))?;
        let mut kept: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::invalid_parameter(
                    &name,
                    format_args!("is not a parameter of this list (known: {})", known.join(", ")),
                ));
            }
            if kept.iter().any(|(seen, _)| *seen == name) {
                return Err(ApiError::invalid_parameter(&name, "must be given at most once"));
            }
            if !value.is_empty() {
                kept.push((name, value));
            }
        }
        Ok(Self(kept))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// `page` (0-based) and `size`.
    fn paging(&self) -> Result<Paging, ApiError> {
        self.paging_or(DEFAULT_PAGE_SIZE)
    }

    /// `page` (0-based) and `size`, `default_size` when absent.
    pub(crate) fn paging_or(&self, default_size: u32) -> Result<Paging, ApiError> {
        let page = match self.get("page") {
            None => 0,
            Some(text) => text
                .parse::<u32>()
                .map_err(|_| ApiError::invalid_parameter("page", "must be a whole number of at least 0"))?,
        };
        let size = match self.get("size") {
            None => default_size,
            Some(text) => {
                text.parse::<u32>().ok().filter(|size| (1..=MAX_PAGE_SIZE).contains(size)).ok_or_else(|| {
                    ApiError::invalid_parameter(
                        "size",
                        format_args!("must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                    )
                })?
            }
        };
        Ok(Paging { page, size })
    }
}

/// Which slice of a list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    pub(crate) page: u32,
    pub(crate) size: u32,
}

impl Paging {
    pub(crate) fn limit(self) -> i64 {
        i64::from(self.size)
    }

    /// At most (2^32 - 1) * 1000: fits an i64.
    pub(crate) fn offset(self) -> i64 {
        i64::from(self.page) * i64::from(self.size)
    }

    pub(crate) fn info(self, total_elements: i64) -> PageInfo {
        let size = i64::from(self.size);
        PageInfo { number: self.page, size: self.size, total_elements, total_pages: (total_elements + size - 1) / size }
    }
}

/// `page` of a list answer (DESIGN.md §3).
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PageInfo {
    number: u32,
    size: u32,
    total_elements: i64,
    total_pages: i64,
}

/// A database failure: 503 when PostgreSQL cannot be reached, else 500 (the cause is logged
/// under the response's `logref`, never sent).
pub(crate) fn storage_error(err: sqlx::Error) -> ApiError {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(%err, "PostgreSQL unavailable; request refused with 503");
            ApiError::service_unavailable("PostgreSQL is unavailable; nothing was changed, retry later", 1)
        }
        err => ApiError::internal(format_args!("PostgreSQL: {err}")),
    }
}

/// Is `err` a violation of the constraint `name`?
fn violates(err: &sqlx::Error, name: &str) -> bool {
    err.as_database_error().and_then(|db| db.constraint()) == Some(name)
}

/// Counts changes made through the admin API.
fn count_change(resource: &'static str, action: &'static str) {
    metrics::counter!("uts_query_admin_changes_total", "resource" => resource, "action" => action).increment(1);
}

/// The API spellings of an enum's values, for "must be one of …" messages.
fn spellings<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|value| as_str(*value)).collect()
}

/// 400 naming `property` unless the tenant `owner` is registered. Tenants are never deleted,
/// so the answer cannot go stale before the write (the foreign key would catch it anyway).
async fn check_owner(pool: &PgPool, property: &str, owner: &str) -> Result<(), ApiError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
        .bind(owner)
        .fetch_one(pool)
        .await
        .map_err(storage_error)?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::invalid_body_property(property, format_args!("names no registered tenant ({owner})")))
    }
}

/// Datetimes as the API renders them: RFC 3339, UTC, milliseconds.
fn serialize_datetime<S: serde::Serializer>(dt: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_datetime(*dt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], known: &[&str]) -> Result<Params, ApiError> {
        let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Params::parse(Ok(Query(pairs)), known)
    }

    #[test]
    fn paging_defaults_and_limits() {
        let known = ["page", "size", "unit"];
        assert_eq!(params(&[], &known).unwrap().paging().unwrap(), Paging { page: 0, size: 20 });
        assert_eq!(
            params(&[("page", "3"), ("size", "1000")], &known).unwrap().paging().unwrap(),
            Paging { page: 3, size: 1000 }
        );
        assert_eq!(
            params(&[("page", ""), ("size", "")], &known).unwrap().paging().unwrap(),
            Paging { page: 0, size: 20 }
        );
        for (name, value) in [("size", "0"), ("size", "1001"), ("size", "x"), ("page", "-1"), ("page", "1.5")] {
            let err = params(&[(name, value)], &known).unwrap().paging().unwrap_err();
            assert_eq!(err.full_code(), "mdsp.core.generic.invalidParameter");
            assert!(err.message.starts_with(name), "{}", err.message);
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let known = ["page", "size", "unit"];
        assert!(params(&[("units", "x")], &known).unwrap_err().message.starts_with("units is not a parameter"));
        assert_eq!(
            params(&[("unit", "a"), ("unit", "b")], &known).unwrap_err().message,
            "unit must be given at most once"
        );
        assert_eq!(params(&[("unit", "")], &known).unwrap().get("unit"), None);
    }

    #[test]
    fn page_info_counts_partial_pages() {
        let paging = Paging { page: 2, size: 10 };
        assert_eq!(paging.offset(), 20);
        assert_eq!(paging.info(21), PageInfo { number: 2, size: 10, total_elements: 21, total_pages: 3 });
        assert_eq!(paging.info(0).total_pages, 0);
        assert_eq!(Paging { page: u32::MAX, size: MAX_PAGE_SIZE }.offset(), 4_294_967_295_000);
    }
}
