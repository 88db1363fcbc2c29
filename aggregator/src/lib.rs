//! # aggregator
//!
//! **Consumes** `uts.usages.verified` (consumer group `uts-aggregator`): the verified usages of
//! one job for one aggregation key (provider, consumer, application, unit).
//!
//! **Produces** one daily bucket per (provider, consumer, application, unit, UTC day) in
//! PostgreSQL (`daily_aggregates`) with its lineage (`aggregate_contributions`: which job
//! contributed how many usages, at which bucket version); the new value and version of every
//! touched bucket to `uts.aggregates`, keyed by bucket; one AGGREGATED transition per (job,
//! aggregation key) to `uts.status`, keyed by job id, with the event id
//! `aggregator:<job id>:<aggregation key>`. A usage dated yesterday updates yesterday's bucket.
//!
//! **Delivery: exactly once into the aggregates.** Each (job, aggregation key) batch is applied
//! only if its row in `aggregate_applied_batches` can be inserted, in the same transaction as
//! the bucket updates; the offset is stored only after that transaction committed and the
//! messages were acknowledged. A redelivery finds the batch applied, changes nothing, and
//! re-emits the same status event and the buckets' current values (consumers keep the highest
//! version), so a crash at any instant neither loses nor doubles a usage.
//!
//! **Failure modes:** PostgreSQL or Kafka unavailable → the batch is retried with backoff;
//! a message that is not a valid `VerifiedBatch`, or whose bucket would overflow the exact
//! decimal range → dead letter, and the partition moves on; SIGTERM → the batch in hand is
//! finished and committed.

pub mod fold;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::try_join_all;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uts_common::admin;
use uts_common::config::{AdminArgs, DatabaseArgs, KafkaArgs, RetentionArgs, TelemetryArgs};
use uts_common::domain::{from_timestamp, to_timestamp, AggregationFunction, UsageStatus};
use uts_common::kafka::{self, DurableProducer};
use uts_common::proto::{v1, Message};
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected, Runner};

use crate::fold::{Accumulators, Last};

/// Consumer group of every aggregator process.
pub const GROUP: &str = "uts-aggregator";

/// Folds verified usages into exact daily aggregates, exactly once.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aggregator", version, about)]
pub struct Config {
    /// Kafka consumer group; every aggregator process of one deployment shares it.
    #[arg(long = "consumer-group", env = "UTS_AGGREGATOR_GROUP", default_value = GROUP)]
    pub group: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A verified batch whose values and datetimes have been checked.
pub struct Batch {
    message: v1::VerifiedBatch,
    key: v1::AggregationKey,
    function: AggregationFunction,
    /// (day, value, last) per usage.
    usages: Vec<(NaiveDate, Decimal, Last)>,
}

/// A bucket's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct BucketId {
    provider: String,
    consumer: String,
    application: String,
    unit: String,
    day: NaiveDate,
}

pub struct Aggregator {
    pool: PgPool,
    producer: DurableProducer,
    aggregates_topic: String,
    status_topic: String,
    produce_timeout: Duration,
}

/// The Kafka key of a bucket.
pub fn bucket_key_text(key: &v1::AggregationKey, day: &str) -> String {
    format!("{}/{}/{}/{}/{day}", key.provider_tenant, key.consumer_tenant, key.application, key.unit)
}

fn key_text(key: &v1::AggregationKey) -> String {
    format!("{}/{}/{}/{}", key.provider_tenant, key.consumer_tenant, key.application, key.unit)
}

impl Handler for Aggregator {
    type Item = Batch;

    fn decode(&self, _topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Batch, String> {
        let message: v1::VerifiedBatch = decode_proto(payload)?;
        if message.job_id.is_empty() {
            return Err("verified batch without job_id".into());
        }
        let key = message.key.clone().ok_or("verified batch without aggregation key")?;
        let function = v1::AggregationFunction::try_from(message.function)
            .ok()
            .and_then(AggregationFunction::from_proto)
            .unwrap_or_default();
        let mut usages = Vec::with_capacity(message.usages.len());
        for usage in &message.usages {
            let value = Decimal::from_str(&usage.value)
                .map_err(|_| format!("usage {} has the value {:?}, not a decimal", usage.index, usage.value))?;
            let at = usage
                .datetime
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| format!("usage {} has no valid datetime", usage.index))?;
            let last = Last { value, at, job_id: message.job_id.clone(), index: usage.index as i32 };
            usages.push((at.date_naive(), value, last));
        }
        Ok(Batch { message, key, function, usages })
    }

