//! From the file mirror to the typed, always-valid `Config`. Every problem is collected with its
//! key path, so one run of `cachegate check` lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::file::{
    AuthFile, ClientTlsFile, CommandsFile, FileConfig, ListenerFile, MemcachedFile, ServerTlsFile,
    UpstreamFile,
};
use super::Problem;
use crate::auth::acl::User;
use crate::auth::cert::{CertMapping, NameKind};
use crate::auth::secret::{Password, Token, TokenSet};
use crate::policy::Policy;
use crate::protocol::memcached::McLimits;
use crate::protocol::resp::RequestLimits;
use crate::tls::client::UpstreamTlsOptions;
use crate::tls::pem::{load_certs, load_key, PemError};
use crate::tls::server::{ClientAuth, MinVersion, ServerTlsOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024 * 1024;
/// All clients' buffered requests and queued replies together (beyond a small free share each).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 1024 * 1024 * 1024;
pub const DEFAULT_PARTIAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_WARM_CONNECTIONS: usize = 2;
pub const DEFAULT_MAX_IDLE: usize = 64;
pub const DEFAULT_SHARED_CONNECTIONS: usize = 2;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// ElastiCache's bounds for an AUTH token.
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
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

#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Every client is authenticated as `default` from the start.
    None,
    Tokens(TokenSet),
    /// Redis ACL users of one group, enforced by cachegate.
    Acl(Arc<UserGroup>),
}

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

/// Builds the typed config; `base` is the directory relative paths are resolved against.
pub fn build(file: FileConfig, base: &Path, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut p = Problems { list: problems };
    let defaults = RequestLimits::default();
    let limits = Limits {
        request: RequestLimits {
            max_inline: size(
                &mut p,
                "limits.max_inline_bytes",
                file.limits.max_inline_bytes,
                defaults.max_inline,
            ),
            max_bulk: size(
                &mut p,
                "limits.max_bulk_bytes",
                file.limits.max_bulk_bytes,
                defaults.max_bulk,
            ),
            max_multibulk: size(
                &mut p,
                "limits.max_multibulk_len",
                file.limits.max_multibulk_len,
                defaults.max_multibulk,
            ),
        },
        max_reply_bytes: size(
            &mut p,
            "limits.max_reply_bytes",
            file.limits.max_reply_bytes,
            DEFAULT_MAX_REPLY_BYTES,
        ),
        max_request_bytes: size(
            &mut p,
            "limits.max_request_bytes",
            file.limits.max_request_bytes,
            DEFAULT_MAX_REQUEST_BYTES,
        ),
        max_buffered_bytes: size(
            &mut p,
            "limits.max_buffered_bytes",
            file.limits.max_buffered_bytes,
            DEFAULT_MAX_BUFFERED_BYTES,
        ),
        partial_request_timeout: file
            .limits
            .partial_request_timeout
            .unwrap_or(DEFAULT_PARTIAL_REQUEST_TIMEOUT),
    };
    if file.listeners.is_empty() {
        p.add("listeners", "at least one [[listeners]] entry is required");
    }
    let groups = user_groups(&mut p, file.users, file.user_groups);
    let mut listeners = Vec::new();
    for (i, l) in file.listeners.into_iter().enumerate() {
        if let Some(l) = listener(&mut p, &format!("listeners[{i}]"), i, l, base, &groups) {
            listeners.push(l);
        }
    }
    // Backend users are named after their listener (and user): `cachegate-a` with user `b-c` and
    // `cachegate-a-b` with user `c` would be one backend user with one password, whose rules
    // the last to provision would decide.
    let mut backend_names = std::collections::HashMap::new();
    for l in &listeners {
        let up = &l.upstream;
        let names = up
            .backend_user
            .iter()
            .chain(up.mirror_users.iter().map(|(_, u)| u));
        for user in names {
            if let Some(other) = backend_names.insert(user.name.as_str(), l.name.as_str()) {
                p.add(
                    "listeners",
                    format!(
                        "listeners `{other}` and `{}` would provision the same backend user `{}`; rename one of them",
                        l.name, user.name
                    ),
                );
            }
        }
    }
    for (i, a) in listeners.iter().enumerate() {
        for b in &listeners[i + 1..] {
            if a.name == b.name {
                p.add("listeners", format!("two listeners are named `{}`", a.name));
            }
            if a.bind == b.bind && a.bind.port() != 0 {
                p.add("listeners", format!("two listeners bind {}", a.bind));
            }
        }
    }
    if !p.list.is_empty() {
        return None;
    }
    let admin = file.admin.and_then(|a| match a.bind.as_deref() {
        None => {
            p.add("admin.bind", "missing (e.g. \"127.0.0.1:9180\")");
            None
        }
        Some(b) => match b.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "admin listener on a non-loopback address: metrics and readiness are visible to the network");
                }
                Some(addr)
            }
            Err(_) => {
                p.add("admin.bind", format!("`{b}` is not an IP:port address"));
                None
            }
        },
    });
    if !p.list.is_empty() {
        return None;
    }
    Some(Config {
        secret_sources: Vec::new(),
        source: None,
        watched: super::Watched::default(),
        watch_interval: file.reload.watch_interval.unwrap_or(DEFAULT_WATCH_INTERVAL),
        admin,
        data_dir: file
            .data_dir
            .map(|d| resolve(base, &d))
            .unwrap_or_else(default_data_dir),
        limits,
        shutdown_grace: file.shutdown.grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        listeners,
    })
}

