//! What names a KPI: written by the admin API, read by the monthly API, the same six columns and
//! properties in both (and in the answers of both).

use serde::Serialize;

/// A KPI's names, its unit and its owner. `displayName` defaults to `name` and
/// `applicationDisplayName` to `application`, so an answer always has something to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KpiNames {
    pub(crate) name: String,
    pub(crate) display_name: String,
    pub(crate) application: String,
    pub(crate) application_display_name: String,
    pub(crate) unit: String,
    pub(crate) owner_tenant_id: String,
}

/// The columns of [`KpiNames`] in the `kpis` table.
pub(crate) const NAME_COLUMNS: &str =
    "name, display_name, application, application_display_name, unit, owner_tenant_id";
