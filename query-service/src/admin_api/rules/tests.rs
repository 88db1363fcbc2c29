use super::*;
use serde_json::{json, Value};

fn parse(body: Value) -> Result<RuleSpec, String> {
    parse_text(&body.to_string())
}

fn parse_text(text: &str) -> Result<RuleSpec, String> {
    let object = body::parse_object(text.as_bytes()).unwrap();
    parse_rule(&object).map_err(|err| err.message)
}

#[test]
fn defaults_fill_what_is_left_out() {
    let spec = parse(json!({"application": "app", "unit": "kWh", "ownerTenantId": "acme"})).unwrap();
    assert_eq!(
        spec,
        RuleSpec {
            application: "app".into(),
            unit: "kWh".into(),
            owner_tenant_id: "acme".into(),
            active: true,
            aggregation_function: AggregationFunction::Sum,
            billing_enabled: false,
            min_value: None,
            max_value: None,
            integers_only: false,
            allowed_user_types: None,
            max_age_days: None,
            max_future_minutes: None,
        }
    );
}

#[test]
fn every_property_is_read_exactly() {
    let spec = parse_text(
        r#"{"application":"app","unit":"kWh","ownerTenantId":"acme","active":false,"aggregationFunction":"MAX",
            "billingEnabled":true,"minValue":0.1,"maxValue":"99999999999999999999.5","integersOnly":true,
            "allowedUserTypes":["agent","tenant"],"maxAgeDays":35,"maxFutureMinutes":0}"#,
    )
    .unwrap();
    assert!(!spec.active && spec.billing_enabled && spec.integers_only);
    assert_eq!(spec.aggregation_function, AggregationFunction::Max);
    assert_eq!(spec.min_value.unwrap().to_string(), "0.1");
    assert_eq!(spec.max_value.unwrap().to_string(), "99999999999999999999.5");
    assert_eq!(spec.allowed_user_types, Some(vec![UserType::Agent, UserType::Tenant]));
    assert_eq!((spec.max_age_days, spec.max_future_minutes), (Some(35), Some(0)));
}

#[test]
fn bad_bodies_name_the_property() {
    let base = || json!({"application": "app", "unit": "kWh", "ownerTenantId": "acme"});
    let with = |key: &str, value: Value| {
        let mut body = base();
        body[key] = value;
        body
    };
    let cases = [
        (json!({"unit": "kWh", "ownerTenantId": "acme"}), "application is required"),
        (with("unit", json!("")), "unit must not be empty"),
        (with("ownerTenantId", json!(7)), "ownerTenantId must be a string"),
        (with("active", json!("yes")), "active must be true or false"),
        (
            with("aggregationFunction", json!("sum")),
            "aggregationFunction must be one of SUM, COUNT, MIN, MAX, AVG, LAST",
        ),
        (with("minValue", json!("ten")), "minValue must be a decimal number"),
        (with("maxValue", json!({"v": 1})), "maxValue must be a decimal number"),
        (with("allowedUserTypes", json!(["user", "robot"])), "allowedUserTypes[1] must be one of tenant, user, agent"),
        (with("maxAgeDays", json!(0)), "maxAgeDays must be a whole number from 1"),
        (with("maxFutureMinutes", json!(-1)), "maxFutureMinutes must be a whole number from 0"),
        (with("maxFutureMinutes", json!(2.5)), "maxFutureMinutes must be a whole number from 0"),
        (with("minvalue", json!(1)), "minvalue is not a property"),
    ];
    for (body, expected) in cases {
        let message = parse(body.clone()).unwrap_err();
        assert!(message.starts_with(expected), "{body}: {message}");
    }
}

#[test]
fn min_must_not_exceed_max() {
    let body = |min: &str, max: &str| {
        format!(r#"{{"application":"a","unit":"u","ownerTenantId":"t","minValue":{min},"maxValue":{max}}}"#)
    };
    assert!(parse_text(&body("1", "1")).is_ok());
    assert!(parse_text(&body("\"-0.5\"", "0")).is_ok());
    assert_eq!(parse_text(&body("2.50", "2.4")).unwrap_err(), "maxValue must not be less than minValue (2.50)");
}
