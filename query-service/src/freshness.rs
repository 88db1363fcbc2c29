//! Read-your-writes for `GET /usagesJobs`: a list waits, briefly, until the projection has applied
//! every job that was in `uts.usage-jobs` when the request arrived.
//!
//! The gateway answers 202 only after Kafka acknowledged the job, so "in the topic when the list
//! request arrived" covers every job whose 202 the caller holds. The topic's high watermarks are
//! read from the brokers; the projection's progress from `projection_progress`, which it writes in
//! the transaction of each batch (so any replica's progress counts, whichever one projects the
//! partition). The wait is bounded by [`LIST_WAIT`]: when Kafka cannot be asked or the projection
//! is far behind, the list answers with what is projected (the dashboard still refreshes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use sqlx::PgPool;
use uts_common::kafka::DurableProducer;

/// Longest wait of a list for the projection.
pub const LIST_WAIT: Duration = Duration::from_secs(2);

const POLL: Duration = Duration::from_millis(20);
const BROKER_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Freshness {
    producer: DurableProducer,
    topic: String,
}

impl Freshness {
    pub fn new(producer: DurableProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// The (low, high) watermark of every partition of the jobs topic, now.
    async fn watermarks(&self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let client = producer.client();
            let metadata = client.fetch_metadata(Some(&topic), BROKER_TIMEOUT)?;
            let partitions: Vec<i32> =
                metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
            partitions
                .into_iter()
                .map(|partition| {
                    let (low, high) = client.fetch_watermarks(&topic, partition, BROKER_TIMEOUT)?;
                    Ok((partition, low, high))
                })
                .collect()
        })
        .await?
    }

    /// Waits until the projection caught up with the topic as it is now, or [`LIST_WAIT`] passed.
    /// Whether it caught up.
    pub async fn catch_up(&self, pool: &PgPool) -> bool {
        let deadline = Instant::now() + LIST_WAIT;
        let marks = match tokio::time::timeout(LIST_WAIT, self.watermarks()).await {
            Ok(Ok(marks)) => marks,
            Ok(Err(err)) => {
                tracing::debug!(%err, "no watermarks of the jobs topic; the list answers without waiting");
                return false;
            }
            Err(_) => return false,
        };
        loop {
            let progress: Result<Vec<(i32, i64)>, _> =
                sqlx::query_as("SELECT partition, next_offset FROM projection_progress WHERE topic = $1")
                    .bind(&self.topic)
                    .fetch_all(pool)
                    .await;
            let Ok(progress) = progress else { return false };
            let progress: HashMap<i32, i64> = progress.into_iter().collect();
            let behind = marks
                .iter()
                .any(|(partition, low, high)| high > low && progress.get(partition).copied().unwrap_or(0) < *high);
            if !behind {
                return true;
            }
            if Instant::now() + POLL > deadline {
                metrics::counter!("uts_query_list_wait_expired_total").increment(1);
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
