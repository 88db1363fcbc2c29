//! The verification of one job: a pure function of the job and a catalog snapshot, so the same
//! inputs always give the same messages.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use uts_common::domain::{from_timestamp, AggregationFunction, UsageStatus, UserType};
use uts_common::proto::v1;

use crate::catalog::{Catalog, Rule};
use crate::verdicts::assemble;

/// Why a usage failed verification. Each kind becomes one validation error of the job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Violation {
    TenantNotAllowed { tenant: String, submitter: String, application: String },
    NoRule { application: String, unit: String },
    UserTypeNotAllowed { user_type: &'static str, allowed: String },
    BelowMinimum { minimum: String },
    AboveMaximum { maximum: String },
    NotAnInteger,
    TooOld { max_age_days: i32 },
    InTheFuture { max_future_minutes: i32 },
    Malformed { detail: String },
}

impl Violation {
    fn code(&self) -> &'static str {
        match self {
            Violation::TenantNotAllowed { .. } => "mdsp.uts.verification.tenantNotAllowed",
            Violation::NoRule { .. } => "mdsp.uts.verification.noRule",
            Violation::UserTypeNotAllowed { .. } => "mdsp.uts.verification.userTypeNotAllowed",
            Violation::BelowMinimum { .. } => "mdsp.uts.verification.valueBelowMinimum",
            Violation::AboveMaximum { .. } => "mdsp.uts.verification.valueAboveMaximum",
            Violation::NotAnInteger => "mdsp.uts.verification.valueNotInteger",
            Violation::TooOld { .. } => "mdsp.uts.verification.usageTooOld",
            Violation::InTheFuture { .. } => "mdsp.uts.verification.usageInFuture",
            Violation::Malformed { .. } => "mdsp.uts.verification.malformedUsage",
        }
    }

    fn message_and_parameters(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            Violation::TenantNotAllowed { tenant, submitter, application } => (
                format!(
                    "tenant {submitter} may not report usages of tenant {tenant} for application {application}: \
                     it is neither the submitter nor an IoT tenant of it with the application provisioned"
                ),
                vec![("tenantId", tenant.clone()), ("application", application.clone())],
            ),
            Violation::NoRule { application, unit } => (
                format!("no active rule exists for application {application} and unit {unit}, and a rule is required"),
                vec![("application", application.clone()), ("unit", unit.clone())],
            ),
            Violation::UserTypeNotAllowed { user_type, allowed } => (
                format!("userType {user_type} is not allowed by the rule (allowed: {allowed})"),
                vec![("userType", (*user_type).to_owned()), ("allowed", allowed.clone())],
            ),
            Violation::BelowMinimum { minimum } => {
                (format!("value is below the rule's minimum {minimum}"), vec![("minimum", minimum.clone())])
            }
            Violation::AboveMaximum { maximum } => {
                (format!("value is above the rule's maximum {maximum}"), vec![("maximum", maximum.clone())])
            }
            Violation::NotAnInteger => ("value must be an integer by the rule".to_owned(), vec![]),
            Violation::TooOld { max_age_days } => (
                format!("datetime is more than {max_age_days} days before the job was received"),
                vec![("maxAgeDays", max_age_days.to_string())],
            ),
            Violation::InTheFuture { max_future_minutes } => (
                format!("datetime is more than {max_future_minutes} minutes after the job was received"),
                vec![("maxFutureMinutes", max_future_minutes.to_string())],
            ),
            Violation::Malformed { detail } => (format!("the usage is malformed: {detail}"), vec![]),
        }
    }
}

pub use crate::verdicts::{event_id, Decision};

/// The Kafka key of a verified batch: its aggregation key.
pub use uts_common::domain::wire::aggregation_key_text;

/// Verifies every usage of `job` against `catalog`. `require_rule` makes usages without a rule
/// fail instead of passing as NOVERIFICATION.
pub fn decide(job: &v1::UsageJob, catalog: &Catalog, require_rule: bool) -> Decision {
    assemble(job, &judge(job, catalog, require_rule)).expect("verdicts made from a job fit it")
}

