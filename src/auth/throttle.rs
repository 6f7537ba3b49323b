//! Brute-force resistance: wrong guesses from one source address are answered ever more slowly,
//! one at a time, while a right credential is never delayed.
//!
//! What an attacker controls is the rate of wrong answers it gets back, so that is what is
//! throttled. Credentials are checked first; a right one is answered at once, whoever else
//! shares the address (a misconfigured client retrying a stale token does not slow down the
//! next client with the right one). A wrong one is answered only at the address's next free
//! slot, each slot further off (exponential backoff after a few free failures): parallel
//! connections queue for slots instead of each getting its own, and a success clears nothing,
//! so interleaving a valid credential buys no fresh guesses. A session reads its next command
//! only after its answer, so one connection holds at most one guess in flight.

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
    failures: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    /// When the address's next wrong answer may go out, at the earliest.
    next_slot: Instant,
}

impl Throttle {
    pub fn new(free_failures: u32, max_delay: Duration) -> Self {
        Self {
            free_failures,
            max_delay,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a wrong credential from `ip` and says how long its answer must wait: zero for
    /// the first few, then the address's next slot, each slot one backoff step after the last.
    pub fn failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, e| e.last.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert(Entry {
            failures: 0,
            last: now,
            next_slot: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        if entry.failures <= self.free_failures {
            return Duration::ZERO;
        }
        let exp = (entry.failures - self.free_failures - 1).min(16);
        let step = (BASE_DELAY * 2u32.pow(exp)).min(self.max_delay);
        let slot = entry.next_slot.max(now) + step;
        entry.next_slot = slot;
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wrong_answers_from_the_failing_address_wait() {
        let t = Throttle::new(3, Duration::from_secs(5));
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        let good: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.failure(bad), Duration::ZERO, "free failures");
        }
        // Slots: each further off than the last, whether the guesses come one after another
        // or all at once on parallel connections.
        let waits: Vec<Duration> = (0..4).map(|_| t.failure(bad)).collect();
        for pair in waits.windows(2) {
            assert!(pair[1] > pair[0], "{waits:?}");
        }
        assert!(waits[0] >= BASE_DELAY - Duration::from_millis(5));
        assert!(
            waits[3] >= BASE_DELAY * (1 + 2 + 4 + 8) - Duration::from_millis(5),
            "{waits:?}"
        );
        assert_eq!(
            t.failure(good),
            Duration::ZERO,
            "another address is not slowed"
        );
    }

    #[test]
    fn each_step_is_capped() {
        let t = Throttle::new(0, Duration::from_millis(300));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let waits: Vec<Duration> = (0..6).map(|_| t.failure(ip)).collect();
        // 100, 200, then 300 ms steps, queued one after another.
        assert!(
            waits[5] <= Duration::from_millis(100 + 200 + 300 * 4 + 5),
            "{waits:?}"
        );
        assert!(
            waits[5] >= Duration::from_millis(100 + 200 + 300 * 4 - 5),
            "{waits:?}"
        );
    }
}
