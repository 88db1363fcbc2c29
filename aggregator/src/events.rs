//! What the aggregator produces besides the buckets: the bucket versions for `uts.aggregates`
//! and the status events for `uts.status`, built the same way on every delivery, so a
//! redelivery repeats the same messages with the same ids.

use super::*;

/// One `uts.aggregates` message per bucket version in `lineage` (all its contributing jobs, by
/// job id), oldest version of each bucket first. The same version always yields the same message.
pub(crate) fn aggregate_messages(
    batch: &[Decoded<Batch>],
    positions: &[usize],
    lineage: impl Iterator<Item = Contribution>,
) -> Vec<(String, Vec<u8>, usize)> {
    let by_job: HashMap<(&str, &KeyId), usize> =
        positions.iter().map(|&p| ((batch[p].item.message.job_id.as_str(), &batch[p].item.key), p)).collect();
    let mut versions: BTreeMap<(BucketId, i64), Vec<Contribution>> = BTreeMap::new();
    for row in lineage {
        versions.entry((row.bucket.clone(), row.version)).or_default().push(row);
    }
    let mut messages = Vec::with_capacity(versions.len());
    for ((bucket, version), mut rows) in versions {
        rows.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        let known = rows.iter().filter_map(|r| by_job.get(&(r.job_id.as_str(), &bucket.key)).copied());
        let Some(deciding) = deciding_job(batch, known) else { continue };
        let item = &batch[deciding].item;
        let day = bucket.day.format("%Y-%m-%d").to_string();
        let key = key_proto(&bucket.key);
        let message = v1::DailyAggregate {
            bucket: Some(v1::BucketKey { key: Some(key.clone()), day: day.clone() }),
            version: version as u64,
            value: rows[0].bucket_value.normalize().to_string(),
            function: item.function.to_proto() as i32,
            billable: item.message.billable,
            usages_count: rows[0].bucket_usages as u64,
            contributions: rows
                .iter()
                .map(|r| v1::JobContribution { job_id: r.job_id.clone(), usages_count: r.usages as u32 })
                .collect(),
            updated_at: Some(to_timestamp(rows[0].applied_at)),
            rule_id: item.message.rule_id.clone(),
        };
        messages.push((wire::bucket_text(&key, &day), message.encode_to_vec(), deciding));
    }
    messages
}

/// One AGGREGATED transition per (job, aggregation key) at `positions`, keyed by job id.
pub(crate) fn status_events(batch: &[Decoded<Batch>], positions: &[usize]) -> Vec<(String, Vec<u8>)> {
    positions
        .iter()
        .map(|&p| {
            let item = &batch[p].item;
            // Usages that are not billed end here.
            status_event(item, UsageStatus::Aggregated, !item.message.billable, Vec::new())
        })
        .collect()
}

/// The status event of a (job, key) batch that could not be aggregated: its usages end
/// VERIFICATIONFAILED (terminal, so the job ends ERRORS) with an error of type other naming the
/// application, unit, usage indexes and the reason; same event id as the AGGREGATED one it
/// replaces, so a (job, key) is reported once whatever is redelivered.
pub(crate) fn rejection_event(batch: &[Decoded<Batch>], rejected: &Rejected) -> (String, Vec<u8>) {
    let item = &batch[rejected.position].item;
    let indexes: Vec<String> = item.usages.iter().map(|u| u.index.to_string()).collect();
    let parameter = |name: &str, value: &str| v1::MessageParameter { name: name.into(), value: value.into() };
    let error = v1::UsageError {
        code: "mdsp.uts.aggregation.outOfRange".into(),
        message: format!(
            "the usages {} of application {}, unit {} could not be aggregated: {}",
            indexes.join(", "),
            item.key.application,
            item.key.unit,
            rejected.reason
        ),
        message_parameters: vec![
            parameter("application", &item.key.application),
            parameter("unit", &item.key.unit),
            parameter("usageIndexes", &indexes.join(",")),
        ],
        logref: event_id(item),
        error_type: v1::ErrorType::Other as i32,
        info: String::new(),
        error_data: Some(v1::usage_error::ErrorData::Other(rejected.reason.clone())),
    };
    status_event(item, UsageStatus::VerificationFailed, true, vec![error])
}

/// `aggregator:<job id>:<aggregation key>`: the one event id of a (job, key) batch.
fn event_id(item: &Batch) -> String {
    wire::aggregator_event_id(&item.message.job_id, &key_text(&item.key))
}

/// The transition of a (job, key) batch's usages from their verification status to `to`,
/// keyed by job id.
fn status_event(item: &Batch, to: UsageStatus, terminal: bool, errors: Vec<v1::UsageError>) -> (String, Vec<u8>) {
    let from = if item.message.verification_status == v1::UsageStatus::Verified as i32 {
        UsageStatus::Verified
    } else {
        UsageStatus::NoVerification
    };
    let event = v1::StatusEvent {
        event_id: event_id(item),
        job_id: item.message.job_id.clone(),
        submitter_tenant: item.message.submitter_tenant.clone(),
        stage: v1::Stage::Aggregator as i32,
        occurred_at: item.message.received_at,
        transitions: vec![v1::StatusTransition {
            application: item.key.application.clone(),
            unit: item.key.unit.clone(),
            from: from.to_proto() as i32,
            to: to.to_proto() as i32,
            count: item.usages.len() as u32,
            terminal,
        }],
        errors,
    };
    (item.message.job_id.clone(), event.encode_to_vec())
}
