//! Time: an optional deadline as a future, for `select!` branches that only sometimes have
//! one, and the Unix clock in seconds.

/// Completes at `deadline`, or never when there is none.
pub async fn sleep_until<T: Into<tokio::time::Instant>>(deadline: Option<T>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch (0 for a clock before it), as metrics and certificates count.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
