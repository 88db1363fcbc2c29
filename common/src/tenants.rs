//! The tenant directory: tenant types from PostgreSQL behind a short-lived in-process cache, so
//! the hot POST path does not query the database for every request.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::domain::TenantType;

/// How long a looked-up tenant type is trusted. Changes made through the admin API are seen by
/// every process within this time.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub tenant_type: TenantType,
    pub operator_tenant_id: Option<String>,
}

pub struct TenantDirectory {
    pool: PgPool,
    ttl: Duration,
    /// `None` caches "unknown tenant" too, so a flood of requests from an unregistered tenant
    /// does not reach the database.
    cache: RwLock<HashMap<String, (Option<Tenant>, Instant)>>,
}

impl TenantDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, cache: RwLock::new(HashMap::new()) }
    }

    /// The tenant, or `None` when it is not registered.
    pub async fn get(&self, tenant_id: &str) -> Result<Option<Tenant>, sqlx::Error> {
        if let Some((tenant, at)) = self.cache.read().expect("cache lock").get(tenant_id) {
            if at.elapsed() < self.ttl {
                return Ok(tenant.clone());
            }
        }
        let tenant = fetch(&self.pool, tenant_id).await?;
        let mut cache = self.cache.write().expect("cache lock");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(tenant_id.to_owned(), (tenant.clone(), Instant::now()));
        Ok(tenant)
    }
}

async fn fetch(pool: &PgPool, tenant_id: &str) -> Result<Option<Tenant>, sqlx::Error> {
    let row: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT tenant_id, tenant_type, operator_tenant_id FROM tenants WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(tenant_id, kind, operator_tenant_id)| {
        Some(Tenant { tenant_id, tenant_type: kind.parse().ok()?, operator_tenant_id })
    }))
}

/// Creates or updates a tenant (used by `utsctl tenant` and tests; the admin API is another
/// issue's work).
pub async fn upsert(pool: &PgPool, tenant: &Tenant) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenants (tenant_id, tenant_type, operator_tenant_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE
            SET tenant_type = EXCLUDED.tenant_type,
                operator_tenant_id = EXCLUDED.operator_tenant_id,
                updated_at = now()",
    )
    .bind(&tenant.tenant_id)
    .bind(tenant.tenant_type.as_str())
    .bind(&tenant.operator_tenant_id)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn lookups_see_upserts_after_the_ttl(pool: PgPool) {
        let directory = TenantDirectory::new(pool.clone(), Duration::from_millis(50));
        assert_eq!(directory.get("acme").await.unwrap(), None);
        let acme = Tenant { tenant_id: "acme".into(), tenant_type: TenantType::Operator, operator_tenant_id: None };
        upsert(&pool, &acme).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if directory.get("acme").await.unwrap().as_ref() == Some(&acme) {
                break;
            }
            assert!(Instant::now() < deadline, "the cache never saw the new tenant");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn an_iot_tenant_needs_its_operator(pool: PgPool) {
        let orphan = Tenant { tenant_id: "plant-7".into(), tenant_type: TenantType::Iot, operator_tenant_id: None };
        assert!(upsert(&pool, &orphan).await.is_err());
    }
}
