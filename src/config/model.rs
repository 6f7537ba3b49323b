//! The typed, always-valid configuration that `build` makes from the file mirror: what the
//! floors above use (listeners, TLS, auth, upstream, memcached, limits), with its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::cert::CertMapping;
use crate::auth::secret::Password;
use crate::policy::Policy;
use crate::protocol::memcached::McLimits;
use crate::protocol::resp::RequestLimits;
use crate::tls::client::UpstreamTlsOptions;
use crate::tls::server::ServerTlsOptions;
use std::sync::Arc;

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024 * 1024;
/// All clients' buffered requests and queued replies together (beyond a small free share each).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 1024 * 1024 * 1024;
pub const DEFAULT_PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WARM_CONNECTIONS: usize = 2;
pub const DEFAULT_MAX_IDLE: usize = 64;
pub const DEFAULT_SHARED_CONNECTIONS: usize = 2;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A Redis Cluster's slot map is read again this often when no redirection asks sooner.
pub const DEFAULT_CLUSTER_REFRESH: Duration = Duration::from_secs(10);
/// ElastiCache's bounds for an AUTH token.
pub(super) const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `threads` as written: the threads that serve clients (see `threads()` for the default).
    /// Kept as written so that a reload compares settings, not what the CPUs were when each
    /// was read.
    pub threads: Option<usize>,
    /// The admin HTTP listener (/live, /ready, /metrics), if configured.
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub listeners: Vec<ListenerConfig>,
    /// Where each secret came from (never its value), for `cachegate check`.
    pub secret_sources: Vec<super::secrets::SecretSource>,
    /// The file this was loaded from (`None`: the embedded default, or text): what a reload
    /// reads again.
    pub source: Option<PathBuf>,
    /// Every file it was built from (the config file, certificates, keys, CAs, CRLs, secret
    /// files), as named, and what they held: a change in any of them is a reason to reload.
    pub watched: super::Watched,
    /// `reload.watch_interval`; zero: files are not watched.
    pub watch_interval: Duration,
}

impl Config {
    /// The threads that serve clients: `threads`, else the CPUs this process may run on (its
    /// affinity mask and its cgroup's CPU quota, as the standard library reads them: a sidecar
    /// limited to one CPU gets one). One runs tokio's single-threaded scheduler, which costs
    /// less per request than a work-stealing one with a single worker.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// How often watched files are checked by default.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Limits {
    pub request: RequestLimits,
    pub max_reply_bytes: usize,
    /// Cap on a client's unparsed input (Redis's `client-query-buffer-limit`).
    pub max_request_bytes: usize,
    /// Cap on what the process buffers for all clients together.
    pub max_buffered_bytes: usize,
    /// How long a client may leave a request half-sent before the connection is closed.
    pub partial_request_timeout: Duration,
    /// How long a Redis client may stay connected without being logged in (from its
    /// connection, or from a RESET that logged it out); `None`: for ever.
    pub login_timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub auth_limits: AuthLimits,
    /// Verified client certificates that log in as a user (ACL mode).
    pub cert_users: Vec<CertMapping>,
    pub bind: SocketAddr,
    pub max_connections: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64, after PROXY protocol) may hold;
    /// 0: no cap but `max_connections`.
    pub max_connections_per_source: usize,
    /// Source networks that may connect (after PROXY protocol); `None`: everyone.
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Load balancers whose PROXY protocol headers are believed; `None`: no PROXY protocol.
    pub proxy_trusted: Option<Vec<ipnet::IpNet>>,
    /// `None`: a plaintext listener (allowed, with a warning when not on loopback).
    pub tls: Option<ListenerTls>,
    pub auth: AuthMode,
    pub policy: Policy,
    pub upstream: UpstreamConfig,
    /// `[listeners.encryption]`: values sealed before they reach the backend.
    pub encryption: Option<EncryptionConfig>,
}

/// A listener's encryption at rest.
pub struct EncryptionConfig {
    pub root_key: Arc<crate::crypt::keyring::RootKey>,
    /// Where the root key came from (never the key): `file ...`, `environment variable ...`,
    /// `command ...`.
    pub root_key_source: String,
    pub keyspaces: crate::crypt::plan::Keyspaces,
    pub on_plaintext: crate::crypt::OnPlaintext,
    /// Seals under one data key after which cachegate rotates to a new one by itself.
    pub rotate_after_seals: u64,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("root_key_source", &self.root_key_source)
            .field("keyspaces", &self.keyspaces)
            .field("on_plaintext", &self.on_plaintext)
            .finish_non_exhaustive()
    }
}

