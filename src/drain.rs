//! The drain that shutdown starts, as listeners and sessions see it.

/// The drain, as sessions see it: a token to wait on, and a flag read on every request without
/// the token's lock (a `CancellationToken`'s check takes a mutex, about 1 % of a GET's CPU).
#[derive(Clone, Default)]
pub struct Drain {
    token: tokio_util::sync::CancellationToken,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain: the flag first, so that whoever the token wakes sees it.
    pub fn start(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }

    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Completes once the drain has started.
    pub fn wait(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A token for background tasks that stop with the drain: a child, so that cancelling it
    /// stops only them (the drain itself starts with `start`, flag and token together).
    pub fn token(&self) -> tokio_util::sync::CancellationToken {
        self.token.child_token()
    }
}
