//! Domain types shared by every stage: ids, enums of the API, exact decimals and datetimes.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use rust_decimal::Decimal;

use crate::proto::v1;

pub mod wire;

/// At most this many usages in one POST (DESIGN.md §3).
pub const MAX_USAGES_PER_REQUEST: usize = 200;

/// Longest accepted identifier-like string (tenant, user, application, unit, ...).
pub const MAX_NAME_LEN: usize = 256;

/// What is wrong with a name or id (tenant, application, unit, KPI, resource…): the one rule of
/// the service, used by the gateway, the admin API and the billing receiver alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters long")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Whether `text` holds a control character (C0, DEL or C1), which no name, id or parameter of
/// this API may hold.
pub fn has_control_character(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// `None` when `text` is a valid name of at most `max_len` characters.
pub fn name_problem(text: &str, max_len: usize) -> Option<NameProblem> {
    if text.trim().is_empty() {
        Some(NameProblem::Empty)
    } else if text.chars().count() > max_len {
        Some(NameProblem::TooLong(max_len))
    } else if has_control_character(text) {
        Some(NameProblem::ControlCharacter)
    } else {
        None
    }
}

/// Job ids. A job id is opaque text to clients and on the wire: the `job_id` of every contract
/// message, the key of `uts.usage-jobs` and `uts.status`, a text column, a path segment. The
/// gateway mints UUIDv7s; the query service reads the minting time back. There is no newtype:
/// every stage receives the id as the `String` of a prost message, so a wrapper would be a
/// conversion at each crossing that checks nothing (the event ids and keys built from it are in
/// [`wire`]).
pub mod job_id {
    use chrono::{DateTime, Utc};

    /// A new job id: a UUID v7 (time-ordered), as its hyphenated text.
    pub fn mint() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// When the gateway minted `id`; `None` for any id it did not mint.
    pub fn minted_at(id: &str) -> Option<DateTime<Utc>> {
        let (seconds, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
    }
}

/// `userType` of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserType {
    Tenant,
    User,
    Agent,
}

impl UserType {
    pub const ALL: [UserType; 3] = [UserType::Tenant, UserType::User, UserType::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            UserType::Tenant => "tenant",
            UserType::User => "user",
            UserType::Agent => "agent",
        }
    }

    pub fn to_proto(self) -> v1::UserType {
        match self {
            UserType::Tenant => v1::UserType::Tenant,
            UserType::User => v1::UserType::User,
            UserType::Agent => v1::UserType::Agent,
        }
    }

    pub fn from_proto(value: v1::UserType) -> Option<Self> {
        match value {
            v1::UserType::Tenant => Some(UserType::Tenant),
            v1::UserType::User => Some(UserType::User),
            v1::UserType::Agent => Some(UserType::Agent),
            v1::UserType::Unspecified => None,
        }
    }
}

impl FromStr for UserType {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        UserType::ALL.into_iter().find(|t| t.as_str() == text).ok_or(())
    }
}

/// Processing status of a usage (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageStatus {
    Accepted,
    Verified,
    NoVerification,
    VerificationFailed,
    Aggregated,
    SentForBilling,
    FailedToSendForBilling,
    ReceivedForBilling,
}

impl UsageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Accepted => "ACCEPTED",
            UsageStatus::Verified => "VERIFIED",
            UsageStatus::NoVerification => "NOVERIFICATION",
            UsageStatus::VerificationFailed => "VERIFICATIONFAILED",
            UsageStatus::Aggregated => "AGGREGATED",
            UsageStatus::SentForBilling => "SENTFORBILLING",
            UsageStatus::FailedToSendForBilling => "FAILEDTOSENDFORBILLING",
            UsageStatus::ReceivedForBilling => "RECEIVEDFORBILLING",
        }
    }

    pub fn to_proto(self) -> v1::UsageStatus {
        match self {
            UsageStatus::Accepted => v1::UsageStatus::Accepted,
            UsageStatus::Verified => v1::UsageStatus::Verified,
            UsageStatus::NoVerification => v1::UsageStatus::Noverification,
            UsageStatus::VerificationFailed => v1::UsageStatus::Verificationfailed,
            UsageStatus::Aggregated => v1::UsageStatus::Aggregated,
            UsageStatus::SentForBilling => v1::UsageStatus::Sentforbilling,
            UsageStatus::FailedToSendForBilling => v1::UsageStatus::Failedtosendforbilling,
            UsageStatus::ReceivedForBilling => v1::UsageStatus::Receivedforbilling,
        }
    }
}

/// Status of a job, derived from its usages' statuses (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Accepted,
    InProgress,
    Errors,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Accepted => "ACCEPTED",
            JobStatus::InProgress => "INPROGRESS",
            JobStatus::Errors => "ERRORS",
            JobStatus::Completed => "COMPLETED",
        }
    }
}

/// Kind of tenant (DESIGN.md §3): only developer and operator tenants may submit usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantType {
    Developer,
    Operator,
    Iot,
    Customer,
}

impl TenantType {
    pub const ALL: [TenantType; 4] =
        [TenantType::Developer, TenantType::Operator, TenantType::Iot, TenantType::Customer];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantType::Developer => "developer",
            TenantType::Operator => "operator",
            TenantType::Iot => "iot",
            TenantType::Customer => "customer",
        }
    }

    pub fn may_submit_usages(self) -> bool {
        matches!(self, TenantType::Developer | TenantType::Operator)
    }
}

impl FromStr for TenantType {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        TenantType::ALL.into_iter().find(|t| t.as_str() == text).ok_or(())
    }
}

