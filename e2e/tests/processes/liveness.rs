//! A stage that is alive but stuck, and the rebalance that takes its partitions while its batch
//! is in hand (issue "Faults": the stage host). Every stage a real process, one verifier with a
//! 3 s stall limit and an 8 s poll interval. The test holds a lock on the verifier's decisions
//! table, so the verifier's next batch blocks mid-way:
//! - its `/readyz` must turn 503 ("in hand"), with PostgreSQL and Kafka both fine;
//! - a second verifier joins the group; the first, not polling for longer than its poll
//!   interval, is put out of the group and the second takes its partitions (its own batch then
//!   blocks too: its `/readyz` turns 503 as well, which is how the test sees the move);
//! - the lock goes: the first verifier finishes a batch whose partitions are no longer its own
//!   (its offsets are not committed: it left the group; where librdkafka already knows, they
//!   cannot even be stored, `offset_not_stored`, not fatal), and the second one handles those
//!   messages again: more messages handled by the two than were posted.
//!
//! At the end both verifiers still run and are ready, and the pipeline holds exactly what the
//! gateway acknowledged ([`oracle::check`]).

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use uts_testkit::isolated_kafka;

use super::load::{Clients, UNIT};
use super::oracle::{self, progress, Pipeline};
use super::stages::{billing_receiver, database_url, environment, free_port, seed, until_ready, Stage};

/// The stages' environment with `properties` as their librdkafka overrides.
fn with_kafka_properties(
    kafka: &uts_common::config::KafkaArgs,
    pool: &PgPool,
    billing_url: &str,
    properties: &str,
) -> Vec<(String, String)> {
    let mut env = environment(kafka, &database_url(pool), billing_url);
    env.retain(|(name, _)| name != "UTS_KAFKA_PROPERTIES");
    env.push(("UTS_KAFKA_PROPERTIES".into(), properties.into()));
    env
}

