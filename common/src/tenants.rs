//! Tenants: the directory (tenant types from PostgreSQL behind a short-lived in-process cache,
//! so the hot POST path does not query the database for every request), and the one validated
//! tenant write ([`register`]) that the admin API's `PUT /tenants/{tenantId}` and
//! `utsctl tenant` share.
//!
//! A tenant is created or replaced as a whole. Two invariants span rows and are checked by
//! [`register`], under row locks, because the schema cannot: an IoT tenant's operator is an
//! operator tenant (so an operator with IoT tenants cannot change its type), and only IoT tenants
//! have provisioned applications (so an IoT tenant with provisioned applications cannot change
//! its type). Tenants are never deleted: rules, KPIs, aggregates and jobs refer to them.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::{name_problem, TenantType};

/// Longest tenant id (the `tenants.tenant_id` check).
pub const MAX_TENANT_ID_LEN: usize = 128;

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

/// What a tenant is registered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub tenant_type: TenantType,
    /// Present exactly for IoT tenants.
    pub operator_tenant_id: Option<String>,
    pub display_name: Option<String>,
}

/// A tenant's row, as [`register`] leaves it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantRow {
    pub tenant_id: String,
    pub tenant_type: String,
    pub operator_tenant_id: Option<String>,
    pub display_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a [`TenantRow`].
pub const TENANT_COLUMNS: &str = "tenant_id, tenant_type, operator_tenant_id, display_name, created_at, updated_at";

/// Whether [`register`] created the tenant or replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
}

/// Why a tenant write was refused; `property` is the API's name of what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TenantRefused {
    #[error("{property} {problem}")]
    Invalid { property: &'static str, problem: String },
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("tenant {0} kept changing concurrently; gave up after 3 attempts")]
    Contended(String),
    #[error("PostgreSQL: {0}")]
    Storage(#[from] sqlx::Error),
}

fn invalid(property: &'static str, problem: impl std::fmt::Display) -> TenantRefused {
    TenantRefused::Invalid { property, problem: problem.to_string() }
}

/// What can be checked without the database: the id's name rule, an operator exactly for IoT
/// tenants and never the tenant itself, the display name's name rule.
pub fn check(tenant_id: &str, spec: &TenantSpec) -> Result<(), TenantRefused> {
    if let Some(problem) = name_problem(tenant_id, MAX_TENANT_ID_LEN) {
        return Err(invalid("tenantId", problem));
    }
    match (spec.tenant_type, &spec.operator_tenant_id) {
        (TenantType::Iot, None) => return Err(TenantRefused::Missing("operatorTenantId")),
        (TenantType::Iot, Some(operator)) if operator == tenant_id => {
            return Err(invalid("operatorTenantId", "must not be the tenant itself"))
        }
        (TenantType::Iot, Some(operator)) => {
            if let Some(problem) = name_problem(operator, MAX_TENANT_ID_LEN) {
                return Err(invalid("operatorTenantId", problem));
            }
        }
        (_, None) => {}
        (kind, Some(_)) => {
            return Err(invalid(
                "operatorTenantId",
                format_args!("must be left out: only iot tenants have an operator, not {} tenants", kind.as_str()),
            ))
        }
    }
    if let Some(problem) = spec.display_name.as_deref().and_then(|name| name_problem(name, crate::domain::MAX_NAME_LEN))
    {
        return Err(invalid("displayName", problem));
    }
    Ok(())
}

/// Creates or replaces the tenant in one transaction, after [`check`] and the invariants that
/// span rows (see the module header).
pub async fn register(
    pool: &PgPool,
    tenant_id: &str,
    spec: &TenantSpec,
) -> Result<(TenantRow, Written), TenantRefused> {
    check(tenant_id, spec)?;
    // A concurrent create of the same new tenant makes our insert do nothing; the retry then
    // finds the row and replaces it.
    for _ in 0..3 {
        let mut tx = pool.begin().await?;
        // Lock the tenant and its operator in id order (no deadlock between two calls that lock
        // the same pair): a concurrent type change of the operator waits for us, or we see it.
        let mut ids = vec![tenant_id.to_owned()];
        ids.extend(spec.operator_tenant_id.clone());
        let locked: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant_id, tenant_type FROM tenants WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let type_of = |id: &str| locked.iter().find(|(locked_id, _)| locked_id == id).map(|(_, kind)| kind.as_str());

        if let Some(operator) = &spec.operator_tenant_id {
            match type_of(operator) {
                Some("operator") => {}
                Some(kind) => {
                    return Err(invalid(
                        "operatorTenantId",
                        format_args!("must name an operator tenant; {operator} is a {kind} tenant"),
                    ))
                }
                None => {
                    return Err(invalid("operatorTenantId", format_args!("names no registered tenant ({operator})")))
                }
            }
        }

        let (write, written) = match type_of(tenant_id) {
            Some(current) => {
                check_type_change(&mut tx, tenant_id, current, spec.tenant_type).await?;
                let update = "UPDATE tenants SET tenant_type = $2, operator_tenant_id = $3, display_name = $4,
                                updated_at = now() WHERE tenant_id = $1";
                (update, Written::Replaced)
            }
            None => {
                let insert = "INSERT INTO tenants (tenant_id, tenant_type, operator_tenant_id, display_name)
                              VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING";
                (insert, Written::Created)
            }
        };
        let row: Option<TenantRow> = sqlx::query_as(&format!("{write} RETURNING {TENANT_COLUMNS}"))
            .bind(tenant_id)
            .bind(spec.tenant_type.as_str())
            .bind(&spec.operator_tenant_id)
            .bind(&spec.display_name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(tenant) = row {
            tx.commit().await?;
            return Ok((tenant, written));
        }
    }
    Err(TenantRefused::Contended(tenant_id.to_owned()))
}

/// An operator with IoT tenants stays an operator; an IoT tenant with provisioned applications
/// stays an IoT tenant. The tenant's row is locked, so neither list can grow meanwhile.
async fn check_type_change(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    current: &str,
    new: TenantType,
) -> Result<(), TenantRefused> {
    let (dependants, problem, remedy) = match current {
        "operator" if new != TenantType::Operator => (
            "SELECT tenant_id FROM tenants WHERE operator_tenant_id = $1 ORDER BY tenant_id LIMIT 5",
            "cannot change from operator while it operates IoT tenants",
            "move them to another operator first",
        ),
        "iot" if new != TenantType::Iot => (
            "SELECT application FROM provisioning WHERE tenant_id = $1 ORDER BY application LIMIT 5",
            "cannot change from iot while applications are provisioned to it",
            "remove them first",
        ),
        _ => return Ok(()),
    };
    let found: Vec<String> = sqlx::query_scalar(dependants).bind(tenant_id).fetch_all(&mut **tx).await?;
    if !found.is_empty() {
        return Err(invalid("tenantType", format_args!("{problem} ({}); {remedy}", found.join(", "))));
    }
    Ok(())
}

/// Creates or updates a tenant without the checks of [`register`]: test fixtures only.
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
