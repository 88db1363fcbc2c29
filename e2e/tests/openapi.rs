//! The OpenAPI document against the running services: it is served on the one address, and
//! every operation it documents exists there with its method (an unauthenticated call gets the
//! API's 401, not the fallback 404 or a 405; the token service's public operations answer without
//! a token, never 404, 405 or 5xx); and schemathesis finds nothing the document and the service
//! disagree on.

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
    let served_there = pipeline.client.get(format!("{one_address}/api/usagetransparency/v3/openapi.json")).send();
    let via_gateway: Value = served_there.await.unwrap().json().await.unwrap();
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

/// schemathesis (pinned in `e2e/schemathesis/requirements.txt`, installed by
/// `deploy/local/test.sh`) drives every operation of the document against the running service
/// with positive and negative data generated from it: no 5xx, every answer's status, content
/// type and schema as documented, every request the document allows accepted, every request it
/// forbids refused. What a JSON schema cannot say (an owner must be a registered tenant, an IoT
/// tenant names its operator, minValue ≤ maxValue) is made true of positive cases by
/// `e2e/schemathesis/hooks.py`. A fixed seed keeps the run the same from one CI run to the next.
#[sqlx::test(migrator = "uts_common::db::MIGRATOR")]
async fn the_document_holds_under_schemathesis(pool: PgPool) {
    let st = std::env::var("UTS_SCHEMATHESIS").unwrap_or_else(|_| "st".to_owned());
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline = Pipeline::start(pool).await;
    let token = uts_common::auth::mint_hs256(uts_e2e::SECRET, "op", "schemathesis", &["uts.su"], 3600).unwrap();
    let one_address = pipeline.base();
    let checks = "not_a_server_error,response_schema_conformance,status_code_conformance,\
                  content_type_conformance,negative_data_rejection,positive_data_acceptance";
    // The API under its base path; then the token service, which lives at the root.
    let runs = [
        (format!("{one_address}/api/usagetransparency/v3"), "--exclude-path-regex"),
        (one_address.clone(), "--include-path-regex"),
    ];
    let mut generated = 0;
    for (url, filter) in runs {
        let run = tokio::process::Command::new(&st)
            .arg("run")
            .arg(manifest.join("../docs/openapi.json"))
            .args(["--url", &url, "--checks", checks, "--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", "40", "--seed", "1", "--workers", "1", "--no-color"])
            .args([filter, r"^/(oauth|token_keys|\.well-known)"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", manifest.join("schemathesis"))
            .env("UTS_ST_OWNER", "prov")
            .env("UTS_ST_OPERATOR", "op")
            .env("UTS_ST_IOT", "plant")
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(600), run)
            .await
            .expect("schemathesis ran for 10 minutes")
            .unwrap_or_else(|err| panic!("{st}: {err} (deploy/local/test.sh installs it and sets UTS_SCHEMATHESIS)"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "schemathesis found failures against {url}:\n{stdout}\n{}", {
            String::from_utf8_lossy(&output.stderr)
        });
        // "  2801 generated, 2801 passed": every generated case passed.
        let line = stdout.lines().find(|line| line.contains(" generated, ")).unwrap_or_else(|| panic!("{stdout}"));
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
        assert_eq!(numbers.len(), 2, "{line}");
        assert_eq!(numbers[0], numbers[1], "{line}");
        println!("schemathesis against {url}: {}", line.trim());
        generated += numbers[0];
    }
    // A run that generated (almost) nothing proves nothing.
    assert!(generated >= 2000, "only {generated} requests");
}
