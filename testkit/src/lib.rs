//! The workspace's test kit: what the integration tests of every package share — the local
//! Kafka and isolated topics on it, reading a topic (with a grace period, so an assertion on an
//! exact count sees an extra message), the test token secret, polling with a deadline, and a
//! served application that is stopped cleanly. A dev-dependency only: nothing here is in a
//! production build.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::domain::TenantType;
use uts_common::kafka;
pub use uts_common::kafka::read_topic_to_end;
use uts_common::tenants::Tenant;

/// The HS256 secret the tests' services verify tokens with.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// A token of `tenant` with `scopes`, signed with [`SECRET`], valid for ten minutes.
pub fn token(tenant: &str, scopes: &[&str]) -> String {
    uts_common::auth::mint_hs256(SECRET, tenant, "tester@example.com", scopes, 600).expect("minting a test token")
}

/// Polls `check` (every 50 ms) until it returns `Some`; panics when `timeout` passed first.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "condition not reached within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An application running on the test's runtime until [`Served::stop`] (or drop, which only
/// cancels it).
pub struct Served {
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    /// Spawns `run(shutdown)`.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self { shutdown, task: Some(task) }
    }

    /// Cancels it and waits for it to finish; panics unless it stopped cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the application panicked").expect("the application failed");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

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

/// Produces `messages`, each (key, payload), to `topic` in order, each acknowledged by the
/// brokers before the next.
pub async fn produce(args: &KafkaArgs, topic: &str, messages: &[(&[u8], &[u8])]) {
    let (producer, _) = kafka::durable_producer(args).expect("a producer");
    for (key, payload) in messages {
        kafka::produce_durably(&producer, topic, key, payload, Duration::from_secs(10))
            .await
            .expect("producing a test message");
    }
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

/// The payloads of `messages` (as [`read_topic`] returns them) decoded as `M`; a payload that
/// is not an `M` fails the test.
pub fn decode_all<M: prost::Message + Default>(messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<M> {
    messages.iter().map(|(_, payload)| M::decode(payload.as_slice()).expect("a message of the expected type")).collect()
}

/// [`read_topic`], each payload decoded as `M`.
pub async fn read_messages<M: prost::Message + Default>(
    args: &KafkaArgs,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<M> {
    decode_all(&read_topic(args, topic, count, timeout).await)
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

/// Registers `tenants`, each (id, type, operator), straight in PostgreSQL.
pub async fn register_tenants(pool: &sqlx::PgPool, tenants: &[(&str, TenantType, Option<&str>)]) {
    for (id, kind, operator) in tenants {
        let tenant =
            Tenant { tenant_id: (*id).into(), tenant_type: *kind, operator_tenant_id: operator.map(Into::into) };
        uts_common::tenants::upsert(pool, &tenant).await.expect("registering a test tenant");
    }
}

/// The JSON body of `GET url` (panics unless the answer is JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = client.get(url).send().await.unwrap_or_else(|err| panic!("GET {url}: {err}"));
    response.json().await.unwrap_or_else(|err| panic!("GET {url}: not JSON: {err}"))
}

/// The limits of `uts_common::http::serve` on a real listener, as a client sees them.
pub mod http_limits {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A client that sends `head` (headers never finished) is cut off, not before `timeout`.
    pub async fn unfinished_headers_are_cut_off(addr: SocketAddr, head: &str, timeout: Duration) {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
        assert!(read.is_ok(), "a client that never finished its headers still held its connection after 5 s");
        assert!(started.elapsed() >= timeout.mul_f32(0.8), "closed before the header timeout");
    }

    /// A request whose declared body never comes (`head` ends inside it) is answered 503 at
    /// the request timeout, not before; returns the answer's text.
    pub async fn a_body_that_never_comes_is_503(addr: SocketAddr, head: &str, timeout: Duration) -> String {
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut answer = vec![0; 4096];
        let n =
            tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut answer)).await.expect("no answer").unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains(&format!("did not complete within {} ms", timeout.as_millis())), "{answer}");
        assert!(started.elapsed() >= timeout.mul_f32(0.85), "answered before the request timeout");
        answer
    }

    /// With two connections open on a listener limited to 2, a third one's `request` waits
    /// and is served once another closes; returns its answer.
    pub async fn a_third_connection_waits_for_a_free_one(addr: SocketAddr, request: &[u8]) -> String {
        let (first, _second) = (TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap());
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let waiting = tokio::time::timeout(Duration::from_secs(1), third.read_to_end(&mut answer)).await;
        assert!(waiting.is_err(), "a third connection was served beyond the limit of 2: {answer:?}");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
            .await
            .expect("the third connection was not served once another closed")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
}
