//! `utsctl dead-letters`: what the stages set aside in `uts.dead-letter`, and putting a message
//! back on its topic once the cause is fixed.
//!
//! Replaying is safe whatever happened since: every consumer deduplicates by the ids inside the
//! message (job id, event id, bucket version), and a message that is still bad is set aside
//! again with its reason.

use std::time::Duration;

use anyhow::{bail, Context};
use uts_common::config::KafkaArgs;
use uts_common::domain::from_timestamp;
use uts_common::kafka;
use uts_common::proto::{v1, Message};

/// One dead letter as printed: where it came from, who refused it and why.
pub fn describe(letter: &v1::DeadLetter) -> String {
    let stage = v1::Stage::try_from(letter.stage)
        .map_or_else(|_| format!("stage {}", letter.stage), |s| s.as_str_name().to_owned());
    let at = letter
        .failed_at
        .as_ref()
        .and_then(from_timestamp)
        .map_or_else(|| "-".to_owned(), uts_common::domain::format_datetime);
    format!(
        "{at} {stage} {}[{}]@{} key={:?} value={} bytes: {}",
        letter.source_topic,
        letter.partition,
        letter.offset,
        String::from_utf8_lossy(&letter.original_key),
        letter.original_value.len(),
        letter.reason
    )
}

/// Every dead letter of the topic, oldest first per partition.
pub async fn read(args: &KafkaArgs) -> anyhow::Result<Vec<v1::DeadLetter>> {
    let messages = kafka::read_topic_to_end(args, &args.topics().dead_letter, Duration::from_secs(30)).await?;
    messages
        .iter()
        .map(|(_, payload)| v1::DeadLetter::decode(payload.as_slice()).context("decoding a dead letter"))
        .collect()
}

/// Puts the original key and value of the letter from (topic, partition, offset) back on its
/// source topic, durably; returns the letter.
pub async fn replay(args: &KafkaArgs, topic: &str, partition: i32, offset: i64) -> anyhow::Result<v1::DeadLetter> {
    let letters = read(args).await?;
    let Some(letter) =
        letters.into_iter().find(|l| l.source_topic == topic && l.partition == partition && l.offset == offset)
    else {
        bail!("no dead letter from {topic}[{partition}]@{offset}");
    };
    let (producer, _) = kafka::durable_producer(args)?;
    kafka::produce_durably(
        &producer,
        &letter.source_topic,
        &letter.original_key,
        &letter.original_value,
        args.produce_timeout(),
    )
    .await
    .with_context(|| format!("producing to {}", letter.source_topic))?;
    Ok(letter)
}
