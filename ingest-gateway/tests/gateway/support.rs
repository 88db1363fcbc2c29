//! Test support: a real gateway on port 0 against the real Kafka (random topic prefix) and a
//! fresh PostgreSQL database from `#[sqlx::test]`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ingest_gateway::{Application, Config};
use sqlx::PgPool;
use uts_common::config::KafkaArgs;
use uts_common::domain::TenantType;
use uts_common::proto::v1;
use uts_testkit::{brokers, Served};
pub use uts_testkit::{eventually, SECRET};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub topic: String,
    pub kafka: KafkaArgs,
    pub client: reqwest::Client,
    served: Served,
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
        uts_common::kafka::ensure_topics(&config.stage.kafka, &config.stage.kafka.topics())
            .await
            .expect("creating test topics");
        let registered = [
            ("acme", TenantType::Operator, None),
            ("devco", TenantType::Developer, None),
            ("plant-1", TenantType::Iot, Some("acme")),
            ("buyer", TenantType::Customer, None),
        ];
        uts_testkit::register_tenants(&pool, &registered).await;
        let (topic, kafka) = (config.stage.kafka.topics().usage_jobs, config.stage.kafka.clone());
        let app = Application::build(config, pool.clone()).await.expect("building the gateway");
        let addr = app.local_addr();
        let served = Served::spawn(|shutdown| app.run_until_stopped(shutdown));
        Self { addr, topic, kafka, client: reqwest::Client::new(), served }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/usagetransparency/v3{path}", self.addr)
    }

    pub fn token(tenant: &str, scopes: &[&str]) -> String {
        uts_testkit::token(tenant, scopes)
    }

    pub async fn post_jobs(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url("/usagesJobs")).bearer_auth(token).json(body).send().await.expect("POST /usagesJobs")
    }

    /// Every message of the jobs topic, read from the beginning of each partition up to its
    /// high watermark at the time of the call.
    pub async fn read_jobs(&self) -> Vec<v1::UsageJob> {
        let messages = uts_testkit::read_topic_to_end(&self.kafka, &self.topic, Duration::from_secs(20)).await.unwrap();
        uts_testkit::decode_all(&messages)
    }

    pub async fn stop(mut self) {
        self.served.stop().await;
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
