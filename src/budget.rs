//! A process-wide bound on what cachegate buffers for clients: partial requests and replies on
//! their way out. Per-client limits (`limits.max_request_bytes`, `max_reply_bytes`) times the
//! connection limit is no bound at all; this is one. A session that would take the process
//! past it gets a clear error and is closed; everyone else goes on.
//!
//! Small buffers are free: a session is charged only for what it holds beyond
//! [`FREE_PER_SESSION`], so the common case costs no atomic operation.
//!
//! Every session is a [`Holder`]: its charges, the replies held for it on shared upstream
//! connections included, add up there. When a charge would take the process past its bound
//! and another session holds more than the one asking (a client that stopped reading its
//! replies while asking for large ones), that session is evicted (its connection closed, as
//! Redis 7's `maxmemory-clients` closes the clients using the most) and the charge is let
//! through against the memory about to come back: one client that does not read cannot make
//! everyone else's requests fail.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a session may hold without being charged (its read room and a batch of replies).
pub const FREE_PER_SESSION: usize = 128 * 1024;

/// The process's budget.
#[derive(Debug)]
pub struct MemoryBudget {
    /// A reload may change it.
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Every session's holder, for the eviction (dead ones are swept as it goes).
    holders: Mutex<Vec<Weak<Holder>>>,
    evictions: AtomicU64,
    /// When (ms after `started`, plus one; 0: never) a scan last found no one to evict for a
    /// session that did not hold the most itself, and for how much.
    fruitless: AtomicU64,
    fruitless_extra: AtomicUsize,
    started: std::time::Instant,
}

/// After a scan found no one to evict, how long charges past the limit are refused without
/// another (each scan looks at every session, under one lock).
const FRUITLESS_PAUSE_MS: u64 = 10;

/// A session's standing: what its charges hold beyond their free shares, and its eviction.
/// (A flag and a `Notify`, not a cancellation token: every connection has one, and a token is
/// a heap node of its own.)
#[derive(Debug, Default)]
pub struct Holder {
    held: AtomicUsize,
    evicted: std::sync::atomic::AtomicBool,
    evict: tokio::sync::Notify,
}

impl Holder {
    /// Whether the budget has evicted this session.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves once the budget evicts this session.
    pub async fn evicted(&self) {
        loop {
            let wake = self.evict.notified();
            if self.is_evicted() {
                return;
            }
            wake.await;
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_waiters();
    }

    /// Bytes its charges hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The holder of the running session (its task runs inside [`owned`]), if any: what a
    /// request for a shared connection carries, so that its replies are charged to it.
    pub fn current() -> Option<Arc<Holder>> {
        OWNER.try_with(Arc::clone).ok()
    }
}

tokio::task_local! {
    static OWNER: Arc<Holder>;
}

/// Runs a session as `holder`: every charge made in it counts there. (Not an `async fn`: one
/// would keep the session's future twice in its state, as its argument and inside the scope,
/// about 5 KiB more per idle connection.)
pub fn owned<F: std::future::Future>(
    holder: Arc<Holder>,
    session: F,
) -> impl std::future::Future<Output = F::Output> {
    OWNER.scope(holder, session)
}

/// The budget would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cachegate's buffers for all clients are at their limit ({limit} bytes, limits.max_buffered_bytes)")]
pub struct OverBudget {
    pub limit: usize,
}

impl MemoryBudget {
    /// A new limit (a reload): what is held stays held; new holds meet the new limit.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            holders: Mutex::new(Vec::new()),
            evictions: AtomicU64::new(0),
            fruitless: AtomicU64::new(0),
            fruitless_extra: AtomicUsize::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// Bytes charged to sessions right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Sessions evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// A new session's holder, registered for the eviction.
    pub fn holder(&self) -> Arc<Holder> {
        let holder = Arc::new(Holder::default());
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        // Swept when the list doubles: amortised, a push stays cheap.
        if holders.len() >= 64 && holders.len().is_power_of_two() {
            holders.retain(|h| h.strong_count() > 0);
        }
        holders.push(Arc::downgrade(&holder));
        holder
    }

