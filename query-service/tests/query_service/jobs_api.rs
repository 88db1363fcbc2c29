//! The job projections and GET endpoints against the real Kafka and PostgreSQL: messages are
//! produced straight to uts.usage-jobs and uts.status (in awkward orders, with duplicates) and
//! read back over HTTP.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_common::domain::to_timestamp;
use uts_common::proto::{v1, Message};

use crate::support::{text, TestQueryService, SECRET};

/// The query service plus producers to its topics.
struct Service(TestQueryService);

async fn start(pool: PgPool) -> Service {
    Service(TestQueryService::start(pool).await)
}

impl Service {
    async fn produce(&self, topic: &str, key: &str, payload: Vec<u8>) {
        uts_testkit::produce(&self.0.kafka, topic, &[(key.as_bytes(), &payload)]).await;
    }

    async fn job(&self, job: &v1::UsageJob) {
        self.produce(&self.0.kafka.topics().usage_jobs, &job.job_id, job.encode_to_vec()).await;
    }

    async fn event(&self, event: &v1::StatusEvent) {
        self.produce(&self.0.kafka.topics().status, &event.job_id, event.encode_to_vec()).await;
    }

    async fn get(&self, tenant: &str, path: &str) -> (StatusCode, Value) {
        let token = mint_hs256(SECRET, tenant, "reader", &["uts.usages.read"], 600).unwrap();
        let response = self.0.client.get(self.0.api(path)).bearer_auth(token).send().await.unwrap();
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

/// A usage of 1.5 `unit` now, at `index` of its job.
fn usage(index: u32, unit: &str) -> v1::Usage {
    v1::Usage { index, value: "1.5".into(), unit: unit.into(), datetime: Some(to_timestamp(chrono::Utc::now())) }
}

/// User `u` of tenant plant-9 with `usages` of resource `r` of application `app`.
fn plant_user(usages: Vec<v1::Usage>) -> v1::UserUsages {
    let resource = v1::ResourceUsages { application: "app".into(), alias: "app".into(), resource: "r".into(), usages };
    v1::UserUsages {
        tenant_id: "plant-9".into(),
        user_id: "u".into(),
        user_type: v1::UserType::User as i32,
        resources: vec![resource],
    }
}

fn job(id: &str, tenant: &str) -> v1::UsageJob {
    v1::UsageJob {
        job_id: id.into(),
        submitter_tenant: tenant.into(),
        received_at: Some(to_timestamp(chrono::Utc::now())),
        usages_count: 3,
        users: vec![plant_user(vec![usage(0, "u1"), usage(1, "u1"), usage(2, "u2")])],
        ..Default::default()
    }
}

fn event(
    id: &str,
    job: &str,
    steps: &[(&str, v1::UsageStatus, v1::UsageStatus, u32, bool)],
    errors: Vec<v1::UsageError>,
) -> v1::StatusEvent {
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

/// The verifier's event for a [`job`]: both units verified.
fn verified(job: &str) -> v1::StatusEvent {
    use v1::UsageStatus as S;
    let transitions = [("u1", S::Accepted, S::Verified, 2, false), ("u2", S::Accepted, S::Verified, 1, false)];
    event(&format!("verifier:{job}"), job, &transitions, vec![])
}

fn summary(body: &Value) -> Vec<(String, String, i64)> {
    body["usagesSummary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (text(s, "unit"), text(s, "processStatus"), s["usagesCount"].as_i64().unwrap()))
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
    service.event(&verified("job-1")).await;
    let body =
        service.until("acme", "/usagesJobs/job-1", |b| b["status"] == "INPROGRESS" && summary(b).len() == 2).await;
    assert_eq!(summary(&body), vec![("u1".into(), "AGGREGATED".into(), 2), ("u2".into(), "VERIFIED".into(), 1)]);
    service.event(&event("aggregator:job-1:u2", "job-1", &[("u2", S::Verified, S::Aggregated, 1, true)], vec![])).await;
    let body = service.until("acme", "/usagesJobs/job-1", |b| b["status"] == "COMPLETED").await;
    assert_eq!(summary(&body), vec![("u1".into(), "AGGREGATED".into(), 2), ("u2".into(), "AGGREGATED".into(), 1)]);

    // Status before job: a second job whose verifier event arrives first.
    service.event(&verified("job-2")).await;
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
    let failing = plant_user(vec![usage(2, "u2")]);
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
    let body = service
        .until("acme", "/usagesJobs/job-e/errors?errorClass=validation", |b| {
            b["errors"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
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
    let response = service.0.client.get(service.0.api("/usagesJobs/job-e")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn only_the_1000_most_recent_jobs_are_visible_and_pages_are_exact(pool: PgPool) {
    // 1003 jobs of acme received today, oldest first; inserted as the projection would.
    let now = chrono::Utc::now();
    sqlx::query(
        "INSERT INTO jobs (job_id, submitter_tenant_id, received_at, usages_count, origin)
         SELECT 'w-' || lpad(n::text, 4, '0'), 'acme', $1 - make_interval(secs => 1003 - n), 1, 'usagesJobs'
         FROM generate_series(1, 1003) n",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    let service = start(pool).await;
    let (status, _) = service.get("acme", "/usagesJobs/w-0003").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the 1001st most recent job is out of the window");
    let (status, body) = service.get("acme", "/usagesJobs/w-0004").await;
    assert_eq!((status, body["id"].as_str()), (StatusCode::OK, Some("w-0004")));

    let day = now.date_naive();
    let (_, first) = service.get("acme", &format!("/usagesJobs?date={day}&size=1000")).await;
    // Jobs received just before midnight fall on yesterday; count what the window holds today.
    let today = first["page"]["totalElements"].as_i64().unwrap();
    assert!(today <= 1000 && today > 0, "{today}");
    assert_eq!(first["jobs"][0]["id"], "w-1003", "newest first");
    let (_, last) = service.get("acme", &format!("/usagesJobs?date={day}&size=300&page={}", (today - 1) / 300)).await;
    assert_eq!(last["jobs"].as_array().unwrap().len() as i64, today - 300 * ((today - 1) / 300), "a partial last page");
    let (_, past_end) = service.get("acme", &format!("/usagesJobs?date={day}&size=300&page=99")).await;
    assert_eq!(past_end["jobs"], json!([]));
    assert_eq!(past_end["page"]["totalElements"], today);
    for bad in ["size=0", "size=1001", "page=-1", "size=ten", "sort=id"] {
        let (status, body) = service.get("acme", &format!("/usagesJobs?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.invalidParameter", "{bad}");
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn projections_rebuilt_from_the_topics_equal_the_live_ones(pool: PgPool) {
    use v1::UsageStatus as S;
    let service = start(pool.clone()).await;
    for i in 0..5 {
        let id = format!("job-r{i}");
        service.job(&job(&id, "acme")).await;
        service
            .event(&event(
                &format!("verifier:{id}"),
                &id,
                &[("u1", S::Accepted, S::Verified, 2, false), ("u2", S::Accepted, S::Verificationfailed, 1, true)],
                vec![],
            ))
            .await;
        service
            .event(&event(&format!("aggregator:{id}"), &id, &[("u1", S::Verified, S::Aggregated, 2, true)], vec![]))
            .await;
    }
    // Wait until the live projection has everything: each job's final summary.
    let done =
        vec![("u1".to_owned(), "AGGREGATED".to_owned(), 2), ("u2".to_owned(), "VERIFICATIONFAILED".to_owned(), 1)];
    for i in 0..5 {
        service.until("acme", &format!("/usagesJobs/job-r{i}"), |b| summary(b) == done).await;
    }
    let snapshot = |pool: PgPool| async move {
        let counts: Vec<(String, String, String, String, i32)> = sqlx::query_as(
            "SELECT job_id, application, unit, s.status, s.n FROM job_status_counts c CROSS JOIN LATERAL (VALUES
                    ('ACCEPTED', c.accepted), ('VERIFIED', c.verified), ('NOVERIFICATION', c.noverification),
                    ('VERIFICATIONFAILED', c.verificationfailed), ('AGGREGATED', c.aggregated),
                    ('SENTFORBILLING', c.sentforbilling), ('FAILEDTOSENDFORBILLING', c.failedtosendforbilling),
                    ('RECEIVEDFORBILLING', c.receivedforbilling)) AS s(status, n)
                 WHERE s.n <> 0 ORDER BY 1, 2, 3, 4",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let jobs: Vec<(String, i32)> =
            sqlx::query_as("SELECT job_id, usages_count FROM jobs ORDER BY 1").fetch_all(&pool).await.unwrap();
        let terminal: Vec<(String, i32)> =
            sqlx::query_as("SELECT job_id, usages_count FROM job_terminal_counts ORDER BY 1")
                .fetch_all(&pool)
                .await
                .unwrap();
        (counts, jobs, terminal)
    };
    let live = snapshot(pool.clone()).await;
    let kafka = service.0.kafka.clone();
    service.0.stop().await;

    // Drop the projections and replay both topics from the beginning under a new group.
    sqlx::query(
        "TRUNCATE jobs, job_usage_keys, job_status_counts, job_terminal_counts, job_applied_events, job_errors",
    )
    .execute(&pool)
    .await
    .unwrap();
    let group = format!("rebuild-{}", uuid::Uuid::new_v4());
    let rebuilt_service = TestQueryService::start_on(pool.clone(), kafka, &group, &["--rate-limit-per-second=0"]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rebuilt = snapshot(pool.clone()).await;
        if rebuilt == live {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuilt projection differs:\n{rebuilt:?}\nlive:\n{live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rebuilt_service.stop().await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn poison_on_either_topic_goes_to_the_dead_letter_topic_and_projection_carries_on(pool: PgPool) {
    let service = start(pool).await;
    service.produce(&service.0.kafka.topics().status, "junk", b"\xff not a status event".to_vec()).await;
    service.produce(&service.0.kafka.topics().usage_jobs, "junk", v1::UsageJob::default().encode_to_vec()).await;
    service.job(&job("job-after-poison", "acme")).await;
    service.until("acme", "/usagesJobs/job-after-poison", |b| b["status"] == "ACCEPTED").await;
    let topic = service.0.kafka.topics().dead_letter;
    let letters: Vec<v1::DeadLetter> =
        uts_testkit::read_messages(&service.0.kafka, &topic, 2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.stage == v1::Stage::QueryService as i32));
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn each_tenant_is_rate_limited_on_its_own(pool: PgPool) {
    let service =
        Service(TestQueryService::start_with(pool, &["--rate-limit-per-second=1", "--rate-limit-burst=2"]).await);
    // The burst, then 429 in the mdsp format with Retry-After; the job and aggregate endpoints
    // share the tenant's quota.
    assert_eq!(service.get("acme", "/usagesJobs").await.0, StatusCode::OK);
    let aggregates = mint_hs256(SECRET, "acme", "reader", &["uts.aggregates.read"], 600).unwrap();
    let monthly = service.0.api("/aggregatedMonthlyConsumerUsage?month=1&year=2026&provider=p&application=a&KPIName=k");
    let response = service.0.client.get(&monthly).bearer_auth(&aggregates).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "no such KPI, but counted");
    let token = mint_hs256(SECRET, "acme", "reader", &["uts.usages.read"], 600).unwrap();
    let response = service.0.client.get(service.0.api("/usagesJobs")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.tooManyRequests");
    let response = service.0.client.get(&monthly).bearer_auth(&aggregates).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another tenant has its own quota.
    assert_eq!(service.get("globex", "/usagesJobs").await.0, StatusCode::OK);
    assert_eq!(service.get("globex", "/usagesJobs/unknown").await.0, StatusCode::NOT_FOUND);
}

/// Readiness needs Kafka as well as PostgreSQL: with no broker behind its address the query
/// service answers /readyz 503 naming Kafka (it used to check PostgreSQL only), while /healthz
/// still answers 200.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn readiness_needs_kafka_too(pool: PgPool) {
    use clap::Parser;
    // Nothing listens on the discard port; the admin port is picked free just before.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = query_service::Config::parse_from([
        "query-service".to_owned(),
        "--listen-addr=127.0.0.1:0".to_owned(),
        format!("--admin-addr=127.0.0.1:{admin_port}"),
        "--database-url=postgres://unused".to_owned(),
        format!("--jwt-hs256-secret={SECRET}"),
        "--kafka-brokers=127.0.0.1:9".to_owned(),
        "--kafka-produce-timeout-ms=1000".to_owned(),
    ]);
    let app = query_service::Application::build(config, pool).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        if let Ok(response) = client.get(format!("{admin}/readyz")).send().await {
            break (response.status(), response.text().await.unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the admin listener never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("Kafka"), "{body}");
    assert_eq!(client.get(format!("{admin}/healthz")).send().await.unwrap().status(), StatusCode::OK);
    shutdown.cancel();
}

/// Read your writes: a GET for a job the gateway acknowledged while the projection is behind waits
/// (bounded) for the projection instead of answering 404 (the official client throws on it); if
/// the projection stays behind it answers 503 with `Retry-After`, never 404. An id nobody posted
/// answers 404 as soon as the projection is level; foreign and non-gateway ids at once.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_is_readable_right_after_its_acknowledgement(pool: PgPool) {
    let service = start(pool).await;
    // The projection has joined its group and projects (joining may take seconds on a loaded
    // machine; that is not what this test is about).
    // Twice, and the second one at once: a fresh group's first assignment was seen to be followed
    // by a pause of seconds (one run in five here, alone), which the 2 s wait cannot cover.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quick = 0;
    while quick < 2 {
        let warm = uts_common::domain::job_id::mint();
        service.job(&job(&warm, "acme")).await;
        let sent = Instant::now();
        while service.get("acme", &format!("/usagesJobs/{warm}")).await.0 != StatusCode::OK {
            assert!(Instant::now() < deadline, "the projection never projected a job");
        }
        quick = if sent.elapsed() < Duration::from_millis(1500) { quick + 1 } else { 0 };
    }
    // Jobs are produced (acknowledged) before their GET is sent, while the projection is held
    // back. The projection lets go 300 ms after the GET was sent: the GET answers the job. Up to three
    // jobs: under CI's full load the projection once took longer than the GET's 2 s wait; an
    // attempt may miss that way (then 503, never 404), but one must be read.
    let mut misses = Vec::new();
    let (id, path, body) = loop {
        let id = uts_common::domain::job_id::mint();
        let path = format!("/usagesJobs/{id}");
        let held = hold_projection(&service.0.pool).await;
        service.job(&job(&id, "acme")).await;
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            held.rollback().await.unwrap();
        };
        let asked = Instant::now();
        let ((status, body), ()) = tokio::join!(service.get("acme", &path), release);
        let waited = asked.elapsed();
        if status == StatusCode::OK {
            assert!(waited >= Duration::from_millis(300), "read after {waited:?}, before the projection could have it");
            break (id, path, body);
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(waited >= Duration::from_millis(1500), "a 503 after only {waited:?}: no wait");
        misses.push(waited);
        assert!(misses.len() < 3, "a job acknowledged before its GET was never read: {misses:?}");
    };
    assert_eq!(body["id"], id.as_str());

    // The projection stays behind: its job, and an id nobody posted (which cannot be told from
    // it meanwhile), answer 503 with Retry-After after the wait; once it moves, the job is read.
    let held = hold_projection(&service.0.pool).await;
    let late = uts_common::domain::job_id::mint();
    service.job(&job(&late, "acme")).await;
    let token = mint_hs256(SECRET, "acme", "reader", &["uts.usages.read"], 600).unwrap();
    let unavailable = |id: String| {
        let request = service.0.client.get(service.0.api(&format!("/usagesJobs/{id}"))).bearer_auth(&token);
        async move {
            let asked = Instant::now();
            let response = request.send().await.unwrap();
            let waited = asked.elapsed();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{id}");
            assert_eq!(response.headers()["retry-after"], "1", "{id}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.serviceUnavailable", "{body}");
            assert!(waited >= Duration::from_millis(1500), "{id}: a 503 after only {waited:?}: no wait");
        }
    };
    tokio::join!(unavailable(late.clone()), unavailable(uts_common::domain::job_id::mint()));
    held.rollback().await.unwrap();
    service.until("acme", &format!("/usagesJobs/{late}"), |job| job["id"] == late.as_str()).await;

    // The projection is level: 404 without the wait, at once for what is not the gateway's.
    for (tenant, path, within) in [
        ("other", path.clone(), 500),                       // projected, foreign
        ("acme", "/usagesJobs/not-a-uuid".to_owned(), 500), // not the gateway's
        ("acme", "/usagesJobs/01890a5d-ac96-774b-bcce-b302099a8057".to_owned(), 1500), // a UUIDv7 of 2023
        ("acme", format!("/usagesJobs/{}", uts_common::domain::job_id::mint()), 1500), // fresh, never posted
    ] {
        let started = Instant::now();
        let (status, _) = service.get(tenant, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{tenant} {path}");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(within), "{path}: 404 after {took:?}");
    }
}

/// Holds the projection back: its next batch cannot record its progress (in the batch's
/// transaction) until the returned transaction ends; reads of the table go on.
async fn hold_projection(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut held = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projection_progress IN EXCLUSIVE MODE").execute(&mut *held).await.unwrap();
    held
}
