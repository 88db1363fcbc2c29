//! The verifier against the real Kafka and PostgreSQL: jobs in, verified batches and status
//! events out; a job seen again yields the same messages even after a rule change; poison goes
//! to the dead-letter topic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::config::KafkaArgs;
use uts_common::domain::{to_timestamp, TenantType};
use uts_common::proto::{v1, Message};
use uts_common::tenants::{self, Tenant};
use uts_testkit::{decode_all, isolated_kafka, read_topic};

const WAIT: Duration = Duration::from_secs(60);

async fn start(kafka_args: &KafkaArgs, pool: PgPool) -> CancellationToken {
    let mut args = vec![
        "verifier".to_owned(),
        "--database-url=postgres://unused".to_owned(),
        "--admin-addr=127.0.0.1:0".to_owned(),
        "--catalog-refresh-ms=0".to_owned(),
        format!("--consumer-group=verifier-{}", uuid::Uuid::new_v4()),
    ];
    args.push(format!("--kafka-brokers={}", kafka_args.brokers));
    args.push(format!("--topic-prefix={}", kafka_args.topic_prefix));
    let config = verifier::Config::parse_from(args);
    // Stage logs (RUST_LOG) show in the output of a failing test.
    uts_common::telemetry::init(&config.stage.telemetry, "verifier");
    let shutdown = CancellationToken::new();
    tokio::spawn(verifier::run_with_pool(config, pool, shutdown.clone()));
    shutdown
}

/// The tenants and the rule of `setup`, a fresh Kafka with `partitions` partitions, a verifier on it.
async fn started(pool: &PgPool, partitions: i32) -> (KafkaArgs, CancellationToken) {
    setup(pool).await;
    let args = isolated_kafka(partitions).await;
    let shutdown = start(&args, pool.clone()).await;
    (args, shutdown)
}