    async fn handle(&self, batch: &[Decoded<Batch>]) -> anyhow::Result<Vec<Rejected>> {
        let mut tx = self.pool.begin().await?;
        let mut rejected = Vec::new();
        let mut emitted: Vec<usize> = Vec::new();
        for (position, decoded) in batch.iter().enumerate() {
            match apply(&mut tx, &decoded.item).await? {
                Applied::Yes | Applied::Before => emitted.push(position),
                Applied::Overflow(reason) => rejected.push(Rejected { position, reason }),
            }
        }
        let (aggregates, statuses) = emissions(&mut tx, batch, &emitted).await?;
        tx.commit().await.context("committing aggregates")?;

        let sends = aggregates
            .iter()
            .map(|(key, payload)| (self.aggregates_topic.as_str(), key, payload))
            .chain(statuses.iter().map(|(key, payload)| (self.status_topic.as_str(), key, payload)));
        try_join_all(sends.map(|(topic, key, payload)| {
            kafka::produce_durably(&self.producer, topic, key.as_bytes(), payload, self.produce_timeout)
        }))
        .await
        .context("producing aggregates and status events")?;
        let usages: usize = emitted.iter().map(|&p| batch[p].item.usages.len()).sum();
        metrics::counter!("uts_aggregator_usages_total").increment(usages as u64);
        Ok(rejected)
    }
}

enum Applied {
    /// Applied now.
    Yes,
    /// Applied by an earlier delivery: nothing changed.
    Before,
    /// Not applied: a bucket would leave the exact decimal range.
    Overflow(String),
}

/// Applies one (job, aggregation key) batch unless it was applied before.
async fn apply(tx: &mut Transaction<'_, Postgres>, batch: &Batch) -> anyhow::Result<Applied> {
    let key = &batch.key;
    sqlx::query("SAVEPOINT batch").execute(&mut **tx).await?;
    let inserted = sqlx::query(
        "INSERT INTO aggregate_applied_batches
            (job_id, provider_tenant_id, consumer_tenant_id, application, unit, usages_count)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&batch.message.job_id)
    .bind(&key.provider_tenant)
    .bind(&key.consumer_tenant)
    .bind(&key.application)
    .bind(&key.unit)
    .bind(batch.usages.len() as i32)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Applied::Before);
    }
    let mut by_day: BTreeMap<NaiveDate, Vec<&(NaiveDate, Decimal, Last)>> = BTreeMap::new();
    for usage in &batch.usages {
        by_day.entry(usage.0).or_default().push(usage);
    }
    for (day, usages) in by_day {
        let bucket = BucketId {
            provider: key.provider_tenant.clone(),
            consumer: key.consumer_tenant.clone(),
            application: key.application.clone(),
            unit: key.unit.clone(),
            day,
        };
        let (mut acc, version) = match load_bucket(tx, &bucket).await? {
            Some((acc, version)) => (Some(acc), version),
            None => (None, 0),
        };
        let mut overflow = false;
        for (_, value, last) in usages {
            match acc.as_mut() {
                Some(acc) => overflow |= acc.add(*value, last.clone()).is_err(),
                None => acc = Some(Accumulators::of(*value, last.clone())),
            }
        }
        let (Some(acc), false) = (acc, overflow) else {
            // Undo this batch only; the rest of the transaction stands.
            sqlx::query("ROLLBACK TO SAVEPOINT batch").execute(&mut **tx).await?;
            return Ok(Applied::Overflow(format!(
                "bucket {}/{}/{}/{}/{} would leave the exact decimal range",
                bucket.provider, bucket.consumer, bucket.application, bucket.unit, bucket.day
            )));
        };
        let value = acc.value(batch.function);
        store_bucket(tx, &bucket, batch, &acc, value, version + 1).await?;
        sqlx::query(
            "INSERT INTO aggregate_contributions
                (provider_tenant_id, consumer_tenant_id, application, unit, day, job_id, usages_count, version,
                 bucket_value, bucket_usages_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&bucket.provider)
        .bind(&bucket.consumer)
        .bind(&bucket.application)
        .bind(&bucket.unit)
        .bind(bucket.day)
        .bind(&batch.message.job_id)
        .bind(batch.usages.iter().filter(|u| u.0 == day).count() as i32)
        .bind(version + 1)
        .bind(value)
        .bind(acc.count)
        .execute(&mut **tx)
        .await?;
    }
    Ok(Applied::Yes)
}

