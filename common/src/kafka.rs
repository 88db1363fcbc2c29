//! Kafka helpers: the durable producer, topic creation and consumer configuration.
//!
//! The producer is idempotent with `acks=all`: a delivery report means every in-sync replica
//! has the message, which is what a 2xx answer promises (DESIGN.md invariant 1). Consumers use
//! manual offset commits after the work is durable (at-least-once; stages dedup by ids).

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::{KafkaArgs, Topics};

/// The base client configuration: brokers plus the operator's extra properties.
pub fn client_config(args: &KafkaArgs) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    for property in args.properties.iter().filter(|p| !p.trim().is_empty()) {
        let (key, value) = property
            .split_once('=')
            .with_context(|| format!("Kafka property {property:?} is not key=value"))?;
        config.set(key.trim(), value.trim());
    }
    Ok(config)
}

/// A producer whose acknowledgement means "durable in Kafka": idempotent, `acks=all`, and a
/// bounded delivery timeout so that callers fail fast when the brokers are unreachable.
pub fn durable_producer(args: &KafkaArgs) -> anyhow::Result<FutureProducer> {
    let mut config = client_config(args)?;
    let timeout_ms = args.produce_timeout_ms.to_string();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Batches the messages of concurrent requests without adding noticeable latency.
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", &timeout_ms)
        .set("socket.connection.setup.timeout.ms", &timeout_ms)
        .set("message.max.bytes", "4000000");
    // Operator overrides win over the defaults above.
    for property in args.properties.iter().filter(|p| !p.trim().is_empty()) {
        if let Some((key, value)) = property.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
    config.create().context("creating the Kafka producer")
}

/// A consumer in `group` that commits offsets only when told to (after the work is durable)
/// and starts from the earliest offset when the group has none.
pub fn manual_commit_consumer(args: &KafkaArgs, group: &str) -> anyhow::Result<StreamConsumer> {
    let mut config = client_config(args)?;
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("partition.assignment.strategy", "cooperative-sticky");
    config.create().context("creating the Kafka consumer")
}

/// Creates the five topics when they are missing (partitions and replication from `args`).
pub async fn ensure_topics(args: &KafkaArgs, topics: &Topics) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(args)?.create().context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .all()
        .into_iter()
        .map(|name| NewTopic::new(name, args.partitions, TopicReplication::Fixed(args.replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .context("creating Kafka topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Asks the brokers for cluster metadata: the readiness probe of every Kafka client.
pub async fn check_reachable(producer: &FutureProducer, timeout: Duration) -> Result<(), KafkaError> {
    // fetch_metadata blocks; FutureProducer clones share one client.
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Produces one message and waits for the brokers' acknowledgement (or the bounded timeout).
pub async fn produce_durably(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    // The queue timeout covers a full local queue; the delivery itself is bounded by
    // message.timeout.ms. Both stay below the caller's patience.
    producer
        .send(record, rdkafka::util::Timeout::After(timeout))
        .await
        .map(|_| ())
        .map_err(|(err, _)| err)
}
