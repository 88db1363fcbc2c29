//! The gateway end to end over HTTP, against the real Kafka and PostgreSQL.

use crate::support::{batch, seed_sample, TestGateway};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::domain::from_timestamp;
use uts_common::proto::v1;

const WRITE: &[&str] = &["uts.usages.write"];

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let error = &body["errors"][0];
    assert!(error["logref"].is_string(), "{body}");
    (status, error["code"].as_str().unwrap().to_owned(), error["message"].as_str().unwrap().to_owned())
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_seed_sample_is_acknowledged_and_readable_from_kafka(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let response = gateway.post_jobs(&token, &seed_sample()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/usagetransparency/v3/usagesJobs/{id}"));
    assert_eq!(answer["status"], "ACCEPTED");
    assert_eq!(answer["usagesCount"], 1);

    let jobs = gateway.read_jobs().await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.job_id, id);
    assert_eq!(job.submitter_tenant, "acme");
    assert_eq!(job.submitter_user, "tester@example.com");
    assert_eq!(job.origin, v1::Origin::UsagesJobs as i32);
    assert_eq!(job.usages_count, 1);
    let received = from_timestamp(job.received_at.as_ref().unwrap()).unwrap();
    assert_eq!(uts_common::domain::format_datetime(received), answer["time"].as_str().unwrap());
    let expected = v1::UserUsages {
        tenant_id: "acme".into(),
        user_id: "john.doe@healthcare.siemens.com".into(),
        user_type: v1::UserType::User as i32,
        resources: vec![v1::ResourceUsages {
            application: "manage-my-machines".into(),
            alias: "analyze-my-performance".into(),
            resource: "asset-id-1".into(),
            usages: vec![v1::Usage {
                index: 0,
                value: "20".into(),
                unit: "mmm-recurring-unit".into(),
                datetime: Some(uts_common::proto::Timestamp { seconds: 1_310_672_617, nanos: 0 }),
            }],
        }],
    };
    assert_eq!(job.users, vec![expected]);
    gateway.stop().await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn more_than_200_usages_are_refused_and_nothing_reaches_kafka(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let (status, code, message) = error_of(gateway.post_jobs(&token, &batch("acme", 201)).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code, "mdsp.core.generic.payloadTooLarge");
    assert!(message.contains("201 usages"), "{message}");

    let response = gateway.post_jobs(&token, &batch("acme", 200)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["usagesCount"], 200);
    let jobs = gateway.read_jobs().await;
    assert_eq!(jobs.len(), 1, "only the 200-usage job is in Kafka");
    assert_eq!(jobs[0].job_id, answer["id"].as_str().unwrap());
    assert_eq!(jobs[0].usages_count, 200);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn malformed_requests_get_400_naming_the_field_and_nothing_is_produced(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let usage = |value: Value, datetime: Value| {
        json!({"users":[{"tenantId":"acme","resources":[{"application":"a","resource":"r",
            "usages":[{"value": value, "unit":"u", "datetime": datetime}]}]}]})
    };
    let cases = [
        (usage(json!("20"), json!("2024-01-01T00:00:00Z")), "users[0].resources[0].usages[0].value must be a number"),
        (usage(json!(true), json!("2024-01-01T00:00:00Z")), "users[0].resources[0].usages[0].value must be a number"),
        (
            usage(json!(1), json!("2024-01-01 00:00")),
            "users[0].resources[0].usages[0].datetime must be an RFC 3339 date-time",
        ),
        (usage(json!(1), json!(1_700_000_000)), "users[0].resources[0].usages[0].datetime must be a string"),
        (
            json!({"users":[{"tenantId":"acme","userType":"machine","resources":[]}]}),
            "users[0].userType must be one of",
        ),
        (json!({"users":[]}), "users must not be empty"),
        (
            json!({"users":[{"tenantId":"acme","resources":[{"application":"a","resource":"r","usages":[]}]}]}),
            "users[0].resources[0].usages must not be empty",
        ),
        (
            json!({"users":[{"tenantId":"acme","resources":[{"resource":"r","usages":[]}]}]}),
            "users[0].resources[0].application is required",
        ),
    ];
    for (body, expected) in cases {
        let (status, code, message) = error_of(gateway.post_jobs(&token, &body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(code.starts_with("mdsp.core.generic."), "{code}");
        assert!(message.starts_with(expected), "{message} does not start with {expected}");
    }
    // Non-finite and broken JSON never parse.
    let response = gateway
        .client
        .post(gateway.url("/usagesJobs"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"users":[{"tenantId":"acme","resources":[{"application":"a","resource":"r","usages":[{"value":Infinity,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "mdsp.core.generic.invalidRequestBodyProperty"));
    // Not JSON at all: 415.
    let response = gateway
        .client
        .post(gateway.url("/usagesJobs"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(seed_sample().to_string())
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "mdsp.core.generic.unsupportedMediaType"));
    assert!(gateway.read_jobs().await.is_empty(), "a refused request produced a job");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_body_over_the_byte_limit_is_413(pool: PgPool) {
    let gateway = TestGateway::start(pool, &["--max-body-bytes=2048"]).await;
    let token = TestGateway::token("acme", WRITE);
    let (status, code, message) = error_of(gateway.post_jobs(&token, &batch("acme", 100)).await).await;
    assert_eq!((status, code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "mdsp.core.generic.payloadTooLarge"));
    assert!(message.contains("2048 bytes"), "{message}");
}

/// A declared `Content-Length` over the limit is answered 413 before a byte is read (it waited
/// 30 s for the deadline's 503), and a client still sending its oversize body reads the 413
/// (the server used to answer and close while it sent: connection reset).
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn an_oversize_body_is_413_at_once_and_the_client_can_read_it(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = TestGateway::start(pool, &["--max-body-bytes=2048"]).await;
    let token = TestGateway::token("acme", WRITE);

    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered within 3 s, before any of the body was sent")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("mdsp.core.generic.payloadTooLarge"), "{answer}");

    for size in [3 << 20, 6 << 20] {
        let body = format!("{{\"users\":[{}]}}", "1".repeat(size));
        let response = gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the 413 is read, not a reset");
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "mdsp.core.generic.payloadTooLarge"));
    }
    assert!(gateway.read_jobs().await.is_empty());
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn authentication_and_authorisation_matrix(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let body = seed_sample();
    let url = gateway.url("/usagesJobs");

    let response = gateway.client.post(&url).json(&body).send().await.unwrap();
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "mdsp.core.generic.unauthorized"), "no token");

    let forged = uts_common::auth::mint_hs256("some-other-secret-0123456789", "acme", "", WRITE, 600).unwrap();
    let expired = uts_common::auth::mint_hs256(crate::support::SECRET, "acme", "", WRITE, -3600).unwrap();
    for (token, why) in [(forged, "signature"), (expired, "expired"), ("garbage".to_owned(), "well-formed")] {
        let (status, _, message) = error_of(gateway.post_jobs(&token, &body).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
        assert!(message.contains(why), "{message} should mention {why}");
    }

    let read_only = TestGateway::token("acme", &["uts.usages.read"]);
    let (status, _, message) = error_of(gateway.post_jobs(&read_only, &body).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("uts.usages.write"), "{message}");

    for tenant in ["plant-1", "buyer", "unknown-tenant"] {
        let token = TestGateway::token(tenant, WRITE);
        let (status, code, message) = error_of(gateway.post_jobs(&token, &body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "mdsp.core.generic.forbidden"), "{tenant}");
        assert!(message.contains(tenant), "{message}");
    }

    // A signed token is still input: a tenant with a NUL is refused (it was 503 "retry later").
    for tenant in ["acme\0", "ac\u{1}me"] {
        let token = TestGateway::token(tenant, WRITE);
        let (status, code, _) = error_of(gateway.post_jobs(&token, &body).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "mdsp.core.generic.unauthorized"), "{tenant:?}");
    }

    // A developer tenant and the super-user scope are accepted.
    for (tenant, scopes) in [("devco", WRITE), ("acme", &["uts.su"][..])] {
        let token = TestGateway::token(tenant, scopes);
        assert_eq!(gateway.post_jobs(&token, &body).await.status(), StatusCode::ACCEPTED, "{tenant}");
    }
    assert_eq!(gateway.read_jobs().await.len(), 2, "only the two accepted jobs are in Kafka");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_same_idempotency_key_returns_the_same_job(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let post = |key: &'static str, body: Value| {
        let request = gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = post("order-42", batch("acme", 3)).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(first.headers().get("idempotent-replayed"), None);
    let first: Value = first.json().await.unwrap();
    let second = post("order-42", batch("acme", 3)).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    // A client can tell the resend from a new job.
    assert_eq!(second.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second, "a retry gets the original answer");

    let other = post("order-43", batch("acme", 3)).await.json::<Value>().await.unwrap();
    assert_ne!(other["id"], first["id"]);

    let (status, _, message) = error_of(post("order-42", batch("acme", 4)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("Idempotency-Key was already used"), "{message}");

    // Kafka holds the first job twice under one id (consumers dedup by id) and the other once.
    let jobs = gateway.read_jobs().await;
    let with_first_id = jobs.iter().filter(|j| j.job_id == first["id"].as_str().unwrap()).count();
    assert_eq!((jobs.len(), with_first_id), (3, 2));
    assert!(jobs.iter().all(|j| j.idempotency_key.starts_with("order-4")));
}

/// Ten requests with one key at once (a client whose retries overtake each other): one job,
/// every answer its id, exactly one of them the original; a request without a key claims
/// nothing in PostgreSQL.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn concurrent_requests_with_one_key_are_one_job(pool: PgPool) {
    let gateway = TestGateway::start(pool.clone(), &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let requests = (0..10).map(|_| {
        let request = gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "burst-1")
            .json(&batch("acme", 2));
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (response.status(), replayed, response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    assert!(answers.iter().all(|(status, _, _)| *status == StatusCode::ACCEPTED), "{answers:?}");
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|(_, _, a)| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one key, one job: {ids:?}");
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "exactly one original answer");
    let id = *ids.iter().next().unwrap();
    let jobs = gateway.read_jobs().await;
    assert!(!jobs.is_empty() && jobs.iter().all(|j| j.job_id == id), "Kafka holds only that job's id");

    let claims = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys").fetch_one(&pool).await.unwrap()
    };
    assert_eq!(claims().await, 1);
    let without = gateway.post_jobs(&token, &batch("acme", 2)).await;
    assert_eq!(without.status(), StatusCode::ACCEPTED);
    assert_eq!(claims().await, 1, "a request without Idempotency-Key claimed a key");
}

/// "Requests without the header never touch PostgreSQL" (docs/architecture.md): once the
/// tenant's type is cached, PostgreSQL going away does not stop a POST without
/// `Idempotency-Key`, while one with a key, which must be claimed there, is refused with 503 and
/// `Retry-After` and nothing is produced for it.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_post_without_idempotency_key_never_touches_postgresql(pool: PgPool) {
    // The cache outlives the test whatever the machine's load (the default is 10 s).
    let gateway = TestGateway::start(pool.clone(), &["--tenant-cache-ttl-ms=600000"]).await;
    let token = TestGateway::token("acme", WRITE);
    let warm = gateway.post_jobs(&token, &batch("acme", 1)).await;
    assert_eq!(warm.status(), StatusCode::ACCEPTED, "the first POST caches acme's tenant type");
    let warm: Value = warm.json().await.unwrap();

    // The gateway shares this pool: from now on every acquire fails at once.
    pool.close().await;
    assert!(sqlx::query("SELECT 1").execute(&pool).await.is_err(), "the pool is closed");

    let without = gateway.post_jobs(&token, &batch("acme", 2)).await;
    assert_eq!(without.status(), StatusCode::ACCEPTED);
    let without: Value = without.json().await.unwrap();

    let with_key = gateway
        .client
        .post(gateway.url("/usagesJobs"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "needs-postgresql")
        .json(&batch("acme", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::SERVICE_UNAVAILABLE, "a key is claimed in PostgreSQL");
    let retry_after = with_key.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (_, code, message) = error_of(with_key).await;
    assert_eq!(code, "mdsp.core.generic.serviceUnavailable");
    assert!(message.starts_with("PostgreSQL is unavailable"), "{message}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Three partitions: compare as sets.
    let jobs = gateway.read_jobs().await;
    let mut found: Vec<(&str, u32)> = jobs.iter().map(|j| (j.job_id.as_str(), j.usages_count)).collect();
    found.sort();
    let mut expected = vec![(warm["id"].as_str().unwrap(), 1), (without["id"].as_str().unwrap(), 2)];
    expected.sort();
    assert_eq!(found, expected, "both keyless jobs are in Kafka and the 503 produced nothing");
    assert!(jobs.iter().all(|j| j.idempotency_key.is_empty()));
    gateway.stop().await;
}

/// The documented order of the checks (401 → 403 scope → 429 → 403 tenant type → 415 → 400
/// `Idempotency-Key` → 413 → 400 body): a request that fails several gets the first one's
/// answer, and nothing is produced.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_request_failing_several_checks_gets_the_first_ones_answer(pool: PgPool) {
    let gateway =
        TestGateway::start(pool, &["--max-body-bytes=2000", "--rate-limit-per-second=1", "--rate-limit-burst=1"]).await;
    let send = |token: &str, content_type: &str, key: &str, body: Vec<u8>| {
        gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    let oversize = vec![b'x'; 3000];
    let (acme, read_only) = (TestGateway::token("acme", WRITE), TestGateway::token("acme", &["uts.usages.read"]));
    // (token, content type, Idempotency-Key, body, status, code)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: [Case; 6] = [
        ("not-a-jwt", "text/plain", "bad key", oversize.clone(), 401, "unauthorized"),
        (&read_only, "text/plain", "bad key", oversize.clone(), 403, "forbidden"),
        (&acme, "text/plain", "bad key", oversize.clone(), 415, "unsupportedMediaType"),
        (&acme, "application/json", "bad key", oversize.clone(), 400, "invalidParameter"),
        (&acme, "application/json", "good-key", oversize.clone(), 413, "payloadTooLarge"),
        (&acme, "application/json", "good-key-2", b"{not json".to_vec(), 400, "invalidRequestBodyProperty"),
    ];
    for (token, content_type, key, body, status, code) in cases {
        // One tenant, one token a second: each case waits for acme's bucket to refill first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let response = loop {
            let response = send(token, content_type, key, body.clone()).await.unwrap();
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                break response;
            }
            assert!(std::time::Instant::now() < deadline, "acme's bucket never refilled");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the bucket's refill
        };
        let (got, got_code, message) = error_of(response).await;
        assert_eq!(
            (got.as_u16(), got_code.as_str()),
            (status, format!("mdsp.core.generic.{code}").as_str()),
            "{message}"
        );
    }
    // The throttle comes before the tenant-type check and after the scope check: a customer
    // tenant (it may not submit) spends its one token on a 403, then gets 429, even with the
    // wrong content type; without the write scope it still gets 403.
    let buyer = TestGateway::token("buyer", WRITE);
    let (first, _, _) = error_of(send(&buyer, "application/json", "k1", b"{}".to_vec()).await.unwrap()).await;
    let (second, _, _) = error_of(send(&buyer, "text/plain", "bad key", oversize.clone()).await.unwrap()).await;
    let buyer_read = TestGateway::token("buyer", &["uts.usages.read"]);
    let (third, _, _) = error_of(send(&buyer_read, "text/plain", "bad key", oversize).await.unwrap()).await;
    assert_eq!([first, second, third], [StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS, StatusCode::FORBIDDEN]);
    assert!(gateway.read_jobs().await.is_empty(), "a refused request reached Kafka");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_legacy_endpoint_goes_through_the_same_pipeline(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let body = json!({"CustomerTenantID":"acme","CustomerUserID":"jo@acme","UTSUsageData":[
        {"resourceName":"markAsset","resourceAlias":"managemymachines",
         "UsageData":[{"usage":1,"usageUnit":"manage-mymachine-unit","usageDate":"2020-07-30T23:55:37+0100"}]}]});
    let response = gateway.client.post(gateway.url("/usages")).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "Data is successfully saved to the database");
    let jobs = gateway.read_jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].origin, v1::Origin::Usages as i32);
    assert_eq!(jobs[0].users[0].resources[0].application, "managemymachines");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_tenant_over_its_rate_gets_429_with_retry_after(pool: PgPool) {
    let gateway = TestGateway::start(pool, &["--rate-limit-per-second=1", "--rate-limit-burst=2"]).await;
    let token = TestGateway::token("acme", WRITE);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    // Sent at once: one after the other, on a loaded machine (CI), the three took over a second
    // and the bucket refilled before the third.
    let body = seed_sample();
    let (a, b, c) = tokio::join!(
        gateway.post_jobs(&token, &body),
        gateway.post_jobs(&token, &body),
        gateway.post_jobs(&token, &body)
    );
    for response in [a, b, c] {
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let (_, code, _) = error_of(response).await;
            assert_eq!(code, "mdsp.core.generic.tooManyRequests");
        }
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS]);
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another tenant is not throttled by acme's traffic.
    let other = TestGateway::token("devco", WRITE);
    assert_eq!(gateway.post_jobs(&other, &seed_sample()).await.status(), StatusCode::ACCEPTED);
}

/// Values are exact or refused in every notation JSON allows: the digits that are refused
/// without an exponent are refused with one (they were rounded to 1 and 0).
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn exponent_notation_is_exact_or_refused(pool: PgPool) {
    let gateway = TestGateway::start(pool, &[]).await;
    let token = TestGateway::token("acme", WRITE);
    let body = |value: &str| {
        format!(
            r#"{{"users":[{{"tenantId":"acme","resources":[{{"application":"a","resource":"r",
            "usages":[{{"value":{value},"unit":"u","datetime":"2024-01-01T00:00:00Z"}}]}}]}}]}}"#
        )
    };
    let post = |value: String| {
        gateway
            .client
            .post(gateway.url("/usagesJobs"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body(&value))
            .send()
    };
    let tiny = format!("0.{}1e0", "0".repeat(98));
    for value in ["1.00000000000000000000000000001e0", tiny.as_str(), "1e-29", "8e28"] {
        let (status, code, message) = error_of(post(value.to_owned()).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "mdsp.core.generic.invalidRequestBodyProperty"));
        assert!(message.starts_with("users[0].resources[0].usages[0].value is out of range"), "{value}: {message}");
    }
    assert!(gateway.read_jobs().await.is_empty(), "a refused value produced a job");
    for (value, exact) in [("1.0000000000000000000000000001e0", "1.0000000000000000000000000001"), ("125E-2", "1.25")] {
        let response = post(value.to_owned()).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{value}");
        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        // By id: the jobs land on different partitions, so the topic's read order is not theirs.
        let jobs = gateway.read_jobs().await;
        let job = jobs.iter().find(|j| j.job_id == id).expect("the accepted job is in Kafka");
        assert_eq!(job.users[0].resources[0].usages[0].value, exact, "{value}");
    }
}

