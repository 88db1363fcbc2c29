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

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_billed_job_ends_received_for_billing(pool: PgPool) {
    let pipeline = Pipeline::start(pool.clone()).await;
    rule(&pool, "billed-unit", "SUM", true).await;
    let id = pipeline
        .post_job(
            "op",
            &job("op", "user", "app", &[("20", "billed-unit", now_text()), ("2.5", "billed-unit", now_text())]),
        )
        .await;
    // Converged: stages' events may arrive in any order (billing's before the aggregator's).
    let converged = BTreeMap::from([("RECEIVEDFORBILLING".to_owned(), 2)]);
    let board = pipeline.wait_for(&id, WAIT, |b| b.nonzero() == converged).await;
    assert_eq!(board.nonzero(), converged);
    // The query service shows the same: COMPLETED, both usages RECEIVEDFORBILLING.
    let shown = pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    assert_eq!(
        shown["usagesSummary"],
        json!([{"application": "app", "unit": "billed-unit", "usagesCount": 2,
        "processStatus": "RECEIVEDFORBILLING"}])
    );
    let records = pipeline.billing_records().await;
    assert_eq!(records.len(), 1);
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
    rule(&pool, "async-unit", "SUM", true).await;
    let id = pipeline
        .post_job(
            "op",
            &job("op", "user", "app", &[("4", "async-unit", now_text()), ("1.25", "async-unit", now_text())]),
        )
        .await;
    // Converged: stages' events may arrive in any order (billing's before the aggregator's).
    let converged = BTreeMap::from([("RECEIVEDFORBILLING".to_owned(), 2)]);
    let board = pipeline.wait_for(&id, WAIT, |b| b.nonzero() == converged).await;
    assert_eq!(board.nonzero(), converged);
    let shown = pipeline.wait_for_job_status("op", &id, "COMPLETED", WAIT).await;
    assert_eq!(
        shown["usagesSummary"],
        json!([{"application": "app", "unit": "async-unit", "usagesCount": 2,
        "processStatus": "RECEIVEDFORBILLING"}])
    );
    let records = pipeline.billing_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["record"]["value"], "5.25");
    let (state, record_id): (String, Option<String>) =
        sqlx::query_as("SELECT state, record_id FROM billing_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), record_id.as_deref()), ("received", records[0]["recordId"].as_str()));
}
