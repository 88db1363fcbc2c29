//! The monthly KPI endpoints over HTTP against the real PostgreSQL, on daily aggregates written
//! as the aggregator writes them.

use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgPool;
use uts_common::auth::mint_hs256;
use uts_common::domain::TenantType;
use uts_common::tenants::{self, Tenant};

use crate::support::{error_of, text, TestQueryService, SECRET};

async fn bucket(pool: &PgPool, consumer: &str, day: &str, values: &[&str]) {
    let values: Vec<Decimal> = values.iter().map(|v| v.parse().unwrap()).collect();
    let sum: Decimal = values.iter().sum();
    let (min, max) = (values.iter().min().unwrap(), values.iter().max().unwrap());
    sqlx::query(
        "INSERT INTO daily_aggregates (provider_tenant_id, consumer_tenant_id, application, unit, day, function, value,
            usages_count, sum_value, min_value, max_value, last_value, last_at, last_job_id, last_index, billable, rule_id, version)
         VALUES ('prov', $1, 'assetmonitor', 'asset', $2::date, 'SUM', $3, $4, $3, $5, $6, $7, now(), 'job', 0, false, '', 1)",
    )
    .bind(consumer)
    .bind(day)
    .bind(sum)
    .bind(values.len() as i64)
    .bind(min)
    .bind(max)
    .bind(values.last().unwrap())
    .execute(pool)
    .await
    .unwrap();
}

/// A KPI of provider `prov` on (assetmonitor, asset): [daily, monthly, preFill] and the factor.
async fn kpi(pool: &PgPool, name: &str, display_name: &str, [daily, monthly, pre_fill]: [&str; 3], factor: i32) {
    sqlx::query(
        "INSERT INTO kpis (name, display_name, application, application_display_name, unit, owner_tenant_id,
                           aggregation_function_daily, aggregation_function_monthly, pre_fill, unit_conversion_factor)
         VALUES ($1, $2, 'assetmonitor', 'Asset Monitor', 'asset', 'prov', $3, $4, $5, $6)",
    )
    .bind(name)
    .bind(display_name)
    .bind(daily)
    .bind(monthly)
    .bind(pre_fill)
    .bind(Decimal::from(factor))
    .execute(pool)
    .await
    .unwrap();
}

async fn send(service: &TestQueryService, tenant: &str, path: &str) -> reqwest::Response {
    let token = mint_hs256(SECRET, tenant, "", &["uts.aggregates.read"], 600).unwrap();
    service.client.get(service.api(path)).bearer_auth(token).send().await.unwrap()
}

