//! `Idempotency-Key`: a retry with the same key and tenant inside the dedup window gets the
//! original job id, time and count.
//!
//! Where the dedup lives: the key is claimed here, in PostgreSQL, before the job is produced.
//! A retry finds the claim and re-produces the job under the *original* job id (the first
//! produce may have failed after the claim). So Kafka may hold the same job id more than once,
//! and every consumer treats the job id as the job's identity: the aggregator applies each
//! (job, aggregation key) once and the query service projects each job id once. The claim is
//! what makes the answers equal; the job id is what makes the counts exact.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uts_common::error::ApiError;

/// Header name, as clients send it.
pub const HEADER: &str = "idempotency-key";

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

/// The answer a key is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub job_id: String,
    pub received_at: DateTime<Utc>,
    pub usages_count: u32,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key (or first after its window expired): the new job is bound to it.
    New,
    /// The key was used before with the same request: answer with the original.
    Replay(Original),
    /// The key was used before with a different request body.
    Mismatch,
}

/// Validates the header value: 1 to 255 visible ASCII characters.
pub fn parse_key(value: &axum::http::HeaderValue) -> Result<String, ApiError> {
    let text = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::invalid_parameter("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?;
    Ok(text.to_owned())
}

pub fn request_hash(route: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().to_vec()
}

/// Binds `key` of `tenant` to `new` unless a live binding exists. Concurrent claims of one key
/// are serialised by the primary key: exactly one inserts, the others read its row.
pub async fn claim(
    pool: &PgPool,
    tenant: &str,
    key: &str,
    hash: &[u8],
    new: &Original,
    window: chrono::Duration,
) -> Result<Claim, sqlx::Error> {
    let expired_before = new.received_at - window;
    // Insert, or take over a binding whose window has passed; otherwise return nothing.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys
            (tenant_id, idempotency_key, job_id, request_hash, received_at, usages_count)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, idempotency_key) DO UPDATE
            SET job_id = EXCLUDED.job_id, request_hash = EXCLUDED.request_hash,
                received_at = EXCLUDED.received_at, usages_count = EXCLUDED.usages_count
            WHERE idempotency_keys.received_at < $7",
    )
    .bind(tenant)
    .bind(key)
    .bind(&new.job_id)
    .bind(hash)
    .bind(new.received_at)
    .bind(new.usages_count as i32)
    .bind(expired_before)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let (job_id, stored_hash, received_at, usages_count): (String, Vec<u8>, DateTime<Utc>, i32) = sqlx::query_as(
        "SELECT job_id, request_hash, received_at, usages_count FROM idempotency_keys
             WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(pool)
    .await?;
    if stored_hash != hash {
        return Ok(Claim::Mismatch);
    }
    Ok(Claim::Replay(Original { job_id, received_at, usages_count: usages_count as u32 }))
}

/// Deletes bindings older than the window; run periodically.
pub async fn prune(pool: &PgPool, window: chrono::Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE received_at < $1")
        .bind(Utc::now() - window)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SubsecRound;

    fn original(job: &str, at: DateTime<Utc>) -> Original {
        Original { job_id: job.into(), received_at: at, usages_count: 3 }
    }

    #[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
    async fn a_key_binds_once_per_tenant_and_window(pool: PgPool) {
        let window = chrono::Duration::days(35);
        let now = Utc::now().trunc_subsecs(3);
        let first = original("job-1", now);
        assert_eq!(claim(&pool, "acme", "k1", b"h", &first, window).await.unwrap(), Claim::New);
        // Same key, same body: the original answer, whatever job id the retry drew.
        let retry = original("job-2", now + chrono::Duration::seconds(5));
        let replay = claim(&pool, "acme", "k1", b"h", &retry, window).await.unwrap();
        assert_eq!(replay, Claim::Replay(first.clone()));
        // Same key, other body.
        assert_eq!(claim(&pool, "acme", "k1", b"other", &retry, window).await.unwrap(), Claim::Mismatch);
        // Keys are per tenant.
        assert_eq!(claim(&pool, "globex", "k1", b"h", &retry, window).await.unwrap(), Claim::New);
        // After the window the key is free again.
        let later = original("job-3", now + window + chrono::Duration::seconds(1));
        assert_eq!(claim(&pool, "acme", "k1", b"h", &later, window).await.unwrap(), Claim::New);
    }
}
