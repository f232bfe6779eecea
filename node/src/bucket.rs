//! A token bucket, for rate limits (p2p peers, RPC callers).

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most one second's worth.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Changes the rate (and the capacity, one second's worth), keeping the tokens
    /// up to the new capacity.
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = rate;
        self.tokens = self.tokens.min(rate);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt; returns how long to wait until the debt is
    /// paid.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_rate_then_refuses_then_refills() {
        let start = Instant::now();
        let mut b = Bucket::new(3.0);
        assert!((0..3).all(|_| b.try_take(1.0, start)));
        assert!(!b.try_take(1.0, start));
        assert!(b.try_take(1.0, start + Duration::from_millis(400)));
        // Debt is paid back at the rate.
        let mut b = Bucket::new(100.0);
        assert_eq!(b.take(100.0, start), Duration::ZERO);
        assert_eq!(b.take(50.0, start), Duration::from_millis(500));
    }
}