/// The sum of the stage's series of counter `name` (whose labels contain `labels`) from its
/// `/metrics`.
async fn counter(port: u16, name: &str, labels: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
#[ignore = "runs six stage processes and waits out a poll interval; deploy/local/test.sh runs it after the other tests, one at a time"]
async fn a_stuck_verifier_turns_unready_and_its_partitions_move_mid_batch_without_a_usage_lost_or_doubled(
    pool: PgPool,
) {
    let kafka = isolated_kafka(4).await;
    seed(&pool, UNIT).await;
    let (billing_url, receiver_shutdown) = billing_receiver().await;
    let env = with_kafka_properties(&kafka, &pool, &billing_url, "session.timeout.ms=6000,max.poll.interval.ms=8000");
    let (port, query_port, first_admin, second_admin) = (free_port(), free_port(), free_port(), free_port());
    let stage = |name: &'static str, args: Vec<String>| Stage::new(name, args, &env);
    let verifier = |admin: u16| {
        stage("verifier", vec![format!("--admin-addr=127.0.0.1:{admin}"), "--consumer-stall-seconds=3".to_owned()])
    };
    let mut stages = vec![
        stage("ingest-gateway", vec![format!("--listen-addr=127.0.0.1:{port}")]),
        verifier(first_admin),
        stage("aggregator", vec![]),
        stage("billing-forwarder", vec![]),
        stage("query-service", vec![format!("--listen-addr=127.0.0.1:{query_port}")]),
    ];
    for stage in &mut stages {
        stage.spawn();
    }
    until_ready(first_admin, "the first verifier", true).await;
    let clients = Clients::start(port, 2, Duration::from_millis(200), 900);
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&pool, clients.accepted()).await.unwrap().billed == 0 {
        assert!(Instant::now() < deadline, "nothing billed before the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The verifier's next batch blocks on its decisions (reads still pass).
    let mut lock = PgConnection::connect(&database_url(&pool)).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE verifier_decisions IN EXCLUSIVE MODE").execute(&mut lock).await.unwrap();
    let stuck = until_ready(first_admin, "the first verifier, stuck", false).await;
    assert!(stuck.contains("in hand"), "{stuck}");

    let mut second = verifier(second_admin);
    second.spawn();
    // The second verifier has the partitions once its own batch is stuck on the same lock.
    let moved = until_ready(second_admin, "the second verifier, with the first one's partitions", false).await;
    assert!(moved.contains("in hand"), "{moved}");
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    until_ready(first_admin, "the first verifier, after the lock", true).await;
    until_ready(second_admin, "the second verifier, after the lock", true).await;
    let not_stored = counter(first_admin, "uts_stage_errors_total", "kind=\"offset_not_stored\"").await;

    let started = clients.started;
    let (accepted, _) = clients.finish(10).await;
    // Each job is one message (job 0 twice: the clients' last replay); what both verifiers
    // handled beyond that, they handled twice: the first one's batch in hand, redelivered.
    let handled = counter(first_admin, "uts_stage_messages_total", "").await
        + counter(second_admin, "uts_stage_messages_total", "").await;
    let twice = handled.saturating_sub(accepted.len() as u64 + 1);
    let pipeline = Pipeline { pool: &pool, kafka: &kafka, query_port, billing_url: &billing_url };
    let report = oracle::check(&pipeline, &accepted, started).await;
    let exited: Vec<String> = stages
        .iter_mut()
        .chain(std::iter::once(&mut second))
        .filter_map(|s| s.exited().map(|status| format!("{} {status}", s.name)))
        .collect();
    println!(
        "liveness test: {} jobs; messages handled by both verifiers: {twice}; the first one's offsets not stored: {not_stored}; {}",
        accepted.len(),
        report.summary()
    );
    for stage in stages.iter_mut().chain(std::iter::once(&mut second)) {
        stage.stop().await;
    }
    receiver_shutdown.cancel();
    assert!(exited.is_empty(), "stages exited: {exited:?}");
    assert!(twice > 0, "no message was handled by both verifiers: the first one's batch did not move");
    report.assert_exact();
}

/// A consumer task that fails makes its process exit non-zero, instead of living on with nothing
/// consumed: two verifiers with one static `group.instance.id` (a copy-paste an operator can
/// make), the second one fences the first, whose consumer is then fatally failed (it would
/// deliver nothing, for ever). The first must exit non-zero by itself; the second carries the
/// load; the end state equals the oracle.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
#[ignore = "runs six stage processes; deploy/local/test.sh runs it after the other tests, one at a time"]
async fn a_verifier_whose_consumer_is_fenced_exits_non_zero_and_the_other_carries_on(pool: PgPool) {
    let kafka = isolated_kafka(4).await;
    seed(&pool, UNIT).await;
    let (billing_url, receiver_shutdown) = billing_receiver().await;
    // Consumers of other groups may share the id: it is unique per group.
    let env =
        with_kafka_properties(&kafka, &pool, &billing_url, "session.timeout.ms=6000,group.instance.id=the-verifier");
    let mut stages = super::stages::Stages::start(&env, &[]).await;
    let clients = Clients::start(stages.port, 2, Duration::from_millis(200), 900);
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&pool, clients.accepted()).await.unwrap().billed == 0 {
        assert!(Instant::now() < deadline, "nothing billed before the second verifier");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut second = Stage::new("verifier", vec![], &env);
    second.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = stages.stages[1].exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the fenced verifier still runs after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = clients.started;
    let (accepted, _) = clients.finish(10).await;
    let pipeline = Pipeline { pool: &pool, kafka: &kafka, query_port: stages.query_port, billing_url: &billing_url };
    let report = oracle::check(&pipeline, &accepted, started).await;
    let second_exited = second.exited();
    println!("fencing test: the first verifier exited with {status}; {} jobs; {}", accepted.len(), report.summary());
    stages.stop().await;
    second.stop().await;
    receiver_shutdown.cancel();
    assert!(!status.success(), "the fenced verifier exited 0");
    assert!(second_exited.is_none(), "the second verifier exited: {second_exited:?}");
    report.assert_exact();
}
