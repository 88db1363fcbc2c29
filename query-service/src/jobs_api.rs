//! `GET /usagesJobs`, `GET /usagesJobs/{id}`, `GET /usagesJobs/{id}/errors` (scope
//! `uts.usages.read`), read from the projections.
//!
//! **Tenant isolation:** a caller sees only the jobs its own tenant submitted, and of those only
//! the 1000 most recent (the original's window); any other id is 404 `noMatch`, the same answer
//! as for an unknown id, so ids of other tenants cannot even be probed.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use uts_common::auth::Scope;
use uts_common::domain::{format_datetime, job_id, JobStatus};
use uts_common::error::ApiError;

use crate::freshness::{CATCH_UP_POLL, CATCH_UP_WAIT};
use crate::request::{authorize, storage_error, Listing, Page, PageInfo, Params};
use crate::AppState;

/// How many of a tenant's most recent jobs can be queried (the original's limit).
pub const MAX_VISIBLE_JOBS: i64 = 1000;

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/usagesJobs", get(list_jobs))
        .route("/usagesJobs/{id}", get(get_job))
        .route("/usagesJobs/{id}/errors", get(get_errors))
}

/// A job's status from its usages' counts (DESIGN.md §4): ERRORS as soon as a usage failed
/// verification or sending to billing; COMPLETED when every usage reached its final status;
/// ACCEPTED while nothing was processed; INPROGRESS otherwise.
pub fn job_status(usages_count: i64, accepted: i64, failed: i64, terminal: i64) -> JobStatus {
    if failed > 0 {
        JobStatus::Errors
    } else if terminal >= usages_count {
        JobStatus::Completed
    } else if accepted >= usages_count {
        JobStatus::Accepted
    } else {
        JobStatus::InProgress
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JobJson {
    id: String,
    time: String,
    status: &'static str,
    usages_count: i64,
}

/// `GET /usagesJobs/{id}`: keys in the original's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JobSummary {
    id: String,
    time: String,
    status: &'static str,
    usages_count: i64,
    usages_summary: Vec<SummaryJson>,
    page: PageInfo,
}

/// One error of `GET /usagesJobs/{id}/errors`, as stored.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
struct ErrorJson {
    code: String,
    message: String,
    message_parameters: Value,
    logref: String,
    error_type: String,
    info: String,
    error_data: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryJson {
    application: String,
    unit: String,
    usages_count: i64,
    process_status: String,
}

/// The visible jobs of a tenant: its most recent MAX_VISIBLE_JOBS (the limit written once).
fn visible_jobs() -> String {
    format!(
        "WITH visible AS (
        SELECT job_id, received_at, usages_count FROM jobs WHERE submitter_tenant_id = $1
        ORDER BY received_at DESC, job_id DESC LIMIT {MAX_VISIBLE_JOBS})"
    )
}

/// The status columns of a job: accepted, failed and terminal counts.
const STATUS_COLUMNS: &str = "
    coalesce((SELECT sum(accepted) FROM job_status_counts c WHERE c.job_id = v.job_id), 0)::bigint AS accepted,
    coalesce((SELECT sum(verificationfailed + failedtosendforbilling) FROM job_status_counts c
              WHERE c.job_id = v.job_id), 0)::bigint AS failed,
    coalesce((SELECT usages_count FROM job_terminal_counts t WHERE t.job_id = v.job_id), 0)::bigint AS terminal";

/// A job's non-zero counts as (application, unit, status, n) rows, from its one row per
/// (application, unit) (`$1`: the job id).
const STATUS_ROWS: &str = "job_status_counts c CROSS JOIN LATERAL (VALUES
        ('ACCEPTED', c.accepted), ('VERIFIED', c.verified), ('NOVERIFICATION', c.noverification),
        ('VERIFICATIONFAILED', c.verificationfailed), ('AGGREGATED', c.aggregated),
        ('SENTFORBILLING', c.sentforbilling), ('FAILEDTOSENDFORBILLING', c.failedtosendforbilling),
        ('RECEIVEDFORBILLING', c.receivedforbilling)) AS s(status, n)
    WHERE c.job_id = $1 AND s.n <> 0";

/// A job and its status counts ([`STATUS_COLUMNS`]).
#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    job_id: String,
    received_at: DateTime<Utc>,
    usages_count: i32,
    accepted: i64,
    failed: i64,
    terminal: i64,
}

impl From<JobRow> for JobJson {
    fn from(row: JobRow) -> Self {
        let usages_count = i64::from(row.usages_count);
        JobJson {
            id: row.job_id,
            time: format_datetime(row.received_at),
            status: job_status(usages_count, row.accepted, row.failed, row.terminal).as_str(),
            usages_count,
        }
    }
}