/// How a daily bucket folds its usages (DESIGN.md §7). SUM when no rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AggregationFunction {
    #[default]
    Sum,
    Count,
    Min,
    Max,
    Avg,
    Last,
}

impl AggregationFunction {
    pub const ALL: [AggregationFunction; 6] = [
        AggregationFunction::Sum,
        AggregationFunction::Count,
        AggregationFunction::Min,
        AggregationFunction::Max,
        AggregationFunction::Avg,
        AggregationFunction::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AggregationFunction::Sum => "SUM",
            AggregationFunction::Count => "COUNT",
            AggregationFunction::Min => "MIN",
            AggregationFunction::Max => "MAX",
            AggregationFunction::Avg => "AVG",
            AggregationFunction::Last => "LAST",
        }
    }

    pub fn to_proto(self) -> v1::AggregationFunction {
        match self {
            AggregationFunction::Sum => v1::AggregationFunction::Sum,
            AggregationFunction::Count => v1::AggregationFunction::Count,
            AggregationFunction::Min => v1::AggregationFunction::Min,
            AggregationFunction::Max => v1::AggregationFunction::Max,
            AggregationFunction::Avg => v1::AggregationFunction::Avg,
            AggregationFunction::Last => v1::AggregationFunction::Last,
        }
    }
}

impl AggregationFunction {
    pub fn from_proto(value: v1::AggregationFunction) -> Option<Self> {
        AggregationFunction::ALL.into_iter().find(|f| f.to_proto() == value)
    }
}

impl FromStr for AggregationFunction {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        AggregationFunction::ALL.into_iter().find(|f| f.as_str() == text).ok_or(())
    }
}

/// Why a text is not an accepted datetime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an RFC 3339 date-time with a time zone, e.g. 2011-07-14T19:43:37Z")]
pub struct InvalidDateTime;

/// Parses an RFC 3339 date-time (`2011-07-14T19:43:37Z`, `…+01:00`, fractions of a second) and
/// normalises it to UTC. Also accepts the ISO 8601 basic offset `+0100` that clients of the
/// original `/usages` endpoint send (`2020-07-30T23:55:37+0100`). A time zone is required.
pub fn parse_datetime(text: &str) -> Result<DateTime<Utc>, InvalidDateTime> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Ok(dt.with_timezone(&Utc));
    }
    // `%z` accepts `+0100`; `%.f` accepts an optional fraction.
    DateTime::<FixedOffset>::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .map(|dt| dt.with_timezone(&Utc))
        .map_err(|_| InvalidDateTime)
}

/// Renders a datetime as the API does: RFC 3339, UTC, millisecond precision.
pub fn format_datetime(dt: DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn to_timestamp(dt: DateTime<Utc>) -> prost_types_timestamp::Timestamp {
    prost_types_timestamp::Timestamp { seconds: dt.timestamp(), nanos: dt.timestamp_subsec_nanos() as i32 }
}

pub fn from_timestamp(ts: &prost_types_timestamp::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

mod prost_types_timestamp {
    pub use crate::proto::Timestamp;
}

/// Why a JSON number is not an accepted usage value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDecimal {
    #[error("must be a decimal number")]
    NotANumber,
    #[error("is out of range: at most 28 significant digits and a magnitude below 7.9e28")]
    OutOfRange,
}

/// Parses the exact text of a JSON number (`20`, `0.125`, `-3`, `1.5e3`) into an exact decimal;
/// never goes through binary floating point.
pub fn parse_decimal(text: &str) -> Result<Decimal, InvalidDecimal> {
    let Some(at) = text.find(['e', 'E']) else {
        return Decimal::from_str_exact(text).map_err(|_| classify(text));
    };
    // Exponent notation is rewritten as the plain decimal it denotes and parsed exactly like
    // one: `Decimal::from_scientific` rounds (`1.00000000000000000000000000001e0` became `1`).
    let plain = plain_decimal(&text[..at], &text[at + 1..]).ok_or_else(|| classify(text))??;
    // Zeros that only the exponent put behind the point do not make a value inexact.
    let trimmed = if plain.contains('.') { plain.trim_end_matches('0').trim_end_matches('.') } else { &plain };
    Decimal::from_str_exact(&plain)
        .or_else(|_| Decimal::from_str_exact(trimmed))
        .map_err(|_| InvalidDecimal::OutOfRange)
}

/// `mantissa`×10^`exponent` written without an exponent; `None` when either part is not a
/// number, `OutOfRange` for an exponent far beyond the range (|e| > 100) with a non-zero mantissa.
fn plain_decimal(mantissa: &str, exponent: &str) -> Option<Result<String, InvalidDecimal>> {
    let (sign, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all: String = [int, fraction].concat();
    let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !numeric(&all) || !numeric(unsigned) {
        return None;
    }
    if all.bytes().all(|b| b == b'0') {
        return Some(Ok("0".to_owned()));
    }
    // Too long for i64 is far out of range too.
    let exponent = match exponent.parse::<i64>() {
        Ok(e) if e.unsigned_abs() <= 100 => e,
        _ => return Some(Err(InvalidDecimal::OutOfRange)),
    };
    let point = int.len() as i64 + exponent;
    Some(Ok(if point <= 0 {
        format!("{sign}0.{}{all}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= all.len() {
        format!("{sign}{all}{}", "0".repeat(point as usize - all.len()))
    } else {
        let (whole, part) = all.split_at(point as usize);
        format!("{sign}{whole}.{part}")
    }))
}

fn classify(text: &str) -> InvalidDecimal {
    let looks_numeric =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if looks_numeric {
        InvalidDecimal::OutOfRange
    } else {
        InvalidDecimal::NotANumber
    }
}

#[cfg(test)]
mod tests;
