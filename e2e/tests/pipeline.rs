//! Jobs posted through the gateway's HTTP API reach their final status through the real
//! pipeline (Kafka, PostgreSQL, the billing receiver over HTTP).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{Days, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_e2e::Pipeline;

const WAIT: Duration = Duration::from_secs(90);

fn job(tenant: &str, user_type: &str, application: &str, usages: &[(&str, &str, String)]) -> Value {
    let usages: Vec<Value> = usages
        .iter()
        .map(|(value, unit, datetime)| json!({"value": Value::from_str(value).unwrap(), "unit": unit, "datetime": datetime}))
        .collect();
    json!({"users":[{"tenantId": tenant, "userId": "someone", "userType": user_type,
        "resources":[{"application": application, "resource": "asset-1", "usages": usages}]}]})
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn rule(pool: &PgPool, unit: &str, function: &str, billing: bool) {
    sqlx::query(
        "INSERT INTO rules (application, unit, owner_tenant_id, aggregation_function, billing_enabled, min_value, max_value,
                            integers_only, allowed_user_types, max_age_days, max_future_minutes)
         VALUES ('app', $1, 'prov', $2, $3, -1000, 1000, false, ARRAY['user', 'agent'], 30, 10)",
    )
    .bind(unit)
    .bind(function)
    .bind(billing)
    .execute(pool)
    .await
    .unwrap();
}

