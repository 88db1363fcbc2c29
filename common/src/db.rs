//! The PostgreSQL pool and the one migrations directory (`common/migrations`).
//!
//! Migrations run as their own step (`utsctl migrate`) before services start, never raced by
//! several services at start-up.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

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
