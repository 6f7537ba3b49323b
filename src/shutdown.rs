//! Signals, registered before anything else starts so that an early SIGTERM is not lost.

use std::future::Future;

/// Registers SIGTERM and SIGINT now; the returned future completes on the first of them.
pub fn signals() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
