//! `GET /kpis`: the KPIs a caller may ask for (an extension, for the dashboard): those of its
//! own (as provider) and those of the providers whose KPIs it has usages under (as consumer).

use super::*;

/// One KPI the caller may query, and how.
#[derive(Serialize)]
struct KpiJson {
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
    role: &'static str,
}

#[derive(Serialize)]
pub(super) struct KpiList {
    kpis: Vec<KpiJson>,
    page: PageInfo,
}

/// `GET /kpis` (an extension of the original, for the dashboard): the KPIs the caller owns, and
/// those of providers for whose (application, unit) the caller has usages of its own. Nothing
/// else: a KPI of a provider the caller never used stays invisible.
pub(super) async fn list_kpis(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<KpiList>, ApiError> {
    let tenant = caller(&state, &headers).await?;
    let params = Params::parse(query, &["page", "size"])?;
    let paging = params.paging_or(20)?;
    type Row = (String, String, String, String, String, String, bool, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT k.owner_tenant_id, k.application, k.application_display_name, k.name, k.display_name, k.unit,
                k.owner_tenant_id = $1, count(*) OVER ()
         FROM kpis k
         WHERE k.owner_tenant_id = $1
            OR EXISTS (SELECT 1 FROM daily_aggregates d
                       WHERE d.provider_tenant_id = k.owner_tenant_id AND d.consumer_tenant_id = $1
                         AND d.application = k.application AND d.unit = k.unit)
         ORDER BY k.application, k.name, k.owner_tenant_id
         LIMIT $2 OFFSET $3",
    )
    .bind(&tenant)
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.pool)
    .await
    .map_err(storage_error)?;
    let total = match rows.first() {
        Some(row) => row.7,
        None if paging.page == 0 => 0,
        None => sqlx::query_scalar(
            "SELECT count(*) FROM kpis k WHERE k.owner_tenant_id = $1
                OR EXISTS (SELECT 1 FROM daily_aggregates d WHERE d.provider_tenant_id = k.owner_tenant_id
                           AND d.consumer_tenant_id = $1 AND d.application = k.application AND d.unit = k.unit)",
        )
        .bind(&tenant)
        .fetch_one(&state.pool)
        .await
        .map_err(storage_error)?,
    };
    let kpis = rows
        .into_iter()
        .map(|(provider, application, application_display_name, kpi_name, kpi_display_name, unit, own, _)| KpiJson {
            provider,
            application,
            application_display_name,
            kpi_name,
            kpi_display_name,
            unit,
            role: if own { "provider" } else { "consumer" },
        })
        .collect();
    Ok(Json(KpiList { kpis, page: paging.info(total) }))
}