struct Problems<'a> {
    list: &'a mut Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem::new(key, message));
    }

    /// A certificate, key or CRL file that gave nothing usable (a missing one is marked so).
    fn pem(&mut self, key: impl Into<String>, e: PemError) {
        let mut problem = Problem::new(key, e.to_string());
        problem.missing_file = matches!(e, PemError::Missing(_));
        self.list.push(problem);
    }
}

fn size(p: &mut Problems, key: &str, value: Option<u64>, default: usize) -> usize {
    match value {
        None => default,
        Some(0) => {
            p.add(key, "must be greater than 0");
            default
        }
        Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
    }
}

fn listener(
    p: &mut Problems,
    key: &str,
    index: usize,
    mut l: ListenerFile,
    base: &Path,
    groups: &BTreeMap<String, Arc<UserGroup>>,
) -> Option<ListenerConfig> {
    let before = p.list.len();
    let memcached = match l.protocol.as_deref() {
        None | Some("redis") => false,
        Some("memcached") => true,
        Some(other) => {
            p.add(
                format!("{key}.protocol"),
                format!("unknown protocol `{other}` (expected \"redis\" or \"memcached\")"),
            );
            false
        }
    };
    let bind = match l.bind.as_deref() {
        None => {
            p.add(format!("{key}.bind"), "missing (e.g. \"127.0.0.1:6380\")");
            None
        }
        Some(b) => b
            .parse::<SocketAddr>()
            .map_err(|_| {
                p.add(
                    format!("{key}.bind"),
                    format!("`{b}` is not an IP:port address"),
                )
            })
            .ok(),
    };
    let max_connections = size(
        p,
        &format!("{key}.max_connections"),
        l.max_connections,
        DEFAULT_MAX_CONNECTIONS,
    );
    // Whether certificates are to be verified, as configured (even if a file failed to load:
    // that problem is reported once, on its own key).
    let verifies_certs = l.tls.enabled != Some(false)
        && matches!(l.tls.client_auth.as_deref(), Some("optional" | "required"));
    let tls = server_tls(p, &format!("{key}.tls"), l.tls, base);
    let allow = match l.allow {
        None => Some(None),
        Some(list) => networks(p, &format!("{key}.allow"), &list).map(Some),
    };
    let proxy_trusted = match l.proxy_protocol {
        None => Some(None),
        Some(pp) if pp.trusted.is_empty() => {
            p.add(
                format!("{key}.proxy_protocol.trusted"),
                "lists the load balancers whose PROXY headers are believed: it cannot be empty",
            );
            None
        }
        Some(pp) => networks(p, &format!("{key}.proxy_protocol.trusted"), &pp.trusted).map(Some),
    };
    let cert_users = cert_users(
        p,
        &format!("{key}.auth.certificate_users"),
        std::mem::take(&mut l.auth.certificate_users),
    );
    let auth_limits = AuthLimits {
        max_failures: l.auth.max_failures.unwrap_or(DEFAULT_MAX_AUTH_FAILURES),
        backoff_after: l.auth.backoff_after.unwrap_or(DEFAULT_BACKOFF_AFTER),
        backoff_max: l.auth.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
    };
    let backend_users = l.auth.backend_users.take().unwrap_or(false);
    let auth = if memcached && l.auth.mode.as_deref() != Some("acl") {
        memcached_auth(p, &format!("{key}.auth"), l.auth)
    } else {
        auth(p, &format!("{key}.auth"), l.auth, groups)
    };
    let scripts = l.commands.scripts.take();
    let policy = commands(p, &format!("{key}.commands"), l.commands, memcached);
    let listener_name = l
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{index}", if memcached { "memcached" } else { "redis" }));
    let guard = scripts_guard(
        p,
        &format!("{key}.commands.scripts"),
        scripts,
        policy.as_ref(),
        memcached,
    );
    let mut nodes = Vec::new();
    let upstream = match l.upstream {
        None => {
            p.add(
                format!("{key}.upstream"),
                "missing: where should requests go?",
            );
            None
        }
        Some(u) => {
            let ukey = format!("{key}.upstream");
            if memcached {
                nodes = memcached_nodes(p, &ukey, &u);
            } else if !u.nodes.is_empty() {
                p.add(
                    format!("{ukey}.nodes"),
                    "is for memcached listeners; a Redis listener has one `address`",
                );
            }
            upstream(p, &ukey, u, base).map(|mut up| {
                let provisions = guard == Some(ScriptsGuard::BackendAcl) || backend_users;
                if provisions && up.password.is_none() {
                    // The backend users' passwords derive from the upstream one: without it,
                    // anyone who reaches the backend could compute them.
                    p.add(
                        format!("{ukey}.password"),
                        "is needed to provision backend users (commands.scripts = \"backend_acl\", auth.backend_users): their passwords derive from it",
                    );
                }
                if let Some(policy) = &policy {
                    if guard == Some(ScriptsGuard::BackendAcl) {
                        up.backend_user = Some(backend_user(&listener_name, &up, policy));
                    }
                    if let (true, Some(AuthMode::Acl(group))) = (backend_users, &auth) {
                        up.mirror_users = group
                            .users
                            .iter()
                            .filter(|u| u.enabled)
                            .map(|u| (u.name.clone(), mirror_user(&listener_name, u, &up, policy)))
                            .collect();
                    }
                }
                up
            })
        }
    };
    let protocol = match (memcached, l.memcached) {
        (false, None) => Protocol::Redis,
        (false, Some(_)) => {
            p.add(
                format!("{key}.memcached"),
                "is for listeners with protocol = \"memcached\"",
            );
            Protocol::Redis
        }
        (true, m) => Protocol::Memcached(memcached_settings(
            p,
            &format!("{key}.memcached"),
            m.unwrap_or_default(),
            nodes,
        )),
    };
    if backend_users && (memcached || !matches!(auth, Some(AuthMode::Acl(_)))) {
        p.add(
            format!("{key}.auth.backend_users"),
            "mirrors ACL users in the backend: needs a Redis listener with auth.mode = \"acl\"",
        );
    }
    if !cert_users.is_empty() {
        if !verifies_certs {
            p.add(
                format!("{key}.auth.certificate_users"),
                "needs tls.client_auth = \"optional\" or \"required\" (certificates must be verified)",
            );
        }
        match &auth {
            Some(AuthMode::Acl(group)) => {
                for (i, m) in cert_users.iter().enumerate() {
                    if group.get(m.user.as_bytes()).is_none() {
                        p.add(
                            format!("{key}.auth.certificate_users[{i}].user"),
                            format!("`{}` is not in user group `{}`", m.user, group.name),
                        );
                    }
                }
            }
            _ => p.add(
                format!("{key}.auth.certificate_users"),
                "maps certificates to ACL users: needs auth.mode = \"acl\"",
            ),
        }
    }
    let encryption = match l.encryption.take() {
        None => Some(None),
        Some(_) if matches!(protocol, Protocol::Memcached(_)) => {
            p.add(
                format!("{key}.encryption"),
                "not yet for memcached listeners (Redis string values only, so far)",
            );
            None
        }
        Some(e) => encryption(p, &format!("{key}.encryption"), e, base),
    };
    if p.list.len() > before {
        return None;
    }
    Some(ListenerConfig {
        name: listener_name,
        protocol,
        auth_limits,
        cert_users,
        bind: bind?,
        max_connections,
        allow: allow?,
        proxy_trusted: proxy_trusted?,
        tls: tls?,
        auth: auth?,
        policy: policy?,
        upstream: upstream?,
        encryption: encryption?,
    })
}

