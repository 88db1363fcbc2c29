//! `GET /aggregatedMonthlyConsumerUsage` (the consumer's own value) and
//! `GET /aggregatedMonthlyProviderUsage` (a provider's values per consumer), scope
//! `uts.aggregates.read`, computed from the daily aggregates with the KPI's functions; and
//! `GET /kpis`, the KPIs a caller may ask for (an extension, for the dashboard).
//!
//! A month's value: each day's value with the KPI's daily function (from the bucket's exact
//! accumulators, whatever function the rule used), days without usages filled per `preFill`
//! (ZERO: 0, NONE: left out, LAST: the previous day's value), folded with the monthly function,
//! then multiplied by the unit conversion factor. The month runs up to `aggregationUntilDate`:
//! its last day, or today (UTC) for the current month. "Prorated" is taken to mean exactly that:
//! the month so far. The KPI is found by (application, KPIName) and must be registered by the
//! provider: a consumer names the provider, a provider is the caller; anything else is 404.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use uts_common::auth::Scope;
use uts_common::domain::AggregationFunction;
use uts_common::error::ApiError;

use crate::kpi::{KpiNames, NAME_COLUMNS};
use crate::month::{convert, daily_values, monthly_value, Day, OutOfRange, PreFill};
use crate::request::{authorize, storage_error, PageInfo, Params};
use crate::AppState;

mod kpis;

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/aggregatedMonthlyConsumerUsage", get(consumer_usage))
        .route("/aggregatedMonthlyProviderUsage", get(provider_usage))
        .route("/kpis", get(kpis::list_kpis))
}

/// `month`: 1–12, 01–12 or an English month name (any case).
pub fn parse_month(text: &str) -> Result<u32, ApiError> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = MONTHS.iter().position(|m| *m == lower) {
        return Ok(index as u32 + 1);
    }
    text.parse::<u32>()
        .ok()
        .filter(|m| (1..=12).contains(m) && text.len() <= 2)
        .ok_or_else(|| ApiError::invalid_parameter("month", "must be 1 to 12, 01 to 12 or an English month name"))
}

fn parse_year(text: &str) -> Result<i32, ApiError> {
    text.parse::<i32>()
        .ok()
        .filter(|y| (1970..=9999).contains(y) && text.len() == 4)
        .ok_or_else(|| ApiError::invalid_parameter("year", "must be a four-digit year"))
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    params.get(name).ok_or_else(|| ApiError::missing_parameter(name))
}

/// `dailyValues` (with `includeDailyValues=true`): each day's value as the chart of the
/// dashboard shows it, converted like the month's value; null for a day left out by preFill NONE.
fn daily_json(
    kpi: &Kpi,
    days: &BTreeMap<NaiveDate, Day>,
    from: NaiveDate,
    until: NaiveDate,
) -> Result<Vec<DailyValue>, OutOfRange> {
    daily_values(days, from, until, kpi.daily, kpi.pre_fill)
        .into_iter()
        .map(|(day, value)| {
            let value = value.map(|v| convert(v, kpi.factor)).transpose()?;
            Ok(DailyValue { date: day.to_string(), value: number(value) })
        })
        .collect()
}

/// 422 for a consumer's month whose value leaves the exact range.
fn out_of_range(consumer: &str, kpi: &Kpi, year: i32, month: u32) -> ApiError {
    let mut err = ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "valueOutOfRange",
        format!(
            "the {year}-{month:02} value of KPI {} for consumer {consumer} is beyond the exact decimal range \
             (about 7.9e28); the daily aggregates are in range and can be read with includeDailyValues \
             or per day",
            kpi.names.name
        ),
    );
    err.parameters.push(uts_common::error::MessageParameter { name: "consumer".into(), value: consumer.to_owned() });
    err
}

#[derive(Serialize)]
struct DailyValue {
    date: String,
    value: Value,
}

/// `includeDailyValues`: `true` or `false` (default).
fn include_daily(params: &Params) -> Result<bool, ApiError> {
    match params.get("includeDailyValues") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid_parameter("includeDailyValues", "must be true or false")),
    }
}

struct Kpi {
    names: KpiNames,
    daily: AggregationFunction,
    monthly: AggregationFunction,
    pre_fill: PreFill,
    pre_fill_text: String,
    factor: Decimal,
}

/// A KPI as stored.
#[derive(sqlx::FromRow)]
struct KpiRow {
    #[sqlx(flatten)]
    names: KpiNames,
    aggregation_function_daily: String,
    aggregation_function_monthly: String,
    pre_fill: String,
    unit_conversion_factor: Decimal,
}

