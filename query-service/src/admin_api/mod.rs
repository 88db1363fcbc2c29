//! The admin API (ours, DESIGN.md §3): tenants, application provisioning, rules and KPIs under
//! `/api/usagetransparency/v3/admin`, for tokens with the scope `uts.admin` or `uts.provider.admin` (or `uts.su`).
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
//! Two scopes ([`Caller`]): `uts.admin` belongs to whoever operates the service and covers
//! everything; `uts.provider.admin` lets a provider tenant manage the rules and KPIs it owns
//! (creating them in its own name, in applications no other owner has rules or KPIs in), read
//! its own tenant and its IoT tenants and provision their applications. Tenants, clients and
//! signing keys are changed only by the operator (403 for a provider); what a provider does not
//! own answers 404, as if it did not exist. Checks run in the gateway's order, so a caller learns the most basic problem first:
//! authentication (401), scope (403), content type (415), body size (413, at most
//! [`MAX_BODY_BYTES`]), JSON syntax, then each property (400 naming it), then what needs the
//! database (an owner that must exist: 400; a duplicate name: 409 `conflict`). Unknown or malformed ids in the path are
//! 404 `noMatch`; query parameters are 400 `invalidParameter` naming the parameter; an empty
//! query parameter (`?unit=`) counts as absent. Lists are ordered by their natural key and paged
//! with `page` (0-based) and `size` (1–1000, default 20).

mod body;
mod clients;
mod kpis;
mod owned;
mod provisioning;
mod rules;
mod tenants;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use uts_common::auth::Scope;
use uts_common::error::ApiError;

use self::kpis::Kpis;
use self::rules::Rules;
use crate::request::holds;
use crate::AppState;

/// Where the admin API lives.
pub const BASE_PATH: &str = "/api/usagetransparency/v3/admin";

/// Largest accepted request body (larger → 413). An admin resource is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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
        .route("/rules", get(owned::list::<Rules>).post(owned::create::<Rules>))
        .route("/rules/{rule_id}", get(owned::get::<Rules>).put(owned::update::<Rules>).delete(owned::delete::<Rules>))
        .route("/kpis", get(owned::list::<Kpis>).post(owned::create::<Kpis>))
        .route("/kpis/{kpi_id}", get(owned::get::<Kpis>).put(owned::update::<Kpis>).delete(owned::delete::<Kpis>))
        .merge(
            // The token service's clients and keys are the operator's alone.
            Router::new()
                .route("/clients", get(clients::list).post(clients::create))
                .route("/clients/{client_id}", get(clients::get).delete(clients::revoke))
                .route("/clients/{client_id}/secret", axum::routing::post(clients::rotate_secret))
                .route("/signingKeys", get(clients::list_keys).post(clients::rotate_key))
                .route_layer(middleware::from_fn(operator_only)),
        )
        // A route layer: runs only for matched routes, before any extractor, so an
        // unauthenticated caller learns nothing from path or body validation.
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// 401 without a valid token, 403 without `uts.admin` or `uts.provider.admin` (or `uts.su`);
/// the handlers get the [`Caller`].
async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = state.auth.authenticate(request.headers()).await?;
    let caller = if principal.has_scope(Scope::Admin) {
        Caller::Operator
    } else if principal.has_scope(Scope::ProviderAdmin) {
        Caller::Provider(principal.tenant)
    } else {
        return Err(ApiError::forbidden(format!(
            "the token lacks the scope {} (or {} for a provider's own rules and KPIs) required by this operation",
            Scope::Admin.as_str(),
            Scope::ProviderAdmin.as_str()
        )));
    };
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// 403 for a provider (after [`require_admin`], which puts the caller in the request).
async fn operator_only(request: Request, next: Next) -> Result<Response, ApiError> {
    match request.extensions().get::<Caller>() {
        Some(caller) => caller.require_operator()?,
        None => return Err(ApiError::internal("operator_only runs without require_admin")),
    }
    Ok(next.run(request).await)
}

