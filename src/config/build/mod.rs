//! From the file mirror to the typed, always-valid `Config`. Every problem is collected with its
//! key path, so one run of `cachegate check` lists them all.

mod auth;
mod encryption;
mod memcached;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, ServerName};

use super::Problem;
use crate::auth::acl::User;
use crate::auth::cert::{CertMapping, NameKind};
use crate::auth::secret::{Password, Token, TokenSet};
use crate::config::file::{
    AuthFile, ClientTlsFile, CommandsFile, FileConfig, ListenerFile, MemcachedFile, ServerTlsFile,
    UpstreamFile,
};
use crate::policy::Policy;
use crate::protocol::memcached::McLimits;
use crate::protocol::resp::RequestLimits;
use crate::tls::client::UpstreamTlsOptions;
use crate::tls::pem::{load_certs, load_key, PemError};
use crate::tls::server::{ClientAuth, MinVersion, ServerTlsOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::*;
use auth::*;
use encryption::*;
use memcached::*;
use tls::*;
use upstream::*;

/// Builds the typed config; `base` is the directory relative paths are resolved against.
pub fn build(file: FileConfig, base: &Path, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut p = Problems { list: problems };
    let threads = match file.threads {
        None => None,
        Some(n @ 1..=MAX_THREADS) => Some(n as usize),
        Some(_) => {
            p.add("threads", format!("must be 1 to {MAX_THREADS}"));
            None
        }
    };
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
        login_timeout: match file.limits.login_timeout {
            Some(t) if t.is_zero() => None,
            t => Some(t.unwrap_or(DEFAULT_LOGIN_TIMEOUT)),
        },
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
        threads,
        limits,
        shutdown_grace: file.shutdown.grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        listeners,
    })
}

pub(super) struct Problems<'a> {
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

pub(super) fn size(p: &mut Problems, key: &str, value: Option<u64>, default: usize) -> usize {
    match value {
        None => default,
        Some(0) => {
            p.add(key, "must be greater than 0");
            default
        }
        Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
    }
}

pub(super) fn listener(
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
    let max_connections_per_source = l.max_connections_per_source.map_or(0, |n| n as usize);
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
        Some(pp) => {
            let trusted = networks(p, &format!("{key}.proxy_protocol.trusted"), &pp.trusted);
            // Any host in a trusted network can claim any client address (past the
            // allow-list, with a fresh AUTH budget each time): a whole subnet is rarely meant.
            for net in trusted.iter().flatten() {
                if net.max_prefix_len() - net.prefix_len() > 4 {
                    tracing::warn!(listener = %key, network = %net, "proxy_protocol.trusted includes a network of more than 16 addresses: every host in it can claim any client address; list the load balancers' own addresses");
                }
            }
            trusted.map(Some)
        }
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
            } else if !u.nodes.is_empty() && u.cluster != Some(true) {
                p.add(
                    format!("{ukey}.nodes"),
                    "is for memcached listeners and Redis Cluster seeds (`cluster = true`); a Redis listener has one `address`",
                );
            }
            upstream(p, &ukey, u, base, memcached).map(|mut up| {
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
        Some(e) => {
            // memcached values are strings: there is no hash to seal field by field.
            let hashes = e
                .keyspaces
                .iter()
                .any(|k| k.types.iter().flatten().any(|t| t == "hash"));
            let memcached_hashes = matches!(protocol, Protocol::Memcached(_)) && hashes;
            if memcached_hashes {
                p.add(
                    format!("{key}.encryption.keyspaces"),
                    "types = [\"hash\"] is for Redis listeners; memcached values are strings",
                );
            }
            let built = encryption(p, &format!("{key}.encryption"), e, base);
            if memcached_hashes {
                None
            } else {
                built
            }
        }
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
        max_connections_per_source,
        allow: allow?,
        proxy_trusted: proxy_trusted?,
        tls: tls?,
        auth: auth?,
        policy: policy?,
        upstream: upstream?,
        encryption: encryption?,
    })
}

pub(super) use super::model::split_host_port;

pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    super::note_file(&full);
    full
}

/// More threads than this is a typing error, not a host.
const MAX_THREADS: u64 = 1024;

/// `$CACHEGATE_DATA_DIR`, else `$XDG_DATA_HOME/cachegate`, else `~/.local/share/cachegate`,
/// else `./.cachegate`.
pub(super) fn default_data_dir() -> PathBuf {
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
