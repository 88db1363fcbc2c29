//! The crash test of DESIGN.md invariant 2: while tens of thousands of usages stream through
//! the pipeline (every stage a real process, two aggregators sharing the load), stage processes
//! are killed with SIGKILL and restarted, each only when it is seen with work in hand (it made
//! progress since the last restart and work it has not finished is waiting for it). At the end
//! every daily aggregate must equal the exact value computed from what the gateway
//! acknowledged, also once the pipeline is quiet; every usage must have reached its final
//! status: no usage lost, none counted twice, client retries with the same Idempotency-Key
//! included (and the clients must have had to retry). The query service is killed too:
//! afterwards every job must read COMPLETED over HTTP with exactly its usages, each
//! RECEIVEDFORBILLING once. What billing received is compared with the oracle too: per bucket,
//! versions in strictly increasing order, the last one carrying the exact value and count.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_common::proto::{v1, Message};
use uts_common::testing::{isolated_kafka, read_topic_to_end};

use super::stages::{billing_receiver, environment, free_port, seed, Stage, SECRET};

const USAGES_PER_JOB: usize = 100;
/// Clients posting at once; each waits [`PACE`] between its jobs, so the load lasts as long as
/// the kills need (it stops when the last kill is done) without flooding the debug binaries.
const CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(200);
/// Upper bound of the load, whatever the kills wait for (below the API's 1000-job window).
const MAX_JOBS: usize = 900;
/// Victims in order (indexes into the stages): every stage at least twice, the aggregators
/// (2 and 3, one consumer group) four times.
const SCHEDULE: [usize; 12] = [1, 2, 5, 4, 0, 3, 1, 2, 5, 4, 2, 0];

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

/// Posts until 202, always with the same Idempotency-Key, as a careful client does; counts the
/// attempts that were not accepted in `retries`.
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    body: &Value,
    retries: &AtomicU64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = client.post(url).bearer_auth(token).header("Idempotency-Key", key).json(body).send().await;
        if let Ok(response) = answer {
            if response.status() == reqwest::StatusCode::ACCEPTED {
                let answer: Value = response.json().await.unwrap();
                return answer["id"].as_str().unwrap().to_owned();
            }
        }
        retries.fetch_add(1, Ordering::Relaxed);
        assert!(Instant::now() < deadline, "job {key} was never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the clients posted and what the gateway acknowledged.
#[derive(Default)]
struct Load {
    /// Job number → (job id, the usages it carried, its body).
    accepted: Mutex<BTreeMap<usize, (String, Vec<(NaiveDate, Decimal)>, Value)>>,
    /// POST attempts that were not answered 202 (the gateway was down or restarting).
    retries: AtomicU64,
    next_job: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    fn accepted(&self) -> i64 {
        self.accepted.lock().unwrap().len() as i64
    }
}

/// How far each stage got, read from the tables it writes.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    accepted: i64,
    /// Jobs the verifier decided (stored decisions).
    decided: i64,
    /// (job, aggregation key) batches applied; one per job here.
    applied: i64,
    /// Outbox rows the billing system took, and rows still to send.
    billed: i64,
    unbilled: i64,
    /// Jobs the query service projected.
    projected: i64,
}

async fn progress(pool: &PgPool, load: &Load) -> Progress {
    let (decided, applied, billed, unbilled, projected): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM verifier_decisions),
                (SELECT count(*) FROM aggregate_applied_batches),
                (SELECT count(*) FROM billing_outbox WHERE state IN ('sent', 'received')),
                (SELECT count(*) FROM billing_outbox WHERE state IN ('pending', 'retrying')),
                (SELECT count(*) FROM jobs)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    Progress { accepted: load.accepted(), decided, applied, billed, unbilled, projected }
}

