//! Brute-force resistance: failed authentications from one source address make that address's
//! next attempts wait (exponential backoff), without slowing anyone else down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
const BASE_DELAY: Duration = Duration::from_millis(100);
/// Addresses tracked at most; the oldest are forgotten first.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub struct Throttle {
    /// Failures an address may have before it is slowed down.
    free_failures: u32,
    max_delay: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    pub fn new(free_failures: u32, max_delay: Duration) -> Self {
        Self {
            free_failures,
            max_delay,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long an authentication attempt from `ip` must wait before it is checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some(&(n, last)) if n > self.free_failures && last.elapsed() < FORGET_AFTER => {
                let exp = (n - self.free_failures - 1).min(16);
                (BASE_DELAY * 2u32.pow(exp)).min(self.max_delay)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn record(&self, ip: IpAddr, success: bool) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            map.remove(&ip);
            return;
        }
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_failing_address_is_slowed() {
        let t = Throttle::new(3, Duration::from_secs(5));
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        let good: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            t.record(bad, false);
        }
        assert_eq!(t.delay(bad), Duration::ZERO, "free failures");
        t.record(bad, false);
        assert_eq!(t.delay(bad), BASE_DELAY);
        t.record(bad, false);
        assert_eq!(t.delay(bad), BASE_DELAY * 2);
        for _ in 0..30 {
            t.record(bad, false);
        }
        assert_eq!(t.delay(bad), Duration::from_secs(5), "capped");
        assert_eq!(t.delay(good), Duration::ZERO);
        t.record(bad, true);
        assert_eq!(t.delay(bad), Duration::ZERO, "a success clears it");
    }
}
