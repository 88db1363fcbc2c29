//! `PUT`/`GET /tenants/{tenantId}` and `GET /tenants`.
//!
//! A tenant is created or replaced as a whole by the one validated tenant write,
//! `uts_common::tenants::register` (shared with `utsctl tenant`; it checks the invariants that
//! span rows under row locks). Tenants are never deleted: rules, KPIs, aggregates and jobs refer
//! to them.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uts_common::domain::TenantType;
use uts_common::error::ApiError;
use uts_common::tenants::{self, TenantRefused, TenantRow, TenantSpec, Written};

use super::body::{self, name_problem, Object, MAX_TENANT_ID_LEN};
use super::{count_change, read_object, Admin};
use crate::request::{path_segments, serialize_datetime, spellings, storage_error, Listing, Page, Params};

/// A tenant as answered.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(super) struct TenantOut {
    tenant_id: String,
    tenant_type: String,
    operator_tenant_id: Option<String>,
    display_name: Option<String>,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_datetime")]
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = tenants::TENANT_COLUMNS;

impl From<TenantRow> for TenantOut {
    fn from(row: TenantRow) -> Self {
        let TenantRow { tenant_id, tenant_type, operator_tenant_id, display_name, created_at, updated_at } = row;
        Self { tenant_id, tenant_type, operator_tenant_id, display_name, created_at, updated_at }
    }
}

const PROPERTIES: &[&str] = &["tenantId", "tenantType", "operatorTenantId", "displayName"];
const READ_ONLY: &[&str] = &["createdAt", "updatedAt"];

/// Reads a body into the tenant write's spec and checks it on its own (what needs the database
/// comes in [`tenants::register`]).
fn parse_tenant(tenant_id: &str, object: &Object) -> Result<TenantSpec, ApiError> {
    body::check_properties(object, PROPERTIES, READ_ONLY)?;
    body::check_matches_path(object, "tenantId", tenant_id)?;
    let types = spellings(&TenantType::ALL, TenantType::as_str);
    let tenant_type: TenantType = body::required_choice(object, "tenantType", &types)?;
    let operator_tenant_id = body::optional_tenant_id(object, "operatorTenantId")?;
    let display_name = body::optional_name(object, "displayName")?;
    let spec = TenantSpec { tenant_type, operator_tenant_id, display_name };
    tenants::check(tenant_id, &spec).map_err(refused)?;
    Ok(spec)
}

/// The API's answer to a refused tenant write: 400 naming the property, 503/500 for storage.
fn refused(err: TenantRefused) -> ApiError {
    match err {
        TenantRefused::Invalid { property, problem } => ApiError::invalid_body_property(property, problem),
        TenantRefused::Missing(property) => ApiError::missing_body_property(property),
        TenantRefused::Storage(err) => storage_error(err),
        err @ TenantRefused::Contended(_) => ApiError::internal(err),
    }
}

/// `PUT /tenants/{tenantId}`: 201 when created, 200 when replaced.
pub(super) async fn put(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    caller.require_operator()?;
    let tenant_id = path_segments(path, "tenantId")?;
    if let Some(problem) = name_problem(&tenant_id, MAX_TENANT_ID_LEN) {
        return Err(ApiError::invalid_parameter("tenantId", problem));
    }
    let object = read_object(&headers, request_body).await?;
    let spec = parse_tenant(&tenant_id, &object)?;
    let (tenant, written) = tenants::register(&state.pool, &tenant_id, &spec).await.map_err(refused)?;
    let status = match written {
        Written::Created => {
            count_change("tenant", "create");
            StatusCode::CREATED
        }
        Written::Replaced => {
            count_change("tenant", "replace");
            StatusCode::OK
        }
    };
    Ok((status, Json(TenantOut::from(tenant))).into_response())
}

