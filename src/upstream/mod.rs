//! Upstream connections: `conn` opens and authenticates one, `pool` keeps them, `shared`
//! multiplexes sessions over a few, `ring` spreads memcached keys over nodes, `cluster` keeps a Redis Cluster's slot map.

pub mod cluster;
pub mod conn;
pub mod pool;
pub mod ring;

pub use conn::{Conn, Stream};
pub use pool::Pool;
pub mod shared;
