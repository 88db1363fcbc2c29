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
//! **Set-based.** A consumer batch is folded in memory: its dedup rows are inserted with one
//! statement, each touched bucket is read (locked) once and written once, whatever the number
//! of jobs it takes, and its lineage is one statement; a bucket gets one new version per
//! consumer batch, listing every job folded into it (store.rs holds the SQL).
//!
//! **Delivery: exactly once into the aggregates.** Each (job, aggregation key) batch is applied
//! only if its row in `aggregate_applied_batches` can be inserted, in the same transaction as
//! the bucket updates; the offset is stored only after that transaction committed and the
//! messages were acknowledged. A redelivery finds the batch applied, changes nothing, and
//! re-emits the same status event and, from the lineage, the same bucket versions it produced,
//! so a crash at any instant neither loses nor doubles a usage. Messages are produced in order,
//! so a bucket's versions reach `uts.aggregates` oldest first.
//!
//! **Failure modes:** PostgreSQL or Kafka unavailable → the batch is retried with backoff;
//! a message that is not a valid `VerifiedBatch` or names no known aggregation function → dead
//! letter, and the partition moves on; a batch whose bucket would overflow the exact decimal
//! range → dead letter too, and its usages end VERIFICATIONFAILED with an error of type other
//! (the rejection is recorded with its dedup row, so a redelivery repeats it);
//! SIGTERM → the batch in hand is finished and committed.

mod events;
pub mod fold;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::config::{RetentionArgs, StageArgs};
use uts_common::domain::{from_timestamp, to_timestamp, wire, AggregationFunction, UsageStatus};
use uts_common::kafka::{self, DurableProducer, Outgoing};
use uts_common::proto::{v1, Message};
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected, Runner};

use crate::events::{aggregate_messages, rejection_event, status_events};
use crate::fold::{Accumulators, Last};
use crate::store::{BucketId, Claim, Contribution, KeyId, NewBucket};

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
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub stage: StageArgs,
}

/// One verified usage, checked.
struct Usage {
    day: NaiveDate,
    value: Decimal,
    at: DateTime<Utc>,
    index: i32,
}

/// A verified batch whose values and datetimes have been checked.
pub struct Batch {
    message: v1::VerifiedBatch,
    key: KeyId,
    function: AggregationFunction,
    usages: Vec<Usage>,
}

pub struct Aggregator {
    pool: PgPool,
    producer: DurableProducer,
    aggregates_topic: String,
    status_topic: String,
    produce_timeout: Duration,
}

fn key_text(key: &KeyId) -> String {
    wire::key_text(&key.provider, &key.consumer, &key.application, &key.unit)
}

fn key_proto(key: &KeyId) -> v1::AggregationKey {
    v1::AggregationKey {
        provider_tenant: key.provider.clone(),
        consumer_tenant: key.consumer.clone(),
        application: key.application.clone(),
        unit: key.unit.clone(),
    }
}

impl Handler for Aggregator {
    type Item = Batch;

    fn decode(&self, _topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Batch, String> {
        let mut message: v1::VerifiedBatch = decode_proto(payload)?;
        if message.job_id.is_empty() {
            return Err("verified batch without job_id".into());
        }
        let key = message.key.as_ref().ok_or("verified batch without aggregation key")?;
        let key = KeyId {
            provider: key.provider_tenant.clone(),
            consumer: key.consumer_tenant.clone(),
            application: key.application.clone(),
            unit: key.unit.clone(),
        };
        // The verifier always names the function; anything else is a contract breach, not SUM.
        let function = v1::AggregationFunction::try_from(message.function)
            .ok()
            .and_then(AggregationFunction::from_proto)
            .ok_or_else(|| format!("verified batch with unknown aggregation function {}", message.function))?;
        // Only the checked values are kept: a batch in hand holds a few bytes per usage, not the
        // decoded message's strings (the consumer batch's memory is most of the process's).
        let decoded = std::mem::take(&mut message.usages);
        let mut usages = Vec::with_capacity(decoded.len());
        for usage in &decoded {
            let value = Decimal::from_str(&usage.value)
                .map_err(|_| format!("usage {} has the value {:?}, not a decimal", usage.index, usage.value))?;
            let at = usage
                .datetime
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| format!("usage {} has no valid datetime", usage.index))?;
            usages.push(Usage { day: at.date_naive(), value, at, index: usage.index as i32 });
        }
        Ok(Batch { message, key, function, usages })
    }

