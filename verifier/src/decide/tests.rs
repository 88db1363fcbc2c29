use super::*;
use crate::catalog::TenantInfo;
use uts_common::domain::{to_timestamp, TenantType};

const NOW: i64 = 1_795_000_000;

fn usage(index: u32, value: &str, unit: &str, seconds_from_now: i64) -> v1::Usage {
    v1::Usage {
        index,
        value: value.into(),
        unit: unit.into(),
        datetime: Some(to_timestamp(DateTime::from_timestamp(NOW + seconds_from_now, 0).unwrap())),
    }
}

fn job(users: Vec<v1::UserUsages>) -> v1::UsageJob {
    v1::UsageJob {
        job_id: "job-1".into(),
        submitter_tenant: "op".into(),
        received_at: Some(to_timestamp(DateTime::from_timestamp(NOW, 0).unwrap())),
        usages_count: users.iter().flat_map(|u| &u.resources).map(|r| r.usages.len() as u32).sum(),
        users,
        ..Default::default()
    }
}

fn user(tenant: &str, user_type: v1::UserType, application: &str, usages: Vec<v1::Usage>) -> v1::UserUsages {
    v1::UserUsages {
        tenant_id: tenant.into(),
        user_id: format!("{tenant}-user"),
        user_type: user_type as i32,
        resources: vec![v1::ResourceUsages {
            application: application.into(),
            alias: application.into(),
            resource: "asset".into(),
            usages,
        }],
    }
}

fn rule() -> Rule {
    Rule {
        rule_id: "rule-1".into(),
        owner_tenant_id: "provider".into(),
        active: true,
        function: AggregationFunction::Max,
        billing_enabled: true,
        min_value: Some(Decimal::from(0)),
        max_value: Some(Decimal::from(100)),
        integers_only: true,
        allowed_user_types: Some(vec![UserType::User, UserType::Agent]),
        max_age_days: Some(30),
        max_future_minutes: Some(5),
        version: 3,
    }
}

fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    catalog.rules.insert(("app".into(), "unit".into()), rule());
    let iot = |operator: &str| TenantInfo { tenant_type: TenantType::Iot, operator_tenant_id: Some(operator.into()) };
    catalog.tenants.insert("op".into(), TenantInfo { tenant_type: TenantType::Operator, operator_tenant_id: None });
    catalog.tenants.insert("plant".into(), iot("op"));
    catalog.tenants.insert("foreign-plant".into(), iot("other-op"));
    catalog.provisioned.insert(("plant".into(), "app".into()));
    catalog.provisioned.insert(("foreign-plant".into(), "app".into()));
    catalog
}

fn status_counts(decision: &Decision) -> Vec<(String, i32, u32)> {
    decision.status.transitions.iter().map(|t| (t.unit.clone(), t.to, t.count)).collect()
}

#[test]
fn usages_without_a_rule_pass_unverified_and_aggregate_with_sum_for_the_submitter() {
    let decision = decide(
        &job(vec![user("op", v1::UserType::Tenant, "app", vec![usage(0, "1.5", "other", 0)])]),
        &catalog(),
        false,
    );
    assert_eq!(decision.batches.len(), 1);
    let batch = &decision.batches[0];
    assert_eq!(batch.key.as_ref().unwrap().provider_tenant, "op");
    assert_eq!(batch.function, v1::AggregationFunction::Sum as i32);
    assert!(!batch.billable);
    assert_eq!(batch.verification_status, v1::UsageStatus::Noverification as i32);
    assert_eq!(status_counts(&decision), vec![("other".into(), v1::UsageStatus::Noverification as i32, 1)]);
    assert!(decision.status.errors.is_empty());

    let strict = decide(
        &job(vec![user("op", v1::UserType::Tenant, "app", vec![usage(0, "1.5", "other", 0)])]),
        &catalog(),
        true,
    );
    assert!(strict.batches.is_empty());
    assert_eq!(strict.status.errors[0].code, "mdsp.uts.verification.noRule");
}

