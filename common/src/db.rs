//! The PostgreSQL pool and the one migrations directory (`common/migrations`).
//!
//! Migrations run as their own step (`utsctl migrate`) before services start, never raced by
//! several services at start-up.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseArgs;

/// Every migration of the service, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects a pool. Fails when the database cannot be reached within a few seconds.
pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&args.url)
        .await
        .context("connecting to PostgreSQL")
}

/// Applies the pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("running database migrations")
}

/// A table whose rows only guard against applying a message twice; see [`prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupTable {
    /// The verifier's decision per job.
    VerifierDecisions,
    /// The aggregator's applied (job, aggregation key) batches.
    AggregateAppliedBatches,
    /// The query service's applied status events.
    JobAppliedEvents,
}

impl DedupTable {
    fn table_and_column(self) -> (&'static str, &'static str) {
        match self {
            Self::VerifierDecisions => ("verifier_decisions", "decided_at"),
            Self::AggregateAppliedBatches => ("aggregate_applied_batches", "applied_at"),
            Self::JobAppliedEvents => ("job_applied_events", "applied_at"),
        }
    }
}

/// Rows deleted per statement, so that pruning never holds many row locks for long.
const PRUNE_CHUNK: i64 = 10_000;

/// Deletes the rows of `table` written more than `days` days ago, in chunks; returns how many.
///
/// Safe only while nothing older can come again: `days` must exceed the gateway's
/// Idempotency-Key window (a retry re-produces the job under its id) plus the topics' retention
/// (a redelivery). The default, 90 days, is well above 35 + 7.
pub async fn prune(pool: &PgPool, table: DedupTable, days: u32) -> Result<u64, sqlx::Error> {
    let (table, column) = table.table_and_column();
    let sql = format!(
        "DELETE FROM {table} WHERE ctid IN
           (SELECT ctid FROM {table} WHERE {column} < now() - make_interval(days => $1) LIMIT $2)"
    );
    let mut removed = 0;
    loop {
        let done = sqlx::query(&sql).bind(days as i32).bind(PRUNE_CHUNK).execute(pool).await?;
        removed += done.rows_affected();
        if done.rows_affected() < PRUNE_CHUNK as u64 {
            return Ok(removed);
        }
    }
}

/// Prunes `table` once an hour (the first time a minute after start) until `shutdown`; 0 days
/// turns it off.
pub fn spawn_pruner(
    pool: PgPool,
    table: DedupTable,
    days: u32,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if days == 0 {
            return;
        }
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = Duration::from_secs(3600);
            match prune(&pool, table, days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(?table, removed = n, days, "pruned dedup rows past their retention"),
                Err(err) => tracing::warn!(?table, %err, "pruning dedup rows failed; retrying in an hour"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(pool: &PgPool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn pruning_removes_only_rows_past_their_retention(pool: PgPool) {
        for (age, id) in [(100, "old"), (89, "recent"), (0, "new")] {
            let age = format!("{age} days");
            for insert in [
                "INSERT INTO verifier_decisions (job_id, decision, decided_at) VALUES ($1, '\\x00', now() - $2::interval)",
                "INSERT INTO aggregate_applied_batches
                   (job_id, provider_tenant_id, consumer_tenant_id, application, unit, usages_count, applied_at)
                 VALUES ($1, 'p', 'c', 'a', 'u', 1, now() - $2::interval)",
                "INSERT INTO job_applied_events (job_id, event_digest, applied_at)
                 VALUES ($1, gen_random_uuid(), now() - $2::interval)",
            ] {
                sqlx::query(insert).bind(id).bind(&age).execute(&pool).await.unwrap();
            }
        }
        for table in [DedupTable::VerifierDecisions, DedupTable::AggregateAppliedBatches, DedupTable::JobAppliedEvents]
        {
            assert_eq!(prune(&pool, table, 90).await.unwrap(), 1, "{table:?}");
            assert_eq!(prune(&pool, table, 90).await.unwrap(), 0, "{table:?} again");
            assert_eq!(count(&pool, table.table_and_column().0).await, 2, "{table:?}");
        }
        let kept: Vec<String> =
            sqlx::query_scalar("SELECT job_id FROM verifier_decisions ORDER BY job_id").fetch_all(&pool).await.unwrap();
        assert_eq!(kept, ["new", "recent"]);
    }

    /// Migration 19 replaced the event ids of `job_applied_events` by their digests: a row it
    /// converted must match what the projection inserts for the same event, or a redelivered old
    /// event would be applied a second time.
    #[sqlx::test(migrations = false)]
    async fn the_event_digest_migration_computes_the_projections_digest(pool: PgPool) {
        let before_19: Vec<_> = MIGRATOR.iter().filter(|m| m.version < 20261203000019).cloned().collect();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut earlier = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        earlier.migrations = before_19.into();
        earlier.run(&pool).await.unwrap();
        let event_id = crate::domain::wire::billing_event_id("j-1", "acme/buyer/app/kWh/2024-05-01", 3, "sent");
        sqlx::query("INSERT INTO job_applied_events (event_id, job_id) VALUES ($1, 'j-1')")
            .bind(&event_id)
            .execute(&pool)
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let digest: uuid::Uuid = sqlx::query_scalar("SELECT event_digest FROM job_applied_events WHERE job_id = 'j-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(digest, crate::domain::wire::event_digest(&event_id));
    }
}
