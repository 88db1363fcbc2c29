//! `PUT`/`GET /tenants/{tenantId}` and `GET /tenants`.
//!
//! A tenant is created or replaced as a whole. Two invariants span rows and are checked here,
//! under row locks, because the schema cannot: an IoT tenant's operator is an operator tenant
//! (so an operator with IoT tenants cannot change its type), and only IoT tenants have
//! provisioned applications (so an IoT tenant with provisioned applications cannot change its
//! type). Tenants are never deleted: rules, KPIs, aggregates and jobs refer to them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uts_common::domain::TenantType;
use uts_common::error::ApiError;

use super::body::{self, name_problem, Object, MAX_TENANT_ID_LEN};
use super::{
    count_change, path_segments, read_object, serialize_datetime, spellings, storage_error, Caller, PageInfo, Params,
};
use crate::AppState;

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

const COLUMNS: &str = "tenant_id, tenant_type, operator_tenant_id, display_name, created_at, updated_at";

/// The validated body of `PUT /tenants/{tenantId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TenantSpec {
    tenant_type: TenantType,
    /// Present exactly for IoT tenants.
    operator_tenant_id: Option<String>,
    display_name: Option<String>,
}

const PROPERTIES: &[&str] = &["tenantId", "tenantType", "operatorTenantId", "displayName"];
const READ_ONLY: &[&str] = &["createdAt", "updatedAt"];

/// Checks a body on its own (what needs the database comes later).
fn parse_tenant(tenant_id: &str, object: &Object) -> Result<TenantSpec, ApiError> {
    body::check_properties(object, PROPERTIES, READ_ONLY)?;
    body::check_matches_path(object, "tenantId", tenant_id)?;
    let types = spellings(&TenantType::ALL, TenantType::as_str);
    let tenant_type: TenantType = body::required_choice(object, "tenantType", &types)?;
    let operator_tenant_id = body::optional_tenant_id(object, "operatorTenantId")?;
    match (tenant_type, &operator_tenant_id) {
        (TenantType::Iot, None) => return Err(ApiError::missing_body_property("operatorTenantId")),
        (TenantType::Iot, Some(operator)) if operator == tenant_id => {
            return Err(ApiError::invalid_body_property("operatorTenantId", "must not be the tenant itself"))
        }
        (TenantType::Iot, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(ApiError::invalid_body_property(
                "operatorTenantId",
                format_args!(
                    "must be left out: only iot tenants have an operator, not {} tenants",
                    tenant_type.as_str()
                ),
            ))
        }
    }
    let display_name = body::optional_name(object, "displayName")?;
    Ok(TenantSpec { tenant_type, operator_tenant_id, display_name })
}

/// `PUT /tenants/{tenantId}`: 201 when created, 200 when replaced.
pub(super) async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
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
    let (tenant, written) = store(&state.pool, &tenant_id, &spec).await?;
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
    Ok((status, Json(tenant)).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Created,
    Replaced,
}

