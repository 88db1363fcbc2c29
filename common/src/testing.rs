//! Helpers for tests that run stages against the real Kafka (used by the stages' integration
//! tests; small enough to ship in the library).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::kafka;
pub use crate::kafka::read_topic_to_end;

/// The brokers of the local test infrastructure (`UTS_KAFKA_BROKERS`, else 127.0.0.1:19092).
pub fn brokers() -> String {
    std::env::var("UTS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

/// Kafka settings with a fresh random topic prefix (topics created) and `partitions`.
pub async fn isolated_kafka(partitions: i32) -> KafkaArgs {
    isolated_kafka_on(partitions, &[format!("--kafka-brokers={}", brokers())]).await
}

/// Like [`isolated_kafka`], on the brokers and with the security settings of `flags`
/// (`--kafka-brokers=…`, `--kafka-security-protocol=…`, …).
pub async fn isolated_kafka_on(partitions: i32, flags: &[String]) -> KafkaArgs {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        kafka: KafkaArgs,
    }
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut args =
        vec!["test".to_owned(), format!("--topic-prefix={prefix}"), format!("--topic-partitions={partitions}")];
    args.extend(flags.iter().cloned());
    let args = <Args as clap::Parser>::parse_from(args).kafka;
    kafka::ensure_topics(&args, &args.topics()).await.expect("creating test topics");
    args
}

/// How long [`read_topic`] keeps reading after it has `count` messages, so that an assertion
/// on an exact number sees an extra message instead of stopping just before it.
pub const GRACE: Duration = Duration::from_millis(500);

/// Reads `topic` from the beginning until at least `count` messages arrived (then [`GRACE`]
/// longer) or `timeout` passed; returns (key, payload) pairs in arrival order. The polling runs
/// on a blocking thread, so stages spawned on the test's (single-threaded) runtime keep running
/// meanwhile.
pub async fn read_topic(args: &KafkaArgs, topic: &str, count: usize, timeout: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (config, topic) = (kafka::client_config(args).expect("a valid Kafka configuration"), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(config, &topic, count, timeout))
        .await
        .expect("the reading thread panicked")
}

fn read_blocking(mut config: ClientConfig, topic: &str, count: usize, timeout: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = config
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating a test consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..metadata.topics()[0].partitions().len() as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment");
    }
    consumer.assign(&assignment).expect("assigning partitions");
    let mut deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut graced = false;
    while Instant::now() < deadline {
        if messages.len() >= count && !graced {
            graced = true;
            deadline = deadline.min(Instant::now() + GRACE);
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            messages.push((message.key().unwrap_or_default().to_vec(), message.payload().unwrap_or_default().to_vec()));
        }
    }
    messages
}
