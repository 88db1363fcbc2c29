//! # verifier (not built yet: the pipeline issue)
//!
//! **Consumes** `uts.usage-jobs` (consumer group `uts-verifier`). For each usage it checks the
//! tenant rules of DESIGN.md §3 (payload tenant is the submitter, or an IoT tenant of that
//! operator with the application provisioned) and the rule for (application, unit).
//!
//! **Produces** the verified usages of each job to `uts.usages.verified`, one message per
//! (job, aggregation key), keyed by the aggregation key; status transitions (VERIFIED,
//! NOVERIFICATION, VERIFICATIONFAILED with validation errors) to `uts.status`, keyed by job id,
//! with deterministic event ids; undecodable jobs to `uts.dead-letter`.
//!
//! **Delivery:** at-least-once consumption through the shared consumer runner; offsets are
//! committed only after both productions are acknowledged, so a crash re-verifies a job and
//! re-produces the same messages and event ids, which downstream stages dedup.
