//! The sender: claimed outbox records to the billing system, concurrently across buckets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uts_common::domain::AggregationFunction;
use uts_common::proto::{v1, Message};
use uts_common::trace::{self, KeyValue, SpanKind};

use crate::config::Config;
use crate::history;
use crate::outbox::{self, Claimed, Outcome};

/// Most pending histories produced per round.
const MAX_PENDING_HISTORIES: i64 = 200;

/// The JSON record sent to billing: the bucket's absolute value at `version`. The same
/// (bucket, version) always yields the same body, so a re-send is recognised as a duplicate,
/// never as a conflict. Its size does not grow with the jobs behind it: which jobs (and how
/// many usages each) made the value is the lineage (`aggregate_contributions`, by bucket and
/// version up to `coveredVersions.to`); `coveredVersions` says which versions of the bucket
/// this record stands for (those before `from` went in earlier records).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BillingRecord<'a> {
    bucket: BucketJson<'a>,
    version: u64,
    value: &'a str,
    usages_count: u64,
    function: &'static str,
    rule_id: &'a str,
    covered_versions: CoveredVersions,
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
struct CoveredVersions {
    from: u64,
    to: u64,
}

/// What one send attempt came to.
enum Answer {
    /// 2xx: the answer is the receipt.
    Received,
    /// 202 Accepted: the receipt comes later, to the receipts endpoint.
    Accepted,
    Retry(String),
    Rejected(String),
}

pub struct Sender {
    pub pool: PgPool,
    pub history: history::Producer,
    pub http: reqwest::Client,
    pub config: Config,
    /// Rung by the outbox writer of this process when it wrote rows.
    pub wake: Arc<Notify>,
    /// The last round failed to reach billing: probe with one record per round until it answers.
    pub billing_down: AtomicBool,
}

