//! What the verifier checks against: rules, tenants and provisioning, loaded from PostgreSQL as
//! one consistent snapshot and refreshed every few seconds, so changes made through the admin
//! API take effect without a restart.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::PgPool;
use uts_common::domain::{AggregationFunction, TenantType, UserType};

/// A rule for one (application, unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub rule_id: String,
    pub owner_tenant_id: String,
    pub active: bool,
    pub function: AggregationFunction,
    pub billing_enabled: bool,
    pub min_value: Option<Decimal>,
    pub max_value: Option<Decimal>,
    pub integers_only: bool,
    /// `None`: every user type.
    pub allowed_user_types: Option<Vec<UserType>>,
    pub max_age_days: Option<i32>,
    pub max_future_minutes: Option<i32>,
    pub version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    pub tenant_type: TenantType,
    pub operator_tenant_id: Option<String>,
}

/// A snapshot of everything verification reads.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub rules: HashMap<(String, String), Rule>,
    pub tenants: HashMap<String, TenantInfo>,
    pub provisioned: HashSet<(String, String)>,
}

impl Catalog {
    /// The active rule for (application, unit), if any.
    pub fn rule(&self, application: &str, unit: &str) -> Option<&Rule> {
        self.rules.get(&(application.to_owned(), unit.to_owned())).filter(|rule| rule.active)
    }

    /// May `submitter` report usages of `tenant` for `application`? Its own, or those of an IoT
    /// tenant it operates with the application provisioned (DESIGN.md §3).
    pub fn may_report_for(&self, submitter: &str, tenant: &str, application: &str) -> bool {
        if submitter == tenant {
            return true;
        }
        let operated = self.tenants.get(tenant).is_some_and(|info| {
            info.tenant_type == TenantType::Iot && info.operator_tenant_id.as_deref() == Some(submitter)
        });
        operated && self.provisioned.contains(&(tenant.to_owned(), application.to_owned()))
    }

    /// Loads a snapshot in one read-only transaction.
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        type RuleRow = (
            String,
            String,
            String,
            String,
            bool,
            String,
            bool,
            Option<String>,
            Option<String>,
            bool,
            Option<Vec<String>>,
            Option<i32>,
            Option<i32>,
            i32,
        );
        let rows: Vec<RuleRow> = sqlx::query_as(
            "SELECT rule_id::text, application, unit, owner_tenant_id, active, aggregation_function,
                    billing_enabled, min_value::text, max_value::text, integers_only,
                    allowed_user_types, max_age_days, max_future_minutes, version
             FROM rules",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut rules = HashMap::with_capacity(rows.len());
        for row in rows {
            let (
                rule_id,
                application,
                unit,
                owner,
                active,
                function,
                billing,
                min,
                max,
                integers,
                types,
                age,
                future,
                version,
            ) = row;
            let rule = Rule {
                rule_id,
                owner_tenant_id: owner,
                active,
                function: function.parse().unwrap_or_default(),
                billing_enabled: billing,
                min_value: min.as_deref().and_then(|v| Decimal::from_str(v).ok()),
                max_value: max.as_deref().and_then(|v| Decimal::from_str(v).ok()),
                integers_only: integers,
                allowed_user_types: types.map(|list| list.iter().filter_map(|t| t.parse().ok()).collect()),
                max_age_days: age,
                max_future_minutes: future,
                version,
            };
            rules.insert((application, unit), rule);
        }
        let tenant_rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT tenant_id, tenant_type, operator_tenant_id FROM tenants")
                .fetch_all(&mut *tx)
                .await?;
        let tenants = tenant_rows
            .into_iter()
            .filter_map(|(id, kind, operator)| {
                Some((id, TenantInfo { tenant_type: kind.parse().ok()?, operator_tenant_id: operator }))
            })
            .collect();
        let provisioned = sqlx::query_as::<_, (String, String)>("SELECT tenant_id, application FROM provisioning")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        tx.commit().await?;
        Ok(Self { rules, tenants, provisioned })
    }
}
