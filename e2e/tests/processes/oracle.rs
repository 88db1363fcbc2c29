//! What the process tests observe: how far each stage got (read from the tables it writes), and
//! the end state compared with an oracle computed independently from what the gateway
//! acknowledged: every daily aggregate exact (also once the pipeline is quiet), every usage
//! RECEIVEDFORBILLING once, every job COMPLETED through the query service's API, nothing left
//! in the outbox, and what billing received per bucket: versions in strictly increasing order,
//! the last one carrying the exact value and count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_common::config::KafkaArgs;
use uts_common::proto::{v1, Message};
use uts_testkit::read_topic_to_end;

use super::load::{Accepted, UNIT, USAGES_PER_JOB};
use super::stages::SECRET;

/// How far each stage got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub accepted: i64,
    /// Jobs the verifier decided (stored decisions).
    pub decided: i64,
    /// (job, aggregation key) batches applied; one per job here.
    pub applied: i64,
    /// Outbox rows the billing system took, and rows still to send.
    pub billed: i64,
    pub unbilled: i64,
    /// Jobs the query service projected.
    pub projected: i64,
}

/// The stages' progress; an error while PostgreSQL is down.
pub async fn progress(pool: &PgPool, accepted: i64) -> Result<Progress, sqlx::Error> {
    let (decided, applied, billed, unbilled, projected): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM verifier_decisions),
                (SELECT count(*) FROM aggregate_applied_batches),
                (SELECT count(*) FROM billing_outbox WHERE state IN ('sent', 'received')),
                (SELECT count(*) FROM billing_outbox WHERE state IN ('pending', 'retrying')),
                (SELECT count(*) FROM jobs)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Progress { accepted, decided, applied, billed, unbilled, projected })
}

/// Where the pipeline under test answers.
pub struct Pipeline<'a> {
    pub pool: &'a PgPool,
    pub kafka: &'a KafkaArgs,
    pub query_port: u16,
    pub billing_url: &'a str,
}

/// The end state beside the oracle.
#[derive(Debug)]
pub struct Report {
    pub expected: BTreeMap<NaiveDate, (Decimal, i64)>,
    /// The aggregates when they first counted every usage, and once the pipeline was quiet.
    pub first: BTreeMap<NaiveDate, (Decimal, i64)>,
    pub quiet: BTreeMap<NaiveDate, (Decimal, i64)>,
    pub total: i64,
    pub received: i64,
    pub projection_mismatches: Vec<String>,
    pub unsent: i64,
    pub superseded: i64,
    pub records: usize,
    pub billing_mismatches: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "buckets compared: {}; usages RECEIVEDFORBILLING: {}/{}; billing records: {} ({} versions coalesced into them); \
             jobs misread by the query service: {}",
            self.expected.len(),
            self.received,
            self.total,
            self.records,
            self.superseded,
            self.projection_mismatches.len()
        )
    }

    /// Exactly once, end to end.
    pub fn assert_exact(&self) {
        assert_eq!(self.first, self.expected, "daily aggregates differ from what the gateway acknowledged");
        assert_eq!(self.quiet, self.expected, "daily aggregates moved after the pipeline was quiet");
        assert_eq!(self.received, self.total, "every usage ends RECEIVEDFORBILLING");
        assert!(
            self.projection_mismatches.is_empty(),
            "the query service lost or doubled: {:#?}",
            self.projection_mismatches
        );
        assert_eq!(self.unsent, 0, "outbox rows left unsent");
        assert!(
            self.billing_mismatches.is_empty(),
            "billing received other than the oracle: {:#?}",
            self.billing_mismatches
        );
    }
}

async fn aggregates(pool: &PgPool) -> BTreeMap<NaiveDate, (Decimal, i64)> {
    let rows: Vec<(NaiveDate, Decimal, i64)> =
        sqlx::query_as("SELECT day, value, usages_count FROM daily_aggregates WHERE unit = $1 ORDER BY day")
            .bind(UNIT)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(d, v, n)| (d, (v, n))).collect()
}

