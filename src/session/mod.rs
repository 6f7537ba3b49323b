//! The sessions: one per client connection, after its TLS handshake.
//!
//! - `admission` decides, without I/O, what happens to one parsed Redis request (answer, refuse,
//!   forward shared, pin, log in), from the request, the session's login state and the policy;
//! - `redis/` carries those decisions out: the request side (`mod.rs`), pinning a connection of
//!   its own (`pinning.rs`), the session's own commands AUTH/HELLO/RESET (`login.rs`) and the
//!   reply side that writes replies back in request order (`replies.rs`), a cluster listener's
//!   routing (`cluster.rs`) and its shard channels across a resharding (`follow.rs`);
//! - `memcached/` is the memcached session: the same read loop and limits, batch planning over
//!   the ketama ring, and the answers it makes itself;
//! - `reader` is the client read loop both protocols share, with the same limits (unparsed
//!   bytes, half-sent requests, the memory budget);
//! - `sharing` is the reviewed allow-list of what may share an upstream connection, `commands`
//!   the command classification and reply rewrites (`redis/acl_commands.rs` has the `ACL ...`
//!   answers from cachegate's users), `outbox` and `slots` the buffers between a session's two
//!   halves, `halves` what runs them in the session's one task.

mod admission;
pub mod commands;
mod halves;
pub mod memcached;
mod outbox;
mod reader;
pub mod redis;
pub mod sharing;
mod slots;

pub use redis::{run, script_callable, Context, Identities};
