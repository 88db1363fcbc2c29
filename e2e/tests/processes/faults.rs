//! The infrastructure failing under the pipeline (issue "Faults"): while jobs stream through
//! every stage (real processes), brokers of a replicated Kafka cluster are SIGKILLed and come
//! back, and PostgreSQL shuts down immediately (no checkpoint, every backend killed) and
//! restarts. Nobody restarts a stage: each must ride the fault out by itself. At the end the
//! pipeline must hold exactly what the gateway acknowledged ([`oracle::check`]), every stage
//! must still be running, and each must exit 0 on SIGTERM within 30 s. While PostgreSQL is
//! down, what needs it answers 503 `serviceUnavailable` with `Retry-After`.
//!
//! Both start infrastructure of their own with the scripts of `deploy/local/` (the three-node
//! cluster of `kafka.sh cluster`, a PostgreSQL on port 55632 in `.local/faults`), so the shared
//! broker and database of the other tests are never touched; they run after the other tests,
//! one at a time, because they load the machine's two cores for a minute each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_common::config::KafkaArgs;
use uts_testkit::{isolated_kafka, isolated_kafka_on};

use super::load::{job_body, Clients, UNIT};
use super::oracle::{self, progress, Pipeline, Progress};
use super::stages::{billing_receiver, database_url, environment, seed, Stages, SECRET};

const CLIENTS: usize = 3;
const PACE: Duration = Duration::from_millis(200);
const MAX_JOBS: usize = 900;
/// Jobs accepted and billing records sent between two faults: the pipeline must have moved on,
/// end to end.
const STRIDE: i64 = 10;

fn local_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local").join(name)
}

