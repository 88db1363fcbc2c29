use super::*;

#[test]
fn months_parse_every_spelling() {
    assert_eq!(parse_month("1").unwrap(), 1);
    assert_eq!(parse_month("01").unwrap(), 1);
    assert_eq!(parse_month("January").unwrap(), 1);
    assert_eq!(parse_month("december").unwrap(), 12);
    assert!(parse_month("13").is_err() && parse_month("001").is_err() && parse_month("jan").is_err());
}
