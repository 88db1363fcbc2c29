//! Per-tenant rate limiting (GCRA via governor) of the HTTP APIs: 429 `tooManyRequests` with
//! `Retry-After`. Each process counts on its own: N replicas allow N times the rate.

use std::num::NonZeroU32;

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

pub struct Throttle {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Throttle {
    /// `None` when `per_second` is 0 (rate limiting off).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// Counts one request of `tenant`; 429 when the tenant is over its quota.
    pub fn check(&self, tenant: &str) -> Result<(), ApiError> {
        // The key is cloned only for the map; governor needs an owned key type.
        match self.limiter.check_key(&tenant.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::too_many_requests(seconds.max(1)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_quota() {
        assert!(Throttle::new(0, 0).is_none());
        let throttle = Throttle::new(1, 2).unwrap();
        assert!(throttle.check("acme").is_ok());
        assert!(throttle.check("acme").is_ok());
        let err = throttle.check("acme").unwrap_err();
        assert_eq!(err.code, "tooManyRequests");
        assert_eq!(err.retry_after, Some(1));
        assert!(throttle.check("globex").is_ok());
    }
}
