//! Reading the properties of an admin request body, each error naming the property.
//!
//! Bodies are parsed into a JSON tree with the exact text of every number (serde_json's
//! `arbitrary_precision`), then read property by property, so that a wrong value is answered
//! with 400 naming exactly that property. `null` counts as absent everywhere: a full update
//! (`PUT`) without an optional property resets it to its default.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uts_common::domain::{parse_decimal, InvalidDecimal, MAX_NAME_LEN};
use uts_common::error::ApiError;

pub use uts_common::tenants::MAX_TENANT_ID_LEN;

/// A request body's top-level object.
pub type Object = Map<String, Value>;

/// Parses a body that must be one JSON object.
pub fn parse_object(body: &[u8]) -> Result<Object, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body_property("", "is empty; a JSON object is required"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_body_property("", format_args!("is not valid JSON: {err}")))?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::invalid_body_property("", "must be a JSON object")),
    }
}

/// Refuses properties that are neither `known` nor `ignored`. `ignored` are the read-only
/// properties of the answer (`createdAt`, `version`, ...), so that a fetched resource can be
/// edited and sent back as it is.
pub fn check_properties(object: &Object, known: &[&str], ignored: &[&str]) -> Result<(), ApiError> {
    match object.keys().find(|key| !known.contains(&key.as_str()) && !ignored.contains(&key.as_str())) {
        Some(key) => Err(ApiError::invalid_body_property(
            key,
            format_args!("is not a property of this resource (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A string property that must be present.
pub fn required_name(object: &Object, key: &str) -> Result<String, ApiError> {
    optional_name(object, key)?.ok_or_else(|| ApiError::missing_body_property(key))
}

/// A non-blank string of at most [`MAX_NAME_LEN`] characters without control characters;
/// `None` when absent or null.
pub fn optional_name(object: &Object, key: &str) -> Result<Option<String>, ApiError> {
    optional_text(object, key, MAX_NAME_LEN)
}

/// A tenant id that must be present.
pub fn required_tenant_id(object: &Object, key: &str) -> Result<String, ApiError> {
    optional_tenant_id(object, key)?.ok_or_else(|| ApiError::missing_body_property(key))
}

/// Like [`optional_name`], at most [`MAX_TENANT_ID_LEN`] characters.
pub fn optional_tenant_id(object: &Object, key: &str) -> Result<Option<String>, ApiError> {
    optional_text(object, key, MAX_TENANT_ID_LEN)
}

fn optional_text(object: &Object, key: &str, max_len: usize) -> Result<Option<String>, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => match name_problem(text, max_len) {
            Some(problem) => Err(ApiError::invalid_body_property(key, problem)),
            None => Ok(Some(text.clone())),
        },
        Some(_) => Err(ApiError::invalid_body_property(key, "must be a string")),
    }
}

pub use uts_common::domain::name_problem;

/// A boolean property; `default` when absent or null.
pub fn optional_bool(object: &Object, key: &str, default: bool) -> Result<bool, ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(ApiError::invalid_body_property(key, "must be true or false")),
    }
}

/// A string property with one of the spellings in `allowed` (parsed by `T::from_str`).
pub fn optional_choice<T: FromStr>(object: &Object, key: &str, allowed: &[&str]) -> Result<Option<T>, ApiError> {
    let choice_error = || ApiError::invalid_body_property(key, format_args!("must be one of {}", allowed.join(", ")));
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text.parse::<T>().map(Some).map_err(|_| choice_error()),
        Some(_) => Err(choice_error()),
    }
}

/// Like [`optional_choice`], but the property must be present.
pub fn required_choice<T: FromStr>(object: &Object, key: &str, allowed: &[&str]) -> Result<T, ApiError> {
    optional_choice(object, key, allowed)?.ok_or_else(|| ApiError::missing_body_property(key))
}