/// Brute-force resistance settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Failed AUTHs after which the connection is closed; 0 never closes.
    pub max_failures: u32,
    /// Failures from one address before its attempts are delayed.
    pub backoff_after: u32,
    pub backoff_max: Duration,
}

pub const DEFAULT_MAX_AUTH_FAILURES: u32 = 10;
/// Free failures per address (leaking at one a second): a misconfigured client retrying a
/// stale token ten times stays within it, so the right token from the same address is not
/// delayed; a guessing attack is not.
pub const DEFAULT_BACKOFF_AFTER: u32 = 20;
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a listener speaks, with the protocol's own settings.
#[derive(Debug, Clone)]
pub enum Protocol {
    Redis,
    Memcached(MemcachedConfig),
}

/// A memcached node as configured (and as the ring names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingNode {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct MemcachedConfig {
    /// The ring, in configured order (a node's index is its position here).
    pub nodes: Vec<RingNode>,
    pub limits: McLimits,
    pub on_node_down: NodeDown,
    /// Consecutive failures after which a node leaves the ring; 0 keeps nodes in the ring.
    pub eject_after: u32,
    pub eject_for: Duration,
    /// One-key gets go to nodes that know meta commands as meta gets (`MetaGet`), until a
    /// client marks an item stale (`md`/`ms` with `I`).
    pub meta_gets: bool,
}

/// What a request for a key on an unreachable node gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDown {
    /// Reads miss (get returns no item, mg returns EN); writes get SERVER_ERROR.
    Miss,
    /// Everything touching the node gets SERVER_ERROR.
    Error,
}

pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct ListenerTls {
    pub identity: Identity,
    pub options: ServerTlsOptions,
    pub handshake_timeout: Duration,
    /// `transit_encryption_mode = "preferred"`: plaintext clients are served too (decided by
    /// the first byte), while a fleet moves to TLS.
    pub preferred: bool,
}

pub enum Identity {
    Files {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
    /// No certificate configured: generate (or reuse) dev material in the data directory.
    Dev,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Files { chain, .. } => write!(f, "Files({} certs, key)", chain.len()),
            Identity::Dev => f.write_str("Dev"),
        }
    }
}

pub use crate::auth::login::AuthMode;

pub use crate::auth::acl::UserGroup;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port`, resolved at each connect so a DNS change is followed.
    pub address: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub warm_connections: usize,
    /// Clean connections kept for reuse when clients leave (at least `warm_connections`).
    pub max_idle: usize,
    /// Redis: shared connections per RESP version for sessions without connection state
    /// (`multiplex`, on by default); 0 gives every session its own connection.
    pub shared_connections: usize,
    pub health_interval: Duration,
    pub tls: Option<UpstreamTlsOptions>,
    /// `commands.scripts = "backend_acl"`: the backend user cachegate provisions (with the
    /// credentials above) and then uses for every connection of this listener.
    pub backend_user: Option<BackendUser>,
    /// `auth.backend_users = true`: a backend user per ACL user (by cachegate user name), with
    /// that user's rules, that its scripts run as.
    pub mirror_users: Vec<(String, BackendUser)>,
    /// `upstream.cluster = true`: a Redis Cluster, discovered from these seeds ("host:port").
    pub cluster: bool,
    pub cluster_seeds: Vec<String>,
    pub cluster_refresh: Duration,
    /// `upstream.read_from_replicas`: a cluster's read-only commands go to a replica of the
    /// slot's primary (connections that said READONLY).
    pub read_from_replicas: bool,
    /// Set by cachegate for a cluster replica's connections, never by the file: each says
    /// READONLY once logged in.
    pub readonly: bool,
}

/// A backend ACL user that denies, inside Redis, what the listener's policy refuses, so that
/// scripts (which run commands past cachegate) cannot run them either.
#[derive(Debug, Clone)]
pub struct BackendUser {
    pub name: String,
    /// Derived from the configured upstream password (HMAC-SHA256), so that every cachegate
    /// with the same configuration provisions the same user and no new secret is stored.
    pub password: Password,
    /// ACL SETUSER rules after the name (`reset on #<digest> ~* &* +@all -flushall ...`).
    pub rules: Vec<String>,
}

/// A `host:port` address's host (brackets of an IPv6 address removed), empty if none.
pub fn host_of(address: &str) -> String {
    split_host_port(address)
        .map(|(h, _)| h.to_string())
        .unwrap_or_default()
}

/// `host:port` or `[v6]:port`: how the configuration writes an address, read alike by the
/// builder and by what dials addresses it learns later (a cluster's nodes).
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}
