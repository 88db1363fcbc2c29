//! The billing-forwarder against the real Kafka, PostgreSQL and the reference billing receiver
//! over HTTP: billable versions reach billing once each, in order; a failing billing system
//! gives FAILEDTOSENDFORBILLING, then recovery gives SENT and RECEIVED; a billing system that
//! answers 202 and sends its receipt later by callback gives SENT, then RECEIVED.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::proto::{v1, Message};
use uts_testkit::{decode_all, isolated_kafka, read_messages, read_topic};

const WAIT: Duration = Duration::from_secs(60);

/// The token of the forwarder's receipts endpoint in the tests that post receipts.
const TOKEN: &str = "receipts-test-token-0123456789";

/// A listener for a forwarder's receipts endpoint and the endpoint's URL, for a billing system
/// that must know it before the forwarder starts.
async fn receipts_endpoint() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/billing/v1/receipts", listener.local_addr().unwrap());
    (listener, url)
}

/// A fresh one-partition Kafka and a billing receiver that accepts everything (its URL).
async fn kafka_and_receiver() -> (KafkaArgs, String, CancellationToken) {
    let args = isolated_kafka(1).await;
    let (url, receiver) = start_receiver(&[]).await;
    (args, url, receiver)
}

async fn start_receiver(extra: &[&str]) -> (String, CancellationToken) {
    let mut args = vec!["billing-receiver", "--listen-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"];
    args.extend_from_slice(extra);
    let app = billing_receiver::Application::build(billing_receiver::Config::parse_from(args)).await.unwrap();
    let url = format!("http://{}/billing/v1/records", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    (url, shutdown)
}

async fn start_forwarder(kafka_args: &KafkaArgs, pool: PgPool, billing_url: &str) -> CancellationToken {
    start_forwarder_with(kafka_args, pool, billing_url, &["--receipts-addr=127.0.0.1:0"]).await
}

async fn start_forwarder_with(
    kafka_args: &KafkaArgs,
    pool: PgPool,
    billing_url: &str,
    extra: &[&str],
) -> CancellationToken {
    let receipts_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_forwarder_on(kafka_args, pool, billing_url, receipts_listener, extra)
}

/// A forwarder whose receipts endpoint on `receipts_listener` takes receipts with [`TOKEN`].
fn taking_receipts(
    kafka_args: &KafkaArgs,
    pool: PgPool,
    billing_url: &str,
    receipts_listener: tokio::net::TcpListener,
) -> CancellationToken {
    start_forwarder_on(kafka_args, pool, billing_url, receipts_listener, &[&format!("--receipts-token={TOKEN}")])
}

/// A forwarder whose receipts endpoint is on `receipts_listener` (bound by a test that must
/// hand its address to the receiver first).
fn start_forwarder_on(
    kafka_args: &KafkaArgs,
    pool: PgPool,
    billing_url: &str,
    receipts_listener: tokio::net::TcpListener,
    extra: &[&str],
) -> CancellationToken {
    let mut args = vec![
        "billing-forwarder".to_owned(),
        "--database-url=postgres://unused".to_owned(),
        "--admin-addr=127.0.0.1:0".to_owned(),
        "--send-interval-ms=50".to_owned(),
        "--retry-base-ms=100".to_owned(),
        format!("--billing-url={billing_url}"),
        format!("--consumer-group=forwarder-{}", uuid::Uuid::new_v4()),
        format!("--kafka-brokers={}", kafka_args.brokers),
        format!("--topic-prefix={}", kafka_args.topic_prefix),
    ];
    if extra.iter().any(|arg| arg.starts_with("--consumer-group=")) {
        args.retain(|arg| !arg.starts_with("--consumer-group="));
    }
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let config = billing_forwarder::Config::parse_from(args);
    uts_common::telemetry::init(&config.stage.telemetry, "billing-forwarder");
    let shutdown = CancellationToken::new();
    tokio::spawn(billing_forwarder::run_with_receipts_listener(config, pool, receipts_listener, shutdown.clone()));
    shutdown
}

fn aggregate(unit: &str, version: u64, value: &str, billable: bool, jobs: &[(&str, u32)]) -> Vec<u8> {
    v1::DailyAggregate {
        bucket: Some(v1::BucketKey {
            key: Some(v1::AggregationKey {
                provider_tenant: "provider".into(),
                consumer_tenant: "consumer".into(),
                application: "app".into(),
                unit: unit.into(),
            }),
            day: "2026-11-21".into(),
        }),
        version,
        value: value.into(),
        function: v1::AggregationFunction::Sum as i32,
        billable,
        usages_count: jobs.iter().map(|(_, n)| u64::from(*n)).sum(),
        contributions: jobs
            .iter()
            .map(|(job, n)| v1::JobContribution { job_id: (*job).into(), usages_count: *n })
            .collect(),
        updated_at: None,
        rule_id: "rule-1".into(),
    }
    .encode_to_vec()
}

/// `payloads` to the aggregates topic, all under one key (one partition, in order).
async fn produce(args: &KafkaArgs, payloads: &[Vec<u8>]) {
    let messages: Vec<(&[u8], &[u8])> = payloads.iter().map(|payload| (&b"bucket"[..], payload.as_slice())).collect();
    uts_testkit::produce(args, &args.topics().aggregates, &messages).await;
}

async fn records(url: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let records: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
        if records.len() >= at_least || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events(messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<v1::StatusEvent> {
    decode_all(messages)
}

/// Each event id once, first occurrence kept: what the projection applies.
fn distinct(events: Vec<v1::StatusEvent>) -> Vec<v1::StatusEvent> {
    let mut seen = std::collections::HashSet::new();
    events.into_iter().filter(|e| seen.insert(e.event_id.clone())).collect()
}

/// The status board of every job, folded from the status topic, once `done` holds for them
/// (or at the deadline, for the caller's assertions to say what is missing).
async fn boards_until(
    args: &KafkaArgs,
    done: impl Fn(&std::collections::BTreeMap<String, uts_common::status::Board>) -> bool,
) -> std::collections::BTreeMap<String, uts_common::status::Board> {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = uts_testkit::read_topic_to_end(args, &args.topics().status, WAIT).await.unwrap();
        let mut boards: std::collections::BTreeMap<String, uts_common::status::Board> = Default::default();
        for event in events(&messages) {
            boards.entry(event.job_id.clone()).or_default().apply(&event);
        }
        if done(&boards) || Instant::now() > deadline {
            return boards;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn billable_versions_reach_billing_once_each_in_order(pool: PgPool) {
    let (args, url, receiver) = kafka_and_receiver().await;
    let forwarder = start_forwarder(&args, pool, &url).await;
    produce(
        &args,
        &[
            aggregate("u", 1, "20", true, &[("job-1", 1)]),
            aggregate("u", 1, "20", true, &[("job-1", 1)]), // redelivered
            aggregate("u", 2, "25.5", true, &[("job-2", 2)]),
            aggregate("free", 1, "3", false, &[("job-3", 1)]),
        ],
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let stored = records(&url, 1).await;
        if stored.last().is_some_and(|r| r["record"]["version"] == 2) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statuses = events(&read_topic(&args, &args.topics().status, 4, WAIT).await);
    let versions: Vec<(u64, String)> = stored
        .iter()
        .map(|r| (r["record"]["version"].as_u64().unwrap(), r["record"]["value"].as_str().unwrap().to_owned()))
        .collect();
    // Version 1 is sent, or superseded by version 2 when both were due at once (then version
    // 2's record covers version 1's job); never out of order.
    assert!(
        versions == [(1, "20".to_owned()), (2, "25.5".to_owned())] || versions == [(2, "25.5".to_owned())],
        "{versions:?}"
    );
    let last = stored.last().unwrap();
    assert_eq!(last["idempotencyKey"], "provider/consumer/app/u/2026-11-21:2");
    let from = if versions.len() == 2 { 2 } else { 1 };
    assert_eq!(last["record"]["coveredVersions"], serde_json::json!({"from": from, "to": 2}));
    let mut ids: Vec<&str> = statuses.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "billing:job-1:provider/consumer/app/u/2026-11-21:1:received",
            "billing:job-1:provider/consumer/app/u/2026-11-21:1:sent",
            "billing:job-2:provider/consumer/app/u/2026-11-21:2:received",
            "billing:job-2:provider/consumer/app/u/2026-11-21:2:sent"
        ]
    );
    let last = statuses.iter().find(|e| e.event_id.ends_with(":2:received")).unwrap();
    assert_eq!(last.transitions.last().unwrap().to, v1::UsageStatus::Receivedforbilling as i32);
    assert_eq!(last.transitions.last().unwrap().count, 2);
    forwarder.cancel();
    receiver.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_failing_billing_system_is_retried_until_it_receives(pool: PgPool) {
    let args = isolated_kafka(1).await;
    let (url, receiver) = start_receiver(&["--fail-first=2"]).await;
    let forwarder = start_forwarder(&args, pool, &url).await;
    produce(&args, &[aggregate("u", 1, "7", true, &[("job-9", 3)])]).await;
    // The history is produced whole at each step (fixed ids): failed; then failed, sent, received.
    let statuses = distinct(events(&read_topic(&args, &args.topics().status, 4, WAIT).await));
    assert_eq!(statuses.len(), 3, "one failure event, then sent and received: {statuses:?}");
    use v1::UsageStatus as S;
    let failed = &statuses[0];
    assert_eq!(failed.transitions[0].to, S::Failedtosendforbilling as i32);
    assert_eq!(failed.errors[0].error_type, v1::ErrorType::Billing as i32);
    assert_eq!(
        failed.errors[0].error_data,
        Some(v1::usage_error::ErrorData::BillingIds("provider/consumer/app/u/2026-11-21:1".into()))
    );
    let steps: Vec<(i32, i32)> =
        statuses[1..].iter().flat_map(|e| e.transitions.iter().map(|t| (t.from, t.to))).collect();
    assert_eq!(
        steps,
        vec![
            (S::Failedtosendforbilling as i32, S::Sentforbilling as i32),
            (S::Sentforbilling as i32, S::Receivedforbilling as i32)
        ]
    );
    assert_eq!(records(&url, 1).await.len(), 1);
    forwarder.cancel();
    receiver.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn poison_goes_to_the_dead_letter_topic_and_the_forwarder_carries_on(pool: PgPool) {
    let (args, url, receiver) = kafka_and_receiver().await;
    let forwarder = start_forwarder(&args, pool, &url).await;
    let mut odd = v1::DailyAggregate::decode(aggregate("odd", 1, "1", true, &[("job-odd", 1)]).as_slice()).unwrap();
    odd.function = 42;
    produce(
        &args,
        &[b"\x08\x96\x01 junk".to_vec(), odd.encode_to_vec(), aggregate("u", 1, "1", true, &[("job-after", 1)])],
    )
    .await;
    let letters: Vec<v1::DeadLetter> = read_messages(&args, &args.topics().dead_letter, 2, WAIT).await;
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.stage == v1::Stage::BillingForwarder as i32));
    assert!(letters.iter().any(|l| l.reason.contains("unknown aggregation function 42")), "{letters:?}");
    assert_eq!(records(&url, 1).await.len(), 1, "the aggregate after the poison was billed");
    forwarder.cancel();
    receiver.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_receipt_by_callback_completes_a_record_answered_202(pool: PgPool) {
    let args = isolated_kafka(1).await;
    // Bound here and handed to the forwarder: the receiver needs the address first.
    let (receipts_listener, receipts) = receipts_endpoint().await;
    let (url, receiver) =
        start_receiver(&[&format!("--receipts-url={receipts}"), &format!("--receipts-token={TOKEN}")]).await;
    let forwarder = taking_receipts(&args, pool.clone(), &url, receipts_listener);
    produce(&args, &[aggregate("u", 1, "4.5", true, &[("job-r", 4)])]).await;

    // SENT (from the 202) and RECEIVED (from the callback), in whichever order they were produced.
    let statuses = distinct(events(&read_topic(&args, &args.topics().status, 3, WAIT).await));
    use v1::UsageStatus as S;
    let step = |what: &str| {
        let event = statuses
            .iter()
            .find(|e| e.event_id.ends_with(what))
            .unwrap_or_else(|| panic!("no {what} event: {statuses:?}"));
        event.transitions.iter().map(|t| (t.from, t.to, t.count, t.terminal)).collect::<Vec<_>>()
    };
    assert_eq!(step(":1:sent"), vec![(S::Aggregated as i32, S::Sentforbilling as i32, 4, false)]);
    assert_eq!(step(":1:received"), vec![(S::Sentforbilling as i32, S::Receivedforbilling as i32, 4, true)]);
    let stored = records(&url, 1).await;
    let deadline = Instant::now() + WAIT;
    let (state, record_id) = loop {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT state, record_id FROM billing_outbox").fetch_one(&pool).await.unwrap();
        if row.0 == "received" || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state, "received");
    assert_eq!(record_id.as_deref(), stored[0]["recordId"].as_str(), "the billing system's id is kept");

    // The endpoint: bearer token, a body naming a known record.
    let client = reqwest::Client::new();
    let post = |token: &str, body: Value| client.post(&receipts).bearer_auth(token).json(&body).send();
    let key = "provider/consumer/app/u/2026-11-21:1";
    let answer = post("wrong", serde_json::json!({"idempotencyKey": key})).await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    let answer =
        post(TOKEN, serde_json::json!({"idempotencyKey": "provider/consumer/app/u/2026-11-21:9"})).await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    let answer = post(TOKEN, serde_json::json!({"recordId": "x"})).await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.missingRequestBodyProperty");
    assert!(body["errors"][0]["message"].as_str().unwrap().starts_with("idempotencyKey"));
    // A repeated receipt is taken and changes nothing: the same event id again.
    let answer = post(TOKEN, serde_json::json!({"idempotencyKey": key})).await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    // sent (the 202), sent + received (the receipt), sent + received (the repeat): same ids. (The
    // sender's own history after the 202 may repeat them once more when the callback overtook
    // it: harmless, the projection applies an id once.)
    let again = events(&read_topic(&args, &args.topics().status, 5, WAIT).await);
    assert!(again.iter().filter(|e| e.event_id.ends_with(":1:received")).count() >= 2, "repeated, same id");
    assert_eq!(distinct(again).len(), 2);
    forwarder.cancel();
    receiver.cancel();
}

/// A receipt that overtakes the forwarder's own handling of the 202: the billing system POSTs the
/// receipt and only answers the record (202) once the receipt was taken. The row stays
/// `received` with the billing system's record id (the update after the send never downgrades
/// it), and the record's events are "sent" and "received", each once, folding to RECEIVED.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_receipt_that_overtakes_the_202_leaves_the_record_received(pool: PgPool) {
    let args = isolated_kafka(1).await;
    let (receipts_listener, receipts) = receipts_endpoint().await;
    // The billing system: receipt first, then the 202.
    let billing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let billing_url = format!("http://{}/billing/v1/records", billing.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let app = {
        let (receipts, taken) = (receipts.clone(), taken.clone());
        axum::Router::new().route(
            "/billing/v1/records",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let (receipts, taken) = (receipts.clone(), taken.clone());
                async move {
                    let key =
                        headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let answer = reqwest::Client::new()
                        .post(&receipts)
                        .bearer_auth(TOKEN)
                        .json(&serde_json::json!({"idempotencyKey": key, "recordId": "early-1"}))
                        .send()
                        .await
                        .unwrap();
                    taken.lock().unwrap().push(answer.status().as_u16());
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        )
    };
    tokio::spawn(async move { axum::serve(billing, app).await.unwrap() });
    let forwarder = taking_receipts(&args, pool.clone(), &billing_url, receipts_listener);
    produce(&args, &[aggregate("u", 1, "2", true, &[("job-early", 2)])]).await;

    let statuses = distinct(events(&read_topic(&args, &args.topics().status, 2, WAIT).await));
    assert_eq!(taken.lock().unwrap().first(), Some(&200), "the receipt was taken before the 202");
    let ids: Vec<&str> = statuses.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.iter().any(|id| id.ends_with(":1:sent")) && ids.iter().any(|id| id.ends_with(":1:received")),
        "{ids:?}"
    );
    // What the projection folds: 2 usages AGGREGATED → SENT → RECEIVED, whatever the order.
    use v1::UsageStatus as S;
    let mut counts = std::collections::BTreeMap::<i32, i64>::new();
    for transition in statuses.iter().flat_map(|e| &e.transitions) {
        *counts.entry(transition.from).or_default() -= i64::from(transition.count);
        *counts.entry(transition.to).or_default() += i64::from(transition.count);
    }
    counts.retain(|_, n| *n != 0);
    assert_eq!(
        counts,
        [(S::Aggregated as i32, -2), (S::Receivedforbilling as i32, 2)].into_iter().collect(),
        "{statuses:?}"
    );
    // The forwarder has handled its 202 by now (its "sent" event is out); the row was not
    // downgraded to `sent`, and the billing system's id stays.
    let deadline = Instant::now() + WAIT;
    loop {
        let row: (String, Option<String>, bool) =
            sqlx::query_as("SELECT state, record_id, NOT events_pending FROM billing_outbox")
                .fetch_one(&pool)
                .await
                .unwrap();
        if row.2 {
            assert_eq!((row.0.as_str(), row.1.as_deref()), ("received", Some("early-1")));
            break;
        }
        assert!(Instant::now() < deadline, "the sender never settled the row: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forwarder.cancel();
}

/// The crash windows: the forwarder died after writing a row's new state and before producing
/// its events. The next forwarder produces the pending history, and what the jobs end with is
/// right (folded as the projection folds).
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn histories_left_pending_by_a_crash_are_produced_and_fold_right(pool: PgPool) {
    let (args, url, receiver) = kafka_and_receiver().await;
    let insert = |unit: &'static str, state: &'static str, failure_reported: bool, job: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO billing_outbox (provider_tenant_id, consumer_tenant_id, application, unit, day, version, message,
                     record_key, state, failure_reported, events_pending, last_error, next_attempt_at, updated_at)
                 VALUES ('provider', 'consumer', 'app', $1, '2026-11-21', 1, $2, $3, $4, $5, true, 'billing answered 503',
                         now(), now() - interval '1 minute')",
            )
            .bind(unit)
            .bind(aggregate(unit, 1, "2", true, &[(job, 2)]))
            .bind(format!("provider/consumer/app/{unit}/2026-11-21:1"))
            .bind(state)
            .bind(failure_reported)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Died after marking the first failure: its "failed" event was never produced; the retry is due.
    insert("w1", "retrying", true, "job-w1").await;
    // Died after marking a receipt: neither "sent" nor "received" was produced.
    insert("w2", "received", false, "job-w2").await;
    let forwarder = start_forwarder(&args, pool.clone(), &url).await;

    let boards =
        boards_until(&args, |b| b.values().filter(|b| b.in_status("RECEIVEDFORBILLING") == 2).count() == 2).await;
    // The fold starts from AGGREGATED (2 usages each): every usage ends RECEIVEDFORBILLING, and
    // nothing is left in AGGREGATED or FAILEDTOSENDFORBILLING but the initial -2 of AGGREGATED
    // (the aggregator's event, not part of this test, would have added those +2).
    for job in ["job-w1", "job-w2"] {
        let board = &boards[job];
        assert_eq!(board.in_status("RECEIVEDFORBILLING"), 2, "{job}: {board:?}");
        assert_eq!(board.in_status("FAILEDTOSENDFORBILLING"), 0, "{job}: {board:?}");
        assert_eq!(board.in_status("SENTFORBILLING"), 0, "{job}: {board:?}");
        assert_eq!(board.in_status("AGGREGATED"), -2, "{job}: {board:?}");
    }
    assert_eq!(boards["job-w1"].errors.len(), 1, "the failure is reported once");
    // Only the due record was sent; the receipted one was not sent again.
    let stored = records(&url, 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["record"]["bucket"]["unit"], "w1");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE events_pending").fetch_one(&pool).await.unwrap();
    assert_eq!(pending, 0);
    forwarder.cancel();
    receiver.cancel();
}

/// The crash test found it: a record claimed (it superseded an older version) but never sent
/// before its lease ran out (its forwarder was killed), then superseded in turn by a newer
/// version. The newest record must cover the oldest version, and every job of the three
/// versions must reach RECEIVEDFORBILLING; the oldest's jobs used to stay AGGREGATED for ever.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_record_superseded_after_its_lease_ran_out_hands_on_what_it_covered(pool: PgPool) {
    let (args, url, receiver) = kafka_and_receiver().await;
    // (version, state, covered_by, covers_from, job)
    type Row<'a> = (i64, &'a str, Option<i64>, Option<i64>, &'a str);
    let rows: [Row; 3] = [
        (1, "superseded", Some(2), None, "job-v1"),
        (2, "pending", None, Some(1), "job-v2"),
        (3, "pending", None, None, "job-v3"),
    ];
    for (version, state, covered_by, covers_from, job) in rows {
        sqlx::query(
            "INSERT INTO billing_outbox (provider_tenant_id, consumer_tenant_id, application, unit, day, version, message,
                 record_key, state, covered_by, covers_from, leased_until, next_attempt_at)
             VALUES ('provider', 'consumer', 'app', 'lapsed', '2026-11-21', $1, $2, $3, $4, $5, $6,
                     CASE WHEN $6::int8 IS NULL THEN NULL ELSE now() - interval '1 minute' END, now())",
        )
        .bind(version)
        .bind(aggregate("lapsed", version as u64, &version.to_string(), true, &[(job, 1)]))
        .bind(format!("provider/consumer/app/lapsed/2026-11-21:{version}"))
        .bind(state)
        .bind(covered_by)
        .bind(covers_from)
        .execute(&pool)
        .await
        .unwrap();
    }
    let forwarder = start_forwarder(&args, pool.clone(), &url).await;
    let stored = records(&url, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["record"]["coveredVersions"], serde_json::json!({"from": 1, "to": 3}));

    let boards =
        boards_until(&args, |b| b.values().filter(|b| b.in_status("RECEIVEDFORBILLING") == 1).count() == 3).await;
    for job in ["job-v1", "job-v2", "job-v3"] {
        let board = boards.get(job).unwrap_or_else(|| panic!("no event for {job}: {boards:?}"));
        assert_eq!(board.in_status("RECEIVEDFORBILLING"), 1, "{job}: {board:?}");
    }
    forwarder.cancel();
    receiver.cancel();
}

/// Many versions of one bucket, two forwarders sharing the outbox, billing failing now and
/// then: billing receives the bucket's versions in strictly increasing order only, the last
/// one is the newest, and every job of every version (sent or coalesced) ends
/// RECEIVEDFORBILLING exactly once.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn two_forwarders_send_one_buckets_versions_in_increasing_order_only(pool: PgPool) {
    const VERSIONS: u64 = 60;
    let (args, url, receiver) = kafka_and_receiver().await;
    let group = format!("forwarder-{}", uuid::Uuid::new_v4());
    let mut forwarders = Vec::new();
    for _ in 0..2 {
        // Same consumer group: they split the partitions and share the outbox.
        let extra = [
            "--receipts-addr=127.0.0.1:0".to_owned(),
            format!("--consumer-group={group}"),
            "--max-in-flight=4".to_owned(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        forwarders.push(start_forwarder_with(&args, pool.clone(), &url, &extra).await);
    }
    let admin = reqwest::Client::new();
    let failures = url.replace("/billing/v1/records", "/admin/failures");
    let jobs: Vec<String> = (1..=VERSIONS).map(|v| format!("job-{v:03}")).collect();
    for chunk in 0..(VERSIONS / 10) {
        let messages: Vec<Vec<u8>> = (chunk * 10 + 1..=chunk * 10 + 10)
            .map(|v| aggregate("hot", v, &format!("{}", v * 10), true, &[(jobs[v as usize - 1].as_str(), 10)]))
            .collect();
        produce(&args, &messages).await;
        if chunk % 2 == 1 {
            // Billing fails the next two records: the older version retries, the newer ones wait.
            admin.post(&failures).json(&serde_json::json!({"mode": "http503", "count": 2})).send().await.unwrap();
        }
    }
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let stored = records(&url, 1).await;
        if stored.last().is_some_and(|r| r["record"]["version"] == VERSIONS) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let versions: Vec<u64> = stored.iter().map(|r| r["record"]["version"].as_u64().unwrap()).collect();
    println!("billing received versions {versions:?}");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "out of order: {versions:?}");
    assert_eq!(versions.last(), Some(&VERSIONS), "{versions:?}");
    assert_eq!(stored.last().unwrap()["record"]["value"], (VERSIONS * 10).to_string());
    // Every record covers the versions after the previous one.
    let mut next = 1;
    for record in &stored {
        assert_eq!(record["record"]["coveredVersions"]["from"], next, "{record}");
        next = record["record"]["version"].as_u64().unwrap() + 1;
    }
    // Every job ends RECEIVEDFORBILLING with its 10 usages (folded as the projection folds).
    let deadline = Instant::now() + WAIT;
    let boards = loop {
        let messages = uts_testkit::read_topic_to_end(&args, &args.topics().status, WAIT).await.unwrap();
        let mut boards: std::collections::BTreeMap<String, uts_common::status::Board> = Default::default();
        let mut seen = std::collections::HashSet::new();
        for event in events(&messages) {
            if seen.insert(event.event_id.clone()) {
                boards.entry(event.job_id.clone()).or_default().apply(&event);
            }
        }
        if boards.values().filter(|b| b.in_status("RECEIVEDFORBILLING") == 10).count() == jobs.len()
            || Instant::now() > deadline
        {
            break boards;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for job in &jobs {
        let board = boards.get(job).unwrap_or_else(|| panic!("{job} has no billing events"));
        assert_eq!(board.in_status("RECEIVEDFORBILLING"), 10, "{job}: {board:?}");
        assert_eq!(board.in_status("SENTFORBILLING"), 0, "{job}: {board:?}");
        assert_eq!(board.in_status("FAILEDTOSENDFORBILLING"), 0, "{job}: {board:?}");
    }
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE state NOT IN ('received', 'superseded')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unsent, 0);
    for forwarder in forwarders {
        forwarder.cancel();
    }
    receiver.cancel();
}

/// Billing refuses a record for good (422): its jobs end FAILEDTOSENDFORBILLING with the
/// billing error, it is never retried, a receipt naming it is refused with 409, and the
/// bucket's next version is sent as usual (a refused version does not block the bucket).
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_record_refused_for_good_is_not_retried_and_the_next_version_goes_through(pool: PgPool) {
    let (args, url, receiver) = kafka_and_receiver().await;
    let (receipts_listener, receipts) = receipts_endpoint().await;
    let forwarder = taking_receipts(&args, pool.clone(), &url, receipts_listener);
    let failures = url.replace("/billing/v1/records", "/admin/failures");
    let admin = reqwest::Client::new();
    let plan = admin.post(&failures).json(&serde_json::json!({"mode": "http422", "count": 1})).send().await.unwrap();
    assert!(plan.status().is_success());
    produce(&args, &[aggregate("u", 1, "3", true, &[("job-refused", 3)])]).await;

    let deadline = Instant::now() + WAIT;
    let (state, attempts) = loop {
        let row: Option<(String, i32)> = sqlx::query_as("SELECT state, attempts FROM billing_outbox WHERE version = 1")
            .fetch_optional(&pool)
            .await
            .unwrap();
        if row.as_ref().is_some_and(|r| r.0 == "rejected") || Instant::now() > deadline {
            break row.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((state.as_str(), attempts), ("rejected", 1), "refused for good after one attempt");
    let statuses = distinct(events(&read_topic(&args, &args.topics().status, 1, WAIT).await));
    use v1::UsageStatus as S;
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].transitions[0].to, S::Failedtosendforbilling as i32);
    assert_eq!(statuses[0].errors[0].error_type, v1::ErrorType::Billing as i32);
    assert!(statuses[0].errors[0].message.contains("422"), "{:?}", statuses[0].errors[0]);

    // A receipt for the refused record is a conflict.
    let answer = admin
        .post(&receipts)
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"idempotencyKey": "provider/consumer/app/u/2026-11-21:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::CONFLICT);

    // The next version goes through, covering only itself; the refused one is not sent again.
    produce(&args, &[aggregate("u", 2, "5", true, &[("job-next", 2)])]).await;
    let stored = records(&url, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["record"]["version"], 2);
    assert_eq!(stored[0]["record"]["coveredVersions"], serde_json::json!({"from": 2, "to": 2}));
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM billing_outbox WHERE version = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(attempts, 1, "never retried");
    forwarder.cancel();
    receiver.cancel();
}