/// An exact decimal, given as a JSON number (its exact text) or as a string holding one. Never
/// goes through binary floating point.
pub fn optional_decimal(object: &Object, key: &str) -> Result<Option<Decimal>, ApiError> {
    let text = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(_) => {
            return Err(ApiError::invalid_body_property(
                key,
                "must be a decimal number (a JSON number or a string holding one)",
            ))
        }
    };
    match parse_decimal(&text) {
        Ok(value) => Ok(Some(value)),
        Err(InvalidDecimal::NotANumber) => Err(ApiError::invalid_body_property(
            key,
            "must be a decimal number (a JSON number or a string holding one)",
        )),
        Err(problem) => Err(ApiError::invalid_body_property(key, problem)),
    }
}

/// A whole JSON number in `min..=max` (which must fit the `integer` columns).
pub fn optional_integer(object: &Object, key: &str, min: i32, max: i32) -> Result<Option<i32>, ApiError> {
    let range_error =
        || ApiError::invalid_body_property(key, format_args!("must be a whole number from {min} to {max}"));
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => {
            // `as_i64` is `None` for fractions, exponents and numbers beyond i64.
            let value = number.as_i64().ok_or_else(range_error)?;
            i32::try_from(value).ok().filter(|value| (min..=max).contains(value)).map(Some).ok_or_else(range_error)
        }
        Some(_) => Err(range_error()),
    }
}

/// An array of distinct choices; `None` when absent or null. An empty array is refused:
/// absence already means "no restriction", and "nothing allowed" is what `active: false` is for.
pub fn optional_choice_list<T: FromStr + PartialEq>(
    object: &Object,
    key: &str,
    allowed: &[&str],
) -> Result<Option<Vec<T>>, ApiError> {
    let items = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid_body_property(key, "must be an array or null")),
    };
    if items.is_empty() {
        return Err(ApiError::invalid_body_property(
            key,
            "must not be empty; leave it out or send null to allow every value",
        ));
    }
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let choice_error =
            || ApiError::invalid_body_property(&path, format_args!("must be one of {}", allowed.join(", ")));
        let value = item.as_str().ok_or_else(choice_error)?.parse::<T>().map_err(|_| choice_error())?;
        if out.contains(&value) {
            return Err(ApiError::invalid_body_property(&path, "repeats an earlier entry"));
        }
        out.push(value);
    }
    Ok(Some(out))
}

/// The resource's id in a body must, when sent, equal the id in the path.
pub fn check_matches_path(object: &Object, key: &str, in_path: &str) -> Result<(), ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) if text == in_path => Ok(()),
        Some(_) => Err(ApiError::invalid_body_property(
            key,
            format_args!("must be left out or equal the {key} of the path ({in_path})"),
        )),
    }
}

