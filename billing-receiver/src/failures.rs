//! Failure injection: make the next record POSTs fail on purpose, so tests and demos can watch
//! the billing-forwarder retry, back off and report FAILEDTOSENDFORBILLING (5xx, timeouts), or
//! refuse a record for good (422).
//!
//! A plan has a mode and two optional limits, a number of requests and a duration; it ends
//! when the first of them runs out, and lasts until cleared when neither is given. Time is
//! measured on the monotonic clock, and every function takes `now` so the logic is tested
//! without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::record::InvalidBody;

/// Longest accepted `seconds`: a day is plenty for a demo, and it keeps `Instant` arithmetic
/// far from overflow.
pub const MAX_FAILURE_SECONDS: f64 = 86_400.0;

/// How an injected failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// 500 Internal Server Error at once.
    Http500,
    /// 503 Service Unavailable at once, with `Retry-After: 1`.
    Http503,
    /// 422 Unprocessable Entity at once: billing refuses the record for good (a client error
    /// the forwarder must not retry).
    Http422,
    /// Hold the request for `--timeout-hold-ms`, then 504: long enough for a client timeout.
    Timeout,
}

impl FailureMode {
    pub const ALL: [FailureMode; 4] =
        [FailureMode::Http500, FailureMode::Http503, FailureMode::Http422, FailureMode::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http500 => "http500",
            Self::Http503 => "http503",
            Self::Http422 => "http422",
            Self::Timeout => "timeout",
        }
    }
}

/// A request to fail: what `POST /admin/failures` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePlan {
    pub mode: FailureMode,
    /// Fail this many requests, then stop.
    pub count: Option<u64>,
    /// Fail every request for this long, then stop.
    pub duration: Option<Duration>,
}

impl FailurePlan {
    /// Parses `{"mode": "http500"|"http503"|"timeout", "count": N?, "seconds": S?}`.
    pub fn parse(bytes: &[u8]) -> Result<Self, InvalidBody> {
        let invalid = |path: &str, problem: String| InvalidBody::Invalid { path: path.to_owned(), problem };
        let body: Value =
            serde_json::from_slice(bytes).map_err(|err| invalid("", format!("is not valid JSON: {err}")))?;
        let map = body.as_object().ok_or_else(|| invalid("", "must be a JSON object".into()))?;
        let names = || FailureMode::ALL.map(FailureMode::as_str).join(", ");
        let mode = match map.get("mode") {
            None | Some(Value::Null) => return Err(InvalidBody::Missing { path: "mode".into() }),
            Some(Value::String(text)) => FailureMode::ALL
                .into_iter()
                .find(|mode| mode.as_str() == text)
                .ok_or_else(|| invalid("mode", format!("must be one of {}, not {text:?}", names())))?,
            Some(_) => return Err(invalid("mode", format!("must be one of {}", names()))),
        };
        let count = match map.get("count") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| invalid("count", "must be a positive integer".into()))?,
            ),
        };
        let duration = match map.get("seconds") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_f64()
                    .filter(|&s| s > 0.0 && s <= MAX_FAILURE_SECONDS)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        invalid("seconds", format!("must be a number above 0 and at most {MAX_FAILURE_SECONDS}"))
                    })?,
            ),
        };
        Ok(Self { mode, count, duration })
    }
}

/// What `GET /admin/failures` shows; every field is `null` when no failure is planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureStatus {
    pub mode: Option<FailureMode>,
    /// Requests still to fail; `null` when only time limits the plan (or nothing is planned).
    pub remaining_count: Option<u64>,
    /// Seconds left; `null` when only the count limits the plan (or nothing is planned).
    pub remaining_seconds: Option<f64>,
}

/// The plan in force.
#[derive(Debug, Default)]
pub struct FailureInjector {
    active: Mutex<Option<Active>>,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    mode: FailureMode,
    remaining: Option<u64>,
    until: Option<Instant>,
}

impl Active {
    fn is_over(&self, now: Instant) -> bool {
        self.remaining == Some(0) || self.until.is_some_and(|until| now >= until)
    }
}

