//! A process-wide bound on what cachegate buffers for clients: partial requests and replies on
//! their way out. Per-client limits (`limits.max_request_bytes`, `max_reply_bytes`) times the
//! connection limit is no bound at all; this is one. A session that would take the process
//! past it gets a clear error and is closed; everyone else goes on.
//!
//! Small buffers are free: a session is charged only for what it holds beyond
//! [`FREE_PER_SESSION`], so the common case costs no atomic operation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What a session may hold without being charged (its read room and a batch of replies).
pub const FREE_PER_SESSION: usize = 128 * 1024;

/// The process's budget.
#[derive(Debug)]
pub struct MemoryBudget {
    /// A reload may change it.
    limit: AtomicUsize,
    used: AtomicUsize,
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
        })
    }

    /// Bytes charged to sessions right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One holder's share of the budget (a session's request side, or its reply side); given
/// back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Charge {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self { budget, held: 0 }
    }

    /// A charge for exactly `bytes` (no free share): replies held for a session until it
    /// takes them. Refused past the process's limit.
    pub fn exact(budget: &Arc<MemoryBudget>, bytes: usize) -> Result<Self, OverBudget> {
        let mut charge = Self::new(budget.clone());
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
            self.budget
                .used
                .fetch_sub(self.held - want, Ordering::Relaxed);
            self.held = want;
            return Ok(());
        }
        let extra = want - self.held;
        let before = self.budget.used.fetch_add(extra, Ordering::Relaxed);
        let limit = self.budget.limit.load(Ordering::Relaxed);
        if before + extra > limit {
            self.budget.used.fetch_sub(extra, Ordering::Relaxed);
            return Err(OverBudget { limit });
        }
        self.held = want;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
