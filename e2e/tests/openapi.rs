//! The OpenAPI document against the running services: it is served on the one address, and
//! every operation it documents exists there with its method (an unauthenticated call gets the
//! API's 401, not the fallback 404 or a 405; the token service's public operations answer without
//! a token, never 404, 405 or 5xx).

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

    let one_address = pipeline.base();
    let via_gateway: Value = pipeline
        .client
        .get(format!("{one_address}/api/usagetransparency/v3/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_gateway, document, "the one address serves the same document");
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        // A path's own servers entry (the token service lives at the root) overrides the base.
        let base = match operations["servers"][0]["url"].as_str() {
            Some(url) => format!("{one_address}{}", url.trim_end_matches('/')),
            None => format!("{one_address}/api/usagetransparency/v3"),
        };
        // Path parameters get a value; the call is refused for want of a token before it matters.
        let concrete: String = path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "x" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in operations.as_object().unwrap().iter().filter(|(key, _)| *key != "servers") {
            let public = operation["security"].as_array().is_some_and(Vec::is_empty);
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = pipeline.client.request(method.clone(), format!("{base}{concrete}")).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if public {
                assert!(
                    ![404, 405].contains(&status.as_u16()) && !status.is_server_error(),
                    "{method} {path}: {status} {body}"
                );
                assert!(body.is_object(), "{method} {path}: a JSON answer");
            } else {
                assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                assert_eq!(body["errors"][0]["code"], "mdsp.core.generic.unauthorized", "{method} {path}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 34, "operations documented");
}