/// Whether killing `victim` now hits it with work in hand: it made progress since it (or its
/// group's other member) was last restarted, and work it has not finished is waiting for it.
fn in_flight(victim: &str, now: &Progress, since: &Progress) -> bool {
    match victim {
        "ingest-gateway" => now.accepted > since.accepted,
        "verifier" => now.decided > since.decided && now.decided < now.accepted,
        "aggregator" => now.applied > since.applied && now.applied < now.decided,
        "billing-forwarder" => now.billed > since.billed && now.unbilled > 0,
        "query-service" => now.projected > since.projected && now.projected < now.accepted,
        other => panic!("no progress gate for {other}"),
    }
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn killed_and_restarted_stages_neither_lose_nor_double_a_usage(pool: PgPool) {
    let kafka = isolated_kafka(4).await;
    seed(&pool, "crash-unit").await;
    let (billing_url, receiver_shutdown) = billing_receiver().await;

    let port = free_port();
    let query_port = free_port();
    let env = environment(&kafka, &pool, &billing_url);
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
    // Load: CLIENTS clients posting distinct jobs, each retried with its key until accepted,
    // until the last kill is done; job 0 is posted once more at the end with the same key.
    let url = format!("http://127.0.0.1:{port}/api/usagetransparency/v3/usagesJobs");
    let token = mint_hs256(SECRET, "op", "crash", &["uts.usages.write"], 3600).unwrap();
    let load: Arc<Load> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, token, load) = (url.clone(), token.clone(), load.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !load.stop.load(Ordering::Relaxed) {
                let j = load.next_job.fetch_add(1, Ordering::Relaxed);
                if j >= MAX_JOBS {
                    break;
                }
                let (body, usages) = job_body(j);
                let id =
                    post_until_accepted(&client, &url, &token, &format!("crash-job-{j}"), &body, &load.retries).await;
                load.accepted.lock().unwrap().insert(j, (id, usages, body));
                tokio::time::sleep(PACE).await; // pacing the load, not waiting for a result
            }
        }));
    }

    // Kills gated on observed progress: each victim is killed only when it has made progress
    // since the last restart in its group and work it has not finished is waiting for it.
    let mut since: HashMap<&'static str, Progress> = HashMap::new();
    let mut observed = Vec::new();
    let mut billing_down = Duration::ZERO;
    for (kill, &victim) in SCHEDULE.iter().enumerate() {
        if kill == 3 {
            // Billing down mid-load, before the forwarder's first kill, until a bucket's older
            // version is retrying with two newer ones pending behind it (a fixed 3 s sometimes
            // saw no version produced meanwhile): those are then coalesced into one record.
            // Not right after an aggregator's kill: no version comes until its group has
            // rebalanced (the session timeout), and the load's jobs run out meanwhile.
            let failures = billing_url.replace("/billing/v1/records", "/admin/failures");
            let http = reqwest::Client::new();
            let answer = http.post(&failures).json(&json!({"mode": "http503"})).send().await.unwrap();
            assert!(answer.status().is_success(), "failure injection: {}", answer.status());
            let down_at = Instant::now();
            let deadline = down_at + Duration::from_secs(60);
            loop {
                let piled: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM billing_outbox r WHERE r.state = 'retrying'
                       AND (SELECT count(*) FROM billing_outbox n
                            WHERE (n.provider_tenant_id, n.consumer_tenant_id, n.application, n.unit, n.day)
                                = (r.provider_tenant_id, r.consumer_tenant_id, r.application, r.unit, r.day)
                              AND n.state = 'pending' AND n.version > r.version) >= 2)",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                if piled {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no versions piled up behind a retrying record while billing was down"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            billing_down = down_at.elapsed();
            let answer = http.delete(&failures).send().await.unwrap();
            assert!(answer.status().is_success(), "clearing the failure: {}", answer.status());
        }
        let name = stages[victim].name;
        let deadline = Instant::now() + Duration::from_secs(90);
        let at_kill = loop {
            let now = progress(&pool, &load).await;
            if in_flight(name, &now, since.get(name).unwrap_or(&Progress::default())) {
                break now;
            }
            assert!(Instant::now() < deadline, "{name} never had work in hand to be killed with: {now:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stages[victim].kill_and_restart().await;
        observed.push(format!("{name} at {at_kill:?}"));
        since.insert(name, progress(&pool, &load).await);
    }
    // A little more load after the last kill, then stop.
    let after = load.accepted() + 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.accepted() < after && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let accepted = load.accepted.lock().unwrap().clone();
    let jobs = accepted.len();
    let (first, _, first_body) = &accepted[&0];
    let replay =
        post_until_accepted(&reqwest::Client::new(), &url, &token, "crash-job-0", first_body, &AtomicU64::new(0)).await;
    assert_eq!(&replay, first, "a retry with the same key returns the same job");
    let retries = load.retries.load(Ordering::Relaxed);

    // Expected, computed independently from what the gateway acknowledged.
    let mut expected: BTreeMap<NaiveDate, (Decimal, i64)> = BTreeMap::new();
    for (_, usages, _) in accepted.values() {
        for (day, value) in usages {
            let entry = expected.entry(*day).or_insert((Decimal::ZERO, 0));
            entry.0 += value;
            entry.1 += 1;
        }
    }
    let total = (jobs * USAGES_PER_JOB) as i64;
    let aggregates = || async {
        let rows: Vec<(NaiveDate, Decimal, i64)> = sqlx::query_as(
            "SELECT day, value, usages_count FROM daily_aggregates WHERE unit = 'crash-unit' ORDER BY day",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.into_iter().map(|(d, v, n)| (d, (v, n))).collect::<BTreeMap<NaiveDate, (Decimal, i64)>>()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let actual = loop {
        let actual = aggregates().await;
        let counted: i64 = actual.values().map(|(_, n)| n).sum();
        if counted >= total || Instant::now() > deadline {
            break actual;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

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
            completed +=
                page["jobs"].as_array().map_or(0, |jobs| jobs.iter().filter(|j| j["status"] == "COMPLETED").count());
        }
        if completed >= jobs || Instant::now() > deadline {
            break (listed, completed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut projection_mismatches = Vec::new();
    if listed != jobs || completed != jobs {
        projection_mismatches.push(format!("listed {listed} jobs, {completed} COMPLETED, {jobs} acknowledged"));
    }
    for (id, _, _) in accepted.values() {
        let job = get(format!("/usagesJobs/{id}")).await;
        let want = json!([{"application": "app", "unit": "crash-unit", "usagesCount": USAGES_PER_JOB, "processStatus": "RECEIVEDFORBILLING"}]);
        if job["status"] != "COMPLETED" || job["usagesCount"] != USAGES_PER_JOB || job["usagesSummary"] != want {
            projection_mismatches.push(job.to_string());
        }
    }

    // Quiet now: nothing left to send. The aggregates once more (nothing may have moved them
    // since), and what billing received, compared with the oracle per bucket: versions in
    // strictly increasing order of arrival, the last one's value and count the oracle's.
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE state NOT IN ('received', 'superseded')")
            .fetch_one(&pool)
            .await
            .unwrap();
    let superseded: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE state = 'superseded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let quiet = aggregates().await;
    let records: Vec<Value> = client.get(&billing_url).send().await.unwrap().json().await.unwrap();
    let mut billed: BTreeMap<NaiveDate, Vec<(u64, Decimal, i64)>> = BTreeMap::new();
    for stored in &records {
        let record = &stored["record"];
        let day = NaiveDate::from_str(record["bucket"]["day"].as_str().unwrap()).unwrap();
        let value = Decimal::from_str(record["value"].as_str().unwrap()).unwrap();
        billed.entry(day).or_default().push((
            record["version"].as_u64().unwrap(),
            value,
            record["usagesCount"].as_i64().unwrap(),
        ));
    }
    let mut billing_mismatches = Vec::new();
    for (day, versions) in &billed {
        if versions.windows(2).any(|w| w[0].0 >= w[1].0) {
            billing_mismatches
                .push(format!("{day}: versions out of order: {:?}", versions.iter().map(|v| v.0).collect::<Vec<_>>()));
        }
    }
    for (day, want) in &expected {
        match billed.get(day).and_then(|v| v.last()) {
            Some((_, value, count)) if (*value, *count) == *want => {}
            last => billing_mismatches.push(format!("{day}: billed last {last:?}, expected {want:?}")),
        }
    }

    let kills: Vec<String> = stages.iter().map(|s| format!("{}={}", s.name, s.kills)).collect();
    println!(
        "crash test: {total} usages in {jobs} jobs acknowledged after {retries} client retries; kills: {}; \
         billing down {} ms until versions piled up; \
         buckets compared: {}; usages RECEIVEDFORBILLING: {received}; billing records: {} ({superseded} versions coalesced into them); jobs misread by the query service: {}",
        kills.join(", "),
        billing_down.as_millis(),
        expected.len(),
        records.len(),
        projection_mismatches.len()
    );
    for line in &observed {
        println!("  killed {line}");
    }
    for stage in &mut stages {
        stage.stop().await;
    }
    receiver_shutdown.cancel();
    assert_eq!(actual, expected, "daily aggregates differ from what the gateway acknowledged");
    assert_eq!(quiet, expected, "daily aggregates moved after the pipeline was quiet");
    assert_eq!(received, total, "every usage ends RECEIVEDFORBILLING");
    assert!(projection_mismatches.is_empty(), "the query service lost or doubled: {projection_mismatches:#?}");
    assert_eq!(unsent, 0, "outbox rows left unsent");
    assert!(billing_mismatches.is_empty(), "billing received other than the oracle: {billing_mismatches:#?}");
    assert!(retries > 0, "the gateway was killed mid-load, yet no client had to retry");
    assert!(superseded > 0, "no bucket version was coalesced: billing coalescing was not exercised");
    assert_eq!(observed.len(), SCHEDULE.len());
}
