//! The query service's integration tests, one binary: the admin API, the job projections and
//! endpoints, and the monthly KPI endpoints, over HTTP against the real Kafka and PostgreSQL.

mod admin_api;
mod jobs_api;
mod monthly_api;
mod support;
