//! Kafka helpers: the durable producer, topic creation and consumer configuration.
//!
//! The producer is idempotent with `acks=all`: a delivery report means every in-sync replica
//! has the message, which is what a 2xx answer promises (DESIGN.md invariant 1). Consumers use
//! manual offset commits after the work is durable (at-least-once; stages dedup by ids).

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::{KafkaArgs, Topics};
use crate::trace::Carrier;

mod health;
pub use health::{HealthContext, KafkaHealth};

/// The base client configuration of every producer, consumer and admin client: brokers, TLS and
/// SASL settings, then the operator's extra properties.
pub fn client_config(args: &KafkaArgs) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    config.set("security.protocol", &args.security_protocol);
    let path = |file: &std::path::Path| -> anyhow::Result<String> {
        anyhow::ensure!(file.is_file(), "{} is not a readable file", file.display());
        Ok(file.display().to_string())
    };
    if let Some(file) = &args.ssl_ca_file {
        config.set("ssl.ca.location", path(file)?);
    }
    if let (Some(cert), Some(key)) = (&args.ssl_cert_file, &args.ssl_key_file) {
        config.set("ssl.certificate.location", path(cert)?);
        config.set("ssl.key.location", path(key)?);
    }
    if args.security_protocol.starts_with("sasl") {
        let (Some(mechanism), Some(username), Some(password)) =
            (&args.sasl_mechanism, &args.sasl_username, &args.sasl_password)
        else {
            anyhow::bail!(
                "--kafka-security-protocol {} needs --kafka-sasl-mechanism, --kafka-sasl-username and \
                 --kafka-sasl-password (UTS_KAFKA_SASL_*)",
                args.security_protocol
            );
        };
        config.set("sasl.mechanisms", mechanism);
        config.set("sasl.username", username);
        config.set("sasl.password", password);
    } else if args.sasl_mechanism.is_some() {
        anyhow::bail!("--kafka-sasl-mechanism needs --kafka-security-protocol sasl_ssl (or sasl_plaintext)");
    }
    for property in args.properties.iter().filter(|p| !p.trim().is_empty()) {
        let (key, value) =
            property.split_once('=').with_context(|| format!("Kafka property {property:?} is not key=value"))?;
        config.set(key.trim(), value.trim());
    }
    Ok(config)
}

/// Sets the operator's extra properties again, over a client's own defaults.
fn apply_overrides(config: &mut ClientConfig, args: &KafkaArgs) {
    for property in args.properties.iter().filter(|p| !p.trim().is_empty()) {
        if let Some((key, value)) = property.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
}

/// The producer type every stage uses.
pub type DurableProducer = FutureProducer<HealthContext>;

/// A producer whose acknowledgement means "durable in Kafka": idempotent, `acks=all`, and a
/// bounded delivery timeout so that callers fail fast when the brokers are unreachable. The
/// returned [`KafkaHealth`] says whether the brokers are currently reachable.
pub fn durable_producer(args: &KafkaArgs) -> anyhow::Result<(DurableProducer, KafkaHealth)> {
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
        .set("message.max.bytes", "4000000")
        .set("queue.buffering.max.kbytes", args.producer_queue_kbytes.to_string());
    // Operator overrides win over the defaults above.
    apply_overrides(&mut config, args);
    let health = KafkaHealth::default();
    let producer =
        config.create_with_context(HealthContext { health: health.clone() }).context("creating the Kafka producer")?;
    Ok((producer, health))
}

/// A consumer in `group` for at-least-once processing: offsets are *stored* by the caller only
/// after the work is durable, and librdkafka commits the stored offsets every second, on
/// rebalance and on close. It starts from the earliest offset when the group has none.
pub fn at_least_once_consumer(
    args: &KafkaArgs,
    group: &str,
    stage: &'static str,
) -> anyhow::Result<StreamConsumer<StageContext>> {
    let mut config = client_config(args)?;
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Notice new topics and partitions within seconds, not the default five minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Feeds the lag gauge (StageContext::stats).
        .set("statistics.interval.ms", "5000")
        .set("partition.assignment.strategy", "roundrobin")
        // Bounded prefetch: the runner takes at most --consumer-max-batch messages at a time anyway.
        .set("queued.max.messages.kbytes", args.consumer_queue_kbytes.to_string())
        .set("queued.min.messages", "10000")
        // With a queue that small, librdkafka's default 1 s pause of a partition whose queue is
        // full became the latency: the benchmark measured messages waiting 550 ms on average
        // for the aggregator (whose batches took 70 ms), and some partitions 20 s behind the
        // others under full load. A partition is fetched again 10 ms after its queue drains.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", (args.consumer_fetch_kbytes * 1024).to_string())
        .set("max.partition.fetch.bytes", (args.consumer_fetch_kbytes * 256).to_string());
    // Operator overrides win over the defaults above (e.g. a shorter session.timeout.ms, or
    // smaller prefetch queues), as for the producer.
    apply_overrides(&mut config, args);
    config.create_with_context(StageContext { stage }).context("creating the Kafka consumer")
}

/// Consumer context of a stage: publishes its lag from librdkafka's statistics.
pub struct StageContext {
    stage: &'static str,
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                // Partition -1 is librdkafka's internal one; only assigned partitions count.
                if partition.partition < 0 || !partition.desired || partition.consumer_lag_stored < 0 {
                    continue;
                }
                // Lag against the *stored* offsets: messages whose work is not yet durable.
                metrics::gauge!(
                    "uts_stage_consumer_lag_messages",
                    "stage" => self.stage,
                    "topic" => topic.topic.clone(),
                    "partition" => partition.partition.to_string()
                )
                .set(partition.consumer_lag_stored as f64);
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for StageContext {}

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
    let results = admin.create_topics(&new_topics, &options).await.context("creating Kafka topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    // Creation returns before every broker knows the topics; a consumer that subscribes in
    // that window sees no partitions until its next metadata refresh. Wait until they are
    // visible with a leader for every partition.
    let consumer: rdkafka::consumer::BaseConsumer = client_config(args)?.create()?;
    let names: Vec<String> = topics.all().iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || wait_for_leaders(&consumer, &names, Duration::from_secs(30)))
        .await
        .context("waiting for topic leaders")??;
    Ok(())
}

fn wait_for_leaders(
    consumer: &rdkafka::consumer::BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    for topic in topics {
        loop {
            let ready = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "topic {topic} has no leader after {timeout:?}");
            // A blocking thread polling the brokers with a deadline.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Asks the brokers for cluster metadata: the readiness probe of every Kafka client.
pub async fn check_reachable(producer: &DurableProducer, timeout: Duration) -> Result<(), KafkaError> {
    // fetch_metadata blocks; FutureProducer clones share one client.
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// One message to produce, with the trace context of the work it comes from (see [`crate::trace`]).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub trace: Option<&'a Carrier>,
}

impl<'a> Outgoing<'a> {
    pub fn new(topic: &'a str, key: &'a [u8], payload: &'a [u8], trace: Option<&'a Carrier>) -> Self {
        Outgoing { topic, key, payload, trace }
    }

    fn record(&self) -> FutureRecord<'a, [u8], [u8]> {
        let record = FutureRecord::to(self.topic).key(self.key).payload(self.payload);
        match self.trace {
            None => record,
            Some(trace) => record.headers(
                trace
                    .headers()
                    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value) })),
            ),
        }
    }
}

