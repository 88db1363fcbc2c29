//! The gateway's integration tests, one binary: the API over HTTP ([`api`]) and Kafka going away
//! under it ([`kafka_outage`], ignored in the normal run: it stops the shared broker), against the
//! real Kafka and PostgreSQL.

mod api;
mod kafka_outage;
mod support;
