//! Harness for black-box tests of the whole pipeline: the gateway, verifier, aggregator,
//! billing-forwarder and the reference billing receiver, started in-process against the real
//! Kafka (a random topic prefix per test) and a fresh PostgreSQL database, driven through the
//! gateway's HTTP API and observed through `uts.status`, the database and the receiver.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::auth::mint_hs256;
use uts_common::config::KafkaArgs;
use uts_common::domain::TenantType;
use uts_common::proto::{v1, Message};
use uts_testkit::{isolated_kafka, read_topic_to_end};

pub use uts_testkit::SECRET;

/// Bearer token of billing receipts by callback.
const RECEIPTS_TOKEN: &str = "e2e-receipts-token-0123456789";

pub struct Pipeline {
    pub kafka: KafkaArgs,
    pub pool: PgPool,
    pub gateway: SocketAddr,
    pub billing_url: String,
    /// Base URL of the query service's API.
    pub query_api: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn common_args(kafka: &KafkaArgs, flags: &[String], name: &str) -> Vec<String> {
    let mut args = vec![
        name.to_owned(),
        "--database-url=postgres://unused".to_owned(),
        "--admin-addr=127.0.0.1:0".to_owned(),
        format!("--kafka-brokers={}", kafka.brokers),
        format!("--topic-prefix={}", kafka.topic_prefix),
    ];
    args.extend(flags.iter().filter(|flag| !flag.starts_with("--kafka-brokers")).cloned());
    args
}

/// Runs a stage in the background; a stage that stops with an error says so on stderr (the test
/// then times out waiting for it, and the output shows why).
fn spawn_stage(name: &'static str, stage: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(err) = stage.await {
            eprintln!("STAGE FAILED: {name}: {err:#}");
        }
    });
}

impl Pipeline {
    /// Starts every stage. Tenants: `op` (operator, the submitter), `prov` (developer, owner of
    /// rules), `plant` (IoT of `op`, with `app` provisioned), `buyer` (customer).
    pub async fn start(pool: PgPool) -> Self {
        Self::start_inner(pool, false, &[]).await
    }

    /// Like [`Pipeline::start`], on the brokers and with the Kafka settings of `kafka_flags`
    /// (`--kafka-brokers=…`, `--kafka-security-protocol=…`, …), given to every stage.
    pub async fn start_with_kafka(pool: PgPool, kafka_flags: &[String]) -> Self {
        Self::start_inner(pool, false, kafka_flags).await
    }

    /// Like [`Pipeline::start`], but the billing receiver answers 202 Accepted and sends each
    /// receipt later to the forwarder's receipts endpoint.
    pub async fn start_with_receipts_by_callback(pool: PgPool) -> Self {
        Self::start_inner(pool, true, &[]).await
    }

    async fn start_inner(pool: PgPool, callbacks: bool, kafka_flags: &[String]) -> Self {
        // Stage logs (RUST_LOG) show in the output of a failing test.
        uts_common::telemetry::init(
            &uts_common::config::TelemetryArgs {
                log_format: uts_common::config::LogFormat::Text,
                otlp_endpoint: None,
                trace_sample_ratio: 1.0,
            },
            "e2e",
        );
        let kafka = if kafka_flags.is_empty() {
            isolated_kafka(3).await
        } else {
            uts_testkit::isolated_kafka_on(3, kafka_flags).await
        };
        let shutdown = CancellationToken::new();
        let registered = [
            ("op", TenantType::Operator, None),
            ("prov", TenantType::Developer, None),
            ("plant", TenantType::Iot, Some("op")),
            ("buyer", TenantType::Customer, None),
        ];
        uts_testkit::register_tenants(&pool, &registered).await;
        sqlx::query("INSERT INTO provisioning (tenant_id, application) VALUES ('plant', 'app')")
            .execute(&pool)
            .await
            .unwrap();

        // Bound here, handed to the forwarder: the receiver needs its address first.
        let receipts_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receipts_port = receipts_listener.local_addr().unwrap().port();
        let mut args = vec![
            "billing-receiver".to_owned(),
            "--listen-addr=127.0.0.1:0".to_owned(),
            "--admin-addr=127.0.0.1:0".to_owned(),
        ];
        if callbacks {
            args.push(format!("--receipts-url=http://127.0.0.1:{receipts_port}/billing/v1/receipts"));
            args.push(format!("--receipts-token={RECEIPTS_TOKEN}"));
        }
        let receiver = billing_receiver::Application::build(billing_receiver::Config::parse_from(args)).await.unwrap();
        let billing_url = format!("http://{}/billing/v1/records", receiver.local_addr());
        spawn_stage("billing-receiver", receiver.run_until_stopped(shutdown.clone()));

        let mut args = common_args(&kafka, kafka_flags, "query-service");
        args.extend([
            "--listen-addr=127.0.0.1:0".to_owned(),
            format!("--jwt-hs256-secret={SECRET}"),
            format!("--consumer-group=q-{}", kafka.topic_prefix),
        ]);
        let query =
            query_service::Application::build(query_service::Config::parse_from(args), pool.clone()).await.unwrap();
        let query_addr = query.local_addr();
        let query_api = format!("http://{query_addr}/api/usagetransparency/v3");
        spawn_stage("query-service", query.run_until_stopped(shutdown.clone()));

        let mut args = common_args(&kafka, kafka_flags, "ingest-gateway");
        args.extend([
            "--listen-addr=127.0.0.1:0".to_owned(),
            format!("--jwt-hs256-secret={SECRET}"),
            format!("--query-service-url=http://{}", query_addr),
        ]);
        let gateway =
            ingest_gateway::Application::build(ingest_gateway::Config::parse_from(args), pool.clone()).await.unwrap();
        let gateway_addr = gateway.local_addr();
        spawn_stage("ingest-gateway", gateway.run_until_stopped(shutdown.clone()));

        let mut args = common_args(&kafka, kafka_flags, "verifier");
        args.extend(["--catalog-refresh-ms=0".to_owned(), format!("--consumer-group=v-{}", kafka.topic_prefix)]);
        spawn_stage(
            "verifier",
            verifier::run_with_pool(verifier::Config::parse_from(args), pool.clone(), shutdown.clone()),
        );

        let mut args = common_args(&kafka, kafka_flags, "aggregator");
        args.push(format!("--consumer-group=a-{}", kafka.topic_prefix));
        spawn_stage(
            "aggregator",
            aggregator::run_with_pool(aggregator::Config::parse_from(args), pool.clone(), shutdown.clone()),
        );

        let mut args = common_args(&kafka, kafka_flags, "billing-forwarder");
        args.extend([
            format!("--consumer-group=b-{}", kafka.topic_prefix),
            format!("--billing-url={billing_url}"),
            format!("--receipts-token={RECEIPTS_TOKEN}"),
            "--send-interval-ms=50".to_owned(),
            "--retry-base-ms=200".to_owned(),
        ]);
        spawn_stage(
            "billing-forwarder",
            billing_forwarder::run_with_receipts_listener(
                billing_forwarder::Config::parse_from(args),
                pool.clone(),
                receipts_listener,
                shutdown.clone(),
            ),
        );
        Self { kafka, pool, gateway: gateway_addr, billing_url, query_api, client: reqwest::Client::new(), shutdown }
    }

