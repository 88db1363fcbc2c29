//! The aggregator against the real Kafka and PostgreSQL: exact values per function, each
//! (job, aggregation key) applied once however often it arrives, late usages in their own
//! day's bucket, poison and overflow set aside.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use clap::Parser;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::domain::to_timestamp;
use uts_common::proto::{v1, Message};
use uts_testkit::{decode_all, isolated_kafka, read_messages, read_topic};

const WAIT: Duration = Duration::from_secs(60);

async fn start(kafka_args: &KafkaArgs, pool: PgPool) -> CancellationToken {
    let config = aggregator::Config::parse_from([
        "aggregator".to_owned(),
        "--database-url=postgres://unused".to_owned(),
        "--admin-addr=127.0.0.1:0".to_owned(),
        format!("--consumer-group=aggregator-{}", uuid::Uuid::new_v4()),
        format!("--kafka-brokers={}", kafka_args.brokers),
        format!("--topic-prefix={}", kafka_args.topic_prefix),
    ]);
    uts_common::telemetry::init(&config.stage.telemetry, "aggregator");
    let shutdown = CancellationToken::new();
    tokio::spawn(aggregator::run_with_pool(config, pool, shutdown.clone()));
    shutdown
}

/// A fresh Kafka with `partitions` partitions and an aggregator on it.
async fn started(pool: &PgPool, partitions: i32) -> (KafkaArgs, CancellationToken) {
    let args = isolated_kafka(partitions).await;
    let shutdown = start(&args, pool.clone()).await;
    (args, shutdown)
}

fn batch(
    job: &str,
    unit: &str,
    function: v1::AggregationFunction,
    usages: &[(&str, DateTime<Utc>)],
) -> v1::VerifiedBatch {
    v1::VerifiedBatch {
        job_id: job.into(),
        submitter_tenant: "op".into(),
        key: Some(v1::AggregationKey {
            provider_tenant: "provider".into(),
            consumer_tenant: "consumer".into(),
            application: "app".into(),
            unit: unit.into(),
        }),
        rule_id: "rule".into(),
        rule_version: 1,
        function: function as i32,
        billable: true,
        verification_status: v1::UsageStatus::Verified as i32,
        usages: usages
            .iter()
            .enumerate()
            .map(|(i, (value, at))| v1::VerifiedUsage {
                index: i as u32,
                value: (*value).into(),
                datetime: Some(to_timestamp(*at)),
            })
            .collect(),
        received_at: Some(to_timestamp(Utc::now())),
    }
}

async fn produce(args: &KafkaArgs, payloads: &[Vec<u8>]) {
    let messages: Vec<(&[u8], &[u8])> = payloads.iter().map(|payload| (&b"k"[..], payload.as_slice())).collect();
    uts_testkit::produce(args, &args.topics().usages_verified, &messages).await;
}