/// One (application, unit, status) count of a job ([`STATUS_ROWS`]).
#[derive(Debug, sqlx::FromRow)]
struct SummaryRow {
    application: String,
    unit: String,
    status: String,
    n: i32,
}

/// `date`: yyyy-mm-dd, or a full RFC 3339 timestamp (as the original's SDK sends), taken as its
/// UTC day; default today (UTC).
fn parse_date(text: Option<&str>) -> Result<NaiveDate, ApiError> {
    let Some(text) = text else { return Ok(Utc::now().date_naive()) };
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day);
    }
    uts_common::domain::parse_datetime(text)
        .map(|dt| dt.date_naive())
        .map_err(|_| ApiError::invalid_parameter("date", "must be a date yyyy-mm-dd or an RFC 3339 date-time"))
}

async fn list_jobs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<JobJson>>, ApiError> {
    let tenant = authorize(&state, &headers, Scope::UsagesRead).await?;
    let params = Params::parse(query, &["date", "tenant", "application", "unit", "page", "size"])?;
    let paging = params.paging_or(10)?;
    let day = parse_date(params.get("date"))?;
    // Every job accepted before this request is in the answer (read your writes); a job accepted
    // now belongs to today (UTC), so a list of an earlier day has nothing to wait for.
    if day >= Utc::now().date_naive() {
        state.freshness.catch_up(&state.pool).await;
    }
    let (filter_tenant, application, unit) = (params.get("tenant"), params.get("application"), params.get("unit"));
    let filtered = filter_tenant.is_some() || application.is_some() || unit.is_some();
    // With filters, usagesCount counts the usages that satisfy them (the original's rule).
    let matching = "SELECT k.job_id, sum(k.usages_count)::bigint AS n FROM job_usage_keys k
                    WHERE ($3::text IS NULL OR k.tenant_id = $3) AND ($4::text IS NULL OR k.application = $4)
                      AND ($5::text IS NULL OR k.unit = $5)
                    GROUP BY k.job_id";
    let listing = Listing::new(
        "visible v LEFT JOIN matching m ON m.job_id = v.job_id
         WHERE (v.received_at AT TIME ZONE 'UTC')::date = $2 AND (NOT $6 OR m.job_id IS NOT NULL)",
    )
    .with(format!("{}, matching AS ({matching})", visible_jobs()))
    .bind(&tenant)
    .bind(day)
    .bind(filter_tenant)
    .bind(application)
    .bind(unit)
    .bind(filtered);
    let columns = format!(
        "v.job_id, v.received_at, CASE WHEN $6 THEN m.n::int ELSE v.usages_count END AS usages_count, {STATUS_COLUMNS}"
    );
    let (rows, total) =
        listing.fetch_page::<JobRow>(&state.pool, &columns, "v.received_at DESC, v.job_id DESC", paging).await?;
    Ok(Json(Page::new("jobs", rows.into_iter().map(JobJson::from).collect(), paging.info(total))))
}

