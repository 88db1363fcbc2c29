//! The load of the process tests: clients posting distinct jobs of exact values, each retried
//! with its `Idempotency-Key` until the gateway acknowledges it, and what it acknowledged (the
//! oracle's input).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uts_common::auth::mint_hs256;

use super::stages::SECRET;

pub const USAGES_PER_JOB: usize = 100;
/// The unit of every usage of the load (its rule is seeded by `stages::seed`).
pub const UNIT: &str = "crash-unit";

/// Job `j`: 100 usages of `op` with exact values, a fifth of them dated yesterday.
pub fn job_body(j: usize) -> (Value, Vec<(NaiveDate, Decimal)>) {
    let now = Utc::now();
    let yesterday = now.checked_sub_days(Days::new(1)).unwrap();
    let mut usages = Vec::new();
    let mut expected = Vec::new();
    for i in 0..USAGES_PER_JOB {
        let value = Decimal::new((j * 1000 + i) as i64, 2); // e.g. 12.34
        let at = if i % 5 == 0 { yesterday } else { now };
        usages.push(json!({"value": Value::from_str(&value.to_string()).unwrap(), "unit": UNIT,
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

/// A job the gateway acknowledged: its id, the (day, value) of each usage, its body.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub usages: Vec<(NaiveDate, Decimal)>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    accepted: Mutex<BTreeMap<usize, Accepted>>,
    /// POST attempts that were not answered 202 (the gateway was down, or a dependency).
    retries: AtomicU64,
    next_job: AtomicUsize,
    stop: AtomicBool,
}

/// Clients posting distinct jobs, each waiting `pace` between its jobs (pacing the load, not
/// waiting for a result), until stopped or `max_jobs` were taken.
pub struct Clients {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    url: String,
    token: String,
    /// When the load began (the job listing is per day).
    pub started: DateTime<Utc>,
}

impl Clients {
    pub fn start(gateway_port: u16, clients: usize, pace: Duration, max_jobs: usize) -> Self {
        let url = format!("http://127.0.0.1:{gateway_port}/api/usagetransparency/v3/usagesJobs");
        let token = mint_hs256(SECRET, "op", "crash", &["uts.usages.write"], 3600).unwrap();
        let shared: Arc<Shared> = Arc::default();
        let handles = (0..clients)
            .map(|_| {
                let (url, token, shared) = (url.clone(), token.clone(), shared.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !shared.stop.load(Ordering::Relaxed) {
                        let j = shared.next_job.fetch_add(1, Ordering::Relaxed);
                        if j >= max_jobs {
                            break;
                        }
                        let (body, usages) = job_body(j);
                        let key = format!("crash-job-{j}");
                        let id = post_until_accepted(&client, &url, &token, &key, &body, &shared.retries).await;
                        shared.accepted.lock().unwrap().insert(j, Accepted { id, usages, body });
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Self { shared, handles, url, token, started: Utc::now() }
    }

    /// Jobs acknowledged so far.
    pub fn accepted(&self) -> i64 {
        self.shared.accepted.lock().unwrap().len() as i64
    }

    /// POST attempts refused so far.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Lets `more` jobs more be acknowledged (at most a minute), then stops the clients, posts
    /// job 0 once more with its key (it must answer the same job) and returns what the gateway
    /// acknowledged, with the number of refused attempts.
    pub async fn finish(mut self, more: i64) -> (BTreeMap<usize, Accepted>, u64) {
        let after = self.accepted() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.accepted() < after && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for handle in std::mem::take(&mut self.handles) {
            handle.await.unwrap();
        }
        let accepted = self.shared.accepted.lock().unwrap().clone();
        let first = &accepted[&0];
        let client = reqwest::Client::new();
        let replay =
            post_until_accepted(&client, &self.url, &self.token, "crash-job-0", &first.body, &AtomicU64::new(0)).await;
        assert_eq!(replay, first.id, "a retry with the same key returns the same job");
        (accepted, self.retries())
    }
}
