//! `POST /kpis`, `GET`/`PUT`/`DELETE /kpis/{kpiId}` and `GET /kpis`.
//!
//! A KPI says how an application's usages of one unit are presented as monthly values (the
//! `KPIName` of the aggregatedMonthly… endpoints): daily and monthly aggregation functions,
//! `preFill` (what a day without usages counts as) and a unit conversion factor. The name is
//! unique per application. `displayName` defaults to `name` and `applicationDisplayName` to
//! `application`, so the monthly answers always have something to show. `PUT` replaces the whole
//! KPI and increments `version`. `unitConversionFactor` is an exact decimal > 0, answered as a
//! string.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uts_common::domain::AggregationFunction;
use uts_common::error::ApiError;
use uuid::Uuid;

use super::body::{self, Object};
use super::{
    check_application_free, check_owner, count_change, path_uuid, read_object, serialize_datetime, spellings,
    storage_error, violates, Caller, PageInfo, Params, BASE_PATH,
};
use crate::month::PreFill;
use crate::AppState;

/// A KPI as answered.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(super) struct KpiOut {
    kpi_id: Uuid,
    name: String,
    display_name: String,
    application: String,
    application_display_name: String,
    unit: String,
    owner_tenant_id: String,
    aggregation_function_daily: String,
    aggregation_function_monthly: String,
    pre_fill: String,
    /// The stored `numeric`'s exact text.
    unit_conversion_factor: String,
    version: i32,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_datetime")]
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "kpi_id, name, display_name, application, application_display_name, unit, owner_tenant_id,
    aggregation_function_daily, aggregation_function_monthly, pre_fill,
    unit_conversion_factor::text AS unit_conversion_factor, version, created_at, updated_at";

/// The unique constraint on (application, name) of the `kpis` table.
const UNIQUE_APPLICATION_NAME: &str = "kpis_application_name_key";
const OWNER_FOREIGN_KEY: &str = "kpis_owner_tenant_id_fkey";

/// The validated body of `POST /kpis` and `PUT /kpis/{kpiId}`.
#[derive(Debug, Clone, PartialEq)]
struct KpiSpec {
    name: String,
    display_name: String,
    application: String,
    application_display_name: String,
    unit: String,
    owner_tenant_id: String,
    aggregation_function_daily: AggregationFunction,
    aggregation_function_monthly: AggregationFunction,
    pre_fill: PreFill,
    unit_conversion_factor: Decimal,
}

const PROPERTIES: &[&str] = &[
    "kpiId",
    "name",
    "displayName",
    "application",
    "applicationDisplayName",
    "unit",
    "ownerTenantId",
    "aggregationFunctionDaily",
    "aggregationFunctionMonthly",
    "preFill",
    "unitConversionFactor",
];
const READ_ONLY: &[&str] = &["version", "createdAt", "updatedAt"];

/// Checks a body on its own (whether the owner exists and the name is taken needs the database
/// and comes later).
fn parse_kpi(object: &Object) -> Result<KpiSpec, ApiError> {
    body::check_properties(object, PROPERTIES, READ_ONLY)?;
    let functions = spellings(&AggregationFunction::ALL, AggregationFunction::as_str);
    let pre_fills = spellings(&PreFill::ALL, PreFill::as_str);
    let name = body::required_name(object, "name")?;
    let display_name = body::optional_name(object, "displayName")?.unwrap_or_else(|| name.clone());
    let application = body::required_name(object, "application")?;
    let application_display_name =
        body::optional_name(object, "applicationDisplayName")?.unwrap_or_else(|| application.clone());
    let unit = body::required_name(object, "unit")?;
    let owner_tenant_id = body::required_tenant_id(object, "ownerTenantId")?;
    let aggregation_function_daily =
        body::optional_choice(object, "aggregationFunctionDaily", &functions)?.unwrap_or_default();
    let aggregation_function_monthly =
        body::optional_choice(object, "aggregationFunctionMonthly", &functions)?.unwrap_or_default();
    let pre_fill = body::optional_choice(object, "preFill", &pre_fills)?.unwrap_or_default();
    let unit_conversion_factor = body::optional_decimal(object, "unitConversionFactor")?.unwrap_or(Decimal::ONE);
    if unit_conversion_factor <= Decimal::ZERO {
        return Err(ApiError::invalid_body_property("unitConversionFactor", "must be greater than 0"));
    }
    Ok(KpiSpec {
        name,
        display_name,
        application,
        application_display_name,
        unit,
        owner_tenant_id,
        aggregation_function_daily,
        aggregation_function_monthly,
        pre_fill,
        unit_conversion_factor,
    })
}

