//! An optional deadline as a future, for `select!` branches that only sometimes have one.

/// Completes at `deadline`, or never when there is none.
pub async fn sleep_until<T: Into<tokio::time::Instant>>(deadline: Option<T>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
