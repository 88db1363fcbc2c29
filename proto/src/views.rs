//! Partial views of the contract's messages, for readers that need a few fields of a large
//! message: the same field numbers as `uts/v1/uts.proto`, fewer fields (prost skips fields a
//! message does not declare). Kept beside the contract so that a change of a field number is
//! seen here, and tested against the full message.

/// What the projection reads of a `uts.v1.UsageJob`: the same field numbers, without the usages'
/// values, datetimes, users and resources (prost skips fields a message does not declare). A job
/// carries up to 200 usages; not decoding what is never used doubles the projection's speed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobView {
    #[prost(string, tag = "1")]
    pub job_id: String,
    #[prost(string, tag = "2")]
    pub submitter_tenant: String,
    #[prost(message, optional, tag = "4")]
    pub received_at: Option<prost_types::Timestamp>,
    /// `uts.v1.Origin`.
    #[prost(int32, tag = "5")]
    pub origin: i32,
    #[prost(uint32, tag = "7")]
    pub usages_count: u32,
    #[prost(message, repeated, tag = "8")]
    pub users: Vec<UserView>,
}

/// `uts.v1.UserUsages`: the tenant and the resources.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserView {
    #[prost(string, tag = "1")]
    pub tenant_id: String,
    #[prost(message, repeated, tag = "4")]
    pub resources: Vec<ResourceView>,
}

/// `uts.v1.ResourceUsages`: the application and the usages' units.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceView {
    #[prost(string, tag = "1")]
    pub application: String,
    #[prost(message, repeated, tag = "4")]
    pub usages: Vec<UsageView>,
}

/// `uts.v1.Usage`: the unit only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageView {
    #[prost(string, tag = "3")]
    pub unit: String,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1;

    #[test]
    fn the_job_view_reads_the_same_fields_as_the_full_message() {
        let usage = |index: u32, unit: &str| v1::Usage {
            index,
            value: "12.5".into(),
            unit: unit.into(),
            datetime: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
        };
        let job = v1::UsageJob {
            job_id: "job-1".into(),
            submitter_tenant: "acme".into(),
            submitter_user: "someone".into(),
            received_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            origin: v1::Origin::Usages as i32,
            idempotency_key: "key".into(),
            usages_count: 3,
            users: vec![v1::UserUsages {
                tenant_id: "plant".into(),
                user_id: "u".into(),
                user_type: v1::UserType::Agent as i32,
                resources: vec![v1::ResourceUsages {
                    application: "app".into(),
                    alias: "alias".into(),
                    resource: "r".into(),
                    usages: vec![usage(0, "kWh"), usage(1, "kWh"), usage(2, "h")],
                }],
            }],
        };
        let view = JobView::decode(job.encode_to_vec().as_slice()).unwrap();
        assert_eq!((view.job_id.as_str(), view.submitter_tenant.as_str()), ("job-1", "acme"));
        assert_eq!(view.received_at, job.received_at);
        assert_eq!((view.origin, view.usages_count), (v1::Origin::Usages as i32, 3));
        assert_eq!(view.users[0].tenant_id, "plant");
        assert_eq!(view.users[0].resources[0].application, "app");
        let units: Vec<&str> = view.users[0].resources[0].usages.iter().map(|u| u.unit.as_str()).collect();
        assert_eq!(units, ["kWh", "kWh", "h"]);
    }
}
