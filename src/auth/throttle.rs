//! Brute-force resistance per source address: a few failures cost nothing, then every
//! attempt from that address (right or wrong) waits for the address's next slot before it is
//! checked, and past `max_delay` of queue it is refused unchecked.
//!
//! Why attempts and not only wrong answers: if right credentials were answered at once and
//! only wrong ones delayed, an attacker would learn "wrong" from the mere absence of a fast
//! `+OK` and move on without waiting: the delay would slow nothing. So the budget is in
//! failures (what an attacker spends), and a correct credential is never delayed by a few
//! failures of someone else at the same address (a misconfigured client retrying a stale token
//! a handful of times stays within `free_failures`, which leak away at one a second); only an
//! address that keeps failing has its attempts queued. Parallel connections queue for the same
//! slots, a success clears nothing, and waits are bounded, so throttled attempts never hold
//! connections for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failure leaks away after this long (the bucket empties at one failure a second).
const LEAK: Duration = Duration::from_secs(1);
const BASE_DELAY: Duration = Duration::from_millis(100);
/// Addresses tracked at most; the quietest are forgotten first.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub struct Throttle {
    /// Failures an address may have (leaking at one a second) before its attempts wait.
    free_failures: u32,
    max_delay: Duration,
    state: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures not yet leaked away, as of `at`.
    level: u32,
    at: Instant,
    /// When the address's next attempt may be checked, at the earliest.
    next_slot: Instant,
}

impl Entry {
    fn leak(&mut self, now: Instant) {
        let leaked = (now.duration_since(self.at).as_millis() / LEAK.as_millis()) as u32;
        if leaked > 0 {
            self.level = self.level.saturating_sub(leaked);
            self.at = now;
        }
    }
}

/// Whose budget an attempt from `ip` spends: the IPv4 address, or the IPv6 /64 (one host
/// usually holds a whole /64 and could otherwise take a fresh address, and a fresh budget,
/// for every few guesses). Also whose share of a listener's connections one is.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What to do with an authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it now.
    Now,
    /// Check it after this wait (the address's next slot).
    After(Duration),
    /// The address's queue is longer than `max_delay`: refuse unchecked.
    Refuse,
}

impl Throttle {
    pub fn new(free_failures: u32, max_delay: Duration) -> Self {
        Self {
            free_failures,
            max_delay,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt from `ip` may be checked now, after a wait, or not at all.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        let ip = source(ip);
        let now = Instant::now();
        let mut map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(&ip) else {
            return Admission::Now;
        };
        entry.leak(now);
        if entry.level < self.free_failures {
            return Admission::Now;
        }
        let exp = (entry.level - self.free_failures).min(16);
        let step = (BASE_DELAY * 2u32.pow(exp)).min(self.max_delay);
        let slot = entry.next_slot.max(now) + step;
        if slot - now > self.max_delay {
            return Admission::Refuse;
        }
        entry.next_slot = slot;
        Admission::After(slot - now)
    }

    /// Records a wrong credential from `ip`.
    pub fn failure(&self, ip: IpAddr) {
        let ip = source(ip);
        let now = Instant::now();
        let mut map = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, e| {
                e.leak(now);
                e.level > 0
            });
            if map.len() >= MAX_TRACKED {
                // The quietest eighth is forgotten at once, so that the next 8,192 new sources
                // need no scan: one per new source (many sources failing once each, as a
                // botnet or a /48 of IPv6 can) held this lock over all 65,536 entries every time.
                let mut ats: Vec<Instant> = map.values().map(|e| e.at).collect();
                let (_, &mut newest_forgotten, _) = ats.select_nth_unstable(MAX_TRACKED / 8);
                map.retain(|_, e| e.at > newest_forgotten);
            }
        }
        let entry = map.entry(ip).or_insert(Entry {
            level: 0,
            at: now,
            next_slot: now,
        });
        entry.leak(now);
        entry.level = entry.level.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_every_attempt_queues() {
        let t = Throttle::new(3, Duration::from_secs(5));
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        let good: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.admit(bad), Admission::Now);
            t.failure(bad);
        }
        // Over the free failures: attempts (right or wrong) queue for slots, each further off,
        // whether they come one after another or all at once.
        let waits: Vec<Duration> = (0..4)
            .map(|_| match t.admit(bad) {
                Admission::After(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        for pair in waits.windows(2) {
            assert!(pair[1] > pair[0], "{waits:?}");
        }
        assert_eq!(
            t.admit(good),
            Admission::Now,
            "another address is not slowed"
        );
    }

    #[test]
    fn a_full_table_forgets_its_quietest_eighth_at_once() {
        let t = Throttle::new(20, Duration::from_secs(5));
        let ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..MAX_TRACKED as u32 {
            t.failure(ip(i));
        }
        assert_eq!(t.state.lock().unwrap().len(), MAX_TRACKED);
        // One more source: room is made for the next eighth, not for this one alone.
        t.failure(ip(MAX_TRACKED as u32));
        let len = t.state.lock().unwrap().len();
        assert!(len <= MAX_TRACKED - MAX_TRACKED / 8 + 1, "{len}");
        assert!(t
            .state
            .lock()
            .unwrap()
            .contains_key(&ip(MAX_TRACKED as u32)));
        for i in 1..MAX_TRACKED as u32 / 8 {
            t.failure(ip(MAX_TRACKED as u32 + i));
        }
        assert!(t.state.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn an_ipv6_host_spends_one_budget_for_its_whole_64() {
        let t = Throttle::new(2, Duration::from_secs(5));
        for i in 1..=3u16 {
            // A new address in the same /64 for every guess.
            t.failure(IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 1, 2, 0, 0, 0, i,
            )));
        }
        let next: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        assert!(matches!(t.admit(next), Admission::After(_)));
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.admit(elsewhere), Admission::Now, "another /64");
        // An IPv4 client on a dual-stack socket is its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        let v4: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(source(mapped), v4);
    }

    #[test]
    fn the_queue_is_bounded_and_failures_leak_away() {
        let t = Throttle::new(1, Duration::from_millis(300));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        t.failure(ip);
        t.failure(ip);
        let mut refused = false;
        for _ in 0..10 {
            if t.admit(ip) == Admission::Refuse {
                refused = true;
                break;
            }
        }
        assert!(refused, "a queue longer than max_delay refuses");
        // Leaked away: the entry's level falls by one a second.
        let mut map = t.state.lock().unwrap();
        let entry = map.get_mut(&ip).unwrap();
        entry.at -= Duration::from_secs(5);
        entry.next_slot -= Duration::from_secs(5);
        drop(map);
        assert_eq!(t.admit(ip), Admission::Now);
    }
}
