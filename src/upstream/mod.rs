//! Upstream connections: `conn` opens and authenticates one, `pool` keeps them.

pub mod conn;
pub mod pool;

pub use conn::{Conn, Stream};
pub use pool::Pool;
pub mod shared;