fn encryption(
    p: &mut Problems,
    key: &str,
    e: super::file::EncryptionFile,
    base: &Path,
) -> Option<Option<EncryptionConfig>> {
    use crate::crypt::keyring::RootKey;
    let sources = [
        e.root_key_file.is_some(),
        e.root_key_env.is_some(),
        e.root_key_command.is_some(),
    ];
    let root = match (&e.root_key_file, &e.root_key_env, &e.root_key_command) {
        _ if sources.iter().filter(|s| **s).count() > 1 => {
            p.add(
                key,
                "one of root_key_file, root_key_env and root_key_command, not several",
            );
            None
        }
        (Some(path), _, _) => {
            let full = resolve(base, path);
            match RootKey::from_file(&full) {
                Ok(k) => Some((Arc::new(k), format!("file {}", full.display()))),
                Err(why) => {
                    p.add(format!("{key}.root_key_file"), why);
                    None
                }
            }
        }
        (_, Some(var), _) => match RootKey::from_env(var) {
            Ok(k) => Some((Arc::new(k), format!("environment variable {var}"))),
            Err(why) => {
                p.add(format!("{key}.root_key_env"), why);
                None
            }
        },
        (_, _, Some(argv)) => match RootKey::from_command(argv) {
            Ok(k) => Some((
                Arc::new(k),
                format!("command {}", argv.first().map_or("", |a| a)),
            )),
            Err(why) => {
                p.add(format!("{key}.root_key_command"), why);
                None
            }
        },
        (None, None, None) => {
            p.add(
                format!("{key}.root_key_file"),
                "missing: the root key that wraps the data keys: root_key_file (`openssl rand -hex 32 > root.key`), root_key_env or root_key_command",
            );
            None
        }
    };
    let mut patterns = Vec::new();
    let mut hashes = Vec::new();
    for (i, ks) in e.keyspaces.iter().enumerate() {
        if ks.patterns.is_empty() {
            p.add(
                format!("{key}.keyspaces[{i}].patterns"),
                "at least one key pattern, e.g. \"pii:*\"",
            );
        }
        let default = ["string".to_string()];
        let types: &[String] = ks.types.as_deref().unwrap_or(&default);
        for t in types {
            match t.as_str() {
                "string" => patterns.extend(ks.patterns.iter().cloned()),
                "hash" => hashes.extend(ks.patterns.iter().cloned()),
                other => p.add(
                    format!("{key}.keyspaces[{i}].types"),
                    format!("`{other}`: \"string\" or \"hash\" (field values)"),
                ),
            }
        }
        if types.is_empty() {
            p.add(format!("{key}.keyspaces[{i}].types"), "at least one type");
        }
    }
    if e.keyspaces.is_empty() {
        p.add(
            format!("{key}.keyspaces"),
            "at least one keyspace: [[listeners.encryption.keyspaces]] patterns = [\"pii:*\"]",
        );
    }
    let on_plaintext = match e.on_plaintext.as_deref() {
        None | Some("error") => Some(crate::crypt::OnPlaintext::Error),
        Some("pass") => Some(crate::crypt::OnPlaintext::Pass),
        Some(other) => {
            p.add(
                format!("{key}.on_plaintext"),
                format!("`{other}`: \"error\" or \"pass\""),
            );
            None
        }
    };
    let (root_key, root_key_source) = root?;
    Some(Some(EncryptionConfig {
        root_key,
        root_key_source,
        keyspaces: crate::crypt::plan::Keyspaces { patterns, hashes },
        on_plaintext: on_plaintext?,
    }))
}

