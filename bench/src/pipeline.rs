//! The end-to-end benchmark: load through the gateway for N seconds with every stage running,
//! then until drained; every second the usages accepted, verified, aggregated and completed
//! (RECEIVEDFORBILLING with billing on), each stage's backlog and Kafka lag, and every
//! process's RSS; probe jobs of another tenant posted during the load give POST→visible,
//! POST→AGGREGATED and POST→COMPLETED latencies. Reads only the stages' metrics endpoints
//! (counters and lag); asserts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

mod measure;
mod postgres;
mod soak;
use measure::*;
use postgres::*;
use soak::*;

/// The usages of one load job.
const USAGES_PER_JOB: u64 = 200;

/// How often a probe asks for its job; and most probes followed at once (more are not
/// started): the probes must not become a load of their own on the query service.
// Often enough for the latencies asked of it (seconds), seldom enough not to load the query
// service itself (16 probes at 20 ms were 800 GETs a second).
const PROBE_POLL: Duration = Duration::from_millis(50);
const MAX_PROBES_IN_FLIGHT: usize = 16;

/// Shape of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Every job for one (tenant, application, unit) and day: one hot daily bucket.
    Hot,
    /// Each job for one of `--buckets` units, in turn: as many daily buckets, each touched
    /// every `buckets / rate` seconds (as IoT tenants or many units of one operator would).
    Spread,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Load shape.
    #[arg(long, value_enum, default_value = "hot")]
    pub shape: Shape,

    /// Buckets of the spread shape.
    #[arg(long, default_value_t = 10_000)]
    pub buckets: usize,

    /// Jobs per second to post (0: as fast as the gateway takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// `name=pid` of a process whose RSS is reported (repeatable).
    #[arg(long = "watch")]
    pub watch: Vec<String>,

    /// `name=url` of a stage's metrics endpoint, for its consumer lag and usage counters
    /// (repeatable; progress is read from them).
    #[arg(long = "metrics")]
    pub metrics: Vec<String>,

    /// The pipeline's database, for what PostgreSQL did during the load (WAL, checkpoints,
    /// autovacuum, the statements that wrote the most WAL); left out without it.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// How long to wait for the drain after the load, in seconds.
    #[arg(long, default_value_t = 180)]
    pub drain_timeout: u64,

    /// Application and unit prefix of the load (rules for it must exist).
    #[arg(long, default_value = "bench-app")]
    pub application: String,

    /// Soak: a line a minute instead of a line a second (every process's RSS, every stage's
    /// largest lag in that minute), then whether memory stayed flat after the warm-up minutes
    /// and the lags bounded.
    #[arg(long)]
    pub soak: bool,
}

/// The JSON body of a load job: 200 usages for `tenant` of one unit, split where the unit's
/// name goes, so a body for any unit is one concatenation.
struct Template {
    parts: Vec<Vec<u8>>,
}

const UNIT_PLACEHOLDER: &str = "@@unit@@";

impl Template {
    fn new(tenant: &str, application: &str) -> Self {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let resources: Vec<_> = (0..4)
            .map(|r| {
                let usages: Vec<_> = (0..USAGES_PER_JOB as usize / 4)
                    .map(|i| {
                        serde_json::json!({
                            "value": format!("{}.{}", i % 97, i % 10).parse::<serde_json::Number>().unwrap(),
                            "unit": UNIT_PLACEHOLDER, "datetime": now
                        })
                    })
                    .collect();
                serde_json::json!({"application": application, "resource": format!("asset-{r}"), "usages": usages})
            })
            .collect();
        let text =
            serde_json::json!({"users": [{"tenantId": tenant, "userId": "bench@example.com", "resources": resources}]})
                .to_string();
        Self { parts: text.split(UNIT_PLACEHOLDER).map(|p| p.as_bytes().to_vec()).collect() }
    }

    fn body(&self, unit: &str) -> bytes::Bytes {
        let mut body =
            Vec::with_capacity(self.parts.iter().map(Vec::len).sum::<usize>() + unit.len() * self.parts.len());
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(unit.as_bytes());
            }
            body.extend_from_slice(part);
        }
        body.into()
    }
}

/// The unit of load job `n`.
fn unit_of(shape: Shape, buckets: usize, n: u64) -> String {
    match shape {
        Shape::Hot => "bench-unit".to_owned(),
        Shape::Spread => format!("bench-unit-{}", n % buckets.max(1) as u64),
    }
}

