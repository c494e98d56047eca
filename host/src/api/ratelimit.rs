//! Rate limiting with `governor`'s keyed GCRA limiter: per API key on the authenticated
//! API, per plugin on the unauthenticated inbound routes (a flood of forged callbacks
//! must not take every plugin slot). A caller over its rate gets 429 with
//! `Retry-After`. State lives in memory: a restart forgives.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::StatusCode;

use crate::domain::ids::KeyId;

use super::problem::Problem;

/// A keyed limiter: one bucket per key.
pub struct RateLimiter<K: Hash + Eq + Clone = KeyId> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    rate: f64,
    /// What a key is, for the problem's detail ("API key", "plugin").
    what: &'static str,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` requests per second sustained (fractions allowed), `burst` at once, per key
    /// of kind `what`.
    pub fn new(rate: f64, burst: f64, what: &'static str) -> RateLimiter<K> {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
        let burst = NonZeroU32::new(burst.max(1.0) as u32).expect("at least 1");
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst);
        RateLimiter {
            limiter: governor::RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            rate,
            what,
        }
    }

    /// Take one request for `key`, or say when to come back.
    pub fn check(&self, key: &K) -> Result<(), Problem> {
        let Err(not_until) = self.limiter.check_key(key) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(self.clock.now());
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            format!(
                "each {} is limited to {} requests per second",
                self.what, self.rate
            ),
        );
        p.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u32);
        Err(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l: RateLimiter = RateLimiter::new(1.0, 3.0, "API key");
        let k = KeyId::new();
        for _ in 0..3 {
            assert!(l.check(&k).is_ok());
        }
        let p = l.check(&k).unwrap_err();
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, Some(1));
        assert!(
            l.check(&KeyId::new()).is_ok(),
            "other keys have their own bucket"
        );
    }

    #[test]
    fn fractional_rates_hold_too() {
        let l: RateLimiter<&str> = RateLimiter::new(0.5, 1.0, "plugin");
        assert!(l.check(&"sandbox").is_ok());
        let p = l.check(&"sandbox").unwrap_err();
        assert_eq!(p.retry_after, Some(2));
    }
}
