//! # billing-forwarder
//!
//! **Consumes** `uts.aggregates` (consumer group `uts-billing-forwarder`). Every version of a
//! *billable* daily bucket becomes a row of the PostgreSQL outbox (`billing_outbox`, one
//! statement per consumer batch); the offset is stored after that insert committed.
//! Non-billable buckets are skipped.
//!
//! **Sends**, per bucket, only the newest version that is due (older pending versions are
//! superseded by it and never sent: a bucket's value is absolute) to the billing endpoint
//! (`--billing-url`) as one JSON record with `Idempotency-Key: <bucket>:<version>`; up to
//! `--max-in-flight` buckets at once, at most one record per bucket in flight, so a bucket's
//! versions reach billing in increasing order only. `--cadence-seconds` batches billing (e.g.
//! hourly); by default a version is due at once. Several forwarder processes share the outbox
//! (claims under an advisory lock, leases instead of locks across HTTP calls): see [`outbox`].
//!
//! **Produces** status events for the jobs that contributed to the versions a record covers
//! (its own and those it superseded), keyed by job id, with deterministic event ids `billing:<job>:<bucket>:<version>:<outcome>`:
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
//! aggregates, or aggregates naming no known aggregation function → dead letter; SIGTERM → the
//! consumer commits and the sender finishes its round.

pub mod config;
pub mod history;
pub mod outbox;
pub mod receipts;
pub mod sender;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uts_common::proto::v1;
use uts_common::runner::Runner;

pub use config::{Config, GROUP};

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
    let topics = config.stage.kafka.topics();
    let runner = Runner::new(&config.stage.kafka, v1::Stage::BillingForwarder, &config.group, &[&topics.aggregates])?;
    let producer = runner.producer.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .pool_max_idle_per_host(usize::from(config.max_in_flight))
        .build()
        .context("building the HTTP client")?;
    let history = history::Producer {
        pool: pool.clone(),
        producer: producer.clone(),
        topic: topics.status.clone(),
        timeout: config.stage.kafka.produce_timeout(),
    };
    let receipts = Arc::new(receipts::ReceiptsState {
        pool: pool.clone(),
        history: history.clone(),
        token: config.receipts_token.clone(),
    });
    let receipts_addr = receipts_listener.local_addr()?;
    let receipts_task = tokio::spawn({
        let shutdown = shutdown.clone();
        let stop = shutdown.clone();
        let serving = async move {
            let limits = uts_common::config::HttpArgs::default();
            uts_common::http::serve(receipts_listener, receipts::router(receipts), &limits, stop)
                .await
                .context("serving receipts")
        };
        uts_common::shutdown::stopping_the_rest("the receipts listener", shutdown, serving)
    });
    let wake = Arc::new(Notify::new());
    let sender = sender::Sender {
        pool: pool.clone(),
        history,
        http,
        config: config.clone(),
        wake: wake.clone(),
        billing_down: AtomicBool::new(false),
    };
    if config.receipts_token.is_none() {
        tracing::info!("no --receipts-token: receipts by callback are refused; only synchronous receipts count");
    }
    tracing::info!(group = %config.group, billing_url = %config.billing_url, %receipts_addr, "billing forwarder running");
    let shutdown_for_sender = shutdown.clone();
    let sending = tokio::spawn(uts_common::shutdown::stopping_the_rest("the sender", shutdown.clone(), async move {
        sender.run(shutdown_for_sender).await;
        Ok(())
    }));
    let writer = outbox::OutboxWriter { pool: pool.clone(), cadence_seconds: config.cadence_seconds, wake };
    // The outbox has no dedup table of its own: its rows are the record of what was sent.
    let result = runner.run_stage(writer, pool, config.stage.admin.addr, None, shutdown).await;
    let _ = sending.await;
    let _ = receipts_task.await;
    result
}

/// The binary's entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = uts_common::runner::start(&config.stage, v1::Stage::BillingForwarder).await?;
    run_with_pool(config, pool, shutdown).await
}
