//! Read-your-writes: a list (`GET /usagesJobs`) waits, briefly, until the projection has applied
//! every job that was in `uts.usage-jobs` when the request arrived; a GET of one job that is not
//! projected waits for the same before it answers 404 (`jobs_api::visible_job`).
//!
//! The gateway answers 202 only after Kafka acknowledged the job, so "in the topic when the
//! request arrived" covers every job whose 202 the caller holds. The topic's high watermarks are
//! read from the brokers; the projection's progress from `projection_progress`, which it writes in
//! the transaction of each batch (so any replica's progress counts, whichever one projects the
//! partition). The wait is bounded by [`CATCH_UP_WAIT`]: when Kafka cannot be asked or the projection
//! is far behind, the list answers with what is projected (the dashboard still refreshes), and a
//! GET of one job with 503.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use sqlx::PgPool;
use uts_common::kafka::DurableProducer;

/// Longest wait of a read (a list, or a GET of one job) for the projection.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// How often a waiting read looks at the projection again.
pub const CATCH_UP_POLL: Duration = Duration::from_millis(20);
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

    /// The topic's extent now: what the projection must have applied to have every job acknowledged
    /// before this call. `None` when the brokers cannot be asked within [`CATCH_UP_WAIT`].
    pub async fn mark(&self) -> Option<Mark> {
        match tokio::time::timeout(CATCH_UP_WAIT, self.watermarks()).await {
            Ok(Ok(partitions)) => Some(Mark(partitions)),
            Ok(Err(err)) => {
                tracing::debug!(%err, "no watermarks of the jobs topic");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether the projection has applied everything up to `mark`.
    pub async fn reached(&self, pool: &PgPool, mark: &Mark) -> Result<bool, sqlx::Error> {
        let progress: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM projection_progress WHERE topic = $1")
                .bind(&self.topic)
                .fetch_all(pool)
                .await?;
        let progress: HashMap<i32, i64> = progress.into_iter().collect();
        Ok(!mark
            .0
            .iter()
            .any(|(partition, low, high)| high > low && progress.get(partition).copied().unwrap_or(0) < *high))
    }

    /// Waits until the projection caught up with the topic as it is now, or [`CATCH_UP_WAIT`] passed.
    /// Whether it caught up.
    pub async fn catch_up(&self, pool: &PgPool) -> bool {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        let Some(mark) = self.mark().await else { return false };
        loop {
            match self.reached(pool, &mark).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => return false,
            }
            if Instant::now() + CATCH_UP_POLL > deadline {
                metrics::counter!("uts_query_list_wait_expired_total").increment(1);
                return false;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }
}

/// The (low, high) watermark of every partition of the jobs topic at one moment.
pub struct Mark(Vec<(i32, i64, i64)>);
