//! The projection of `uts.usage-jobs` and `uts.status` into PostgreSQL: jobs, their usage
//! counts per (application, unit, status), how many reached their final status, and errors.
//!
//! **Exactly once with respect to its own crashes:** a job is projected only if its row can be
//! inserted, an event only if its id can be inserted into `job_applied_events`, in the same
//! transaction as the counts; the runner stores the offsets after the commit. **Any arrival
//! order:** counts are sums of signed transitions (the job adds its usages as ACCEPTED, every
//! transition subtracts from `from` and adds to `to`), so they converge whatever arrives first.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Transaction};
use uts_common::domain::{format_datetime, from_timestamp};
use uts_common::proto::v1;
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected};
use uts_common::status::status_name;

/// A message of either topic.
pub enum Item {
    Job(v1::UsageJob),
    Status(v1::StatusEvent),
}

pub struct Projector {
    pub pool: PgPool,
    pub jobs_topic: String,
}

impl Handler for Projector {
    type Item = Item;

    fn decode(&self, topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Item, String> {
        if topic == self.jobs_topic {
            let job: v1::UsageJob = decode_proto(payload)?;
            if job.job_id.is_empty() || job.submitter_tenant.is_empty() || job.received_at.is_none() {
                return Err("usage job without job_id, submitter_tenant or received_at".into());
            }
            Ok(Item::Job(job))
        } else {
            let event: v1::StatusEvent = decode_proto(payload)?;
            if event.event_id.is_empty() || event.job_id.is_empty() {
                return Err("status event without event_id or job_id".into());
            }
            Ok(Item::Status(event))
        }
    }

    async fn handle(&self, batch: &[Decoded<Item>]) -> anyhow::Result<Vec<Rejected>> {
        let mut tx = self.pool.begin().await?;
        for decoded in batch {
            match &decoded.item {
                Item::Job(job) => project_job(&mut tx, job).await?,
                Item::Status(event) => project_event(&mut tx, event).await?,
            }
        }
        tx.commit().await?;
        metrics::counter!("uts_query_projected_messages_total").increment(batch.len() as u64);
        Ok(Vec::new())
    }
}

async fn add_count(
    tx: &mut Transaction<'_, Postgres>,
    job_id: &str,
    application: &str,
    unit: &str,
    status: &str,
    delta: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_usage_counts (job_id, application, unit, status, usages_count) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (job_id, application, unit, status)
         DO UPDATE SET usages_count = job_usage_counts.usages_count + EXCLUDED.usages_count",
    )
    .bind(job_id)
    .bind(application)
    .bind(unit)
    .bind(status)
    .bind(delta as i32)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn project_job(tx: &mut Transaction<'_, Postgres>, job: &v1::UsageJob) -> Result<(), sqlx::Error> {
    let received_at = job.received_at.as_ref().and_then(from_timestamp).unwrap_or_default();
    let origin = if job.origin == v1::Origin::Usages as i32 { "usages" } else { "usagesJobs" };
    let inserted = sqlx::query(
        "INSERT INTO jobs (job_id, submitter_tenant_id, received_at, usages_count, origin)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(&job.job_id)
    .bind(&job.submitter_tenant)
    .bind(received_at)
    .bind(job.usages_count as i32)
    .bind(origin)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(()); // the same job id again: projected already
    }
    let mut keys: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    let mut accepted: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for user in &job.users {
        for resource in &user.resources {
            for usage in &resource.usages {
                *keys.entry((&user.tenant_id, &resource.application, &usage.unit)).or_default() += 1;
                *accepted.entry((&resource.application, &usage.unit)).or_default() += 1;
            }
        }
    }
    for ((tenant, application, unit), count) in keys {
        sqlx::query(
            "INSERT INTO job_usage_keys (job_id, tenant_id, application, unit, usages_count) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&job.job_id)
        .bind(tenant)
        .bind(application)
        .bind(unit)
        .bind(count as i32)
        .execute(&mut **tx)
        .await?;
    }
    for ((application, unit), count) in accepted {
        add_count(tx, &job.job_id, application, unit, "ACCEPTED", count).await?;
    }
    Ok(())
}

async fn project_event(tx: &mut Transaction<'_, Postgres>, event: &v1::StatusEvent) -> Result<(), sqlx::Error> {
    let inserted = sqlx::query("INSERT INTO job_applied_events (event_id, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&event.event_id)
        .bind(&event.job_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        return Ok(()); // a redelivered event
    }
    let mut terminal = 0i64;
    for t in &event.transitions {
        let count = i64::from(t.count);
        add_count(tx, &event.job_id, &t.application, &t.unit, &status_name(t.from), -count).await?;
        add_count(tx, &event.job_id, &t.application, &t.unit, &status_name(t.to), count).await?;
        if t.terminal {
            terminal += count;
        }
    }
    if terminal > 0 {
        sqlx::query(
            "INSERT INTO job_terminal_counts (job_id, usages_count) VALUES ($1, $2)
             ON CONFLICT (job_id) DO UPDATE SET usages_count = job_terminal_counts.usages_count + EXCLUDED.usages_count",
        )
        .bind(&event.job_id)
        .bind(terminal as i32)
        .execute(&mut **tx)
        .await?;
    }
    for (position, error) in event.errors.iter().enumerate() {
        let (error_type, error_data) = error_shape(error);
        let parameters: Vec<Value> =
            error.message_parameters.iter().map(|p| json!({"name": p.name, "value": p.value})).collect();
        sqlx::query(
            "INSERT INTO job_errors
                (event_id, position, job_id, error_type, code, message, message_parameters, logref, info, error_data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&event.event_id)
        .bind(position as i32)
        .bind(&event.job_id)
        .bind(error_type)
        .bind(&error.code)
        .bind(&error.message)
        .bind(Value::Array(parameters))
        .bind(&error.logref)
        .bind(&error.info)
        .bind(error_data)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The API's `errorType` and `errorData` of an error: the failing usages in the request's
/// `users` shape for validation errors, the billing record ids for billing errors.
fn error_shape(error: &v1::UsageError) -> (&'static str, Value) {
    match &error.error_data {
        Some(v1::usage_error::ErrorData::Validation(data)) => ("ValidationError", Value::Array(data.users.iter().map(user_json).collect())),
        Some(v1::usage_error::ErrorData::BillingIds(ids)) => ("BillingError", Value::String(ids.clone())),
        Some(v1::usage_error::ErrorData::Other(text)) => ("OtherError", Value::String(text.clone())),
        None if error.error_type == v1::ErrorType::Billing as i32 => ("BillingError", Value::String(String::new())),
        None if error.error_type == v1::ErrorType::Validation as i32 => ("ValidationError", Value::Array(Vec::new())),
        None => ("OtherError", Value::String(String::new())),
    }
}

fn user_json(user: &v1::UserUsages) -> Value {
    let user_type = v1::UserType::try_from(user.user_type)
        .ok()
        .and_then(uts_common::domain::UserType::from_proto)
        .map_or("user", |t| t.as_str());
    json!({
        "tenantId": user.tenant_id,
        "userId": user.user_id,
        "userType": user_type,
        "resources": user.resources.iter().map(|r| json!({
            "application": r.application,
            "alias": r.alias,
            "resource": r.resource,
            "usages": r.usages.iter().map(|u| json!({
                // Exact: the decimal text as a JSON number (arbitrary_precision keeps it).
                "value": u.value.parse::<serde_json::Number>().map(Value::Number).unwrap_or_else(|_| Value::String(u.value.clone())),
                "unit": u.unit,
                "datetime": u.datetime.as_ref().and_then(from_timestamp).map(format_datetime),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
