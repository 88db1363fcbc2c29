//! # billing-forwarder
//!
//! **Consumes** `uts.aggregates` (consumer group `uts-billing-forwarder`). Every version of a
//! *billable* daily bucket becomes a row of the PostgreSQL outbox (`billing_outbox`); the offset
//! is stored after that insert committed. Non-billable buckets are skipped.
//!
//! **Sends** each outbox row, on a cadence (`--send-interval-ms`), to the billing endpoint
//! (`--billing-url`) as one JSON record with `Idempotency-Key: <bucket>:<version>`, in version
//! order per bucket (later versions are corrections). Several forwarder processes share the
//! outbox safely (`FOR UPDATE SKIP LOCKED`).
//!
//! **Produces** status events for the jobs that contributed to the bucket version, keyed by job
//! id, with deterministic event ids `billing:<job>:<bucket>:<version>:<outcome>`:
//! AGGREGATED → SENTFORBILLING → RECEIVEDFORBILLING when the billing system acknowledges the
//! record (its 2xx answer is the receipt); AGGREGATED → FAILEDTOSENDFORBILLING, with a billing
//! error carrying the record's id, the first time a send fails; FAILEDTOSENDFORBILLING →
//! SENTFORBILLING → RECEIVEDFORBILLING when a retry later succeeds.
//!
//! A billing system may also answer 202 Accepted: the jobs get SENTFORBILLING and the record
//! waits (`sent`) for the billing system's receipt at [`receipts`]'s endpoint
//! (`POST /billing/v1/receipts` on `--receipts-addr`, bearer `--receipts-token`), which then
//! moves them to RECEIVEDFORBILLING with the same event ids a synchronous receipt has.
//!
//! **Delivery:** outbox rows are written at-least-once and deduplicated by (bucket, version);
//! sends are at-least-once and the billing system deduplicates by idempotency key. A record's
//! status events are a function of its row (`history`): the row is written first with
//! `events_pending`, then the whole history is produced under fixed event ids and the flag
//! cleared; every round first produces the histories still pending, so a crash at any point
//! neither loses a transition nor starts one from the wrong status.
//!
//! **Failure modes:** network errors, timeouts and 5xx/429 answers back off exponentially
//! (`--retry-base-ms` doubling up to `--retry-max-ms`) and are retried forever; other 4xx
//! answers mark the record rejected for good (and FAILEDTOSENDFORBILLING); undecodable
//! aggregates → dead letter; SIGTERM → the consumer commits and the sender finishes its round.

pub mod receipts;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use futures::future::try_join_all;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uts_common::admin;
use uts_common::config::{AdminArgs, DatabaseArgs, KafkaArgs, TelemetryArgs};
use uts_common::domain::{AggregationFunction, UsageStatus};
use uts_common::kafka::{self, DurableProducer};
use uts_common::proto::{v1, Message};
use uts_common::runner::{decode_proto, Decoded, Handler, Rejected, Runner};

/// Consumer group of every forwarder process.
pub const GROUP: &str = "uts-billing-forwarder";

/// Most outbox rows sent in one round.
const MAX_ROUND: i64 = 200;

/// How long a claimed outbox row is left to the forwarder that claimed it.
const LEASE: Duration = Duration::from_secs(120);

/// Forwards billable daily aggregates to the billing system.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "billing-forwarder", version, about)]
pub struct Config {
    /// Where billing records are POSTed.
    #[arg(long = "billing-url", env = "UTS_BILLING_URL", default_value = "http://127.0.0.1:18070/billing/v1/records")]
    pub billing_url: String,

    /// Bearer token for the billing endpoint, if it needs one.
    #[arg(long = "billing-token", env = "UTS_BILLING_TOKEN", hide_env_values = true)]
    pub billing_token: Option<String>,

    /// Address of the receipts endpoint (`POST /billing/v1/receipts`), where a billing system
    /// that answered a record with 202 Accepted sends its receipt later.
    #[arg(long = "receipts-addr", env = "UTS_BILLING_RECEIPTS_ADDR", default_value = "127.0.0.1:8086")]
    pub receipts_addr: std::net::SocketAddr,