/// Waits (with deadlines) until the pipeline has carried every acknowledged job to its end,
/// then compares what it holds with the oracle.
pub async fn check(pipeline: &Pipeline<'_>, accepted: &BTreeMap<usize, Accepted>, started: DateTime<Utc>) -> Report {
    let pool = pipeline.pool;
    let mut expected: BTreeMap<NaiveDate, (Decimal, i64)> = BTreeMap::new();
    for job in accepted.values() {
        for (day, value) in &job.usages {
            let entry = expected.entry(*day).or_insert((Decimal::ZERO, 0));
            entry.0 += value;
            entry.1 += 1;
        }
    }
    let jobs = accepted.len();
    let total = (jobs * USAGES_PER_JOB) as i64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let first = loop {
        let actual = aggregates(pool).await;
        let counted: i64 = actual.values().map(|(_, n)| n).sum();
        if counted >= total || Instant::now() > deadline {
            break actual;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every usage reaches its final status: fold the status topic per job.
    let kafka = pipeline.kafka;
    let deadline = Instant::now() + Duration::from_secs(180);
    let received = loop {
        let messages = read_topic_to_end(kafka, &kafka.topics().status, Duration::from_secs(20)).await.unwrap();
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

    let projection_mismatches = projection(pipeline.query_port, accepted, started).await;

    // Quiet now: nothing left to send. The aggregates once more (nothing may have moved them
    // since), and what billing received.
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE state NOT IN ('received', 'superseded')")
            .fetch_one(pool)
            .await
            .unwrap();
    let superseded: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_outbox WHERE state = 'superseded'")
        .fetch_one(pool)
        .await
        .unwrap();
    let quiet = aggregates(pool).await;
    let records: Vec<Value> = reqwest::get(pipeline.billing_url).await.unwrap().json().await.unwrap();
    let billing_mismatches = billing(&records, &expected);
    Report {
        expected,
        first,
        quiet,
        total,
        received,
        projection_mismatches,
        unsent,
        superseded,
        records: records.len(),
        billing_mismatches,
    }
}

/// Through the query service's API: every job COMPLETED, its usages counted once.
async fn projection(query_port: u16, accepted: &BTreeMap<usize, Accepted>, started: DateTime<Utc>) -> Vec<String> {
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
    let days: BTreeSet<NaiveDate> = [started.date_naive(), Utc::now().date_naive()].into();
    let jobs = accepted.len();
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
    let mut mismatches = Vec::new();
    if listed != jobs || completed != jobs {
        mismatches.push(format!("listed {listed} jobs, {completed} COMPLETED, {jobs} acknowledged"));
    }
    let want = json!([{"application": "app", "unit": UNIT, "usagesCount": USAGES_PER_JOB, "processStatus": "RECEIVEDFORBILLING"}]);
    for job in accepted.values() {
        let answer = get(format!("/usagesJobs/{}", job.id)).await;
        if answer["status"] != "COMPLETED" || answer["usagesCount"] != USAGES_PER_JOB || answer["usagesSummary"] != want
        {
            mismatches.push(answer.to_string());
        }
    }
    mismatches
}

/// Per bucket: versions in strictly increasing order of arrival, the last one's value and
/// count the oracle's.
fn billing(records: &[Value], expected: &BTreeMap<NaiveDate, (Decimal, i64)>) -> Vec<String> {
    let mut billed: BTreeMap<NaiveDate, Vec<(u64, Decimal, i64)>> = BTreeMap::new();
    for stored in records {
        let record = &stored["record"];
        let day = NaiveDate::from_str(record["bucket"]["day"].as_str().unwrap()).unwrap();
        let value = Decimal::from_str(record["value"].as_str().unwrap()).unwrap();
        billed.entry(day).or_default().push((
            record["version"].as_u64().unwrap(),
            value,
            record["usagesCount"].as_i64().unwrap(),
        ));
    }
    let mut mismatches = Vec::new();
    for (day, versions) in &billed {
        if versions.windows(2).any(|w| w[0].0 >= w[1].0) {
            mismatches
                .push(format!("{day}: versions out of order: {:?}", versions.iter().map(|v| v.0).collect::<Vec<_>>()));
        }
    }
    for (day, want) in expected {
        match billed.get(day).and_then(|v| v.last()) {
            Some((_, value, count)) if (*value, *count) == *want => {}
            last => mismatches.push(format!("{day}: billed last {last:?}, expected {want:?}")),
        }
    }
    mismatches
}
