//! The one consumer runner every stage uses (CONVENTIONS.md 5):
//! receive a batch → decode each message → handle the batch (a DB transaction and/or
//! productions) → store the offsets → commit.
//!
//! **Delivery: at-least-once.** Offsets are stored only after the handler returned `Ok`, i.e.
//! after its work is durable; librdkafka commits stored offsets in the background
//! (`enable.auto.commit` with `enable.auto.offset.store=false`, the pattern of rust-rdkafka's
//! `at_least_once.rs`), on rebalance and, synchronously, when the runner stops. A crash
//! between the work and the commit redelivers the batch, so every handler must be idempotent
//! (deterministic ids, `ON CONFLICT`).
//!
//! **Ordering caveat:** one runner handles its batches one after the other, and a batch's
//! offsets are stored only when the whole batch succeeded, so an offset never passes a message
//! whose work is not durable. Within a batch the handler sees messages in partition order.
//!
//! **Failures:** a message that cannot be decoded (or that the handler's `decode` refuses) is
//! poison: it goes to the dead-letter topic with the reason, and its offset is stored like any
//! other, so it never blocks its partition. A handler error is retryable: the batch is retried
//! with exponential backoff (100 ms doubling to 30 s), never skipped. Shutdown is checked only
//! between batches and during backoff; a batch abandoned at shutdown is not committed and is
//! redelivered to whoever takes the partition next. An offset that cannot be stored (a
//! rebalance revoked its partition while the batch was in hand) is logged and counted
//! (`uts_stage_errors_total{kind="offset_not_stored"}`), not fatal: the partition's next owner
//! consumes the message again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaArgs;
use crate::kafka::{self, DurableProducer};
use crate::proto::{v1, Message};
use crate::trace;

mod stage;
pub use stage::start;

/// A producer for a handler's own messages, apart from its runner's (dead letters, readiness
/// checks): sharing the runner's measured no faster (docs/architecture.md, "Soak").
pub fn handler_producer(args: &KafkaArgs) -> anyhow::Result<DurableProducer> {
    Ok(kafka::durable_producer(args)?.0)
}

/// Most messages of a batch unless `--consumer-max-batch` or the stage says otherwise.
pub const DEFAULT_MAX_BATCH: u32 = 256;

/// The payload size of a consumed message (0 for a consumer error).
fn payload_len(message: &KafkaResult<BorrowedMessage<'_>>) -> usize {
    message.as_ref().ok().and_then(|m| m.payload()).map_or(0, <[u8]>::len)
}

/// How long the runner waits for more messages to fill a batch once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(5);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A decoded message with its origin.
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub item: T,
    /// The trace context to send on with what this message produces: the context of this
    /// stage's span for it, or the one it arrived with when this process exports no spans.
    pub trace: Option<crate::trace::Carrier>,
    /// Position of the raw message in the runner's batch, for the dead-letter topic should the
    /// handler reject it (the raw messages are kept, not copied).
    raw: usize,
}

/// A message of the batch that the handler could not process and never will (e.g. an
/// aggregate that would overflow): it goes to the dead-letter topic instead of blocking its
/// partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Position of the message in the batch.
    pub position: usize,
    pub reason: String,
}

/// What a stage does with its messages.
pub trait Handler: Send + Sync {
    type Item: Send + Sync;