    async fn handle(&self, batch: &[Decoded<Batch>]) -> anyhow::Result<Vec<Rejected>> {
        // The first copy of each (job, key): a later copy in the same batch is the same message.
        let mut seen = HashSet::new();
        let unique: Vec<usize> = (0..batch.len())
            .filter(|&p| seen.insert((batch[p].item.message.job_id.as_str(), &batch[p].item.key)))
            .collect();
        let claims: Vec<Claim<'_>> = unique
            .iter()
            .map(|&p| {
                let item = &batch[p].item;
                Claim { job_id: &item.message.job_id, key: &item.key, usages: item.usages.len() as i32 }
            })
            .collect();

        let mut tx = self.pool.begin().await?;
        let mut steps = Steps::start();
        let (claimed, now) = store::claim(&mut tx, &claims).await?;
        steps.done("claim");
        let (fresh, before): (Vec<usize>, Vec<usize>) = unique.iter().partition(|&&p| {
            let item = &batch[p].item;
            claimed.contains(&(item.message.job_id.clone(), item.key.clone()))
        });

        // Fold the fresh batches in memory, each touched bucket read (and locked) once.
        // The distinct days of each batch first: one bucket id per (batch, day), not per usage
        // (four string copies and a B-tree insert per usage were most of this step's CPU).
        let touched: BTreeSet<BucketId> = fresh
            .iter()
            .flat_map(|&p| {
                let item = &batch[p].item;
                let mut days: Vec<NaiveDate> = item.usages.iter().map(|u| u.day).collect();
                days.sort_unstable();
                days.dedup();
                days.into_iter().map(move |day| BucketId { key: item.key.clone(), day })
            })
            .collect();
        let stored = store::lock_buckets(&mut tx, &touched.iter().collect::<Vec<_>>()).await?;
        steps.done("lock");
        let fold = fold_batches(batch, &fresh, stored);
        if !fold.rejected.is_empty() {
            let decided: Vec<(&str, &KeyId, &str)> = fold
                .rejected
                .iter()
                .map(|r| {
                    (batch[r.position].item.message.job_id.as_str(), &batch[r.position].item.key, r.reason.as_str())
                })
                .collect();
            store::reject(&mut tx, &decided).await?;
        }
        let (new_buckets, contributions) = fold.versions(batch, now);
        if !new_buckets.is_empty() {
            store::store_buckets(&mut tx, &new_buckets).await?;
            store::store_contributions(&mut tx, &contributions).await?;
        }
        steps.done("write");
        // A redelivery re-emits what its batches came to: the versions they produced, read from
        // the lineage, or the rejection recorded for them.
        let redelivered: Vec<(&str, &KeyId)> =
            before.iter().map(|&p| (batch[p].item.message.job_id.as_str(), &batch[p].item.key)).collect();
        let (old, rejected_before) = if redelivered.is_empty() {
            (Vec::new(), HashMap::new())
        } else {
            (store::versions_of(&mut tx, &redelivered).await?, store::rejections(&mut tx, &redelivered).await?)
        };
        tx.commit().await.context("committing aggregates")?;
        steps.done("commit");

        let mut rejected = fold.rejected;
        for &p in &before {
            let item = &batch[p].item;
            if let Some(reason) = rejected_before.get(&(item.message.job_id.clone(), item.key.clone())) {
                rejected.push(Rejected { position: p, reason: reason.clone() });
            }
        }
        let rejected_positions: HashSet<usize> = rejected.iter().map(|r| r.position).collect();
        let emitted: Vec<usize> = unique.iter().copied().filter(|p| !rejected_positions.contains(p)).collect();
        let aggregates = aggregate_messages(batch, &emitted, contributions.into_iter().chain(old));
        let mut statuses: Vec<(usize, (String, Vec<u8>))> =
            emitted.iter().copied().zip(status_events(batch, &emitted)).collect();
        statuses.extend(rejected.iter().map(|r| (r.position, rejection_event(batch, r))));
        // In order: a bucket's versions reach its partition oldest first. Each message carries
        // the trace context of the (job, key) batch it comes from (a version: the deciding one).
        let trace = |p: usize| batch[p].trace.as_ref();
        let mut sends: Vec<Outgoing<'_>> = Vec::with_capacity(aggregates.len() + statuses.len());
        for (key, payload, p) in &aggregates {
            sends.push(Outgoing::new(&self.aggregates_topic, key.as_bytes(), payload, trace(*p)));
        }
        for (p, (key, payload)) in &statuses {
            sends.push(Outgoing::new(&self.status_topic, key.as_bytes(), payload, trace(*p)));
        }
        kafka::produce_all_durably(&self.producer, &sends, self.produce_timeout)
            .await
            .context("producing aggregates and status events")?;
        steps.done("produce");
        let usages: usize = emitted.iter().filter(|p| fresh.contains(p)).map(|&p| batch[p].item.usages.len()).sum();
        metrics::counter!("uts_aggregator_usages_total").increment(usages as u64);
        Ok(rejected)
    }
}

/// Times the steps of a batch: `uts_aggregator_step_seconds{step}`, to see where a batch waits.
struct Steps(std::time::Instant);

impl Steps {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn done(&mut self, step: &'static str) {
        metrics::histogram!("uts_aggregator_step_seconds", "step" => step).record(self.0.elapsed().as_secs_f64());
        self.0 = std::time::Instant::now();
    }
}

/// A touched bucket during the fold.
struct Folding {
    acc: Option<Accumulators>,
    /// The stored version (0: a new bucket).
    version: i64,
    /// (batch position, usages) of each fresh job folded in, in batch order.
    jobs: Vec<(usize, i32)>,
}

/// The fresh batches folded into their buckets.
struct Fold {
    buckets: BTreeMap<BucketId, Folding>,
    rejected: Vec<Rejected>,
}