/// Ids assigned by the service must not be sent when creating a resource.
pub fn check_absent(object: &Object, key: &str) -> Result<(), ApiError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(_) => {
            Err(ApiError::invalid_body_property(key, "is assigned by the service and must not be sent when creating"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uts_common::domain::UserType;

    fn object(value: Value) -> Object {
        parse_object(value.to_string().as_bytes()).unwrap()
    }

    fn problem<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (String, String) {
        let err = result.unwrap_err();
        (err.full_code(), err.message)
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(problem(parse_object(b"  ")).1.contains("is empty"));
        assert!(problem(parse_object(b"{\"a\":")).1.starts_with("request body is not valid JSON"));
        assert_eq!(problem(parse_object(b"[1]")).1, "request body must be a JSON object");
    }

    #[test]
    fn names_are_checked_and_null_is_absent() {
        let body = object(json!({"a": "x", "b": "  ", "c": 3, "d": null, "e": "x".repeat(257), "f": "a\nb"}));
        assert_eq!(required_name(&body, "a").unwrap(), "x");
        assert_eq!(problem(required_name(&body, "b")).1, "b must not be empty");
        assert_eq!(problem(required_name(&body, "c")).1, "c must be a string");
        assert_eq!(
            problem(required_name(&body, "d")),
            ("mdsp.core.generic.missingRequestBodyProperty".to_owned(), "d is required".to_owned())
        );
        assert_eq!(optional_name(&body, "missing").unwrap(), None);
        assert_eq!(problem(optional_name(&body, "e")).1, "e must be at most 256 characters long");
        assert_eq!(problem(optional_name(&body, "f")).1, "f must not contain control characters");
        let long_tenant = object(json!({"t": "t".repeat(129)}));
        assert_eq!(problem(optional_tenant_id(&long_tenant, "t")).1, "t must be at most 128 characters long");
    }

    #[test]
    fn decimals_are_exact_from_numbers_and_strings() {
        let body = object(json!({"n": 0.1, "s": "12345678901234567890.12345678", "z": "-2.50"}));
        assert_eq!(optional_decimal(&body, "n").unwrap().unwrap().to_string(), "0.1");
        assert_eq!(optional_decimal(&body, "s").unwrap().unwrap().to_string(), "12345678901234567890.12345678");
        assert_eq!(optional_decimal(&body, "z").unwrap().unwrap().to_string(), "-2.50");
        // The number's text, not an f64: 0.1 + 0.2 style noise never appears.
        let raw = parse_object(br#"{"n": 0.30000000000000000001, "e": 1.5e3}"#).unwrap();
        assert_eq!(optional_decimal(&raw, "n").unwrap().unwrap().to_string(), "0.30000000000000000001");
        assert_eq!(optional_decimal(&raw, "e").unwrap().unwrap().to_string(), "1500");
        for bad in [json!("abc"), json!(true), json!([1]), json!("NaN"), json!("")] {
            let body = object(json!({ "v": bad }));
            assert!(problem(optional_decimal(&body, "v")).1.starts_with("v must be a decimal number"), "{bad}");
        }
        let huge = parse_object(br#"{"v": 1e400}"#).unwrap();
        assert!(problem(optional_decimal(&huge, "v")).1.starts_with("v is out of range"));
    }

    #[test]
    fn integers_are_whole_and_in_range() {
        let body = parse_object(br#"{"a": 3, "b": 0, "c": 1.5, "d": "7", "e": 99999999999, "f": 1e2}"#).unwrap();
        assert_eq!(optional_integer(&body, "a", 1, i32::MAX).unwrap(), Some(3));
        assert_eq!(optional_integer(&body, "b", 0, i32::MAX).unwrap(), Some(0));
        assert!(problem(optional_integer(&body, "b", 1, i32::MAX)).1.starts_with("b must be a whole number from 1"));
        for key in ["c", "d", "e", "f"] {
            assert!(optional_integer(&body, key, 0, i32::MAX).is_err(), "{key}");
        }
    }

    #[test]
    fn choice_lists_name_the_bad_entry() {
        let allowed = ["tenant", "user", "agent"];
        let ok = object(json!({"t": ["user", "agent"]}));
        assert_eq!(
            optional_choice_list::<UserType>(&ok, "t", &allowed).unwrap(),
            Some(vec![UserType::User, UserType::Agent])
        );
        let cases = [
            (json!(["user", "robot"]), "t[1] must be one of tenant, user, agent"),
            (json!(["user", 3]), "t[1] must be one of tenant, user, agent"),
            (json!(["user", "user"]), "t[1] repeats an earlier entry"),
            (json!([]), "t must not be empty; leave it out or send null to allow every value"),
            (json!("user"), "t must be an array or null"),
        ];
        for (value, expected) in cases {
            let body = object(json!({ "t": value }));
            assert_eq!(problem(optional_choice_list::<UserType>(&body, "t", &allowed)).1, expected);
        }
    }

    #[test]
    fn unknown_properties_are_named_and_read_only_ones_ignored() {
        let body = object(json!({"a": 1, "createdAt": "x", "minvalue": 3}));
        assert!(problem(check_properties(&body, &["a"], &["createdAt"])).1.starts_with("minvalue is not a property"));
        let body = object(json!({"a": 1, "createdAt": "x"}));
        assert!(check_properties(&body, &["a"], &["createdAt"]).is_ok());
    }

    #[test]
    fn ids_in_the_body_must_match_the_path() {
        let body = object(json!({"ruleId": "abc"}));
        assert!(check_matches_path(&body, "ruleId", "abc").is_ok());
        assert!(problem(check_matches_path(&body, "ruleId", "xyz")).1.starts_with("ruleId must be left out"));
        assert!(problem(check_absent(&body, "ruleId")).1.starts_with("ruleId is assigned by the service"));
    }
}