/// `Some(None)` is a valid plaintext listener; `None` means a problem was recorded.
fn server_tls(
    p: &mut Problems,
    key: &str,
    t: ServerTlsFile,
    base: &Path,
) -> Option<Option<ListenerTls>> {
    if t.enabled == Some(false) {
        return Some(None);
    }
    let before = p.list.len();
    let preferred = match t.transit_encryption_mode.as_deref() {
        None | Some("required") => false,
        Some("preferred") if matches!(t.client_auth.as_deref(), Some("required")) => {
            p.add(
                format!("{key}.transit_encryption_mode"),
                "\"preferred\" admits plaintext clients, which cannot present the client certificate that client_auth = \"required\" demands: pick one",
            );
            false
        }
        Some("preferred") => true,
        Some(other) => {
            p.add(
                format!("{key}.transit_encryption_mode"),
                format!("`{other}` is not one of \"required\", \"preferred\""),
            );
            false
        }
    };
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(v) => {
            p.add(
                format!("{key}.min_version"),
                format!("`{v}` is not supported (\"1.2\" or \"1.3\"; older versions are insecure)"),
            );
            MinVersion::Tls12
        }
    };
    let roots = t
        .client_ca
        .as_ref()
        .and_then(|path| certs(p, &format!("{key}.client_ca"), &resolve(base, path)));
    let client_auth = match (t.client_auth.as_deref(), roots) {
        (None | Some("off"), _) => ClientAuth::Off,
        (Some("optional"), Some(r)) => ClientAuth::Optional(r),
        (Some("required"), Some(r)) => ClientAuth::Required(r),
        (Some(mode @ ("optional" | "required")), None) => {
            if t.client_ca.is_none() {
                p.add(
                    format!("{key}.client_ca"),
                    format!(
                        "client_auth = \"{mode}\" needs a CA bundle to verify client certificates"
                    ),
                );
            }
            ClientAuth::Off
        }
        (Some(other), _) => {
            p.add(
                format!("{key}.client_auth"),
                format!("`{other}` is not one of \"off\", \"optional\", \"required\""),
            );
            ClientAuth::Off
        }
    };
    let client_crls = match &t.client_crl {
        None => Vec::new(),
        Some(_) if matches!(t.client_auth.as_deref(), None | Some("off")) => {
            p.add(
                format!("{key}.client_crl"),
                "revokes client certificates: needs client_auth = \"optional\" or \"required\"",
            );
            Vec::new()
        }
        Some(path) => match crate::tls::pem::load_crls(&resolve(base, path)) {
            Ok(crls) => crls,
            Err(e) => {
                p.pem(format!("{key}.client_crl"), e);
                Vec::new()
            }
        },
    };
    let identity = match (&t.cert, &t.key) {
        (None, None) => Some(Identity::Dev),
        (Some(_), None) | (None, Some(_)) => {
            p.add(
                key,
                "`cert` and `key` go together: give both, or neither for dev certificates",
            );
            None
        }
        (Some(c), Some(k)) => {
            let chain = certs(p, &format!("{key}.cert"), &resolve(base, c));
            let private = match load_key(&resolve(base, k)) {
                Ok(key) => Some(key),
                Err(e) => {
                    p.pem(format!("{key}.key"), e);
                    None
                }
            };
            match (chain, private) {
                (Some(chain), Some(key)) => Some(Identity::Files { chain, key }),
                _ => None,
            }
        }
    };
    if p.list.len() > before {
        return None;
    }
    Some(Some(ListenerTls {
        identity: identity?,
        options: ServerTlsOptions {
            min_version,
            client_auth,
            client_crls,
            session_resumption: t.session_resumption.unwrap_or(true),
        },
        handshake_timeout: t.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        preferred,
    }))
}