async fn setup(pool: &PgPool) {
    for (id, kind, operator) in [
        ("op", TenantType::Operator, None),
        ("provider", TenantType::Developer, None),
        ("plant", TenantType::Iot, Some("op")),
    ] {
        tenants::upsert(
            pool,
            &Tenant { tenant_id: id.into(), tenant_type: kind, operator_tenant_id: operator.map(Into::into) },
        )
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO provisioning (tenant_id, application) VALUES ('plant', 'app')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rules (application, unit, owner_tenant_id, aggregation_function, billing_enabled, max_value, integers_only)
         VALUES ('app', 'unit', 'provider', 'MAX', true, 100, true)",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn job(id: &str) -> v1::UsageJob {
    let now: DateTime<Utc> = Utc::now();
    let usage = |index: u32, value: &str, unit: &str| v1::Usage {
        index,
        value: value.into(),
        unit: unit.into(),
        datetime: Some(to_timestamp(now)),
    };
    let user = |tenant: &str, usages: Vec<v1::Usage>| v1::UserUsages {
        tenant_id: tenant.into(),
        user_id: "u".into(),
        user_type: v1::UserType::User as i32,
        resources: vec![v1::ResourceUsages {
            application: "app".into(),
            alias: "app".into(),
            resource: "r".into(),
            usages,
        }],
    };
    v1::UsageJob {
        job_id: id.into(),
        submitter_tenant: "op".into(),
        received_at: Some(to_timestamp(now)),
        usages_count: 5,
        users: vec![
            user("op", vec![usage(0, "7", "unit"), usage(1, "101", "unit"), usage(2, "2.5", "free-unit")]),
            user("plant", vec![usage(3, "50", "unit"), usage(4, "0.5", "unit")]),
        ],
        ..Default::default()
    }
}

async fn produce(args: &KafkaArgs, key: &str, payload: Vec<u8>) {
    uts_testkit::produce(args, &args.topics().usage_jobs, &[(key.as_bytes(), &payload)]).await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_becomes_verified_batches_and_one_status_event(pool: PgPool) {
    let (args, shutdown) = started(&pool, 2).await;
    produce(&args, "job-1", job("job-1").encode_to_vec()).await;

    let topics = args.topics();
    let statuses: Vec<v1::StatusEvent> = decode_all(&read_topic(&args, &topics.status, 1, WAIT).await);
    assert_eq!(statuses.len(), 1, "one status event");
    let status = &statuses[0];
    assert_eq!((status.event_id.as_str(), status.job_id.as_str()), ("verifier:job-1", "job-1"));
    let mut counts: Vec<(String, i32, u32)> =
        status.transitions.iter().map(|t| (t.unit.clone(), t.to, t.count)).collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("free-unit".into(), v1::UsageStatus::Noverification as i32, 1),
            ("unit".into(), v1::UsageStatus::Verified as i32, 2),
            ("unit".into(), v1::UsageStatus::Verificationfailed as i32, 2),
        ]
    );
    let codes: Vec<&str> = status.errors.iter().map(|e| e.code.as_str()).collect();
    assert_eq!(codes, vec!["mdsp.uts.verification.valueAboveMaximum", "mdsp.uts.verification.valueNotInteger"]);

    // Three aggregation keys: (provider, op), (provider, plant) with the rule; (op, op) without.
    let batches: Vec<v1::VerifiedBatch> = decode_all(&read_topic(&args, &topics.usages_verified, 3, WAIT).await);
    let mut seen: Vec<(String, String, String, Vec<u32>, bool)> = batches
        .iter()
        .map(|b| {
            let key = b.key.clone().unwrap();
            (key.provider_tenant, key.consumer_tenant, key.unit, b.usages.iter().map(|u| u.index).collect(), b.billable)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("op".into(), "op".into(), "free-unit".into(), vec![2], false),
            ("provider".into(), "op".into(), "unit".into(), vec![0], true),
            ("provider".into(), "plant".into(), "unit".into(), vec![3], true),
        ]
    );
    shutdown.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_seen_again_yields_the_same_messages_even_after_a_rule_change(pool: PgPool) {
    let (args, shutdown) = started(&pool, 2).await;
    let the_job = job("job-2").encode_to_vec();
    produce(&args, "job-2", the_job.clone()).await;
    let topics = args.topics();
    let first = read_topic(&args, &topics.status, 1, WAIT).await;
    assert_eq!(first.len(), 1);

    // Tighten the rule, then the same job arrives again (a client retry or a redelivery).
    sqlx::query("UPDATE rules SET max_value = 1, version = version + 1").execute(&pool).await.unwrap();
    produce(&args, "job-2", the_job).await;
    let both = read_topic(&args, &topics.status, 2, WAIT).await;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].1, both[1].1, "the second status event is byte-identical to the first");
    let batches: Vec<v1::VerifiedBatch> = decode_all(&read_topic(&args, &topics.usages_verified, 6, WAIT).await);
    assert_eq!(batches.len(), 6);
    let mut unique = batches.iter().map(Message::encode_to_vec).collect::<Vec<_>>();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "each batch was produced twice, identically");
    shutdown.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_decision_stored_in_the_earlier_form_is_still_the_answer(pool: PgPool) {
    // Rows written before verdicts hold the whole messages; a redelivery of such a job must
    // produce them, not a new decision.
    setup(&pool).await;
    let args = isolated_kafka(2).await;
    let stored_status = v1::StatusEvent {
        event_id: "verifier:job-old".into(),
        job_id: "job-old".into(),
        submitter_tenant: "op".into(),
        stage: v1::Stage::Verifier as i32,
        transitions: vec![v1::StatusTransition {
            application: "stored-app".into(),
            unit: "stored-unit".into(),
            from: v1::UsageStatus::Accepted as i32,
            to: v1::UsageStatus::Noverification as i32,
            count: 42,
            terminal: false,
        }],
        ..Default::default()
    };
    let stored_batch =
        v1::VerifiedBatch { job_id: "job-old".into(), rule_id: "stored-rule".into(), ..Default::default() };
    let decision = v1::VerifierDecision { batches: vec![stored_batch.clone()], status: Some(stored_status.clone()) };
    sqlx::query("INSERT INTO verifier_decisions (job_id, decision) VALUES ('job-old', $1)")
        .bind(decision.encode_to_vec())
        .execute(&pool)
        .await
        .unwrap();
    let shutdown = start(&args, pool.clone()).await;
    produce(&args, "job-old", job("job-old").encode_to_vec()).await;
    let topics = args.topics();
    let status: Vec<v1::StatusEvent> = decode_all(&read_topic(&args, &topics.status, 1, WAIT).await);
    assert_eq!(status, vec![stored_status]);
    let batches: Vec<v1::VerifiedBatch> = decode_all(&read_topic(&args, &topics.usages_verified, 1, WAIT).await);
    assert_eq!(batches, vec![stored_batch]);
    shutdown.cancel();
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn poison_goes_to_the_dead_letter_topic_and_the_verifier_carries_on(pool: PgPool) {
    let (args, shutdown) = started(&pool, 1).await;
    produce(&args, "junk", b"definitely not protobuf \xff".to_vec()).await;
    produce(&args, "job-3", job("job-3").encode_to_vec()).await;
    let topics = args.topics();
    let letters: Vec<v1::DeadLetter> = decode_all(&read_topic(&args, &topics.dead_letter, 1, WAIT).await);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].original_key, b"junk");
    assert_eq!(letters[0].stage, v1::Stage::Verifier as i32);
    let statuses: Vec<v1::StatusEvent> = decode_all(&read_topic(&args, &topics.status, 1, WAIT).await);
    assert_eq!(statuses[0].job_id, "job-3", "the job after the poison was verified");
    shutdown.cancel();
}

