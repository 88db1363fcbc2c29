//! # billing-forwarder (not built yet: the pipeline issue)
//!
//! **Consumes** `uts.aggregates` (consumer group `uts-billing-forwarder`) for billable buckets
//! and keeps an outbox in PostgreSQL.
//!
//! **Produces** HTTP calls to the configured billing endpoint, one per (bucket, version) with
//! an idempotency key, retried with exponential backoff; SENTFORBILLING,
//! FAILEDTOSENDFORBILLING (with billing errors) and RECEIVEDFORBILLING transitions to
//! `uts.status`.
//!
//! **Delivery:** the outbox row is written in the same transaction that records the consumed
//! offset's work; sends are at-least-once and the billing system dedups by idempotency key.