/// CIDR networks (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a single host).
fn networks(p: &mut Problems, key: &str, list: &[String]) -> Option<Vec<ipnet::IpNet>> {
    let before = p.list.len();
    let mut nets = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match text.parse::<ipnet::IpNet>() {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => nets.push(ipnet::IpNet::from(ip)),
                Err(_) => p.add(
                    format!("{key}[{i}]"),
                    format!("`{text}` is not a CIDR network (like 10.0.0.0/8) or an IP address"),
                ),
            },
        }
    }
    (p.list.len() == before).then_some(nets)
}

fn certs(p: &mut Problems, key: &str, path: &Path) -> Option<Vec<CertificateDer<'static>>> {
    load_certs(path).map_err(|e| p.pem(key, e)).ok()
}

fn auth(
    p: &mut Problems,
    key: &str,
    a: AuthFile,
    groups: &BTreeMap<String, Arc<UserGroup>>,
) -> Option<AuthMode> {
    if a.mode.as_deref() == Some("acl") {
        if !a.tokens.is_empty() {
            p.add(
                format!("{key}.tokens"),
                "tokens are for mode = \"tokens\"; ACL users have their own passwords",
            );
        }
        return match a.user_group.as_deref() {
            None => {
                p.add(
                    format!("{key}.user_group"),
                    "mode = \"acl\" needs the user group this listener accepts",
                );
                None
            }
            Some(name) => match groups.get(name) {
                Some(g) => Some(AuthMode::Acl(g.clone())),
                None => {
                    p.add(
                        format!("{key}.user_group"),
                        format!("no [user_groups] entry named `{name}`"),
                    );
                    None
                }
            },
        };
    }
    if a.user_group.is_some() {
        p.add(format!("{key}.user_group"), "is for mode = \"acl\"");
    }
    match (a.mode.as_deref(), a.tokens.len()) {
        (Some("none"), 0) => Some(AuthMode::None),
        (Some("none"), _) => {
            p.add(
                key,
                "mode = \"none\" with tokens set: remove the tokens or the mode",
            );
            None
        }
        (None | Some("tokens"), 0) => {
            p.add(
                format!("{key}.tokens"),
                "no AUTH tokens: set one (two during a rotation), or mode = \"none\" to accept clients without AUTH",
            );
            None
        }
        (None | Some("tokens"), 1..=2) => {
            let before = p.list.len();
            for (i, t) in a.tokens.iter().enumerate() {
                // Never echo the token itself.
                if !TOKEN_LEN.contains(&t.len()) {
                    p.add(
                        format!("{key}.tokens[{i}]"),
                        "must be 16 to 128 characters long",
                    );
                }
                if !t.bytes().all(|b| b.is_ascii_graphic()) {
                    p.add(
                        format!("{key}.tokens[{i}]"),
                        "may hold only printable ASCII without spaces",
                    );
                }
            }
            if a.tokens.len() == 2 && a.tokens[0] == a.tokens[1] {
                p.add(format!("{key}.tokens"), "the two tokens are the same");
            }
            (p.list.len() == before).then(|| {
                AuthMode::Tokens(TokenSet::new(
                    a.tokens.iter().map(|t| Token::new(t)).collect(),
                ))
            })
        }
        (None | Some("tokens"), n) => {
            p.add(
                format!("{key}.tokens"),
                format!("{n} tokens given: at most two are live at once (old and new during a rotation)"),
            );
            None
        }
        (Some(other), _) => {
            p.add(
                format!("{key}.mode"),
                format!("`{other}` is not one of \"tokens\", \"acl\", \"none\""),
            );
            None
        }
    }
}

/// How a Redis listener keeps scripts from running what its policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptsGuard {
    /// Nothing to guard: no command is refused or renamed, or no script can run.
    NotNeeded,
    BackendAcl,
    Unguarded,
}

