//! The admin API end to end over HTTP, against the real PostgreSQL.

use crate::support::{error_of, ErrorAnswer, TestQueryService};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

/// POSTs `body` to `path` and expects 201 with the new resource's `Location`; its id (the
/// `id_property`) and its body.
async fn create(service: &TestQueryService, path: &str, body: Value, id_property: &str) -> (String, Value) {
    let response = service.call(Method::POST, path, Some(body)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created[id_property].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/usagetransparency/v3/admin{path}/{id}"));
    (id, created)
}

/// `base` with `key` set to `value`.
fn changed(base: &Value, key: &str, value: Value) -> Value {
    let mut body = base.clone();
    body[key] = value;
    body
}

/// Each of `cases` (body, error code, the field it must name) sent to `path` is refused with 400
/// naming that field.
async fn assert_refusals<const N: usize>(
    service: &TestQueryService,
    method: Method,
    path: &str,
    cases: [(Value, &str, &str); N],
) {
    for (body, code, name) in cases {
        let error = error_of(service.call(method.clone(), path, Some(body)).await).await;
        assert_names(&error, code, name);
    }
}

/// Expects a 400 with `code` naming `name`, the message starting with `name`.
#[track_caller]
fn assert_names(error: &ErrorAnswer, code: &str, name: &str) {
    assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error:?}");
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(error.names.as_deref(), Some(name), "{error:?}");
    assert!(error.message.starts_with(name), "{error:?}");
}

/// 409 `conflict` naming the property that collides with an existing resource.
fn assert_conflict(error: &ErrorAnswer, name: &str) {
    assert_eq!(error.status, StatusCode::CONFLICT, "{error:?}");
    assert_eq!(error.code, "conflict", "{error:?}");
    assert_eq!(error.names.as_deref(), Some(name), "{error:?}");
    assert!(error.message.starts_with(name), "{error:?}");
}

fn rule(application: &str, unit: &str, owner: &str) -> Value {
    json!({"application": application, "unit": unit, "ownerTenantId": owner})
}

fn kpi(name: &str, application: &str, owner: &str) -> Value {
    json!({"name": name, "application": application, "unit": "asset", "ownerTenantId": owner})
}