    /// Bearer token the billing system's receipts must carry; receipts are refused (401) when
    /// unset. Prefer the environment variable: a command-line value is visible to other users.
    #[arg(long = "receipts-token", env = "UTS_BILLING_RECEIPTS_TOKEN", hide_env_values = true)]
    pub receipts_token: Option<String>,

    /// How often the outbox is scanned for records due, in milliseconds.
    #[arg(long = "send-interval-ms", env = "UTS_BILLING_SEND_INTERVAL_MS", default_value_t = 500)]
    pub send_interval_ms: u64,

    /// First retry delay after a failed send, in milliseconds; doubles per attempt.
    #[arg(long = "retry-base-ms", env = "UTS_BILLING_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,

    /// Longest retry delay, in milliseconds.
    #[arg(long = "retry-max-ms", env = "UTS_BILLING_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,

    /// Timeout of one billing request, in milliseconds.
    #[arg(long = "request-timeout-ms", env = "UTS_BILLING_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Kafka consumer group; every forwarder process of one deployment shares it.
    #[arg(long = "consumer-group", env = "UTS_BILLING_FORWARDER_GROUP", default_value = GROUP)]
    pub group: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The consumer side: aggregates into the outbox.
struct OutboxWriter {
    pool: PgPool,
}

/// A decoded aggregate: `None` when it is not billable.
pub struct Billable(Option<(v1::DailyAggregate, NaiveDate)>);

impl Handler for OutboxWriter {
    type Item = Billable;

