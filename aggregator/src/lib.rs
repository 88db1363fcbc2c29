//! # aggregator (not built yet: the pipeline issue)
//!
//! **Consumes** `uts.usages.verified` (consumer group `uts-aggregator`).
//!
//! **Produces** one daily aggregate per (provider tenant, consumer tenant, application, unit, UTC
//! day) in PostgreSQL with its lineage (which jobs contributed how many usages); the new value
//! and version of each touched bucket to `uts.aggregates`; AGGREGATED transitions to
//! `uts.status`.
//!
//! **Delivery:** exactly once into the aggregates: each (job, aggregation key) batch is applied
//! once, recorded in the same PostgreSQL transaction as the aggregate update, and the offset is
//! committed after that transaction. Redeliveries find the batch recorded and only re-emit.