#[test]
fn no_clock_and_no_guessed_user_type() {
    // Without a received time a rule's time window cannot be checked: the usage fails
    // instead of being judged against the clock.
    let mut without_time = job(vec![user("op", v1::UserType::User, "app", vec![usage(0, "1", "unit", 0)])]);
    without_time.received_at = None;
    let decision = decide(&without_time, &catalog(), false);
    assert!(decision.batches.is_empty());
    assert_eq!(status_counts(&decision), vec![("unit".to_owned(), v1::UsageStatus::Verificationfailed as i32, 1)]);
    // An unspecified user type passes no rule that restricts user types.
    let decision = decide(
        &job(vec![user("op", v1::UserType::Unspecified, "app", vec![usage(0, "1", "unit", 0)])]),
        &catalog(),
        false,
    );
    assert!(decision.batches.is_empty());
    assert!(decision.status.errors[0].message.contains("userType unspecified"), "{:?}", decision.status.errors);
}

#[test]
fn each_rule_constraint_fails_its_own_usages_with_its_own_error() {
    let usages = vec![
        usage(0, "10", "unit", 0),          // ok
        usage(1, "-1", "unit", 0),          // below minimum
        usage(2, "101", "unit", 0),         // above maximum
        usage(3, "1.5", "unit", 0),         // not an integer
        usage(4, "1", "unit", -31 * 86400), // too old
        usage(5, "1", "unit", 600),         // in the future
        usage(6, "100", "unit", 299),       // ok: at the maximum, within 5 minutes
    ];
    let decision = decide(&job(vec![user("op", v1::UserType::User, "app", usages)]), &catalog(), false);
    assert_eq!(decision.batches.len(), 1);
    let batch = &decision.batches[0];
    assert_eq!(batch.usages.iter().map(|u| u.index).collect::<Vec<_>>(), vec![0, 6]);
    assert_eq!(batch.key.as_ref().unwrap().provider_tenant, "provider", "the rule's owner is the provider");
    assert_eq!((batch.function, batch.billable, batch.rule_version), (v1::AggregationFunction::Max as i32, true, 3));
    let mut codes: Vec<(String, Vec<u32>)> = decision
        .status
        .errors
        .iter()
        .map(|e| {
            let Some(v1::usage_error::ErrorData::Validation(data)) = &e.error_data else { panic!("no data") };
            (e.code.clone(), data.users[0].resources[0].usages.iter().map(|u| u.index).collect())
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("mdsp.uts.verification.usageInFuture".into(), vec![5]),
            ("mdsp.uts.verification.usageTooOld".into(), vec![4]),
            ("mdsp.uts.verification.valueAboveMaximum".into(), vec![2]),
            ("mdsp.uts.verification.valueBelowMinimum".into(), vec![1]),
            ("mdsp.uts.verification.valueNotInteger".into(), vec![3]),
        ]
    );
    assert_eq!(
        status_counts(&decision),
        vec![
            ("unit".into(), v1::UsageStatus::Verified as i32, 2),
            ("unit".into(), v1::UsageStatus::Verificationfailed as i32, 5)
        ]
    );
}