fn local_dir() -> PathBuf {
    let dir = std::env::var_os("UTS_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// Runs a `deploy/local/` script (asynchronously: the load's clients go on meanwhile); its
/// standard output.
async fn script(name: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let output = tokio::process::Command::new("bash")
        .arg(local_script(name))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("UTS_PG_DIR")
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{name} {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// While PostgreSQL is down, what needs it answers 503 `serviceUnavailable` with `Retry-After`
/// (never 500, never a hang): a POST with an `Idempotency-Key` (its claim), the job listing and
/// the admin API. The answers that were not.
async fn answers_while_postgresql_is_down(stages: &Stages) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let token = |scope: &str| mint_hs256(SECRET, "op", "faults", &[scope], 600).unwrap();
    let (gateway, query) = (
        format!("http://127.0.0.1:{}/api/usagetransparency/v3", stages.port),
        format!("http://127.0.0.1:{}/api/usagetransparency/v3", stages.query_port),
    );
    let mut wrong = Vec::new();
    for attempt in 0..2 {
        let requests = [
            (
                "POST /usagesJobs with a key",
                client
                    .post(format!("{gateway}/usagesJobs"))
                    .bearer_auth(token("uts.usages.write"))
                    .header("Idempotency-Key", format!("while-down-{attempt}"))
                    .json(&job_body(MAX_JOBS + attempt).0),
            ),
            ("GET /usagesJobs", client.get(format!("{query}/usagesJobs")).bearer_auth(token("uts.usages.read"))),
            ("GET /admin/tenants", client.get(format!("{query}/admin/tenants")).bearer_auth(token("uts.admin"))),
        ];
        for (name, request) in requests {
            let started = Instant::now();
            let answer = match request.send().await {
                Ok(response) => {
                    let (status, retry_after) = (response.status(), response.headers().contains_key("retry-after"));
                    let body: Value = response.json().await.unwrap_or_default();
                    if status == StatusCode::SERVICE_UNAVAILABLE
                        && retry_after
                        && body["errors"][0]["code"] == "mdsp.core.generic.serviceUnavailable"
                    {
                        continue;
                    }
                    format!("{status} {body}")
                }
                Err(err) => format!("no answer: {err}"),
            };
            wrong.push(format!("{name} (attempt {attempt}, after {:?}): {answer}", started.elapsed()));
        }
    }
    wrong
}

/// Waits until `moved` holds for the stages' progress (read errors, while PostgreSQL is down,
/// count as not yet); the progress it saw.
async fn until(
    pool: &PgPool,
    clients: &Clients,
    what: &str,
    timeout: Duration,
    moved: impl Fn(&Progress) -> bool,
) -> Progress {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(now) = progress(pool, clients.accepted()).await {
            if moved(&now) {
                return now;
            }
        }
        assert!(Instant::now() < deadline, "{what}: no progress within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`STRIDE`] jobs accepted and billing records sent since `since`: the whole pipeline moved on.
async fn moved_on(pool: &PgPool, clients: &Clients, what: &str, since: Progress) -> Progress {
    until(pool, clients, what, Duration::from_secs(120), |now| {
        now.billed >= since.billed + STRIDE && now.accepted >= since.accepted + STRIDE
    })
    .await
}

/// Stops the load (after [`STRIDE`] more jobs), compares the end state with the oracle, prints
/// the test's line and sends SIGTERM to every stage: the report, the clients' retries, the
/// stages that had exited before, and those that did not exit 0 on SIGTERM within 30 s.
async fn conclude(
    test: &str,
    events: &[String],
    clients: Clients,
    stages: &mut Stages,
    pipeline: &Pipeline<'_>,
) -> (oracle::Report, u64, Vec<String>, Vec<String>) {
    let started = clients.started;
    let (accepted, retries) = clients.finish(STRIDE).await;
    let report = oracle::check(pipeline, &accepted, started).await;
    let exited = stages.exited();
    println!(
        "{test}: {} usages in {} jobs acknowledged after {retries} client retries; {}; {}",
        report.total,
        accepted.len(),
        events.join("; "),
        report.summary()
    );
    let unclean = stages.terminate().await;
    (report, retries, exited, unclean)
}

// ---------------------------------------------------------------------------------------------
// Kafka: a three-broker cluster losing its busiest leader, then another.

/// Per broker, the messages in the partitions it leads (of this test's topics), and whether
/// every partition of them and of the offsets topic has all three replicas in sync.
fn cluster_state(kafka: &KafkaArgs) -> (HashMap<i32, i64>, bool) {
    let consumer: BaseConsumer = uts_common::kafka::client_config(kafka).unwrap().create().unwrap();
    let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(5)) else {
        return (HashMap::new(), false);
    };
    let mut led = HashMap::new();
    let mut in_sync = true;
    for topic in metadata.topics() {
        let ours = topic.name().starts_with(&kafka.topic_prefix);
        if !ours && topic.name() != "__consumer_offsets" {
            continue;
        }
        for partition in topic.partitions() {
            in_sync &= partition.isr().len() == 3 && partition.leader() >= 0;
            if ours {
                let high = consumer
                    .fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(5))
                    .map_or(0, |(_, high)| high);
                *led.entry(partition.leader()).or_insert(0) += high;
            }
        }
    }
    (led, in_sync)
}

async fn state(kafka: &KafkaArgs) -> (HashMap<i32, i64>, bool) {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || cluster_state(&kafka)).await.unwrap()
}

/// The broker leading the partitions that hold the most messages, `other_than` aside.
async fn busiest_leader(kafka: &KafkaArgs, other_than: Option<i32>) -> i32 {
    let (led, _) = state(kafka).await;
    led.into_iter().filter(|(node, _)| Some(*node) != other_than && *node > 0).max_by_key(|(_, n)| *n).unwrap().0
}

async fn until_in_sync(kafka: &KafkaArgs) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state(kafka).await.1 {
        assert!(Instant::now() < deadline, "the cluster's replicas were not all in sync again within 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Brings every node of the cluster back, even when an assertion failed.
struct ClusterWhole;

impl Drop for ClusterWhole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash").arg(local_script("kafka.sh")).args(["cluster", "up"]).status();
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
#[ignore = "starts a three-node Kafka cluster and SIGKILLs its brokers under load; deploy/local/test.sh runs the fault tests after the others, one at a time"]
async fn brokers_of_a_replicated_cluster_die_under_load_and_no_acknowledged_usage_is_lost_or_doubled(pool: PgPool) {
    script("kafka.sh", &["cluster", "up"], &[]).await;
    let _whole = ClusterWhole;
    let env = script("kafka.sh", &["cluster", "env"], &[]).await;
    let brokers =
        env.trim().strip_prefix("export UTS_CLUSTER_KAFKA_BROKERS=").expect("kafka.sh cluster env").to_owned();
    let kafka = isolated_kafka_on(4, &[format!("--kafka-brokers={brokers}"), "--topic-replication=3".to_owned()]).await;
    seed(&pool, UNIT).await;
    let (billing_url, receiver_shutdown) = billing_receiver().await;
    let mut stages = Stages::start(&environment(&kafka, &database_url(&pool), &billing_url), &[]).await;
    let clients = Clients::start(stages.port, CLIENTS, PACE, MAX_JOBS);

    let mut seen = until(&pool, &clients, "before the first kill", Duration::from_secs(120), |p| p.billed > 0).await;
    let mut killed = Vec::new();
    let mut previous = None;
    for round in 0..2 {
        let victim = busiest_leader(&kafka, previous).await;
        let node = victim.to_string();
        script("kafka.sh", &["cluster", "kill", &node], &[]).await;
        let down = Instant::now();
        seen = moved_on(&pool, &clients, &format!("with broker {node} dead"), seen).await;
        let carried_on = down.elapsed();
        script("kafka.sh", &["cluster", "start", &node], &[]).await;
        until_in_sync(&kafka).await;
        seen = moved_on(&pool, &clients, &format!("after broker {node} came back"), seen).await;
        killed.push(format!(
            "round {round}: broker {node} killed, {STRIDE} jobs accepted and records billed without it within {carried_on:?}"
        ));
        previous = Some(victim);
    }

    let pipeline = Pipeline { pool: &pool, kafka: &kafka, query_port: stages.query_port, billing_url: &billing_url };
    let (report, _, exited, unclean) = conclude("cluster test", &killed, clients, &mut stages, &pipeline).await;
    receiver_shutdown.cancel();
    assert!(exited.is_empty(), "stages exited: {exited:?}");
    report.assert_exact();
    assert!(unclean.is_empty(), "{unclean:?}");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: an immediate shutdown and a restart, twice, while jobs stream.

const FAULT_PG_PORT: &str = "55632";

fn fault_pg_env() -> Vec<(&'static str, String)> {
    vec![("UTS_LOCAL_DIR", local_dir().join("faults").display().to_string()), ("UTS_PG_PORT", FAULT_PG_PORT.to_owned())]
}

/// Starts PostgreSQL again, even when an assertion failed.
struct PostgresUp;

impl Drop for PostgresUp {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(local_script("postgres.sh"))
            .arg("start")
            .envs(fault_pg_env())
            .env_remove("UTS_PG_DIR")
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a PostgreSQL of its own and shuts it down immediately under load; deploy/local/test.sh runs the fault tests after the others, one at a time"]
async fn postgresql_crashing_under_load_loses_and_doubles_nothing_and_every_stage_recovers() {
    let pg = fault_pg_env();
    script("postgres.sh", &["start"], &pg).await;
    let _up = PostgresUp;
    let server = format!("postgres://uts:uts@127.0.0.1:{FAULT_PG_PORT}");
    let admin = PgPool::connect(&format!("{server}/uts")).await.unwrap();
    let database = format!("faults_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.unwrap();
    admin.close().await;
    let url = format!("{server}/{database}");
    // Short acquire timeout: while the server is down, progress reads fail fast.
    let pool =
        PgPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(2)).connect(&url).await.unwrap();
    uts_common::db::MIGRATOR.run(&pool).await.unwrap();

    let kafka = isolated_kafka(4).await;
    seed(&pool, UNIT).await;
    let (billing_url, receiver_shutdown) = billing_receiver().await;
    let mut stages = Stages::start(&environment(&kafka, &url, &billing_url), &[]).await;
    let clients = Clients::start(stages.port, CLIENTS, PACE, MAX_JOBS);

    let mut seen = until(&pool, &clients, "before the first crash", Duration::from_secs(120), |p| p.billed > 0).await;
    let mut crashes = Vec::new();
    let mut while_down = Vec::new();
    for round in 0..2 {
        // The second crash when the aggregator has work in hand (decided, not yet applied).
        if round == 1 {
            seen = until(&pool, &clients, "aggregator with work in hand", Duration::from_secs(60), |p| {
                p.applied < p.decided
            })
            .await;
        }
        script("postgres.sh", &["crash"], &pg).await;
        // Down until the clients have seen the gateway refuse (its idempotency claims need
        // PostgreSQL), then back.
        let refused = clients.retries();
        let deadline = Instant::now() + Duration::from_secs(30);
        while clients.retries() == refused {
            assert!(Instant::now() < deadline, "no POST was refused while PostgreSQL was down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round == 0 {
            while_down = answers_while_postgresql_is_down(&stages).await;
        }
        script("postgres.sh", &["start"], &pg).await;
        let back = Instant::now();
        seen = moved_on(&pool, &clients, "after PostgreSQL came back", seen).await;
        crashes.push(format!(
            "round {round}: {STRIDE} jobs accepted and records billed {:?} after the restart",
            back.elapsed()
        ));
    }

    let pipeline = Pipeline { pool: &pool, kafka: &kafka, query_port: stages.query_port, billing_url: &billing_url };
    let (report, retries, exited, unclean) =
        conclude("PostgreSQL test", &crashes, clients, &mut stages, &pipeline).await;
    receiver_shutdown.cancel();
    pool.close().await;
    let admin = PgPool::connect(&format!("{server}/uts")).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&admin).await.unwrap();
    assert!(exited.is_empty(), "stages exited: {exited:?}");
    assert!(while_down.is_empty(), "answers while PostgreSQL was down: {while_down:#?}");
    report.assert_exact();
    assert!(retries > 0, "PostgreSQL was down, yet no client had to retry");
    assert!(unclean.is_empty(), "{unclean:?}");
}
