//! The crash test of DESIGN.md invariant 2: while a few thousand usages stream through the
//! pipeline (every stage a real process, two aggregators sharing the load), stage processes are
//! killed with SIGKILL and restarted. At the end every daily aggregate must equal the exact
//! value computed from what the gateway acknowledged, and every usage must have reached its
//! final status: no usage lost, none counted twice, client retries with the same
//! Idempotency-Key included. The query service is killed too: afterwards every job must read
//! COMPLETED over HTTP with exactly its usages, each RECEIVEDFORBILLING once.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, SecondsFormat, Utc};
use clap::Parser;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uts_common::auth::mint_hs256;
use uts_common::domain::TenantType;
use uts_common::proto::{v1, Message};
use uts_common::tenants::{self, Tenant};
use uts_common::testing::{isolated_kafka, read_topic_to_end};

const SECRET: &str = "crash-test-secret-0123456789abcdef";
const JOBS: usize = 40;
const USAGES_PER_JOB: usize = 100;

fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/crash-… → target/<profile>/<name>
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

struct Stage {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    kills: usize,
}

impl Stage {
    fn spawn(&mut self) {
        let mut command = Command::new(binary(self.name));
        command.args(&self.args).envs(self.env.iter().cloned()).kill_on_drop(true);
        self.child = Some(command.spawn().unwrap());
    }

