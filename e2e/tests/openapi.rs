//! The OpenAPI document against the running services: it is served by the query service, and
//! every operation it documents exists with its method on the service that serves it (an
//! unauthenticated call gets the API's 401, not the fallback 404 or a 405).

use serde_json::Value;
use sqlx::PgPool;
use uts_e2e::Pipeline;

#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn every_documented_operation_is_served(pool: PgPool) {
    let pipeline = Pipeline::start(pool).await;
    let served: Value =
        pipeline.client.get(format!("{}/openapi.json", pipeline.query_api)).send().await.unwrap().json().await.unwrap();
    let document: Value = serde_json::from_str(query_service::OPENAPI).unwrap();
    assert_eq!(served, document, "the query service serves docs/openapi.json");
    assert_eq!(document["openapi"], "3.0.3");

    let gateway = format!("http://{}/api/usagetransparency/v3", pipeline.gateway);
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        // Path parameters get a value; the call is refused for want of a token before it matters.
        let concrete: String = path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "x" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        for method in operations.as_object().unwrap().keys() {
            let base = if method == "post" && (path == "/usagesJobs" || path == "/usages") {
                &gateway
            } else {
                &pipeline.query_api
            };
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = pipeline.client.request(method.clone(), format!("{base}{concrete}")).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.unauthorized", "{method} {path}");
            checked += 1;
        }
    }
    assert_eq!(checked, 24, "operations documented");
}
