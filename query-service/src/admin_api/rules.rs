//! `POST /rules`, `GET`/`PUT`/`DELETE /rules/{ruleId}` and `GET /rules`.
//!
//! A rule says which usages of one (application, unit) the verifier accepts, how they are
//! aggregated and whether they are billed; at most one rule exists per (application, unit).
//! `PUT` replaces the whole rule (absent optional properties return to their defaults) and
//! increments `version`. `minValue` and `maxValue` are exact decimals: accepted as JSON numbers
//! (their exact text) or strings, stored as `numeric`, answered as strings exactly as stored.

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
use uts_common::domain::{AggregationFunction, UserType};
use uts_common::error::ApiError;
use uuid::Uuid;

use super::body::{self, Object};
use super::{
    check_application_free, check_owner, count_change, path_uuid, read_object, serialize_datetime, spellings,
    storage_error, violates, Caller, PageInfo, Params, BASE_PATH,
};
use crate::AppState;

/// A rule as answered.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(super) struct RuleOut {
    rule_id: Uuid,
    application: String,
    unit: String,
    owner_tenant_id: String,
    active: bool,
    aggregation_function: String,
    billing_enabled: bool,
    /// The stored `numeric`'s exact text.
    min_value: Option<String>,
    max_value: Option<String>,
    integers_only: bool,
    allowed_user_types: Option<Vec<String>>,
    max_age_days: Option<i32>,
    max_future_minutes: Option<i32>,
    version: i32,
    #[serde(serialize_with = "serialize_datetime")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_datetime")]
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "rule_id, application, unit, owner_tenant_id, active, aggregation_function, billing_enabled,
    min_value::text AS min_value, max_value::text AS max_value, integers_only, allowed_user_types,
    max_age_days, max_future_minutes, version, created_at, updated_at";

/// The unique constraint on (application, unit) of the `rules` table.
const UNIQUE_APPLICATION_UNIT: &str = "rules_application_unit_key";
const OWNER_FOREIGN_KEY: &str = "rules_owner_tenant_id_fkey";

/// The validated body of `POST /rules` and `PUT /rules/{ruleId}`.
#[derive(Debug, Clone, PartialEq)]
struct RuleSpec {
    application: String,
    unit: String,
    owner_tenant_id: String,
    active: bool,
    aggregation_function: AggregationFunction,
    billing_enabled: bool,
    min_value: Option<Decimal>,
    max_value: Option<Decimal>,
    integers_only: bool,
    /// `None`: every user type.
    allowed_user_types: Option<Vec<UserType>>,
    max_age_days: Option<i32>,
    max_future_minutes: Option<i32>,
}

const PROPERTIES: &[&str] = &[
    "ruleId",
    "application",
    "unit",
    "ownerTenantId",
    "active",
    "aggregationFunction",
    "billingEnabled",
    "minValue",
    "maxValue",
    "integersOnly",
    "allowedUserTypes",
    "maxAgeDays",
    "maxFutureMinutes",
];
const READ_ONLY: &[&str] = &["version", "createdAt", "updatedAt"];

/// Checks a body on its own (whether the owner exists and the rule is a duplicate needs the
/// database and comes later).
fn parse_rule(object: &Object) -> Result<RuleSpec, ApiError> {
    body::check_properties(object, PROPERTIES, READ_ONLY)?;
    let functions = spellings(&AggregationFunction::ALL, AggregationFunction::as_str);
    let user_types = spellings(&UserType::ALL, UserType::as_str);
    let spec = RuleSpec {
        application: body::required_name(object, "application")?,
        unit: body::required_name(object, "unit")?,
        owner_tenant_id: body::required_tenant_id(object, "ownerTenantId")?,
        active: body::optional_bool(object, "active", true)?,
        aggregation_function: body::optional_choice(object, "aggregationFunction", &functions)?.unwrap_or_default(),
        billing_enabled: body::optional_bool(object, "billingEnabled", false)?,
        min_value: body::optional_decimal(object, "minValue")?,
        max_value: body::optional_decimal(object, "maxValue")?,
        integers_only: body::optional_bool(object, "integersOnly", false)?,
        allowed_user_types: body::optional_choice_list(object, "allowedUserTypes", &user_types)?,
        max_age_days: body::optional_integer(object, "maxAgeDays", 1, i32::MAX)?,
        max_future_minutes: body::optional_integer(object, "maxFutureMinutes", 0, i32::MAX)?,
    };
    if let (Some(min), Some(max)) = (spec.min_value, spec.max_value) {
        if min > max {
            return Err(ApiError::invalid_body_property(
                "maxValue",
                format_args!("must not be less than minValue ({min})"),
            ));
        }
    }
    Ok(spec)
}

