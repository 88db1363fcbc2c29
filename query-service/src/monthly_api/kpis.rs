//! `GET /kpis`: the KPIs a caller may ask for (an extension, for the dashboard): those of its
//! own (as provider) and those of the providers whose KPIs it has usages under (as consumer).

use super::*;
use crate::request::{Listing, Page};

/// One KPI the caller may query, and how.
#[derive(Serialize, sqlx::FromRow)]
pub(super) struct KpiJson {
    provider: String,
    application: String,
    #[serde(rename = "applicationDisplayName")]
    application_display_name: String,
    #[serde(rename = "KPIName")]
    kpi_name: String,
    #[serde(rename = "KPIDisplayName")]
    kpi_display_name: String,
    unit: String,
    /// `provider`: ask `/aggregatedMonthlyProviderUsage`; `consumer`: ask
    /// `/aggregatedMonthlyConsumerUsage` naming the provider.
    role: String,
}

/// `GET /kpis` (an extension of the original, for the dashboard): the KPIs the caller owns, and
/// those of providers for whose (application, unit) the caller has usages of its own. Nothing
/// else: a KPI of a provider the caller never used stays invisible.
pub(super) async fn list_kpis(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<KpiJson>>, ApiError> {
    let tenant = authorize(&state, &headers, Scope::AggregatesRead).await?;
    let params = Params::parse(query, &["page", "size"])?;
    let paging = params.paging_or(20)?;
    let listing = Listing::new(
        "kpis k
         WHERE k.owner_tenant_id = $1
            OR EXISTS (SELECT 1 FROM daily_aggregates d
                       WHERE d.provider_tenant_id = k.owner_tenant_id AND d.consumer_tenant_id = $1
                         AND d.application = k.application AND d.unit = k.unit)",
    )
    .bind(&tenant);
    let columns = "k.owner_tenant_id AS provider, k.application, k.application_display_name, k.name AS kpi_name,
                   k.display_name AS kpi_display_name, k.unit,
                   CASE WHEN k.owner_tenant_id = $1 THEN 'provider' ELSE 'consumer' END AS role";
    let order = "k.application, k.name, k.owner_tenant_id";
    let (kpis, total) = listing.fetch_page(&state.pool, columns, order, paging).await?;
    Ok(Json(Page::new("kpis", kpis, paging.info(total))))
}
