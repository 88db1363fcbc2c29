//! Kafka goes away and comes back: POSTs fail fast with 503 while it is down, nothing is
//! half-written, and the same gateway process accepts again once the broker is back.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use support::{eventually, seed_sample, TestGateway};

fn kafka_script(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh");
    let status = Command::new("bash").arg(&script).arg(action).status().expect("running kafka.sh");
    assert!(status.success(), "kafka.sh {action} failed");
}

/// Restarts Kafka even when an assertion fails, so later tests find a broker.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        kafka_script("start");
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
#[ignore = "stops and restarts the shared local Kafka broker; deploy/local/test.sh runs it alone after the other tests"]
async fn kafka_down_means_fast_503_and_kafka_back_means_202(pool: PgPool) {
    let gateway = TestGateway::start(pool, &["--kafka-produce-timeout-ms=3000"]).await;
    let token = TestGateway::token("acme", &["uts.usages.write"]);
    let before = gateway.post_jobs(&token, &seed_sample()).await;
    assert_eq!(before.status(), StatusCode::ACCEPTED);
    let before: Value = before.json().await.unwrap();

    let _restart = RestartOnDrop;
    kafka_script("stop");
    // Every attempt from here on carries one Idempotency-Key, as a well-behaved client's retries
    // do: whatever the broker did with a refused attempt, it can only ever be this one job.
    let post = || {
        gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "outage-retry-1")
            .json(&seed_sample())
            .send()
    };
    let started = Instant::now();
    let during = post().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(during.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(during.headers().contains_key("retry-after"));
    let body: Value = during.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.serviceUnavailable");
    println!("503 answered {waited:?} after the broker stopped");
    assert!(waited < Duration::from_secs(8), "503 took {waited:?}");

    kafka_script("start");
    let after: Value = eventually(Duration::from_secs(90), || async {
        let response = post().await.unwrap();
        if response.status() == StatusCode::ACCEPTED {
            Some(response.json().await.unwrap())
        } else {
            None
        }
    })
    .await;

    // Only acknowledged jobs are in Kafka, both of them.
    let mut ids: Vec<String> = gateway.read_jobs().into_iter().map(|j| j.job_id).collect();
    ids.sort();
    ids.dedup();
    let mut expected = vec![before["id"].as_str().unwrap().to_owned(), after["id"].as_str().unwrap().to_owned()];
    expected.sort();
    assert_eq!(ids, expected);
    gateway.stop().await;
}
