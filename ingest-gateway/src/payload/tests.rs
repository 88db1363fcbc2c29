use super::*;
use serde_json::json;

/// Parses with both paths and checks they agree: the fast path never accepts what the
/// walker refuses and, when both accept, builds the same batch. (The fast path may leave
/// odd but valid bodies, such as duplicate keys, to the walker.)
fn jobs(body: Value) -> Result<Batch, ApiError> {
    agree(body.to_string().as_bytes())
}

fn agree(body: &[u8]) -> Result<Batch, ApiError> {
    let walked = walk_usages_jobs(body);
    let fast = fast_usages_jobs(body);
    match (&walked, &fast) {
        (Ok(w), Some(f)) => assert_eq!(w, f, "paths built different batches"),
        (Err(_), None) => {}
        (Ok(_), None) => {}
        (Err(e), Some(_)) => {
            panic!("the fast path accepted an invalid body ({}): {}", e.message, String::from_utf8_lossy(body))
        }
    }
    parse_usages_jobs(body)
}

fn seed() -> Value {
    json!({"users":[{"tenantId":"siemenshcops","userId":"john.doe@healthcare.siemens.com","userType":"user",
        "resources":[{"application":"manage-my-machines","alias":"analyze-my-performance","resource":"asset-id-1",
        "usages":[{"value":20,"unit":"mmm-recurring-unit","datetime":"2011-07-14T19:43:37Z"}]}]}]})
}

fn message_of(result: Result<Batch, ApiError>) -> (String, String) {
    let err = result.unwrap_err();
    (err.full_code(), err.message)
}

#[test]
fn the_seed_sample_is_accepted_as_sent() {
    let batch = jobs(seed()).unwrap();
    assert!(fast_usages_jobs(seed().to_string().as_bytes()).is_some(), "the seed takes the fast path");
    assert_eq!(batch.usages_count, 1);
    let user = &batch.users[0];
    assert_eq!(user.tenant_id, "siemenshcops");
    assert_eq!(user.user_id, "john.doe@healthcare.siemens.com");
    assert_eq!(user.user_type, v1::UserType::User as i32);
    let resource = &user.resources[0];
    assert_eq!(
        (resource.application.as_str(), resource.alias.as_str()),
        ("manage-my-machines", "analyze-my-performance")
    );
    let usage = &resource.usages[0];
    assert_eq!((usage.index, usage.value.as_str(), usage.unit.as_str()), (0, "20", "mmm-recurring-unit"));
    assert_eq!(usage.datetime.as_ref().unwrap().seconds, 1_310_672_617);
}