/// The trace context a consumed message carries in its headers.
pub fn trace_of(message: &impl rdkafka::Message) -> Option<Carrier> {
    let headers = message.headers()?;
    Carrier::read(headers.iter().filter_map(|h| Some((h.key, h.value?))))
}

/// Produces one message without a trace context and waits for the brokers' acknowledgement (or
/// the bounded timeout).
pub async fn produce_durably(
    producer: &DurableProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<(), KafkaError> {
    produce_one(producer, Outgoing::new(topic, key, payload, None), timeout).await
}

/// Produces one message and waits for the brokers' acknowledgement (or the bounded timeout).
pub async fn produce_one(
    producer: &DurableProducer,
    message: Outgoing<'_>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let record = message.record();
    // The queue timeout covers a full local queue; the delivery itself is bounded by
    // message.timeout.ms. Both stay below the caller's patience.
    producer.send(record, rdkafka::util::Timeout::After(timeout)).await.map(|_| ()).map_err(|(err, _)| err)
}

/// Produces `messages` in the given order and waits until the brokers
/// acknowledged every one. Each message is enqueued before the next (a full local queue is
/// waited out, never skipped), so the messages to one partition keep their order: the producer
/// is idempotent, so neither its retries nor concurrency reorder them. Cheaper than one
/// [`produce_durably`] future per message, and ordered where a set of those futures is not.
pub async fn produce_all_durably(
    producer: &DurableProducer,
    messages: &[Outgoing<'_>],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in messages {
        let mut record = message.record();
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = returned;
                    // The queue drains as the brokers acknowledge; back off briefly.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

/// Reads `topic` from the beginning up to the end it has at the time of the call (its high
/// watermarks): (key, payload) pairs. An error when `timeout` passes first (never a partial
/// answer that looks whole). For tools and tests, not stages.
pub async fn read_topic_to_end(
    args: &KafkaArgs,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let (config, topic) = (client_config(args).expect("a valid Kafka configuration"), topic.to_owned());
    tokio::task::spawn_blocking(move || read_to_end_blocking(config, &topic, timeout))
        .await
        .expect("the reading thread panicked")
}

fn read_to_end_blocking(
    mut config: ClientConfig,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let consumer: rdkafka::consumer::BaseConsumer = config
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a reader")?;
    let deadline = std::time::Instant::now() + timeout;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("reading topic metadata")?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in 0..partitions {
        // A broker that has just restarted answers "not leader" until its partitions have their
        // leaders again (CI saw it once): asked again until the deadline, then the error.
        let high = loop {
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(err) if std::time::Instant::now() < deadline => {
                    tracing::debug!(partition, error = %err, "watermarks not readable yet; asking again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => return Err(err).context("reading watermarks"),
            }
        };
        ends.push(high);
        assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment).context("assigning partitions")?;
    let mut next: Vec<i64> = vec![0; ends.len()];
    let mut messages = Vec::new();
    while next.iter().zip(&ends).any(|(n, end)| n < end) && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = rdkafka::consumer::BaseConsumer::poll(&consumer, Duration::from_millis(100)) {
            let partition = message.partition() as usize;
            next[partition] = message.offset() + 1;
            if message.offset() < ends[partition] {
                messages
                    .push((message.key().unwrap_or_default().to_vec(), message.payload().unwrap_or_default().to_vec()));
            }
        }
    }
    let missing: i64 = next.iter().zip(&ends).map(|(n, end)| (end - n).max(0)).sum();
    if missing > 0 {
        anyhow::bail!("reading {topic} to its end timed out after {timeout:?}: {missing} offsets not reached");
    }
    Ok(messages)
}
