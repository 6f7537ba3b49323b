//! cachegate: a TLS-terminating proxy for Redis and memcached that enforces AUTH, ACL users and a
//! command policy before anything reaches the backend.
//!
//! How a request flows, module by module:
//!
//! - [`config`]: TOML file -> typed, always-valid [`config::Config`] (every problem at once).
//! - [`server`]: builds the immutable parts once (TLS acceptors, policies, upstream pools), runs
//!   the listeners, drains on shutdown.
//! - [`listener`]: accept loop, connection limit, TLS handshake under a deadline.
//! - [`session`]: per client: read -> [`session`]'s pure admission step ([`auth`], [`policy`])
//!   -> [`upstream`] -> reply, in order; `session::redis` and `session::memcached` side by side.
//! - [`protocol`]: RESP framing with limits ([`protocol::resp`]) and every wire reply cachegate
//!   makes itself ([`protocol::reply`]).
//! - [`upstream`]: persistent, health-checked connections to the backend (plain or TLS).
//! - [`auth`]: tokens, ACL users and their verdicts, the Redis command table, certificate
//!   identities, brute-force backoff.
//! - [`metrics`] and [`admin`]: Prometheus counters, security events (ACL LOG), /live /ready
//!   /metrics.
//! - [`bench`](mod@bench): the `cachegate bench` load generator.
//! - Leaves: [`tls`] (rustls configs, PEM, dev certificates), [`error`], [`shutdown`], [`drain`],
//!   [`budget`] (the process-wide bound on buffered bytes),
//!   [`deadline`], [`read_room`] (client read buffer sizing), [`live`] (values a reload
//!   replaces), [`reload`] (re-reading the configuration while serving).

pub mod admin;
pub mod auth;
pub mod bench;
pub mod budget;
pub mod config;
pub mod crypt;
pub mod deadline;
pub mod drain;
pub mod error;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod parts;
pub mod policy;
pub mod protocol;
pub mod proxy_header;
pub mod read_room;
pub mod reload;
pub mod rewrap;
pub mod sends;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod upstream;
