//! The job projections and GET endpoints against the real Kafka and PostgreSQL: messages are
//! produced straight to uts.usage-jobs and uts.status (in awkward orders, with duplicates) and
//! read back over HTTP.

use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::auth::mint_hs256;
use uts_common::config::KafkaArgs;
use uts_common::domain::to_timestamp;
use uts_common::kafka;
use uts_common::proto::{v1, Message};
use uts_common::testing::isolated_kafka;

const SECRET: &str = "query-test-secret-0123456789abcdef";

struct Service {
    base: String,
    kafka: KafkaArgs,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(pool: PgPool) -> Service {
    let kafka = isolated_kafka(2).await;
    let config = query_service::Config::parse_from([
        "query-service".to_owned(),
        "--listen-addr=127.0.0.1:0".to_owned(),
        "--admin-addr=127.0.0.1:0".to_owned(),
        "--database-url=postgres://unused".to_owned(),
        format!("--jwt-hs256-secret={SECRET}"),
        format!("--kafka-brokers={}", kafka.brokers),
        format!("--topic-prefix={}", kafka.topic_prefix),
        format!("--consumer-group=query-{}", kafka.topic_prefix),
    ]);
    let app = query_service::Application::build(config, pool).await.unwrap();
    let base = format!("http://{}/api/usagetransparency/v3", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Service { base, kafka, client: reqwest::Client::new(), shutdown }
}

impl Service {
    async fn produce(&self, topic: &str, key: &str, payload: Vec<u8>) {
        let (producer, _) = kafka::durable_producer(&self.kafka).unwrap();
        kafka::produce_durably(&producer, topic, key.as_bytes(), &payload, Duration::from_secs(10)).await.unwrap();
    }

    async fn job(&self, job: &v1::UsageJob) {
        self.produce(&self.kafka.topics().usage_jobs, &job.job_id, job.encode_to_vec()).await;
    }

    async fn event(&self, event: &v1::StatusEvent) {
        self.produce(&self.kafka.topics().status, &event.job_id, event.encode_to_vec()).await;
    }

    async fn get(&self, tenant: &str, path: &str) -> (StatusCode, Value) {
        let token = mint_hs256(SECRET, tenant, "reader", &["uts.usages.read"], 600).unwrap();
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `done` holds for its body, or panics at the deadline.
    async fn until(&self, tenant: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(tenant, path).await;
            if status == StatusCode::OK && done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never reached the expected state; last: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn job(id: &str, tenant: &str) -> v1::UsageJob {
    let usage = |index: u32, unit: &str| v1::Usage {
        index,
        value: "1.5".into(),
        unit: unit.into(),
        datetime: Some(to_timestamp(chrono::Utc::now())),
    };
    v1::UsageJob {
        job_id: id.into(),
        submitter_tenant: tenant.into(),
        received_at: Some(to_timestamp(chrono::Utc::now())),
        usages_count: 3,
        users: vec![v1::UserUsages {
            tenant_id: "plant-9".into(),
            user_id: "u".into(),
            user_type: v1::UserType::User as i32,
            resources: vec![v1::ResourceUsages {
                application: "app".into(),
                alias: "app".into(),
                resource: "r".into(),
                usages: vec![usage(0, "u1"), usage(1, "u1"), usage(2, "u2")],
            }],
        }],
        ..Default::default()
    }
}

fn event(id: &str, job: &str, steps: &[(&str, v1::UsageStatus, v1::UsageStatus, u32, bool)], errors: Vec<v1::UsageError>) -> v1::StatusEvent {
    v1::StatusEvent {
        event_id: id.into(),
        job_id: job.into(),
        transitions: steps
            .iter()
            .map(|(unit, from, to, count, terminal)| v1::StatusTransition {
                application: "app".into(),
                unit: (*unit).into(),
                from: *from as i32,
                to: *to as i32,
                count: *count,
                terminal: *terminal,
            })
            .collect(),
        errors,
        ..Default::default()
    }
}

fn summary(body: &Value) -> Vec<(String, String, i64)> {
    body["usagesSummary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["unit"].as_str().unwrap().to_owned(), s["processStatus"].as_str().unwrap().to_owned(), s["usagesCount"].as_i64().unwrap()))
        .collect()
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_moves_from_accepted_to_completed_whatever_the_order_of_its_events(pool: PgPool) {
    use v1::UsageStatus as S;
    let service = start(pool).await;
    service.job(&job("job-1", "acme")).await;
    let body = service.until("acme", "/usagesJobs/job-1", |b| b["status"] == "ACCEPTED").await;
    assert_eq!(body["usagesCount"], 3);
    assert_eq!(summary(&body), vec![("u1".into(), "ACCEPTED".into(), 2), ("u2".into(), "ACCEPTED".into(), 1)]);

    // The aggregator's events arrive before the verifier's, and one of them twice.
    let aggregated_u1 = event("aggregator:job-1:u1", "job-1", &[("u1", S::Verified, S::Aggregated, 2, true)], vec![]);
    service.event(&aggregated_u1).await;
    service.event(&aggregated_u1).await;
    service
        .event(&event("verifier:job-1", "job-1", &[("u1", S::Accepted, S::Verified, 2, false), ("u2", S::Accepted, S::Verified, 1, false)], vec![]))
        .await;
    let body = service.until("acme", "/usagesJobs/job-1", |b| b["status"] == "INPROGRESS" && summary(b).len() == 2).await;
    assert_eq!(summary(&body), vec![("u1".into(), "AGGREGATED".into(), 2), ("u2".into(), "VERIFIED".into(), 1)]);
    service.event(&event("aggregator:job-1:u2", "job-1", &[("u2", S::Verified, S::Aggregated, 1, true)], vec![])).await;
    let body = service.until("acme", "/usagesJobs/job-1", |b| b["status"] == "COMPLETED").await;
    assert_eq!(summary(&body), vec![("u1".into(), "AGGREGATED".into(), 2), ("u2".into(), "AGGREGATED".into(), 1)]);

    // Status before job: a second job whose verifier event arrives first.
    service.event(&event("verifier:job-2", "job-2", &[("u1", S::Accepted, S::Verified, 2, false), ("u2", S::Accepted, S::Verified, 1, false)], vec![])).await;
    service.job(&job("job-2", "acme")).await;
    let body = service.until("acme", "/usagesJobs/job-2", |b| b["status"] == "INPROGRESS").await;
    assert_eq!(summary(&body), vec![("u1".into(), "VERIFIED".into(), 2), ("u2".into(), "VERIFIED".into(), 1)]);

    // Listing: today's jobs of the caller, newest first; filters count matching usages.
    let (status, list) = service.get("acme", "/usagesJobs").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(list["page"], json!({"number": 0, "size": 10, "totalElements": 2, "totalPages": 1}));
    let (_, filtered) = service.get("acme", "/usagesJobs?unit=u2&tenant=plant-9&size=1").await;
    assert_eq!(filtered["jobs"][0]["usagesCount"], 1);
    assert_eq!(filtered["page"]["totalElements"], 2);
    let (_, none) = service.get("acme", "/usagesJobs?application=other").await;
    assert_eq!(none["jobs"], json!([]));
    let (_, past) = service.get("acme", "/usagesJobs?date=2011-07-14").await;
    assert_eq!(past["page"]["totalElements"], 0);
    let (status, bad) = service.get("acme", "/usagesJobs?date=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["errors"][0]["code"], "mdsp.core.generic.invalidParameter");

    // Another tenant sees nothing of acme's.
    let (status, _) = service.get("globex", "/usagesJobs/job-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = service.get("globex", "/usagesJobs").await;
    assert_eq!(list["jobs"], json!([]));
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn failed_usages_make_errors_visible_by_class(pool: PgPool) {
    use v1::UsageStatus as S;
    let service = start(pool).await;
    service.job(&job("job-e", "acme")).await;
    let failing = v1::UserUsages {
        tenant_id: "plant-9".into(),
        user_id: "u".into(),
        user_type: v1::UserType::User as i32,
        resources: vec![v1::ResourceUsages {
            application: "app".into(),
            alias: "app".into(),
            resource: "r".into(),
            usages: vec![v1::Usage { index: 2, value: "1.5".into(), unit: "u2".into(), datetime: Some(to_timestamp(chrono::Utc::now())) }],
        }],
    };
    let error = v1::UsageError {
        code: "mdsp.uts.verification.valueAboveMaximum".into(),
        message: "value is above the rule's maximum 1".into(),
        message_parameters: vec![v1::MessageParameter { name: "maximum".into(), value: "1".into() }],
        logref: "job-e:max".into(),
        error_type: v1::ErrorType::Validation as i32,
        info: String::new(),
        error_data: Some(v1::usage_error::ErrorData::Validation(v1::ValidationErrorData { users: vec![failing] })),
    };
    service
        .event(&event(
            "verifier:job-e",
            "job-e",
            &[("u1", S::Accepted, S::Verified, 2, false), ("u2", S::Accepted, S::Verificationfailed, 1, true)],
            vec![error],
        ))
        .await;
    service.until("acme", "/usagesJobs/job-e", |b| b["status"] == "ERRORS").await;
    let body = service.until("acme", "/usagesJobs/job-e/errors?errorClass=validation", |b| b["errors"].as_array().is_some_and(|e| !e.is_empty())).await;
    let error = &body["errors"][0];
    assert_eq!(error["errorType"], "ValidationError");
    assert_eq!(error["messageParameters"], json!([{"name": "maximum", "value": "1"}]));
    assert_eq!(error["errorData"][0]["tenantId"], "plant-9");
    assert_eq!(error["errorData"][0]["resources"][0]["usages"][0]["value"], json!(1.5));
    let (_, billing) = service.get("acme", "/usagesJobs/job-e/errors?errorClass=billing").await;
    assert_eq!(billing["errors"], json!([]));
    let (status, _) = service.get("acme", "/usagesJobs/job-e/errors?errorClass=fatal").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = service.get("globex", "/usagesJobs/job-e/errors").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without uts.usages.read: 403.
    let token = mint_hs256(SECRET, "acme", "writer", &["uts.usages.write"], 600).unwrap();
    let response = service.client.get(format!("{}/usagesJobs/job-e", service.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}
