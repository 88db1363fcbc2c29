//! The aggregator's PostgreSQL statements. Each is set-based (`UNNEST` of column arrays), so a
//! consumer batch costs the same handful of statements whatever its size, and each touched
//! bucket row is read once and written once per batch, however many jobs it folds in.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres, Transaction};

use crate::fold::{Accumulators, Last};

/// An aggregation key: (provider, consumer, application, unit), read from the columns every
/// table of the aggregator names them by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::FromRow)]
pub struct KeyId {
    #[sqlx(rename = "provider_tenant_id")]
    pub provider: String,
    #[sqlx(rename = "consumer_tenant_id")]
    pub consumer: String,
    pub application: String,
    pub unit: String,
}

/// A daily bucket: an aggregation key and a UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::FromRow)]
pub struct BucketId {
    #[sqlx(flatten)]
    pub key: KeyId,
    pub day: NaiveDate,
}

/// The arguments of a statement, `$1`… in the order they are added.
#[derive(Default)]
struct Args(PgArguments);

impl Args {
    fn add<'q, T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + 'q>(mut self, value: T) -> sqlx::Result<Self> {
        self.0.add(value).map_err(sqlx::Error::Encode)?;
        Ok(self)
    }

    /// The four key columns.
    fn keys(self, keys: &KeyColumns) -> sqlx::Result<Self> {
        self.add(&keys.providers)?.add(&keys.consumers)?.add(&keys.applications)?.add(&keys.units)
    }
}

/// One (job, aggregation key) batch to claim, with its usage count.
pub struct Claim<'a> {
    pub job_id: &'a str,
    pub key: &'a KeyId,
    pub usages: i32,
}

/// Columns of a set of keys, for `UNNEST`.
#[derive(Default)]
struct KeyColumns {
    providers: Vec<String>,
    consumers: Vec<String>,
    applications: Vec<String>,
    units: Vec<String>,
}

impl KeyColumns {
    fn push(&mut self, key: &KeyId) {
        self.providers.push(key.provider.clone());
        self.consumers.push(key.consumer.clone());
        self.applications.push(key.application.clone());
        self.units.push(key.unit.clone());
    }
}

/// (job, key) pairs as the five arrays of `UNNEST($1..$5) AS k(job_id, p, c, a, u)`.
struct BatchColumns<'a> {
    jobs: Vec<&'a str>,
    keys: KeyColumns,
}

impl<'a> BatchColumns<'a> {
    fn of(batches: &[(&'a str, &KeyId)]) -> Self {
        let mut keys = KeyColumns::default();
        for (_, key) in batches {
            keys.push(key);
        }
        Self { jobs: batches.iter().map(|(job, _)| *job).collect(), keys }
    }

    /// `$1`–`$5`.
    fn args(&self) -> sqlx::Result<Args> {
        Args::default().add(&self.jobs)?.keys(&self.keys)
    }
}

/// Inserts the dedup rows of `claims`; returns the (job, key) pairs inserted now (the others
/// were applied by an earlier delivery) and the transaction's time (from the inserted rows, so
/// no extra round trip). A row of another
/// transaction that is not committed yet makes this wait for it, so two aggregators that
/// both hold a redelivered batch never both apply it.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    claims: &[Claim<'_>],
) -> sqlx::Result<(HashSet<(String, KeyId)>, DateTime<Utc>)> {
    let mut jobs = Vec::with_capacity(claims.len());
    let mut keys = KeyColumns::default();
    let mut counts = Vec::with_capacity(claims.len());
    for claim in claims {
        jobs.push(claim.job_id.to_owned());
        keys.push(claim.key);
        counts.push(claim.usages);
    }
    #[derive(sqlx::FromRow)]
    struct Claimed {
        job_id: String,
        #[sqlx(flatten)]
        key: KeyId,
        applied_at: DateTime<Utc>,
    }
    let args = Args::default().add(&jobs)?.keys(&keys)?.add(&counts)?;
    let rows: Vec<Claimed> = sqlx::query_as_with(
        "INSERT INTO aggregate_applied_batches
            (job_id, provider_tenant_id, consumer_tenant_id, application, unit, usages_count)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])
         ON CONFLICT DO NOTHING
         RETURNING job_id, provider_tenant_id, consumer_tenant_id, application, unit, applied_at",
        args.0,
    )
    .fetch_all(&mut **tx)
    .await?;
    // Every row has the transaction's time; with none inserted nothing is written with it.
    let now = rows.first().map_or_else(Utc::now, |row| row.applied_at);
    let claimed = rows.into_iter().map(|row| (row.job_id, row.key)).collect();
    Ok((claimed, now))
}