/// The gateway's wrong-method answers are in the `mdsp` format (they had empty bodies: a client
/// pointed at the wrong address could not tell what happened); what it forwards to an
/// unreachable query service is a 503 in the same format, never a hang or an empty answer.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_wrong_method_or_an_unreachable_query_service_is_answered_in_the_mdsp_format(pool: PgPool) {
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = format!("--query-service-url=http://{closed}");
    let gateway = TestGateway::start(pool, &[upstream.as_str()]).await;
    let token = TestGateway::token("acme", WRITE);
    let response = gateway.client.delete(gateway.url("/usagesJobs")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST,GET,HEAD"));
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "mdsp.core.generic.methodNotAllowed"));
    assert!(message.starts_with("DELETE is not allowed on /api/usagetransparency/v3/usagesJobs"), "{message}");
    let response = gateway.client.get(gateway.url("/usages")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    for path in ["/usagesJobs", "/nothing-here"] {
        let started = std::time::Instant::now();
        let response = gateway.client.get(gateway.url(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "mdsp.core.generic.serviceUnavailable"));
        assert!(message.contains("query service is unavailable"), "{message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{path}: {:?}", started.elapsed());
    }
}

/// A kept-alive connection to the query service that the server closes as the next request
/// arrives (its idle timeout firing at that moment; seen once as a 503 under schemathesis): a
/// read is sent once more on a fresh connection and answered, never a 503.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_read_on_a_pooled_connection_the_query_service_closes_is_sent_again(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An upstream that answers the first request of each connection and keeps it alive, then
    // reads the next request's headers and closes without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut seen = Vec::new();
                let mut answered = false;
                loop {
                    let Ok(n) = stream.read(&mut buffer).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    if answered {
                        return; // closes under the second request
                    }
                    seen.clear();
                    answered = true;
                    let body = r#"{"ok":true}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    let upstream = format!("--query-service-url=http://{upstream_addr}");
    let gateway = TestGateway::start(pool, &[upstream.as_str()]).await;
    for round in 0..3 {
        let response = gateway.client.get(gateway.url("/usagesJobs")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "round {round}: {:?}", response.text().await);
    }
    // Each retry needed a new connection: the first request's, then one per later round.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// The HTTP limits of the real gateway (`uts_common::http::serve`), over raw TCP: a client that
/// never finishes its headers is disconnected after the header timeout; a body that never
/// arrives is answered 503 at the request timeout; beyond the connection limit a connection
/// waits until another one closes.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_http_limits_hold_on_the_real_gateway(pool: PgPool) {
    use std::time::Duration;
    use uts_testkit::http_limits;

    let timed =
        TestGateway::start(pool.clone(), &["--http-header-timeout-ms=300", "--http-request-timeout-ms=700"]).await;
    let token = TestGateway::token("acme", WRITE);
    let head = "POST /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\n";
    http_limits::unfinished_headers_are_cut_off(timed.addr, head, Duration::from_millis(300)).await;
    let head = format!(
        "POST /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"users\":"
    );
    http_limits::a_body_that_never_comes_is_503(timed.addr, &head, Duration::from_millis(700)).await;
    timed.stop().await;

    let limited = TestGateway::start(pool, &["--http-max-connections=2"]).await;
    // Answered by the gateway itself (401), not forwarded to the (absent) query service.
    let unauthenticated =
        b"POST /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = http_limits::a_third_connection_waits_for_a_free_one(limited.addr, unauthenticated).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    limited.stop().await;
}