    /// The process's buffers are full and `asking` wants `extra` more: if another session
    /// holds more than `asking` and at least `extra`, it is evicted (unless it is already on
    /// its way out) and the charge goes through against the memory coming back, never past it
    /// (`used` stays within the limit plus what that session holds). Whether the charge went
    /// through: then it is added here, under the lock, so that two let through at once are
    /// held to the same bound. Nothing is evicted when the buffers turn out not to be full
    /// (looked at again under the lock), nor for a charge at least as large as one a scan
    /// found no one to evict for a moment ago: under lasting pressure each charge does not
    /// scan every session.
    fn evict_for(&self, asking: Option<&Holder>, extra: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.fruitless.load(Ordering::Relaxed);
        if last != 0
            && now.saturating_sub(last) < FRUITLESS_PAUSE_MS
            && extra >= self.fruitless_extra.load(Ordering::Relaxed)
        {
            return false;
        }
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(extra) <= limit {
            self.used.fetch_add(extra, Ordering::Relaxed);
            return true;
        }
        holders.retain(|h| h.strong_count() > 0);
        let mine = asking.map_or(0, Holder::held);
        let largest = holders
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|h| !asking.is_some_and(|a| std::ptr::eq(a, &**h)))
            .max_by_key(|h| h.held());
        let held = largest.as_ref().map_or(0, |v| v.held());
        let Some(victim) = largest.filter(|_| {
            held >= extra && held > mine && used.saturating_add(extra) <= limit.saturating_add(held)
        }) else {
            // (Not when the one asking holds the most: the next to ask may evict it.)
            if held > mine {
                self.fruitless_extra.store(extra, Ordering::Relaxed);
                self.fruitless.store(now, Ordering::Relaxed);
            }
            return false;
        };
        if !victim.is_evicted() {
            victim.evict();
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.used.fetch_add(extra, Ordering::Relaxed);
        true
    }
}

/// What waits in a queue for its turn (a request for a shared connection, one of cachegate's
/// own answers for a client) is charged from this size on: behind a stalled upstream, or for a
/// client that reads nothing, one client could otherwise queue hundreds of large ones that no
/// bound counted (1.9 GB of requests, 1.5 GB of answers, against a 16 MiB bound, found by a
/// reviewer). Smaller ones pass free: their queues are bounded in number.
pub const CHARGE_QUEUED_FROM: usize = 16 << 10;

/// The charge for `len` bytes about to be queued for `owner`: `None` under
/// [`CHARGE_QUEUED_FROM`]; refused past the process's bound (unless another session, evicted,
/// holds more).
pub fn queued(
    budget: &Arc<MemoryBudget>,
    len: usize,
    owner: Option<Arc<Holder>>,
) -> Result<Option<Charge>, OverBudget> {
    if len < CHARGE_QUEUED_FROM {
        return Ok(None);
    }
    Charge::exact(budget, len, owner).map(Some)
}

/// What one session has queued of many small things (cachegate's own answers waiting for its
/// reply side), charged together: each alone is under [`CHARGE_QUEUED_FROM`], but a thousand
/// of just under 16 KiB for a client that reads nothing were 16 MiB per connection that no
/// charge saw (found by a reviewer). One free share for them all, as for any holder.
#[derive(Debug)]
pub struct QueuedBytes(std::sync::Mutex<(usize, Charge)>);

/// `len` bytes' place in a [`QueuedBytes`], given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    of: Arc<QueuedBytes>,
    len: usize,
}

impl QueuedBytes {
    /// For the running session.
    pub fn new(budget: Arc<MemoryBudget>) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new((0, Charge::new(budget)))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Charge)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `len` more bytes; refused past the process's bound.
    pub fn ticket(self: &Arc<Self>, len: usize) -> Result<Ticket, OverBudget> {
        let mut q = self.lock();
        let total = q.0 + len;
        q.1.hold(total)?;
        q.0 = total;
        Ok(Ticket {
            of: self.clone(),
            len,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.of.lock();
        q.0 -= self.len;
        let total = q.0;
        // Giving back never fails.
        let _ = q.1.hold(total);
    }
}

/// One holder's share of the budget (a session's request side, or its reply side); given
/// back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    held: usize,
    /// The session it counts for (the running one when made), if any.
    owner: Option<Arc<Holder>>,
}