    pub fn token(tenant: &str) -> String {
        mint_hs256(SECRET, tenant, "e2e@example.com", &["uts.usages.write"], 600).unwrap()
    }

    /// A token of the operator running the service (`uts.admin`).
    pub fn admin_token() -> String {
        mint_hs256(SECRET, "service-operator", "", &["uts.admin"], 600).unwrap()
    }

    /// The one address (the gateway): every endpoint of the public API.
    pub fn base(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// GET `path` (from the root) on the one address with `token`; the JSON answer.
    pub async fn get_json(&self, path: &str, token: &str) -> serde_json::Value {
        let response = self.client.get(format!("{}{path}", self.base())).bearer_auth(token).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// Creates a client of the token service for `tenant` through the admin API; its secret.
    pub async fn create_client(&self, id: &str, tenant: &str, scopes: &[&str]) -> String {
        let body = serde_json::json!({"clientId": id, "tenantId": tenant, "scopes": scopes});
        let url = format!("{}/api/usagetransparency/v3/admin/clients", self.base());
        let response = self.client.post(url).bearer_auth(Self::admin_token()).json(&body).send().await.unwrap();
        let created: serde_json::Value = response.json().await.unwrap();
        created["clientSecret"].as_str().unwrap_or_else(|| panic!("no client created: {created}")).to_owned()
    }

    /// Posts a job as `tenant`; returns the job id. Panics unless the answer is 202.
    pub async fn post_job(&self, tenant: &str, body: &serde_json::Value) -> String {
        let response = self
            .client
            .post(format!("http://{}/api/usagetransparency/v3/usagesJobs", self.gateway))
            .bearer_auth(Self::token(tenant))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        let answer: serde_json::Value = response.json().await.unwrap();
        answer["id"].as_str().unwrap().to_owned()
    }

    /// Polls the status topic until `done` holds for the job's board, or panics at the deadline.
    pub async fn wait_for(&self, job_id: &str, timeout: Duration, done: impl Fn(&Board) -> bool) -> Board {
        let deadline = Instant::now() + timeout;
        loop {
            let board = self.board(job_id).await;
            if std::env::var_os("UTS_E2E_TRACE").is_some() {
                eprintln!("{:?} {job_id} {:?}", Instant::now(), board.nonzero());
            }
            if done(&board) {
                return board;
            }
            assert!(Instant::now() < deadline, "job {job_id} never reached the expected state: {board:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The job's usage counts per (application, unit, status), folded from `uts.status`.
    pub async fn board(&self, job_id: &str) -> Board {
        let messages =
            read_topic_to_end(&self.kafka, &self.kafka.topics().status, Duration::from_secs(20)).await.unwrap();
        let mut board = Board::default();
        for (key, payload) in messages {
            if key != job_id.as_bytes() {
                continue;
            }
            board.apply(&v1::StatusEvent::decode(payload.as_slice()).unwrap());
        }
        board
    }

    /// Polls `GET /usagesJobs/{id}` as `tenant` until its status is `status`.
    pub async fn wait_for_job_status(
        &self,
        tenant: &str,
        job_id: &str,
        status: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let token = mint_hs256(SECRET, tenant, "e2e@example.com", &["uts.usages.read"], 600).unwrap();
        let (deadline, url) = (Instant::now() + timeout, format!("{}/usagesJobs/{job_id}", self.query_api));
        loop {
            let request = self.client.get(&url).bearer_auth(&token);
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap_or_default();
            if body["status"] == status {
                return body;
            }
            assert!(Instant::now() < deadline, "job {job_id} never became {status}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn billing_records(&self) -> Vec<serde_json::Value> {
        self.client.get(&self.billing_url).send().await.unwrap().json().await.unwrap()
    }
}

pub use uts_common::status::Board;