    /// Decodes and validates one message; `Err(reason)` sends it to the dead-letter topic.
    fn decode(&self, topic: &str, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Self::Item, String>;

    /// Does the work of a batch durably. `Err` is retried with backoff; the batch's offsets are
    /// stored only after `Ok`. The messages it returns as rejected go to the dead-letter topic.
    fn handle(
        &self,
        batch: &[Decoded<Self::Item>],
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<Rejected>>> + Send;
}

/// Decodes a protobuf payload, the usual first step of [`Handler::decode`].
pub fn decode_proto<M: Message + Default>(payload: Option<&[u8]>) -> Result<M, String> {
    let payload = payload.ok_or_else(|| "empty payload".to_owned())?;
    M::decode(payload).map_err(|err| format!("not a valid {}: {err}", std::any::type_name::<M>()))
}

/// How long one batch may be in hand (handled, retried) before `/readyz` calls the consumer
/// stuck, unless `--consumer-stall-seconds` says otherwise.
pub const BATCH_STALL: Duration = Duration::from_secs(120);

/// What `/readyz` knows of a runner: whether its loop still runs and since when the batch in
/// hand (if any) is being handled. Waiting for messages is fine: there may be nothing to do.
#[derive(Debug)]
pub struct Liveness {
    /// Unix milliseconds when the batch in hand was taken; 0 while waiting for messages.
    batch_since_ms: AtomicI64,
    stopped: AtomicBool,
    /// How long a batch may be in hand before the consumer counts as stuck.
    stall: Duration,
}

impl Liveness {
    pub fn new(stall: Duration) -> Self {
        Self { batch_since_ms: AtomicI64::new(0), stopped: AtomicBool::new(false), stall }
    }

    fn batch_taken(&self) {
        self.batch_since_ms.store(Utc::now().timestamp_millis().max(1), Relaxed);
    }

    fn batch_done(&self) {
        self.batch_since_ms.store(0, Relaxed);
    }

    fn stopped(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// `Err(reason)` when the loop has stopped or one batch has been in hand longer than its
    /// stall limit.
    pub fn check(&self) -> Result<(), String> {
        let stall = self.stall;
        if self.stopped.load(Relaxed) {
            return Err("the consumer loop has stopped".into());
        }
        let since = self.batch_since_ms.load(Relaxed);
        let held_ms = Utc::now().timestamp_millis() - since;
        if since != 0 && held_ms > stall.as_millis() as i64 {
            return Err(format!("one consumer batch has been in hand for {} s", held_ms / 1000));
        }
        Ok(())
    }
}

pub struct Runner {
    pub stage: v1::Stage,
    pub consumer: StreamConsumer<kafka::StageContext>,
    pub producer: DurableProducer,
    pub dead_letter_topic: String,
    pub produce_timeout: Duration,
    /// Metric label, e.g. `verifier`.
    pub name: &'static str,
    /// Most messages handed to the handler at once (`--consumer-max-batch`).
    pub max_batch: usize,
    /// Most payload bytes handed to the handler at once (`--consumer-max-batch-kbytes`).
    pub max_batch_bytes: usize,
    /// For `/readyz` (`admin::with_consumer`).
    pub liveness: std::sync::Arc<Liveness>,
}

impl Runner {
    /// A runner for `stage` in consumer group `group`, subscribed to `topics`.
    pub fn new(args: &KafkaArgs, stage: v1::Stage, group: &str, topics: &[&str]) -> anyhow::Result<Self> {
        let name = crate::domain::wire::process_name(stage);
        let consumer = kafka::at_least_once_consumer(args, group, name)?;
        consumer.subscribe(topics).with_context(|| format!("subscribing to {topics:?}"))?;
        let (producer, _) = kafka::durable_producer(args)?;
        // Every error kind exists from the start at 0: a dashboard or alert sees "no errors",
        // not "no data", and rate() has a first sample.
        for kind in ["poison", "retryable", "offset_not_stored"] {
            metrics::counter!("uts_stage_errors_total", "stage" => name, "kind" => kind).increment(0);
        }
        Ok(Self {
            stage,
            consumer,
            producer,
            dead_letter_topic: args.topics().dead_letter,
            produce_timeout: args.produce_timeout(),
            name,
            max_batch: args.max_batch(DEFAULT_MAX_BATCH),
            max_batch_bytes: args.consumer_max_batch_kbytes as usize * 1024,
            liveness: std::sync::Arc::new(Liveness::new(Duration::from_secs(args.consumer_stall_seconds))),
        })
    }

    /// A stage whose best batch differs from [`DEFAULT_MAX_BATCH`] sets it here; an explicit
    /// `--consumer-max-batch` still wins.
    pub fn with_default_max_batch(mut self, args: &KafkaArgs, default: u32) -> Self {
        self.max_batch = args.max_batch(default);
        self
    }

    /// Runs until `shutdown`: batches are finished, their offsets committed synchronously.
    pub async fn run<H: Handler>(self, handler: H, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumed = self.consume(&handler, &shutdown).await;
        self.liveness.stopped();
        let finished = self.finish();
        consumed.and(finished)
    }

    /// Handles batches until shutdown; returns early, without storing the batch's offsets,
    /// when shutdown interrupts a retry.
    async fn consume<H: Handler>(&self, handler: &H, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut stream = self.consumer.stream();
        // A fatal error (e.g. this member fenced by another with the same group.instance.id)
        // leaves the consumer alive and useless: it delivers nothing, for ever. Checked every
        // second, it ends the loop with an error, so the process exits non-zero.
        let mut fatal_check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = fatal_check.tick() => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        anyhow::bail!("the Kafka consumer hit a fatal error ({code:?}): {reason}");
                    }
                    continue;
                }
                next = stream.next() => next,
            };
            let Some(first) = first else { break };
            self.liveness.batch_taken();
            let mut bytes = payload_len(&first);
            let mut messages = vec![first];
            // Fill the batch with what is already there, waiting at most BATCH_LINGER.
            let linger = tokio::time::sleep(BATCH_LINGER);
            tokio::pin!(linger);
            while messages.len() < self.max_batch && bytes < self.max_batch_bytes {
                tokio::select! {
                    () = &mut linger => break,
                    next = stream.next() => match next {
                        Some(message) => {
                            bytes += payload_len(&message);
                            messages.push(message);
                        }
                        None => break,
                    },
                }
            }
            // How long the batch's oldest message waited for this stage (since it was produced):
            // the stage's share of the end-to-end latency, beside the batch's own duration.
            let oldest = messages.iter().filter_map(|m| m.as_ref().ok()?.timestamp().to_millis()).min();
            if let Some(produced_ms) = oldest {
                let age_ms = (Utc::now().timestamp_millis() - produced_ms).max(0);
                metrics::histogram!("uts_stage_message_age_seconds", "stage" => self.name)
                    .record(age_ms as f64 / 1000.0);
            }
            let mut batch = Vec::with_capacity(messages.len());
            let mut spans = Vec::new();
            let mut origins = Vec::with_capacity(messages.len());
            for (raw, message) in messages.iter().enumerate() {
                let message = match message {
                    Ok(message) => message,
                    Err(err) => {
                        // Broker or consumer errors: librdkafka recovers by itself; nothing
                        // was consumed, so nothing is lost.
                        tracing::warn!(%err, stage = self.name, "Kafka consumer error");
                        continue;
                    }
                };
                let origin = origin_of(message);
                let mut trace = kafka::trace_of(message);
                let span = trace::consumer_span(&origin, message.key(), trace.as_ref());
                if let Some(span) = &span {
                    trace = span.carrier();
                }
                match handler.decode(message.topic(), message.key(), message.payload()) {
                    Ok(item) => {
                        batch.push(Decoded {
                            origin: origin.clone(),
                            key: message.key().map(<[u8]>::to_vec),
                            item,
                            trace,
                            raw,
                        });
                        spans.push(span);
                    }
                    Err(reason) => {
                        if let Some(span) = &span {
                            span.fail(&reason);
                        }
                        let (key, payload) = (message.key(), message.payload().unwrap_or_default());
                        if !self.dead_letter(&origin, key, payload, trace.as_ref(), &reason, shutdown).await {
                            // Shutting down before the dead letter was written: do not commit.
                            return Ok(());
                        }
                    }
                }
                origins.push(origin);
            }
            if !batch.is_empty() {
                let Some(rejected) = self.handle_with_retries(handler, &batch, shutdown).await else {
                    return Ok(());
                };
                for Rejected { position, reason } in rejected {
                    let Some(decoded) = batch.get(position) else { continue };
                    let Some(Ok(message)) = messages.get(decoded.raw) else { continue };
                    if let Some(Some(span)) = spans.get(position) {
                        span.fail(&reason);
                    }
                    let (key, payload) = (message.key(), message.payload().unwrap_or_default());
                    let trace = decoded.trace.as_ref();
                    if !self.dead_letter(&decoded.origin, key, payload, trace, &reason, shutdown).await {
                        return Ok(());
                    }
                }
            }
            for origin in &origins {
                // rd_kafka_offset_store stores offset + 1 itself: the next offset to consume.
                if let Err(err) = self.consumer.store_offset(&origin.topic, origin.partition, origin.offset) {
                    // A rebalance revoked the partition while its batch was in hand: its new
                    // owner consumes these messages again (every handler is idempotent). Not a
                    // reason to stop; stopping here had left the process alive and idle.
                    metrics::counter!("uts_stage_errors_total", "stage" => self.name, "kind" => "offset_not_stored")
                        .increment(1);
                    tracing::warn!(
                        %err,
                        stage = self.name,
                        topic = %origin.topic,
                        partition = origin.partition,
                        offset = origin.offset,
                        "offset not stored (partition revoked?); its next owner redelivers the message"
                    );
                }
            }
            // The messages' spans end with their batch.
            drop(spans);
            metrics::counter!("uts_stage_messages_total", "stage" => self.name).increment(origins.len() as u64);
            self.liveness.batch_done();
        }
        Ok(())
    }

    /// Retries `handle` with backoff until it succeeds (the rejected messages) or shutdown
    /// (`None`).
    async fn handle_with_retries<H: Handler>(
        &self,
        handler: &H,
        batch: &[Decoded<H::Item>],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Rejected>> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            match handler.handle(batch).await {
                Ok(rejected) => {
                    metrics::histogram!("uts_stage_batch_duration_seconds", "stage" => self.name)
                        .record(started.elapsed().as_secs_f64());
                    return Some(rejected);
                }
                Err(err) => {
                    metrics::counter!("uts_stage_errors_total", "stage" => self.name, "kind" => "retryable")
                        .increment(1);
                    tracing::warn!(
                        error = format!("{err:#}"),
                        stage = self.name,
                        retry_in_ms = backoff.as_millis() as u64,
                        "batch failed; retrying"
                    );
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Writes a poison message to the dead-letter topic, retrying until it is durable (`true`)
    /// or shutdown (`false`).
    async fn dead_letter(
        &self,
        origin: &Origin,
        key: Option<&[u8]>,
        payload: &[u8],
        trace: Option<&trace::Carrier>,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::warn!(
            topic = origin.topic,
            partition = origin.partition,
            offset = origin.offset,
            reason,
            stage = self.name,
            "poison message sent to the dead-letter topic"
        );
        metrics::counter!("uts_stage_errors_total", "stage" => self.name, "kind" => "poison").increment(1);
        let letter = v1::DeadLetter {
            source_topic: origin.topic.clone(),
            partition: origin.partition,
            offset: origin.offset,
            stage: self.stage as i32,
            reason: reason.to_owned(),
            original_key: key.map(<[u8]>::to_vec).unwrap_or_default(),
            original_value: payload.to_vec(),
            failed_at: Some(crate::domain::to_timestamp(Utc::now())),
        };
        let payload = letter.encode_to_vec();
        let key = key.unwrap_or_default();
        let mut backoff = MIN_BACKOFF;
        loop {
            let letter = kafka::Outgoing::new(&self.dead_letter_topic, key, &payload, trace);
            match kafka::produce_one(&self.producer, letter, self.produce_timeout).await {
                Ok(()) => return true,
                Err(err) => tracing::warn!(%err, "writing a dead letter failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Commits the stored offsets synchronously; the last step before exit.
    fn finish(&self) -> anyhow::Result<()> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(err) => return Err(err).context("committing offsets at shutdown"),
        }
        tracing::info!(stage = self.name, "consumer stopped; offsets committed");
        Ok(())
    }
}

fn origin_of(message: &BorrowedMessage<'_>) -> Origin {
    Origin { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() }
}

#[cfg(test)]
mod tests;
