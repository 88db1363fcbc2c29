//! Whether the brokers are reachable: what librdkafka's error callback says, and a prober that
//! notices their return.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};

use super::{check_reachable, DurableProducer};

/// Whether the brokers are reachable, as the client last saw it. librdkafka reports "all
/// brokers down" at once through the error callback, but says nothing when they come back, so
/// [`KafkaHealth::probe_while_down`] asks for metadata until they answer again.
#[derive(Debug, Clone, Default)]
pub struct KafkaHealth {
    /// Since when the brokers are unreachable; `None` while they answer.
    down_since: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Wakes the prober when they go down (it purges what waits for them).
    went_down: Arc<tokio::sync::Notify>,
}

impl KafkaHealth {
    pub fn is_down(&self) -> bool {
        self.down_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    pub fn mark_down(&self) {
        let mut since = self.down_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if since.is_none() {
            *since = Some(std::time::Instant::now());
            self.went_down.notify_one();
            tracing::warn!("Kafka brokers unreachable: refusing work that needs them until they answer");
        }
    }

    fn mark_up(&self) {
        if self.down_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().is_some() {
            tracing::info!("Kafka brokers reachable again");
        }
    }

    /// The `Retry-After` of a refusal: 1 s in the first seconds of an outage (the prober notices
    /// the brokers' return within half a second), then a quarter of the outage so far, at most
    /// 10 s: a blip is retried at once, a long outage is not hammered.
    pub fn retry_after_seconds(&self) -> u64 {
        let since = *self.down_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        since.map_or(1, |since| (since.elapsed().as_secs() / 4).clamp(1, 10))
    }

    /// Every `interval`, while the brokers are marked down, asks them for metadata and marks
    /// them up when they answer. When they go down, the messages waiting in the producer's
    /// queues are purged at once: each fails now (the POST waiting for it answers 503) instead
    /// of at the produce timeout, and none of them can reach Kafka later. Runs until `shutdown`.
    pub async fn probe_while_down(
        self,
        producer: DurableProducer,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.went_down.notified() => {
                    let producer = producer.clone();
                    // Queued only: what is in flight gets its answer (or its error) from the broker.
                    let _ = tokio::task::spawn_blocking(move || producer.purge(PurgeConfig::default().queue())).await;
                    continue;
                }
                () = tokio::time::sleep(interval) => {}
            }
            if self.is_down() && check_reachable(&producer, Duration::from_secs(1)).await.is_ok() {
                self.mark_up();
            }
        }
    }
}

/// Client context that feeds [`KafkaHealth`] from librdkafka's error callback.
pub struct HealthContext {
    pub(super) health: KafkaHealth,
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.mark_down();
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}
