//! # query-service (not built yet: the query-service issue)
//!
//! **Consumes** `uts.usage-jobs` and `uts.status` (consumer group `uts-query-service`) and
//! projects them into PostgreSQL: jobs, usage summaries per (job, application, unit,
//! processStatus) and job errors, idempotent on job ids and event ids, correct in any arrival
//! order.
//!
//! **Serves** `GET /usagesJobs`, `/usagesJobs/{id}`, `/usagesJobs/{id}/errors`,
//! `/aggregatedMonthlyConsumerUsage`, `/aggregatedMonthlyProviderUsage`, the admin API and the
//! dashboard.
//!
//! **Delivery:** projections are applied in a PostgreSQL transaction that also records the
//! applied event ids; offsets are committed after it, so crashes neither lose nor double.
