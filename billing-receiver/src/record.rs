//! What a billing record must look like, and the `Idempotency-Key` header.
//!
//! A record is one version of one daily bucket, as the billing-forwarder sends it:
//!
//! ```json
//! {"bucket": {"providerTenant": "acme", "consumerTenant": "buyer", "application": "app",
//!             "unit": "kwh", "day": "2024-05-01"},
//!  "version": 3, "value": "20.5", "usagesCount": 7,
//!  "coveredVersions": {"from": 2, "to": 3}}
//! ```
//!
//! `coveredVersions` says which versions of the bucket the record stands for (the forwarder
//! sends only the newest due one; the value is absolute). `jobs` (`[{"jobId", "usagesCount"}]`)
//! is optional and checked when present.
//!
//! The required fields are checked strictly (each error names its field); other fields are
//! accepted and stored as sent, so the forwarder may add to the record without changing this
//! crate. The body is kept as parsed JSON with the exact text of every number, so what the
//! receiver shows is what it received.

use std::collections::HashMap;

use axum::http::HeaderMap;
use chrono::NaiveDate;
use serde_json::{Map, Value};
use uts_common::domain::{parse_decimal, MAX_NAME_LEN};
use uts_common::error::ApiError;

/// Header name, as clients send it.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// Why a request body is refused. `path` names the field
/// (`bucket.day`, `jobs[2].usagesCount`); empty for the body as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBody {
    #[error("{path} is required")]
    Missing { path: String },
    #[error("{path} {problem}")]
    Invalid { path: String, problem: String },
}

impl InvalidBody {
    fn invalid(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), problem: problem.into() }
    }

    /// The field the error is about.
    pub fn path(&self) -> &str {
        match self {
            Self::Missing { path } | Self::Invalid { path, .. } => path,
        }
    }
}

impl From<InvalidBody> for ApiError {
    fn from(err: InvalidBody) -> Self {
        match err {
            InvalidBody::Missing { path } => ApiError::missing_body_property(&path),
            InvalidBody::Invalid { path, problem } => ApiError::invalid_body_property(&path, problem),
        }
    }
}

/// A body that passed validation, with the fields the receiver logs.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingRecord {
    /// The whole body as sent (unknown fields included); this is what is stored and compared.
    pub body: Value,
    /// `provider/consumer/application/unit/day`, for logs.
    pub bucket: String,
    pub version: u64,
}

/// Parses and validates a request body.
pub fn parse(bytes: &[u8]) -> Result<BillingRecord, InvalidBody> {
    let body: Value =
        serde_json::from_slice(bytes).map_err(|err| InvalidBody::invalid("", format!("is not valid JSON: {err}")))?;
    let root = body.as_object().ok_or_else(|| InvalidBody::invalid("", "must be a JSON object"))?;

    let bucket = object(root, "bucket", "bucket")?;
    let mut bucket_parts = Vec::with_capacity(5);
    for field in ["providerTenant", "consumerTenant", "application", "unit"] {
        bucket_parts.push(name(bucket, field, &format!("bucket.{field}"))?);
    }
    bucket_parts.push(day(bucket, "day", "bucket.day")?);

    // proto3 renders an unset version as 0; refusing it catches a forwarder that forgot it.
    let version = integer(root, "version", "version")?;
    if version == 0 {
        return Err(InvalidBody::invalid("version", "must be at least 1"));
    }
    decimal_string(root, "value", "value")?;
    integer(root, "usagesCount", "usagesCount")?;

    let covered = object(root, "coveredVersions", "coveredVersions")?;
    let from = integer(covered, "from", "coveredVersions.from")?;
    let to = integer(covered, "to", "coveredVersions.to")?;
    if to != version {
        return Err(InvalidBody::invalid("coveredVersions.to", format!("must be the record's version {version}")));
    }
    if from == 0 || from > to {
        return Err(InvalidBody::invalid("coveredVersions.from", format!("must be between 1 and {to}")));
    }

    let jobs = match root.get("jobs") {
        None | Some(Value::Null) => &[][..],
        Some(jobs) => jobs.as_array().ok_or_else(|| InvalidBody::invalid("jobs", "must be an array"))?.as_slice(),
    };
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let path = format!("jobs[{index}]");
        let job = job.as_object().ok_or_else(|| InvalidBody::invalid(path.clone(), "must be an object"))?;
        let job_id = name(job, "jobId", &format!("{path}.jobId"))?;
        integer(job, "usagesCount", &format!("{path}.usagesCount"))?;
        if let Some(first) = seen.insert(job_id, index) {
            return Err(InvalidBody::invalid(
                format!("{path}.jobId"),
                format!("repeats jobs[{first}].jobId {job_id:?}; each job appears once"),
            ));
        }
    }

    let bucket = bucket_parts.join("/");
    Ok(BillingRecord { body, bucket, version })
}