/// The state and the [`Caller`] of an admin request (put there by [`require_admin`]).
pub(crate) struct Admin {
    pub(crate) state: Arc<AppState>,
    pub(crate) caller: Caller,
}

impl axum::extract::FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts.extensions.get::<Caller>().cloned();
        let caller = caller.ok_or_else(|| ApiError::internal("an admin handler ran without require_admin"))?;
        Ok(Self { state: state.clone(), caller })
    }
}

/// Who administers: the service's operator (`uts.admin`: everything), or a provider
/// (`uts.provider.admin`: the rules and KPIs it owns, its own tenant and its IoT tenants).
/// What a provider may not see answers as if it did not exist (404, never "forbidden", so ids
/// and names cannot be probed); what only the operator may do is 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Operator,
    Provider(String),
}

impl Caller {
    /// The owner a provider is confined to; `None` for the operator.
    pub(crate) fn owner(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Provider(tenant) => Some(tenant),
        }
    }

    /// 403 for a provider.
    pub(crate) fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Provider(_) => Err(ApiError::forbidden(format!(
                "only the service operator ({}) may do this; {} covers a provider's own rules and KPIs",
                Scope::Admin.as_str(),
                Scope::ProviderAdmin.as_str()
            ))),
        }
    }

    /// 403 naming `property` when a provider names an owner other than itself.
    pub(crate) fn check_owns(&self, property: &str, owner: &str) -> Result<(), ApiError> {
        match self.owner() {
            Some(own) if own != owner => Err(ApiError::forbidden(format!(
                "{property} must be your own tenant ({own}): a provider administers only what it owns"
            ))),
            _ => Ok(()),
        }
    }
}

/// 403 when a provider would put a rule or KPI into an application another owner already has
/// rules or KPIs in: an application belongs to the owner of its first rule or KPI (the
/// operator can still do anything).
async fn check_application_free(pool: &PgPool, caller: &Caller, application: &str) -> Result<(), ApiError> {
    let Some(own) = caller.owner() else { return Ok(()) };
    let taken = holds(
        pool,
        "SELECT EXISTS (SELECT 1 FROM rules WHERE application = $1 AND owner_tenant_id <> $2)
             OR EXISTS (SELECT 1 FROM kpis WHERE application = $1 AND owner_tenant_id <> $2)",
        &[application, own],
    )
    .await?;
    if taken {
        Err(ApiError::forbidden(format!(
            "application {application} belongs to another provider: its rules and KPIs have another owner"
        )))
    } else {
        Ok(())
    }
}

/// Reads a JSON object body: 415 unless the content type is JSON, 413 beyond
/// [`MAX_BODY_BYTES`], 400 unless it is one JSON object.
async fn read_object(headers: &HeaderMap, body: Body) -> Result<body::Object, ApiError> {
    uts_common::http::require_json(headers)?;
    let bytes = uts_common::http::read_body(body, MAX_BODY_BYTES).await?;
    body::parse_object(&bytes)
}

/// Is `err` a violation of the constraint `name`?
fn violates(err: &sqlx::Error, name: &str) -> bool {
    err.as_database_error().and_then(|db| db.constraint()) == Some(name)
}

/// Counts changes made through the admin API.
fn count_change(resource: &'static str, action: &'static str) {
    metrics::counter!("uts_query_admin_changes_total", "resource" => resource, "action" => action).increment(1);
}

/// 400 naming `property` unless the tenant `owner` is registered. Tenants are never deleted,
/// so the answer cannot go stale before the write (the foreign key would catch it anyway).
async fn check_owner(pool: &PgPool, property: &str, owner: &str) -> Result<(), ApiError> {
    let exists = holds(pool, "SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)", &[owner]).await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::invalid_body_property(property, format_args!("names no registered tenant ({owner})")))
    }
}