/// Scripts run commands inside Redis, where cachegate cannot see them: with commands disabled
/// or renamed and scripting allowed, the configuration must say how that is handled, never
/// leave it silently open.
fn scripts_guard(
    p: &mut Problems,
    key: &str,
    scripts: Option<String>,
    policy: Option<&Policy>,
    memcached: bool,
) -> Option<ScriptsGuard> {
    if memcached {
        if scripts.is_some() {
            p.add(key, "is for Redis listeners (memcached has no scripts)");
        }
        return None;
    }
    let policy = policy?;
    let exposed = !policy.is_empty() && policy.allows_scripts();
    match scripts.as_deref() {
        None if exposed => {
            p.add(
                key,
                "missing: scripts (EVAL, EVALSHA, FCALL) are allowed, and a script runs commands inside Redis, past commands.disable and commands.rename (`EVAL \"return redis.call('FLUSHALL')\" 0`). Choose one: add \"@scripting\" to commands.disable; set scripts = \"backend_acl\" (cachegate provisions a backend ACL user that denies the disabled commands and uses it for all its connections; needs upstream credentials allowed to run ACL SETUSER, as a sidecar that owns its backend has); or set scripts = \"unguarded\" to accept that scripts can run them (a managed backend where cachegate cannot create users)",
            );
            None
        }
        None => Some(ScriptsGuard::NotNeeded),
        Some("unguarded") => Some(ScriptsGuard::Unguarded),
        Some("backend_acl") => Some(ScriptsGuard::BackendAcl),
        Some(other) => {
            p.add(
                key,
                format!("`{other}` is not one of \"backend_acl\", \"unguarded\""),
            );
            None
        }
    }
}

/// The backend user of a `backend_acl` listener: named after it, with a password derived from
/// the configured upstream one, allowed everything but what the policy refuses.
fn backend_user(listener: &str, up: &UpstreamConfig, policy: &Policy) -> BackendUser {
    let mut rules = vec!["~*".to_string(), "&*".into(), "+@all".into()];
    rules.extend(script_callable_denials(policy));
    provisioned_user(format!("cachegate-{listener}"), up, rules)
}

/// The backend user that mirrors one ACL user: its keys, channels and commands, less what the
/// listener refuses.
fn mirror_user(listener: &str, user: &User, up: &UpstreamConfig, policy: &Policy) -> BackendUser {
    let mut rules = user.backend_rules();
    rules.extend(script_callable_denials(policy));
    provisioned_user(format!("cachegate-{listener}-{}", user.name), up, rules)
}

/// What the policy refuses, as backend ACL rules, for the commands a script could call (MULTI,
/// SUBSCRIBE and the other `noscript` commands never run inside one, and cachegate itself may
/// need them on its connections).
fn script_callable_denials(policy: &Policy) -> Vec<String> {
    policy
        .backend_denials()
        .into_iter()
        .filter(|rule| {
            let args: Vec<&str> = rule.trim_start_matches('-').split('|').collect();
            crate::auth::commands::script_callable(&args)
        })
        .collect()
}

/// A backend user named `name` with these rules, on, and a password derived from the upstream
/// one (HMAC-SHA256), so that every cachegate with the same configuration provisions the same
/// user and no new secret is stored.
fn provisioned_user(name: String, up: &UpstreamConfig, extra_rules: Vec<String>) -> BackendUser {
    let key_material = up.password.as_ref().map_or("", |p| p.expose());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_material.as_bytes());
    let tag = ring::hmac::sign(&key, format!("cachegate backend user {name}").as_bytes());
    let password: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    let digest: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut rules = vec!["reset".to_string(), "on".into(), format!("#{digest}")];
    rules.extend(extra_rules);
    BackendUser {
        name,
        password: Password::new(password),
        rules,
    }
}

fn commands(p: &mut Problems, key: &str, c: CommandsFile, memcached: bool) -> Option<Policy> {
    let rename: Vec<(String, String)> = c.rename.into_iter().collect();
    // A new name must not be a command already: `FLUSHALL = "hello"` would make every
    // client's HELLO on connect empty the cache (Redis's rename-command refuses it too).
    let before = p.list.len();
    for (real, alias) in &rename {
        let taken = if memcached {
            crate::protocol::memcached::is_command(alias.as_bytes())
        } else {
            crate::auth::commands::table()
                .commands
                .contains_key(&alias.to_ascii_lowercase())
        };
        if taken {
            p.add(
                format!("{key}.rename.{real}"),
                format!("new name `{alias}` is an existing command: clients would run `{real}` when they mean `{alias}`; pick an unused name"),
            );
        }
    }
    if p.list.len() > before {
        return None;
    }
    match Policy::new(&c.disable, &rename) {
        Ok(policy) => Some(policy),
        Err(errs) => {
            // Policy problems read "<sub-key>: <message>".
            for e in errs {
                let (sub, msg) = e.split_once(": ").unwrap_or(("", &e));
                p.add(format!("{key}.{sub}"), msg);
            }
            None
        }
    }
}

