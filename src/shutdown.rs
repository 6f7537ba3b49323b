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

/// Registers SIGHUP now (from then on it no longer ends the process); `reload_on` then
/// reloads on each one.
pub fn hangup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Calls `reload` on each SIGHUP until the process ends.
pub fn reload_on(
    mut hup: tokio::signal::unix::Signal,
    reloader: std::sync::Arc<crate::reload::Reloader>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloader = reloader.clone();
            // The outcome is logged and counted by the reload itself.
            let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
        }
    })
}
