//! Rules: `POST /rules`, `GET`/`PUT`/`DELETE /rules/{ruleId}` and
//! `GET /rules?application=&unit=&ownerTenantId=&page=&size=` (ordered by application, unit), in
//! the shape of [`super::owned`].
//!
//! A rule says which usages of one (application, unit) the verifier accepts, how they are
//! aggregated and whether they are billed; at most one rule exists per (application, unit).
//! `minValue` and `maxValue` are exact decimals: accepted as JSON numbers (their exact text) or
//! strings, stored as `numeric`, answered as strings exactly as stored. After a `DELETE`, usages
//! of its (application, unit) are no longer verified against a rule from the verifier's next
//! refresh on (NOVERIFICATION).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uts_common::domain::{AggregationFunction, UserType};
use uts_common::error::ApiError;
use uuid::Uuid;

use super::body::{self, Object};
use super::owned::{Owned, Returning};
use crate::request::{serialize_datetime, spellings};

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

/// The validated body of `POST /rules` and `PUT /rules/{ruleId}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RuleSpec {
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

/// The rules resource.
pub(super) struct Rules;

impl Owned for Rules {
    type Spec = RuleSpec;
    type Out = RuleOut;
    const TABLE: &'static str = "rules";
    const ID_COLUMN: &'static str = "rule_id";
    const ID_PROPERTY: &'static str = "ruleId";
    const WHAT: &'static str = "rule";
    const METRIC: &'static str = "rule";
    const COLUMNS: &'static str = COLUMNS;
    const WRITTEN: &'static [&'static str] = &[
        "application",
        "unit",
        "owner_tenant_id",
        "active",
        "aggregation_function",
        "billing_enabled",
        "min_value",
        "max_value",
        "integers_only",
        "allowed_user_types",
        "max_age_days",
        "max_future_minutes",
    ];
    const UNIQUE: &'static str = "rules_application_unit_key";
    const KEY: (&'static str, &'static str) = ("unit", "unit");
    const OWNER_FOREIGN_KEY: &'static str = "rules_owner_tenant_id_fkey";
    const FILTERS: &'static [(&'static str, &'static str)] =
        &[("application", "application"), ("unit", "unit"), ("ownerTenantId", "owner_tenant_id")];
    const ORDER: &'static str = "application, unit";

    fn parse(object: &Object) -> Result<RuleSpec, ApiError> {
        parse_rule(object)
    }

    fn owner(spec: &RuleSpec) -> &str {
        &spec.owner_tenant_id
    }

    fn application(spec: &RuleSpec) -> &str {
        &spec.application
    }

    fn key(spec: &RuleSpec) -> &str {
        &spec.unit
    }

    fn duplicate(spec: &RuleSpec, existing: &str) -> String {
        format!(
            "unit {} of application {} already has a rule{existing}; at most one rule exists per (application, unit)",
            spec.unit, spec.application
        )
    }

    fn bind<'q>(query: Returning<'q, Self>, spec: &'q RuleSpec) -> Returning<'q, Self> {
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

    fn id(out: &RuleOut) -> Uuid {
        out.rule_id
    }
}

#[cfg(test)]
mod tests;
