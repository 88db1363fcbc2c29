//! `uts-bench`: how fast the ingest gateway makes usages durable, next to how fast one process
//! can produce the same job messages straight to Kafka with the same durable producer settings
//! (`acks=all`, idempotent); with `--pipeline`, how fast the whole pipeline behind it finishes
//! them ([`pipeline`]). Prints figures; asserts nothing (this is not a test).
//!
//! Both phases run for the same time with the same number of requests in flight; every
//! request carries 200 usages, the API's maximum.

mod pipeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use uts_common::config::KafkaArgs;
use uts_common::domain::{to_timestamp, MAX_USAGES_PER_REQUEST};
use uts_common::kafka;
use uts_common::proto::{v1, Message};

#[derive(Parser)]
#[command(about)]
struct Args {
    /// Base URL of the running gateway.
    #[arg(long, env = "UTS_BENCH_GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    gateway_url: String,

    /// Bearer token with uts.usages.write for an operator tenant.
    #[arg(long, env = "UTS_BENCH_TOKEN", hide_env_values = true)]
    token: String,

    /// Tenant the usages are posted for (the token's tenant).
    #[arg(long, env = "UTS_BENCH_TENANT", default_value = "bench-operator")]
    tenant: String,

    /// Requests (or raw produces) in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Seconds each phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,

    /// Skip the raw Kafka phase.
    #[arg(long)]
    skip_raw: bool,

    /// Base URL of a running query service: also measure the time from a POST's 202 to the job
    /// being readable with GET /usagesJobs/{id} (the token then needs uts.usages.read too).
    #[arg(long, env = "UTS_BENCH_QUERY_URL")]
    query_url: Option<String>,

    /// Token (uts.usages.write and uts.usages.read) of a second operator tenant for the
    /// visibility probe: the load tenant's own jobs soon push probes out of its 1000-job window.
    #[arg(long, env = "UTS_BENCH_PROBE_TOKEN", hide_env_values = true)]
    probe_token: Option<String>,

    /// The probe token's tenant.
    #[arg(long, env = "UTS_BENCH_PROBE_TENANT", default_value = "bench-probe")]
    probe_tenant: String,

    /// Also measure GET /usagesJobs/{id} of one job through this base URL (repeatable), next to
    /// --query-url directly: the one address's forwarding cost.
    #[arg(long = "read-via")]
    read_via: Vec<String>,

    /// Measure the whole pipeline instead (needs --query-url and --probe-token): load for
    /// --seconds, then until drained, figures every second.
    #[arg(long)]
    pipeline: bool,

    #[command(flatten)]
    pipeline_args: pipeline::PipelineArgs,

    #[command(flatten)]
    kafka: KafkaArgs,
}