impl Sender {
    /// Sends the records that are due; returns how many were claimed and the round's limit.
    async fn round(&self) -> anyhow::Result<(usize, usize)> {
        let limit = if self.billing_down.load(Ordering::Relaxed) { 1 } else { usize::from(self.config.claim_batch) };
        // Measured from before the claim, so the local deadline is never later than the lease.
        let claimed_at = Instant::now();
        let claimed = outbox::claim(&self.pool, limit as i64, self.config.lease()).await?;
        if claimed.is_empty() {
            return Ok((0, limit));
        }
        // Every claimed record is of another bucket: --max-in-flight at a time. A send that
        // could not finish within the lease is not started (its row is released). After a
        // failure no new send starts; after a round that failed, the next rounds send one
        // record each (a probe) until billing answers, so a dead billing system is not hammered.
        let latest_start = claimed_at + self.config.lease()
            - Duration::from_millis(self.config.request_timeout_ms)
            - Duration::from_secs(2);
        let failed = AtomicBool::new(false);
        let slots = tokio::sync::Semaphore::new(usize::from(self.config.max_in_flight));
        let mut attempts = Vec::with_capacity(claimed.len());
        for (i, row) in claimed.iter().enumerate() {
            attempts.push(self.attempt(i, row, &failed, &slots, latest_start));
        }
        let answers: Vec<Option<(usize, Answer)>> = futures::future::join_all(attempts).await;
        self.billing_down.store(failed.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut outcomes = Vec::with_capacity(answers.len());
        for (i, answer) in answers.into_iter().flatten() {
            let row = &claimed[i];
            let (state, delay, error) = match answer {
                Answer::Received => ("received", Duration::ZERO, None),
                Answer::Accepted => ("sent", Duration::ZERO, None),
                Answer::Retry(error) => ("retrying", self.backoff(row.attempts + 1), Some(error)),
                Answer::Rejected(error) => ("rejected", Duration::ZERO, Some(error)),
            };
            metrics::counter!("uts_billing_forwarder_sends_total", "outcome" => state).increment(1);
            let failed = error.is_some();
            // New events only when the history grows: a first failure, or billing took it.
            let news = !failed || !row.failure_reported;
            outcomes.push(Outcome { record_key: row.record_key.clone(), state, error, delay, failed, news });
        }
        let keys: Vec<String> = claimed.iter().map(|r| r.record_key.clone()).collect();
        outbox::record_outcomes(&self.pool, &outcomes, &keys).await?;
        let news: Vec<String> = outcomes.into_iter().filter(|o| o.news).map(|o| o.record_key).collect();
        self.history.produce(&news).await?;
        Ok((claimed.len(), limit))
    }

    /// Sends `row` unless a send of this round already failed or its lease runs out too soon.
    async fn attempt(
        &self,
        i: usize,
        row: &Claimed,
        failed: &AtomicBool,
        slots: &tokio::sync::Semaphore,
        latest_start: Instant,
    ) -> Option<(usize, Answer)> {
        let _slot = slots.acquire().await.ok()?;
        if failed.load(Ordering::Relaxed) || Instant::now() > latest_start {
            return None;
        }
        let answer = self.send(row).await;
        if matches!(answer, Answer::Retry(_)) {
            failed.store(true, Ordering::Relaxed);
        }
        Some((i, answer))
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
        Duration::from_millis(self.config.retry_base_ms.saturating_mul(1 << exponent).min(self.config.retry_max_ms))
    }

    async fn send(&self, row: &Claimed) -> Answer {
        let aggregate = match v1::DailyAggregate::decode(row.message.as_slice()) {
            Ok(aggregate) => aggregate,
            Err(err) => return Answer::Rejected(format!("the outbox message does not decode: {err}")),
        };
        let bucket = aggregate.bucket.clone().unwrap_or_default();
        let key = bucket.key.unwrap_or_default();
        // Checked when the row was written; a row from before that check is refused, not billed as SUM.
        let Some(function) =
            v1::AggregationFunction::try_from(aggregate.function).ok().and_then(AggregationFunction::from_proto)
        else {
            return Answer::Rejected(format!("the record has the unknown aggregation function {}", aggregate.function));
        };
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
            covered_versions: CoveredVersions { from: row.covers_from as u64, to: row.version as u64 },
        };
        let mut request =
            self.http.post(&self.config.billing_url).header("Idempotency-Key", &row.record_key).json(&record);
        if let Some(token) = &self.config.billing_token {
            request = request.bearer_auth(token);
        }
        // The send joins the trace of the job whose batch made the version; the billing system
        // gets the context in its headers (the stored one when this process exports no spans).
        let span = trace::Span::start(
            "send billing record".into(),
            SpanKind::Client,
            row.trace.as_ref(),
            vec![KeyValue::new("uts.billing.record_key", row.record_key.clone())],
        );
        let carried = span.as_ref().map_or_else(|| row.trace.clone(), trace::Span::carrier);
        for (name, value) in carried.iter().flat_map(trace::Carrier::headers) {
            request = request.header(name, value);
        }
        let answer = self.answer(request).await;
        if let (Some(span), Answer::Retry(reason) | Answer::Rejected(reason)) = (&span, &answer) {
            span.fail(reason);
        }
        answer
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Answer {
        match request.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => Answer::Accepted,
            Ok(response) if response.status().is_success() => Answer::Received,
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let error = format!("billing answered {status}: {}", body.chars().take(300).collect::<String>());
                if status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                {
                    Answer::Retry(error)
                } else {
                    Answer::Rejected(error)
                }
            }
            Err(err) => Answer::Retry(format!("billing unreachable: {err}")),
        }
    }

    /// Rounds until `shutdown`: back to back while they come back full, else on the wake-up of
    /// the outbox writer or after `--send-interval-ms`.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.config.send_interval_ms);
        loop {
            let pending =
                outbox::pending_histories(&self.pool, MAX_PENDING_HISTORIES).await.map_err(anyhow::Error::from);
            if let Err(err) = async { self.history.produce(&pending?).await }.await.context("pending billing events") {
                tracing::warn!(error = format!("{err:#}"), "producing pending billing events failed; retrying");
            }
            match self.round().await {
                // A full round while billing answers: more may be due right away.
                Ok((claimed, limit)) if claimed == limit && !self.billing_down.load(Ordering::Relaxed) => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = format!("{err:#}"), "billing round failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