/// Creates or replaces the tenant in one transaction.
async fn store(pool: &PgPool, tenant_id: &str, spec: &TenantSpec) -> Result<(TenantOut, Written), ApiError> {
    // A concurrent create of the same new tenant makes our insert do nothing; the retry then
    // finds the row and replaces it.
    for _ in 0..3 {
        let mut tx = pool.begin().await.map_err(storage_error)?;
        // Lock the tenant and its operator in id order (no deadlock between two calls that lock
        // the same pair): a concurrent type change of the operator waits for us, or we see it.
        let mut ids = vec![tenant_id.to_owned()];
        ids.extend(spec.operator_tenant_id.clone());
        let locked: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant_id, tenant_type FROM tenants WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage_error)?;
        let type_of = |id: &str| locked.iter().find(|(locked_id, _)| locked_id == id).map(|(_, kind)| kind.as_str());

        if let Some(operator) = &spec.operator_tenant_id {
            match type_of(operator) {
                Some("operator") => {}
                Some(kind) => {
                    return Err(ApiError::invalid_body_property(
                        "operatorTenantId",
                        format_args!("must name an operator tenant; {operator} is a {kind} tenant"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid_body_property(
                        "operatorTenantId",
                        format_args!("names no registered tenant ({operator})"),
                    ))
                }
            }
        }

        match type_of(tenant_id) {
            Some(current) => {
                check_type_change(&mut tx, tenant_id, current, spec.tenant_type).await?;
                let tenant: TenantOut = sqlx::query_as(&format!(
                    "UPDATE tenants SET tenant_type = $2, operator_tenant_id = $3, display_name = $4, updated_at = now()
                     WHERE tenant_id = $1 RETURNING {COLUMNS}"
                ))
                .bind(tenant_id)
                .bind(spec.tenant_type.as_str())
                .bind(&spec.operator_tenant_id)
                .bind(&spec.display_name)
                .fetch_one(&mut *tx)
                .await
                .map_err(storage_error)?;
                tx.commit().await.map_err(storage_error)?;
                return Ok((tenant, Written::Replaced));
            }
            None => {
                let inserted: Option<TenantOut> = sqlx::query_as(&format!(
                    "INSERT INTO tenants (tenant_id, tenant_type, operator_tenant_id, display_name)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING RETURNING {COLUMNS}"
                ))
                .bind(tenant_id)
                .bind(spec.tenant_type.as_str())
                .bind(&spec.operator_tenant_id)
                .bind(&spec.display_name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(storage_error)?;
                if let Some(tenant) = inserted {
                    tx.commit().await.map_err(storage_error)?;
                    return Ok((tenant, Written::Created));
                }
            }
        }
    }
    Err(ApiError::internal(format_args!("tenant {tenant_id} kept changing concurrently; gave up after 3 attempts")))
}

/// An operator with IoT tenants stays an operator; an IoT tenant with provisioned applications
/// stays an IoT tenant. The tenant's row is locked, so neither list can grow meanwhile.
async fn check_type_change(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    current: &str,
    new: TenantType,
) -> Result<(), ApiError> {
    if current == "operator" && new != TenantType::Operator {
        let operated: Vec<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenants WHERE operator_tenant_id = $1 ORDER BY tenant_id LIMIT 5",
        )
        .bind(tenant_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage_error)?;
        if !operated.is_empty() {
            return Err(ApiError::invalid_body_property(
                "tenantType",
                format_args!(
                    "cannot change from operator while it operates IoT tenants ({}); move them to another operator first",
                    operated.join(", ")
                ),
            ));
        }
    }
    if current == "iot" && new != TenantType::Iot {
        let provisioned: Vec<String> = sqlx::query_scalar(
            "SELECT application FROM provisioning WHERE tenant_id = $1 ORDER BY application LIMIT 5",
        )
        .bind(tenant_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(storage_error)?;
        if !provisioned.is_empty() {
            return Err(ApiError::invalid_body_property(
                "tenantType",
                format_args!(
                    "cannot change from iot while applications are provisioned to it ({}); remove them first",
                    provisioned.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// `GET /tenants/{tenantId}`.
/// A provider sees its own tenant and its IoT tenants.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
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

#[derive(Debug, Serialize)]
pub(super) struct TenantPage {
    tenants: Vec<TenantOut>,
    page: PageInfo,
}

/// `GET /tenants?type=&page=&size=`, ordered by tenant id.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TenantPage>, ApiError> {
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

    const FILTER: &str =
        "($1::text IS NULL OR tenant_type = $1) AND ($2::text IS NULL OR tenant_id = $2 OR operator_tenant_id = $2)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM tenants WHERE {FILTER}"))
        .bind(tenant_type)
        .bind(caller.owner())
        .fetch_one(&state.pool)
        .await
        .map_err(storage_error)?;
    let tenants: Vec<TenantOut> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE {FILTER} ORDER BY tenant_id LIMIT $3 OFFSET $4"))
            .bind(tenant_type)
            .bind(caller.owner())
            .bind(paging.limit())
            .bind(paging.offset())
            .fetch_all(&state.pool)
            .await
            .map_err(storage_error)?;
    Ok(Json(TenantPage { tenants, page: paging.info(total) }))
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