async fn load_kpi(state: &AppState, application: &str, name: &str, provider: &str) -> Result<Kpi, ApiError> {
    let row: Option<KpiRow> = sqlx::query_as(&format!(
        "SELECT {NAME_COLUMNS}, aggregation_function_daily, aggregation_function_monthly, pre_fill, unit_conversion_factor
         FROM kpis WHERE application = $1 AND name = $2 AND owner_tenant_id = $3"
    ))
    .bind(application)
    .bind(name)
    .bind(provider)
    .fetch_optional(&state.pool)
    .await
    .map_err(storage_error)?;
    let row = row.ok_or_else(|| no_such_kpi(name, application, provider))?;
    Ok(Kpi {
        names: row.names,
        daily: AggregationFunction::from_str(&row.aggregation_function_daily).unwrap_or_default(),
        monthly: AggregationFunction::from_str(&row.aggregation_function_monthly).unwrap_or_default(),
        pre_fill: row.pre_fill.parse().unwrap_or_default(),
        pre_fill_text: row.pre_fill,
        factor: row.unit_conversion_factor,
    })
}

/// The consumers' days of a KPI's series in the month.
fn no_such_kpi(name: &str, application: &str, provider: &str) -> ApiError {
    ApiError::no_match(format!("no KPI {name} of application {application} for provider {provider}"))
}

/// Whether `consumer` ever had a usage under the KPI's provider, application and unit.
async fn has_usages_under(state: &AppState, kpi: &Kpi, consumer: &str) -> Result<bool, ApiError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM daily_aggregates
                        WHERE provider_tenant_id = $1 AND consumer_tenant_id = $2 AND application = $3 AND unit = $4)",
    )
    .bind(&kpi.names.owner_tenant_id)
    .bind(consumer)
    .bind(&kpi.names.application)
    .bind(&kpi.names.unit)
    .fetch_one(&state.pool)
    .await
    .map_err(storage_error)
}

/// One consumer's day of a series, as stored.
#[derive(sqlx::FromRow)]
struct DayRow {
    consumer_tenant_id: String,
    day: NaiveDate,
    usages_count: i64,
    sum_value: Decimal,
    min_value: Decimal,
    max_value: Decimal,
    last_value: Decimal,
}

async fn load_days(
    state: &AppState,
    kpi: &Kpi,
    consumer: Option<&str>,
    from: NaiveDate,
    until: NaiveDate,
) -> Result<BTreeMap<String, BTreeMap<NaiveDate, Day>>, ApiError> {
    let rows: Vec<DayRow> = sqlx::query_as(
        "SELECT consumer_tenant_id, day, usages_count, sum_value, min_value, max_value, last_value
         FROM daily_aggregates
         WHERE provider_tenant_id = $1 AND application = $2 AND unit = $3 AND day BETWEEN $4 AND $5
           AND ($6::text IS NULL OR consumer_tenant_id = $6)",
    )
    .bind(&kpi.names.owner_tenant_id)
    .bind(&kpi.names.application)
    .bind(&kpi.names.unit)
    .bind(from)
    .bind(until)
    .bind(consumer)
    .fetch_all(&state.pool)
    .await
    .map_err(storage_error)?;
    let mut out: BTreeMap<String, BTreeMap<NaiveDate, Day>> = BTreeMap::new();
    for row in rows {
        let day = Day {
            count: row.usages_count,
            sum: row.sum_value,
            min: row.min_value,
            max: row.max_value,
            last: row.last_value,
        };
        out.entry(row.consumer_tenant_id).or_default().insert(row.day, day);
    }
    Ok(out)
}

/// (first day, aggregationUntilDate) of the month; 404-free: a future month is an empty range.
fn month_range(year: i32, month: u32) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let from = NaiveDate::from_ymd_opt(year, month, 1)
        .ok_or_else(|| ApiError::invalid_parameter("month", "is not a month"))?;
    let next =
        if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1) } else { NaiveDate::from_ymd_opt(year, month + 1, 1) };
    let last = next.expect("valid") - Duration::days(1);
    Ok((from, last.min(Utc::now().date_naive())))
}

fn number(value: Option<Decimal>) -> Value {
    value.and_then(|v| serde_json::Number::from_str(&v.to_string()).ok()).map_or(Value::Null, Value::Number)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Functions<'a> {
    aggregation_function_daily: &'static str,
    aggregation_function_monthly: &'static str,
    pre_fill: &'a str,
}

/// What both monthly answers say about the KPI and the month.
#[derive(Serialize)]
struct KpiMonth<'a> {
    application: &'a str,
    #[serde(rename = "applicationDisplayName")]
    application_display_name: &'a str,
    #[serde(rename = "KPIName")]
    kpi_name: &'a str,
    #[serde(rename = "KPIDisplayName")]
    kpi_display_name: &'a str,
    #[serde(rename = "aggregationUntilDate")]
    until: String,
    year: String,
    month: &'static str,
    /// Sic: the original's spelling.
    #[serde(rename = "aggragationFunction")]
    functions: Functions<'a>,
}

