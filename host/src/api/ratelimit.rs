//! Per-key rate limiting: a token bucket per API key, refilled continuously. A caller over
//! its rate gets 429 with `Retry-After`. Buckets live in memory: a restart forgives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::StatusCode;

use crate::domain::ids::KeyId;

use super::problem::Problem;

/// The limiter.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<KeyId, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`, or say when to come back.
    pub fn check(&self, key: KeyId) -> Result<(), Problem> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u32;
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            format!(
                "this API key is limited to {} requests per second",
                self.rate
            ),
        );
        p.retry_after = Some(wait);
        Err(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = RateLimiter::new(1.0, 3.0);
        let k = KeyId::new();
        for _ in 0..3 {
            assert!(l.check(k).is_ok());
        }
        let p = l.check(k).unwrap_err();
        assert_eq!(p.status, 429);
        assert_eq!(p.retry_after, Some(1));
        assert!(
            l.check(KeyId::new()).is_ok(),
            "other keys have their own bucket"
        );
    }
}