/// Adds a billed SUM rule for `unit`, posts a job of `values` of it and waits until both its usages are
/// RECEIVEDFORBILLING, in the status topic and through the API (COMPLETED); the job's id and
/// billing's records.
async fn billed_to_completion(pipeline: &Pipeline, unit: &str, values: [&str; 2]) -> (String, Vec<Value>) {
    rule(&pipeline.pool, unit, "SUM", true).await;
    let usages = [(values[0], unit, now_text()), (values[1], unit, now_text())];
    let id = pipeline.post_job("op", &job("op", "user", "app", &usages)).await;
    // Converged: stages' events may arrive in any order (billing's before the aggregator's).
    let converged = BTreeMap::from([("RECEIVEDFORBILLING".to_owned(), 2)]);
    let board = pipeline.wait_for(&id, WAIT, |b| b.nonzero() == converged).await;
    assert_eq!(board.nonzero(), converged);
    // The query service shows the same: COMPLETED, both usages RECEIVEDFORBILLING.
    let shown = pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    assert_eq!(
        shown["usagesSummary"],
        json!([{"application": "app", "unit": unit, "usagesCount": 2, "processStatus": "RECEIVEDFORBILLING"}])
    );
    let records = pipeline.billing_records().await;
    assert_eq!(records.len(), 1);
    (id, records)
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_billed_job_ends_received_for_billing(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    let (id, records) = billed_to_completion(&pipeline, "billed-unit", ["20", "2.5"]).await;
    assert_eq!(records[0]["record"]["value"], "22.5");
    assert_eq!(records[0]["record"]["bucket"]["providerTenant"], "prov");
    assert_eq!(records[0]["record"]["coveredVersions"], json!({"from": 1, "to": 1}));
    // Which jobs made the billed value is the lineage.
    let lineage: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_id, usages_count FROM aggregate_contributions WHERE unit = 'billed-unit'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(lineage, vec![(id.clone(), 2)]);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_without_a_rule_is_aggregated_with_sum_and_never_billed(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    let id = pipeline
        .post_job("op", &job("op", "user", "app", &[("1.25", "free-unit", now_text()), ("2", "free-unit", now_text())]))
        .await;
    let converged = BTreeMap::from([("AGGREGATED".to_owned(), 2)]);
    let board = pipeline.wait_for(&id, WAIT, |b| b.nonzero() == converged).await;
    assert_eq!(board.nonzero(), converged);
    pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    // It passed through NOVERIFICATION: the verifier's transition is on the board (now zero).
    assert!(board.counts.keys().any(|(_, _, s)| s == "NOVERIFICATION"));
    let (value, provider): (Decimal, String) =
        sqlx::query_as("SELECT value, provider_tenant_id FROM daily_aggregates WHERE unit = 'free-unit'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((value, provider.as_str()), (Decimal::from_str("3.25").unwrap(), "op"));
    assert!(pipeline.billing_records().await.is_empty());
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn rule_and_tenant_violations_end_verification_failed(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    rule(&pool, "checked", "SUM", false).await;
    let old = Utc::now().checked_sub_days(Days::new(40)).unwrap().to_rfc3339();
    let future = (Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let body = json!({"users":[
        {"tenantId":"op","userId":"u","userType":"user","resources":[{"application":"app","resource":"r","usages":[
            {"value": 5000, "unit": "checked", "datetime": now_text()},
            {"value": 1, "unit": "checked", "datetime": old},
            {"value": 1, "unit": "checked", "datetime": future},
            {"value": 7, "unit": "checked", "datetime": now_text()}]}]},
        {"tenantId":"op","resources":[{"application":"app","resource":"r","usages":[
            {"value": 1, "unit": "checked", "datetime": now_text()}]}]},
        {"tenantId":"plant","userId":"p","resources":[{"application":"app","resource":"r","usages":[
            {"value": 1, "unit": "checked", "datetime": now_text()}]},
            {"application":"unprovisioned","resource":"r","usages":[{"value": 1, "unit": "x", "datetime": now_text()}]}]},
        {"tenantId":"buyer","userId":"b","resources":[{"application":"app","resource":"r","usages":[
            {"value": 1, "unit": "checked", "datetime": now_text()}]}]}
    ]});
    let id = pipeline.post_job("op", &body).await;
    let board = pipeline
        .wait_for(&id, WAIT, |b| b.in_status("VERIFICATIONFAILED") == 6 && b.in_status("AGGREGATED") == 2)
        .await;
    pipeline.wait_for_job_status("op", &id, "ERRORS", WAIT).await;
    let mut codes: Vec<String> =
        board.errors.iter().map(|e| e.code.trim_start_matches("mdsp.uts.verification.").to_owned()).collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            "tenantNotAllowed",
            "tenantNotAllowed",
            "usageInFuture",
            "usageTooOld",
            "userTypeNotAllowed",
            "valueAboveMaximum"
        ]
    );
    assert!(board.errors.iter().all(|e| e.error_type == uts_common::proto::v1::ErrorType::Validation as i32));
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn every_aggregation_function_is_exact_and_late_usages_land_yesterday(pool: PgPool) {
    let functions = ["SUM", "COUNT", "MIN", "MAX", "AVG", "LAST"];
    let pipeline = Pipeline::start(pool.clone()).await;
    for function in functions {
        rule(&pool, &function.to_lowercase(), function, false).await;
    }
    // Five minutes ago, but never before today's midnight: the test must not straddle two days.
    let midnight = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let base = (Utc::now() - chrono::Duration::minutes(5)).max(midnight);
    let values = ["3.5", "-2.25", "10", "0.001", "7"];
    let mut usages = Vec::new();
    for function in functions {
        for (i, value) in values.iter().enumerate() {
            let at = (base + chrono::Duration::seconds(i as i64)).to_rfc3339();
            usages.push((*value, function.to_lowercase(), at));
        }
    }
    let yesterday = Utc::now().checked_sub_days(Days::new(1)).unwrap();
    usages.push(("100", "sum".to_owned(), yesterday.to_rfc3339()));
    let borrowed: Vec<(&str, &str, String)> = usages.iter().map(|(v, u, t)| (*v, u.as_str(), t.clone())).collect();
    let id = pipeline.post_job("op", &job("op", "user", "app", &borrowed)).await;
    pipeline.wait_for(&id, WAIT, |b| b.in_status("AGGREGATED") == 31).await;

    let d = |t: &str| Decimal::from_str(t).unwrap();
    let sum: Decimal = values.iter().map(|v| d(v)).sum();
    let expected = BTreeMap::from([
        ("sum", sum),
        ("count", d("5")),
        ("min", d("-2.25")),
        ("max", d("10")),
        ("avg", sum / d("5")),
        ("last", d("7")),
    ]);
    let today = base.date_naive();
    for (unit, value) in expected {
        let stored: Decimal = sqlx::query_scalar("SELECT value FROM daily_aggregates WHERE unit = $1 AND day = $2")
            .bind(unit)
            .bind(today)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored.normalize(), value.normalize(), "{unit}");
    }
    let late: Decimal = sqlx::query_scalar("SELECT value FROM daily_aggregates WHERE unit = 'sum' AND day = $1")
        .bind(yesterday.date_naive())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(late, d("100"));
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn billing_failures_show_then_recover_to_received(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    rule(&pool, "billed", "SUM", true).await;
    let failures = pipeline.billing_url.replace("/billing/v1/records", "/admin/failures");
    let set = pipeline.client.post(&failures).json(&json!({"mode": "http503", "count": 3})).send().await.unwrap();
    assert!(set.status().is_success());
    let id = pipeline.post_job("op", &job("op", "user", "app", &[("4", "billed", now_text())])).await;
    let failed = pipeline.wait_for(&id, WAIT, |b| b.counts.keys().any(|(_, _, s)| s == "FAILEDTOSENDFORBILLING")).await;
    assert!(failed.errors.iter().any(|e| e.error_type == uts_common::proto::v1::ErrorType::Billing as i32));
    let converged = BTreeMap::from([("RECEIVEDFORBILLING".to_owned(), 1)]);
    let board = pipeline.wait_for(&id, WAIT, |b| b.nonzero() == converged).await;
    assert_eq!(board.nonzero(), converged);
    assert_eq!(pipeline.billing_records().await.len(), 1);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_receipt_sent_later_by_callback_completes_the_job(pool: PgPool) {
    let pipeline = Pipeline::start_with_receipts_by_callback(pool.clone()).await;
    let (_, records) = billed_to_completion(&pipeline, "async-unit", ["4", "1.25"]).await;
    assert_eq!(records[0]["record"]["value"], "5.25");
    let (state, record_id): (String, Option<String>) =
        sqlx::query_as("SELECT state, record_id FROM billing_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), record_id.as_deref()), ("received", records[0]["recordId"].as_str()));
}

/// The official Node client (`@mindconnect/mindconnect-nodejs`, pinned in
/// `e2e/official-client/package-lock.json`, installed by `deploy/local/test.sh`), unmodified and
/// built only with its documented constructor, runs all five methods against the one address:
/// its token from `/oauth/token`, checked against `/token_keys`, then both POSTs and the three
/// GETs on the same base URL.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_official_node_client_works_against_the_one_address(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    let base = pipeline.base();
    // The operator creates the client through the one address too.
    let secret = pipeline.create_client("op-node-client", "op", &["uts.usages.write", "uts.usages.read"]).await;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("official-client");
    assert!(
        dir.join("node_modules/@mindconnect/mindconnect-nodejs").is_dir(),
        "the official client is not installed: run `npm ci` in {} (deploy/local/test.sh does)",
        dir.display()
    );
    let run = tokio::process::Command::new("node")
        .arg("run.js")
        .current_dir(&dir)
        .env("UTS_BASE_URL", &base)
        .env("UTS_CLIENT_ID", "op-node-client")
        .env("UTS_CLIENT_SECRET", &secret)
        .env("UTS_TENANT", "op")
        .env("UTS_IOT_TENANT", "plant")
        .env("UTS_CUSTOMER_TENANT", "buyer")
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(240), run).await.expect("the client ran for 4 minutes").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the official client failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {stderr}"));

    let id = out["accepted"]["id"].as_str().unwrap();
    assert_eq!(
        (out["accepted"]["status"].as_str(), out["accepted"]["usagesCount"].as_u64()),
        (Some("ACCEPTED"), Some(2))
    );
    assert_eq!(out["firstRead"]["id"], id, "read right after the 202: {}", out["firstRead"]);
    assert_eq!(out["completed"]["status"], "COMPLETED");
    assert_eq!(
        out["completed"]["usagesSummary"],
        json!([{"application": "app", "unit": "client-unit", "usagesCount": 2, "processStatus": "AGGREGATED"}])
    );
    assert_eq!(out["completedErrors"]["errors"], json!([]), "{}", out["completedErrors"]);
    assert_eq!(out["failing"]["status"], "ERRORS");
    let errors = out["errors"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", out["errors"]);
    assert_eq!(errors[0]["code"], "mdsp.uts.verification.tenantNotAllowed", "{}", out["errors"]);
    assert_eq!(out["legacy"], json!({}));
    let listed: Vec<&str> =
        out["list"]["jobs"].as_array().unwrap().iter().filter_map(|job| job["id"].as_str()).collect();
    for posted in out["ids"].as_array().unwrap() {
        assert!(listed.contains(&posted.as_str().unwrap()), "{posted} not in {listed:?}");
    }
    // The legacy POST made a job too, listed with the others (three in all).
    assert_eq!(listed.len(), 3, "{listed:?}");
    // The client's tenant (the token's ten) submitted them.
    let submitters: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT submitter_tenant_id FROM jobs").fetch_all(&pool).await.unwrap();
    assert_eq!(submitters, vec!["op"]);
}

/// Everything of the public API answers on the gateway's address: the dashboard, the OpenAPI
/// document, the admin API, the key sets, and unknown routes in the `mdsp` format.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_whole_api_answers_on_one_address(pool: PgPool) {
    let pipeline = Pipeline::start(pool).await;
    let base = pipeline.base();
    let get = |path: &str| pipeline.client.get(format!("{base}{path}")).send();
    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.headers().get("content-security-policy").is_some());
    assert!(page.text().await.unwrap().contains("<html"));
    let document: Value = get("/api/usagetransparency/v3/openapi.json").await.unwrap().json().await.unwrap();
    assert!(document["paths"]["/oauth/token"]["post"].is_object(), "the document is the real one");
    for path in ["/token_keys", "/.well-known/jwks.json"] {
        let keys: Value = get(path).await.unwrap().json().await.unwrap();
        assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{path}: {keys}");
    }
    let tenant = pipeline.get_json("/api/usagetransparency/v3/admin/tenants/op", &Pipeline::admin_token()).await;
    assert_eq!(tenant["tenantType"], "operator");
    let unknown = get("/api/usagetransparency/v3/nothing-here").await.unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.noMatch");
    let unauthenticated = get("/api/usagetransparency/v3/usagesJobs").await.unwrap();
    assert_eq!(unauthenticated.status(), reqwest::StatusCode::UNAUTHORIZED);
}

/// `utsctl send` posts a few thousand usages from a file as jobs of 200 through the one address
/// (authenticated by the token service), follows them and prints a summary; the same file sent
/// again is recognised job by job (the same Idempotency-Keys) and counted once.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn utsctl_send_counts_a_file_sent_twice_once(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    let base = pipeline.base();
    let secret = pipeline.create_client("op-backfill", "op", &["uts.usages.write", "uts.usages.read"]).await;

    // 3,000 usages that verify (plant: IoT tenant of op, app provisioned), then 2 that do not
    // (buyer is a customer tenant): 16 jobs, the last one with errors.
    let now = now_text();
    let mut lines = Vec::new();
    let mut expected = Decimal::ZERO;
    for i in 0..3000u32 {
        let value = format!("{}.{:03}", i % 50, i % 1000);
        expected += Decimal::from_str(&value).unwrap();
        lines.push(
            json!({"tenantId": "plant", "userId": "meter", "application": "app", "resource": format!("r{}", i % 10),
            "value": Value::from_str(&value).unwrap(), "unit": "send-unit", "datetime": now})
            .to_string(),
        );
    }
    for _ in 0..2 {
        lines.push(json!({"tenantId": "buyer", "application": "app", "resource": "r0", "value": 1, "unit": "send-unit", "datetime": now}).to_string());
    }
    let dir = std::env::temp_dir().join(format!("uts-send-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("usages.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let utsctl = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("utsctl");
    assert!(
        utsctl.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        utsctl.display()
    );
    let send = || {
        let run = tokio::process::Command::new(&utsctl)
            .arg("send")
            .arg(&file)
            .args(["--json", "--concurrency", "4", "--follow-timeout-seconds", "120"])
            .env("UTS_URL", &base)
            .env("UTS_CLIENT_ID", "op-backfill")
            .env("UTS_CLIENT_SECRET", &secret)
            .output();
        async move {
            let output =
                tokio::time::timeout(Duration::from_secs(240), run).await.expect("utsctl send ran 4 min").unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "utsctl send failed: {stderr}");
            serde_json::from_slice::<Value>(&output.stdout).unwrap_or_else(|err| panic!("{err}: {stderr}"))
        }
    };
    let first = send().await;
    assert_eq!((first["usages"].as_u64(), first["jobs"].as_u64()), (Some(3002), Some(16)), "{first}");
    assert_eq!((first["accepted"].as_u64(), first["replayed"].as_u64()), (Some(16), Some(0)), "{first}");
    assert_eq!(first["jobStatuses"], json!({"COMPLETED": 15, "ERRORS": 1}), "{first}");
    assert_eq!(first["usageStatuses"], json!({"AGGREGATED": 3000, "VERIFICATIONFAILED": 2}), "{first}");
    let errors: Vec<&str> = first["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    // One error for both usages of the same cause, naming their input lines.
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("lines 3001, 3002: mdsp.uts.verification.tenantNotAllowed"), "{errors:?}");

    let second = send().await;
    assert_eq!((second["accepted"].as_u64(), second["replayed"].as_u64()), (Some(0), Some(16)), "{second}");
    assert_eq!(second["jobIds"], first["jobIds"]);
    assert_eq!(second["usageStatuses"], first["usageStatuses"]);

    // Counted once: the daily aggregate holds each usage one time, exactly.
    let (sum, count): (Decimal, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(value), 0), COALESCE(sum(usages_count), 0)::bigint FROM daily_aggregates WHERE unit = 'send-unit'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((sum, count), (expected, 3000));
    // And the summary is what the query service reports.
    let token = uts_common::auth::mint_hs256(uts_e2e::SECRET, "op", "", &["uts.usages.read"], 600).unwrap();
    let listed = pipeline.get_json("/api/usagetransparency/v3/usagesJobs?size=100", &token).await;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for job in listed["jobs"].as_array().unwrap() {
        *statuses.entry(job["status"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(serde_json::to_value(&statuses).unwrap(), first["jobStatuses"], "{listed}");
    std::fs::remove_dir_all(&dir).ok();
}

/// What managed Kafka and PostgreSQL look like to the service: a Kafka that speaks SASL_SSL only
/// (SCRAM-SHA-512 over TLS, its certificate checked against a private CA) and a PostgreSQL that
/// refuses TCP without TLS (`sslmode=verify-full`). Every stage runs a job end to end through
/// them. `deploy/local/secure.sh` (run by `deploy/local/test.sh`) starts both and exports
/// `UTS_SECURE_*`.
#[tokio::test]
async fn a_job_runs_end_to_end_over_tls_and_sasl_with_plaintext_closed() {
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run deploy/local/secure.sh up and load .local/secure/env (deploy/local/test.sh does)")
        })
    };
    let url = env("UTS_SECURE_DATABASE_URL");
    let database = |url: String, max_connections| uts_common::config::DatabaseArgs { url, max_connections };

    // Plaintext is closed on both.
    let plain = sqlx::PgPool::connect(&url.replace("sslmode=verify-full", "sslmode=disable")).await;
    let refusal = plain.err().map(|err| err.to_string()).unwrap_or_default();
    assert!(refusal.contains("no encryption"), "PostgreSQL without TLS: {refusal:?}");
    let kafka_args = |flags: &[String]| {
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            kafka: uts_common::config::KafkaArgs,
        }
        <Args as clap::Parser>::parse_from(std::iter::once("test".to_owned()).chain(flags.iter().cloned())).kafka
    };
    let brokers = format!("--kafka-brokers={}", env("UTS_SECURE_KAFKA_BROKERS"));
    let mut flags = vec![
        brokers.clone(),
        "--kafka-security-protocol=sasl_ssl".to_owned(),
        format!("--kafka-ssl-ca-file={}", env("UTS_SECURE_KAFKA_CA_FILE")),
        "--kafka-sasl-mechanism=SCRAM-SHA-512".to_owned(),
        format!("--kafka-sasl-username={}", env("UTS_SECURE_KAFKA_SASL_USERNAME")),
    ];
    let wrong_password = [flags.clone(), vec!["--kafka-sasl-password=not-the-password".to_owned()]].concat();
    flags.push(format!("--kafka-sasl-password={}", env("UTS_SECURE_KAFKA_SASL_PASSWORD")));
    for (what, attempt) in [("plaintext", vec![brokers.clone()]), ("a wrong SASL password", wrong_password)] {
        let (producer, _) = uts_common::kafka::durable_producer(&kafka_args(&attempt)).unwrap();
        let reached = uts_common::kafka::check_reachable(&producer, Duration::from_secs(3)).await;
        assert!(reached.is_err(), "Kafka answered a client with {what}");
    }
    let (producer, _) = uts_common::kafka::durable_producer(&kafka_args(&flags)).unwrap();
    uts_common::kafka::check_reachable(&producer, Duration::from_secs(10)).await.expect("SASL_SSL with SCRAM-SHA-512");

    // A database of its own, reached over TLS only.
    let server = uts_common::db::connect(&database(url.clone(), 2)).await.expect("PostgreSQL over TLS");
    let name = format!("tls_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&server).await.unwrap();
    let pool = uts_common::db::connect(&database(url.replacen("/uts?", &format!("/{name}?"), 1), 20)).await.unwrap();
    uts_common::db::migrate(&pool).await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(encrypted);

    let pipeline = Pipeline::start_with_kafka(pool.clone(), &flags).await;
    let id = pipeline
        .post_job("op", &job("op", "user", "app", &[("2.5", "tls-unit", now_text()), ("4", "tls-unit", now_text())]))
        .await;
    let shown = pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    assert_eq!(shown["usagesSummary"][0]["processStatus"], "AGGREGATED", "{shown}");
    let value: Decimal = sqlx::query_scalar("SELECT value FROM daily_aggregates WHERE unit = 'tls-unit'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(value, Decimal::from_str("6.5").unwrap());
    // Its status events went through the SASL_SSL broker too.
    let board = pipeline.board(&id).await;
    assert_eq!(board.in_status("AGGREGATED"), 2, "{board:?}");

    drop(pipeline);
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&server).await.ok();
}

/// Every query of the Grafana dashboard (`deploy/grafana/uts-dashboard.json`) and every metric
/// `docs/architecture.md` names is one the services really export: after a billed job (receipt
/// by callback), a token request and reads through the one address, the Prometheus registry of
/// this process — every stage runs in it — holds each one (histograms with their `_bucket`
/// series). And every metric exported then is named in the document.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn every_dashboard_query_and_documented_metric_names_a_metric_the_services_export(pool: PgPool) {
    let pipeline = Pipeline::start_with_receipts_by_callback(pool.clone()).await;
    rule(&pool, "dash-unit", "SUM", true).await;
    let id = pipeline.post_job("op", &job("op", "user", "app", &[("1", "dash-unit", now_text())])).await;
    pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    let secret = pipeline.create_client("op-dashboard", "op", &["uts.usages.read"]).await;
    let token = pipeline
        .client
        .post(format!("{}/oauth/token", pipeline.base()))
        .basic_auth("op-dashboard", Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), reqwest::StatusCode::OK);

    let dashboard: Value = serde_json::from_str(include_str!("../../deploy/grafana/uts-dashboard.json")).unwrap();
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .flat_map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("uts_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    let architecture = include_str!("../../docs/architecture.md");
    let documented: Vec<String> = architecture
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.split('{').next().unwrap())
        // Every metric-like name, whatever its kind (a gauge need not end in _total, _seconds or
        // _messages); paths such as `uts_common::http` have `::`, topics such as `uts.status` dots.
        .filter(|name| {
            name.starts_with("uts_") && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    assert!(documented.len() >= 20, "{documented:?}");
    names.extend(documented.iter().cloned());
    names.sort();
    names.dedup();
    // The lag gauges come from librdkafka's statistics, every 5 s: poll for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let exported = uts_common::telemetry::metrics_handle().render();
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| {
                // A histogram is exported as its _bucket, _sum and _count series.
                !exported.lines().any(|line| {
                    ["{", " ", "_bucket{", "_sum{", "_sum ", "_count{", "_count "]
                        .iter()
                        .any(|end| line.starts_with(&format!("{name}{end}")))
                })
            })
            .collect();
        if missing.is_empty() {
            let mut undocumented: Vec<&str> = exported
                .lines()
                .filter(|line| line.starts_with("uts_"))
                .map(|line| line.split(['{', ' ']).next().unwrap())
                .map(|name| ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n)))
                .filter(|name| !documented.iter().any(|d| d == name))
                .collect();
            undocumented.dedup();
            assert!(undocumented.is_empty(), "exported, but not in docs/architecture.md: {undocumented:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "metrics queried or documented that nobody exports: {missing:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `utsctl` binary beside the test binaries (`cargo build --bins`).
fn utsctl() -> std::path::PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join("utsctl");
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

/// The dead letters on the pipeline's topic, decoded.
async fn dead_letters(pipeline: &Pipeline) -> Vec<uts_common::proto::v1::DeadLetter> {
    let topic = pipeline.kafka.topics().dead_letter;
    uts_testkit::decode_all(
        &uts_testkit::read_topic_to_end(&pipeline.kafka, &topic, Duration::from_secs(20)).await.unwrap(),
    )
}

/// Replaying a dead letter that is still bad is safe, as the architecture document says: both
/// consumers of the jobs topic (the verifier and the query service) set it aside again with the
/// same reason, and the pipeline goes on (a good job posted after it completes).
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_replayed_dead_letter_that_is_still_bad_is_set_aside_again(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    rule(&pool, "dl-unit", "SUM", true).await;
    let topics = pipeline.kafka.topics();
    let (producer, _) = uts_common::kafka::durable_producer(&pipeline.kafka).unwrap();
    uts_common::kafka::produce_durably(&producer, &topics.usage_jobs, b"bad-1", b"\xff\xffnot protobuf", WAIT)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let first = loop {
        if let Some(letter) = dead_letters(&pipeline).await.into_iter().next() {
            break letter;
        }
        assert!(std::time::Instant::now() < deadline, "the bad message was never dead-lettered");
    };
    assert_eq!(first.original_key, b"bad-1");

    let output = std::process::Command::new(utsctl())
        .args(["dead-letters", "--replay", &first.source_topic])
        .args(["--partition", &first.partition.to_string(), "--offset", &first.offset.to_string()])
        .env("UTS_KAFKA_BROKERS", &pipeline.kafka.brokers)
        .env("UTS_TOPIC_PREFIX", &pipeline.kafka.topic_prefix)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Both consumers of the jobs topic (the verifier and the query service) set the original
    // aside, and the replay again: two letters each, with the same reason.
    let deadline = std::time::Instant::now() + WAIT;
    let mut letters = loop {
        let letters = dead_letters(&pipeline).await;
        if letters.len() >= 4 {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "the replayed message was not set aside again: {letters:?}");
    };
    // Four arrived; a fifth would come moments later: read on until the count has stood still
    // for 500 ms, so an exact count sees it.
    let mut stable_since = std::time::Instant::now();
    while stable_since.elapsed() < uts_testkit::GRACE {
        let again = dead_letters(&pipeline).await;
        if again.len() != letters.len() {
            (letters, stable_since) = (again, std::time::Instant::now());
        }
        assert!(std::time::Instant::now() < deadline, "dead letters kept coming: {letters:?}");
    }
    assert_eq!(letters.len(), 4, "{letters:?}");
    for stage in [uts_common::proto::v1::Stage::Verifier, uts_common::proto::v1::Stage::QueryService] {
        let of_stage: Vec<_> = letters.iter().filter(|l| l.stage == stage as i32).collect();
        assert_eq!(of_stage.len(), 2, "{stage:?}: {letters:?}");
        let (original, again) = (of_stage[0], of_stage[1]);
        assert_eq!(again.original_key, b"bad-1");
        assert_eq!(again.original_value, original.original_value);
        assert_eq!(again.reason, original.reason, "{stage:?}");
        assert_ne!(again.offset, original.offset, "the replay is a new message of the source topic");
    }

    let id = pipeline.post_job("op", &job("op", "user", "app", &[("1", "dl-unit", now_text())])).await;
    pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
}

/// Runs `utsctl` with `args` and `env`; (succeeded, stdout, stderr).
async fn run_utsctl(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(utsctl());
    command.args(args).env("RUST_BACKTRACE", "0");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("utsctl {args:?} ran for 2 minutes"))
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Every `utsctl` command does what its help says, against the running pipeline and the test's
/// own database and topics: `migrate`, `topics`, `token`, `tenant` (the admin API's checks:
/// what `PUT /admin/tenants` refuses it refuses, with the same words, storing nothing), `status`,
/// `jobs follow`/`errors`, `clients create|list|rotate-secret|revoke`, `signing-keys
/// list|rotate`. (`send` and `dead-letters` have tests of their own.)
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn every_utsctl_command_does_what_it_says(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    let base = pipeline.base();
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).unwrap();
    url.set_path(&database);
    let db = [("DATABASE_URL", url.as_str())];
    let brokers = pipeline.kafka.brokers.clone();

    // migrate: nothing left to apply on a migrated database, and nothing changes.
    let applied = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool);
    let before = applied().await.unwrap();
    let (ok, out, err) = run_utsctl(&["migrate"], &db).await;
    assert!(ok && out.contains("migrations applied"), "{out}{err}");
    assert_eq!(applied().await.unwrap(), before);

    // topics: the five topics under a new prefix exist afterwards.
    let prefix = format!("{}-ctl", pipeline.kafka.topic_prefix);
    let (ok, out, err) = run_utsctl(&["topics", "--topic-prefix", &prefix], &[("UTS_KAFKA_BROKERS", &brokers)]).await;
    assert!(ok && out.starts_with("topics ready:"), "{out}{err}");
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10)).unwrap();
    let existing: Vec<&str> = metadata.topics().iter().map(|topic| topic.name()).collect();
    for suffix in ["usage-jobs", "usages.verified", "aggregates", "status", "dead-letter"] {
        assert!(existing.contains(&format!("{prefix}.{suffix}").as_str()), "{prefix}.{suffix} missing");
    }

    // token: the gateway accepts what it prints.
    let (ok, out, err) = run_utsctl(
        &["token", "--tenant", "op", "--scopes", "uts.usages.write,uts.usages.read"],
        &[("UTS_JWT_HS256_SECRET", uts_e2e::SECRET)],
    )
    .await;
    assert!(ok, "{err}");
    let token = out.trim().to_owned();
    let listed = pipeline.client.get(format!("{base}/api/usagetransparency/v3/usagesJobs")).bearer_auth(&token).send();
    assert_eq!(listed.await.unwrap().status(), reqwest::StatusCode::OK);

    // tenant: registered and replaced; refused with the admin API's words, nothing stored.
    let (ok, out, err) = run_utsctl(&["tenant", "--id", "ctl-plant", "--type", "iot", "--operator", "op"], &db).await;
    assert!(ok && out.contains("tenant ctl-plant registered as iot"), "{out}{err}");
    let (ok, out, err) = run_utsctl(
        &["tenant", "--id", "ctl-plant", "--type", "iot", "--operator", "op", "--display-name", "Plant"],
        &db,
    )
    .await;
    assert!(ok && out.contains("tenant ctl-plant replaced as iot"), "{out}{err}");
    let stored: (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT tenant_type, operator_tenant_id, display_name FROM tenants WHERE tenant_id = 'ctl-plant'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, ("iot".into(), Some("op".into()), Some("Plant".into())));
    for (args, words) in [
        (vec!["--id", "ctl-bad", "--type", "iot"], "operatorTenantId is required"),
        (
            vec!["--id", "ctl-bad", "--type", "iot", "--operator", "prov"],
            "must name an operator tenant; prov is a developer tenant",
        ),
        (
            vec!["--id", "ctl-bad", "--type", "iot", "--operator", "nobody"],
            "operatorTenantId names no registered tenant",
        ),
        (vec!["--id", "ctl-bad", "--type", "developer", "--operator", "op"], "operatorTenantId must be left out"),
        (vec!["--id", "ctl\u{1}bad", "--type", "developer"], "tenantId must not contain control characters"),
        (vec!["--id", "op", "--type", "developer"], "cannot change from operator while it operates IoT tenants"),
    ] {
        let (ok, out, err) = run_utsctl(&[&["tenant"][..], &args].concat(), &db).await;
        assert!(!ok && err.contains(words), "{args:?}: {out}{err}");
    }
    let bad: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE tenant_id LIKE 'ctl%bad'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(bad, 0);
    let op_type: String =
        sqlx::query_scalar("SELECT tenant_type FROM tenants WHERE tenant_id = 'op'").fetch_one(&pool).await.unwrap();
    assert_eq!(op_type, "operator");

    // status and jobs: a completed job and one with an error, as the API shows them.
    let now = now_text();
    let good = pipeline.post_job("op", &job("plant", "user", "app", &[("1.5", "ctl-unit", now.clone())])).await;
    let failing = pipeline.post_job("op", &job("buyer", "user", "app", &[("1", "ctl-unit", now)])).await;
    let (ok, out, err) =
        run_utsctl(&["jobs", "follow", &good, "--url", &base, "--token", &token, "--timeout-seconds", "90"], &[]).await;
    assert!(ok && out.contains("COMPLETED: 1 app/ctl-unit AGGREGATED"), "{out}{err}");
    let (ok, out, err) =
        run_utsctl(&["jobs", "follow", &failing, "--url", &base, "--token", &token, "--timeout-seconds", "90"], &[])
            .await;
    assert!(ok && out.contains("ERRORS"), "{out}{err}");
    let (ok, out, err) = run_utsctl(&["jobs", "errors", &failing, "--url", &base, "--token", &token], &[]).await;
    assert!(ok && out.contains("mdsp.uts.verification.tenantNotAllowed") && out.contains("1 error(s)"), "{out}{err}");
    let kafka = [("UTS_KAFKA_BROKERS", brokers.as_str()), ("UTS_TOPIC_PREFIX", pipeline.kafka.topic_prefix.as_str())];
    let (ok, out, err) = run_utsctl(&["status", "--job", &good], &kafka).await;
    assert!(ok && out.contains(&format!("job {good}")) && out.contains("app / ctl-unit: 1 AGGREGATED"), "{out}{err}");

    // clients: a secret that gets tokens, a rotation that ends the old one, a revocation.
    let token_with = |secret: String| {
        let request = pipeline
            .client
            .post(format!("{base}/oauth/token"))
            .basic_auth("ctl-client", Some(secret))
            .form(&[("grant_type", "client_credentials")]);
        async move { request.send().await.unwrap().status() }
    };
    let secret_of = |out: &str| {
        out.lines().find_map(|line| line.strip_prefix("client_secret=")).unwrap_or_else(|| panic!("{out}")).to_owned()
    };
    let (ok, out, err) =
        run_utsctl(&["clients", "create", "--id", "ctl-client", "--tenant", "op", "--scopes", "uts.usages.read"], &db)
            .await;
    assert!(ok && out.contains("created ctl-client  tenant op  scopes uts.usages.read"), "{out}{err}");
    let first = secret_of(&out);
    assert_eq!(token_with(first.clone()).await, reqwest::StatusCode::OK);
    let (ok, out, err) = run_utsctl(&["clients", "list", "--tenant", "op"], &db).await;
    assert!(ok && out.contains("ctl-client  tenant op") && out.contains("1 client(s)"), "{out}{err}");
    let (ok, out, err) = run_utsctl(&["clients", "rotate-secret", "--id", "ctl-client"], &db).await;
    assert!(ok, "{out}{err}");
    let second = secret_of(&out);
    assert_eq!(token_with(first).await, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(token_with(second.clone()).await, reqwest::StatusCode::OK);
    let (ok, out, err) = run_utsctl(&["clients", "revoke", "--id", "ctl-client"], &db).await;
    assert!(ok && out.contains("revoked ctl-client"), "{out}{err}");
    assert_eq!(token_with(second).await, reqwest::StatusCode::UNAUTHORIZED);

    // signing-keys: a rotation puts a new current key first, the old one still accepted.
    let (ok, before, err) = run_utsctl(&["signing-keys", "list"], &db).await;
    assert!(ok && before.lines().next().is_some_and(|line| line.ends_with("current")), "{before}{err}");
    let (ok, out, err) = run_utsctl(&["signing-keys", "rotate"], &db).await;
    assert!(ok, "{out}{err}");
    let (ok, after, err) = run_utsctl(&["signing-keys", "list"], &db).await;
    assert!(ok, "{err}");
    let kid =
        |list: &str, at: usize| list.lines().nth(at).and_then(|line| line.split_whitespace().next()).map(str::to_owned);
    assert_ne!(kid(&after, 0), kid(&before, 0), "{after}");
    assert!(after.lines().next().unwrap().ends_with("current"), "{after}");
    assert_eq!(kid(&after, 1), kid(&before, 0), "the old key stays listed: {after}");
    assert!(after.lines().nth(1).unwrap().contains("accepted until"), "{after}");
}