/// What `catalog` says of each usage of `job`: the stored form of a decision, turned into
/// messages by [`assemble`].
pub fn judge(job: &v1::UsageJob, catalog: &Catalog, require_rule: bool) -> v1::VerifierVerdicts {
    // Time windows are relative to when the gateway received the job, never to the clock (a
    // redelivery days later must decide the same). The runner refuses a job without it; should
    // one get here, a rule with a time window fails its usages rather than guess.
    let received_at = job.received_at.as_ref().and_then(from_timestamp);
    let mut passes: Vec<v1::VerdictPass> = Vec::new();
    // violation → its provisional number (order of first appearance).
    let mut violations: BTreeMap<Violation, u32> = BTreeMap::new();
    // Per usage: Ok(pass index) or Err(provisional violation number).
    let mut provisional: Vec<Result<u32, u32>> = Vec::with_capacity(job.usages_count as usize);

    for user in &job.users {
        // Unspecified: passes no rule that restricts user types (it used to count as `user`).
        let user_type = v1::UserType::try_from(user.user_type).ok().and_then(UserType::from_proto);
        for resource in &user.resources {
            for usage in &resource.usages {
                let rule = catalog.rule(&resource.application, &usage.unit);
                match check(job, user, user_type, resource, usage, rule, catalog, received_at, require_rule) {
                    Ok(()) => {
                        let pass = pass_of(job, rule);
                        let at = match passes.iter().position(|p| *p == pass) {
                            Some(at) => at,
                            None => {
                                passes.push(pass);
                                passes.len() - 1
                            }
                        };
                        provisional.push(Ok(at as u32));
                    }
                    Err(violation) => {
                        let next = violations.len() as u32;
                        provisional.push(Err(*violations.entry(violation).or_insert(next)));
                    }
                }
            }
        }
    }

    // Failures are numbered in the violations' order, the order of the job's errors.
    let mut rank = vec![0u32; violations.len()];
    for (position, number) in violations.values().enumerate() {
        rank[*number as usize] = position as u32;
    }
    let offset = passes.len() as u32;
    let assignment = provisional.into_iter().map(|v| v.unwrap_or_else(|n| offset + rank[n as usize])).collect();
    let failures = violations.into_keys().map(|violation| error_of(job, &violation)).collect();
    v1::VerifierVerdicts { passes, failures, assignment }
}

/// The outcome of a usage that passed `rule` (or no rule).
fn pass_of(job: &v1::UsageJob, rule: Option<&Rule>) -> v1::VerdictPass {
    let status = if rule.is_some() { UsageStatus::Verified } else { UsageStatus::NoVerification };
    v1::VerdictPass {
        provider_tenant: rule.map_or(job.submitter_tenant.as_str(), |r| r.owner_tenant_id.as_str()).to_owned(),
        rule_id: rule.map(|r| r.rule_id.clone()).unwrap_or_default(),
        rule_version: rule.map_or(0, |r| r.version as u32),
        function: rule.map_or(AggregationFunction::Sum, |r| r.function).to_proto() as i32,
        billable: rule.is_some_and(|r| r.billing_enabled),
        verification_status: status.to_proto() as i32,
    }
}

/// The validation error of `violation`, without its failing usages.
fn error_of(job: &v1::UsageJob, violation: &Violation) -> v1::UsageError {
    let (message, parameters) = violation.message_and_parameters();
    v1::UsageError {
        code: violation.code().to_owned(),
        message,
        message_parameters: parameters
            .into_iter()
            .map(|(name, value)| v1::MessageParameter { name: name.to_owned(), value })
            .collect(),
        // Deterministic, like every id in a decision.
        logref: format!("{}:{}", job.job_id, violation.code()),
        error_type: v1::ErrorType::Validation as i32,
        info: String::new(),
        error_data: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    job: &v1::UsageJob,
    user: &v1::UserUsages,
    user_type: Option<UserType>,
    resource: &v1::ResourceUsages,
    usage: &v1::Usage,
    rule: Option<&Rule>,
    catalog: &Catalog,
    received_at: Option<DateTime<Utc>>,
    require_rule: bool,
) -> Result<(), Violation> {
    if !catalog.may_report_for(&job.submitter_tenant, &user.tenant_id, &resource.application) {
        return Err(Violation::TenantNotAllowed {
            tenant: user.tenant_id.clone(),
            submitter: job.submitter_tenant.clone(),
            application: resource.application.clone(),
        });
    }
    let Some(rule) = rule else {
        return if require_rule {
            Err(Violation::NoRule { application: resource.application.clone(), unit: usage.unit.clone() })
        } else {
            Ok(())
        };
    };
    if let Some(allowed) = &rule.allowed_user_types {
        if !user_type.is_some_and(|t| allowed.contains(&t)) {
            let allowed = allowed.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ");
            return Err(Violation::UserTypeNotAllowed {
                user_type: user_type.map_or("unspecified", UserType::as_str),
                allowed,
            });
        }
    }
    // The gateway only produces exact decimal strings; anything else is a contract breach.
    let value = Decimal::from_str(&usage.value)
        .map_err(|_| Violation::Malformed { detail: format!("value {:?} is not a decimal", usage.value) })?;
    if let Some(minimum) = rule.min_value {
        if value < minimum {
            return Err(Violation::BelowMinimum { minimum: minimum.normalize().to_string() });
        }
    }
    if let Some(maximum) = rule.max_value {
        if value > maximum {
            return Err(Violation::AboveMaximum { maximum: maximum.normalize().to_string() });
        }
    }
    if rule.integers_only && !value.fract().is_zero() {
        return Err(Violation::NotAnInteger);
    }
    let datetime = usage
        .datetime
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| Violation::Malformed { detail: "datetime is missing".to_owned() })?;
    let received =
        || received_at.ok_or_else(|| Violation::Malformed { detail: "the job has no received time".to_owned() });
    if let Some(days) = rule.max_age_days {
        if datetime < received()? - Duration::days(i64::from(days)) {
            return Err(Violation::TooOld { max_age_days: days });
        }
    }
    if let Some(minutes) = rule.max_future_minutes {
        if datetime > received()? + Duration::minutes(i64::from(minutes)) {
            return Err(Violation::InTheFuture { max_future_minutes: minutes });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