/// The gateway always sets `received_at` and decisions are relative to it: a job without one is
/// set aside on the dead-letter topic with the reason, yields no verified batch, no status event
/// and no stored decision, and the job behind it on the partition is verified.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_job_without_received_at_is_dead_lettered_and_the_partition_moves_on(pool: PgPool) {
    let (args, shutdown) = started(&pool, 1).await;
    let untimed = v1::UsageJob { received_at: None, ..job("job-untimed") }.encode_to_vec();
    produce(&args, "job-untimed", untimed.clone()).await;
    produce(&args, "job-5", job("job-5").encode_to_vec()).await;
    let topics = args.topics();

    // One partition: once job-5 is verified, the job before it has been dealt with.
    let statuses: Vec<v1::StatusEvent> = decode_all(&read_topic(&args, &topics.status, 1, WAIT).await);
    let status_jobs: Vec<&str> = statuses.iter().map(|s| s.job_id.as_str()).collect();
    assert_eq!(status_jobs, ["job-5"], "only the job after the untimed one has a status event");

    let letters: Vec<v1::DeadLetter> = decode_all(&read_topic(&args, &topics.dead_letter, 1, WAIT).await);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.original_key, b"job-untimed");
    assert_eq!(letter.original_value, untimed, "the letter carries the job as it was");
    assert_eq!((letter.source_topic.as_str(), letter.partition, letter.offset), (topics.usage_jobs.as_str(), 0, 0));
    assert_eq!(letter.stage, v1::Stage::Verifier as i32);
    assert!(letter.reason.contains("received_at"), "{}", letter.reason);

    // job-5 yields three batches (see the first test); none belongs to the untimed job.
    let batches: Vec<v1::VerifiedBatch> = decode_all(&read_topic(&args, &topics.usages_verified, 3, WAIT).await);
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.job_id == "job-5"), "{batches:?}");
    let decided: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM verifier_decisions ORDER BY job_id").fetch_all(&pool).await.unwrap();
    assert_eq!(decided, ["job-5"]);
    shutdown.cancel();
}
