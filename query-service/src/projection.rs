//! The projection of `uts.usage-jobs` and `uts.status` into PostgreSQL: jobs, their usage
//! counts per (application, unit, status), how many reached their final status, and errors.
//!
//! **Exactly once with respect to its own crashes:** a job is projected only if its row can be
//! inserted, an event only if its job id and the digest of its id can be inserted into
//! `job_applied_events`, in the same transaction as the counts; the runner stores the offsets
//! after the commit. **Any arrival
//! order:** counts are sums of signed transitions (the job adds its usages as ACCEPTED, every
//! transition subtracts from `from` and adds to `to`), so they converge whatever arrives first.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Transaction};

use uts_common::domain::{format_datetime, from_timestamp, wire};
use uts_common::proto::v1;
use uts_common::proto::views::JobView;
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected};

/// A message of either topic.
pub enum Item {
    Job(JobView),
    Status(v1::StatusEvent),
}

/// The statuses a usage can be in, `uts.v1.UsageStatus` 1 to 8: the count columns of
/// `job_status_counts`, in this order.
const STATUSES: usize = 8;

/// Signed usage counts of one (job, application, unit), per status (index = status - 1).
#[derive(Default)]
struct Counts([i64; STATUSES]);

impl Counts {
    fn add(&mut self, status: i32, count: i64) {
        match usize::try_from(status - 1).ok().and_then(|i| self.0.get_mut(i)) {
            Some(n) => *n += count,
            // Only this service's stages produce status events: an unknown status is a bug there.
            None => tracing::warn!(status, "status event with an unknown status; not counted"),
        }
    }
}

pub struct Projector {
    pub pool: PgPool,
    pub jobs_topic: String,
}

impl Handler for Projector {
    type Item = Item;