// ---------------------------------------------------------------------------------------------
// Tenants and provisioning

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn tenants_are_created_replaced_read_and_listed(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    let created = service
        .expect(Method::PUT, "/tenants/acme", Some(json!({"tenantType": "operator"})), StatusCode::CREATED)
        .await;
    assert_eq!(created["tenantId"], "acme");
    assert_eq!(created["tenantType"], "operator");
    assert_eq!(created["operatorTenantId"], Value::Null);
    assert_eq!(created["displayName"], Value::Null);
    let created_at = created["createdAt"].as_str().unwrap().to_owned();
    assert!(created_at.ends_with('Z') && created_at.len() == 24, "{created_at}");

    let replaced = service
        .expect(
            Method::PUT,
            "/tenants/acme",
            Some(json!({"tenantType": "operator", "displayName": "ACME Corp"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(replaced["displayName"], "ACME Corp");
    assert_eq!(replaced["createdAt"], created_at.as_str(), "replacing keeps the creation time");
    assert!(replaced["updatedAt"].as_str().unwrap() >= created_at.as_str());

    let fetched = service.expect(Method::GET, "/tenants/acme", None, StatusCode::OK).await;
    assert_eq!(fetched, replaced);
    // What GET answered can be sent back as it is.
    service.expect(Method::PUT, "/tenants/acme", Some(fetched), StatusCode::OK).await;

    service.tenant("devco", "developer", None).await;
    let list = service.expect(Method::GET, "/tenants", None, StatusCode::OK).await;
    let ids: Vec<&str> = list["tenants"].as_array().unwrap().iter().map(|t| t["tenantId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme", "devco"]);
    assert_eq!(list["page"], json!({"number": 0, "size": 20, "totalElements": 2, "totalPages": 1}));
    let developers = service.expect(Method::GET, "/tenants?type=developer", None, StatusCode::OK).await;
    assert_eq!(developers["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(developers["tenants"][0]["tenantId"], "devco");

    let unknown = error_of(service.call(Method::GET, "/tenants/nobody", None).await).await;
    assert_eq!((unknown.status, unknown.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    assert!(unknown.message.contains("nobody"), "{unknown:?}");
    service.stop().await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn concurrent_creates_of_one_tenant_answer_one_201(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    for round in 0..10 {
        let path = format!("/tenants/racer-{round}");
        let put = |kind: &str| service.call(Method::PUT, &path, Some(json!({"tenantType": kind})));
        let (first, second) = tokio::join!(put("developer"), put("operator"));
        let mut statuses = [first.status(), second.status()];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED], "{path}");
    }
    let list = service.expect(Method::GET, "/tenants?size=100", None, StatusCode::OK).await;
    assert_eq!(list["page"]["totalElements"], 10);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn tenant_validation_names_the_field(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    let cases = [
        (json!({}), "missingRequestBodyProperty", "tenantType"),
        (json!({"tenantType": "partner"}), "invalidRequestBodyProperty", "tenantType"),
        (json!({"tenantType": "developer", "displayName": 42}), "invalidRequestBodyProperty", "displayName"),
        (
            json!({"tenantType": "developer", "operatorTenantId": "acme"}),
            "invalidRequestBodyProperty",
            "operatorTenantId",
        ),
        (json!({"tenantType": "developer", "tenantId": "someone-else"}), "invalidRequestBodyProperty", "tenantId"),
        (json!({"tenantType": "developer", "colour": "red"}), "invalidRequestBodyProperty", "colour"),
    ];
    assert_refusals(&service, Method::PUT, "/tenants/t1", cases).await;
    let too_long = format!("/tenants/{}", "x".repeat(129));
    let error = error_of(service.call(Method::PUT, &too_long, Some(json!({"tenantType": "developer"}))).await).await;
    assert_names(&error, "invalidParameter", "tenantId");
    // Nothing was written.
    let list = service.expect(Method::GET, "/tenants", None, StatusCode::OK).await;
    assert_eq!(list["page"]["totalElements"], 0);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn an_iot_tenant_needs_an_operator_tenant(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    service.tenant("devco", "developer", None).await;
    let iot = |operator: Option<&str>| {
        let mut body = json!({"tenantType": "iot"});
        if let Some(operator) = operator {
            body["operatorTenantId"] = operator.into();
        }
        Some(body)
    };

    let error = error_of(service.call(Method::PUT, "/tenants/plant-1", iot(None)).await).await;
    assert_names(&error, "missingRequestBodyProperty", "operatorTenantId");
    let error = error_of(service.call(Method::PUT, "/tenants/plant-1", iot(Some("nobody"))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "operatorTenantId");
    assert!(error.message.contains("nobody"), "{error:?}");
    let error = error_of(service.call(Method::PUT, "/tenants/plant-1", iot(Some("devco"))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "operatorTenantId");
    assert!(error.message.contains("developer"), "{error:?}");
    let error = error_of(service.call(Method::PUT, "/tenants/plant-1", iot(Some("plant-1"))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "operatorTenantId");

    let plant = service.expect(Method::PUT, "/tenants/plant-1", iot(Some("acme")), StatusCode::CREATED).await;
    assert_eq!(plant["operatorTenantId"], "acme");

    // The operator of an IoT tenant stays an operator...
    let error =
        error_of(service.call(Method::PUT, "/tenants/acme", Some(json!({"tenantType": "developer"}))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "tenantType");
    assert!(error.message.contains("plant-1"), "{error:?}");
    // ...until its IoT tenant has moved to another operator.
    service.tenant("globex", "operator", None).await;
    service.expect(Method::PUT, "/tenants/plant-1", iot(Some("globex")), StatusCode::OK).await;
    let acme =
        service.expect(Method::PUT, "/tenants/acme", Some(json!({"tenantType": "developer"})), StatusCode::OK).await;
    assert_eq!(acme["tenantType"], "developer");
    // An IoT tenant may become another kind (without provisioned applications); it then loses
    // its operator.
    let plant =
        service.expect(Method::PUT, "/tenants/plant-1", Some(json!({"tenantType": "customer"})), StatusCode::OK).await;
    assert_eq!(plant["operatorTenantId"], Value::Null);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn applications_are_provisioned_only_to_iot_tenants(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    service.tenant("plant-1", "iot", Some("acme")).await;

    let error = error_of(service.call(Method::PUT, "/tenants/acme/applications/app", None).await).await;
    assert_names(&error, "invalidParameter", "tenantId");
    assert!(error.message.contains("operator tenant"), "{error:?}");
    let error = error_of(service.call(Method::PUT, "/tenants/nobody/applications/app", None).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    let error = error_of(service.call(Method::GET, "/tenants/nobody/applications", None).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    let long_application = format!("/tenants/plant-1/applications/{}", "a".repeat(257));
    let error = error_of(service.call(Method::PUT, &long_application, None).await).await;
    assert_names(&error, "invalidParameter", "application");

    let first = service.expect(Method::PUT, "/tenants/plant-1/applications/monitor", None, StatusCode::CREATED).await;
    assert_eq!(first["tenantId"], "plant-1");
    assert_eq!(first["application"], "monitor");
    let again = service.expect(Method::PUT, "/tenants/plant-1/applications/monitor", None, StatusCode::OK).await;
    assert_eq!(again, first, "provisioning twice changes nothing");
    service.expect(Method::PUT, "/tenants/plant-1/applications/analytics", None, StatusCode::CREATED).await;
    let listed = service.expect(Method::GET, "/tenants/plant-1/applications", None, StatusCode::OK).await;
    let names: Vec<&str> =
        listed["applications"].as_array().unwrap().iter().map(|a| a["application"].as_str().unwrap()).collect();
    assert_eq!(names, ["analytics", "monitor"]);
    let none = service.expect(Method::GET, "/tenants/acme/applications", None, StatusCode::OK).await;
    assert_eq!(none, json!({"applications": []}));

    // An IoT tenant with provisioned applications stays an IoT tenant.
    let error =
        error_of(service.call(Method::PUT, "/tenants/plant-1", Some(json!({"tenantType": "customer"}))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "tenantType");
    assert!(error.message.contains("analytics, monitor"), "{error:?}");

    service.expect(Method::DELETE, "/tenants/plant-1/applications/monitor", None, StatusCode::NO_CONTENT).await;
    let error = error_of(service.call(Method::DELETE, "/tenants/plant-1/applications/monitor", None).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    let listed = service.expect(Method::GET, "/tenants/plant-1/applications", None, StatusCode::OK).await;
    assert_eq!(listed["applications"].as_array().unwrap().len(), 1);
    // What the verifier reads.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, application FROM provisioning").fetch_all(&service.pool).await.unwrap();
    assert_eq!(rows, [("plant-1".to_owned(), "analytics".to_owned())]);
}

// ---------------------------------------------------------------------------------------------
// Rules

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_rule_round_trip_keeps_exact_values_and_counts_versions(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    service.tenant("globex", "operator", None).await;

    let (id, created) = create(&service, "/rules", rule("monitor", "kWh", "acme"), "ruleId").await;
    let defaults = json!({
        "ruleId": id, "application": "monitor", "unit": "kWh", "ownerTenantId": "acme", "active": true,
        "aggregationFunction": "SUM", "billingEnabled": false, "minValue": null, "maxValue": null,
        "integersOnly": false, "allowedUserTypes": null, "maxAgeDays": null, "maxFutureMinutes": null,
        "version": 1, "createdAt": created["createdAt"], "updatedAt": created["updatedAt"],
    });
    assert_eq!(created, defaults);
    let fetched = service.expect(Method::GET, &format!("/rules/{id}"), None, StatusCode::OK).await;
    assert_eq!(fetched, created);

    // A full update; numbers keep their exact text, numbers or strings alike.
    let update = r#"{"application":"monitor","unit":"kWh","ownerTenantId":"globex","active":false,
        "aggregationFunction":"MAX","billingEnabled":true,"minValue":0.10,"maxValue":"12345678901234567890.123456789",
        "integersOnly":true,"allowedUserTypes":["user","agent"],"maxAgeDays":35,"maxFutureMinutes":0}"#;
    let response = service
        .client
        .put(service.url(&format!("/rules/{id}")))
        .bearer_auth(&service.admin)
        .header("content-type", "application/json")
        .body(update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["ownerTenantId"], "globex");
    assert_eq!(updated["active"], false);
    assert_eq!(updated["aggregationFunction"], "MAX");
    assert_eq!(updated["billingEnabled"], true);
    assert_eq!(updated["minValue"], "0.10");
    assert_eq!(updated["maxValue"], "12345678901234567890.123456789");
    assert_eq!(updated["integersOnly"], true);
    assert_eq!(updated["allowedUserTypes"], json!(["user", "agent"]));
    assert_eq!((updated["maxAgeDays"].clone(), updated["maxFutureMinutes"].clone()), (json!(35), json!(0)));
    assert_eq!(updated["createdAt"], created["createdAt"]);
    assert!(updated["updatedAt"].as_str().unwrap() >= created["updatedAt"].as_str().unwrap());

    // Every update counts, and left-out properties return to their defaults (a full update).
    let reset = service
        .expect(Method::PUT, &format!("/rules/{id}"), Some(rule("monitor", "kWh", "acme")), StatusCode::OK)
        .await;
    assert_eq!(reset["version"], 3);
    assert_eq!(reset["minValue"], Value::Null);
    assert_eq!(reset["allowedUserTypes"], Value::Null);
    assert_eq!(reset["active"], true);
    // What GET answered can be sent back as it is.
    let fetched = service.expect(Method::GET, &format!("/rules/{id}"), None, StatusCode::OK).await;
    let again = service.expect(Method::PUT, &format!("/rules/{id}"), Some(fetched), StatusCode::OK).await;
    assert_eq!(again["version"], 4);
    // The verifier reads the stored numeric exactly.
    let (version, max): (i32, Option<String>) =
        sqlx::query_as("SELECT version, max_value::text FROM rules WHERE rule_id = $1::uuid")
            .bind(&id)
            .fetch_one(&service.pool)
            .await
            .unwrap();
    assert_eq!((version, max), (4, None));

    service.expect(Method::DELETE, &format!("/rules/{id}"), None, StatusCode::NO_CONTENT).await;
    for method in [Method::GET, Method::DELETE] {
        let error = error_of(service.call(method, &format!("/rules/{id}"), None).await).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    }
    let error = error_of(service.call(Method::PUT, &format!("/rules/{id}"), Some(rule("m", "u", "acme"))).await).await;
    assert_eq!(error.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_second_rule_for_the_same_application_and_unit_is_a_conflict_naming_unit(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let first = service.expect(Method::POST, "/rules", Some(rule("monitor", "kWh", "acme")), StatusCode::CREATED).await;
    let error = error_of(service.call(Method::POST, "/rules", Some(rule("monitor", "kWh", "acme"))).await).await;
    assert_conflict(&error, "unit");
    assert!(error.message.contains(first["ruleId"].as_str().unwrap()), "names the existing rule: {error:?}");

    // The same through an update that moves another rule onto (monitor, kWh).
    let second =
        service.expect(Method::POST, "/rules", Some(rule("monitor", "MWh", "acme")), StatusCode::CREATED).await;
    let path = format!("/rules/{}", second["ruleId"].as_str().unwrap());
    let error = error_of(service.call(Method::PUT, &path, Some(rule("monitor", "kWh", "acme"))).await).await;
    assert_conflict(&error, "unit");
    let unchanged = service.expect(Method::GET, &path, None, StatusCode::OK).await;
    assert_eq!((unchanged["unit"].clone(), unchanged["version"].clone()), (json!("MWh"), json!(1)));
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn rule_validation_names_the_field(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let base = rule("monitor", "kWh", "acme");
    let with = |key: &str, value: Value| changed(&base, key, value);
    let cases = [
        (json!({"unit": "kWh", "ownerTenantId": "acme"}), "missingRequestBodyProperty", "application"),
        (json!({"application": "monitor", "ownerTenantId": "acme"}), "missingRequestBodyProperty", "unit"),
        (with("ownerTenantId", json!("nobody")), "invalidRequestBodyProperty", "ownerTenantId"),
        (with("aggregationFunction", json!("MEDIAN")), "invalidRequestBodyProperty", "aggregationFunction"),
        (with("billingEnabled", json!("true")), "invalidRequestBodyProperty", "billingEnabled"),
        (with("minValue", json!("one")), "invalidRequestBodyProperty", "minValue"),
        (
            json!({"application": "m", "unit": "u", "ownerTenantId": "acme", "minValue": 5, "maxValue": "4.99"}),
            "invalidRequestBodyProperty",
            "maxValue",
        ),
        (with("allowedUserTypes", json!(["user", "robot"])), "invalidRequestBodyProperty", "allowedUserTypes[1]"),
        (with("allowedUserTypes", json!([])), "invalidRequestBodyProperty", "allowedUserTypes"),
        (with("maxAgeDays", json!(0)), "invalidRequestBodyProperty", "maxAgeDays"),
        (with("maxFutureMinutes", json!(-5)), "invalidRequestBodyProperty", "maxFutureMinutes"),
        (with("ruleId", json!("8d2c5c4e-0000-4000-8000-000000000000")), "invalidRequestBodyProperty", "ruleId"),
        (with("owner", json!("acme")), "invalidRequestBodyProperty", "owner"),
    ];
    assert_refusals(&service, Method::POST, "/rules", cases).await;

    // A number beyond the exact decimal range is refused, not rounded.
    let response = service
        .client
        .post(service.url("/rules"))
        .bearer_auth(&service.admin)
        .header("content-type", "application/json")
        .body(r#"{"application":"m","unit":"u","ownerTenantId":"acme","maxValue":1e400}"#)
        .send()
        .await
        .unwrap();
    assert_names(&error_of(response).await, "invalidRequestBodyProperty", "maxValue");
    // Broken JSON, a non-object body, a non-JSON content type and an oversized body.
    let send_raw = |content_type: &'static str, body: String| {
        service
            .client
            .post(service.url("/rules"))
            .bearer_auth(&service.admin)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let error = error_of(send_raw("application/json", "{\"application\":".into()).await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::BAD_REQUEST, "invalidRequestBodyProperty"));
    let error = error_of(send_raw("application/json", "[]".into()).await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::BAD_REQUEST, "invalidRequestBodyProperty"));
    let error = error_of(send_raw("text/plain", rule("m", "u", "acme").to_string()).await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupportedMediaType"));
    let huge = json!({"application": "m", "unit": "u", "ownerTenantId": "acme", "pad": "x".repeat(64 * 1024)});
    let error = error_of(send_raw("application/json", huge.to_string()).await.unwrap()).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge"));

    // A malformed id names nothing: 404, like an unknown one.
    for path in ["/rules/not-a-uuid", "/rules/00000000-0000-0000-0000-000000000000"] {
        let error = error_of(service.call(Method::GET, path, None).await).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"), "{path}");
    }
    // The id in a PUT body must be the one in the path.
    let created =
        service.expect(Method::POST, "/rules", Some(rule("monitor", "kWh", "acme")), StatusCode::CREATED).await;
    let path = format!("/rules/{}", created["ruleId"].as_str().unwrap());
    let error = error_of(
        service.call(Method::PUT, &path, Some(with("ruleId", json!("8d2c5c4e-0000-4000-8000-000000000000")))).await,
    )
    .await;
    assert_names(&error, "invalidRequestBodyProperty", "ruleId");
    let error = error_of(service.call(Method::PUT, &path, Some(with("ownerTenantId", json!("nobody")))).await).await;
    assert_names(&error, "invalidRequestBodyProperty", "ownerTenantId");
    // Nothing but the one valid rule was written.
    let list = service.expect(Method::GET, "/rules", None, StatusCode::OK).await;
    assert_eq!(list["page"]["totalElements"], 1);
    assert_eq!(list["rules"][0]["version"], 1);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn rule_lists_filter_and_page(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    service.tenant("globex", "developer", None).await;
    for unit in ["u1", "u2", "u3", "u4", "u5"] {
        service.expect(Method::POST, "/rules", Some(rule("monitor", unit, "acme")), StatusCode::CREATED).await;
    }
    service.expect(Method::POST, "/rules", Some(rule("billing", "u1", "globex")), StatusCode::CREATED).await;

    let page = |query: &'static str| service.expect(Method::GET, query, None, StatusCode::OK);
    let units = |list: &Value| -> Vec<String> {
        list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}/{}", r["application"].as_str().unwrap(), r["unit"].as_str().unwrap()))
            .collect()
    };
    let all = page("/rules").await;
    assert_eq!(units(&all), ["billing/u1", "monitor/u1", "monitor/u2", "monitor/u3", "monitor/u4", "monitor/u5"]);

    let first = page("/rules?application=monitor&size=2").await;
    assert_eq!(units(&first), ["monitor/u1", "monitor/u2"]);
    assert_eq!(first["page"], json!({"number": 0, "size": 2, "totalElements": 5, "totalPages": 3}));
    let last = page("/rules?application=monitor&size=2&page=2").await;
    assert_eq!(units(&last), ["monitor/u5"], "the last page is partial");
    assert_eq!(last["page"], json!({"number": 2, "size": 2, "totalElements": 5, "totalPages": 3}));
    let beyond = page("/rules?application=monitor&size=2&page=3").await;
    assert_eq!(beyond["rules"], json!([]));
    assert_eq!(beyond["page"]["totalElements"], 5);

    assert_eq!(units(&page("/rules?ownerTenantId=globex").await), ["billing/u1"]);
    assert_eq!(units(&page("/rules?unit=u1").await), ["billing/u1", "monitor/u1"]);
    assert_eq!(units(&page("/rules?unit=u1&application=monitor&ownerTenantId=acme").await), ["monitor/u1"]);
    assert_eq!(units(&page("/rules?application=&unit=u2&page=&size=").await), ["monitor/u2"], "empty = absent");
    let nothing = page("/rules?application=nothing").await;
    assert_eq!(nothing, json!({"rules": [], "page": {"number": 0, "size": 20, "totalElements": 0, "totalPages": 0}}));

    for (query, name) in [
        ("/rules?size=0", "size"),
        ("/rules?size=1001", "size"),
        ("/rules?page=-1", "page"),
        ("/rules?page=abc", "page"),
        ("/rules?owner=acme", "owner"),
        ("/rules?unit=a&unit=b", "unit"),
    ] {
        let error = error_of(service.call(Method::GET, query, None).await).await;
        assert_names(&error, "invalidParameter", name);
    }
    let biggest = page("/rules?size=1000").await;
    assert_eq!(biggest["page"]["size"], 1000);
}

// ---------------------------------------------------------------------------------------------
// KPIs

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_kpi_round_trip(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;

    let (id, created) = create(&service, "/kpis", kpi("asset-count", "assetmonitor", "acme"), "kpiId").await;
    assert_eq!(
        created,
        json!({
            "kpiId": id, "name": "asset-count", "displayName": "asset-count", "application": "assetmonitor",
            "applicationDisplayName": "assetmonitor", "unit": "asset", "ownerTenantId": "acme",
            "aggregationFunctionDaily": "SUM", "aggregationFunctionMonthly": "SUM", "preFill": "ZERO",
            "unitConversionFactor": "1", "version": 1, "createdAt": created["createdAt"], "updatedAt": created["updatedAt"],
        })
    );
    assert_eq!(service.expect(Method::GET, &format!("/kpis/{id}"), None, StatusCode::OK).await, created);

    let update = json!({
        "name": "asset-count", "displayName": "asset count", "application": "assetmonitor",
        "applicationDisplayName": "Asset Monitor", "unit": "asset", "ownerTenantId": "acme",
        "aggregationFunctionDaily": "MAX", "aggregationFunctionMonthly": "AVG", "preFill": "LAST",
        "unitConversionFactor": "0.001",
    });
    let updated = service.expect(Method::PUT, &format!("/kpis/{id}"), Some(update), StatusCode::OK).await;
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["displayName"], "asset count");
    assert_eq!(updated["applicationDisplayName"], "Asset Monitor");
    assert_eq!(updated["aggregationFunctionDaily"], "MAX");
    assert_eq!(updated["aggregationFunctionMonthly"], "AVG");
    assert_eq!(updated["preFill"], "LAST");
    assert_eq!(updated["unitConversionFactor"], "0.001");
    assert_eq!(updated["createdAt"], created["createdAt"]);
    let again = service.expect(Method::PUT, &format!("/kpis/{id}"), Some(updated), StatusCode::OK).await;
    assert_eq!(again["version"], 3);
    assert_eq!(again["unitConversionFactor"], "0.001");

    service.expect(Method::POST, "/kpis", Some(kpi("users", "assetmonitor", "acme")), StatusCode::CREATED).await;
    service.expect(Method::POST, "/kpis", Some(kpi("asset-count", "fleet", "acme")), StatusCode::CREATED).await;
    let list = service.expect(Method::GET, "/kpis?application=assetmonitor", None, StatusCode::OK).await;
    let names: Vec<&str> = list["kpis"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["asset-count", "users"]);
    assert_eq!(list["page"], json!({"number": 0, "size": 20, "totalElements": 2, "totalPages": 1}));
    let second = service.expect(Method::GET, "/kpis?size=2&page=1", None, StatusCode::OK).await;
    assert_eq!(second["kpis"].as_array().unwrap().len(), 1, "3 KPIs: the second page of 2 holds 1");
    assert_eq!(second["page"]["totalPages"], 2);

    service.expect(Method::DELETE, &format!("/kpis/{id}"), None, StatusCode::NO_CONTENT).await;
    for method in [Method::GET, Method::DELETE] {
        let error = error_of(service.call(method, &format!("/kpis/{id}"), None).await).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    }
    let error = error_of(service.call(Method::GET, "/kpis/42", None).await).await;
    assert_eq!(error.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn kpi_validation_names_the_field(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let base = kpi("asset-count", "assetmonitor", "acme");
    let with = |key: &str, value: Value| changed(&base, key, value);
    let cases = [
        (json!({"application": "a", "unit": "u", "ownerTenantId": "acme"}), "missingRequestBodyProperty", "name"),
        (with("unit", json!(null)), "missingRequestBodyProperty", "unit"),
        (with("ownerTenantId", json!("nobody")), "invalidRequestBodyProperty", "ownerTenantId"),
        (with("aggregationFunctionDaily", json!("sum")), "invalidRequestBodyProperty", "aggregationFunctionDaily"),
        (
            with("aggregationFunctionMonthly", json!("MEDIAN")),
            "invalidRequestBodyProperty",
            "aggregationFunctionMonthly",
        ),
        (with("preFill", json!("ALL")), "invalidRequestBodyProperty", "preFill"),
        (with("unitConversionFactor", json!(0)), "invalidRequestBodyProperty", "unitConversionFactor"),
        (with("unitConversionFactor", json!("-1")), "invalidRequestBodyProperty", "unitConversionFactor"),
        (with("displayName", json!("")), "invalidRequestBodyProperty", "displayName"),
        (with("kpiId", json!("8d2c5c4e-0000-4000-8000-000000000000")), "invalidRequestBodyProperty", "kpiId"),
    ];
    assert_refusals(&service, Method::POST, "/kpis", cases).await;
    // The name is unique per application.
    service.expect(Method::POST, "/kpis", Some(kpi("asset-count", "assetmonitor", "acme")), StatusCode::CREATED).await;
    let error =
        error_of(service.call(Method::POST, "/kpis", Some(kpi("asset-count", "assetmonitor", "acme"))).await).await;
    assert_conflict(&error, "name");
    for (query, name) in [("/kpis?size=0", "size"), ("/kpis?unit=x", "unit")] {
        let error = error_of(service.call(Method::GET, query, None).await).await;
        assert_names(&error, "invalidParameter", name);
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication and authorisation

/// `uts.provider.admin`: provider A manages its own rules and KPIs and its IoT tenants'
/// provisioning, and can neither read nor change provider B's (what it does not own is 404, as
/// if it did not exist; what only the operator may do is 403); the operator can do everything.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_provider_administers_only_what_it_owns(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    service.tenant("prov-a", "operator", None).await;
    service.tenant("prov-b", "operator", None).await;
    service.tenant("plant-a", "iot", Some("prov-a")).await;
    service.tenant("plant-b", "iot", Some("prov-b")).await;
    let a = TestQueryService::token("prov-a", &["uts.provider.admin"]);
    let b_rule =
        service.expect(Method::POST, "/rules", Some(rule("b-app", "b-unit", "prov-b")), StatusCode::CREATED).await;
    let b_kpi = service.expect(Method::POST, "/kpis", Some(kpi("b-kpi", "b-app", "prov-b")), StatusCode::CREATED).await;
    let (b_rule_path, b_kpi_path) = (
        format!("/rules/{}", b_rule["ruleId"].as_str().unwrap()),
        format!("/kpis/{}", b_kpi["kpiId"].as_str().unwrap()),
    );
    let as_a = |method: Method, path: String, body: Option<Value>| {
        let (service, a) = (&service, &a);
        async move {
            let response = service.call_as(a, method.clone(), &path, body).await;
            let status = response.status();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null), format!("{method} {path}: {text}"))
        }
    };

    // A's own: create, read, list, update, delete.
    let (status, a_rule, what) = as_a(Method::POST, "/rules".into(), Some(rule("a-app", "a-unit", "prov-a"))).await;
    assert_eq!(status, StatusCode::CREATED, "{what}");
    let a_rule_path = format!("/rules/{}", a_rule["ruleId"].as_str().unwrap());
    let (status, a_kpi, what) = as_a(Method::POST, "/kpis".into(), Some(kpi("a-kpi", "a-app", "prov-a"))).await;
    assert_eq!(status, StatusCode::CREATED, "{what}");
    let a_kpi_path = format!("/kpis/{}", a_kpi["kpiId"].as_str().unwrap());
    let (status, _, what) = as_a(Method::GET, a_rule_path.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{what}");
    let mut changed = rule("a-app", "a-unit", "prov-a");
    changed["billingEnabled"] = json!(true);
    let (status, updated, what) = as_a(Method::PUT, a_rule_path.clone(), Some(changed)).await;
    assert_eq!((status, updated["version"].clone()), (StatusCode::OK, json!(2)), "{what}");
    let (status, list, what) = as_a(Method::GET, "/rules".into(), None).await;
    assert_eq!(status, StatusCode::OK, "{what}");
    let owners: Vec<&str> =
        list["rules"].as_array().unwrap().iter().map(|r| r["ownerTenantId"].as_str().unwrap()).collect();
    assert_eq!((owners, list["page"]["totalElements"].clone()), (vec!["prov-a"], json!(1)), "{what}");
    let (_, list, what) = as_a(Method::GET, "/rules?ownerTenantId=prov-b".into(), None).await;
    assert_eq!(list["page"]["totalElements"], json!(0), "{what}");
    let (_, list, what) = as_a(Method::GET, "/kpis".into(), None).await;
    let names: Vec<&str> = list["kpis"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["a-kpi"], "{what}");

    // B's: invisible (404) to read, change or delete, and nothing changed.
    for path in [&b_rule_path, &b_kpi_path] {
        let (status, _, what) = as_a(Method::GET, path.clone(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
        let (status, _, what) = as_a(Method::DELETE, path.clone(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    }
    let (status, _, what) = as_a(Method::PUT, b_rule_path.clone(), Some(rule("b-app", "b-unit", "prov-a"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    let (status, _, what) = as_a(Method::PUT, b_kpi_path.clone(), Some(kpi("b-kpi", "b-app", "prov-a"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    assert_eq!(service.expect(Method::GET, &b_rule_path, None, StatusCode::OK).await["version"], json!(1));
    assert_eq!(service.expect(Method::GET, &b_kpi_path, None, StatusCode::OK).await["version"], json!(1));

    // Nothing in B's name or in B's application (403), and a duplicate does not name B's rule.
    let (status, _, what) = as_a(Method::POST, "/rules".into(), Some(rule("a-app", "other", "prov-b"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    let (status, _, what) = as_a(Method::POST, "/rules".into(), Some(rule("b-app", "b-unit-2", "prov-a"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    let (status, _, what) = as_a(Method::POST, "/kpis".into(), Some(kpi("a-kpi-2", "b-app", "prov-a"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    let (status, _, what) = as_a(Method::PUT, a_kpi_path.clone(), Some(kpi("a-kpi", "a-app", "prov-b"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    let (status, _, what) = as_a(Method::PUT, a_rule_path.clone(), Some(rule("b-app", "a-unit", "prov-a"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    let (status, _, what) = as_a(Method::POST, "/rules".into(), Some(rule("a-app", "a-unit", "prov-a"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{what}");

    // Tenants: A sees itself and its IoT tenant, provisions only that one, changes no tenant.
    let (_, list, what) = as_a(Method::GET, "/tenants".into(), None).await;
    let ids: Vec<&str> = list["tenants"].as_array().unwrap().iter().map(|t| t["tenantId"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["plant-a", "prov-a"], "{what}");
    for (path, expected) in [
        ("/tenants/prov-a", StatusCode::OK),
        ("/tenants/plant-a", StatusCode::OK),
        ("/tenants/prov-b", StatusCode::NOT_FOUND),
        ("/tenants/plant-b", StatusCode::NOT_FOUND),
        ("/tenants/plant-b/applications", StatusCode::NOT_FOUND),
        ("/tenants/plant-a/applications", StatusCode::OK),
    ] {
        let (status, _, what) = as_a(Method::GET, path.into(), None).await;
        assert_eq!(status, expected, "{what}");
    }
    let (status, _, what) = as_a(Method::PUT, "/tenants/plant-a/applications/a-app".into(), None).await;
    assert_eq!(status, StatusCode::CREATED, "{what}");
    let (status, _, what) = as_a(Method::PUT, "/tenants/plant-b/applications/a-app".into(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    let (status, _, what) = as_a(Method::DELETE, "/tenants/plant-b/applications/b-app".into(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    let (status, _, what) = as_a(Method::PUT, "/tenants/prov-a".into(), Some(json!({"tenantType": "developer"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    for path in ["/clients", "/signingKeys"] {
        let (status, _, what) = as_a(Method::GET, path.into(), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
    }

    // The operator sees and changes everyone's.
    let all = service.expect(Method::GET, "/rules", None, StatusCode::OK).await;
    assert_eq!(all["page"]["totalElements"], json!(2));
    service.expect(Method::PUT, &a_rule_path, Some(rule("a-app", "a-unit", "prov-a")), StatusCode::OK).await;
    service.expect(Method::DELETE, &b_kpi_path, None, StatusCode::NO_CONTENT).await;
    service.expect(Method::PUT, "/tenants/plant-b/applications/b-app", None, StatusCode::CREATED).await;
    // A's own deletions work.
    let (status, _, what) = as_a(Method::DELETE, a_kpi_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{what}");
    let (status, _, what) = as_a(Method::DELETE, a_rule_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{what}");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn authentication_and_authorisation_matrix(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let endpoints: [(Method, &str, Option<Value>); 8] = [
        (Method::GET, "/tenants", None),
        (Method::GET, "/tenants/acme", None),
        (Method::PUT, "/tenants/acme", Some(json!({"tenantType": "operator"}))),
        (Method::GET, "/tenants/acme/applications", None),
        (Method::GET, "/rules", None),
        (Method::POST, "/rules", Some(rule("monitor", "kWh", "acme"))),
        (Method::GET, "/kpis", None),
        (Method::POST, "/kpis", Some(kpi("asset-count", "monitor", "acme"))),
    ];
    let forged = uts_common::auth::mint_hs256("some-other-secret-0123456789", "acme", "", &["uts.admin"], 600).unwrap();
    let expired = uts_common::auth::mint_hs256(crate::support::SECRET, "acme", "", &["uts.admin"], -3600).unwrap();
    let every_other_scope =
        TestQueryService::token("acme", &["uts.usages.write", "uts.usages.read", "uts.aggregates.read"]);
    for (method, path, body) in &endpoints {
        let what = format!("{method} {path}");
        let mut request = service.client.request(method.clone(), service.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let error = error_of(request.send().await.unwrap()).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "no token: {what}");
        for token in [&forged, &expired, &"garbage".to_owned()] {
            let error = error_of(service.call_as(token, method.clone(), path, body.clone()).await).await;
            assert_eq!(error.status, StatusCode::UNAUTHORIZED, "bad token: {what}");
        }
        let error = error_of(service.call_as(&every_other_scope, method.clone(), path, body.clone()).await).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "wrong scope: {what}");
        assert!(error.message.contains("uts.admin") && error.message.contains("uts.provider.admin"), "{error:?}");
    }
    // Authentication comes before anything else: a bad body or id is not even looked at.
    let error = error_of(service.call_as(&every_other_scope, Method::POST, "/rules", Some(json!({}))).await).await;
    assert_eq!(error.status, StatusCode::FORBIDDEN);
    let error = error_of(service.client.get(service.url("/rules/not-a-uuid")).send().await.unwrap()).await;
    assert_eq!(error.status, StatusCode::UNAUTHORIZED);

    // uts.admin and uts.su may do everything; the caller's own tenant plays no part.
    let su = TestQueryService::token("some-tenant", &["uts.su"]);
    let admin = TestQueryService::token("another-tenant", &["uts.admin"]);
    for (token, (method, path, body)) in [&su, &admin].into_iter().cycle().zip(endpoints) {
        let status = service.call_as(token, method.clone(), path, body).await.status();
        assert!(status.is_success(), "{method} {path}: {status}");
    }
    // Unknown endpoints are 404 in the same format.
    let error = error_of(service.call(Method::GET, "/widgets", None).await).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"));
    service.stop().await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn tenant_lists_page(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    let empty = service.expect(Method::GET, "/tenants?size=3", None, StatusCode::OK).await;
    assert_eq!(empty, json!({"tenants": [], "page": {"number": 0, "size": 3, "totalElements": 0, "totalPages": 0}}));
    for id in ["t1", "t2", "t3", "t4", "t5", "t6", "t7"] {
        service.tenant(id, "customer", None).await;
    }
    service.tenant("op", "operator", None).await;
    let ids = |list: &Value| -> Vec<String> {
        list["tenants"].as_array().unwrap().iter().map(|t| t["tenantId"].as_str().unwrap().to_owned()).collect()
    };
    let mut seen = Vec::new();
    for page in 0..3 {
        let list = service
            .expect(Method::GET, &format!("/tenants?type=customer&size=3&page={page}"), None, StatusCode::OK)
            .await;
        assert_eq!(list["page"], json!({"number": page, "size": 3, "totalElements": 7, "totalPages": 3}));
        seen.extend(ids(&list));
    }
    assert_eq!(seen, ["t1", "t2", "t3", "t4", "t5", "t6", "t7"], "pages are disjoint and ordered; the last holds 1");
    let beyond = service.expect(Method::GET, "/tenants?type=customer&size=3&page=3", None, StatusCode::OK).await;
    assert_eq!(beyond["tenants"], json!([]));
    for (query, name) in [("/tenants?size=0", "size"), ("/tenants?size=5000", "size"), ("/tenants?type=robot", "type")]
    {
        let error = error_of(service.call(Method::GET, query, None).await).await;
        assert_names(&error, "invalidParameter", name);
    }
}

/// Every string parameter of the query service, with a NUL (and other control characters) in
/// it: 400 naming the parameter, 404 for an id in the path, never a 5xx (PostgreSQL refuses
/// NUL in text, which was answered 500); a token whose tenant holds one: 401.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn control_characters_never_reach_postgresql(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    let token = TestQueryService::token("ops", &["uts.admin", "uts.usages.read", "uts.aggregates.read"]);
    let v3 = "/api/usagetransparency/v3";
    let monthly = "month=1&year=2021&application=a&KPIName=k";
    let query_cases: Vec<(String, &str)> = vec![
        (format!("{v3}/usagesJobs?tenant=x%00"), "tenant"),
        (format!("{v3}/usagesJobs?application=%00"), "application"),
        (format!("{v3}/usagesJobs?unit=u%01"), "unit"),
        (format!("{v3}/aggregatedMonthlyConsumerUsage?{monthly}&provider=p%00"), "provider"),
        (
            format!("{v3}/aggregatedMonthlyConsumerUsage?month=1&year=2021&provider=p&application=%00&KPIName=k"),
            "application",
        ),
        (format!("{v3}/aggregatedMonthlyProviderUsage?month=1&year=2021&application=a&KPIName=k%00"), "KPIName"),
        (format!("{v3}/aggregatedMonthlyProviderUsage?{monthly}&consumer=%7F"), "consumer"),
        (format!("{v3}/admin/rules?application=a%00"), "application"),
        (format!("{v3}/admin/kpis?application=%00"), "application"),
        (format!("{v3}/admin/tenants?page=0%0A"), "page"),
    ];
    for (path, parameter) in &query_cases {
        let response =
            service.client.get(format!("http://{}{path}", service.addr)).bearer_auth(&token).send().await.unwrap();
        let error = error_of(response).await;
        assert_names(&error, "invalidParameter", parameter);
    }
    for path in [
        format!("{v3}/usagesJobs/job%00"),
        format!("{v3}/usagesJobs/job%00/errors"),
        format!("{v3}/admin/tenants/t%00"),
        format!("{v3}/admin/tenants/t%00/applications"),
        format!("{v3}/admin/rules/r%00"),
        format!("{v3}/admin/kpis/k%1F"),
    ] {
        let response =
            service.client.get(format!("http://{}{path}", service.addr)).bearer_auth(&token).send().await.unwrap();
        let error = error_of(response).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::NOT_FOUND, "noMatch"), "{path}: {error:?}");
    }
    let response = service
        .client
        .put(format!("http://{}{v3}/admin/tenants/t%00", service.addr))
        .bearer_auth(&token)
        .json(&json!({"tenantType": "developer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    for tenant in ["ops\0", "o\u{1}ps"] {
        let token = TestQueryService::token(tenant, &["uts.usages.read"]);
        let response = service
            .client
            .get(format!("http://{}{v3}/usagesJobs", service.addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let error = error_of(response).await;
        assert_eq!((error.status, error.code.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{tenant:?}");
    }
    // The service is still there and answers well-formed requests.
    let response =
        service.client.get(format!("http://{}{v3}/usagesJobs", service.addr)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A POST to the query service's read API (a client given one address for both) is a 405 in
/// the `mdsp` format with `Allow`, not an empty body.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_wrong_method_is_answered_in_the_mdsp_format(pool: PgPool) {
    let service = TestQueryService::start(pool).await;
    let url = format!("http://{}/api/usagetransparency/v3/usagesJobs", service.addr);
    let response = service.client.post(url).json(&json!({})).send().await.unwrap();
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET,HEAD"));
    let error = error_of(response).await;
    assert_eq!((error.status, error.code.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "methodNotAllowed"), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// The token service: clients, /oauth/token, keys

const FORM: &str = "application/x-www-form-urlencoded";

/// `POST /oauth/token` with HTTP Basic (when `basic` is given) and `form` as the body.
async fn token_request(service: &TestQueryService, basic: Option<(&str, &str)>, form: &str) -> reqwest::Response {
    let mut request = service
        .client
        .post(format!("http://{}/oauth/token", service.addr))
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .body(form.to_owned());
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    request.send().await.unwrap()
}

/// Expects an RFC 6749 §5.2 error answer.
#[track_caller]
fn assert_oauth_error(status: StatusCode, body: &Value, want_status: StatusCode, want_error: &str) {
    assert_eq!((status, body["error"].as_str()), (want_status, Some(want_error)), "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

async fn oauth(response: reqwest::Response) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let status = response.status();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap(), headers)
}

/// A client of tenant `acme`; answers (id, secret).
async fn client(service: &TestQueryService, id: &str, scopes: &[&str]) -> (String, String) {
    let created = service
        .expect(
            Method::POST,
            "/clients",
            Some(json!({"clientId": id, "tenantId": "acme", "scopes": scopes, "description": "exporter"})),
            StatusCode::CREATED,
        )
        .await;
    (id.to_owned(), created["clientSecret"].as_str().unwrap().to_owned())
}

async fn get_token(service: &TestQueryService, id: &str, secret: &str) -> String {
    let (status, body, _) =
        oauth(token_request(service, Some((id, secret)), "grant_type=client_credentials").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Status of `GET /usagesJobs` with `token`.
async fn jobs_status(service: &TestQueryService, token: &str) -> StatusCode {
    service.client.get(service.api("/usagesJobs")).bearer_auth(token).send().await.unwrap().status()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_client_gets_tokens_the_services_accept_and_its_secret_is_shown_once(pool: PgPool) {
    let service = TestQueryService::start(pool.clone()).await;
    service.tenant("acme", "operator", None).await;
    let created = service
        .expect(
            Method::POST,
            "/clients",
            Some(json!({"clientId": "acme-exporter", "tenantId": "acme", "scopes": ["uts.usages.read", "uts.usages.write"]})),
            StatusCode::CREATED,
        )
        .await;
    let secret = created["clientSecret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43);
    assert_eq!(created["revokedAt"], Value::Null);
    // Stored only as an argon2id hash; never shown again.
    let hash: String = sqlx::query_scalar("SELECT secret_hash FROM token_clients WHERE client_id = 'acme-exporter'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(&secret), "{hash}");
    let shown = service.expect(Method::GET, "/clients/acme-exporter", None, StatusCode::OK).await;
    assert_eq!(shown.get("clientSecret"), None, "{shown}");
    let listed = service.expect(Method::GET, "/clients?tenantId=acme", None, StatusCode::OK).await;
    assert_eq!(listed["clients"][0]["clientId"], "acme-exporter");
    assert_eq!(listed["page"]["totalElements"], 1);
    service
        .expect(
            Method::POST,
            "/clients",
            Some(json!({"clientId": "acme-exporter", "tenantId": "acme", "scopes": ["uts.admin"]})),
            StatusCode::CONFLICT,
        )
        .await;
    let unknown_tenant = service
        .call(Method::POST, "/clients", Some(json!({"clientId": "x", "tenantId": "nobody", "scopes": ["uts.admin"]})))
        .await;
    assert_names(&error_of(unknown_tenant).await, "invalidRequestBodyProperty", "tenantId");

    // HTTP Basic, as the official clients send it.
    let response = token_request(&service, Some(("acme-exporter", &secret)), "grant_type=client_credentials").await;
    let (status, body, headers) = oauth(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_u64()), (Some("bearer"), Some(1800)));
    assert_eq!(body["scope"], "uts.usages.read uts.usages.write");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jobs_status(&service, &token).await, StatusCode::OK);

    // Its claims, checked against the published keys (the current key first).
    let keys: Value =
        service.client.get(format!("http://{}/token_keys", service.addr)).send().await.unwrap().json().await.unwrap();
    let first = &keys["keys"][0];
    assert_eq!(first["kid"].as_str().unwrap(), kid_of(&token));
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(first["value"].as_str().unwrap().as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&["uts-token-service"]);
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap().claims;
    assert_eq!((claims["ten"].as_str(), claims["sub"].as_str()), (Some("acme"), Some("acme-exporter")));
    assert_eq!(claims["scope"], json!(["uts.usages.read", "uts.usages.write"]));
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 1800);
    let jwks = uts_testkit::get_json(&service.client, &format!("http://{}/.well-known/jwks.json", service.addr)).await;
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kid"].as_str(), jwk["kty"].as_str(), jwk["alg"].as_str()),
        (first["kid"].as_str(), Some("RSA"), Some("RS256"))
    );
    let from_jwk =
        jsonwebtoken::DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    jsonwebtoken::decode::<Value>(&token, &from_jwk, &validation).unwrap();

    // client_secret_post, narrowed to one scope: that token cannot write, nor administer.
    let form =
        format!("grant_type=client_credentials&client_id=acme-exporter&client_secret={secret}&scope=uts.usages.read");
    let (status, body, _) = oauth(token_request(&service, None, &form).await).await;
    assert_eq!((status, body["scope"].as_str()), (StatusCode::OK, Some("uts.usages.read")), "{body}");
    let narrow = body["access_token"].as_str().unwrap();
    assert_eq!(jobs_status(&service, narrow).await, StatusCode::OK);
    assert_eq!(service.call_as(narrow, Method::GET, "/tenants", None).await.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn bad_token_requests_get_oauth_errors_never_a_5xx(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let (id, secret) = client(&service, "acme-app", &["uts.usages.read"]).await;
    let grant = "grant_type=client_credentials";
    let wrong = oauth(token_request(&service, Some((&id, "not-the-secret")), grant).await).await;
    assert_oauth_error(wrong.0, &wrong.1, StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(wrong.2.get("www-authenticate").unwrap(), "Basic realm=\"uts\"");
    let unknown = oauth(token_request(&service, Some(("nobody", "whatever")), grant).await).await;
    assert_oauth_error(unknown.0, &unknown.1, StatusCode::UNAUTHORIZED, "invalid_client");
    // The same words for both: an id cannot be probed.
    assert_eq!(wrong.1["error_description"], unknown.1["error_description"]);
    for (basic, form, status, error) in [
        (
            Some((id.as_str(), secret.as_str())),
            "grant_type=password&username=a&password=b",
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (Some((id.as_str(), secret.as_str())), "", StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Some((id.as_str(), secret.as_str())),
            "grant_type=client_credentials&grant_type=client_credentials",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some((id.as_str(), secret.as_str())),
            "grant_type=client_credentials&scope=uts.admin",
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            Some((id.as_str(), secret.as_str())),
            "grant_type=client_credentials&client_id=acme-app&client_secret=x",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (None, "grant_type=client_credentials", StatusCode::UNAUTHORIZED, "invalid_client"),
        (None, "grant_type=client_credentials&client_id=acme-app", StatusCode::UNAUTHORIZED, "invalid_client"),
    ] {
        let (got, body, _) = oauth(token_request(&service, basic, form).await).await;
        assert_oauth_error(got, &body, status, error);
    }
    // Not a form, and a malformed Basic header.
    let json_body = service
        .client
        .post(format!("http://{}/oauth/token", service.addr))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    let (got, body, _) = oauth(json_body).await;
    assert_oauth_error(got, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let malformed = service
        .client
        .post(format!("http://{}/oauth/token", service.addr))
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .header(reqwest::header::AUTHORIZATION, "Basic ***")
        .body(grant)
        .send()
        .await
        .unwrap();
    let (got, body, _) = oauth(malformed).await;
    assert_oauth_error(got, &body, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_rotated_secret_replaces_the_old_and_a_revoked_client_loses_its_tokens(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let (id, old_secret) = client(&service, "acme-app", &["uts.usages.read"]).await;
    let token = get_token(&service, &id, &old_secret).await;
    let rotated = service.expect(Method::POST, "/clients/acme-app/secret", None, StatusCode::OK).await;
    let new_secret = rotated["clientSecret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    let (status, body, _) =
        oauth(token_request(&service, Some((&id, &old_secret)), "grant_type=client_credentials").await).await;
    assert_oauth_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");
    let fresh = get_token(&service, &id, &new_secret).await;
    // A rotation does not end the tokens already issued.
    assert_eq!(jobs_status(&service, &token).await, StatusCode::OK);

    let revoked = service.expect(Method::DELETE, "/clients/acme-app", None, StatusCode::OK).await;
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    let (status, body, _) =
        oauth(token_request(&service, Some((&id, &new_secret)), "grant_type=client_credentials").await).await;
    assert_oauth_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(body["error_description"], "the client has been revoked");
    service.expect(Method::POST, "/clients/acme-app/secret", None, StatusCode::CONFLICT).await;
    // Its unexpired tokens stop working at the verifiers' next refresh (every 10 s).
    let deadline =
        std::time::Instant::now() + uts_common::auth::ISSUED_KEYS_REFRESH + std::time::Duration::from_secs(5);
    for token in [&token, &fresh] {
        loop {
            let status = jobs_status(&service, token).await;
            if status == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a revoked client's token still answers {status}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // The id stays taken.
    service
        .expect(
            Method::POST,
            "/clients",
            Some(json!({"clientId": "acme-app", "tenantId": "acme", "scopes": ["uts.usages.read"]})),
            StatusCode::CONFLICT,
        )
        .await;
    service.expect(Method::DELETE, "/clients/nobody", None, StatusCode::NOT_FOUND).await;
}

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn a_signing_key_rotation_keeps_the_tokens_of_the_previous_key_valid(pool: PgPool) {
    let service = TestQueryService::with_operator(pool, "acme").await;
    let (id, secret) = client(&service, "acme-app", &["uts.usages.read"]).await;
    let before = get_token(&service, &id, &secret).await;
    let keys = service.expect(Method::GET, "/signingKeys", None, StatusCode::OK).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        (keys["keys"][0]["state"].as_str(), keys["keys"][0]["kid"].as_str()),
        (Some("current"), Some(kid_of(&before).as_str()))
    );

    let rotated = service.expect(Method::POST, "/signingKeys", None, StatusCode::CREATED).await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, kid_of(&before));
    // A token of the new key verifies at once (an unknown kid makes the verifier look again).
    let after = get_token(&service, &id, &secret).await;
    assert_eq!(kid_of(&after), new_kid);
    assert_eq!(jobs_status(&service, &after).await, StatusCode::OK);
    assert_eq!(jobs_status(&service, &before).await, StatusCode::OK);
    let published: Value =
        service.client.get(format!("http://{}/token_keys", service.addr)).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> = published["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec![new_kid.as_str(), kid_of(&before).as_str()]);
    let keys = service.expect(Method::GET, "/signingKeys", None, StatusCode::OK).await;
    assert_eq!(keys["keys"][1]["state"], "accepted");
    assert!(keys["keys"][1]["acceptUntil"].is_string());
    // A made-up kid is refused, not a 5xx.
    let forged = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("made-up".into());
        let claims = json!({"ten": "acme", "scope": ["uts.usages.read"], "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(b"guess")).unwrap()
    };
    assert_eq!(jobs_status(&service, &forged).await, StatusCode::UNAUTHORIZED);
}

/// The query service is served by the same `uts_common::http::serve` as the gateway, with its own
/// flags: a client that never finishes its headers is cut off, a declared body that never comes
/// is 503 at the request timeout, and connections beyond the limit wait.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_http_limits_hold_on_the_real_query_service(pool: PgPool) {
    use std::time::Duration;
    use uts_testkit::http_limits;

    let flags = ["--rate-limit-per-second=0", "--http-header-timeout-ms=300", "--http-request-timeout-ms=700"];
    let timed = TestQueryService::start_with(pool.clone(), &flags).await;
    let head = "GET /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\n";
    http_limits::unfinished_headers_are_cut_off(timed.addr, head, Duration::from_millis(300)).await;
    // An admin write whose body never comes stores nothing.
    let head = format!(
        "PUT /api/usagetransparency/v3/admin/tenants/acme HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"tenantType\":",
        timed.admin
    );
    http_limits::a_body_that_never_comes_is_503(timed.addr, &head, Duration::from_millis(700)).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0, "a body that never came stored a tenant");
    timed.stop().await;

    let limited = TestQueryService::start_with(pool, &["--http-max-connections=2"]).await;
    let request = b"GET /api/usagetransparency/v3/usagesJobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = http_limits::a_third_connection_waits_for_a_free_one(limited.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    limited.stop().await;
}
