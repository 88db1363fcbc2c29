//! What the benchmark reads while it runs: the stages' counters and lags from their metrics
//! endpoints, each process's RSS, and the probe jobs' latencies.

use super::*;

/// Usage counts read from the stages' counters (summed over every metrics endpoint), probes
/// included: `uts_verifier_usages_total`, `uts_aggregator_usages_total` and
/// `uts_query_final_usages_total`. Counters, not table scans: the benchmark must not load
/// PostgreSQL itself (counting the tables every second cost a tenth of its time).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) verified_usages: u64,
    pub(super) aggregated_usages: u64,
    pub(super) completed_usages: u64,
}

impl Counts {
    pub(super) fn add(&mut self, text: &str) {
        self.verified_usages += counter(text, "uts_verifier_usages_total");
        self.aggregated_usages += counter(text, "uts_aggregator_usages_total");
        self.completed_usages += counter(text, "uts_query_final_usages_total");
    }
}

/// Sum of the samples of `name` in a Prometheus text exposition.
pub(super) fn counter(text: &str, name: &str) -> u64 {
    counter_f64(text, name) as u64
}

pub(super) fn counter_f64(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(super) fn rss_mb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb / 1024)
}

/// A metrics endpoint's text.
pub(super) async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).timeout(Duration::from_secs(1)).send().await.ok()?.text().await.ok()
}

pub(super) fn pairs(list: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    list.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .with_context(|| format!("{p:?} is not name=value"))
        })
        .collect()
}

/// Probe latencies in microseconds.
pub(super) struct Probes {
    pub(super) visible: Histogram<u64>,
    pub(super) aggregated: Histogram<u64>,
    pub(super) completed: Histogram<u64>,
    pub(super) lost: u64,
    /// Probes accepted: their usages count in the stages' counters too.
    pub(super) posted: u64,
    /// (seconds into the run when posted, POST→COMPLETED ms) of every completed probe, to
    /// tell a slow start from a stall in the middle of the load.
    pub(super) timeline: Vec<(f64, u64)>,
    /// Probe GETs that did not answer 200, by status (or "error"), and the slowest GET.
    pub(super) refusals: BTreeMap<String, u64>,
    pub(super) slowest_get: Duration,
    /// Probes not started because MAX_PROBES_IN_FLIGHT were still being followed.
    pub(super) skipped: u64,
}

impl Probes {
    pub(super) fn new() -> Self {
        let h = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        Self {
            visible: h(),
            aggregated: h(),
            completed: h(),
            lost: 0,
            posted: 0,
            timeline: Vec::new(),
            refusals: BTreeMap::new(),
            slowest_get: Duration::ZERO,
            skipped: 0,
        }
    }
}

/// One probe: POST a one-usage job, then follow it on the query service until COMPLETED.
pub(super) async fn probe(
    client: reqwest::Client,
    post_url: String,
    query_url: String,
    token: String,
    tenant: String,
    probes: Arc<Mutex<Probes>>,
    started: Instant,
) {
    let body = serde_json::json!({"users":[{"tenantId": tenant, "resources":[{"application":"probe","resource":"r",
        "usages":[{"value": 1, "unit": "probe-unit", "datetime": chrono::Utc::now().to_rfc3339()}]}]}]});
    let Ok(answer) = client.post(&post_url).bearer_auth(&token).json(&body).send().await else { return };
    if answer.status() != reqwest::StatusCode::ACCEPTED {
        return;
    }
    let acknowledged = Instant::now();
    probes.lock().await.posted += 1;
    let Ok(answer) = answer.json::<serde_json::Value>().await else { return };
    let id = answer["id"].as_str().unwrap_or_default().to_owned();
    let get_url = format!("{}/api/usagetransparency/v3/usagesJobs/{id}", query_url.trim_end_matches('/'));
    let (mut visible, mut aggregated) = (false, false);
    while acknowledged.elapsed() < Duration::from_secs(300) {
        let asked = Instant::now();
        let answer = client.get(&get_url).bearer_auth(&token).send().await;
        {
            let mut p = probes.lock().await;
            p.slowest_get = p.slowest_get.max(asked.elapsed());
            let refusal = match &answer {
                Ok(r) if r.status() == reqwest::StatusCode::OK => None,
                Ok(r) => Some(r.status().as_u16().to_string()),
                Err(_) => Some("error".to_owned()),
            };
            if let Some(refusal) = refusal {
                *p.refusals.entry(refusal).or_default() += 1;
            }
        }
        if let Ok(response) = answer {
            if response.status() == reqwest::StatusCode::OK {
                let job: serde_json::Value = response.json().await.unwrap_or_default();
                let elapsed = acknowledged.elapsed().as_micros() as u64;
                let mut p = probes.lock().await;
                if !visible {
                    visible = true;
                    p.visible.saturating_record(elapsed);
                }
                let status = job["usagesSummary"][0]["processStatus"].as_str().unwrap_or_default();
                if !aggregated && matches!(status, "AGGREGATED" | "SENTFORBILLING" | "RECEIVEDFORBILLING") {
                    aggregated = true;
                    p.aggregated.saturating_record(elapsed);
                }
                if job["status"] == "COMPLETED" {
                    p.completed.saturating_record(elapsed);
                    p.timeline.push(((acknowledged - started).as_secs_f64(), elapsed / 1000));
                    return;
                }
            }
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
    probes.lock().await.lost += 1;
}

pub(super) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}
