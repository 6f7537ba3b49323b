//! A value that a reload replaces while readers go on: readers take an `Arc` of the current
//! value (and keep it as long as they like); a writer stores a new one and bumps a generation
//! counter, which a long-lived reader (a session) checks cheaply to know when to take it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub struct Live<T> {
    generation: AtomicU64,
    current: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self {
            generation: AtomicU64::new(0),
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // A reader or writer never panics while holding the lock; a poisoned lock still holds
        // a whole value.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current value and its generation, read together.
    pub fn load_with_generation(&self) -> (u64, Arc<T>) {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), guard.clone())
    }

    /// Changes on every `store`: a reader holding an older number should `load` again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn store(&self, value: Arc<T>) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = value;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_seen_with_a_new_generation_and_old_holders_keep_theirs() {
        let live = Live::new(1);
        let (g0, old) = live.load_with_generation();
        live.store(Arc::new(2));
        assert_ne!(live.generation(), g0);
        assert_eq!(*old, 1);
        assert_eq!(*live.load(), 2);
    }
}