async fn bucket(pool: &PgPool, unit: &str, day: chrono::NaiveDate) -> Option<(Decimal, i64, i64)> {
    sqlx::query_as("SELECT value, usages_count, version FROM daily_aggregates WHERE unit = $1 AND day = $2")
        .bind(unit)
        .bind(day)
        .fetch_optional(pool)
        .await
        .unwrap()
}

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn every_function_is_exact_and_each_batch_counts_once(pool: PgPool) {
    let (args, shutdown) = started(&pool, 2).await;
    let now = Utc::now();
    let today = now.date_naive();
    let t = |seconds: i64| now - chrono::Duration::seconds(seconds);
    let values = [("0.1", t(30)), ("2.25", t(10)), ("-1", t(20)), ("1000000000000.000000001", t(40))];
    use v1::AggregationFunction as F;
    let functions =
        [(F::Sum, "sum"), (F::Count, "count"), (F::Min, "min"), (F::Max, "max"), (F::Avg, "avg"), (F::Last, "last")];
    let mut first = Vec::new();
    let mut again = Vec::new();
    for (function, unit) in functions {
        // Two jobs per unit; the second one is delivered twice within the first round (one
        // handler batch) and once more after it (a redelivery in a later batch).
        first.push(batch("job-a", unit, function, &values[..2]).encode_to_vec());
        first.push(batch("job-b", unit, function, &values[2..]).encode_to_vec());
        first.push(batch("job-b", unit, function, &values[2..]).encode_to_vec());
        again.push(batch("job-b", unit, function, &values[2..]).encode_to_vec());
    }
    produce(&args, &first).await;
    let statuses = read_topic(&args, &args.topics().status, 12, WAIT).await;
    assert!(statuses.len() >= 12, "one status event per (job, key) at least");
    let mut versions = Vec::new();
    for (_, unit) in functions {
        versions.push(bucket(&pool, unit, today).await.expect("bucket exists").2);
    }
    produce(&args, &again).await;

    // Computed independently: sum, count, min, max, avg, last (the latest datetime: 2.25).
    let sum = d("0.1") + d("2.25") + d("-1") + d("1000000000000.000000001");
    let expected = [
        ("sum", sum),
        ("count", d("4")),
        ("min", d("-1")),
        ("max", d("1000000000000.000000001")),
        ("avg", sum / d("4")),
        ("last", d("2.25")),
    ];
    // The redelivered batches are not applied again, but their status events are re-emitted.
    let statuses = read_topic(&args, &args.topics().status, statuses.len() + 6, WAIT).await;
    assert!(statuses.len() >= 18, "the redeliveries re-emit their status events");
    for ((unit, value), version_before) in expected.into_iter().zip(versions) {
        let (stored, count, version) = bucket(&pool, unit, today).await.expect("bucket exists");
        assert_eq!(stored.normalize(), value.normalize(), "{unit}");
        assert_eq!(count, 4, "{unit}: each job applied once");
        // One version per batch that brought new jobs: 1 or 2 here (the two jobs may arrive
        // in one consumer batch or two); the redelivery made none.
        assert!(
            (1..=2).contains(&version) && version == version_before,
            "{unit}: version {version}, before {version_before}"
        );
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM aggregate_applied_batches").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, 12);
    // The status events of the duplicate delivery equal the first one's.
    let events: Vec<v1::StatusEvent> = decode_all(&statuses);
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert!(events.iter().all(|e| e.transitions[0].to == v1::UsageStatus::Aggregated as i32));

    // The aggregates topic carries the buckets' values; the highest version is the final one.
    let aggregates: Vec<v1::DailyAggregate> = read_messages(&args, &args.topics().aggregates, 12, WAIT).await;
    let sum_final = aggregates
        .into_iter()
        .filter(|a| a.bucket.as_ref().unwrap().key.as_ref().unwrap().unit == "sum")
        .max_by_key(|a| a.version)
        .unwrap();
    assert_eq!((d(&sum_final.value), sum_final.usages_count), (sum.normalize(), 4));
    let (_, _, sum_version) = bucket(&pool, "sum", today).await.unwrap();
    assert_eq!(sum_final.version as i64, sum_version);
    // Each version lists every job it folded in, once.
    let jobs: Vec<&str> = sum_final.contributions.iter().map(|c| c.job_id.as_str()).collect();
    assert!(jobs == ["job-a", "job-b"] || jobs == ["job-b"], "{jobs:?}");
    shutdown.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn late_usages_update_their_own_day_and_lineage_is_kept(pool: PgPool) {
    let (args, shutdown) = started(&pool, 1).await;
    let now = Utc::now();
    let yesterday = now.checked_sub_days(Days::new(1)).unwrap();
    produce(
        &args,
        &[batch("job-late", "u", v1::AggregationFunction::Sum, &[("5", now), ("7", yesterday), ("1", yesterday)])
            .encode_to_vec()],
    )
    .await;
    read_topic(&args, &args.topics().status, 1, WAIT).await;
    assert_eq!(bucket(&pool, "u", now.date_naive()).await, Some((d("5"), 1, 1)));
    assert_eq!(bucket(&pool, "u", yesterday.date_naive()).await, Some((d("8"), 2, 1)));
    let lineage: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_id, usages_count FROM aggregate_contributions ORDER BY day")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(lineage, vec![("job-late".to_owned(), 2), ("job-late".to_owned(), 1)]);
    shutdown.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn poison_and_overflow_are_set_aside_and_the_partition_moves_on(pool: PgPool) {
    let (args, shutdown) = started(&pool, 1).await;
    let now = Utc::now();
    let max = Decimal::MAX.to_string();
    produce(
        &args,
        &[
            b"junk".to_vec(),
            batch("job-big-1", "big", v1::AggregationFunction::Sum, &[(&max, now)]).encode_to_vec(),
            batch("job-big-2", "big", v1::AggregationFunction::Sum, &[(&max, now)]).encode_to_vec(),
            v1::VerifiedBatch { function: 42, ..batch("job-odd", "odd", v1::AggregationFunction::Sum, &[("1", now)]) }
                .encode_to_vec(),
            batch("job-ok", "ok", v1::AggregationFunction::Sum, &[("1", now)]).encode_to_vec(),
        ],
    )
    .await;
    let letters: Vec<v1::DeadLetter> = read_messages(&args, &args.topics().dead_letter, 3, WAIT).await;
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().any(|l| l.reason.contains("would leave the exact decimal range")), "{letters:?}");
    // An unknown function is a contract breach, set aside, not aggregated as SUM.
    assert!(letters.iter().any(|l| l.reason.contains("unknown aggregation function 42")), "{letters:?}");
    assert_eq!(bucket(&pool, "odd", now.date_naive()).await, None);
    // The overflowing job's usage does not vanish: it ends VERIFICATIONFAILED with its error.
    let status_topic = args.topics().status;
    let statuses = |count: usize| {
        let (args, topic) = (args.clone(), status_topic.clone());
        async move { read_status(&args, &topic, count).await }
    };
    async fn read_status(args: &KafkaArgs, topic: &str, count: usize) -> Vec<v1::StatusEvent> {
        read_messages(args, topic, count, WAIT).await
    }
    let events = statuses(3).await;
    assert_eq!(events.len(), 3, "job-big-1, job-big-2 and job-ok: {events:?}");
    let rejection = events.iter().find(|e| e.job_id == "job-big-2").expect("an event for the rejected job");
    let t = &rejection.transitions[0];
    assert_eq!(
        (t.from, t.to, t.count, t.terminal),
        (v1::UsageStatus::Verified as i32, v1::UsageStatus::Verificationfailed as i32, 1, true)
    );
    let error = &rejection.errors[0];
    assert_eq!(error.error_type, v1::ErrorType::Other as i32);
    assert!(error.message.contains("would leave the exact decimal range"), "{error:?}");
    assert!(error.message_parameters.iter().any(|p| p.name == "usageIndexes" && p.value == "0"), "{error:?}");
    assert_eq!(bucket(&pool, "big", now.date_naive()).await.map(|b| b.1), Some(1), "the first big usage stays");
    assert_eq!(bucket(&pool, "ok", now.date_naive()).await, Some((d("1"), 1, 1)));

    // Delivered again (e.g. after a crash before its offset was stored): the same rejection,
    // under the same event id, and the bucket unchanged.
    produce(&args, &[batch("job-big-2", "big", v1::AggregationFunction::Sum, &[(&max, now)]).encode_to_vec()]).await;
    let events = statuses(4).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].event_id, rejection.event_id);
    assert_eq!(events[3].transitions, rejection.transitions);
    assert_eq!(bucket(&pool, "big", now.date_naive()).await.map(|b| b.1), Some(1));
    shutdown.cancel();
}