impl<'a> KpiMonth<'a> {
    /// `until` is the month's last day so far; a future month answers the day before it began.
    fn new(kpi: &'a Kpi, year: i32, month: u32, from: NaiveDate, until: NaiveDate) -> Self {
        Self {
            application: &kpi.names.application,
            application_display_name: &kpi.names.application_display_name,
            kpi_name: &kpi.names.name,
            kpi_display_name: &kpi.names.display_name,
            until: until.max(from - Duration::days(1)).to_string(),
            year: year.to_string(),
            month: MONTHS[month as usize - 1],
            functions: Functions {
                aggregation_function_daily: kpi.daily.as_str(),
                aggregation_function_monthly: kpi.monthly.as_str(),
                pre_fill: &kpi.pre_fill_text,
            },
        }
    }
}

/// `GET /aggregatedMonthlyConsumerUsage`. Keys come out sorted (serde_json's map), as before.
#[derive(Serialize)]
struct ConsumerUsage<'a> {
    consumer: String,
    value: Value,
    provider: String,
    #[serde(flatten)]
    kpi: KpiMonth<'a>,
    /// An extension of the original, only with `includeDailyValues=true`.
    #[serde(rename = "dailyValues", skip_serializing_if = "Option::is_none")]
    daily_values: Option<Vec<DailyValue>>,
}

#[derive(Serialize)]
struct ConsumerValue {
    consumer: String,
    value: Value,
    #[serde(rename = "dailyValues", skip_serializing_if = "Option::is_none")]
    daily_values: Option<Vec<DailyValue>>,
}

/// `GET /aggregatedMonthlyProviderUsage`.
#[derive(Serialize)]
struct ProviderUsage<'a> {
    provider: String,
    #[serde(flatten)]
    kpi: KpiMonth<'a>,
    #[serde(rename = "aggregatedUsages")]
    usages: Vec<ConsumerValue>,
    page: PageInfo,
}

async fn consumer_usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let consumer = authorize(&state, &headers, Scope::AggregatesRead).await?;
    let params = Params::parse(query, &["month", "year", "provider", "application", "KPIName", "includeDailyValues"])?;
    let month = parse_month(required(&params, "month")?)?;
    let year = parse_year(required(&params, "year")?)?;
    let provider = required(&params, "provider")?;
    let application = required(&params, "application")?;
    let kpi_name = required(&params, "KPIName")?;
    let with_daily = include_daily(&params)?;
    let kpi = load_kpi(&state, application, kpi_name, provider).await?;
    // A provider's KPIs are visible to its consumers only: a tenant that never had a usage under
    // this KPI's (application, unit) gets the same 404 as for a KPI that does not exist, so KPI
    // names cannot be probed.
    if kpi.names.owner_tenant_id != consumer && !has_usages_under(&state, &kpi, &consumer).await? {
        return Err(no_such_kpi(kpi_name, application, provider));
    }
    let (from, until) = month_range(year, month)?;
    let days = load_days(&state, &kpi, Some(&consumer), from, until).await?;
    let empty = BTreeMap::new();
    let own = days.get(&consumer).unwrap_or(&empty);
    let range = |_| out_of_range(&consumer, &kpi, year, month);
    let value = monthly_value(own, from, until, kpi.daily, kpi.monthly, kpi.pre_fill, kpi.factor).map_err(range)?;
    let daily_values = with_daily.then(|| daily_json(&kpi, own, from, until)).transpose().map_err(range)?;
    let answer = ConsumerUsage {
        consumer,
        value: number(value),
        provider: kpi.names.owner_tenant_id.clone(),
        kpi: KpiMonth::new(&kpi, year, month, from, until),
        daily_values,
    };
    Ok(Json(serde_json::to_value(answer).map_err(ApiError::internal)?))
}

async fn provider_usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let provider = authorize(&state, &headers, Scope::AggregatesRead).await?;
    let params = Params::parse(
        query,
        &["month", "year", "consumer", "application", "KPIName", "page", "size", "includeDailyValues"],
    )?;
    let month = parse_month(required(&params, "month")?)?;
    let year = parse_year(required(&params, "year")?)?;
    let application = required(&params, "application")?;
    let kpi_name = required(&params, "KPIName")?;
    let paging = params.paging_or(20)?;
    let with_daily = include_daily(&params)?;
    let kpi = load_kpi(&state, application, kpi_name, &provider).await?;
    let (from, until) = month_range(year, month)?;
    let days = load_days(&state, &kpi, params.get("consumer"), from, until).await?;
    let total = days.len() as i64;
    let usages = days
        .iter()
        .skip(paging.offset() as usize)
        .take(paging.limit() as usize)
        .map(|(consumer, days)| {
            let range = |_| out_of_range(consumer, &kpi, year, month);
            let value =
                monthly_value(days, from, until, kpi.daily, kpi.monthly, kpi.pre_fill, kpi.factor).map_err(range)?;
            Ok(ConsumerValue {
                consumer: consumer.clone(),
                value: number(value),
                daily_values: with_daily.then(|| daily_json(&kpi, days, from, until)).transpose().map_err(range)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let answer = ProviderUsage {
        provider,
        kpi: KpiMonth::new(&kpi, year, month, from, until),
        usages,
        page: paging.info(total),
    };
    Ok(Json(serde_json::to_value(answer).map_err(ApiError::internal)?))
}

#[cfg(test)]
mod tests;
