//! Test support: a real gateway on port 0 against the real Kafka (random topic prefix) and a
//! fresh PostgreSQL database from `#[sqlx::test]`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use ingest_gateway::{Application, Config};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::auth::mint_hs256;
use uts_common::domain::TenantType;
use uts_common::proto::{v1, Message};
use uts_common::tenants::{self, Tenant};

pub const SECRET: &str = "integration-test-secret-0123456789";

pub fn brokers() -> String {
    std::env::var("UTS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub topic: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    /// Starts a gateway with `extra` flags, registers tenants `acme` (operator), `devco`
    /// (developer), `plant-1` (IoT of acme) and `buyer` (customer).
    pub async fn start(pool: PgPool, extra: &[&str]) -> Self {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let brokers = brokers();
        let mut args = vec![
            "ingest-gateway",
            "--listen-addr=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            "--database-url=postgres://unused",
            "--topic-partitions=3",
        ];
        let owned = [
            format!("--kafka-brokers={brokers}"),
            format!("--topic-prefix={prefix}"),
            format!("--jwt-hs256-secret={SECRET}"),
        ];
        args.extend(owned.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let config = Config::parse_from(args);
        uts_common::kafka::ensure_topics(&config.kafka, &config.kafka.topics()).await.expect("creating test topics");
        for (id, kind, operator) in [
            ("acme", TenantType::Operator, None),
            ("devco", TenantType::Developer, None),
            ("plant-1", TenantType::Iot, Some("acme")),
            ("buyer", TenantType::Customer, None),
        ] {
            let tenant =
                Tenant { tenant_id: id.into(), tenant_type: kind, operator_tenant_id: operator.map(Into::into) };
            tenants::upsert(&pool, &tenant).await.unwrap();
        }
        let topic = config.kafka.topics().usage_jobs;
        let app = Application::build(config, pool.clone()).await.expect("building the gateway");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self { addr, topic, pool, client: reqwest::Client::new(), shutdown, task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/usagetransparency/v3{path}", self.addr)
    }

    pub fn token(tenant: &str, scopes: &[&str]) -> String {
        mint_hs256(SECRET, tenant, "tester@example.com", scopes, 600).unwrap()
    }

    pub async fn post_jobs(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url("/usagesJobs")).bearer_auth(token).json(body).send().await.expect("POST /usagesJobs")
    }

    /// Every message of the jobs topic, read from the beginning of each partition up to its
    /// high watermark at the time of the call.
    pub fn read_jobs(&self) -> Vec<v1::UsageJob> {
        read_all(&self.topic)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads every message of `topic` up to the current high watermarks.
pub fn read_all(topic: &str) -> Vec<v1::UsageJob> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap();
        remaining += high - low;
        ends.push(high);
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut jobs = Vec::new();
    while remaining > 0 {
        assert!(Instant::now() < deadline, "timed out reading {topic}: {remaining} messages missing");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            if message.offset() < ends[message.partition() as usize] {
                remaining -= 1;
                jobs.push(v1::UsageJob::decode(message.payload().unwrap()).unwrap());
            }
        }
    }
    jobs
}

/// Polls `check` until it returns `Some` or the deadline passes.
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

/// The sample from the original's documentation (seeds/002).
pub fn seed_sample() -> serde_json::Value {
    serde_json::json!({
      "users": [{
        "tenantId": "acme",
        "userId": "john.doe@healthcare.siemens.com",
        "userType": "user",
        "resources": [{
          "application": "manage-my-machines",
          "alias": "analyze-my-performance",
          "resource": "asset-id-1",
          "usages": [{ "value": 20, "unit": "mmm-recurring-unit", "datetime": "2011-07-14T19:43:37Z" }]
        }]
      }]
    })
}

/// A body with `n` usages for tenant `tenant`.
pub fn batch(tenant: &str, n: usize) -> serde_json::Value {
    let usages: Vec<_> =
        (0..n).map(|i| serde_json::json!({"value": i, "unit": "u", "datetime": "2024-05-01T10:00:00Z"})).collect();
    serde_json::json!({"users":[{"tenantId": tenant, "resources":[{"application":"app","resource":"r","usages": usages}]}]})
}