/// Reads the required `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(IDEMPOTENCY_KEY_HEADER).ok_or_else(|| ApiError::missing_parameter("Idempotency-Key"))?;
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_parameter("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))
}

/// A present, non-null field. `null` counts as missing: it is what serializers write for an
/// unset optional.
fn required<'a>(map: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a Value, InvalidBody> {
    match map.get(field) {
        None | Some(Value::Null) => Err(InvalidBody::Missing { path: path.to_owned() }),
        Some(value) => Ok(value),
    }
}

fn object<'a>(map: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a Map<String, Value>, InvalidBody> {
    required(map, field, path)?.as_object().ok_or_else(|| InvalidBody::invalid(path, "must be an object"))
}

/// A name of at most [`MAX_NAME_LEN`] characters (tenant, application, unit, job id).
fn name<'a>(map: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a str, InvalidBody> {
    let text = required(map, field, path)?.as_str().ok_or_else(|| InvalidBody::invalid(path, "must be a string"))?;
    // The service's one name rule (the receiver's copy had drifted: no control-character check).
    match uts_common::domain::name_problem(text, MAX_NAME_LEN) {
        Some(problem) => Err(InvalidBody::invalid(path, problem.to_string())),
        None => Ok(text),
    }
}

/// A UTC day written `yyyy-mm-dd`.
fn day<'a>(map: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a str, InvalidBody> {
    let text = required(map, field, path)?.as_str().ok_or_else(|| InvalidBody::invalid(path, "must be a string"))?;
    // The length check refuses `2024-5-1`, which chrono's `%m`/`%d` would accept.
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(_) if text.len() == 10 => Ok(text),
        _ => Err(InvalidBody::invalid(path, format!("must be a day written yyyy-mm-dd, not {text:?}"))),
    }
}

/// A non-negative JSON integer (no fraction, no exponent).
fn integer(map: &Map<String, Value>, field: &str, path: &str) -> Result<u64, InvalidBody> {
    required(map, field, path)?.as_u64().ok_or_else(|| InvalidBody::invalid(path, "must be a non-negative integer"))
}

