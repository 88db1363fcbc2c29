//! A record's status events, as a function of its outbox row, and their production.
//!
//! A record is the newest version of a bucket that was due; it covers the versions it
//! superseded (rows `superseded` with `covered_by` = its version), so its history speaks for
//! every job of them all. Each job's events keep the id of the version that job contributed to
//! (`billing:<job>:<bucket>:<version>:<sent|received|failed>`), so an id never depends on which
//! record happened to cover it, and producing a history again changes nothing already applied.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uts_common::domain::{wire, UsageStatus};
use uts_common::kafka::{self, DurableProducer, Outgoing};
use uts_common::proto::{v1, Message};
use uts_common::trace::Carrier;

pub use uts_common::domain::wire::{bucket_text, record_key};

/// The row of a record, as far as its history depends on it.
#[derive(Debug, Clone)]
pub struct RecordState<'a> {
    pub bucket_text: &'a str,
    pub version: i64,
    pub state: &'a str,
    pub failure_reported: bool,
    pub last_error: &'a str,
}

/// One status event of a bucket version for one contributing job. Ids are deterministic per
/// (job, bucket, version, what happened), so re-sends and repeated receipts are applied once.
fn contribution_event(
    aggregate: &v1::DailyAggregate,
    contribution: &v1::JobContribution,
    bucket_text: &str,
    what: &str,
    steps: &[(UsageStatus, UsageStatus)],
    errors: Vec<v1::UsageError>,
) -> v1::StatusEvent {
    let key = aggregate.bucket.as_ref().and_then(|b| b.key.clone()).unwrap_or_default();
    v1::StatusEvent {
        event_id: wire::billing_event_id(&contribution.job_id, bucket_text, aggregate.version, what),
        job_id: contribution.job_id.clone(),
        submitter_tenant: String::new(),
        stage: v1::Stage::BillingForwarder as i32,
        occurred_at: Some(uts_common::domain::to_timestamp(Utc::now())),
        transitions: steps
            .iter()
            .map(|(from, to)| v1::StatusTransition {
                application: key.application.clone(),
                unit: key.unit.clone(),
                from: from.to_proto() as i32,
                to: to.to_proto() as i32,
                count: contribution.usages_count,
                terminal: *to == UsageStatus::ReceivedForBilling,
            })
            .collect(),
        errors,
    }
}

/// The status events of a record covering `aggregates` (its own version and those it
/// superseded), one to three per contributing job: "failed" (AGGREGATED →
/// FAILEDTOSENDFORBILLING, with a billing error naming the record) if a failure was reported;
/// "sent" (→ SENTFORBILLING) once billing took the record; "received" (→ RECEIVEDFORBILLING)
/// once it was receipted, synchronously or by callback.
pub fn history(record: &RecordState<'_>, aggregates: &[v1::DailyAggregate]) -> Vec<v1::StatusEvent> {
    let record_key = record_key(record.bucket_text, record.version);
    let (sent, received) = (matches!(record.state, "sent" | "received"), record.state == "received");
    let mut events = Vec::new();
    for aggregate in aggregates {
        for contribution in &aggregate.contributions {
            let event = |what: &str, steps: &[(UsageStatus, UsageStatus)], errors: Vec<v1::UsageError>| {
                contribution_event(aggregate, contribution, record.bucket_text, what, steps, errors)
            };
            if record.failure_reported {
                let billing_error = v1::UsageError {
                    code: "mdsp.uts.billing.sendFailed".into(),
                    message: format!("sending the daily aggregate to billing failed: {}", record.last_error),
                    message_parameters: vec![v1::MessageParameter {
                        name: "billingRecordId".into(),
                        value: record_key.clone(),
                    }],
                    logref: record_key.clone(),
                    error_type: v1::ErrorType::Billing as i32,
                    info: String::new(),
                    error_data: Some(v1::usage_error::ErrorData::BillingIds(record_key.clone())),
                };
                events.push(event(
                    "failed",
                    &[(UsageStatus::Aggregated, UsageStatus::FailedToSendForBilling)],
                    vec![billing_error],
                ));
            }
            if sent {
                let from =
                    if record.failure_reported { UsageStatus::FailedToSendForBilling } else { UsageStatus::Aggregated };
                events.push(event("sent", &[(from, UsageStatus::SentForBilling)], Vec::new()));
            }
        }
    }
    if received {
        for aggregate in aggregates {
            for contribution in &aggregate.contributions {
                let steps = [(UsageStatus::SentForBilling, UsageStatus::ReceivedForBilling)];
                events.push(contribution_event(
                    aggregate,
                    contribution,
                    record.bucket_text,
                    "received",
                    &steps,
                    Vec::new(),
                ));
            }
        }
    }
    events
}

