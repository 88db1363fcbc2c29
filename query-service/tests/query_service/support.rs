//! Test support: a real query service on port 0 against a fresh PostgreSQL database from
//! `#[sqlx::test]`.

use std::net::SocketAddr;

use clap::Parser;
use query_service::{Application, Config};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use uts_common::config::KafkaArgs;
use uts_testkit::Served;
pub use uts_testkit::SECRET;

pub const ADMIN: &[&str] = &["uts.admin"];

pub struct TestQueryService {
    pub addr: SocketAddr,
    pub pool: PgPool,
    /// The service's own topics.
    pub kafka: KafkaArgs,
    pub client: reqwest::Client,
    /// An admin token of the operator running the service.
    pub admin: String,
    served: Served,
}

impl TestQueryService {
    /// Rate limiting off: the tests call faster than any client should.
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, &["--rate-limit-per-second=0"]).await
    }

    /// Its own (empty) topics and group: the projection must not touch the local stack's.
    /// [`start`](Self::start) with `operator` registered as an operator tenant.
    pub async fn with_operator(pool: PgPool, operator: &str) -> Self {
        let service = Self::start(pool).await;
        service.tenant(operator, "operator", None).await;
        service
    }

    pub async fn start_with(pool: PgPool, extra_args: &[&str]) -> Self {
        let kafka = uts_testkit::isolated_kafka(2).await;
        let group = format!("query-{}", kafka.topic_prefix);
        Self::start_on(pool, kafka, &group, extra_args).await
    }

    /// On the given topics and consumer group (a new group replays the topics from the start).
    pub async fn start_on(pool: PgPool, kafka: KafkaArgs, group: &str, extra_args: &[&str]) -> Self {
        let mut args = vec![
            "query-service".to_owned(),
            "--listen-addr=127.0.0.1:0".to_owned(),
            "--admin-addr=127.0.0.1:0".to_owned(),
            "--database-url=postgres://unused".to_owned(),
            format!("--jwt-hs256-secret={SECRET}"),
            format!("--kafka-brokers={}", kafka.brokers),
            format!("--topic-prefix={}", kafka.topic_prefix),
            format!("--consumer-group={group}"),
        ];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let config = Config::parse_from(args);
        let app = Application::build(config, pool.clone()).await.expect("building the query service");
        let addr = app.local_addr();
        let served = Served::spawn(|shutdown| app.run_until_stopped(shutdown));
        Self {
            addr,
            pool,
            kafka,
            client: reqwest::Client::new(),
            admin: Self::token("service-operator", ADMIN),
            served,
        }
    }

    /// `path` is relative to the public API's base path.
    pub fn api(&self, path: &str) -> String {
        format!("http://{}/api/usagetransparency/v3{path}", self.addr)
    }

    /// `path` is relative to the admin API's base path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/usagetransparency/v3/admin{path}", self.addr)
    }

    pub fn token(tenant: &str, scopes: &[&str]) -> String {
        uts_testkit::token(tenant, scopes)
    }

    /// Sends `body` (as JSON, when given) with the admin token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        self.call_as(&self.admin, method, path, body).await
    }

    pub async fn call_as(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("sending a request")
    }

    /// Sends and expects `status`; returns the JSON body (Null when there is none).
    pub async fn expect(&self, method: Method, path: &str, body: Option<Value>, status: StatusCode) -> Value {
        let what = format!("{method} {path}");
        let response = self.call(method, path, body).await;
        let actual = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(actual, status, "{what}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// Registers a tenant through the API.
    pub async fn tenant(&self, id: &str, kind: &str, operator: Option<&str>) {
        let mut body = serde_json::json!({ "tenantType": kind });
        if let Some(operator) = operator {
            body["operatorTenantId"] = operator.into();
        }
        self.expect(Method::PUT, &format!("/tenants/{id}"), Some(body), StatusCode::CREATED).await;
    }

    pub async fn stop(mut self) {
        self.served.stop().await;
    }
}

/// An error answer's parts.
#[derive(Debug)]
pub struct ErrorAnswer {
    pub status: StatusCode,
    /// Without the `mdsp.core.generic.` prefix.
    pub code: String,
    pub message: String,
    /// The value of the first `messageParameters` entry: the property or parameter named.
    pub names: Option<String>,
}

/// The string `value[key]`, which must be there.
pub fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_else(|| panic!("no string {key} in {value}")).to_owned()
}

pub async fn error_of(response: reqwest::Response) -> ErrorAnswer {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let error = &body["errors"][0];
    assert!(error["logref"].is_string(), "{body}");
    let code = error["code"].as_str().unwrap();
    ErrorAnswer {
        status,
        code: code.strip_prefix("mdsp.core.generic.").expect("an mdsp.core.generic code").to_owned(),
        message: error["message"].as_str().unwrap().to_owned(),
        names: error["messageParameters"][0]["value"].as_str().map(str::to_owned),
    }
}
