//! The identifiers that travel between stages and to billing, written once: the aggregation key
//! and bucket texts (Kafka keys, record keys), a record's `Idempotency-Key`, and the status event
//! ids by which the projection recognises a redelivered step. Changing one of these formats
//! changes dedup and billing idempotency for data already in flight: do it with a migration plan.
//! (`common/migrations/20261122000008_billing_receipts.sql` backfilled record keys in this same
//! format once; migrations are history and stay as they were applied.)

use std::fmt::Display;

use crate::proto::v1;

/// `<provider>/<consumer>/<application>/<unit>`: an aggregation key (the Kafka key of a verified
/// batch). Only partitioning and event ids depend on it, so a separator that could appear in a
/// name costs nothing but an uneven spread.
pub fn key_text(provider: &str, consumer: &str, application: &str, unit: &str) -> String {
    format!("{provider}/{consumer}/{application}/{unit}")
}

/// [`key_text`] of the contract's key.
pub fn aggregation_key_text(key: &v1::AggregationKey) -> String {
    key_text(&key.provider_tenant, &key.consumer_tenant, &key.application, &key.unit)
}

/// `<provider>/<consumer>/<application>/<unit>/<day>`: a daily bucket (the Kafka key of an
/// aggregate, the first part of a billing record's key).
pub fn bucket_text(key: &v1::AggregationKey, day: impl Display) -> String {
    format!("{}/{day}", aggregation_key_text(key))
}

/// `<bucket>:<version>`: the `Idempotency-Key` of a bucket version's billing record, which a
/// receipt names it by.
pub fn record_key(bucket_text: &str, version: i64) -> String {
    format!("{bucket_text}:{version}")
}

/// The name a stage's process goes by: its binary, its telemetry service, the `stage` label of
/// its metrics and its Kafka client id.
pub fn process_name(stage: v1::Stage) -> &'static str {
    match stage {
        v1::Stage::Gateway => "ingest-gateway",
        v1::Stage::Verifier => "verifier",
        v1::Stage::Aggregator => "aggregator",
        v1::Stage::BillingForwarder => "billing-forwarder",
        v1::Stage::QueryService => "query-service",
        v1::Stage::Unspecified => "unspecified",
    }
}

/// `verifier:<job id>`: the verifier's one step for a job.
pub fn verifier_event_id(job_id: &str) -> String {
    format!("verifier:{job_id}")
}

/// `aggregator:<job id>:<aggregation key>`: the aggregator's step for a (job, key) batch.
pub fn aggregator_event_id(job_id: &str, key_text: &str) -> String {
    format!("aggregator:{job_id}:{key_text}")
}

/// `billing:<job id>:<bucket>:<version>:<what>`: a billing step (`sent`, `received`, `failed`…)
/// of a job's contribution to a bucket version.
pub fn billing_event_id(job_id: &str, bucket_text: &str, version: impl Display, what: &str) -> String {
    format!("billing:{job_id}:{bucket_text}:{version}:{what}")
}

/// The key an event id is deduplicated by (`job_applied_events.event_digest`, beside the job
/// id): the first 16 bytes of its SHA-256. The migration that introduced it computes the same in
/// SQL for the rows it converted; two events of one job sharing a digest is a 2^-128 chance.
pub fn event_digest(event_id: &str) -> uuid::Uuid {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(event_id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash[..16]);
    uuid::Uuid::from_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formats_are_the_documented_ones() {
        let key = v1::AggregationKey {
            provider_tenant: "acme".into(),
            consumer_tenant: "buyer".into(),
            application: "app".into(),
            unit: "kWh".into(),
        };
        assert_eq!(aggregation_key_text(&key), "acme/buyer/app/kWh");
        let bucket = bucket_text(&key, chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap());
        assert_eq!(bucket, "acme/buyer/app/kWh/2024-05-01");
        assert_eq!(bucket_text(&key, "2024-05-01"), bucket);
        assert_eq!(record_key(&bucket, 3), "acme/buyer/app/kWh/2024-05-01:3");
        assert_eq!(verifier_event_id("j"), "verifier:j");
        assert_eq!(aggregator_event_id("j", "acme/buyer/app/kWh"), "aggregator:j:acme/buyer/app/kWh");
        assert_eq!(billing_event_id("j", &bucket, 3, "sent"), "billing:j:acme/buyer/app/kWh/2024-05-01:3:sent");
        // `printf 'verifier:j' | sha256sum`, its first 32 hex digits.
        assert_eq!(event_digest("verifier:j").simple().to_string(), "5518adc7e96a7bfd4329309040c8da6b");
    }
}