/// `POST /kpis`: 201 with the KPI and its `Location`.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let object = read_object(&headers, request_body).await?;
    body::check_absent(&object, "kpiId")?;
    let spec = parse_kpi(&object)?;
    caller.check_owns("ownerTenantId", &spec.owner_tenant_id)?;
    check_application_free(&state.pool, &caller, &spec.application).await?;
    check_owner(&state.pool, "ownerTenantId", &spec.owner_tenant_id).await?;
    let inserted = bind(
        sqlx::query_as::<_, KpiOut>(&format!(
            "INSERT INTO kpis (name, display_name, application, application_display_name, unit, owner_tenant_id,
                               aggregation_function_daily, aggregation_function_monthly, pre_fill, unit_conversion_factor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {COLUMNS}"
        )),
        &spec,
    )
    .fetch_one(&state.pool)
    .await;
    let kpi = match inserted {
        Ok(kpi) => kpi,
        Err(err) => return Err(write_error(&state.pool, err, &spec, &caller).await),
    };
    count_change("kpi", "create");
    let mut response = (StatusCode::CREATED, Json(&kpi)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("{BASE_PATH}/kpis/{}", kpi.kpi_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Binds a spec to `$1`–`$10` in the column order of the INSERT and UPDATE statements.
fn bind<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, KpiOut, sqlx::postgres::PgArguments>,
    spec: &'q KpiSpec,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, KpiOut, sqlx::postgres::PgArguments> {
    query
        .bind(&spec.name)
        .bind(&spec.display_name)
        .bind(&spec.application)
        .bind(&spec.application_display_name)
        .bind(&spec.unit)
        .bind(&spec.owner_tenant_id)
        .bind(spec.aggregation_function_daily.as_str())
        .bind(spec.aggregation_function_monthly.as_str())
        .bind(spec.pre_fill.as_str())
        .bind(spec.unit_conversion_factor)
}

/// Maps a failed INSERT or UPDATE: a name already used in the application is 409 `conflict`
/// naming `name`, an owner that vanished 400 naming `ownerTenantId`.
async fn write_error(pool: &PgPool, err: sqlx::Error, spec: &KpiSpec, caller: &Caller) -> ApiError {
    if violates(&err, UNIQUE_APPLICATION_NAME) {
        let existing: Option<Uuid> = sqlx::query_scalar(
            "SELECT kpi_id FROM kpis WHERE application = $1 AND name = $2 AND ($3::text IS NULL OR owner_tenant_id = $3)",
        )
        .bind(&spec.application)
        .bind(&spec.name)
        .bind(caller.owner())
            .fetch_optional(pool)
            .await
            .unwrap_or(None);
        let id = existing.map_or_else(String::new, |id| format!(" ({id})"));
        return ApiError::conflict(
            "name",
            format!(
                "name {} is already the name of a KPI of application {}{id}; KPI names are unique per application",
                spec.name, spec.application
            ),
        );
    }
    if violates(&err, OWNER_FOREIGN_KEY) {
        return ApiError::invalid_body_property(
            "ownerTenantId",
            format_args!("names no registered tenant ({})", spec.owner_tenant_id),
        );
    }
    storage_error(err)
}

/// `GET /kpis/{kpiId}`.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<KpiOut>, ApiError> {
    let kpi_id = path_uuid(path, "KPI")?;
    let kpi: Option<KpiOut> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM kpis WHERE kpi_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2)"
    ))
    .bind(kpi_id)
    .bind(caller.owner())
    .fetch_optional(&state.pool)
    .await
    .map_err(storage_error)?;
    kpi.map(Json).ok_or_else(|| unknown_kpi(kpi_id))
}

/// `PUT /kpis/{kpiId}`: replaces the KPI, `version` + 1.
pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Json<KpiOut>, ApiError> {
    let kpi_id = path_uuid(path, "KPI")?;
    let object = read_object(&headers, request_body).await?;
    body::check_matches_path(&object, "kpiId", &kpi_id.to_string())?;
    let spec = parse_kpi(&object)?;
    if !kpi_exists(&state.pool, kpi_id, &caller).await? {
        return Err(unknown_kpi(kpi_id));
    }
    caller.check_owns("ownerTenantId", &spec.owner_tenant_id)?;
    check_application_free(&state.pool, &caller, &spec.application).await?;
    check_owner(&state.pool, "ownerTenantId", &spec.owner_tenant_id).await?;
    let updated = bind(
        sqlx::query_as::<_, KpiOut>(&format!(
            "UPDATE kpis SET name = $1, display_name = $2, application = $3, application_display_name = $4,
                    unit = $5, owner_tenant_id = $6, aggregation_function_daily = $7,
                    aggregation_function_monthly = $8, pre_fill = $9, unit_conversion_factor = $10,
                    version = version + 1, updated_at = now()
             WHERE kpi_id = $11 AND ($12::text IS NULL OR owner_tenant_id = $12)
             RETURNING {COLUMNS}"
        )),
        &spec,
    )
    .bind(kpi_id)
    .bind(caller.owner())
    .fetch_optional(&state.pool)
    .await;
    match updated {
        Ok(Some(kpi)) => {
            count_change("kpi", "update");
            Ok(Json(kpi))
        }
        // Deleted between the check and the update.
        Ok(None) => Err(unknown_kpi(kpi_id)),
        Err(err) => Err(write_error(&state.pool, err, &spec, &caller).await),
    }
}