#[test]
fn user_types_and_tenants_are_checked() {
    let users = vec![
        user("op", v1::UserType::Tenant, "app", vec![usage(0, "1", "unit", 0)]), // user type not allowed
        user("plant", v1::UserType::User, "app", vec![usage(1, "1", "unit", 0)]), // IoT of op, provisioned
        user("plant", v1::UserType::User, "other-app", vec![usage(2, "1", "x", 0)]), // not provisioned
        user("foreign-plant", v1::UserType::User, "app", vec![usage(3, "1", "unit", 0)]), // another operator's
        user("stranger", v1::UserType::User, "app", vec![usage(4, "1", "unit", 0)]), // unknown tenant
    ];
    let decision = decide(&job(users), &catalog(), false);
    let verified: Vec<u32> = decision.batches.iter().flat_map(|b| b.usages.iter().map(|u| u.index)).collect();
    assert_eq!(verified, vec![1]);
    assert_eq!(decision.batches[0].key.as_ref().unwrap().consumer_tenant, "plant");
    // One error per refused (tenant, application), each naming it and carrying its usages.
    let mut refused: Vec<(String, String, Vec<u32>)> = decision
        .status
        .errors
        .iter()
        .filter(|e| e.code.ends_with("tenantNotAllowed"))
        .map(|e| {
            let Some(v1::usage_error::ErrorData::Validation(data)) = &e.error_data else { panic!() };
            assert!(e.message.contains(&data.users[0].tenant_id), "{}", e.message);
            let usages = data.users[0].resources[0].usages.iter().map(|u| u.index).collect();
            (data.users[0].tenant_id.clone(), data.users[0].resources[0].application.clone(), usages)
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec![
            ("foreign-plant".into(), "app".into(), vec![3]),
            ("plant".into(), "other-app".into(), vec![2]),
            ("stranger".into(), "app".into(), vec![4]),
        ]
    );
    assert!(decision.status.errors.iter().any(|e| e.code.ends_with("userTypeNotAllowed")));
}

#[test]
fn an_inactive_rule_does_not_apply() {
    let mut catalog = catalog();
    catalog.rules.get_mut(&("app".to_owned(), "unit".to_owned())).unwrap().active = false;
    let decision =
        decide(&job(vec![user("op", v1::UserType::Tenant, "app", vec![usage(0, "-5", "unit", 0)])]), &catalog, false);
    assert_eq!(decision.batches[0].verification_status, v1::UsageStatus::Noverification as i32);
}

#[test]
fn the_same_job_always_yields_the_same_decision() {
    let job =
        job(vec![user("op", v1::UserType::User, "app", vec![usage(0, "1", "unit", 0), usage(1, "-1", "unit", 0)])]);
    assert_eq!(decide(&job, &catalog(), false), decide(&job, &catalog(), false));
    assert_eq!(decide(&job, &catalog(), false).status.event_id, "verifier:job-1");
}

#[test]
fn stored_verdicts_rebuild_the_same_messages_and_stay_small() {
    use uts_common::proto::Message;
    let mut usages: Vec<v1::Usage> = (0..200).map(|i| usage(i, "10", "unit", 0)).collect();
    usages[7] = usage(7, "-1", "unit", 0);
    usages[9] = usage(9, "1.5", "unit", 0);
    let users = vec![
        user("op", v1::UserType::User, "app", usages),
        user("stranger", v1::UserType::User, "app", vec![usage(200, "1", "unit", 0)]),
        user("op", v1::UserType::User, "app", vec![usage(201, "1", "other", 0)]),
    ];
    let job = job(users);
    let verdicts = judge(&job, &catalog(), false);
    let stored = verdicts.encode_to_vec();
    // A byte per usage, the outcomes once (the three errors' texts are most of it).
    assert!(stored.len() < 1000, "{} bytes stored for 202 usages", stored.len());
    let all_pass =
        self::job(vec![user("op", v1::UserType::User, "app", (0..200).map(|i| usage(i, "1", "unit", 0)).collect())]);
    let small = judge(&all_pass, &catalog(), false).encode_to_vec().len();
    assert!(small < 260, "{small} bytes stored for 200 usages that pass");
    let decoded = v1::VerifierVerdicts::decode(stored.as_slice()).unwrap();
    let rebuilt = assemble(&job, &decoded).unwrap();
    assert_eq!(rebuilt, decide(&job, &catalog(), false));
    // Even under another catalog: the stored verdicts, not the rules, decide.
    assert_ne!(decide(&job, &Catalog::default(), true), rebuilt);
    // Errors keep the violations' order; the failing usages are the job's.
    let codes: Vec<&str> = rebuilt.status.errors.iter().map(|e| e.code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "mdsp.uts.verification.tenantNotAllowed",
            "mdsp.uts.verification.valueBelowMinimum",
            "mdsp.uts.verification.valueNotInteger"
        ]
    );
    assert_eq!(rebuilt.batches.iter().map(|b| b.usages.len()).sum::<usize>(), 199);
    // Verdicts of another job are refused, not guessed.
    let mut other = job.clone();
    other.users.pop();
    assert!(assemble(&other, &decoded).is_err());
    let mut broken = decoded.clone();
    broken.assignment[0] = 99;
    assert!(assemble(&job, &broken).is_err());
}