/// `POST /rules`: 201 with the rule and its `Location`.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, ApiError> {
    let object = read_object(&headers, request_body).await?;
    body::check_absent(&object, "ruleId")?;
    let spec = parse_rule(&object)?;
    caller.check_owns("ownerTenantId", &spec.owner_tenant_id)?;
    check_application_free(&state.pool, &caller, &spec.application).await?;
    check_owner(&state.pool, "ownerTenantId", &spec.owner_tenant_id).await?;
    let inserted = bind(
        sqlx::query_as::<_, RuleOut>(&format!(
            "INSERT INTO rules (application, unit, owner_tenant_id, active, aggregation_function, billing_enabled,
                                min_value, max_value, integers_only, allowed_user_types, max_age_days, max_future_minutes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING {COLUMNS}"
        )),
        &spec,
    )
    .fetch_one(&state.pool)
    .await;
    let rule = match inserted {
        Ok(rule) => rule,
        Err(err) => return Err(write_error(&state.pool, err, &spec, &caller).await),
    };
    count_change("rule", "create");
    let mut response = (StatusCode::CREATED, Json(&rule)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("{BASE_PATH}/rules/{}", rule.rule_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Binds a spec to `$1`–`$12` in the column order of the INSERT and UPDATE statements.
fn bind<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, RuleOut, sqlx::postgres::PgArguments>,
    spec: &'q RuleSpec,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, RuleOut, sqlx::postgres::PgArguments> {
    query
        .bind(&spec.application)
        .bind(&spec.unit)
        .bind(&spec.owner_tenant_id)
        .bind(spec.active)
        .bind(spec.aggregation_function.as_str())
        .bind(spec.billing_enabled)
        .bind(spec.min_value)
        .bind(spec.max_value)
        .bind(spec.integers_only)
        .bind(spec.allowed_user_types.as_ref().map(|types| types.iter().map(|t| t.as_str()).collect::<Vec<_>>()))
        .bind(spec.max_age_days)
        .bind(spec.max_future_minutes)
}

/// Maps a failed INSERT or UPDATE: a duplicate (application, unit) is 409 `conflict` naming
/// `unit`, an owner that vanished 400 naming `ownerTenantId`.
async fn write_error(pool: &PgPool, err: sqlx::Error, spec: &RuleSpec, caller: &Caller) -> ApiError {
    if violates(&err, UNIQUE_APPLICATION_UNIT) {
        let existing: Option<Uuid> = sqlx::query_scalar(
            "SELECT rule_id FROM rules WHERE application = $1 AND unit = $2
                   AND ($3::text IS NULL OR owner_tenant_id = $3)",
        )
        .bind(&spec.application)
        .bind(&spec.unit)
        .bind(caller.owner())
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
        let id = existing.map_or_else(String::new, |id| format!(" ({id})"));
        return ApiError::conflict(
            "unit",
            format!(
                "unit {} of application {} already has a rule{id}; at most one rule exists per (application, unit)",
                spec.unit, spec.application
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

/// `GET /rules/{ruleId}`.
pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RuleOut>, ApiError> {
    let rule_id = path_uuid(path, "rule")?;
    let rule: Option<RuleOut> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules WHERE rule_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2)"
    ))
    .bind(rule_id)
    .bind(caller.owner())
    .fetch_optional(&state.pool)
    .await
    .map_err(storage_error)?;
    rule.map(Json).ok_or_else(|| unknown_rule(rule_id))
}

/// `PUT /rules/{ruleId}`: replaces the rule, `version` + 1.
pub(super) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Json<RuleOut>, ApiError> {
    let rule_id = path_uuid(path, "rule")?;
    let object = read_object(&headers, request_body).await?;
    body::check_matches_path(&object, "ruleId", &rule_id.to_string())?;
    let spec = parse_rule(&object)?;
    if !rule_exists(&state.pool, rule_id, &caller).await? {
        return Err(unknown_rule(rule_id));
    }
    caller.check_owns("ownerTenantId", &spec.owner_tenant_id)?;
    check_application_free(&state.pool, &caller, &spec.application).await?;
    check_owner(&state.pool, "ownerTenantId", &spec.owner_tenant_id).await?;
    let updated = bind(
        sqlx::query_as::<_, RuleOut>(&format!(
            "UPDATE rules SET application = $1, unit = $2, owner_tenant_id = $3, active = $4,
                    aggregation_function = $5, billing_enabled = $6, min_value = $7, max_value = $8,
                    integers_only = $9, allowed_user_types = $10, max_age_days = $11, max_future_minutes = $12,
                    version = version + 1, updated_at = now()
             WHERE rule_id = $13 AND ($14::text IS NULL OR owner_tenant_id = $14)
             RETURNING {COLUMNS}"
        )),
        &spec,
    )
    .bind(rule_id)
    .bind(caller.owner())
    .fetch_optional(&state.pool)
    .await;
    match updated {
        Ok(Some(rule)) => {
            count_change("rule", "update");
            Ok(Json(rule))
        }
        // Deleted between the check and the update.
        Ok(None) => Err(unknown_rule(rule_id)),
        Err(err) => Err(write_error(&state.pool, err, &spec, &caller).await),
    }
}

/// `DELETE /rules/{ruleId}`: 204. Usages of its (application, unit) are no longer verified
/// against a rule from the verifier's next refresh on (NOVERIFICATION).
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let rule_id = path_uuid(path, "rule")?;
    let deleted = sqlx::query("DELETE FROM rules WHERE rule_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2)")
        .bind(rule_id)
        .bind(caller.owner())
        .execute(&state.pool)
        .await
        .map_err(storage_error)?
        .rows_affected();
    if deleted == 0 {
        return Err(unknown_rule(rule_id));
    }
    count_change("rule", "delete");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub(super) struct RulePage {
    rules: Vec<RuleOut>,
    page: PageInfo,
}

/// `GET /rules?application=&unit=&ownerTenantId=&page=&size=`, ordered by (application, unit).
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<RulePage>, ApiError> {
    let params = Params::parse(query, &["application", "unit", "ownerTenantId", "page", "size"])?;
    let paging = params.paging()?;
    let (application, unit, owner) = (params.get("application"), params.get("unit"), params.get("ownerTenantId"));
    // A provider lists its own rules only ($4).
    const FILTER: &str = "($1::text IS NULL OR application = $1) AND ($2::text IS NULL OR unit = $2)
                          AND ($3::text IS NULL OR owner_tenant_id = $3) AND ($4::text IS NULL OR owner_tenant_id = $4)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM rules WHERE {FILTER}"))
        .bind(application)
        .bind(unit)
        .bind(owner)
        .bind(caller.owner())
        .fetch_one(&state.pool)
        .await
        .map_err(storage_error)?;
    let rules: Vec<RuleOut> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules WHERE {FILTER} ORDER BY application, unit LIMIT $5 OFFSET $6"
    ))
    .bind(application)
    .bind(unit)
    .bind(owner)
    .bind(caller.owner())
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.pool)
    .await
    .map_err(storage_error)?;
    Ok(Json(RulePage { rules, page: paging.info(total) }))
}

/// Whether the resource exists and the caller may see it.
async fn rule_exists(pool: &PgPool, rule_id: Uuid, caller: &Caller) -> Result<bool, ApiError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rules WHERE rule_id = $1 AND ($2::text IS NULL OR owner_tenant_id = $2))",
    )
    .bind(rule_id)
    .bind(caller.owner())
    .fetch_one(pool)
    .await
    .map_err(storage_error)
}

fn unknown_rule(rule_id: Uuid) -> ApiError {
    ApiError::no_match(format!("no rule with id {rule_id}"))
}

#[cfg(test)]
mod tests;