/// Where histories are produced to.
#[derive(Clone)]
pub struct Producer {
    pub pool: PgPool,
    pub producer: DurableProducer,
    pub topic: String,
    pub timeout: Duration,
}

/// What [`Producer::produce`] reads of an outbox row.
#[derive(sqlx::FromRow)]
struct OutboxRow {
    record_key: String,
    message: Vec<u8>,
    state: String,
    failure_reported: bool,
    last_error: Option<String>,
    version: i64,
    day: chrono::NaiveDate,
    updated_at: DateTime<Utc>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Producer {
    /// Produces the histories of the records `keys` from their rows (and the rows they cover),
    /// then clears `events_pending` on each row that did not change meanwhile (whoever changed
    /// it produces the longer history).
    pub async fn produce(&self, keys: &[String]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT record_key, message, state, failure_reported, last_error, version, day, updated_at,
                    traceparent, tracestate
             FROM billing_outbox WHERE record_key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let covered: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT r.record_key, c.message
             FROM billing_outbox r
             JOIN billing_outbox c
               ON (c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit, c.day)
                = (r.provider_tenant_id, r.consumer_tenant_id, r.application, r.unit, r.day)
              AND c.covered_by = r.version AND c.state = 'superseded'
             WHERE r.record_key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut covered_by: HashMap<String, Vec<v1::DailyAggregate>> = HashMap::new();
        for (key, message) in covered {
            let aggregate = v1::DailyAggregate::decode(message.as_slice()).context("decoding an outbox message")?;
            covered_by.entry(key).or_default().push(aggregate);
        }
        let mut events = Vec::new();
        let mut produced = Vec::with_capacity(rows.len());
        for row in rows {
            // The record's events join the trace of the job whose batch made the version.
            let trace = Carrier::from_columns(row.traceparent, row.tracestate);
            let own = v1::DailyAggregate::decode(row.message.as_slice()).context("decoding an outbox message")?;
            let key = own.bucket.as_ref().and_then(|bucket| bucket.key.clone()).unwrap_or_default();
            let bucket_text = bucket_text(&key, row.day);
            let mut aggregates = covered_by.remove(&row.record_key).unwrap_or_default();
            aggregates.push(own);
            let record = RecordState {
                bucket_text: &bucket_text,
                version: row.version,
                state: &row.state,
                failure_reported: row.failure_reported,
                last_error: row.last_error.as_deref().unwrap_or_default(),
            };
            let history = history(&record, &aggregates).into_iter();
            events.extend(history.map(|e| (e.job_id.clone(), e.encode_to_vec(), trace.clone())));
            produced.push((row.record_key, row.updated_at));
        }
        let sends: Vec<Outgoing<'_>> = events
            .iter()
            .map(|(key, payload, trace)| Outgoing::new(&self.topic, key.as_bytes(), payload, trace.as_ref()))
            .collect();
        kafka::produce_all_durably(&self.producer, &sends, self.timeout)
            .await
            .context("producing billing status events")?;
        let (keys, stamps): (Vec<String>, Vec<DateTime<Utc>>) = produced.into_iter().unzip();
        sqlx::query(
            "UPDATE billing_outbox o SET events_pending = false
             FROM UNNEST($1::text[], $2::timestamptz[]) AS k(record_key, updated_at)
             WHERE o.record_key = k.record_key AND o.updated_at = k.updated_at",
        )
        .bind(&keys)
        .bind(&stamps)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(version: u64, jobs: &[(&str, u32)]) -> v1::DailyAggregate {
        v1::DailyAggregate {
            bucket: Some(v1::BucketKey {
                key: Some(v1::AggregationKey {
                    provider_tenant: "p".into(),
                    consumer_tenant: "c".into(),
                    application: "app".into(),
                    unit: "u".into(),
                }),
                day: "2026-11-22".into(),
            }),
            version,
            value: "12.5".into(),
            billable: true,
            usages_count: 5,
            contributions: jobs
                .iter()
                .map(|(j, n)| v1::JobContribution { job_id: (*j).into(), usages_count: *n })
                .collect(),
            ..Default::default()
        }
    }

    fn record<'a>(state: &'a str, failure_reported: bool, last_error: &'a str) -> RecordState<'a> {
        RecordState { bucket_text: "b", version: 2, state, failure_reported, last_error }
    }

    /// (event id, [(from, to, count, terminal)]) of each event.
    type Shape = Vec<(String, Vec<(i32, i32, u32, bool)>)>;

    fn shape(events: &[v1::StatusEvent]) -> Shape {
        events
            .iter()
            .map(|e| (e.event_id.clone(), e.transitions.iter().map(|t| (t.from, t.to, t.count, t.terminal)).collect()))
            .collect()
    }

    #[test]
    fn the_history_follows_the_row() {
        use v1::UsageStatus as S;
        let (agg, sent, recv, fail) = (
            S::Aggregated as i32,
            S::Sentforbilling as i32,
            S::Receivedforbilling as i32,
            S::Failedtosendforbilling as i32,
        );
        let own = [aggregate(2, &[("j1", 2), ("j2", 3)])];
        // Received at the first attempt: sent from AGGREGATED, then received (terminal).
        let events = history(&record("received", false, ""), &own);
        assert_eq!(
            shape(&events),
            vec![
                ("billing:j1:b:2:sent".to_owned(), vec![(agg, sent, 2, false)]),
                ("billing:j2:b:2:sent".to_owned(), vec![(agg, sent, 3, false)]),
                ("billing:j1:b:2:received".to_owned(), vec![(sent, recv, 2, true)]),
                ("billing:j2:b:2:received".to_owned(), vec![(sent, recv, 3, true)]),
            ]
        );
        // Accepted (202), receipt pending: only "sent".
        assert_eq!(shape(&history(&record("sent", false, ""), &own)), shape(&events[..2]));
        // A failure: "failed" with the billing error naming the record.
        let failed = history(&record("retrying", true, "billing answered 503"), &own);
        assert_eq!(shape(&failed)[0], ("billing:j1:b:2:failed".to_owned(), vec![(agg, fail, 2, false)]));
        assert_eq!(failed[0].errors[0].error_type, v1::ErrorType::Billing as i32);
        assert!(failed[0].errors[0].message.contains("503"));
        assert_eq!(failed.len(), 2);
        // Received after a failure: the same "failed", then "sent" from FAILEDTOSENDFORBILLING.
        let recovered = shape(&history(&record("received", true, "billing answered 503"), &own));
        assert_eq!(recovered.len(), 6);
        for event in shape(&failed) {
            assert!(recovered.contains(&event), "{event:?}");
        }
        assert!(recovered.contains(&("billing:j1:b:2:sent".to_owned(), vec![(fail, sent, 2, false)])));
        assert!(recovered.contains(&("billing:j2:b:2:received".to_owned(), vec![(sent, recv, 3, true)])));
        // Nothing to tell before the first attempt.
        assert!(history(&record("pending", false, ""), &own).is_empty());
    }

    #[test]
    fn a_record_speaks_for_the_versions_it_covers_under_their_own_ids() {
        // Version 2 covers version 1 (superseded before it was sent).
        let covering = [aggregate(1, &[("j0", 4)]), aggregate(2, &[("j1", 2)])];
        let ids: Vec<String> =
            history(&record("received", false, ""), &covering).into_iter().map(|e| e.event_id).collect();
        assert_eq!(
            ids,
            ["billing:j0:b:1:sent", "billing:j1:b:2:sent", "billing:j0:b:1:received", "billing:j1:b:2:received"]
        );
        // A failure of the covering record names it, for every covered job.
        let failed = history(&record("retrying", true, "503"), &covering);
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|e| e.errors[0].logref == "b:2"));
    }
}