/// Runs the end-to-end benchmark; `gateway_url`, `query_url` as for the other phases.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    args: &PipelineArgs,
    gateway_url: &str,
    query_url: &str,
    token: &str,
    tenant: &str,
    probe_token: &str,
    probe_tenant: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let watch = pairs(&args.watch)?;
    let metrics = pairs(&args.metrics)?;
    let template = Arc::new(Template::new(tenant, &args.application));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency + 64).build()?;
    let post_url = format!("{}/api/usagetransparency/v3/usagesJobs", gateway_url.trim_end_matches('/'));
    let first = client
        .post(&post_url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(template.body(&unit_of(args.shape, args.buckets, 0)))
        .send()
        .await?;
    if first.status() != reqwest::StatusCode::ACCEPTED {
        bail!("the gateway answered {}: {}", first.status(), first.text().await.unwrap_or_default());
    }
    println!(
        "pipeline: shape {:?} ({} bucket(s)), {} s of load, {} in flight, rate {}",
        args.shape,
        if args.shape == Shape::Hot { 1 } else { args.buckets },
        seconds,
        concurrency,
        if args.rate == 0 { "unbounded".to_owned() } else { format!("{} jobs/s", args.rate) }
    );
    let postgres = Postgres::connect(args.database_url.as_deref()).await;
    let wal_at_start = wal_of(postgres.as_ref()).await;
    let accepted = Arc::new(AtomicU64::new(1));
    let failed = Arc::new(AtomicU64::new(0));
    let loading = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let tickets = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, post_url, token, template) =
            (client.clone(), post_url.clone(), token.to_owned(), template.clone());
        let (accepted, failed, loading, tickets, rate) =
            (accepted.clone(), failed.clone(), loading.clone(), tickets.clone(), args.rate);
        let (shape, buckets) = (args.shape, args.buckets);
        workers.push(tokio::spawn(async move {
            while loading.load(Ordering::Relaxed) {
                let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                if rate > 0 {
                    // Paced: job n goes at start + n / rate.
                    let due = started + Duration::from_secs_f64(ticket as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    if !loading.load(Ordering::Relaxed) {
                        break;
                    }
                }
                let body = template.body(&unit_of(shape, buckets, ticket));
                let request =
                    client.post(&post_url).bearer_auth(&token).header("content-type", "application/json").body(body);
                match request.send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Probes: one every 250 ms during the load, each followed to COMPLETED.
    let probes = Arc::new(Mutex::new(Probes::new()));
    let prober = {
        let (client, post_url, query_url) = (client.clone(), post_url.clone(), query_url.to_owned());
        let (token, tenant, probes, loading) =
            (probe_token.to_owned(), probe_tenant.to_owned(), probes.clone(), loading.clone());
        tokio::spawn(async move {
            let mut followers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            let mut skipped = 0u64;
            while loading.load(Ordering::Relaxed) {
                if followers.iter().filter(|f| !f.is_finished()).count() >= MAX_PROBES_IN_FLIGHT {
                    skipped += 1;
                    probes.lock().await.skipped = skipped;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                followers.push(tokio::spawn(probe(
                    client.clone(),
                    post_url.clone(),
                    query_url.clone(),
                    token.clone(),
                    tenant.clone(),
                    probes.clone(),
                    started,
                )));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            for follower in followers {
                let _ = follower.await;
            }
        })
    };

    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} | {:>9} {:>9} {:>9} | lag {} | RSS MB {}",
        "s",
        "accepted/s",
        "verified/s",
        "aggreg./s",
        "complete/s",
        "ver.back",
        "agg.back",
        "bill.back",
        metrics.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("/"),
        watch.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("/")
    );
    let mut peak_rss: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_lag: BTreeMap<String, u64> = BTreeMap::new();
    let mut minutes: Vec<Minute> = Vec::new();
    let mut minute_lag: BTreeMap<String, u64> = BTreeMap::new();
    // Per process, the sum and number of this minute's RSS samples (one a second): a single
    // sample swings with the batches in hand at that instant.
    let mut minute_rss: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut minute_start = (0u64, 0u64);
    let (mut minute_wal, mut minute_checkpointing, mut minute_vacuumed) = (wal_at_start, 0u32, BTreeSet::new());
    let mut next_minute = Duration::from_secs(60);
    let mut previous = (0u64, Counts::default());
    let mut load_end: Option<(Duration, u64, Counts)> = None;
    let mut wal_at_load_end = None;
    let mut agg_at_quarter = None;
    let mut drained = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if load_end.is_none() && elapsed >= Duration::from_secs(seconds) {
            loading.store(false, Ordering::Relaxed);
        }
        let now_accepted = accepted.load(Ordering::Relaxed) * USAGES_PER_JOB;
        let mut c = Counts::default();
        let mut lags = Vec::new();
        for (name, url) in &metrics {
            let text = scrape(&client, url).await;
            if let Some(text) = &text {
                c.add(text);
            }
            let value = text.map(|t| counter(&t, "uts_stage_consumer_lag_messages"));
            if let Some(v) = value {
                let entry = max_lag.entry(name.clone()).or_default();
                *entry = (*entry).max(v);
                let entry = minute_lag.entry(name.clone()).or_default();
                *entry = (*entry).max(v);
            }
            lags.push(value.map_or("-".to_owned(), |v| v.to_string()));
        }
        let mut rss = Vec::new();
        for (name, pid) in &watch {
            let value = rss_mb(pid);
            if let Some(v) = value {
                let entry = peak_rss.entry(name.clone()).or_default();
                *entry = (*entry).max(v);
                let (sum, samples) = minute_rss.entry(name.clone()).or_default();
                (*sum, *samples) = (*sum + v, *samples + 1);
            }
            rss.push(value.map_or("-".to_owned(), |v| v.to_string()));
        }
        let verified = c.verified_usages;
        if let (Some(pg), true) = (&postgres, args.soak) {
            let background = pg.background().await;
            minute_checkpointing += u32::from(background.checkpointing);
            minute_vacuumed.extend(background.vacuuming);
        }
        if args.soak && load_end.is_none() && elapsed >= next_minute {
            next_minute += Duration::from_secs(60);
            let minute = Minute {
                accepted: now_accepted - minute_start.0,
                completed: c.completed_usages.saturating_sub(minute_start.1),
                rss: std::mem::take(&mut minute_rss)
                    .into_iter()
                    .map(|(name, (sum, samples))| (name, sum / samples.max(1)))
                    .collect(),
                max_lag: std::mem::take(&mut minute_lag),
            };
            println!(
                "minute {:>3}: accepted {:>7.0}/s completed {:>7.0}/s | backlog ver/agg/bill {}/{}/{} | max lag {} | mean RSS MB {}",
                minutes.len() + 1,
                minute.accepted as f64 / 60.0,
                minute.completed as f64 / 60.0,
                now_accepted.saturating_sub(verified),
                verified.saturating_sub(c.aggregated_usages),
                c.aggregated_usages.saturating_sub(c.completed_usages),
                minute.max_lag.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", "),
                minute.rss.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ")
            );
            if let Some(pg) = &postgres {
                let wal = pg.wal().await;
                let vacuumed = std::mem::take(&mut minute_vacuumed).into_iter().collect::<Vec<_>>();
                println!(
                    "            PostgreSQL: {} | checkpoint writing {} s of 60 | autovacuum: {}",
                    match (wal, minute_wal) {
                        (Some(now), Some(before)) => now.since(&before, minute.accepted),
                        _ => "WAL -".to_owned(),
                    },
                    std::mem::take(&mut minute_checkpointing),
                    if vacuumed.is_empty() { "-".to_owned() } else { vacuumed.join(", ") }
                );
                minute_wal = wal;
            }
            minute_start = (now_accepted, c.completed_usages);
            minutes.push(minute);
        }
        if !args.soak || load_end.is_some() {
            println!(
                "{:>5} {:>10} {:>10} {:>10} {:>10} | {:>9} {:>9} {:>9} | lag {} | RSS MB {}",
                elapsed.as_secs(),
                now_accepted - previous.0,
                verified.saturating_sub(previous.1.verified_usages),
                c.aggregated_usages.saturating_sub(previous.1.aggregated_usages),
                c.completed_usages.saturating_sub(previous.1.completed_usages),
                now_accepted.saturating_sub(verified),
                verified.saturating_sub(c.aggregated_usages),
                c.aggregated_usages.saturating_sub(c.completed_usages),
                lags.join("/"),
                rss.join("/")
            );
        }
        previous = (now_accepted, c);
        if agg_at_quarter.is_none() && elapsed >= Duration::from_secs(seconds / 4) {
            agg_at_quarter = Some((elapsed, c.aggregated_usages));
        }
        if load_end.is_none() && !loading.load(Ordering::Relaxed) {
            for worker in workers.drain(..) {
                worker.await?;
            }
            load_end = Some((elapsed, accepted.load(Ordering::Relaxed) * USAGES_PER_JOB, c));
            wal_at_load_end = wal_of(postgres.as_ref()).await;
        }
        if let Some((ended, total, _)) = load_end {
            // Every usage of the load and of the probes (one each) aggregated and final.
            let expected = total + probes.lock().await.posted;
            if c.aggregated_usages >= expected && c.completed_usages >= expected {
                drained = Some(elapsed - ended);
                break;
            }
            if elapsed - ended > Duration::from_secs(args.drain_timeout) {
                break;
            }
        }
    }
    // Where the time goes, per stage, over the whole run: how long a batch's oldest message
    // waited for the stage, and how long the stage took over a batch.
    let mut hops = Vec::new();
    for (name, url) in &metrics {
        let Some(text) = scrape(&client, url).await else { continue };
        let mean = |metric: &str| {
            let sum = counter_f64(&text, &format!("{metric}_sum"));
            let count = counter_f64(&text, &format!("{metric}_count"));
            if count > 0.0 {
                format!("{:.0}", sum / count * 1000.0)
            } else {
                "-".to_owned()
            }
        };
        hops.push(format!(
            "{name} waited {} ms, batch {} ms",
            mean("uts_stage_message_age_seconds"),
            mean("uts_stage_batch_duration_seconds")
        ));
    }
    prober.await?;
    let (ended, total, at_end) = load_end.expect("the load ended");
    let probes = probes.lock().await;
    println!("summary ({:?} shape):", args.shape);
    println!(
        "  accepted {total} usages in {:.1} s = {:.0} usages/s ({} requests failed)",
        ended.as_secs_f64(),
        total as f64 / ended.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    if let Some((quarter, agg_quarter)) = agg_at_quarter {
        let window = (ended - quarter).as_secs_f64();
        println!(
            "  aggregated during the load (from {} s to its end): {:.0} usages/s; completed by its end: {} of {} usages",
            quarter.as_secs(),
            (at_end.aggregated_usages - agg_quarter) as f64 / window,
            at_end.completed_usages,
            total
        );
    }
    match drained {
        Some(d) => {
            println!("  drained (every usage aggregated and completed) {:.1} s after the load stopped", d.as_secs_f64())
        }
        None => println!("  NOT drained {} s after the load stopped", args.drain_timeout),
    }
    println!(
        "  probes ({} followed, {} not completed in 300 s, {} not started: {MAX_PROBES_IN_FLIGHT} in flight): POST->visible p50 {:.0} ms p99 {:.0} ms; POST->AGGREGATED p50 {:.0} ms p99 {:.0} ms; POST->COMPLETED p50 {:.0} ms p99 {:.0} ms",
        probes.visible.len(),
        probes.lost,
        probes.skipped,
        ms(&probes.visible, 0.5),
        ms(&probes.visible, 0.99),
        ms(&probes.aggregated, 0.5),
        ms(&probes.aggregated, 0.99),
        ms(&probes.completed, 0.5),
        ms(&probes.completed, 0.99)
    );
    let mut slowest = probes.timeline.clone();
    slowest.sort_by_key(|&(_, ms)| std::cmp::Reverse(ms));
    println!(
        "  slowest probes (posted at s: POST->COMPLETED ms): {}",
        slowest.iter().take(5).map(|(at, ms)| format!("{at:.1}: {ms}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  probe GETs not answered 200: {:?}; slowest probe GET {} ms",
        probes.refusals,
        probes.slowest_get.as_millis()
    );
    println!("  mean per stage (oldest message of a batch): {}", hops.join("; "));
    println!("  peak RSS MB: {}", peak_rss.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", "));
    println!(
        "  max consumer lag (messages): {}",
        max_lag.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ")
    );
    if let (Some(pg), Some(start), Some(end)) = (&postgres, wal_at_start, wal_at_load_end) {
        println!("  PostgreSQL during the load: {}", end.since(&start, total));
        for statement in pg.top_wal_statements(5).await {
            println!("    {statement}");
        }
    }
    if args.soak {
        soak_verdict(&minutes, args.rate.max(1));
    }
    Ok(())
}