    fn decode(&self, _topic: &str, _key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Billable, String> {
        let aggregate: v1::DailyAggregate = decode_proto(payload)?;
        if !aggregate.billable {
            return Ok(Billable(None));
        }
        let bucket = aggregate.bucket.as_ref().ok_or("aggregate without bucket")?;
        bucket.key.as_ref().ok_or("aggregate without aggregation key")?;
        let day = NaiveDate::parse_from_str(&bucket.day, "%Y-%m-%d").map_err(|_| format!("bad day {:?}", bucket.day))?;
        if aggregate.version == 0 {
            return Err("aggregate without version".into());
        }
        Ok(Billable(Some((aggregate, day))))
    }

    async fn handle(&self, batch: &[Decoded<Billable>]) -> anyhow::Result<Vec<Rejected>> {
        let mut tx = self.pool.begin().await?;
        for decoded in batch {
            let Some((aggregate, day)) = &decoded.item.0 else { continue };
            let key = aggregate.bucket.as_ref().and_then(|b| b.key.as_ref()).expect("checked in decode");
            sqlx::query(
                "INSERT INTO billing_outbox
                    (provider_tenant_id, consumer_tenant_id, application, unit, day, version, message, record_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(&key.provider_tenant)
            .bind(&key.consumer_tenant)
            .bind(&key.application)
            .bind(&key.unit)
            .bind(day)
            .bind(aggregate.version as i64)
            .bind(aggregate.encode_to_vec())
            .bind(record_key(&bucket_text(key, *day), aggregate.version as i64))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Vec::new())
    }
}

/// The JSON record sent to billing. The same (bucket, version) always yields the same body, so
/// a re-send is recognised as a duplicate, never as a conflict.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BillingRecord<'a> {
    bucket: BucketJson<'a>,
    version: u64,
    value: &'a str,
    usages_count: u64,
    function: &'static str,
    rule_id: &'a str,
    jobs: Vec<JobJson<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BucketJson<'a> {
    provider_tenant: &'a str,
    consumer_tenant: &'a str,
    application: &'a str,
    unit: &'a str,
    day: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JobJson<'a> {
    job_id: &'a str,
    usages_count: u32,
}

/// What one send attempt came to.
enum Outcome {
    /// 2xx: the answer is the receipt.
    Received,
    /// 202 Accepted: the receipt comes later, to the receipts endpoint.
    Accepted,
    Retry(String),
    Rejected(String),
}

/// The sender side: the outbox to the billing system.
struct Sender {
    pool: PgPool,
    producer: DurableProducer,
    status_topic: String,
    produce_timeout: Duration,
    http: reqwest::Client,
    config: Config,
}

type OutboxRow = (String, String, String, String, NaiveDate, i64, Vec<u8>, String, i32, bool);

impl Sender {
    /// Sends the records that are due; returns how many were claimed.
    async fn round(&self) -> anyhow::Result<usize> {
        // Claim due rows with a lease instead of holding locks across HTTP calls: another
        // forwarder skips them until the lease ends. Only the oldest unsent version of each
        // bucket is due, so versions reach billing in order.
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "UPDATE billing_outbox o SET next_attempt_at = now() + make_interval(secs => $2)
             FROM (
               SELECT provider_tenant_id, consumer_tenant_id, application, unit, day, version
               FROM billing_outbox d
               WHERE d.state IN ('pending', 'retrying') AND d.next_attempt_at <= now()
                 AND NOT EXISTS (
                   SELECT 1 FROM billing_outbox p
                   WHERE p.provider_tenant_id = d.provider_tenant_id AND p.consumer_tenant_id = d.consumer_tenant_id
                     AND p.application = d.application AND p.unit = d.unit AND p.day = d.day
                     AND p.version < d.version AND p.state IN ('pending', 'retrying'))
               ORDER BY d.next_attempt_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED
             ) due
             WHERE (o.provider_tenant_id, o.consumer_tenant_id, o.application, o.unit, o.day, o.version)
                 = (due.provider_tenant_id, due.consumer_tenant_id, due.application, due.unit, due.day, due.version)
             RETURNING o.provider_tenant_id, o.consumer_tenant_id, o.application, o.unit, o.day, o.version,
                       o.message, o.state, o.attempts, o.failure_reported",
        )
        .bind(MAX_ROUND)
        .bind(LEASE.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let claimed = rows.len();
        let mut billing_down = false;
        for (provider, consumer, application, unit, day, version, message, state, attempts, failure_reported) in rows {
            let bucket_text = format!("{provider}/{consumer}/{application}/{unit}/{day}");
            let record_key = record_key(&bucket_text, version);
            if billing_down {
                // Billing just failed: leave the rest for the next round instead of piling up
                // timeouts; their lease is released.
                sqlx::query("UPDATE billing_outbox SET next_attempt_at = now() WHERE record_key = $1 AND state = $2")
                    .bind(&record_key)
                    .bind(&state)
                    .execute(&self.pool)
                    .await?;
                continue;
            }
            let aggregate = v1::DailyAggregate::decode(message.as_slice()).context("decoding an outbox message")?;
            let outcome = self.send(&aggregate, &record_key).await;
            let (new_state, delay, error) = match &outcome {
                Outcome::Received => ("received", Duration::ZERO, None),
                Outcome::Accepted => ("sent", Duration::ZERO, None),
                Outcome::Retry(error) => {
                    billing_down = true;
                    ("retrying", self.backoff(attempts + 1), Some(error.clone()))
                }
                Outcome::Rejected(error) => ("rejected", Duration::ZERO, Some(error.clone())),
            };
            metrics::counter!("uts_billing_forwarder_sends_total", "outcome" => new_state).increment(1);
            let failed = matches!(outcome, Outcome::Retry(_) | Outcome::Rejected(_));
            // New events only when the history grows: a first failure, or billing took it.
            let news = !failed || !failure_reported;
            // The row first, with its events pending; then the history; then the flag cleared.
            // A crash in between leaves the flag, and the next round produces the history.
            sqlx::query(
                "UPDATE billing_outbox
                 SET state = $2, attempts = attempts + 1, last_error = coalesce($3, last_error), updated_at = now(),
                     next_attempt_at = now() + make_interval(secs => $4),
                     failure_reported = failure_reported OR $5, events_pending = events_pending OR $6
                 WHERE record_key = $1
                   -- A receipt by callback may have come in while this send was in flight.
                   AND state <> 'received'",
            )
            .bind(&record_key)
            .bind(new_state)
            .bind(error)
            .bind(delay.as_secs_f64())
            .bind(failed)
            .bind(news)
            .execute(&self.pool)
            .await?;
            if news {
                self.produce_history(&record_key).await?;
            }
        }
        Ok(claimed)
    }

    /// Produces the status events of a record from its row, then clears `events_pending`.
    async fn produce_history(&self, record_key: &str) -> anyhow::Result<()> {
        produce_history(&self.pool, &self.producer, &self.status_topic, self.produce_timeout, record_key).await
    }

    /// Rows whose events were decided but maybe never produced (a crash, or Kafka down right
    /// after the row was written): produce them now. Older than a few seconds, so that a send in
    /// flight in this or another forwarder finishes its own first (repeats are harmless anyway).
    async fn flush_pending(&self) -> anyhow::Result<()> {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT record_key FROM billing_outbox
             WHERE events_pending AND updated_at < now() - interval '5 seconds' ORDER BY updated_at LIMIT $1",
        )
        .bind(MAX_ROUND)
        .fetch_all(&self.pool)
        .await?;
        for key in keys {
            self.produce_history(&key).await?;
        }
        Ok(())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
        Duration::from_millis(self.config.retry_base_ms.saturating_mul(1 << exponent).min(self.config.retry_max_ms))
    }

    async fn send(&self, aggregate: &v1::DailyAggregate, record_key: &str) -> Outcome {
        let bucket = aggregate.bucket.clone().unwrap_or_default();
        let key = bucket.key.unwrap_or_default();
        let function = v1::AggregationFunction::try_from(aggregate.function)
            .ok()
            .and_then(AggregationFunction::from_proto)
            .unwrap_or_default();
        let record = BillingRecord {
            bucket: BucketJson {
                provider_tenant: &key.provider_tenant,
                consumer_tenant: &key.consumer_tenant,
                application: &key.application,
                unit: &key.unit,
                day: &bucket.day,
            },
            version: aggregate.version,
            value: &aggregate.value,
            usages_count: aggregate.usages_count,
            function: function.as_str(),
            rule_id: &aggregate.rule_id,
            jobs: aggregate
                .contributions
                .iter()
                .map(|c| JobJson { job_id: &c.job_id, usages_count: c.usages_count })
                .collect(),
        };
        let mut request = self
            .http
            .post(&self.config.billing_url)
            .header("Idempotency-Key", record_key)
            .json(&record);
        if let Some(token) = &self.config.billing_token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => Outcome::Accepted,
            Ok(response) if response.status().is_success() => Outcome::Received,
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let error = format!("billing answered {status}: {}", body.chars().take(300).collect::<String>());
                if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                {
                    Outcome::Retry(error)
                } else {
                    Outcome::Rejected(error)
                }
            }
            Err(err) => Outcome::Retry(format!("billing unreachable: {err}")),
        }
    }