type BucketRow = (i64, Decimal, Decimal, Decimal, Decimal, DateTime<Utc>, String, i32, i64);

async fn load_bucket(tx: &mut Transaction<'_, Postgres>, bucket: &BucketId) -> anyhow::Result<Option<(Accumulators, i64)>> {
    let row: Option<BucketRow> = sqlx::query_as(
        "SELECT usages_count, sum_value, min_value, max_value, last_value, last_at, last_job_id, last_index, version
         FROM daily_aggregates
         WHERE provider_tenant_id = $1 AND consumer_tenant_id = $2 AND application = $3 AND unit = $4 AND day = $5
         FOR UPDATE",
    )
    .bind(&bucket.provider)
    .bind(&bucket.consumer)
    .bind(&bucket.application)
    .bind(&bucket.unit)
    .bind(bucket.day)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(count, sum, min, max, last_value, last_at, last_job_id, last_index, version)| {
        let last = Last { value: last_value, at: last_at, job_id: last_job_id, index: last_index };
        (Accumulators { count, sum, min, max, last }, version)
    }))
}

async fn store_bucket(
    tx: &mut Transaction<'_, Postgres>,
    bucket: &BucketId,
    batch: &Batch,
    acc: &Accumulators,
    value: Decimal,
    version: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO daily_aggregates
            (provider_tenant_id, consumer_tenant_id, application, unit, day, function, value, usages_count,
             sum_value, min_value, max_value, last_value, last_at, last_job_id, last_index, billable, rule_id,
             version, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, now())
         ON CONFLICT (provider_tenant_id, consumer_tenant_id, application, unit, day) DO UPDATE SET
            function = EXCLUDED.function, value = EXCLUDED.value, usages_count = EXCLUDED.usages_count,
            sum_value = EXCLUDED.sum_value, min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
            last_value = EXCLUDED.last_value, last_at = EXCLUDED.last_at, last_job_id = EXCLUDED.last_job_id,
            last_index = EXCLUDED.last_index, billable = EXCLUDED.billable, rule_id = EXCLUDED.rule_id,
            version = EXCLUDED.version, updated_at = now()",
    )
    .bind(&bucket.provider)
    .bind(&bucket.consumer)
    .bind(&bucket.application)
    .bind(&bucket.unit)
    .bind(bucket.day)
    .bind(batch.function.as_str())
    .bind(value)
    .bind(acc.count)
    .bind(acc.sum)
    .bind(acc.min)
    .bind(acc.max)
    .bind(acc.last.value)
    .bind(acc.last.at)
    .bind(&acc.last.job_id)
    .bind(acc.last.index)
    .bind(batch.message.billable)
    .bind(&batch.message.rule_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type EmissionRow = (NaiveDate, i32, Decimal, i64, i64, DateTime<Utc>);

/// The messages for the applied (or previously applied) batches at `positions`: for each bucket
/// the batch touched, the version its contribution produced with the bucket's value at that
/// version (so every version, and every contributing job, reaches billing), and one status
/// event per (job, aggregation key). A redelivery yields exactly the same messages.
async fn emissions(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[Decoded<Batch>],
    positions: &[usize],
) -> anyhow::Result<(Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>)> {
    let mut aggregates = Vec::new();
    let mut statuses = Vec::new();
    let mut seen_events = HashSet::new();
    for &position in positions {
        let item = &batch[position].item;
        let (job_id, key) = (&item.message.job_id, &item.key);
        let rows: Vec<EmissionRow> = sqlx::query_as(
            "SELECT c.day, c.usages_count, c.bucket_value, c.version, c.bucket_usages_count, c.applied_at
             FROM aggregate_contributions c
             WHERE c.job_id = $1 AND c.provider_tenant_id = $2 AND c.consumer_tenant_id = $3
               AND c.application = $4 AND c.unit = $5
             ORDER BY c.day",
        )
        .bind(job_id)
        .bind(&key.provider_tenant)
        .bind(&key.consumer_tenant)
        .bind(&key.application)
        .bind(&key.unit)
        .fetch_all(&mut **tx)
        .await?;
        for (day, contributed, value, version, total, applied_at) in rows {
            let day = day.format("%Y-%m-%d").to_string();
            let message = v1::DailyAggregate {
                bucket: Some(v1::BucketKey { key: Some(key.clone()), day: day.clone() }),
                version: version as u64,
                value: value.normalize().to_string(),
                function: item.function.to_proto() as i32,
                billable: item.message.billable,
                usages_count: total as u64,
                contributions: vec![v1::JobContribution { job_id: job_id.clone(), usages_count: contributed as u32 }],
                updated_at: Some(to_timestamp(applied_at)),
                rule_id: item.message.rule_id.clone(),
            };
            aggregates.push((bucket_key_text(key, &day), message.encode_to_vec()));
        }
        let event_id = format!("aggregator:{job_id}:{}", key_text(key));
        if !seen_events.insert(event_id.clone()) {
            continue;
        }
        let from = if item.message.verification_status == v1::UsageStatus::Verified as i32 {
            UsageStatus::Verified
        } else {
            UsageStatus::NoVerification
        };
        let event = v1::StatusEvent {
            event_id,
            job_id: job_id.clone(),
            submitter_tenant: item.message.submitter_tenant.clone(),
            stage: v1::Stage::Aggregator as i32,
            occurred_at: item.message.received_at,
            transitions: vec![v1::StatusTransition {
                application: key.application.clone(),
                unit: key.unit.clone(),
                from: from.to_proto() as i32,
                to: UsageStatus::Aggregated.to_proto() as i32,
                count: item.usages.len() as u32,
                // Usages that are not billed end here.
                terminal: !item.message.billable,
            }],
            errors: Vec::new(),
        };
        statuses.push((job_id.clone(), event.encode_to_vec()));
    }
    Ok((aggregates, statuses))
}

/// Runs the aggregator with `pool` until `shutdown`.
pub async fn run_with_pool(config: Config, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = config.kafka.topics();
    let runner = Runner::new(&config.kafka, v1::Stage::Aggregator, "aggregator", &config.group, &[&topics.usages_verified])?;
    let (producer, _) = kafka::durable_producer(&config.kafka)?;
    let handler = Aggregator {
        pool: pool.clone(),
        producer: producer.clone(),
        aggregates_topic: topics.aggregates,
        status_topic: topics.status,
        produce_timeout: config.kafka.produce_timeout(),
    };
    let ready = admin::kafka_and_database(Some(producer.clone()), pool.clone());
    let (_, admin_task) =
        admin::serve(config.admin.addr, uts_common::telemetry::metrics_handle(), ready, shutdown.clone()).await?;
    tracing::info!(group = %config.group, "aggregator consuming");
    let pruner = uts_common::db::spawn_pruner(pool, uts_common::db::DedupTable::AggregateAppliedBatches, config.retention.days, shutdown.clone());
    let result = runner.run(handler, shutdown).await;
    let _ = admin_task.await;
    pruner.abort();
    result
}

/// The binary's entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    uts_common::telemetry::init(&config.telemetry);
    let pool = uts_common::db::connect(&config.database).await?;
    run_with_pool(config, pool, shutdown).await
}