impl Charge {
    /// A charge for the running session.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self::owned_by(budget, Holder::current())
    }

    /// A charge for `owner` (a shared connection's task charges the sessions it reads for).
    pub fn owned_by(budget: Arc<MemoryBudget>, owner: Option<Arc<Holder>>) -> Self {
        Self {
            budget,
            held: 0,
            owner,
        }
    }

    /// A charge for exactly `bytes` (no free share): replies held for `owner` until it takes
    /// them. Refused past the process's limit (unless another session, evicted, holds more).
    pub fn exact(
        budget: &Arc<MemoryBudget>,
        bytes: usize,
        owner: Option<Arc<Holder>>,
    ) -> Result<Self, OverBudget> {
        let mut charge = Self::owned_by(budget.clone(), owner);
        charge.hold(bytes + FREE_PER_SESSION)?;
        Ok(charge)
    }

    /// From now on this holder keeps `bytes` in total: more or less than before. Growing past
    /// the process's limit is refused (and nothing is charged).
    pub fn hold(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let want = bytes.saturating_sub(FREE_PER_SESSION);
        if want == self.held {
            return Ok(());
        }
        if want < self.held {
            self.give_back(self.held - want);
            self.held = want;
            return Ok(());
        }
        let extra = want - self.held;
        let limit = self.budget.limit.load(Ordering::Relaxed);
        // Reserved only when it fits: a charge being refused never makes the buffers look
        // full to another one meanwhile.
        let mut used = self.budget.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(extra) > limit {
                if !self.budget.evict_for(self.owner.as_deref(), extra) {
                    return Err(OverBudget { limit });
                }
                break;
            }
            match self.budget.used.compare_exchange_weak(
                used,
                used + extra,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        if let Some(owner) = &self.owner {
            owner.held.fetch_add(extra, Ordering::Relaxed);
        }
        self.held = want;
        Ok(())
    }

    /// [`Charge::hold`] for `owner` from now on (a shared connection's read buffer holds the
    /// replies of the request at its head, whoever's it is): what it gives back comes off the
    /// one it was held for, what it adds goes to the new one.
    pub fn hold_for(
        &mut self,
        bytes: usize,
        owner: Option<&Arc<Holder>>,
    ) -> Result<(), OverBudget> {
        if bytes.saturating_sub(FREE_PER_SESSION) < self.held {
            self.hold(bytes)?;
            self.set_owner(owner);
            Ok(())
        } else {
            self.set_owner(owner);
            self.hold(bytes)
        }
    }

    /// Counts what it holds for `owner` from now on.
    pub fn set_owner(&mut self, owner: Option<&Arc<Holder>>) {
        if self.owner.as_ref().map(Arc::as_ptr) == owner.map(Arc::as_ptr) {
            return;
        }
        if let Some(old) = &self.owner {
            old.held.fetch_sub(self.held, Ordering::Relaxed);
        }
        if let Some(new) = owner {
            new.held.fetch_add(self.held, Ordering::Relaxed);
        }
        self.owner = owner.cloned();
    }

    fn give_back(&self, bytes: usize) {
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(owner) = &self.owner {
            owner.held.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's small queued answers are charged together past one free share, refused
    /// past the bound, and given back as they leave the queue.
    #[test]
    fn queued_answers_are_charged_together() {
        let budget = MemoryBudget::new(1 << 20);
        let answers = QueuedBytes::new(budget.clone());
        let mut tickets = Vec::new();
        while let Ok(t) = answers.ticket(16_000) {
            tickets.push(t);
            assert!(tickets.len() < 200, "never refused");
        }
        // The free share and the bound, no more.
        let held = tickets.len() * 16_000;
        assert!(
            held <= FREE_PER_SESSION + (1 << 20) && held + 16_000 > 1 << 20,
            "{held}"
        );
        assert!(budget.used() <= 1 << 20);
        drop(tickets);
        assert_eq!(budget.used(), 0);
        assert!(answers.ticket(16_000).is_ok());
    }

    #[test]
    fn charges_beyond_the_free_share_and_gives_back() {
        let budget = MemoryBudget::new(1_000_000);
        let mut a = Charge::new(budget.clone());
        let mut b = Charge::new(budget.clone());
        a.hold(FREE_PER_SESSION).unwrap();
        assert_eq!(budget.used(), 0, "small buffers are free");
        a.hold(FREE_PER_SESSION + 600_000).unwrap();
        assert_eq!(budget.used(), 600_000);
        assert_eq!(
            b.hold(FREE_PER_SESSION + 500_000),
            Err(OverBudget { limit: 1_000_000 })
        );
        assert_eq!(budget.used(), 600_000, "a refusal charges nothing");
        a.hold(10).unwrap();
        b.hold(FREE_PER_SESSION + 500_000).unwrap();
        assert_eq!(budget.used(), 500_000);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_scan_that_found_no_one_holds_back_only_charges_as_large() {
        let budget = MemoryBudget::new(1_000_000);
        let (a, b, c) = (budget.holder(), budget.holder(), budget.holder());
        let charge =
            |owner: &Arc<Holder>, bytes| Charge::exact(&budget, bytes, Some(owner.clone()));
        let _a = charge(&a, 600_000).unwrap();
        let _b = charge(&b, 350_000).unwrap();
        // Larger than anyone holds: no one to evict, and the scan says so for a moment...
        assert!(charge(&c, 700_000).is_err());
        assert_eq!(budget.evictions(), 0);
        // ...to charges as large, not to a smaller one, which evicts the one holding the most.
        let _let_through = charge(&c, 100_000).unwrap();
        assert!(a.is_evicted() && !b.is_evicted());
        // Two let through against the same eviction are held to one bound together: what
        // comes back (600,000) above the limit, and no more.
        let _second = charge(&c, 400_000).unwrap();
        assert_eq!(budget.used(), 1_450_000);
        assert!(
            charge(&c, 200_000).is_err(),
            "past the limit plus what comes back"
        );
    }

    #[test]
    fn the_session_holding_the_most_is_evicted_for_another() {
        let budget = MemoryBudget::new(1_000_000);
        let (hog, other, small) = (budget.holder(), budget.holder(), budget.holder());
        let charge =
            |owner: &Arc<Holder>, bytes| Charge::exact(&budget, bytes, Some(owner.clone()));
        let _held: Vec<Charge> = (0..9).map(|_| charge(&hog, 100_000).unwrap()).collect();
        let _some = charge(&other, 50_000).unwrap();
        assert_eq!(
            (hog.held(), other.held(), budget.used()),
            (900_000, 50_000, 950_000)
        );
        // The one holding the most asks for more: refused, nobody evicted.
        assert!(charge(&hog, 100_000).is_err());
        assert!(!hog.is_evicted() && !other.is_evicted());
        // Another asks: the one holding the most is evicted, and the charge goes through
        // against what it gives back.
        let let_through = charge(&small, 100_000).unwrap();
        assert!(hog.is_evicted() && !other.is_evicted());
        assert_eq!(budget.evictions(), 1);
        assert_eq!(budget.used(), 1_050_000);
        // Until it has given back, more goes through against it, never past it.
        let _more = charge(&small, 100_000).unwrap();
        assert!(charge(&other, 900_000).is_err(), "past what comes back");
        assert_eq!(budget.evictions(), 1, "evicted once");
        drop(_held);
        assert_eq!(budget.used(), 250_000);
        drop(let_through);
        // A read buffer's charge moves to whoever's replies fill it: what it gives back
        // comes off the one it held them for, before the rest moves (a hog's buffer never
        // shows, even for a moment, as the next session's).
        let mut buffer = Charge::owned_by(budget.clone(), None);
        buffer
            .hold_for(FREE_PER_SESSION + 10_000, Some(&other))
            .unwrap();
        assert_eq!(other.held(), 60_000);
        buffer
            .hold_for(FREE_PER_SESSION + 2_000, Some(&small))
            .unwrap();
        assert_eq!((other.held(), small.held()), (50_000, 100_000 + 2_000));
        buffer.hold_for(FREE_PER_SESSION + 5_000, None).unwrap();
        assert_eq!(small.held(), 100_000);
    }
}