    async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.config.send_interval_ms);
        loop {
            if let Err(err) = self.flush_pending().await {
                tracing::warn!(error = format!("{err:#}"), "producing pending billing events failed; retrying");
            }
            match self.round().await {
                // A full round: more may be due right away.
                Ok(n) if n as i64 == MAX_ROUND => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = format!("{err:#}"), "billing round failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// `<provider>/<consumer>/<application>/<unit>/<day>`: a bucket in record keys and event ids.
fn bucket_text(key: &v1::AggregationKey, day: NaiveDate) -> String {
    format!("{}/{}/{}/{}/{day}", key.provider_tenant, key.consumer_tenant, key.application, key.unit)
}

/// The Idempotency-Key of a bucket version's record, which a receipt names it by.
fn record_key(bucket_text: &str, version: i64) -> String {
    format!("{bucket_text}:{version}")
}

/// One status event of a bucket version for one contributing job. Ids are deterministic per
/// (job, bucket, version, what happened), so re-sends and repeated receipts are applied once.
fn contribution_event(
    aggregate: &v1::DailyAggregate,
    contribution: &v1::JobContribution,
    bucket_text: &str,
    version: i64,
    what: &str,
    steps: &[(UsageStatus, UsageStatus)],
    errors: Vec<v1::UsageError>,
) -> v1::StatusEvent {
    let key = aggregate.bucket.as_ref().and_then(|b| b.key.clone()).unwrap_or_default();
    v1::StatusEvent {
        event_id: format!("billing:{}:{bucket_text}:{version}:{what}", contribution.job_id),
        job_id: contribution.job_id.clone(),
        submitter_tenant: String::new(),
        stage: v1::Stage::BillingForwarder as i32,
        occurred_at: Some(uts_common::domain::to_timestamp(Utc::now())),
        transitions: steps
            .iter()
            .map(|(from, to)| v1::StatusTransition {
                application: key.application.clone(),
                unit: key.unit.clone(),
                from: from.to_proto() as i32,
                to: to.to_proto() as i32,
                count: contribution.usages_count,
                terminal: *to == UsageStatus::ReceivedForBilling,
            })
            .collect(),
        errors,
    }
}

/// The receipt's events: SENTFORBILLING → RECEIVEDFORBILLING for every contributing job. The
/// same whether the receipt was the send's answer or came later by callback.
fn receipt_events(aggregate: &v1::DailyAggregate, bucket_text: &str, version: i64) -> Vec<v1::StatusEvent> {
    aggregate
        .contributions
        .iter()
        .map(|c| {
            let steps = [(UsageStatus::SentForBilling, UsageStatus::ReceivedForBilling)];
            contribution_event(aggregate, c, bucket_text, version, "received", &steps, Vec::new())
        })
        .collect()
}

/// The status events of a bucket version's record, one to three per contributing job, as a
/// function of its row: "failed" (AGGREGATED → FAILEDTOSENDFORBILLING, with a billing error) if a
/// failure was reported; "sent" (→ SENTFORBILLING) once billing took the record; "received"
/// (→ RECEIVEDFORBILLING) once it was receipted. Event ids are fixed, so producing the whole
/// history again changes nothing that was already applied.
fn history(
    aggregate: &v1::DailyAggregate,
    bucket_text: &str,
    version: i64,
    state: &str,
    failure_reported: bool,
    last_error: &str,
) -> Vec<v1::StatusEvent> {
    let record_key = record_key(bucket_text, version);
    let (sent, received) = (matches!(state, "sent" | "received"), state == "received");
    let mut events = Vec::new();
    for contribution in &aggregate.contributions {
        let event = |what: &str, steps: &[(UsageStatus, UsageStatus)], errors: Vec<v1::UsageError>| {
            contribution_event(aggregate, contribution, bucket_text, version, what, steps, errors)
        };
        if failure_reported {
            let billing_error = v1::UsageError {
                code: "mdsp.uts.billing.sendFailed".into(),
                message: format!("sending the daily aggregate to billing failed: {last_error}"),
                message_parameters: vec![v1::MessageParameter { name: "billingRecordId".into(), value: record_key.clone() }],
                logref: record_key.clone(),
                error_type: v1::ErrorType::Billing as i32,
                info: String::new(),
                error_data: Some(v1::usage_error::ErrorData::BillingIds(record_key.clone())),
            };
            events.push(event("failed", &[(UsageStatus::Aggregated, UsageStatus::FailedToSendForBilling)], vec![billing_error]));
        }
        if sent {
            let from = if failure_reported { UsageStatus::FailedToSendForBilling } else { UsageStatus::Aggregated };
            events.push(event("sent", &[(from, UsageStatus::SentForBilling)], Vec::new()));
        }
    }
    if received {
        events.extend(receipt_events(aggregate, bucket_text, version));
    }
    events
}

/// Produces a record's history from its row (see [`history`]), then clears `events_pending`
/// unless the row changed meanwhile (then whoever changed it produces the longer history).
pub(crate) async fn produce_history(
    pool: &PgPool,
    producer: &DurableProducer,
    topic: &str,
    timeout: Duration,
    record_key: &str,
) -> anyhow::Result<()> {
    type Row = (Vec<u8>, String, bool, Option<String>, i64, String, chrono::DateTime<Utc>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT message, state, failure_reported, last_error, version,
                provider_tenant_id || '/' || consumer_tenant_id || '/' || application || '/' || unit || '/' || to_char(day, 'YYYY-MM-DD'),
                updated_at
         FROM billing_outbox WHERE record_key = $1",
    )
    .bind(record_key)
    .fetch_optional(pool)
    .await?;
    let Some((message, state, failure_reported, last_error, version, bucket_text, updated_at)) = row else { return Ok(()) };
    let aggregate = v1::DailyAggregate::decode(message.as_slice()).context("decoding an outbox message")?;
    let events = history(&aggregate, &bucket_text, version, &state, failure_reported, last_error.as_deref().unwrap_or_default());
    try_join_all(events.iter().map(|event| {
        let payload = event.encode_to_vec();
        async move { kafka::produce_durably(producer, topic, event.job_id.as_bytes(), &payload, timeout).await }
    }))
    .await
    .context("producing billing status events")?;
    sqlx::query("UPDATE billing_outbox SET events_pending = false WHERE record_key = $1 AND updated_at = $2")
        .bind(record_key)
        .bind(updated_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs the forwarder with `pool` until `shutdown`: the outbox writer (consumer) and the sender.
pub async fn run_with_pool(config: Config, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    let receipts_listener = tokio::net::TcpListener::bind(config.receipts_addr)
        .await
        .with_context(|| format!("binding the receipts listener on {}", config.receipts_addr))?;
    run_with_receipts_listener(config, pool, receipts_listener, shutdown).await
}

/// [`run_with_pool`] with the receipts endpoint on a listener bound by the caller (a test that
/// must know the port before the forwarder runs binds port 0 itself: no race for the port).
pub async fn run_with_receipts_listener(
    config: Config,
    pool: PgPool,
    receipts_listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = config.kafka.topics();
    let runner = Runner::new(&config.kafka, v1::Stage::BillingForwarder, "billing-forwarder", &config.group, &[&topics.aggregates])?;
    let (producer, _) = kafka::durable_producer(&config.kafka)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .build()
        .context("building the HTTP client")?;
    let receipts = Arc::new(receipts::ReceiptsState {
        pool: pool.clone(),
        producer: producer.clone(),
        status_topic: topics.status.clone(),
        produce_timeout: config.kafka.produce_timeout(),
        token: config.receipts_token.clone(),
    });
    let receipts_addr = receipts_listener.local_addr()?;
    let receipts_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let limits = uts_common::config::HttpArgs::default();
            if let Err(err) = uts_common::http::serve(receipts_listener, receipts::router(receipts), &limits, shutdown).await {
                tracing::error!(%err, "receipts listener failed");
            }
        }
    });
    let sender = Sender {
        pool: pool.clone(),
        producer: producer.clone(),
        status_topic: topics.status,
        produce_timeout: config.kafka.produce_timeout(),
        http,
        config: config.clone(),
    };
    let ready = admin::kafka_and_database(Some(producer.clone()), pool.clone());
    let (_, admin_task) =
        admin::serve(config.admin.addr, uts_common::telemetry::metrics_handle(), ready, shutdown.clone()).await?;
    if config.receipts_token.is_none() {
        tracing::info!("no --receipts-token: receipts by callback are refused; only synchronous receipts count");
    }
    tracing::info!(group = %config.group, billing_url = %config.billing_url, %receipts_addr, "billing forwarder running");
    let sending = tokio::spawn(sender.run(shutdown.clone()));
    let result = runner.run(OutboxWriter { pool }, shutdown).await;
    let _ = sending.await;
    let _ = receipts_task.await;
    let _ = admin_task.await;
    result
}

/// The binary's entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    uts_common::telemetry::init(&config.telemetry);
    let pool = uts_common::db::connect(&config.database).await?;
    run_with_pool(config, pool, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate() -> v1::DailyAggregate {
        v1::DailyAggregate {
            bucket: Some(v1::BucketKey {
                key: Some(v1::AggregationKey {
                    provider_tenant: "p".into(),
                    consumer_tenant: "c".into(),
                    application: "app".into(),
                    unit: "u".into(),
                }),
                day: "2026-11-22".into(),
            }),
            version: 2,
            value: "12.5".into(),
            billable: true,
            usages_count: 5,
            contributions: vec![
                v1::JobContribution { job_id: "j1".into(), usages_count: 2 },
                v1::JobContribution { job_id: "j2".into(), usages_count: 3 },
            ],
            ..Default::default()
        }
    }

    /// (event id, [(from, to, count, terminal)]) of each event.
    type Shape = Vec<(String, Vec<(i32, i32, u32, bool)>)>;

    fn shape(events: &[v1::StatusEvent]) -> Shape {
        events.iter().map(|e| (e.event_id.clone(), e.transitions.iter().map(|t| (t.from, t.to, t.count, t.terminal)).collect())).collect()
    }

    #[test]
    fn the_history_follows_the_row() {
        use v1::UsageStatus as S;
        let (agg, sent, recv, fail) =
            (S::Aggregated as i32, S::Sentforbilling as i32, S::Receivedforbilling as i32, S::Failedtosendforbilling as i32);
        // Received at the first attempt: sent from AGGREGATED, then received (terminal).
        let events = history(&aggregate(), "b", 2, "received", false, "");
        assert_eq!(
            shape(&events),
            vec![
                ("billing:j1:b:2:sent".to_owned(), vec![(agg, sent, 2, false)]),
                ("billing:j2:b:2:sent".to_owned(), vec![(agg, sent, 3, false)]),
                ("billing:j1:b:2:received".to_owned(), vec![(sent, recv, 2, true)]),
                ("billing:j2:b:2:received".to_owned(), vec![(sent, recv, 3, true)]),
            ]
        );
        // Accepted (202), receipt pending: only "sent"; the receipt adds the same "received".
        assert_eq!(shape(&history(&aggregate(), "b", 2, "sent", false, "")), shape(&events[..2]));
        assert_eq!(shape(&receipt_events(&aggregate(), "b", 2)), shape(&events[2..]));
        // A failure: "failed" with the billing error naming the record.
        let failed = history(&aggregate(), "b", 2, "retrying", true, "billing answered 503");
        assert_eq!(shape(&failed)[0], ("billing:j1:b:2:failed".to_owned(), vec![(agg, fail, 2, false)]));
        assert_eq!(failed[0].errors[0].error_type, v1::ErrorType::Billing as i32);
        assert!(failed[0].errors[0].message.contains("503"));
        assert_eq!(failed.len(), 2);
        // Received after a failure: the same "failed", then "sent" from FAILEDTOSENDFORBILLING.
        let recovered = shape(&history(&aggregate(), "b", 2, "received", true, "billing answered 503"));
        assert_eq!(recovered.len(), 6);
        for event in shape(&failed) {
            assert!(recovered.contains(&event), "{event:?}");
        }
        assert!(recovered.contains(&("billing:j1:b:2:sent".to_owned(), vec![(fail, sent, 2, false)])));
        assert!(recovered.contains(&("billing:j2:b:2:received".to_owned(), vec![(sent, recv, 3, true)])));
        // Nothing to tell before the first attempt.
        assert!(history(&aggregate(), "b", 2, "pending", false, "").is_empty());
    }
}
