//! What PostgreSQL did during a run, from its statistics views: the WAL written and how much of
//! it were full-page images, checkpoints, autovacuum at work, and (with `pg_stat_statements`)
//! the statements that wrote the most WAL. Every figure is optional: a server that hides a view
//! from the benchmark's role (the local one grants `pg_read_all_stats`) leaves it out.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Counters of `pg_stat_wal` and the checkpointer at one moment.
#[derive(Clone, Copy)]
pub(super) struct Wal {
    bytes: f64,
    full_page_images: i64,
    checkpoints: i64,
}

impl Wal {
    /// `WAL 531 MB (27.1 B/usage), 1200 full-page images, 1 checkpoint(s) started` since `before`.
    pub(super) fn since(&self, before: &Wal, usages: u64) -> String {
        let bytes = self.bytes - before.bytes;
        format!(
            "WAL {:.0} MB ({:.1} B/usage), {} full-page images, {} checkpoint(s) started",
            bytes / 1e6,
            bytes / usages.max(1) as f64,
            self.full_page_images - before.full_page_images,
            self.checkpoints - before.checkpoints
        )
    }
}

/// What the server's background work was at one moment.
pub(super) struct Background {
    /// A checkpoint is writing buffers (the checkpointer waits between writes).
    pub(super) checkpointing: bool,
    /// Tables an autovacuum worker is processing in the benchmark's database.
    pub(super) vacuuming: Vec<String>,
}

pub(super) struct Postgres {
    pool: PgPool,
    /// The checkpoint counter's query: PostgreSQL 17 moved it to `pg_stat_checkpointer` (chosen
    /// by version once: a failing query would land in the server's log every minute).
    checkpoints_sql: &'static str,
}

impl Postgres {
    /// A connection of its own to the pipeline's database; `None` (with a line saying why) if
    /// there is none.
    pub(super) async fn connect(url: Option<&str>) -> Option<Self> {
        let url = url?;
        let connected = async {
            let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
            let version: i32 =
                sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&pool).await?;
            let checkpoints_sql = if version >= 170_000 {
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            } else {
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            };
            Ok::<_, sqlx::Error>(Self { pool, checkpoints_sql })
        };
        match connected.await {
            Ok(postgres) => Some(postgres),
            Err(e) => {
                println!("PostgreSQL statistics left out: {e}");
                None
            }
        }
    }

    pub(super) async fn wal(&self) -> Option<Wal> {
        let (bytes, full_page_images): (f64, i64) =
            sqlx::query_as("SELECT wal_bytes::float8, wal_fpi FROM pg_stat_wal").fetch_one(&self.pool).await.ok()?;
        let checkpoints = sqlx::query_scalar(self.checkpoints_sql).fetch_one(&self.pool).await.ok()?;
        Some(Wal { bytes, full_page_images, checkpoints })
    }

    pub(super) async fn background(&self) -> Background {
        let checkpointing = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT FROM pg_stat_activity
                            WHERE backend_type = 'checkpointer' AND wait_event = 'CheckpointWriteDelay')",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or(false);
        let vacuuming = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_stat_progress_vacuum v JOIN pg_class c ON c.oid = v.relid
             WHERE v.datname = current_database() ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        Background { checkpointing, vacuuming }
    }

    /// The statements of this database that wrote the most WAL:
    /// `"INSERT INTO jobs (job_id, …… 54 MB (0 full-page images) in 1163 calls"`.
    pub(super) async fn top_wal_statements(&self, n: i64) -> Vec<String> {
        let rows: Vec<(String, f64, i64, i64)> = sqlx::query_as(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60), wal_bytes::float8, wal_fpi, calls
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY wal_bytes DESC LIMIT $1",
        )
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        rows.into_iter()
            .map(|(query, bytes, fpi, calls)| {
                format!("{query}… {:.0} MB ({fpi} full-page images) in {calls} calls", bytes / 1e6)
            })
            .collect()
    }
}

/// The WAL counters, if there is a server to ask.
pub(super) async fn wal_of(postgres: Option<&Postgres>) -> Option<Wal> {
    match postgres {
        Some(pg) => pg.wal().await,
        None => None,
    }
}
