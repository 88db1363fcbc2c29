//! The consumer runner against the real Kafka: batches are handled and committed, poison goes
//! to the dead-letter topic without blocking the partition, failures are retried and never
//! skipped, and work abandoned at shutdown is redelivered.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::kafka;
use uts_common::proto::{v1, Message};
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected, Runner};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
}

async fn kafka_args() -> KafkaArgs {
    kafka_args_with(&[]).await
}

async fn kafka_args_with(flags: &[&str]) -> KafkaArgs {
    let brokers = std::env::var("UTS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let prefix = format!("runner-{}", uuid::Uuid::new_v4().simple());
    let (brokers, prefix) = (format!("--kafka-brokers={brokers}"), format!("--topic-prefix={prefix}"));
    let args =
        Args::parse_from(["test", &brokers, &prefix, "--topic-partitions=2"].into_iter().chain(flags.iter().copied()))
            .kafka;
    kafka::ensure_topics(&args, &args.topics()).await.unwrap();
    args
}

/// Records the job ids it handles; fails while `failures_left` > 0.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
    failures_left: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
    /// The size of every batch handled.
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Handler for Recorder {
    type Item = v1::UsageJob;

    fn decode(&self, _topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<v1::UsageJob, String> {
        let job: v1::UsageJob = decode_proto(payload)?;
        (!job.job_id.is_empty()).then_some(job).ok_or_else(|| "job without id".to_owned())
    }

    async fn handle(&self, batch: &[Decoded<v1::UsageJob>]) -> anyhow::Result<Vec<Rejected>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            anyhow::bail!("simulated database outage");
        }
        self.seen.lock().unwrap().extend(batch.iter().map(|d| d.item.job_id.clone()));
        self.batches.lock().unwrap().push(batch.len());
        Ok(Vec::new())
    }
}

async fn produce(args: &KafkaArgs, payloads: &[Vec<u8>]) {
    let (producer, _) = kafka::durable_producer(args).unwrap();
    let topic = args.topics().usage_jobs;
    for (i, payload) in payloads.iter().enumerate() {
        kafka::produce_durably(&producer, &topic, format!("k{i}").as_bytes(), payload, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

fn job(id: &str) -> Vec<u8> {
    v1::UsageJob { job_id: id.into(), ..Default::default() }.encode_to_vec()
}

fn start(
    args: &KafkaArgs,
    group: &str,
    handler: Recorder,
) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let runner = Runner::new(args, v1::Stage::Verifier, group, &[&args.topics().usage_jobs]).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(handler, shutdown.clone()));
    (shutdown, task)
}

async fn wait_for(recorder: &Recorder, expected: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = recorder.seen.lock().unwrap().iter().cloned().collect();
        if seen.is_superset(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "handled only {seen:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dead_letters(args: &KafkaArgs) -> Vec<v1::DeadLetter> {
    let topic = args.topics().dead_letter;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("dl-reader-{}", uuid::Uuid::new_v4()))
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in 0..2 {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)).unwrap();
        remaining += high - low;
        assignment.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            letters.push(v1::DeadLetter::decode(message.unwrap().payload().unwrap()).unwrap());
            remaining -= 1;
        }
    }
    letters
}

#[tokio::test]
async fn batches_are_retried_poison_is_set_aside_and_offsets_are_committed() {
    let args = kafka_args().await;
    let group = format!("group-{}", uuid::Uuid::new_v4());
    let ids: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    let mut payloads: Vec<Vec<u8>> = ids.iter().map(|id| job(id)).collect();
    payloads.insert(7, b"\xff\xff not protobuf".to_vec());
    payloads.insert(12, job(""));
    produce(&args, &payloads).await;

    let recorder = Recorder::default();
    recorder.failures_left.store(3, Ordering::SeqCst);
    let (shutdown, task) = start(&args, &group, recorder.clone());
    wait_for(&recorder, &ids.iter().cloned().collect()).await;
    assert!(recorder.attempts.load(Ordering::SeqCst) >= 4, "the failing batch was retried");

    let letters = dead_letters(&args);
    let mut reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0], "job without id");
    assert!(reasons[1].starts_with("not a valid"), "{}", reasons[1]);
    assert!(letters
        .iter()
        .all(|l| l.stage == v1::Stage::Verifier as i32 && l.source_topic == args.topics().usage_jobs));
    assert!(letters.iter().any(|l| l.original_value == b"\xff\xff not protobuf"));

    shutdown.cancel();
    task.await.unwrap().unwrap();

    // A new member of the group resumes after the committed offsets: only new work arrives.
    produce(&args, &[job("job-after-restart")]).await;
    let second = Recorder::default();
    let (shutdown, task) = start(&args, &group, second.clone());
    wait_for(&second, &["job-after-restart".to_owned()].into()).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(*second.seen.lock().unwrap(), vec!["job-after-restart".to_owned()]);
}

#[tokio::test]
async fn work_abandoned_at_shutdown_is_redelivered() {
    let args = kafka_args().await;
    let group = format!("group-{}", uuid::Uuid::new_v4());
    produce(&args, &[job("job-a"), job("job-b")]).await;

    // This member never succeeds; it is stopped while backing off.
    let failing = Recorder::default();
    failing.failures_left.store(usize::MAX, Ordering::SeqCst);
    let (shutdown, task) = start(&args, &group, failing.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while failing.attempts.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the handler was never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(failing.seen.lock().unwrap().is_empty());

    let healthy = Recorder::default();
    let (shutdown, task) = start(&args, &group, healthy.clone());
    wait_for(&healthy, &["job-a".to_owned(), "job-b".to_owned()].into()).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_batch_is_bounded_in_bytes_as_well_as_in_messages() {
    // 8 KB a batch, jobs of about 3 KB waiting before the runner starts: without the byte limit
    // its first batches take all of them (up to 256); with it, three at most (the third crosses).
    let args = kafka_args_with(&["--consumer-max-batch-kbytes=8"]).await;
    let ids: Vec<String> = (0..30).map(|i| format!("job-{i}")).collect();
    let payloads: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            v1::UsageJob { job_id: id.clone(), submitter_tenant: "t".repeat(3000), ..Default::default() }
                .encode_to_vec()
        })
        .collect();
    produce(&args, &payloads).await;

    let recorder = Recorder::default();
    let (shutdown, task) = start(&args, &format!("group-{}", uuid::Uuid::new_v4()), recorder.clone());
    wait_for(&recorder, &ids.iter().cloned().collect()).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let batches = recorder.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|&n| n <= 3), "batches of {batches:?}");
    assert!(batches.contains(&3), "the backlog filled no batch to the limit: {batches:?}");
}
