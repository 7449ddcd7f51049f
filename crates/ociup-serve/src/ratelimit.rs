//! Per-token rate limits: a token bucket per token name, `burst` requests deep, refilled at
//! `per_second`. A request that finds the bucket empty is refused (429 `rate_limited`) with the
//! seconds until a request would be taken again in `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_second` requests a second on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests a second, on average.
    pub per_second: f64,
    /// Requests taken at once after a quiet spell (the bucket's depth).
    pub burst: u32,
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N/s` (N requests a second, a burst of N), or `N/m` (a minute, a burst of N). `N` may
    /// be fractional (`0.5/s`); the burst is at least 1.
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?}: expected N/s or N/m (requests a second or a minute), N > 0");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        if !n.is_finite() || n <= 0.0 {
            return Err(bad());
        }
        let per_second = match unit.trim() {
            "s" | "sec" | "second" => n,
            "m" | "min" | "minute" => n / 60.0,
            _ => return Err(bad()),
        };
        Ok(Rate {
            per_second,
            burst: (n.ceil() as u32).max(1),
        })
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, by token name (so at most as many as the tokens file names).
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Takes one request of `who` at `now`; `Err` with how long until one would be taken.
    pub fn take(&self, who: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(rate.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(who.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r: Rate = "5/s".parse().unwrap();
        assert_eq!((r.per_second, r.burst), (5.0, 5));
        let r: Rate = "120/m".parse().unwrap();
        assert_eq!((r.per_second, r.burst), (2.0, 120));
        let r: Rate = "0.5/s".parse().unwrap();
        assert_eq!(r.burst, 1);
        for bad in ["5", "0/s", "-1/s", "x/s", "5/h", "inf/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_then_refusals_then_refill_per_token() {
        let l = Limiter::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("a", rate, t0).is_ok());
        }
        let wait = l.take("a", rate, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            l.take("b", rate, t0).is_ok(),
            "another token has its own bucket"
        );
        let later = t0 + Duration::from_millis(500);
        assert!(l.take("a", rate, later).is_ok());
        assert!(l.take("a", rate, later).is_err());
        // Never more than the burst, however long the quiet.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.take("a", rate, much_later).is_ok());
        }
        assert!(l.take("a", rate, much_later).is_err());
    }
}