/// An exact decimal written as a JSON string (`"20.5"`): billing amounts never pass through
/// binary floating point, so a JSON number is refused rather than guessed at.
fn decimal_string(map: &Map<String, Value>, field: &str, path: &str) -> Result<(), InvalidBody> {
    let value = required(map, field, path)?;
    let text = value.as_str().ok_or_else(|| {
        InvalidBody::invalid(path, "must be a decimal number written as a JSON string, e.g. \"20.5\"")
    })?;
    parse_decimal(text).map(drop).map_err(|err| InvalidBody::invalid(path, format!("{err}, not {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "bucket": {"providerTenant": "acme", "consumerTenant": "buyer", "application": "app",
                       "unit": "kwh", "day": "2024-05-01"},
            "version": 3, "value": "20.50", "usagesCount": 7,
            "coveredVersions": {"from": 2, "to": 3},
            "jobs": [{"jobId": "job-1", "usagesCount": 2}, {"jobId": "job-2", "usagesCount": 5}],
            "function": "SUM"
        })
    }

    fn parse_value(body: &Value) -> Result<BillingRecord, InvalidBody> {
        parse(body.to_string().as_bytes())
    }

    fn with(mut body: Value, pointer: &str, value: Option<Value>) -> Value {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let target = body.pointer_mut(parent).unwrap();
        match (target, value) {
            (Value::Object(map), Some(value)) => {
                map.insert(field.to_owned(), value);
            }
            (Value::Object(map), None) => {
                map.remove(field);
            }
            (Value::Array(items), Some(value)) => items[field.parse::<usize>().unwrap()] = value,
            _ => panic!("cannot edit {pointer}"),
        }
        body
    }

    #[test]
    fn a_complete_record_is_accepted_and_kept_as_sent() {
        let record = parse_value(&sample()).unwrap();
        assert_eq!(record.bucket, "acme/buyer/app/kwh/2024-05-01");
        assert_eq!(record.version, 3);
        assert_eq!(record.body, sample(), "unknown fields and the value's exact text are kept");
        assert_eq!(record.body["value"], "20.50");
    }

    #[test]
    fn an_empty_or_missing_jobs_list_is_accepted() {
        assert!(parse_value(&with(sample(), "/jobs", Some(json!([])))).is_ok());
        assert!(parse_value(&with(sample(), "/jobs", None)).is_ok());
    }

    #[test]
    fn missing_fields_are_named() {
        for (pointer, path) in [
            ("/bucket", "bucket"),
            ("/bucket/providerTenant", "bucket.providerTenant"),
            ("/bucket/consumerTenant", "bucket.consumerTenant"),
            ("/bucket/application", "bucket.application"),
            ("/bucket/unit", "bucket.unit"),
            ("/bucket/day", "bucket.day"),
            ("/version", "version"),
            ("/value", "value"),
            ("/usagesCount", "usagesCount"),
            ("/coveredVersions", "coveredVersions"),
            ("/coveredVersions/from", "coveredVersions.from"),
            ("/coveredVersions/to", "coveredVersions.to"),
            ("/jobs/1/jobId", "jobs[1].jobId"),
            ("/jobs/0/usagesCount", "jobs[0].usagesCount"),
        ] {
            let err = parse_value(&with(sample(), pointer, None)).unwrap_err();
            assert_eq!(err, InvalidBody::Missing { path: path.to_owned() }, "{pointer}");
            let err = parse_value(&with(sample(), pointer, Some(Value::Null))).unwrap_err();
            assert_eq!(err, InvalidBody::Missing { path: path.to_owned() }, "{pointer} = null");
        }
    }

    #[test]
    fn wrong_values_are_named() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for (pointer, value, path) in [
            ("/bucket", json!("acme"), "bucket"),
            ("/bucket/providerTenant", json!(""), "bucket.providerTenant"),
            ("/bucket/consumerTenant", json!(7), "bucket.consumerTenant"),
            ("/bucket/unit", json!(long), "bucket.unit"),
            ("/bucket/application", json!("app\u{0}"), "bucket.application"),
            ("/bucket/day", json!("2024-5-1"), "bucket.day"),
            ("/bucket/day", json!("2024-02-30"), "bucket.day"),
            ("/bucket/day", json!("2024-05-01T00:00:00Z"), "bucket.day"),
            ("/version", json!(0), "version"),
            ("/version", json!(-1), "version"),
            ("/version", json!(1.5), "version"),
            ("/version", json!("3"), "version"),
            ("/value", json!(20.5), "value"),
            ("/value", json!("twenty"), "value"),
            ("/value", json!(""), "value"),
            ("/value", json!("1e400"), "value"),
            ("/usagesCount", json!(-7), "usagesCount"),
            ("/coveredVersions", json!([2, 3]), "coveredVersions"),
            ("/coveredVersions/to", json!(4), "coveredVersions.to"),
            ("/coveredVersions/from", json!(0), "coveredVersions.from"),
            ("/coveredVersions/from", json!(4), "coveredVersions.from"),
            ("/jobs", json!({}), "jobs"),
            ("/jobs/0", json!("job-1"), "jobs[0]"),
            ("/jobs/1/jobId", json!(" "), "jobs[1].jobId"),
            ("/jobs/1/jobId", json!("job-1"), "jobs[1].jobId"),
            ("/jobs/1/usagesCount", json!("5"), "jobs[1].usagesCount"),
        ] {
            let err = parse_value(&with(sample(), pointer, Some(value.clone()))).unwrap_err();
            assert!(matches!(&err, InvalidBody::Invalid { path: p, .. } if p == path), "{pointer} = {value}: {err:?}");
            assert!(err.to_string().starts_with(path), "{err}");
        }
    }

    #[test]
    fn the_body_must_be_a_json_object() {
        for body in ["", "not json", "[1]", "\"x\"", "{\"bucket\":"] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.path(), "", "{body}");
        }
    }

    #[test]
    fn errors_become_mdsp_bodies_naming_the_field() {
        let err: ApiError = InvalidBody::Missing { path: "bucket.day".into() }.into();
        assert_eq!(err.full_code(), "mdsp.core.generic.missingRequestBodyProperty");
        assert_eq!(err.message, "bucket.day is required");
        let err: ApiError = InvalidBody::invalid("value", "must be a string").into();
        assert_eq!(err.full_code(), "mdsp.core.generic.invalidRequestBodyProperty");
        assert_eq!(err.parameters[0].value, "value");
    }

    #[test]
    fn idempotency_keys_are_required_and_checked() {
        let mut headers = HeaderMap::new();
        let err = idempotency_key(&headers).unwrap_err();
        assert_eq!(err.full_code(), "mdsp.core.generic.missingParameter");
        assert!(err.message.starts_with("Idempotency-Key"));

        headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static(" acme/app/2024-05-01/v3 "));
        assert_eq!(idempotency_key(&headers).unwrap(), "acme/app/2024-05-01/v3");

        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in ["", "  ", "has space", too_long.as_str()] {
            headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_str(bad).unwrap());
            let err = idempotency_key(&headers).unwrap_err();
            assert_eq!(err.full_code(), "mdsp.core.generic.invalidParameter", "{bad:?}");
        }
    }
}