/// Marks claimed batches that could not be applied (overflow) as rejected, with the reason:
/// their dedup rows stay, so a redelivery finds them decided (see [`rejections`]).
pub async fn reject(tx: &mut Transaction<'_, Postgres>, rejected: &[(&str, &KeyId, &str)]) -> sqlx::Result<()> {
    let jobs: Vec<&str> = rejected.iter().map(|(job, _, _)| *job).collect();
    let reasons: Vec<&str> = rejected.iter().map(|(_, _, reason)| *reason).collect();
    let mut keys = KeyColumns::default();
    for (_, key, _) in rejected {
        keys.push(key);
    }
    let args = Args::default().add(&jobs)?.keys(&keys)?.add(&reasons)?;
    sqlx::query_with(
        "UPDATE aggregate_applied_batches a SET rejection = k.reason
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS k(job_id, p, c, a, u, reason)
         WHERE (a.job_id, a.provider_tenant_id, a.consumer_tenant_id, a.application, a.unit)
             = (k.job_id, k.p, k.c, k.a, k.u)",
        args.0,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Of batches applied by an earlier delivery, those that were rejected, with the reason.
pub async fn rejections(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[(&str, &KeyId)],
) -> sqlx::Result<HashMap<(String, KeyId), String>> {
    #[derive(sqlx::FromRow)]
    struct Rejected {
        job_id: String,
        #[sqlx(flatten)]
        key: KeyId,
        rejection: String,
    }
    let rows: Vec<Rejected> = sqlx::query_as_with(
        "SELECT a.job_id, a.provider_tenant_id, a.consumer_tenant_id, a.application, a.unit, a.rejection
         FROM aggregate_applied_batches a
         JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS k(job_id, p, c, a, u)
           ON (a.job_id, a.provider_tenant_id, a.consumer_tenant_id, a.application, a.unit) = (k.job_id, k.p, k.c, k.a, k.u)
         WHERE a.rejection IS NOT NULL",
        BatchColumns::of(batches).args()?.0,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| ((row.job_id, row.key), row.rejection)).collect())
}

/// A bucket as stored: its accumulators and version.
pub struct StoredBucket {
    pub acc: Accumulators,
    pub version: i64,
}

/// Reads and locks the stored `buckets` (those that exist), in key order so that two
/// transactions locking overlapping sets cannot deadlock.
pub async fn lock_buckets(
    tx: &mut Transaction<'_, Postgres>,
    buckets: &[&BucketId],
) -> sqlx::Result<BTreeMap<BucketId, StoredBucket>> {
    let mut keys = KeyColumns::default();
    let mut days = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        keys.push(&bucket.key);
        days.push(bucket.day);
    }
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        bucket: BucketId,
        usages_count: i64,
        sum_value: Decimal,
        min_value: Decimal,
        max_value: Decimal,
        last_value: Decimal,
        last_at: DateTime<Utc>,
        last_job_id: String,
        last_index: i32,
        version: i64,
    }
    let rows: Vec<Locked> = sqlx::query_as_with(
        "SELECT d.provider_tenant_id, d.consumer_tenant_id, d.application, d.unit, d.day,
                d.usages_count, d.sum_value, d.min_value, d.max_value, d.last_value, d.last_at, d.last_job_id,
                d.last_index, d.version
         FROM daily_aggregates d
         JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::date[]) AS k(p, c, a, u, day)
           ON (d.provider_tenant_id, d.consumer_tenant_id, d.application, d.unit, d.day) = (k.p, k.c, k.a, k.u, k.day)
         ORDER BY d.provider_tenant_id, d.consumer_tenant_id, d.application, d.unit, d.day
         FOR UPDATE OF d",
        Args::default().keys(&keys)?.add(&days)?.0,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let last = Last { value: row.last_value, at: row.last_at, job_id: row.last_job_id, index: row.last_index };
            let acc = Accumulators {
                count: row.usages_count,
                sum: row.sum_value,
                min: row.min_value,
                max: row.max_value,
                last,
            };
            (row.bucket, StoredBucket { acc, version: row.version })
        })
        .collect())
}

/// A bucket's new state, written once per batch.
pub struct NewBucket<'a> {
    pub bucket: &'a BucketId,
    pub acc: &'a Accumulators,
    pub value: Decimal,
    pub version: i64,
    pub function: &'static str,
    pub billable: bool,
    pub rule_id: &'a str,
}