    fn decode(&self, topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Item, String> {
        if topic == self.jobs_topic {
            let job: JobView = decode_proto(payload)?;
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
        let finished = project(&mut tx, batch).await?;
        record_progress(&mut tx, &self.jobs_topic, batch).await?;
        tx.commit().await?;
        metrics::counter!("uts_query_projected_messages_total").increment(batch.len() as u64);
        metrics::counter!("uts_query_final_usages_total").increment(finished);
        Ok(Vec::new())
    }
}

/// Records, per partition of the jobs topic, the offset after the batch's last job
/// (`projection_progress`, read by `GET /usagesJobs` to wait for the jobs accepted before it).
async fn record_progress(
    tx: &mut Transaction<'_, Postgres>,
    jobs_topic: &str,
    batch: &[Decoded<Item>],
) -> Result<(), sqlx::Error> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for decoded in batch.iter().filter(|decoded| decoded.origin.topic == jobs_topic) {
        let after = decoded.origin.offset + 1;
        next.entry(decoded.origin.partition).and_modify(|n| *n = (*n).max(after)).or_insert(after);
    }
    if next.is_empty() {
        return Ok(());
    }
    let (partitions, offsets): (Vec<i32>, Vec<i64>) = next.into_iter().unzip();
    sqlx::query(
        "INSERT INTO projection_progress (topic, partition, next_offset)
         SELECT $1, p, o FROM UNNEST($2::int[], $3::bigint[]) AS t(p, o)
         ON CONFLICT (topic, partition) DO UPDATE
         SET next_offset = GREATEST(projection_progress.next_offset, EXCLUDED.next_offset)",
    )
    .bind(jobs_topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Projects a batch with a handful of set-based statements (UNNEST), whatever its size: one
/// round trip per table, not per message. Returns how many usages reached a final status.
async fn project(tx: &mut Transaction<'_, Postgres>, batch: &[Decoded<Item>]) -> Result<u64, sqlx::Error> {
    let mut jobs: BTreeMap<&str, &JobView> = BTreeMap::new();
    // Keyed as `job_applied_events` is: (job id, digest of the event id).
    let mut events: BTreeMap<(&str, uuid::Uuid), &v1::StatusEvent> = BTreeMap::new();
    for decoded in batch {
        match &decoded.item {
            Item::Job(job) => {
                jobs.entry(&job.job_id).or_insert(job);
            }
            Item::Status(event) => {
                events.entry((&event.job_id, wire::event_digest(&event.event_id))).or_insert(event);
            }
        }
    }
    // (job, application, unit) → signed usage count per status (`Counts`).
    let mut counts: BTreeMap<(String, String, String), Counts> = BTreeMap::new();
    let mut terminal: BTreeMap<String, i64> = BTreeMap::new();

    if !jobs.is_empty() {
        let ids: Vec<&str> = jobs.keys().copied().collect();
        let submitters: Vec<&str> = jobs.values().map(|j| j.submitter_tenant.as_str()).collect();
        let received: Vec<chrono::DateTime<chrono::Utc>> =
            jobs.values().map(|j| j.received_at.as_ref().and_then(from_timestamp).unwrap_or_default()).collect();
        let sizes: Vec<i32> = jobs.values().map(|j| j.usages_count as i32).collect();
        let origins: Vec<&str> = jobs
            .values()
            .map(|j| if j.origin == v1::Origin::Usages as i32 { "usages" } else { "usagesJobs" })
            .collect();
        // A job id seen before (a re-produced job) is projected once.
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO jobs (job_id, submitter_tenant_id, received_at, usages_count, origin)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::text[])
             ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
        )
        .bind(&ids)
        .bind(&submitters)
        .bind(&received)
        .bind(&sizes)
        .bind(&origins)
        .fetch_all(&mut **tx)
        .await?;
        // Counted on borrowed keys, by runs of the same unit: a job has a handful of distinct
        // (tenant, application, unit) but up to 200 usages, so strings are compared and copied
        // per run and per key, not per usage.
        let mut keys: BTreeMap<(&str, &str, &str, &str), i64> = BTreeMap::new();
        for job_id in &inserted {
            let job = jobs[job_id.as_str()];
            for user in &job.users {
                for resource in &user.resources {
                    let mut run: Option<(&str, i64)> = None;
                    for usage in &resource.usages {
                        match &mut run {
                            Some((unit, n)) if *unit == usage.unit => *n += 1,
                            _ => {
                                if let Some((unit, n)) = run.replace((&usage.unit, 1)) {
                                    *keys
                                        .entry((&job.job_id, &user.tenant_id, &resource.application, unit))
                                        .or_default() += n;
                                }
                            }
                        }
                    }
                    if let Some((unit, n)) = run {
                        *keys.entry((&job.job_id, &user.tenant_id, &resource.application, unit)).or_default() += n;
                    }
                }
            }
        }
        let mut accepted: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
        for ((job, _, application, unit), count) in &keys {
            *accepted.entry((job, application, unit)).or_default() += count;
        }
        for ((job, application, unit), count) in accepted {
            let key = (job.to_owned(), application.to_owned(), unit.to_owned());
            counts.entry(key).or_default().add(v1::UsageStatus::Accepted as i32, count);
        }
        if !keys.is_empty() {
            let (mut j, mut t, mut a, mut u, mut n) = (vec![], vec![], vec![], vec![], vec![]);
            for ((job, tenant, application, unit), count) in keys {
                j.push(job);
                t.push(tenant);
                a.push(application);
                u.push(unit);
                n.push(count as i32);
            }
            sqlx::query(
                "INSERT INTO job_usage_keys (job_id, tenant_id, application, unit, usages_count)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])",
            )
            .bind(&j)
            .bind(&t)
            .bind(&a)
            .bind(&u)
            .bind(&n)
            .execute(&mut **tx)
            .await?;
        }
    }

    if !events.is_empty() {
        // A redelivered event is applied once: its key is inserted once.
        let (job_ids, digests): (Vec<&str>, Vec<uuid::Uuid>) = events.keys().copied().unzip();
        let applied: Vec<(String, uuid::Uuid)> = sqlx::query_as(
            "INSERT INTO job_applied_events (job_id, event_digest)
             SELECT * FROM UNNEST($1::text[], $2::uuid[]) ON CONFLICT DO NOTHING RETURNING job_id, event_digest",
        )
        .bind(&job_ids)
        .bind(&digests)
        .fetch_all(&mut **tx)
        .await?;
        for (job_id, digest) in &applied {
            let event = events[&(job_id.as_str(), *digest)];
            for t in &event.transitions {
                let count = i64::from(t.count);
                let row = counts.entry((event.job_id.clone(), t.application.clone(), t.unit.clone())).or_default();
                row.add(t.from, -count);
                row.add(t.to, count);
                if t.terminal {
                    *terminal.entry(event.job_id.clone()).or_default() += count;
                }
            }
            for (position, error) in event.errors.iter().enumerate() {
                insert_error(tx, event, position, error).await?;
            }
        }
    }

    counts.retain(|_, c| c.0.iter().any(|n| *n != 0));
    if !counts.is_empty() {
        let (mut j, mut a, mut u) = (vec![], vec![], vec![]);
        let mut by_status: [Vec<i32>; STATUSES] = Default::default();
        for ((job, application, unit), row) in counts {
            j.push(job);
            a.push(application);
            u.push(unit);
            for (column, n) in by_status.iter_mut().zip(row.0) {
                column.push(n as i32);
            }
        }
        let [accepted, verified, noverification, failed, aggregated, sent, failed_to_send, received] = by_status;
        sqlx::query(
            "INSERT INTO job_status_counts AS c (job_id, application, unit, accepted, verified, noverification,
                 verificationfailed, aggregated, sentforbilling, failedtosendforbilling, receivedforbilling)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::int[], $7::int[],
                                  $8::int[], $9::int[], $10::int[], $11::int[])
             ON CONFLICT (job_id, application, unit) DO UPDATE SET
                 accepted = c.accepted + EXCLUDED.accepted,
                 verified = c.verified + EXCLUDED.verified,
                 noverification = c.noverification + EXCLUDED.noverification,
                 verificationfailed = c.verificationfailed + EXCLUDED.verificationfailed,
                 aggregated = c.aggregated + EXCLUDED.aggregated,
                 sentforbilling = c.sentforbilling + EXCLUDED.sentforbilling,
                 failedtosendforbilling = c.failedtosendforbilling + EXCLUDED.failedtosendforbilling,
                 receivedforbilling = c.receivedforbilling + EXCLUDED.receivedforbilling",
        )
        .bind(&j)
        .bind(&a)
        .bind(&u)
        .bind(&accepted)
        .bind(&verified)
        .bind(&noverification)
        .bind(&failed)
        .bind(&aggregated)
        .bind(&sent)
        .bind(&failed_to_send)
        .bind(&received)
        .execute(&mut **tx)
        .await?;
    }
    let finished = terminal.values().sum::<i64>().max(0) as u64;
    if !terminal.is_empty() {
        let (j, n): (Vec<String>, Vec<i32>) = terminal.into_iter().map(|(job, n)| (job, n as i32)).unzip();
        sqlx::query(
            "INSERT INTO job_terminal_counts (job_id, usages_count) SELECT * FROM UNNEST($1::text[], $2::int[])
             ON CONFLICT (job_id) DO UPDATE SET usages_count = job_terminal_counts.usages_count + EXCLUDED.usages_count",
        )
        .bind(&j)
        .bind(&n)
        .execute(&mut **tx)
        .await?;
    }
    Ok(finished)
}

async fn insert_error(
    tx: &mut Transaction<'_, Postgres>,
    event: &v1::StatusEvent,
    position: usize,
    error: &v1::UsageError,
) -> Result<(), sqlx::Error> {
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
    Ok(())
}

/// The API's `errorType` and `errorData` of an error: the failing usages in the request's
/// `users` shape for validation errors, the billing record ids for billing errors.
fn error_shape(error: &v1::UsageError) -> (&'static str, Value) {
    match &error.error_data {
        Some(v1::usage_error::ErrorData::Validation(data)) => {
            ("ValidationError", Value::Array(data.users.iter().map(user_json).collect()))
        }
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