struct Figures {
    requests: u64,
    failures: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Figures {
    fn usages_per_second(&self) -> f64 {
        (self.requests * MAX_USAGES_PER_REQUEST as u64) as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<8} {:>8} jobs  {:>6} failed  {:>10.0} usages/s  {:>7.0} jobs/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.requests,
            self.failures,
            self.usages_per_second(),
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.latency.value_at_quantile(0.50) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.latency.max() as f64 / 1000.0,
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pipeline {
        let query_url = args.query_url.as_deref().context("--pipeline needs --query-url")?;
        let probe_token = args.probe_token.as_deref().context("--pipeline needs --probe-token")?;
        return pipeline::run(
            &args.pipeline_args,
            &args.gateway_url,
            query_url,
            &args.token,
            &args.tenant,
            probe_token,
            &args.probe_tenant,
            args.concurrency,
            args.seconds,
        )
        .await;
    }
    let body = request_body(&args.tenant);
    println!(
        "uts-bench: {} s per phase, {} in flight, {} usages per job ({} bytes of JSON), {} cores",
        args.seconds,
        args.concurrency,
        MAX_USAGES_PER_REQUEST,
        body.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let raw = if args.skip_raw { None } else { Some(raw_kafka(&args).await?) };
    if let Some(raw) = &raw {
        raw.print("kafka");
    }
    if let Some(query_url) = &args.query_url {
        let idle = visibility(&args, query_url, Duration::from_secs(args.seconds.min(10))).await?;
        print_visibility("visible (no other load)", &idle);
        if !args.read_via.is_empty() {
            let id = probe_job(&args, query_url).await?;
            for base in std::iter::once(query_url).chain(&args.read_via) {
                reads(&args, base, &id, Duration::from_secs(args.seconds.min(5)))
                    .await?
                    .print(&format!("reads via {base}"));
            }
        }
    }
    let probe = args.query_url.clone().map(|query_url| {
        let args = args_clone(&args);
        tokio::spawn(async move { visibility(&args, &query_url, Duration::from_secs(args.seconds)).await })
    });
    let gateway = gateway(&args, body).await?;
    gateway.print("gateway");
    if let Some(probe) = probe {
        print_visibility("visible (under the gateway load above)", &probe.await??);
    }
    if let Some(raw) = raw {
        println!(
            "gateway/kafka throughput ratio: {:.2} (target >= 0.50); gateway usages/s: {:.0} (target >= 100000)",
            gateway.usages_per_second() / raw.usages_per_second(),
            gateway.usages_per_second()
        );
    }
    Ok(())
}

fn args_clone(args: &Args) -> Args {
    Args {
        gateway_url: args.gateway_url.clone(),
        token: args.token.clone(),
        tenant: args.tenant.clone(),
        concurrency: args.concurrency,
        seconds: args.seconds,
        skip_raw: args.skip_raw,
        query_url: args.query_url.clone(),
        probe_token: args.probe_token.clone(),
        probe_tenant: args.probe_tenant.clone(),
        read_via: args.read_via.clone(),
        pipeline: false,
        pipeline_args: args.pipeline_args.clone(),
        kafka: args.kafka.clone(),
    }
}

fn print_visibility(name: &str, latency: &Histogram<u64>) {
    println!(
        "{name}: {} jobs, POST 202 -> GET /usagesJobs/{{id}} 200: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 1000 ms)",
        latency.len(),
        latency.value_at_quantile(0.50) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
    );
}

/// One job at a time: POST, then poll GET /usagesJobs/{id} until it answers 200; the time from
/// the 202 to that 200, in microseconds.
async fn visibility(args: &Args, query_url: &str, run_for: Duration) -> anyhow::Result<Histogram<u64>> {
    let client = reqwest::Client::new();
    let post_url = format!("{}/api/usagetransparency/v3/usagesJobs", args.gateway_url.trim_end_matches('/'));
    let token = args.probe_token.as_deref().unwrap_or(&args.token);
    let tenant = if args.probe_token.is_some() { &args.probe_tenant } else { &args.tenant };
    let body = serde_json::json!({"users":[{"tenantId": tenant, "resources":[{"application":"probe","resource":"r",
        "usages":[{"value": 1, "unit": "probe-unit", "datetime": chrono::Utc::now().to_rfc3339()}]}]}]});
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let deadline = Instant::now() + run_for;
    while Instant::now() < deadline {
        let answer = client.post(&post_url).bearer_auth(token).json(&body).send().await?;
        if answer.status() != reqwest::StatusCode::ACCEPTED {
            bail!("the probe POST answered {}", answer.status());
        }
        let acknowledged = Instant::now();
        let id = answer.json::<serde_json::Value>().await?["id"].as_str().unwrap_or_default().to_owned();
        let get_url = format!("{}/api/usagetransparency/v3/usagesJobs/{id}", query_url.trim_end_matches('/'));
        loop {
            let response = client.get(&get_url).bearer_auth(token).send().await?;
            if response.status() == reqwest::StatusCode::OK {
                latency.saturating_record(acknowledged.elapsed().as_micros() as u64);
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(600) {
                bail!("job {id} was not visible after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(latency)
}

/// Posts one probe job and waits until `query_url` shows it; its id.
async fn probe_job(args: &Args, query_url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let token = args.probe_token.as_deref().unwrap_or(&args.token);
    let tenant = if args.probe_token.is_some() { &args.probe_tenant } else { &args.tenant };
    let body = serde_json::json!({"users":[{"tenantId": tenant, "resources":[{"application":"probe","resource":"r",
        "usages":[{"value": 1, "unit": "probe-unit", "datetime": chrono::Utc::now().to_rfc3339()}]}]}]});
    let post_url = format!("{}/api/usagetransparency/v3/usagesJobs", args.gateway_url.trim_end_matches('/'));
    let answer: serde_json::Value = client.post(&post_url).bearer_auth(token).json(&body).send().await?.json().await?;
    let id = answer["id"].as_str().context("the probe POST answered no id")?.to_owned();
    let get_url = format!("{}/api/usagetransparency/v3/usagesJobs/{id}", query_url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(&get_url).bearer_auth(token).send().await?.status() != reqwest::StatusCode::OK {
        if Instant::now() > deadline {
            bail!("job {id} was not visible after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(id)
}

/// GET /usagesJobs/{id} of one job through `base`, 8 requests in flight, for `run_for`.
async fn reads(args: &Args, base: &str, id: &str, run_for: Duration) -> anyhow::Result<Figures> {
    let client = reqwest::Client::new();
    let token = args.probe_token.clone().unwrap_or_else(|| args.token.clone());
    let url = format!("{}/api/usagetransparency/v3/usagesJobs/{id}", base.trim_end_matches('/'));
    let started = Instant::now();
    let deadline = started + run_for;
    let loops = (0..8).map(|_| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut figures = (0u64, 0u64, Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(response) if response.status() == reqwest::StatusCode::OK => {
                        let _ = response.bytes().await;
                        figures.0 += 1;
                        figures.2.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    _ => figures.1 += 1,
                }
            }
            figures
        })
    });
    let mut total = Figures {
        requests: 0,
        failures: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for handle in loops.collect::<Vec<_>>() {
        let (ok, failed, latency) = handle.await?;
        total.requests += ok;
        total.failures += failed;
        total.latency.add(&latency)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The JSON body of one request: 200 usages of one tenant over 4 resources.
fn request_body(tenant: &str) -> Vec<u8> {
    let resources: Vec<_> = (0..4)
        .map(|r| {
            let usages: Vec<_> = (0..MAX_USAGES_PER_REQUEST / 4)
                .map(|i| {
                    serde_json::json!({
                        "value": format!("{}.{}", i % 97, i % 10).parse::<serde_json::Number>().unwrap(),
                        "unit": "bench-unit",
                        "datetime": "2026-11-20T10:15:30.123Z"
                    })
                })
                .collect();
            serde_json::json!({"application": "bench-app", "resource": format!("asset-{r}"), "usages": usages})
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"users": [{"tenantId": tenant, "userId": "bench@example.com", "resources": resources}]}),
    )
    .unwrap()
}

/// The job message the gateway would produce for [`request_body`].
fn job_message(tenant: &str) -> v1::UsageJob {
    let now = chrono::Utc::now();
    let mut index = 0;
    let resources = (0..4)
        .map(|r| v1::ResourceUsages {
            application: "bench-app".into(),
            alias: "bench-app".into(),
            resource: format!("asset-{r}"),
            usages: (0..MAX_USAGES_PER_REQUEST / 4)
                .map(|i| {
                    index += 1;
                    v1::Usage {
                        index: index - 1,
                        value: format!("{}.{}", i % 97, i % 10),
                        unit: "bench-unit".into(),
                        datetime: Some(to_timestamp(now)),
                    }
                })
                .collect(),
        })
        .collect();
    v1::UsageJob {
        job_id: String::new(),
        submitter_tenant: tenant.into(),
        submitter_user: "bench@example.com".into(),
        received_at: Some(to_timestamp(now)),
        origin: v1::Origin::UsagesJobs as i32,
        idempotency_key: String::new(),
        usages_count: MAX_USAGES_PER_REQUEST as u32,
        users: vec![v1::UserUsages {
            tenant_id: tenant.into(),
            user_id: "bench@example.com".into(),
            user_type: v1::UserType::User as i32,
            resources,
        }],
    }
}

/// Phase 1: one process producing job messages straight to Kafka.
async fn raw_kafka(args: &Args) -> anyhow::Result<Figures> {
    let mut kafka_args = args.kafka.clone();
    // A topic of its own: nothing consumes it, so the raw phase leaves no backlog behind.
    kafka_args.topic_prefix = format!("{}-raw", args.kafka.topic_prefix);
    let topics = kafka_args.topics();
    kafka::ensure_topics(&kafka_args, &topics).await?;
    let (producer, _health) = kafka::durable_producer(&kafka_args)?;
    let template = job_message(&args.tenant);
    let timeout = kafka_args.produce_timeout();
    let topic = topics.usage_jobs.clone();
    run_phase(args, move || {
        let producer = producer.clone();
        let topic = topic.clone();
        let mut job = template.clone();
        async move {
            // Encoding is part of the work the gateway does too.
            job.job_id = uuid::Uuid::now_v7().to_string();
            let payload = job.encode_to_vec();
            kafka::produce_durably(&producer, &topic, job.job_id.as_bytes(), &payload, timeout).await.is_ok()
        }
    })
    .await
}

/// Phase 2: the same load through the gateway's HTTP API.
async fn gateway(args: &Args, body: Vec<u8>) -> anyhow::Result<Figures> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let url = format!("{}/api/usagetransparency/v3/usagesJobs", args.gateway_url.trim_end_matches('/'));
    // One request first, to fail loudly on a wrong URL or token instead of measuring errors.
    let probe = client
        .post(&url)
        .bearer_auth(&args.token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    if probe.status() != reqwest::StatusCode::ACCEPTED {
        bail!("the gateway answered {}: {}", probe.status(), probe.text().await.unwrap_or_default());
    }
    // Bytes clones share one buffer: no copy per request.
    let body = bytes::Bytes::from(body);
    let token = args.token.clone();
    run_phase(args, move || {
        let request =
            client.post(&url).bearer_auth(&token).header("content-type", "application/json").body(body.clone());
        async move { matches!(request.send().await, Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED) }
    })
    .await
}

/// Runs `concurrency` loops of `request` for the configured time; collects latencies.
async fn run_phase<F, Fut>(args: &Args, request: F) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (request, ok, failed, latency) = (request.clone(), ok.clone(), failed.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            while Instant::now() < deadline {
                let sent = Instant::now();
                if request().await {
                    ok.fetch_add(1, Ordering::Relaxed);
                    local.saturating_record(sent.elapsed().as_micros() as u64);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latency.lock().await.add(&local).unwrap();
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let latency = Arc::try_unwrap(latency).map_err(|_| anyhow::anyhow!("latency still shared"))?.into_inner();
    Ok(Figures { requests: ok.load(Ordering::Relaxed), failures: failed.load(Ordering::Relaxed), elapsed, latency })
}