async fn get(service: &TestQueryService, tenant: &str, path: &str) -> (StatusCode, Value) {
    let response = send(service, tenant, path).await;
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn monthly_values_follow_the_kpi_and_stay_with_their_tenants(pool: PgPool) {
    for (id, kind) in [("prov", TenantType::Developer), ("other-prov", TenantType::Developer)] {
        tenants::upsert(&pool, &Tenant { tenant_id: id.into(), tenant_type: kind, operator_tenant_id: None })
            .await
            .unwrap();
    }
    kpi(&pool, "asset-count", "asset count", ["MAX", "AVG", "ZERO"], 2).await;
    // bmw: day maxima 3 and 5 in January 2021 (31 days); audi: one day with max 31.
    bucket(&pool, "bmw", "2021-01-02", &["1", "3"]).await;
    bucket(&pool, "bmw", "2021-01-20", &["5"]).await;
    bucket(&pool, "audi", "2021-01-31", &["31", "2"]).await;
    bucket(&pool, "bmw", "2021-02-01", &["1000"]).await; // another month
    let service = TestQueryService::start(pool).await;

    // AVG over 31 days of the daily MAX, missing days as 0, times the factor 2.
    let expected = |sum: &str| (sum.parse::<Decimal>().unwrap() / Decimal::from(31) * Decimal::from(2)).normalize();
    let (status, body) = get(&service, "bmw", "/aggregatedMonthlyConsumerUsage?month=january&year=2021&provider=prov&application=assetmonitor&KPIName=asset-count").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"].to_string().parse::<Decimal>().unwrap(), expected("8"));
    assert_eq!(body["consumer"], "bmw");
    assert_eq!(body["aggregationUntilDate"], "2021-01-31");
    assert_eq!((body["year"].as_str(), body["month"].as_str()), (Some("2021"), Some("january")));
    assert_eq!(
        body["aggragationFunction"],
        json!({"aggregationFunctionDaily": "MAX", "aggregationFunctionMonthly": "AVG", "preFill": "ZERO"})
    );
    assert_eq!((body["KPIName"].as_str(), body["KPIDisplayName"].as_str()), (Some("asset-count"), Some("asset count")));

    assert!(body.get("dailyValues").is_none(), "the original's shape unless asked");

    // The days behind the value, converted like it: MAX of each day times 2, missing days 0.
    let (_, body) = get(&service, "bmw", "/aggregatedMonthlyConsumerUsage?month=1&year=2021&provider=prov&application=assetmonitor&KPIName=asset-count&includeDailyValues=true").await;
    let days = body["dailyValues"].as_array().unwrap();
    assert_eq!(days.len(), 31);
    assert_eq!(days[0], json!({"date": "2021-01-01", "value": 0}));
    assert_eq!(days[1], json!({"date": "2021-01-02", "value": 6}));
    assert_eq!(days[19], json!({"date": "2021-01-20", "value": 10}));
    let total: Decimal = days.iter().map(|d| d["value"].to_string().parse::<Decimal>().unwrap()).sum();
    assert_eq!(total, Decimal::from(16));
    let (status, body) = get(&service, "bmw", "/aggregatedMonthlyConsumerUsage?month=1&year=2021&provider=prov&application=assetmonitor&KPIName=asset-count&includeDailyValues=yes").await;
    assert_eq!(
        (status, body["errors"][0]["messageParameters"][0]["value"].as_str()),
        (StatusCode::BAD_REQUEST, Some("includeDailyValues")),
        "{body}"
    );

    // The same month by number; audi sees only its own value.
    let (_, audi) = get(
        &service,
        "audi",
        "/aggregatedMonthlyConsumerUsage?month=01&year=2021&provider=prov&application=assetmonitor&KPIName=asset-count",
    )
    .await;
    assert_eq!(audi["value"].to_string().parse::<Decimal>().unwrap(), expected("31"));

    // The provider sees every consumer, paged.
    let (status, body) = get(
        &service,
        "prov",
        "/aggregatedMonthlyProviderUsage?month=1&year=2021&application=assetmonitor&KPIName=asset-count&size=1",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["aggregatedUsages"][0]["consumer"], "audi");
    assert_eq!(body["page"], json!({"number": 0, "size": 1, "totalElements": 2, "totalPages": 2}));
    let (_, bmw_only) = get(
        &service,
        "prov",
        "/aggregatedMonthlyProviderUsage?month=1&year=2021&consumer=bmw&application=assetmonitor&KPIName=asset-count",
    )
    .await;
    assert_eq!(bmw_only["aggregatedUsages"].as_array().unwrap().len(), 1);
    let (_, audi_days) = get(&service, "prov", "/aggregatedMonthlyProviderUsage?month=1&year=2021&consumer=audi&application=assetmonitor&KPIName=asset-count&includeDailyValues=true").await;
    assert_eq!(audi_days["aggregatedUsages"][0]["dailyValues"][30], json!({"date": "2021-01-31", "value": 62}));

    // Another provider cannot read prov's KPI; a consumer naming the wrong provider gets nothing.
    let (status, _) = get(
        &service,
        "other-prov",
        "/aggregatedMonthlyProviderUsage?month=1&year=2021&application=assetmonitor&KPIName=asset-count",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&service, "bmw", "/aggregatedMonthlyConsumerUsage?month=1&year=2021&provider=other-prov&application=assetmonitor&KPIName=asset-count").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The KPIs each caller may ask for: its own, and its providers' for what it used.
    sqlx::query(
        "INSERT INTO kpis (name, display_name, application, application_display_name, unit, owner_tenant_id)
         VALUES ('other-kpi', 'other', 'assetmonitor', 'Asset Monitor', 'asset', 'other-prov')",
    )
    .execute(&service.pool)
    .await
    .unwrap();
    let kpis = |body: Value| -> Vec<(String, String, String)> {
        body["kpis"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (text(k, "provider"), text(k, "KPIName"), text(k, "role")))
            .collect()
    };
    let (status, body) = get(&service, "bmw", "/kpis").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kpis"][0]["KPIDisplayName"], "asset count");
    assert_eq!(kpis(body), vec![("prov".to_owned(), "asset-count".to_owned(), "consumer".to_owned())]);
    let (_, body) = get(&service, "prov", "/kpis").await;
    assert_eq!(kpis(body), vec![("prov".to_owned(), "asset-count".to_owned(), "provider".to_owned())]);
    let (_, body) = get(&service, "other-prov", "/kpis").await;
    assert_eq!(kpis(body), vec![("other-prov".to_owned(), "other-kpi".to_owned(), "provider".to_owned())]);
    let (_, body) = get(&service, "stranger", "/kpis?page=3").await;
    assert_eq!(body["page"], json!({"number": 3, "size": 20, "totalElements": 0, "totalPages": 0}));

    // Parameters are checked and named.
    let monthly = "/aggregatedMonthlyConsumerUsage?year=2021&provider=prov&application=assetmonitor";
    let error = error_of(send(&service, "bmw", &format!("{monthly}&month=1")).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::BAD_REQUEST, "missingParameter"));
    assert!(error.message.starts_with("KPIName"), "{error:?}");
    let path = format!("{monthly}&month=13&KPIName=asset-count");
    let error = error_of(send(&service, "bmw", &path).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::BAD_REQUEST, "invalidParameter"));
    service.stop().await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_month_beyond_the_exact_range_is_answered_422_for_provider_and_consumer(pool: PgPool) {
    tenants::upsert(
        &pool,
        &Tenant { tenant_id: "prov".into(), tenant_type: TenantType::Developer, operator_tenant_id: None },
    )
    .await
    .unwrap();
    kpi(&pool, "assets", "assets", ["SUM", "SUM", "NONE"], 1).await;
    // Each day's bucket is in range (the largest decimal); their sum is not.
    let max = "79228162514264337593543950335";
    bucket(&pool, "greedy", "2021-01-01", &[max]).await;
    bucket(&pool, "greedy", "2021-01-02", &[max]).await;
    bucket(&pool, "modest", "2021-01-01", &["7"]).await;
    let service = TestQueryService::start(pool).await;
    let month = "month=1&year=2021&application=assetmonitor&KPIName=assets";

    for (tenant, path) in [
        ("greedy", format!("/aggregatedMonthlyConsumerUsage?{month}&provider=prov")),
        ("prov", format!("/aggregatedMonthlyProviderUsage?{month}")),
        ("prov", format!("/aggregatedMonthlyProviderUsage?{month}&consumer=greedy&includeDailyValues=true")),
    ] {
        let (status, body) = get(&service, tenant, &path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        let error = &body["errors"][0];
        assert_eq!(error["code"], "mdsp.core.generic.valueOutOfRange", "{body}");
        assert!(error["message"].as_str().unwrap().contains("greedy"), "{body}");
        assert_eq!(error["messageParameters"][0]["value"], "greedy", "{body}");
    }
    // A tenant that never used the KPI's unit cannot tell it exists: the same 404 as for a
    // KPI that does not.
    let (status, unknown) = get(
        &service,
        "stranger",
        "/aggregatedMonthlyConsumerUsage?month=1&year=2021&application=assetmonitor&KPIName=nothing&provider=prov",
    )
    .await;
    let (status_existing, existing) =
        get(&service, "stranger", &format!("/aggregatedMonthlyConsumerUsage?{month}&provider=prov")).await;
    assert_eq!((status, status_existing), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(
        existing["errors"][0]["message"].as_str().unwrap().replace("assets", "nothing"),
        unknown["errors"][0]["message"].as_str().unwrap()
    );
    // The other consumer's month still answers, and the service is still up.
    let (status, body) =
        get(&service, "prov", &format!("/aggregatedMonthlyProviderUsage?{month}&consumer=modest")).await;
    assert_eq!((status, body["aggregatedUsages"][0]["value"].as_i64()), (StatusCode::OK, Some(7)), "{body}");
    let (status, body) =
        get(&service, "modest", &format!("/aggregatedMonthlyConsumerUsage?{month}&provider=prov")).await;
    assert_eq!((status, body["value"].as_i64()), (StatusCode::OK, Some(7)), "{body}");
}
