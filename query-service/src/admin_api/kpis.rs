//! KPIs: `POST /kpis`, `GET`/`PUT`/`DELETE /kpis/{kpiId}` and `GET /kpis?application=&page=&size=`
//! (ordered by application, name), in the shape of [`super::owned`].
//!
//! A KPI says how an application's usages of one unit are presented as monthly values (the
//! `KPIName` of the aggregatedMonthly… endpoints): daily and monthly aggregation functions,
//! `preFill` (what a day without usages counts as) and a unit conversion factor. The name is
//! unique per application. `displayName` defaults to `name` and `applicationDisplayName` to
//! `application`, so the monthly answers always have something to show.
//! `unitConversionFactor` is an exact decimal > 0, answered as a string.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use uts_common::domain::AggregationFunction;
use uts_common::error::ApiError;
use uuid::Uuid;

use super::body::{self, Object};
use super::owned::{Owned, Returning};
use crate::kpi::KpiNames;
use crate::month::PreFill;
use crate::request::{serialize_datetime, spellings};

/// A KPI as answered.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(super) struct KpiOut {
    kpi_id: Uuid,
    #[serde(flatten)]
    #[sqlx(flatten)]
    names: KpiNames,
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

/// The validated body of `POST /kpis` and `PUT /kpis/{kpiId}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KpiSpec {
    names: KpiNames,
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
        names: KpiNames { name, display_name, application, application_display_name, unit, owner_tenant_id },
        aggregation_function_daily,
        aggregation_function_monthly,
        pre_fill,
        unit_conversion_factor,
    })
}

/// The KPIs resource.
pub(super) struct Kpis;

impl Owned for Kpis {
    type Spec = KpiSpec;
    type Out = KpiOut;
    const TABLE: &'static str = "kpis";
    const ID_COLUMN: &'static str = "kpi_id";
    const ID_PROPERTY: &'static str = "kpiId";
    const WHAT: &'static str = "KPI";
    const METRIC: &'static str = "kpi";
    const COLUMNS: &'static str = COLUMNS;
    const WRITTEN: &'static [&'static str] = &[
        "name",
        "display_name",
        "application",
        "application_display_name",
        "unit",
        "owner_tenant_id",
        "aggregation_function_daily",
        "aggregation_function_monthly",
        "pre_fill",
        "unit_conversion_factor",
    ];
    const UNIQUE: &'static str = "kpis_application_name_key";
    const KEY: (&'static str, &'static str) = ("name", "name");
    const OWNER_FOREIGN_KEY: &'static str = "kpis_owner_tenant_id_fkey";
    const FILTERS: &'static [(&'static str, &'static str)] = &[("application", "application")];
    const ORDER: &'static str = "application, name";

    fn parse(object: &Object) -> Result<KpiSpec, ApiError> {
        parse_kpi(object)
    }

    fn owner(spec: &KpiSpec) -> &str {
        &spec.names.owner_tenant_id
    }

    fn application(spec: &KpiSpec) -> &str {
        &spec.names.application
    }

    fn key(spec: &KpiSpec) -> &str {
        &spec.names.name
    }

    fn duplicate(spec: &KpiSpec, existing: &str) -> String {
        format!(
            "name {} is already the name of a KPI of application {}{existing}; KPI names are unique per application",
            spec.names.name, spec.names.application
        )
    }

    fn bind<'q>(query: Returning<'q, Self>, spec: &'q KpiSpec) -> Returning<'q, Self> {
        query
            .bind(&spec.names.name)
            .bind(&spec.names.display_name)
            .bind(&spec.names.application)
            .bind(&spec.names.application_display_name)
            .bind(&spec.names.unit)
            .bind(&spec.names.owner_tenant_id)
            .bind(spec.aggregation_function_daily.as_str())
            .bind(spec.aggregation_function_monthly.as_str())
            .bind(spec.pre_fill.as_str())
            .bind(spec.unit_conversion_factor)
    }

    fn id(out: &KpiOut) -> Uuid {
        out.kpi_id
    }
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
        assert_eq!(spec.names.display_name, "asset-count");
        assert_eq!(spec.names.application_display_name, "assetmonitor");
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