    async fn kill_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        self.kills += 1;
        self.spawn();
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{database}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Job `j`: 100 usages of `op` with exact values, a fifth of them dated yesterday.
fn job_body(j: usize) -> (Value, Vec<(NaiveDate, Decimal)>) {
    let now = Utc::now();
    let yesterday = now.checked_sub_days(Days::new(1)).unwrap();
    let mut usages = Vec::new();
    let mut expected = Vec::new();
    for i in 0..USAGES_PER_JOB {
        let value = Decimal::new((j * 1000 + i) as i64, 2); // e.g. 12.34
        let at = if i % 5 == 0 { yesterday } else { now };
        usages.push(json!({"value": Value::from_str(&value.to_string()).unwrap(), "unit": "crash-unit",
                           "datetime": at.to_rfc3339_opts(SecondsFormat::Millis, true)}));
        expected.push((at.date_naive(), value));
    }
    let body = json!({"users":[{"tenantId":"op","userId":"u","resources":[{"application":"app","resource":"r","usages": usages}]}]});
    (body, expected)
}

/// Posts until 202, always with the same Idempotency-Key, as a careful client does.
async fn post_until_accepted(client: &reqwest::Client, url: &str, token: &str, key: &str, body: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = client.post(url).bearer_auth(token).header("Idempotency-Key", key).json(body).send().await;
        if let Ok(response) = answer {
            if response.status() == reqwest::StatusCode::ACCEPTED {
                let answer: Value = response.json().await.unwrap();
                return answer["id"].as_str().unwrap().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "job {key} was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn killed_and_restarted_stages_neither_lose_nor_double_a_usage(pool: PgPool) {
    let kafka = isolated_kafka(4).await;
    for (id, kind) in [("op", TenantType::Operator), ("prov", TenantType::Developer)] {
        tenants::upsert(&pool, &Tenant { tenant_id: id.into(), tenant_type: kind, operator_tenant_id: None })
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO rules (application, unit, owner_tenant_id, billing_enabled) VALUES ('app', 'crash-unit', 'prov', true)")
        .execute(&pool)
        .await
        .unwrap();

    let receiver_shutdown = CancellationToken::new();
    let receiver = billing_receiver::Application::build(billing_receiver::Config::parse_from([
        "billing-receiver",
        "--listen-addr=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
    ]))
    .await
    .unwrap();
    let billing_url = format!("http://{}/billing/v1/records", receiver.local_addr());
    tokio::spawn(receiver.run_until_stopped(receiver_shutdown.clone()));

    let port = free_port();
    let query_port = free_port();
    let env = vec![
        ("UTS_KAFKA_BROKERS".to_owned(), kafka.brokers.clone()),
        ("UTS_TOPIC_PREFIX".to_owned(), kafka.topic_prefix.clone()),
        ("DATABASE_URL".to_owned(), database_url(&pool)),
        ("UTS_JWT_HS256_SECRET".to_owned(), SECRET.to_owned()),
        ("UTS_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("UTS_DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
        ("RUST_LOG".to_owned(), "error".to_owned()),
        ("UTS_VERIFIER_GROUP".to_owned(), format!("v-{}", kafka.topic_prefix)),
        ("UTS_AGGREGATOR_GROUP".to_owned(), format!("a-{}", kafka.topic_prefix)),
        ("UTS_BILLING_FORWARDER_GROUP".to_owned(), format!("b-{}", kafka.topic_prefix)),
        ("UTS_QUERY_GROUP".to_owned(), format!("q-{}", kafka.topic_prefix)),
        ("UTS_BILLING_URL".to_owned(), billing_url.clone()),
        ("UTS_BILLING_RECEIPTS_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("UTS_BILLING_SEND_INTERVAL_MS".to_owned(), "100".to_owned()),
        ("UTS_BILLING_RETRY_BASE_MS".to_owned(), "200".to_owned()),
        ("UTS_CATALOG_REFRESH_MS".to_owned(), "500".to_owned()),
    ];
    let stage = |name: &'static str, args: Vec<String>| Stage { name, args, env: env.clone(), child: None, kills: 0 };
    let mut stages = vec![
        stage("ingest-gateway", vec![format!("--listen-addr=127.0.0.1:{port}")]),
        stage("verifier", vec![]),
        stage("aggregator", vec![]),
        stage("aggregator", vec![]),
        stage("billing-forwarder", vec![]),
        stage("query-service", vec![format!("--listen-addr=127.0.0.1:{query_port}")]),
    ];
    for stage in &mut stages {
        stage.spawn();
    }

    let load_started = Utc::now();
    // Load: JOBS jobs posted by 4 clients, each retried with its key until accepted; job 0 is
    // posted once more at the end with the same key.
    let url = format!("http://127.0.0.1:{port}/api/usagetransparency/v3/usagesJobs");
    let token = mint_hs256(SECRET, "op", "crash", &["uts.usages.write"], 3600).unwrap();
    let bodies: Vec<(Value, Vec<(NaiveDate, Decimal)>)> = (0..JOBS).map(job_body).collect();
    let accepted: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let mut clients = Vec::new();
    for client_no in 0..4 {
        let (url, token, accepted) = (url.clone(), token.clone(), accepted.clone());
        let bodies: Vec<(usize, Value)> =
            bodies.iter().enumerate().filter(|(j, _)| j % 4 == client_no).map(|(j, (b, _))| (j, b.clone())).collect();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for (j, body) in bodies {
                let id = post_until_accepted(&client, &url, &token, &format!("crash-job-{j}"), &body).await;
                accepted.lock().unwrap().insert(j, id);
                tokio::time::sleep(Duration::from_millis(40)).await; // spread the load over the kills
            }
        }));
    }

    // Kills while the load runs: every stage at least once, one aggregator copy three times.
    let schedule = [1, 2, 5, 4, 0, 3, 1, 2, 5, 4, 2, 0];
    for &victim in &schedule {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stages[victim].kill_and_restart().await;
    }
    for client in clients {
        client.await.unwrap();
    }
    let replay = post_until_accepted(&reqwest::Client::new(), &url, &token, "crash-job-0", &bodies[0].0).await;
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), JOBS);
    assert_eq!(replay, accepted[&0], "a retry with the same key returns the same job");

    // Expected, computed independently from what the gateway acknowledged.
    let mut expected: BTreeMap<NaiveDate, (Decimal, i64)> = BTreeMap::new();
    for (_, usages) in &bodies {
        for (day, value) in usages {
            let entry = expected.entry(*day).or_insert((Decimal::ZERO, 0));
            entry.0 += value;
            entry.1 += 1;
        }
    }
    let total = (JOBS * USAGES_PER_JOB) as i64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let actual = loop {
        let rows: Vec<(NaiveDate, Decimal, i64)> =
            sqlx::query_as("SELECT day, value, usages_count FROM daily_aggregates WHERE unit = 'crash-unit' ORDER BY day")
                .fetch_all(&pool)
                .await
                .unwrap();
        let actual: BTreeMap<NaiveDate, (Decimal, i64)> = rows.into_iter().map(|(d, v, n)| (d, (v, n))).collect();
        let counted: i64 = actual.values().map(|(_, n)| n).sum();
        if counted >= total || Instant::now() > deadline {
            break actual;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mismatches = expected.iter().filter(|(day, want)| actual.get(day) != Some(want)).count()
        + actual.keys().filter(|day| !expected.contains_key(day)).count();

    // Every usage reaches its final status: fold uts.status per job.
    let deadline = Instant::now() + Duration::from_secs(180);
    let received = loop {
        let messages = read_topic_to_end(&kafka, &kafka.topics().status, Duration::from_secs(20)).await;
        let mut boards: HashMap<Vec<u8>, uts_e2e::Board> = HashMap::new();
        for (key, payload) in messages {
            boards.entry(key).or_default().apply(&v1::StatusEvent::decode(payload.as_slice()).unwrap());
        }
        let received: i64 = boards.values().map(|b| b.in_status("RECEIVEDFORBILLING")).sum();
        if received >= total || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The projection, through the API: every job COMPLETED, its usages counted once.
    let read_token = mint_hs256(SECRET, "op", "crash", &["uts.usages.read"], 3600).unwrap();
    let query_api = format!("http://127.0.0.1:{query_port}/api/usagetransparency/v3");
    let client = reqwest::Client::new();
    let get = |path: String| {
        let request = client.get(format!("{query_api}{path}")).bearer_auth(&read_token);
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => response.json::<Value>().await.unwrap_or_default(),
                _ => Value::Null, // restarting
            }
        }
    };
    // The listing is per day: the load may have straddled midnight.
    let days: std::collections::BTreeSet<NaiveDate> = [load_started.date_naive(), Utc::now().date_naive()].into();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (listed, completed) = loop {
        let (mut listed, mut completed) = (0, 0);
        for day in &days {
            let page = get(format!("/usagesJobs?size=1000&date={day}")).await;
            listed += page["page"]["totalElements"].as_u64().unwrap_or(0) as usize;
            completed += page["jobs"].as_array().map_or(0, |jobs| jobs.iter().filter(|j| j["status"] == "COMPLETED").count());
        }
        if completed >= JOBS || Instant::now() > deadline {
            break (listed, completed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut projection_mismatches = Vec::new();
    if listed != JOBS || completed != JOBS {
        projection_mismatches.push(format!("listed {listed} jobs, {completed} COMPLETED"));
    }
    for id in accepted.values() {
        let job = get(format!("/usagesJobs/{id}")).await;
        let want = json!([{"application": "app", "unit": "crash-unit", "usagesCount": USAGES_PER_JOB, "processStatus": "RECEIVEDFORBILLING"}]);
        if job["status"] != "COMPLETED" || job["usagesCount"] != USAGES_PER_JOB || job["usagesSummary"] != want {
            projection_mismatches.push(job.to_string());
        }
    }

    let kills: Vec<String> = stages.iter().map(|s| format!("{}={}", s.name, s.kills)).collect();
    println!(
        "crash test: {total} usages in {JOBS} jobs acknowledged; kills: {}; buckets compared: {}; mismatches: {mismatches}; \
         usages RECEIVEDFORBILLING: {received}; jobs misread by the query service: {}",
        kills.join(", "),
        expected.len(),
        projection_mismatches.len()
    );
    for stage in &mut stages {
        stage.stop().await;
    }
    receiver_shutdown.cancel();
    assert_eq!(actual, expected, "daily aggregates differ from what the gateway acknowledged");
    assert_eq!(mismatches, 0);
    assert_eq!(received, total, "every usage ends RECEIVEDFORBILLING");
    assert!(projection_mismatches.is_empty(), "the query service lost or doubled: {projection_mismatches:#?}");
}