impl FailureInjector {
    /// Replaces the plan in force.
    pub fn set(&self, plan: &FailurePlan, now: Instant) {
        *self.lock() = Some(Active {
            mode: plan.mode,
            remaining: plan.count,
            until: plan.duration.map(|duration| now + duration),
        });
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// Decides whether the request in hand fails, and how; a failing request uses up one of
    /// the plan's count.
    pub fn next_failure(&self, now: Instant) -> Option<FailureMode> {
        let mut active = self.lock();
        let plan = active.as_mut()?;
        if plan.is_over(now) {
            *active = None;
            return None;
        }
        if let Some(remaining) = &mut plan.remaining {
            *remaining -= 1;
        }
        Some(plan.mode)
    }

    pub fn status(&self, now: Instant) -> FailureStatus {
        let mut active = self.lock();
        match *active {
            Some(plan) if !plan.is_over(now) => FailureStatus {
                mode: Some(plan.mode),
                remaining_count: plan.remaining,
                remaining_seconds: plan.until.map(|until| (until - now).as_secs_f64()),
            },
            _ => {
                *active = None;
                FailureStatus { mode: None, remaining_count: None, remaining_seconds: None }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        // The guarded value is a plain copyable plan: always consistent, even after a panic.
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: &str) -> Result<FailurePlan, InvalidBody> {
        FailurePlan::parse(body.as_bytes())
    }

    #[test]
    fn plans_parse_with_optional_limits() {
        assert_eq!(
            plan(r#"{"mode":"http503","count":2}"#).unwrap(),
            FailurePlan { mode: FailureMode::Http503, count: Some(2), duration: None }
        );
        assert_eq!(
            plan(r#"{"mode":"timeout","seconds":1.5}"#).unwrap(),
            FailurePlan { mode: FailureMode::Timeout, count: None, duration: Some(Duration::from_millis(1500)) }
        );
        assert_eq!(
            plan(r#"{"mode":"http500","count":null}"#).unwrap(),
            FailurePlan { mode: FailureMode::Http500, count: None, duration: None }
        );
    }

    #[test]
    fn bad_plans_name_the_field() {
        for (body, path) in [
            (r#"{}"#, "mode"),
            (r#"{"mode":"http404"}"#, "mode"),
            (r#"{"mode":500}"#, "mode"),
            (r#"{"mode":"http500","count":0}"#, "count"),
            (r#"{"mode":"http500","count":-1}"#, "count"),
            (r#"{"mode":"http500","count":"2"}"#, "count"),
            (r#"{"mode":"http500","seconds":0}"#, "seconds"),
            (r#"{"mode":"http500","seconds":1e9}"#, "seconds"),
            (r#"[]"#, ""),
            (r#"nope"#, ""),
        ] {
            assert_eq!(plan(body).unwrap_err().path(), path, "{body}");
        }
    }

    #[test]
    fn a_count_fails_exactly_that_many_requests() {
        let injector = FailureInjector::default();
        let now = Instant::now();
        assert_eq!(injector.next_failure(now), None);
        injector.set(&plan(r#"{"mode":"http503","count":2}"#).unwrap(), now);
        assert_eq!(injector.status(now).remaining_count, Some(2));
        assert_eq!(injector.next_failure(now), Some(FailureMode::Http503));
        assert_eq!(injector.next_failure(now), Some(FailureMode::Http503));
        assert_eq!(injector.next_failure(now), None);
        assert_eq!(injector.status(now).mode, None);
    }

    #[test]
    fn a_duration_fails_every_request_until_it_ends() {
        let injector = FailureInjector::default();
        let start = Instant::now();
        injector.set(&plan(r#"{"mode":"http500","seconds":10}"#).unwrap(), start);
        for _ in 0..5 {
            assert_eq!(injector.next_failure(start + Duration::from_secs(9)), Some(FailureMode::Http500));
        }
        let status = injector.status(start + Duration::from_secs(4));
        assert_eq!(status.remaining_seconds, Some(6.0));
        assert_eq!(status.remaining_count, None);
        assert_eq!(injector.next_failure(start + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_first_limit_to_run_out_ends_the_plan() {
        let injector = FailureInjector::default();
        let start = Instant::now();
        injector.set(&plan(r#"{"mode":"timeout","count":1,"seconds":10}"#).unwrap(), start);
        assert_eq!(injector.next_failure(start), Some(FailureMode::Timeout));
        assert_eq!(injector.next_failure(start), None, "the count ran out first");

        injector.set(&plan(r#"{"mode":"timeout","count":100,"seconds":10}"#).unwrap(), start);
        assert_eq!(injector.next_failure(start + Duration::from_secs(11)), None, "the time ran out first");
    }

    #[test]
    fn without_limits_a_plan_lasts_until_cleared() {
        let injector = FailureInjector::default();
        let start = Instant::now();
        injector.set(&plan(r#"{"mode":"http500"}"#).unwrap(), start);
        assert_eq!(injector.next_failure(start + Duration::from_secs(1_000_000)), Some(FailureMode::Http500));
        injector.clear();
        assert_eq!(injector.next_failure(start), None);
        assert_eq!(
            injector.status(start),
            FailureStatus { mode: None, remaining_count: None, remaining_seconds: None }
        );
    }
}