/// Folds the fresh batches at `positions` into the `stored` buckets, in batch order. A batch
/// that would take any of its buckets out of the exact decimal range is rejected whole (none
/// of its usages count); the others are unaffected.
fn fold_batches(
    batch: &[Decoded<Batch>],
    positions: &[usize],
    stored: BTreeMap<BucketId, store::StoredBucket>,
) -> Fold {
    let mut buckets: BTreeMap<BucketId, Folding> = stored
        .into_iter()
        .map(|(id, s)| (id, Folding { acc: Some(s.acc), version: s.version, jobs: Vec::new() }))
        .collect();
    let mut rejected = Vec::new();
    for &position in positions {
        let item = &batch[position].item;
        let mut by_day: BTreeMap<NaiveDate, (Option<Accumulators>, i32)> = BTreeMap::new();
        let mut overflow = None;
        for usage in &item.usages {
            let entry = by_day.entry(usage.day).or_insert_with(|| {
                let id = BucketId { key: item.key.clone(), day: usage.day };
                (buckets.get(&id).and_then(|b| b.acc.clone()), 0)
            });
            entry.1 += 1;
            let folded = match entry.0.as_mut() {
                Some(acc) => acc.add_usage(usage.value, usage.at, &item.message.job_id, usage.index).is_ok(),
                None => {
                    let last = Last {
                        value: usage.value,
                        at: usage.at,
                        job_id: item.message.job_id.clone(),
                        index: usage.index,
                    };
                    entry.0 = Some(Accumulators::of(usage.value, last));
                    true
                }
            };
            if !folded {
                overflow = Some(usage.day);
                break;
            }
        }
        if let Some(day) = overflow {
            let k = &item.key;
            rejected.push(Rejected {
                position,
                reason: format!(
                    "bucket {}/{}/{}/{}/{day} would leave the exact decimal range",
                    k.provider, k.consumer, k.application, k.unit
                ),
            });
            continue;
        }
        for (day, (acc, count)) in by_day {
            let bucket = buckets.entry(BucketId { key: item.key.clone(), day }).or_insert_with(|| Folding {
                acc: None,
                version: 0,
                jobs: Vec::new(),
            });
            bucket.acc = acc;
            bucket.jobs.push((position, count));
        }
    }
    Fold { buckets, rejected }
}

impl Fold {
    /// Each bucket that took fresh jobs gets one new version for the whole batch: its new
    /// state, and one lineage row per contributing job.
    fn versions<'a>(
        &'a self,
        batch: &'a [Decoded<Batch>],
        now: DateTime<Utc>,
    ) -> (Vec<NewBucket<'a>>, Vec<Contribution>) {
        let mut buckets = Vec::new();
        let mut contributions = Vec::new();
        for (id, folding) in &self.buckets {
            let (Some(acc), Some(deciding)) =
                (folding.acc.as_ref(), deciding_job(batch, folding.jobs.iter().map(|j| j.0)))
            else {
                continue;
            };
            let item = &batch[deciding].item;
            let version = folding.version + 1;
            let value = acc.value(item.function);
            buckets.push(NewBucket {
                bucket: id,
                acc,
                value,
                version,
                function: item.function.as_str(),
                billable: item.message.billable,
                rule_id: &item.message.rule_id,
            });
            for &(position, usages) in &folding.jobs {
                contributions.push(Contribution {
                    bucket: id.clone(),
                    job_id: batch[position].item.message.job_id.clone(),
                    usages,
                    version,
                    bucket_value: value,
                    bucket_usages: acc.count,
                    applied_at: now,
                });
            }
        }
        (buckets, contributions)
    }
}

/// Of the batches at `positions`, the one whose rule data (function, billable, rule id) a
/// bucket version carries: the greatest job id (the newest job, ids being time-ordered), so a
/// redelivery of the same jobs picks the same one.
pub(crate) fn deciding_job(batch: &[Decoded<Batch>], positions: impl Iterator<Item = usize>) -> Option<usize> {
    positions.max_by(|&a, &b| batch[a].item.message.job_id.cmp(&batch[b].item.message.job_id))
}

/// Runs the aggregator with `pool` until `shutdown`.
pub async fn run_with_pool(config: Config, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = config.stage.kafka.topics();
    let runner = Runner::new(&config.stage.kafka, v1::Stage::Aggregator, &config.group, &[&topics.usages_verified])?;
    let handler = Aggregator {
        pool: pool.clone(),
        producer: uts_common::runner::handler_producer(&config.stage.kafka)?,
        aggregates_topic: topics.aggregates,
        status_topic: topics.status,
        produce_timeout: config.stage.kafka.produce_timeout(),
    };
    tracing::info!(group = %config.group, "aggregator consuming");
    let pruned = Some((uts_common::db::DedupTable::AggregateAppliedBatches, config.retention.days));
    runner.run_stage(handler, pool, config.stage.admin.addr, pruned, shutdown).await
}

/// The binary's entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = uts_common::runner::start(&config.stage, v1::Stage::Aggregator).await?;
    run_with_pool(config, pool, shutdown).await
}