fn upstream(p: &mut Problems, key: &str, u: UpstreamFile, base: &Path) -> Option<UpstreamConfig> {
    let before = p.list.len();
    let address = match u.address {
        None if !u.nodes.is_empty() => u.nodes[0].clone(),
        None => {
            p.add(
                format!("{key}.address"),
                "missing (e.g. \"127.0.0.1:6379\")",
            );
            String::new()
        }
        Some(a) => {
            if split_host_port(&a).is_none() {
                p.add(format!("{key}.address"), format!("`{a}` is not host:port"));
            }
            a
        }
    };
    if u.username.is_some() && u.password.is_none() {
        p.add(format!("{key}.password"), "a username needs a password");
    }
    let tls = match u.tls {
        Some(t) if t.enabled != Some(false) => {
            upstream_tls(p, &format!("{key}.tls"), t, &address, base)
        }
        _ => None,
    };
    if p.list.len() > before {
        return None;
    }
    Some(UpstreamConfig {
        backend_user: None,
        mirror_users: Vec::new(),
        address,
        username: u.username,
        password: u.password.map(Password::new),
        connect_timeout: u.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        request_timeout: u.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        warm_connections: u
            .warm_connections
            .map(|w| w as usize)
            .unwrap_or(DEFAULT_WARM_CONNECTIONS),
        max_idle: u
            .max_idle
            .map(|m| m as usize)
            .unwrap_or(DEFAULT_MAX_IDLE)
            .max(
                u.warm_connections
                    .map(|w| w as usize)
                    .unwrap_or(DEFAULT_WARM_CONNECTIONS),
            ),
        health_interval: u.health_interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
        shared_connections: if u.multiplex.unwrap_or(true) {
            u.shared_connections
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_SHARED_CONNECTIONS)
                .max(1)
        } else {
            0
        },
        tls,
    })
}

fn upstream_tls(
    p: &mut Problems,
    key: &str,
    t: ClientTlsFile,
    address: &str,
    base: &Path,
) -> Option<UpstreamTlsOptions> {
    let roots = match &t.ca {
        None => {
            p.add(
                format!("{key}.ca"),
                "missing: the CA bundle that signed the upstream's certificate",
            );
            None
        }
        Some(path) => certs(p, &format!("{key}.ca"), &resolve(base, path)),
    };
    let name = t
        .server_name
        .clone()
        .or_else(|| split_host_port(address).map(|(h, _)| h.to_string()))
        .unwrap_or_default();
    let server_name = match ServerName::try_from(name.clone()) {
        Ok(n) => Some(n),
        Err(_) => {
            p.add(
                format!("{key}.server_name"),
                format!("`{name}` is not a valid DNS name or IP address"),
            );
            None
        }
    };
    let client_cert = match (&t.cert, &t.key) {
        (None, None) => Some(None),
        (Some(c), Some(k)) => {
            let chain = certs(p, &format!("{key}.cert"), &resolve(base, c));
            let private = load_key(&resolve(base, k))
                .map_err(|e| p.pem(format!("{key}.key"), e))
                .ok();
            chain.zip(private).map(Some)
        }
        _ => {
            p.add(key, "`cert` and `key` go together");
            None
        }
    };
    Some(UpstreamTlsOptions {
        roots: roots?,
        server_name: server_name?,
        server_name_explicit: t.server_name.is_some(),
        client_cert: client_cert?,
    })
}