/// `GET /tenants/{tenantId}`.
/// A provider sees its own tenant and its IoT tenants.
pub(super) async fn get(
    Admin { state, caller }: Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantOut>, ApiError> {
    let tenant_id = path_segments(path, "tenantId")?;
    let tenant: Option<TenantOut> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id = $1 AND ($2::text IS NULL OR tenant_id = $2 OR operator_tenant_id = $2)"))
        .bind(&tenant_id)
        .bind(caller.owner())
        .fetch_optional(&state.pool)
        .await
        .map_err(storage_error)?;
    tenant.map(Json).ok_or_else(|| ApiError::no_match(format!("tenant {tenant_id} is not registered")))
}

/// `GET /tenants?type=&page=&size=`, ordered by tenant id.
pub(super) async fn list(
    Admin { state, caller }: Admin,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<TenantOut>>, ApiError> {
    let params = Params::parse(query, &["type", "page", "size"])?;
    let paging = params.paging()?;
    let tenant_type = params
        .get("type")
        .map(|text| {
            text.parse::<TenantType>().map_err(|()| {
                ApiError::invalid_parameter(
                    "type",
                    format_args!("must be one of {}", spellings(&TenantType::ALL, TenantType::as_str).join(", ")),
                )
            })
        })
        .transpose()?
        .map(TenantType::as_str);

    let listing = Listing::new(
        "tenants WHERE ($1::text IS NULL OR tenant_type = $1)
                   AND ($2::text IS NULL OR tenant_id = $2 OR operator_tenant_id = $2)",
    )
    .bind(tenant_type)
    .bind(caller.owner().map(str::to_owned));
    let (tenants, total) = listing.fetch_page(&state.pool, COLUMNS, "tenant_id", paging).await?;
    Ok(Json(Page::new("tenants", tenants, paging.info(total))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(tenant_id: &str, body: serde_json::Value) -> Result<TenantSpec, String> {
        let object = body::parse_object(body.to_string().as_bytes()).unwrap();
        parse_tenant(tenant_id, &object).map_err(|err| err.message)
    }

    #[test]
    fn an_iot_tenant_needs_an_operator_and_only_it_has_one() {
        assert_eq!(
            parse("plant", json!({"tenantType": "iot", "operatorTenantId": "acme", "displayName": "Plant"})).unwrap(),
            TenantSpec {
                tenant_type: TenantType::Iot,
                operator_tenant_id: Some("acme".into()),
                display_name: Some("Plant".into())
            }
        );
        assert_eq!(parse("plant", json!({"tenantType": "iot"})).unwrap_err(), "operatorTenantId is required");
        assert_eq!(
            parse("plant", json!({"tenantType": "iot", "operatorTenantId": "plant"})).unwrap_err(),
            "operatorTenantId must not be the tenant itself"
        );
        assert!(parse("acme", json!({"tenantType": "operator", "operatorTenantId": "x"}))
            .unwrap_err()
            .starts_with("operatorTenantId must be left out: only iot tenants have an operator, not operator tenants"));
    }

    #[test]
    fn bad_bodies_name_the_property() {
        let cases = [
            (json!({}), "tenantType is required"),
            (json!({"tenantType": "Operator"}), "tenantType must be one of developer, operator, iot, customer"),
            (json!({"tenantType": 1}), "tenantType must be one of developer, operator, iot, customer"),
            (json!({"tenantType": "developer", "displayName": ""}), "displayName must not be empty"),
            (json!({"tenantType": "developer", "tenantId": "other"}), "tenantId must be left out or equal"),
            (json!({"tenantType": "developer", "type": "x"}), "type is not a property"),
        ];
        for (body, expected) in cases {
            let message = parse("acme", body.clone()).unwrap_err();
            assert!(message.starts_with(expected), "{body}: {message}");
        }
        // What GET answered can be sent back as it is.
        let fetched = json!({"tenantId": "acme", "tenantType": "customer", "operatorTenantId": null,
            "displayName": null, "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"});
        assert_eq!(parse("acme", fetched).unwrap().tenant_type, TenantType::Customer);
    }
}