/// `DELETE /kpis/{kpiId}`: 204.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let kpi_id = path_uuid(path, "KPI")?;
    let deleted = sqlx::query("DELETE FROM kpis WHERE kpi_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2)")
        .bind(kpi_id)
        .bind(caller.owner())
        .execute(&state.pool)
        .await
        .map_err(storage_error)?
        .rows_affected();
    if deleted == 0 {
        return Err(unknown_kpi(kpi_id));
    }
    count_change("kpi", "delete");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub(super) struct KpiPage {
    kpis: Vec<KpiOut>,
    page: PageInfo,
}

/// `GET /kpis?application=&page=&size=`, ordered by (application, name).
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<KpiPage>, ApiError> {
    let params = Params::parse(query, &["application", "page", "size"])?;
    let paging = params.paging()?;
    let application = params.get("application");
    // A provider lists its own KPIs only.
    const FILTER: &str = "($1::text IS NULL OR application = $1) AND ($2::text IS NULL OR owner_tenant_id = $2)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM kpis WHERE {FILTER}"))
        .bind(application)
        .bind(caller.owner())
        .fetch_one(&state.pool)
        .await
        .map_err(storage_error)?;
    let kpis: Vec<KpiOut> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM kpis WHERE {FILTER} ORDER BY application, name LIMIT $3 OFFSET $4"
    ))
    .bind(application)
    .bind(caller.owner())
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.pool)
    .await
    .map_err(storage_error)?;
    Ok(Json(KpiPage { kpis, page: paging.info(total) }))
}

/// Whether the resource exists and the caller may see it.
async fn kpi_exists(pool: &PgPool, kpi_id: Uuid, caller: &Caller) -> Result<bool, ApiError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM kpis WHERE kpi_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2))",
    )
    .bind(kpi_id)
    .bind(caller.owner())
    .fetch_one(pool)
    .await
    .map_err(storage_error)
}

fn unknown_kpi(kpi_id: Uuid) -> ApiError {
    ApiError::no_match(format!("no KPI with id {kpi_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(body: Value) -> Result<KpiSpec, String> {
        let object = body::parse_object(body.to_string().as_bytes()).unwrap();
        parse_kpi(&object).map_err(|err| err.message)
    }

    fn base() -> Value {
        json!({"name": "asset-count", "application": "assetmonitor", "unit": "asset", "ownerTenantId": "acme"})
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let spec = parse(base()).unwrap();
        assert_eq!(spec.display_name, "asset-count");
        assert_eq!(spec.application_display_name, "assetmonitor");
        assert_eq!(spec.aggregation_function_daily, AggregationFunction::Sum);
        assert_eq!(spec.aggregation_function_monthly, AggregationFunction::Sum);
        assert_eq!(spec.pre_fill, PreFill::Zero);
        assert_eq!(spec.unit_conversion_factor.to_string(), "1");
    }

    #[test]
    fn bad_bodies_name_the_property() {
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            body
        };
        let cases = [
            (json!({"application": "a", "unit": "u", "ownerTenantId": "t"}), "name is required"),
            (with("displayName", json!("")), "displayName must not be empty"),
            (with("application", json!(null)), "application is required"),
            (with("aggregationFunctionDaily", json!("MEDIAN")), "aggregationFunctionDaily must be one of"),
            (with("aggregationFunctionMonthly", json!(1)), "aggregationFunctionMonthly must be one of"),
            (with("preFill", json!("zero")), "preFill must be one of ZERO, NONE, LAST"),
            (with("unitConversionFactor", json!(0)), "unitConversionFactor must be greater than 0"),
            (with("unitConversionFactor", json!("-1.5")), "unitConversionFactor must be greater than 0"),
            (with("unitConversionFactor", json!("x")), "unitConversionFactor must be a decimal number"),
            (with("KPIName", json!("x")), "KPIName is not a property"),
        ];
        for (body, expected) in cases {
            let message = parse(body.clone()).unwrap_err();
            assert!(message.starts_with(expected), "{body}: {message}");
        }
    }

    #[test]
    fn pre_fill_parses_its_api_spelling() {
        assert_eq!("LAST".parse::<PreFill>(), Ok(PreFill::Last));
        assert!("last".parse::<PreFill>().is_err());
    }
}
