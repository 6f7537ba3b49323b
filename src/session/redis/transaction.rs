//! Where a session is with MULTI: the one place its transaction state changes. What Redis does
//! with each command inside a transaction (queue it, answer it, fail the transaction at EXEC)
//! is the request side's to decide; it says so here.

use std::sync::Arc;

use bytes::Bytes;

use crate::budget::{MemoryBudget, OverBudget, QueuedBytes, Ticket};
use crate::session::commands::Kind;

/// What a queued command of a held transaction costs beyond its bytes: its place in the
/// queue and its buffer's allocation.
const ENTRY_COST: usize = 64;

#[derive(Debug, Default)]
pub(super) enum Transaction {
    #[default]
    None,
    /// Open on the session's own connection. `dirty`: a command was refused, and EXEC aborts.
    Open { dirty: bool },
    /// A cluster listener's MULTI before its first key names the node: the keyless commands
    /// queued so far (already answered `QUEUED`), sent when it does, and their share of the
    /// process's buffer budget (held in cachegate, not in Redis's client memory: unbounded,
    /// one client's `ECHO`s grew the process past the bound, found by a reviewer).
    Held {
        dirty: bool,
        queued: Vec<(Kind, Bytes, Ticket)>,
        /// What the queue is charged to (made with its first command).
        charged: Option<Arc<QueuedBytes>>,
    },
}

impl Transaction {
    /// Inside MULTI (held or open).
    pub(super) fn is_open(&self) -> bool {
        !matches!(self, Transaction::None)
    }

    /// Held for its first key: nothing of it has reached a node yet.
    pub(super) fn is_held(&self) -> bool {
        matches!(self, Transaction::Held { .. })
    }

    /// A command was refused: EXEC aborts. Outside MULTI, nothing to fail.
    pub(super) fn refuse(&mut self) {
        match self {
            Transaction::None => {}
            Transaction::Open { dirty } | Transaction::Held { dirty, .. } => *dirty = true,
        }
    }

    pub(super) fn is_dirty(&self) -> bool {
        match self {
            Transaction::None => false,
            Transaction::Open { dirty } | Transaction::Held { dirty, .. } => *dirty,
        }
    }

    /// MULTI: a transaction begins, unless one is open (a nested MULTI is an error that
    /// changes nothing, not even the transaction's fate).
    pub(super) fn begin(&mut self) {
        if !self.is_open() {
            *self = Transaction::Open { dirty: false };
        }
    }

    /// A cluster listener's MULTI: held until its first key.
    pub(super) fn begin_held(&mut self) {
        *self = Transaction::Held {
            dirty: false,
            queued: Vec::new(),
            charged: None,
        };
    }

    /// Queues a keyless command of a held transaction, charged to `budget`; refused (nothing
    /// queued) past the process's bound.
    pub(super) fn hold(
        &mut self,
        kind: Kind,
        command: Bytes,
        budget: &Arc<MemoryBudget>,
    ) -> Result<(), OverBudget> {
        if let Transaction::Held {
            queued, charged, ..
        } = self
        {
            // Each entry costs its bytes and its place (the queue's slot, the buffer's
            // header): a flood of tiny commands is counted too.
            let charged = charged.get_or_insert_with(|| QueuedBytes::new(budget.clone()));
            let ticket = charged.ticket(command.len() + ENTRY_COST)?;
            queued.push((kind, command, ticket));
        }
        Ok(())
    }

    /// The held transaction goes to its node: what was queued, to send after MULTI.
    pub(super) fn place(&mut self) -> Vec<(Kind, Bytes)> {
        match std::mem::take(self) {
            Transaction::Held { dirty, queued, .. } => {
                *self = Transaction::Open { dirty };
                // (Their charge given back: they are on their way to the node.)
                queued
                    .into_iter()
                    .map(|(kind, command, _)| (kind, command))
                    .collect()
            }
            other => {
                *self = other;
                Vec::new()
            }
        }
    }

    /// EXEC, DISCARD or RESET: over.
    pub(super) fn end(&mut self) {
        *self = Transaction::None;
    }
}

/// An (un)subscription cachegate refuses inside MULTI, where Redis would queue it: one naming
/// other than exactly one channel. Redis 7.0 answers each channel inside an EXEC array whose
/// length counts commands (and an UNSUBSCRIBE of all once per subscription, a number not
/// known at EXEC). `None` for anything else.
pub(super) fn refused_inside(kind: Kind, args: &[Bytes]) -> Option<String> {
    let many = args.len() > 2 || (args.len() == 1 && kind == Kind::Unsubscribe);
    if !matches!(kind, Kind::Subscribe | Kind::Unsubscribe) || !many {
        return None;
    }
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    Some(format!(
        "cachegate: {name} inside MULTI takes exactly one channel"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_fails_only_the_transaction_it_happens_in() {
        let mut tx = Transaction::default();
        tx.refuse();
        assert!(!tx.is_dirty(), "outside MULTI nothing is failed");
        tx.begin();
        assert!(tx.is_open() && !tx.is_dirty());
        tx.refuse();
        tx.begin();
        assert!(tx.is_dirty(), "a nested MULTI changes nothing");
        tx.end();
        tx.begin();
        assert!(!tx.is_dirty(), "the next transaction starts clean");
    }

    /// What a held transaction queues counts against the process's buffer bound: past it the
    /// command is refused and not queued, and the charge is given back when it ends.
    #[test]
    fn a_held_transaction_queues_within_the_buffer_bound() {
        let budget = MemoryBudget::new(1 << 20);
        let mut tx = Transaction::default();
        tx.begin_held();
        let big = Bytes::from(vec![b'x'; 300 << 10]);
        let mut queued = 0;
        while tx.hold(Kind::Other, big.clone(), &budget).is_ok() {
            queued += 1;
            assert!(queued < 10, "never refused");
        }
        assert!(budget.used() <= 1 << 20);
        assert_eq!(tx.place().len(), queued);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_held_transaction_keeps_its_queue_and_fate_when_placed() {
        let mut tx = Transaction::default();
        tx.begin_held();
        assert!(tx.is_open() && tx.is_held());
        let budget = MemoryBudget::new(1 << 20);
        tx.hold(Kind::Client, Bytes::from_static(b"setname"), &budget)
            .unwrap();
        tx.refuse();
        let queued = tx.place();
        assert_eq!(queued.len(), 1);
        assert!(tx.is_open() && !tx.is_held() && tx.is_dirty());
        assert!(tx.place().is_empty());
        tx.end();
        assert!(!tx.is_open());
    }
}