#[test]
fn defaults_follow_the_original() {
    let batch = jobs(json!({"users":[{"tenantId":"t1","resources":[{"application":"app","resource":"r",
        "usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]},
        {"tenantId":"t2","userId":"bob","resources":[{"application":"app","resource":"r",
        "usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}))
    .unwrap();
    let (t1, t2) = (&batch.users[0], &batch.users[1]);
    assert_eq!((t1.user_id.as_str(), t1.user_type), ("t1", v1::UserType::Tenant as i32));
    assert_eq!((t2.user_id.as_str(), t2.user_type), ("bob", v1::UserType::User as i32));
    assert_eq!(t1.resources[0].alias, "app");
    assert_eq!(batch.users[1].resources[0].usages[0].index, 1);
}

#[test]
fn values_stay_exact() {
    let body = br#"{"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[
        {"value":0.1,"unit":"u","datetime":"2024-01-01T00:00:00Z"},
        {"value":12345678901234567890.123456789,"unit":"u","datetime":"2024-01-01T00:00:00Z"},
        {"value":2.5e2,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#;
    let batch = agree(body).unwrap();
    let values: Vec<&str> = batch.users[0].resources[0].usages.iter().map(|u| u.value.as_str()).collect();
    assert_eq!(values, ["0.1", "12345678901234567890.123456789", "250"]);
}

#[test]
fn every_malformed_field_is_named() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([]), "invalidRequestBodyProperty", "request body must be a JSON object"),
        (json!({}), "missingRequestBodyProperty", "users is required"),
        (json!({"users": []}), "invalidRequestBodyProperty", "users must not be empty"),
        (json!({"users": {}}), "invalidRequestBodyProperty", "users must be an array"),
        (json!({"users":[{"resources":[]}]}), "missingRequestBodyProperty", "users[0].tenantId is required"),
        (json!({"users":[{"tenantId":5}]}), "invalidRequestBodyProperty", "users[0].tenantId must be a string"),
        (json!({"users":[{"tenantId":" "}]}), "invalidRequestBodyProperty", "users[0].tenantId must not be empty"),
        (json!({"users":[{"tenantId":"t","userType":"robot","resources":[]}]}), "invalidRequestBodyProperty",
            "users[0].userType must be one of tenant, user, agent"),
        (json!({"users":[{"tenantId":"t","resources":[]}]}), "invalidRequestBodyProperty", "users[0].resources must not be empty"),
        (json!({"users":[{"tenantId":"t","resources":[{"resource":"r","usages":[]}]}]}), "missingRequestBodyProperty",
            "users[0].resources[0].application is required"),
        (json!({"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[
            {"value":"20","unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}), "invalidRequestBodyProperty",
            "users[0].resources[0].usages[0].value must be a number"),
        (json!({"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[
            {"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}), "missingRequestBodyProperty",
            "users[0].resources[0].usages[0].value is required"),
        (json!({"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[
            {"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"},
            {"value":1,"unit":"u","datetime":"yesterday"}]}]}]}), "invalidRequestBodyProperty",
            "users[0].resources[0].usages[1].datetime must be an RFC 3339 date-time with a time zone, e.g. 2011-07-14T19:43:37Z"),
        (json!({"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[
            {"value":1,"datetime":"2024-01-01T00:00:00Z"}]}]}]}), "missingRequestBodyProperty",
            "users[0].resources[0].usages[0].unit is required"),
    ];
    for (body, code, message) in cases {
        let (got_code, got_message) = message_of(jobs(body.clone()));
        assert_eq!(got_code, format!("mdsp.core.generic.{code}"), "{body}");
        assert_eq!(got_message, message, "{body}");
    }
}

#[test]
fn out_of_range_and_non_json_values_are_refused() {
    let (_, message) = message_of(agree(br#"{"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[{"value":1e400,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#));
    assert!(message.starts_with("users[0].resources[0].usages[0].value is out of range"), "{message}");
    let (code, message) = message_of(parse_usages_jobs(
        br#"{"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[{"value":NaN}]}]}]}"#,
    ));
    assert_eq!(code, "mdsp.core.generic.invalidRequestBodyProperty");
    assert!(message.starts_with("request body is not valid JSON"), "{message}");
    let (_, message) = message_of(parse_usages_jobs(b""));
    assert_eq!(message, "request body is empty; a JSON object is required");
}

#[test]
fn both_paths_agree_on_edge_cases() {
    let long = "x".repeat(257);
    let bodies: Vec<String> = vec![
        r#"{"users":[{"tenantId":"t\u00e9","userId":null,"resources":[{"application":"a\n","resource":"r","usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#.into(),
        r#"{"users":[{"tenantId":"t\u00e9","userId":null,"resources":[{"application":"a\"b","resource":"r","usages":[{"value":-0.5,"unit":"u","datetime":"2024-01-01T00:00:00+02:00"}]}]}]}"#.into(),
        r#"{"users":[{"tenantId":"t","tenantId":"u","resources":[{"application":"a","resource":"r","usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#.into(),
        r#"{"extra":1,"users":[{"tenantId":"t","x":{},"resources":[{"application":"a","alias":null,"resource":"r","usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z","note":"n"}]}]}]}"#.into(),
        r#"{"users":[{"tenantId":"t","userType":null,"resources":[{"application":"a","resource":"r","usages":[{"value":"1","unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#.into(),
        r#"{"users":[{"tenantId":"t","userType":"agent","resources":[{"application":"a","resource":"r","usages":[{"value":null,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#.into(),
        r#"{"users":[{"tenantId":"t","resources":[{"application":"a","resource":" ","usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}]}"#.into(),
        format!(r#"{{"users":[{{"tenantId":"{long}","resources":[{{"application":"a","resource":"r","usages":[{{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}}]}}]}}]}}"#),
        r#"{"users":[{"tenantId":"t","resources":[{"application":"a","resource":"r","usages":[{"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"}]}]}], "users": null}"#.into(),
        "null".into(),
        "".into(),
    ];
    let mut accepted = 0;
    for body in &bodies {
        accepted += usize::from(agree(body.as_bytes()).is_ok());
    }
    assert_eq!(accepted, 3, "escaped strings, duplicate keys and unknown fields are valid");
    // Ordinary valid bodies take the fast path.
    assert!(fast_usages_jobs(bodies[1].as_bytes()).is_some());
    assert!(fast_usages_jobs(bodies[3].as_bytes()).is_some());
}

#[test]
fn more_than_200_usages_are_refused_whole() {
    let usage = json!({"value":1,"unit":"u","datetime":"2024-01-01T00:00:00Z"});
    let body = |n: usize| {
        json!({"users":[
        {"tenantId":"t","resources":[{"application":"a","resource":"r","usages": vec![usage.clone(); n - 1]}]},
        {"tenantId":"t","resources":[{"application":"a","resource":"r","usages": [usage.clone()]}]}]})
    };
    assert_eq!(jobs(body(200)).unwrap().usages_count, 200);
    let err = jobs(body(201)).unwrap_err();
    assert_eq!(err.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err.message, "the request holds 201 usages; at most 200 are accepted per request");
}

#[test]
fn the_legacy_shape_maps_onto_a_job() {
    let body = json!({"CustomerTenantID":"core","CustomerUserID":"jo@core","UTSUsageData":[
        {"resourceName":"markAsset","resourceAlias":"managemymachines",
         "UsageData":[{"usage":1,"usageUnit":"manage-mymachine-unit","usageDate":"2020-07-30T23:55:37+0100"}]}]});
    let batch = parse_legacy_usages(body.to_string().as_bytes()).unwrap();
    let user = &batch.users[0];
    assert_eq!((user.tenant_id.as_str(), user.user_id.as_str()), ("core", "jo@core"));
    let resource = &user.resources[0];
    assert_eq!((resource.application.as_str(), resource.resource.as_str()), ("managemymachines", "markAsset"));
    assert_eq!(resource.usages[0].unit, "manage-mymachine-unit");
    let (_, message) = message_of(parse_legacy_usages(
        br#"{"CustomerTenantID":"core","CustomerUserID":"u","UTSUsageData":[{"UsageData":[]}]}"#,
    ));
    assert_eq!(message, "UTSUsageData[0].resourceAlias is required");
}