/// The caller's job `id`. Read your writes: the 202 of a POST comes before the projection has the
/// job (`GET /usagesJobs/{id}` right after it answered 404 in 30 of 30 tries, and the official
/// client throws on a 404), and under load the projection can be seconds behind. So a miss on a
/// gateway id (a UUIDv7, not from the future) is only answered 404 once the projection has applied
/// everything the jobs topic held when the request arrived, which includes every job acknowledged
/// before it; the job may arrive meanwhile. If the projection has not got there within 2 s (or
/// the brokers cannot be asked), the answer is 503 with `Retry-After`: the job may exist, a 404
/// would be a guess (the soak saw 5,760 404s for acknowledged jobs when the answer was 404 after
/// the wait). Ids that are not the gateway's, and jobs already projected for another tenant,
/// answer 404 at once.
async fn visible_job(state: &AppState, tenant: &str, id: &str) -> Result<JobJson, ApiError> {
    let visible = visible_jobs();
    let sql = format!(
        "{visible} SELECT v.job_id, v.received_at, v.usages_count, {STATUS_COLUMNS} FROM visible v WHERE v.job_id = $2"
    );
    let lookup = || async {
        let row: Option<JobRow> =
            sqlx::query_as(&sql).bind(tenant).bind(id).fetch_optional(&state.pool).await.map_err(storage_error)?;
        Ok::<_, ApiError>(row.map(JobJson::from))
    };
    let missing = || ApiError::no_match(format!("no usages job with id {id}"));
    if let Some(job) = lookup().await? {
        return Ok(job);
    }
    let gateway_id = job_id::minted_at(id).is_some_and(|minted| minted < Utc::now() + chrono::TimeDelta::seconds(1));
    if !gateway_id {
        return Err(missing());
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    let mark = state.freshness.mark().await;
    loop {
        // In this order: once the projection has reached the mark, a job acknowledged before the
        // request is committed, so the check that follows sees it.
        let caught_up = match &mark {
            Some(mark) => state.freshness.reached(&state.pool, mark).await.map_err(storage_error)?,
            None => false,
        };
        let projected: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)")
            .bind(id)
            .fetch_one(&state.pool)
            .await
            .map_err(storage_error)?;
        if projected {
            // Committed before the lookup starts, so the lookup sees it: the caller's job, or a 404
            // (another tenant's, or beyond the caller's 1000 most recent). Looking up first and
            // asking after answered 404 for the caller's own job projected in between.
            return lookup().await?.ok_or_else(missing);
        }
        if caught_up {
            return Err(missing());
        }
        if tokio::time::Instant::now() + CATCH_UP_POLL > deadline {
            break;
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
    metrics::counter!("uts_query_job_wait_expired_total").increment(1);
    Err(ApiError::service_unavailable(
        format!("usages job {id} is not readable yet: the job projection is behind what was accepted; retry"),
        1,
    ))
}

fn path_job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::no_match("no such usages job"))?;
    Ok(id)
}

async fn get_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<JobSummary>, ApiError> {
    let tenant = authorize(&state, &headers, Scope::UsagesRead).await?;
    let id = path_job_id(path)?;
    let params = Params::parse(query, &["page", "size"])?;
    let paging = params.paging_or(200)?;
    let job = visible_job(&state, &tenant, &id).await?;
    let listing = Listing::new(STATUS_ROWS).bind(&id);
    let (rows, total) = listing
        .fetch_page::<SummaryRow>(&state.pool, "application, unit, status, n", "application, unit, status", paging)
        .await?;
    let summary: Vec<SummaryJson> = rows
        .into_iter()
        .map(|row| SummaryJson {
            application: row.application,
            unit: row.unit,
            usages_count: i64::from(row.n),
            process_status: row.status,
        })
        .collect();
    Ok(Json(JobSummary {
        id: job.id,
        time: job.time,
        status: job.status,
        usages_count: job.usages_count,
        usages_summary: summary,
        page: paging.info(total),
    }))
}

async fn get_errors(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<ErrorJson>>, ApiError> {
    let tenant = authorize(&state, &headers, Scope::UsagesRead).await?;
    let id = path_job_id(path)?;
    let params = Params::parse(query, &["errorClass", "page", "size"])?;
    let paging = params.paging_or(10)?;
    let error_type = match params.get("errorClass") {
        None => None,
        Some("validation") => Some("ValidationError"),
        Some("billing") => Some("BillingError"),
        Some("other") => Some("OtherError"),
        Some(_) => return Err(ApiError::invalid_parameter("errorClass", "must be one of validation, billing, other")),
    };
    visible_job(&state, &tenant, &id).await?;
    let listing = Listing::new("job_errors WHERE job_id = $1 AND ($2::text IS NULL OR error_type = $2)")
        .bind(&id)
        .bind(error_type);
    let columns = "code, message, message_parameters, logref, error_type, info, error_data";
    let (errors, total) = listing.fetch_page(&state.pool, columns, "event_id, position", paging).await?;
    Ok(Json(Page::new("errors", errors, paging.info(total))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_status_follows_the_design() {
        assert_eq!(job_status(5, 5, 0, 0), JobStatus::Accepted);
        assert_eq!(job_status(5, 2, 0, 0), JobStatus::InProgress);
        assert_eq!(job_status(5, 0, 0, 3), JobStatus::InProgress);
        assert_eq!(job_status(5, 0, 0, 5), JobStatus::Completed);
        assert_eq!(job_status(5, 0, 1, 5), JobStatus::Errors);
        assert_eq!(job_status(5, 4, 1, 1), JobStatus::Errors);
    }

    #[test]
    fn dates_accept_days_and_timestamps() {
        assert_eq!(parse_date(Some("2020-11-30")).unwrap().to_string(), "2020-11-30");
        assert_eq!(parse_date(Some("2020-11-30T23:30:00.000-02:00")).unwrap().to_string(), "2020-12-01");
        assert_eq!(parse_date(Some("30.11.2020")).unwrap_err().code, "invalidParameter");
    }
}
