//! The receiver over real HTTP on port 0: deduplication, listing, failure injection, the token
//! and persistence across a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use billing_receiver::{Application, Config};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uts_testkit::Served;

struct TestReceiver {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    client: reqwest::Client,
    token: Option<String>,
    served: Served,
}

impl TestReceiver {
    async fn start(extra: &[&str]) -> Self {
        let mut args = vec!["billing-receiver", "--listen-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"];
        args.extend_from_slice(extra);
        let config = Config::parse_from(args);
        let token = extra.iter().find_map(|arg| arg.strip_prefix("--token=")).map(str::to_owned);
        let app = Application::build(config).await.expect("building the receiver");
        let (addr, admin_addr) = (app.local_addr(), app.admin_addr());
        let served = Served::spawn(|shutdown| app.run_until_stopped(shutdown));
        Self { addr, admin_addr, client: reqwest::Client::new(), token, served }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn post(&self, key: &str, body: &Value) -> reqwest::Response {
        self.authorized(self.client.post(self.url("/billing/v1/records")))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST /billing/v1/records")
    }

    async fn list(&self) -> Vec<Value> {
        let response = self.authorized(self.client.get(self.url("/billing/v1/records"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn set_failures(&self, plan: Value) -> Value {
        let response = self.authorized(self.client.post(self.url("/admin/failures"))).json(&plan).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn failures(&self) -> Value {
        self.authorized(self.client.get(self.url("/admin/failures"))).send().await.unwrap().json().await.unwrap()
    }

    async fn stop(mut self) {
        self.served.stop().await;
    }
}

/// One version of one daily bucket, as the billing-forwarder sends it.
fn record(version: u64, value: &str) -> Value {
    json!({
        "bucket": {"providerTenant": "acme", "consumerTenant": "buyer", "application": "manage-my-machines",
                   "unit": "mmm-recurring-unit", "day": "2024-05-01"},
        "version": version,
        "value": value,
        "usagesCount": 3,
        "coveredVersions": {"from": version, "to": version},
        "jobs": [{"jobId": "0190a1b2-0000-7000-8000-000000000001", "usagesCount": 3}]
    })
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let error = &body["errors"][0];
    (status, error["code"].as_str().unwrap().to_owned(), error["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_original_record() {
    let receiver = TestReceiver::start(&[]).await;
    let response = receiver.post("acme/buyer/2024-05-01/v1", &record(1, "20.5")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = response.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    let record_id = first["recordId"].as_str().unwrap();
    assert_eq!(location, format!("/billing/v1/records/{record_id}"));

    let response = receiver.post("acme/buyer/2024-05-01/v1", &record(1, "20.5")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["recordId"], first["recordId"]);
    assert_eq!(again["receivedAt"], first["receivedAt"]);
    assert_eq!(receiver.list().await.len(), 1, "the duplicate stored nothing");
    receiver.stop().await;
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_a_conflict() {
    let receiver = TestReceiver::start(&[]).await;
    assert_eq!(receiver.post("k", &record(1, "20.5")).await.status(), StatusCode::CREATED);
    let (status, code, message) = error_of(receiver.post("k", &record(1, "20.6")).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code, "mdsp.core.generic.conflict");
    assert!(message.starts_with("Idempotency-Key"), "{message}");
    let stored = receiver.list().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["record"]["value"], "20.5", "the original is kept");
    receiver.stop().await;
}

#[tokio::test]
async fn records_are_listed_in_arrival_order_and_readable_one_by_one() {
    let receiver = TestReceiver::start(&[]).await;
    let mut ids = Vec::new();
    for version in 1..=3 {
        let body = record(version, &format!("{version}.50"));
        let answer: Value = receiver.post(&format!("key-{version}"), &body).await.json().await.unwrap();
        ids.push(answer["recordId"].as_str().unwrap().to_owned());
    }
    let stored = receiver.list().await;
    let listed: Vec<_> = stored.iter().map(|r| r["recordId"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, ids);
    assert_eq!(stored[1]["idempotencyKey"], "key-2");
    assert_eq!(stored[1]["record"], record(2, "2.50"), "the body is kept exactly as sent");

    let one = uts_testkit::get_json(&receiver.client, &receiver.url(&format!("/billing/v1/records/{}", ids[2]))).await;
    assert_eq!(one, stored[2]);
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response =
            receiver.client.get(receiver.url(&format!("/billing/v1/records/{unknown}"))).send().await.unwrap();
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "mdsp.core.generic.noMatch"));
    }
    receiver.stop().await;
}

#[tokio::test]
async fn injected_failures_fail_exactly_count_requests_and_store_nothing() {
    let receiver = TestReceiver::start(&[]).await;
    let status = receiver.set_failures(json!({"mode": "http503", "count": 2})).await;
    assert_eq!(status, json!({"mode": "http503", "remainingCount": 2, "remainingSeconds": null}));

    for attempt in 0..2 {
        let response = receiver.post("k", &record(1, "1")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "attempt {attempt}");
        assert_eq!(response.headers()["retry-after"], "1");
    }
    assert!(receiver.list().await.is_empty(), "failed requests store nothing");
    assert_eq!(receiver.failures().await["mode"], Value::Null);
    let response = receiver.post("k", &record(1, "1")).await;
    assert_eq!(response.status(), StatusCode::CREATED, "the retry after the failures is the first store");
    assert_eq!(receiver.list().await.len(), 1);

    let metrics = reqwest::get(format!("http://{}/metrics", receiver.admin_addr)).await.unwrap().text().await.unwrap();
    for outcome in ["stored", "injected_failure"] {
        assert!(
            metrics.contains(&format!("uts_billing_receiver_records_total{{outcome=\"{outcome}\"}}")),
            "{outcome} missing from:\n{metrics}"
        );
    }
    receiver.stop().await;
}

#[tokio::test]
async fn a_failure_plan_without_limits_lasts_until_cleared() {
    let receiver = TestReceiver::start(&[]).await;
    receiver.set_failures(json!({"mode": "http500"})).await;
    for _ in 0..3 {
        let (status, code, _) = error_of(receiver.post("k", &record(1, "1")).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "mdsp.core.generic.internalServerError")
        );
    }
    let response = receiver.authorized(receiver.client.delete(receiver.url("/admin/failures"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(receiver.failures().await, json!({"mode": null, "remainingCount": null, "remainingSeconds": null}));
    assert_eq!(receiver.post("k", &record(1, "1")).await.status(), StatusCode::CREATED);

    let status = receiver.set_failures(json!({"mode": "timeout", "seconds": 60})).await;
    assert_eq!(status["mode"], "timeout");
    assert!(status["remainingSeconds"].as_f64().unwrap() > 59.0, "{status}");
    let (status, code, message) = error_of(
        receiver.client.post(receiver.url("/admin/failures")).json(&json!({"mode": "http404"})).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "mdsp.core.generic.invalidRequestBodyProperty"));
    assert!(message.starts_with("mode "), "{message}");
    receiver.stop().await;
}

#[tokio::test]
async fn the_timeout_mode_holds_the_request_then_answers_504() {
    let receiver = TestReceiver::start(&["--timeout-hold-ms=200"]).await;
    receiver.set_failures(json!({"mode": "timeout", "count": 1})).await;
    let started = Instant::now();
    let (status, code, _) = error_of(receiver.post("k", &record(1, "1")).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::GATEWAY_TIMEOUT, "mdsp.core.generic.gatewayTimeout"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(receiver.list().await.is_empty());
    assert_eq!(receiver.post("k", &record(1, "1")).await.status(), StatusCode::CREATED);
    receiver.stop().await;
}

#[tokio::test]
async fn a_held_request_does_not_delay_shutdown() {
    let receiver = TestReceiver::start(&["--timeout-hold-ms=600000"]).await;
    receiver.set_failures(json!({"mode": "timeout", "count": 1})).await;
    let held = tokio::spawn({
        let (client, url) = (receiver.client.clone(), receiver.url("/billing/v1/records"));
        async move { client.post(url).header("Idempotency-Key", "k").json(&record(1, "1")).send().await.unwrap().status() }
    });
    // The plan is used up once the request is being held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.failures().await["mode"] == "timeout" {
        assert!(Instant::now() < deadline, "the request never reached the receiver");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    receiver.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "shutdown waited for the hold");
    assert_eq!(held.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn fail_first_fails_the_first_requests_with_500() {
    let receiver = TestReceiver::start(&["--fail-first=2"]).await;
    for _ in 0..2 {
        assert_eq!(receiver.post("k", &record(1, "1")).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(receiver.post("k", &record(1, "1")).await.status(), StatusCode::CREATED);
    receiver.stop().await;
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let receiver = TestReceiver::start(&["--token=test-billing-token"]).await;
    let url = receiver.url("/billing/v1/records");
    let client = &receiver.client;
    for request in [
        client.post(&url).header("Idempotency-Key", "k").json(&record(1, "1")),
        client.post(&url).header("Idempotency-Key", "k").json(&record(1, "1")).bearer_auth("wrong"),
        client
            .post(&url)
            .header("Idempotency-Key", "k")
            .json(&record(1, "1"))
            .basic_auth("test-billing-token", None::<&str>),
        client.get(&url),
        client.get(receiver.url("/admin/failures")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "mdsp.core.generic.unauthorized"));
    }
    assert!(receiver.list().await.is_empty(), "nothing stored without the token");
    assert_eq!(receiver.post("k", &record(1, "1")).await.status(), StatusCode::CREATED);
    let health = client.get(receiver.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "/healthz needs no token");
    receiver.stop().await;
}

#[tokio::test]
async fn records_and_their_keys_survive_a_restart_with_a_data_file() {
    let dir: PathBuf = std::env::temp_dir().join(format!("billing-receiver-test-{}", uuid::Uuid::new_v4()));
    let file = dir.join("records.jsonl");
    let flag = format!("--data-file={}", file.display());

    let receiver = TestReceiver::start(&[&flag]).await;
    let first: Value = receiver.post("k1", &record(1, "20.5")).await.json().await.unwrap();
    receiver.post("k2", &record(2, "21.5")).await;
    let before = receiver.list().await;
    receiver.stop().await;

    let receiver = TestReceiver::start(&[&flag]).await;
    assert_eq!(receiver.list().await, before, "everything is reloaded, in order");
    let response = receiver.post("k1", &record(1, "20.5")).await;
    assert_eq!(response.status(), StatusCode::OK, "the key still deduplicates");
    let again: Value = response.json().await.unwrap();
    assert_eq!((&again["recordId"], &again["receivedAt"]), (&first["recordId"], &first["receivedAt"]));
    assert_eq!(receiver.post("k1", &record(1, "99")).await.status(), StatusCode::CONFLICT);
    assert_eq!(receiver.post("k3", &record(3, "22.5")).await.status(), StatusCode::CREATED);
    receiver.stop().await;

    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 3, "one line per stored record:\n{lines}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let receiver = TestReceiver::start(&[]).await;
    let mut missing_day = record(1, "1");
    missing_day["bucket"].as_object_mut().unwrap().remove("day");
    let mut numeric_value = record(1, "1");
    numeric_value["value"] = json!(20.5);
    let mut bad_job = record(1, "1");
    bad_job["jobs"] = json!([{"jobId": "a", "usagesCount": 1}, {"usagesCount": 2}]);
    for (body, code, field) in [
        (missing_day, "missingRequestBodyProperty", "bucket.day"),
        (numeric_value, "invalidRequestBodyProperty", "value"),
        (bad_job, "missingRequestBodyProperty", "jobs[1].jobId"),
        (json!([]), "invalidRequestBodyProperty", ""),
    ] {
        let (status, actual_code, message) = error_of(receiver.post("k", &body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(actual_code, format!("mdsp.core.generic.{code}"), "{field}");
        assert!(message.starts_with(if field.is_empty() { "request body" } else { field }), "{field}: {message}");
    }

    let response =
        receiver.client.post(receiver.url("/billing/v1/records")).json(&record(1, "1")).send().await.unwrap();
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "mdsp.core.generic.missingParameter"));
    assert_eq!(message, "Idempotency-Key is required");

    let response = receiver
        .client
        .post(receiver.url("/billing/v1/records"))
        .header("Idempotency-Key", "k")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("request body is not valid JSON"), "{message}");
    assert!(receiver.list().await.is_empty(), "nothing invalid is stored");
    receiver.stop().await;
}