/// Writes the buckets' new states: one statement for the whole batch.
pub async fn store_buckets(tx: &mut Transaction<'_, Postgres>, buckets: &[NewBucket<'_>]) -> sqlx::Result<()> {
    let mut keys = KeyColumns::default();
    let (mut days, mut functions, mut values, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut sums, mut mins, mut maxs, mut last_values, mut last_ats) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut last_jobs, mut last_indexes, mut billables, mut rules, mut versions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in buckets {
        keys.push(&b.bucket.key);
        days.push(b.bucket.day);
        functions.push(b.function.to_owned());
        values.push(b.value);
        counts.push(b.acc.count);
        sums.push(b.acc.sum);
        mins.push(b.acc.min);
        maxs.push(b.acc.max);
        last_values.push(b.acc.last.value);
        last_ats.push(b.acc.last.at);
        last_jobs.push(b.acc.last.job_id.clone());
        last_indexes.push(b.acc.last.index);
        billables.push(b.billable);
        rules.push(b.rule_id.to_owned());
        versions.push(b.version);
    }
    let args = Args::default().keys(&keys)?.add(&days)?.add(&functions)?.add(&values)?.add(&counts)?;
    let args = args.add(&sums)?.add(&mins)?.add(&maxs)?.add(&last_values)?.add(&last_ats)?;
    let args = args.add(&last_jobs)?.add(&last_indexes)?.add(&billables)?.add(&rules)?.add(&versions)?;
    sqlx::query_with(
        "INSERT INTO daily_aggregates
            (provider_tenant_id, consumer_tenant_id, application, unit, day, function, value, usages_count,
             sum_value, min_value, max_value, last_value, last_at, last_job_id, last_index, billable, rule_id,
             version, updated_at)
         SELECT *, now() FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::date[], $6::text[],
             $7::numeric[], $8::int8[], $9::numeric[], $10::numeric[], $11::numeric[], $12::numeric[],
             $13::timestamptz[], $14::text[], $15::int4[], $16::bool[], $17::text[], $18::int8[])
         ON CONFLICT (provider_tenant_id, consumer_tenant_id, application, unit, day) DO UPDATE SET
            function = EXCLUDED.function, value = EXCLUDED.value, usages_count = EXCLUDED.usages_count,
            sum_value = EXCLUDED.sum_value, min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
            last_value = EXCLUDED.last_value, last_at = EXCLUDED.last_at, last_job_id = EXCLUDED.last_job_id,
            last_index = EXCLUDED.last_index, billable = EXCLUDED.billable, rule_id = EXCLUDED.rule_id,
            version = EXCLUDED.version, updated_at = now()",
        args.0,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One job's contribution to a bucket version, as recorded in the lineage.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Contribution {
    #[sqlx(flatten)]
    pub bucket: BucketId,
    pub job_id: String,
    #[sqlx(rename = "usages_count")]
    pub usages: i32,
    pub version: i64,
    /// The bucket's value and usage count at `version`.
    pub bucket_value: Decimal,
    #[sqlx(rename = "bucket_usages_count")]
    pub bucket_usages: i64,
    pub applied_at: DateTime<Utc>,
}

/// Records the lineage of the batch: one statement.
pub async fn store_contributions(tx: &mut Transaction<'_, Postgres>, rows: &[Contribution]) -> sqlx::Result<()> {
    let mut keys = KeyColumns::default();
    let (mut days, mut jobs, mut counts, mut versions, mut values, mut totals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        keys.push(&row.bucket.key);
        days.push(row.bucket.day);
        jobs.push(row.job_id.clone());
        counts.push(row.usages);
        versions.push(row.version);
        values.push(row.bucket_value);
        totals.push(row.bucket_usages);
    }
    let args = Args::default().keys(&keys)?.add(&days)?.add(&jobs)?.add(&counts)?.add(&versions)?;
    sqlx::query_with(
        "INSERT INTO aggregate_contributions
            (provider_tenant_id, consumer_tenant_id, application, unit, day, job_id, usages_count, version,
             bucket_value, bucket_usages_count)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::date[], $6::text[], $7::int4[],
             $8::int8[], $9::numeric[], $10::int8[])",
        args.add(&values)?.add(&totals)?.0,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The whole lineage of every bucket version that the given (job, key) batches contributed to
/// (every job of those versions, not only the given ones): what a redelivery re-emits.
pub async fn versions_of(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[(&str, &KeyId)],
) -> sqlx::Result<Vec<Contribution>> {
    sqlx::query_as_with(
        "WITH versions AS (
           SELECT DISTINCT c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit, c.day, c.version
           FROM aggregate_contributions c
           JOIN UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS k(job_id, p, c, a, u)
             ON (c.job_id, c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit) = (k.job_id, k.p, k.c, k.a, k.u)
         )
         SELECT c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit, c.day, c.job_id, c.usages_count,
                c.version, c.bucket_value, c.bucket_usages_count, c.applied_at
         FROM aggregate_contributions c
         JOIN versions v
           ON (c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit, c.day, c.version)
            = (v.provider_tenant_id, v.consumer_tenant_id, v.application, v.unit, v.day, v.version)
         ORDER BY c.provider_tenant_id, c.consumer_tenant_id, c.application, c.unit, c.day, c.version, c.job_id",
        BatchColumns::of(batches).args()?.0,
    )
    .fetch_all(&mut **tx)
    .await
}
