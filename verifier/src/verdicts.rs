//! From verdicts to messages: the verified batches and the status event of a job, built from the
//! job and what was decided for each of its usages ([`v1::VerifierVerdicts`]). A fresh decision
//! and a stored one both go through [`assemble`], so a redelivered job yields exactly the
//! messages of its first delivery, whatever the rules say by then.

use std::collections::BTreeMap;

use uts_common::domain::UsageStatus;
use uts_common::proto::v1;

/// The messages one job yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub batches: Vec<v1::VerifiedBatch>,
    pub status: v1::StatusEvent,
}

impl Decision {
    /// A decision stored in the form written before verdicts (the whole messages).
    pub fn from_proto(decision: v1::VerifierDecision) -> Self {
        Self { batches: decision.batches, status: decision.status.unwrap_or_default() }
    }
}

/// The status event id of the verifier's step for a job: deterministic, so a redelivery is
/// recognised by the projection.
pub use uts_common::domain::wire::verifier_event_id as event_id;

/// Where a usage sits in its job: (user index, resource index).
type Place = (usize, usize);

/// The messages of `job` under `verdicts`. `Err` when the verdicts do not fit the job (another
/// number of usages, an outcome that does not exist): they were stored for another job.
pub fn assemble(job: &v1::UsageJob, verdicts: &v1::VerifierVerdicts) -> Result<Decision, String> {
    let usages: usize = job.users.iter().flat_map(|u| &u.resources).map(|r| r.usages.len()).sum();
    if usages != verdicts.assignment.len() {
        return Err(format!("{} verdicts stored for a job of {usages} usages", verdicts.assignment.len()));
    }
    let passes = verdicts.passes.len();
    let outcomes = passes + verdicts.failures.len();
    // (provider, consumer, application, unit) → batch under construction.
    let mut batches: BTreeMap<(&str, &str, &str, &str), v1::VerifiedBatch> = BTreeMap::new();
    // (application, unit, status) → count.
    let mut transitions: BTreeMap<(&str, &str, i32), u32> = BTreeMap::new();
    // failure → its failing usages in the users shape, per place.
    let mut failing: Vec<BTreeMap<Place, (v1::UserUsages, v1::ResourceUsages)>> =
        vec![BTreeMap::new(); verdicts.failures.len()];

    let mut assignment = verdicts.assignment.iter();
    for (u, user) in job.users.iter().enumerate() {
        for (r, resource) in user.resources.iter().enumerate() {
            for usage in &resource.usages {
                let outcome = *assignment.next().expect("counted above") as usize;
                if outcome >= outcomes {
                    return Err(format!("verdict {outcome} of {outcomes} outcomes"));
                }
                let status = if let Some(pass) = verdicts.passes.get(outcome) {
                    let key = (
                        pass.provider_tenant.as_str(),
                        user.tenant_id.as_str(),
                        resource.application.as_str(),
                        usage.unit.as_str(),
                    );
                    let batch = batches.entry(key).or_insert_with(|| new_batch(job, pass, key));
                    batch.usages.push(v1::VerifiedUsage {
                        index: usage.index,
                        value: usage.value.clone(),
                        datetime: usage.datetime,
                    });
                    pass.verification_status
                } else {
                    let entry = failing[outcome - passes].entry((u, r)).or_insert_with(|| {
                        (
                            v1::UserUsages { resources: vec![], ..user.clone() },
                            v1::ResourceUsages { usages: vec![], ..resource.clone() },
                        )
                    });
                    entry.1.usages.push(usage.clone());
                    UsageStatus::VerificationFailed.to_proto() as i32
                };
                *transitions.entry((&resource.application, &usage.unit, status)).or_default() += 1;
            }
        }
    }

    let errors = verdicts
        .failures
        .iter()
        .zip(failing)
        .map(|(failure, by_place)| {
            let mut users: Vec<v1::UserUsages> = Vec::new();
            let mut last_user = None;
            for ((u, _), (user, resource)) in by_place {
                if last_user != Some(u) {
                    users.push(user);
                    last_user = Some(u);
                }
                users.last_mut().expect("pushed above").resources.push(resource);
            }
            v1::UsageError {
                error_data: Some(v1::usage_error::ErrorData::Validation(v1::ValidationErrorData { users })),
                ..failure.clone()
            }
        })
        .collect();
    let failed = UsageStatus::VerificationFailed.to_proto() as i32;
    let status = v1::StatusEvent {
        event_id: event_id(&job.job_id),
        job_id: job.job_id.clone(),
        submitter_tenant: job.submitter_tenant.clone(),
        stage: v1::Stage::Verifier as i32,
        occurred_at: job.received_at,
        transitions: transitions
            .into_iter()
            .map(|((application, unit, to), count)| v1::StatusTransition {
                application: application.to_owned(),
                unit: unit.to_owned(),
                from: UsageStatus::Accepted.to_proto() as i32,
                to,
                count,
                terminal: to == failed,
            })
            .collect(),
        errors,
    };
    Ok(Decision { batches: batches.into_values().collect(), status })
}

fn new_batch(
    job: &v1::UsageJob,
    pass: &v1::VerdictPass,
    (provider, consumer, application, unit): (&str, &str, &str, &str),
) -> v1::VerifiedBatch {
    v1::VerifiedBatch {
        job_id: job.job_id.clone(),
        submitter_tenant: job.submitter_tenant.clone(),
        key: Some(v1::AggregationKey {
            provider_tenant: provider.to_owned(),
            consumer_tenant: consumer.to_owned(),
            application: application.to_owned(),
            unit: unit.to_owned(),
        }),
        rule_id: pass.rule_id.clone(),
        rule_version: pass.rule_version,
        function: pass.function,
        billable: pass.billable,
        verification_status: pass.verification_status,
        usages: Vec::new(),
        received_at: job.received_at,
    }
}