/// `[[users]]` and `[user_groups]`: every rule string parsed (errors name the user and the
/// token), every group resolved and holding a `default` user.
fn user_groups(
    p: &mut Problems,
    users: Vec<super::file::UserFile>,
    groups: BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Arc<UserGroup>> {
    let mut parsed: Vec<Arc<User>> = Vec::new();
    for (i, u) in users.into_iter().enumerate() {
        let key = format!("users[{i}]");
        let Some(name) = u.name.filter(|n| !n.is_empty()) else {
            p.add(format!("{key}.name"), "missing");
            continue;
        };
        if name.contains(char::is_whitespace) {
            p.add(format!("{key}.name"), "may not contain spaces");
            continue;
        }
        if parsed.iter().any(|x| x.name == name) {
            p.add(
                format!("{key}.name"),
                format!("user `{name}` is defined twice"),
            );
            continue;
        }
        match User::parse(&name, u.acl.as_deref().unwrap_or("")) {
            Ok(mut user) => {
                user.cert_required = u.cert_required.unwrap_or(false);
                parsed.push(Arc::new(user))
            }
            Err(e) => p.add(format!("{key}.acl"), format!("user `{name}`: {e}")),
        }
    }
    let mut out = BTreeMap::new();
    for (group, names) in groups {
        let key = format!("user_groups.{group}");
        let mut members = Vec::new();
        for n in &names {
            match parsed.iter().find(|u| &u.name == n) {
                Some(u) => members.push(u.clone()),
                None => p.add(&key, format!("no [[users]] entry named `{n}`")),
            }
        }
        if !names.iter().any(|n| n == "default") {
            p.add(
                &key,
                "every user group needs a `default` user (it is who AUTH <password> logs in as); give it `off` to disable it",
            );
        }
        out.insert(
            group.clone(),
            Arc::new(UserGroup {
                name: group,
                users: members,
            }),
        );
    }
    out
}

fn cert_users(
    p: &mut Problems,
    key: &str,
    entries: Vec<super::file::CertUserFile>,
) -> Vec<CertMapping> {
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let key = format!("{key}[{i}]");
        let names: Vec<(NameKind, String)> = [
            (NameKind::Cn, e.cn),
            (NameKind::Dns, e.dns),
            (NameKind::Uri, e.uri),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let Some(user) = e.user else {
            p.add(
                format!("{key}.user"),
                "missing: which user does this certificate log in as?",
            );
            continue;
        };
        match names.as_slice() {
            [(kind, value)] => out.push(CertMapping {
                kind: *kind,
                value: value.clone(),
                user,
            }),
            _ => p.add(&key, "give exactly one of `cn`, `dns`, `uri`"),
        }
    }
    out
}

/// memcached listeners have no AUTH command: client certificates are how they restrict access.
fn memcached_auth(p: &mut Problems, key: &str, a: AuthFile) -> Option<AuthMode> {
    match (a.mode.as_deref(), a.tokens.is_empty()) {
        (None | Some("none"), true) => Some(AuthMode::None),
        _ => {
            p.add(
                key,
                "memcached has no AUTH command: use mode = \"acl\" with certificate_users, or leave [auth] out and restrict clients with tls.client_auth = \"required\"",
            );
            None
        }
    }
}

/// `upstream.nodes` (or a single `upstream.address`) as ring nodes: "host:port[:weight]".
fn memcached_nodes(p: &mut Problems, key: &str, u: &UpstreamFile) -> Vec<RingNode> {
    if u.username.is_some() || u.password.is_some() {
        p.add(key, "memcached upstreams take no username or password");
    }
    if u.address.is_some() && !u.nodes.is_empty() {
        p.add(key, "give either `address` (one node) or `nodes`, not both");
    }
    let list: Vec<String> = match &u.address {
        Some(a) if u.nodes.is_empty() => vec![a.clone()],
        _ => u.nodes.clone(),
    };
    let mut nodes = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let weighted = || {
            let (rest, weight) = entry.rsplit_once(':')?;
            let (h, port) = split_host_port(rest)?;
            let weight = weight.parse::<u32>().ok().filter(|w| *w > 0)?;
            Some((h.to_string(), port, weight))
        };
        let parsed =
            weighted().or_else(|| split_host_port(entry).map(|(h, port)| (h.to_string(), port, 1)));
        match parsed {
            Some((host, port, _))
                if nodes
                    .iter()
                    .any(|b: &RingNode| b.host == host && b.port == port) =>
            {
                p.add(
                    format!("{key}.nodes[{i}]"),
                    format!("{host}:{port} is listed twice"),
                )
            }
            Some((host, port, weight)) => nodes.push(RingNode { host, port, weight }),
            None => p.add(
                format!("{key}.nodes[{i}]"),
                format!("`{entry}` is not host:port or host:port:weight"),
            ),
        }
    }
    nodes
}

fn memcached_settings(
    p: &mut Problems,
    key: &str,
    m: MemcachedFile,
    nodes: Vec<RingNode>,
) -> MemcachedConfig {
    let defaults = McLimits::default();
    let on_node_down = match m.on_node_down.as_deref() {
        None | Some("miss") => NodeDown::Miss,
        Some("error") => NodeDown::Error,
        Some(other) => {
            p.add(
                format!("{key}.on_node_down"),
                format!("`{other}` is not one of \"miss\", \"error\""),
            );
            NodeDown::Miss
        }
    };
    let limit = |p: &mut Problems, name: &str, v: Option<u64>, d: usize| {
        size(p, &format!("{key}.{name}"), v, d)
    };
    MemcachedConfig {
        nodes,
        limits: McLimits {
            max_value: limit(p, "max_value_bytes", m.max_value_bytes, defaults.max_value),
            max_line: limit(p, "max_line_bytes", m.max_line_bytes, defaults.max_line),
            max_keys: limit(p, "max_keys", m.max_keys, defaults.max_keys),
        },
        on_node_down,
        eject_after: m.eject_after.unwrap_or(0),
        eject_for: m.eject_for.unwrap_or(DEFAULT_EJECT_FOR),
    }
}

/// `host:port` or `[v6]:port`.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    super::note_file(&full);
    full
}

/// `$CACHEGATE_DATA_DIR`, else `$XDG_DATA_HOME/cachegate`, else `~/.local/share/cachegate`,
/// else `./.cachegate`.
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CACHEGATE_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("cachegate");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/cachegate");
    }
    PathBuf::from(".cachegate")
}
