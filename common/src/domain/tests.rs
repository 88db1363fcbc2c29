use super::*;

#[test]
fn datetimes_are_rfc3339_normalised_to_utc() {
    let dt = parse_datetime("2011-07-14T19:43:37Z").unwrap();
    assert_eq!(format_datetime(dt), "2011-07-14T19:43:37.000Z");
    let dt = parse_datetime("2020-07-30T23:55:37.25+01:00").unwrap();
    assert_eq!(format_datetime(dt), "2020-07-30T22:55:37.250Z");
    let dt = parse_datetime("2020-07-30T23:55:37+0100").unwrap();
    assert_eq!(format_datetime(dt), "2020-07-30T22:55:37.000Z");
    for bad in ["2011-07-14", "2011-07-14T19:43:37", "14.07.2011 19:43", "", "2011-13-14T19:43:37Z"] {
        assert_eq!(parse_datetime(bad), Err(InvalidDateTime), "{bad}");
    }
}

#[test]
fn timestamps_round_trip() {
    let dt = parse_datetime("2024-02-29T23:59:59.123456789Z").unwrap();
    assert_eq!(from_timestamp(&to_timestamp(dt)), Some(dt));
}

#[test]
fn decimals_are_exact() {
    assert_eq!(parse_decimal("0.1").unwrap().to_string(), "0.1");
    assert_eq!(parse_decimal("20").unwrap().to_string(), "20");
    assert_eq!(parse_decimal("1.5e3").unwrap().to_string(), "1500");
    assert_eq!(parse_decimal("-2.50").unwrap().to_string(), "-2.50");
    assert_eq!(parse_decimal("12345678901234567890.12345678").unwrap().to_string(), "12345678901234567890.12345678");
    assert_eq!(parse_decimal("1e400"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("99999999999999999999999999999999"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("abc"), Err(InvalidDecimal::NotANumber));
}

#[test]
fn exponent_notation_is_exact_or_refused() {
    for (text, exact) in [
        ("1.5e3", "1500"),
        ("15E-1", "1.5"),
        ("-2.5e+2", "-250"),
        ("1.25e-2", "0.0125"),
        ("0e999999", "0"),
        ("100e-30", "0.0000000000000000000000000001"),
        ("1.0000000000000000000000000001e0", "1.0000000000000000000000000001"),
    ] {
        assert_eq!(parse_decimal(text).map(|d| d.to_string()), Ok(exact.to_owned()), "{text}");
    }
    // The same digits without an exponent are refused; so they are with one.
    assert_eq!(parse_decimal("1.00000000000000000000000000001"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("1.00000000000000000000000000001e0"), Err(InvalidDecimal::OutOfRange));
    let tiny = format!("0.{}1e0", "0".repeat(98));
    assert_eq!(parse_decimal(&tiny), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("1e-29"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("8e28"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("1e99999999999999999999"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("1e"), Err(InvalidDecimal::OutOfRange));
    assert_eq!(parse_decimal("xe5"), Err(InvalidDecimal::NotANumber));
}

#[test]
fn enums_parse_their_api_spelling() {
    assert_eq!("agent".parse::<UserType>(), Ok(UserType::Agent));
    assert!("Agent".parse::<UserType>().is_err());
    assert_eq!("iot".parse::<TenantType>(), Ok(TenantType::Iot));
    assert!(TenantType::Operator.may_submit_usages());
    assert!(!TenantType::Customer.may_submit_usages());
}
