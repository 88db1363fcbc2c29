//! An administrator's change reaches the stages within seconds, end to end (the architecture
//! document's claim): a rule created and then tightened through the admin API of the real query
//! service (not by SQL), applied by a verifier process with the default catalog refresh (2 s)
//! to the jobs posted after it. And `UTS_REQUIRE_RULE` end to end: a unit without a rule fails
//! verification until its rule is created through the admin API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_testkit::isolated_kafka;

use super::stages::{billing_receiver, database_url, environment, seed, Stages, SECRET};

const UNIT: &str = "admin-unit";

struct Api {
    client: reqwest::Client,
    gateway: String,
    query: String,
}

impl Api {
    /// Sends until the service answers (it may still be starting); the status and JSON body.
    async fn send(&self, request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = request(&self.client).send().await {
                let status = response.status().as_u16();
                return (status, response.json().await.unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "the service never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts a job of one usage of `value` and waits for its final status.
    async fn job_status(&self, value: u32) -> String {
        let write = mint_hs256(SECRET, "op", "admin-test", &["uts.usages.write"], 600).unwrap();
        let read = mint_hs256(SECRET, "op", "admin-test", &["uts.usages.read"], 600).unwrap();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = json!({"users":[{"tenantId":"op","userId":"u","resources":[{"application":"app","resource":"r",
            "usages":[{"value": value, "unit": UNIT, "datetime": now}]}]}]});
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let (status, answer) =
                self.send(|c| c.post(format!("{}/usagesJobs", self.gateway)).bearer_auth(&write).json(&body)).await;
            if status == 202 {
                break answer["id"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "the job was never accepted: {status} {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let (_, job) = self.send(|c| c.get(format!("{}/usagesJobs/{id}", self.query)).bearer_auth(&read)).await;
            if let Some(status @ ("COMPLETED" | "ERRORS")) = job["status"].as_str() {
                return status.to_owned();
            }
            assert!(Instant::now() < deadline, "job {id} never ended: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every stage a real process with the default catalog refresh (and `extra` environment), and
/// the API client for it.
async fn start(pool: &PgPool, extra: &[(&str, &str)]) -> (Stages, Api, tokio_util::sync::CancellationToken) {
    let kafka = isolated_kafka(2).await;
    seed(pool, "another-unit").await; // the tenants (and a rule of another unit)
    let (billing_url, receiver_shutdown) = billing_receiver().await;
    let mut env = environment(&kafka, &database_url(pool), &billing_url);
    env.retain(|(name, _)| name != "UTS_CATALOG_REFRESH_MS"); // the default refresh
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let stages = Stages::start(&env, &[]).await;
    let (port, query_port) = (stages.port, stages.query_port);
    let api = Api {
        client: reqwest::Client::new(),
        gateway: format!("http://127.0.0.1:{port}/api/usagetransparency/v3"),
        query: format!("http://127.0.0.1:{query_port}/api/usagetransparency/v3"),
    };
    (stages, api, receiver_shutdown)
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn with_require_rule_a_unit_without_a_rule_fails_until_its_rule_is_created_through_the_admin_api(pool: PgPool) {
    let (mut stages, api, receiver_shutdown) = start(&pool, &[("UTS_REQUIRE_RULE", "true")]).await;
    let before = api.job_status(5).await;
    let admin = mint_hs256(SECRET, "op", "operator", &["uts.admin"], 600).unwrap();
    let rule = json!({"application": "app", "unit": UNIT, "ownerTenantId": "prov", "billingEnabled": true});
    let (status, created) =
        api.send(|c| c.post(format!("{}/admin/rules", api.query)).bearer_auth(&admin).json(&rule)).await;
    assert_eq!(status, 201, "{created}");
    let created_at = Instant::now();
    let mut after = api.job_status(5).await;
    while after != "COMPLETED" && created_at.elapsed() < Duration::from_secs(30) {
        after = api.job_status(5).await;
    }
    stages.stop().await;
    receiver_shutdown.cancel();
    assert_eq!(before, "ERRORS", "a usage of a unit without a rule passed with UTS_REQUIRE_RULE");
    assert_eq!(after, "COMPLETED", "the rule created through the admin API never applied");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_rule_changed_through_the_admin_api_applies_to_the_next_jobs_within_seconds(pool: PgPool) {
    let (mut stages, api, receiver_shutdown) = start(&pool, &[]).await;
    let admin = mint_hs256(SECRET, "op", "operator", &["uts.admin"], 600).unwrap();
    let rule =
        json!({"application": "app", "unit": UNIT, "ownerTenantId": "prov", "billingEnabled": true, "maxValue": 10});
    let (status, created) =
        api.send(|c| c.post(format!("{}/admin/rules", api.query)).bearer_auth(&admin).json(&rule)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(api.job_status(5).await, "COMPLETED", "5 is within the rule's maximum of 10");

    let mut tightened = created.clone();
    tightened["maxValue"] = json!(1);
    let id = created["ruleId"].as_str().unwrap();
    let (status, answer) =
        api.send(|c| c.put(format!("{}/admin/rules/{id}", api.query)).bearer_auth(&admin).json(&tightened)).await;
    assert_eq!(status, 200, "{answer}");
    let changed = Instant::now();
    // Jobs posted after the change, one after another, until one is refused by the new maximum.
    let mut completed_after = 0;
    loop {
        match api.job_status(5).await.as_str() {
            "ERRORS" => break,
            _ => completed_after += 1,
        }
        assert!(changed.elapsed() < Duration::from_secs(30), "the tightened rule never applied");
    }
    let applied = changed.elapsed();
    println!("admin change applied after {applied:?} ({completed_after} jobs completed under the old rule)");
    stages.stop().await;
    receiver_shutdown.cancel();
    assert!(applied < Duration::from_secs(10), "the change took {applied:?} to reach the verifier");
}
