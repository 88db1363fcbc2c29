//! The `uts.v1` protobuf contracts: one message per Kafka topic (see `uts/v1/uts.proto`).
//!
//! | topic | key | value |
//! |---|---|---|
//! | `uts.usage-jobs` | job id | [`v1::UsageJob`] |
//! | `uts.usages.verified` | aggregation key | [`v1::VerifiedBatch`] |
//! | `uts.aggregates` | bucket key | [`v1::DailyAggregate`] |
//! | `uts.status` | job id | [`v1::StatusEvent`] |
//! | `uts.dead-letter` | original key | [`v1::DeadLetter`] |
//!
//! Values that must stay exact (usage values, aggregates) travel as decimal strings, never as
//! binary floating point.

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/uts.v1.rs"));
}

pub mod views;

pub use prost::Message;
pub use prost_types::Timestamp;
