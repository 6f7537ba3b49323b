//! The parts a listener is built from, for a configuration: its TLS acceptor and the rest of
//! how it lets connections in, its Redis session context or memcached rules, and the dates its
//! certificates expire. Used by `server` at start and by `reload` for every reload, so that both
//! build them the same way.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::throttle::Throttle;
use crate::config::{Config, Identity, ListenerConfig, ListenerTls, Protocol, UpstreamConfig};
use crate::listener::Front;
use crate::metrics::Metrics;
use crate::session;
use crate::session::memcached;
use crate::tls::{dev_certs, pem, TlsError};
use crate::upstream::shared::Shared;
use crate::upstream::Pool;

/// When a certificate in use expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub listener: String,
    /// server, client_ca, client_crl (its `nextUpdate`), upstream_ca, upstream_client.
    pub role: &'static str,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener `{listener}`: {source}")]
    Tls {
        listener: String,
        #[source]
        source: TlsError,
    },
    #[error("listener `{listener}`: dev certificates: {reason}")]
    DevCerts { listener: String, reason: String },
    #[error("listener `{listener}`: encryption: {reason}")]
    Encryption { listener: String, reason: String },
    #[error("{0} listeners configured but {1} bound")]
    ListenerCount(usize, usize),
}

/// The logins a Redis session's own connection may switch between, when cachegate provisions
/// backend users for this listener.
fn identities(up: &UpstreamConfig) -> Option<session::Identities> {
    if up.backend_user.is_none() && up.mirror_users.is_empty() {
        return None;
    }
    let auth = |user: Option<&str>, password: Option<&str>| -> Vec<bytes::Bytes> {
        let mut args = vec![bytes::Bytes::from_static(b"AUTH")];
        args.push(bytes::Bytes::copy_from_slice(
            user.unwrap_or("default").as_bytes(),
        ));
        // A passwordless default user takes any password.
        args.push(bytes::Bytes::copy_from_slice(
            password.unwrap_or("nopass").as_bytes(),
        ));
        args
    };
    let admin = auth(
        up.username.as_deref(),
        up.password.as_ref().map(|p| p.expose()),
    );
    let listener = match &up.backend_user {
        Some(u) => auth(Some(&u.name), Some(u.password.expose())),
        None => admin.clone(),
    };
    Some(session::Identities {
        listener,
        admin: up.backend_user.as_ref().map(|_| admin),
        users: up
            .mirror_users
            .iter()
            .map(|(name, u)| (name.clone(), auth(Some(&u.name), Some(u.password.expose()))))
            .collect(),
    })
}

/// The users of a listener whose scripts would run past their rules, with which rules (keys,
/// commands, channels): where the listener runs a script command at all (not with
/// `@scripting` disabled) and no mirrored backend user holds scripts to the user's rules.
pub fn scripts_past_rules(cfg: &ListenerConfig) -> Vec<(String, String)> {
    let scripts_run = crate::auth::commands::RUNS_SCRIPT
        .iter()
        .any(|c| cfg.policy.runs(c.as_bytes()));
    match &cfg.auth {
        crate::config::AuthMode::Acl(group)
            if scripts_run && cfg.upstream.mirror_users.is_empty() =>
        {
            group
                .users
                .iter()
                .filter_map(|user| {
                    let past = user.scripts_reach_past();
                    (!past.is_empty()).then(|| (user.name.clone(), past.join(", ")))
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// A Redis listener's session context for `config`, around the upstream parts that live as
/// long as the process (pool, shared connections) and the AUTH throttle.
pub fn redis_context(
    cfg: &ListenerConfig,
    config: &Config,
    lasting: Lasting,
    metrics: &Arc<Metrics>,
    budget: &Arc<crate::budget::MemoryBudget>,
) -> session::Context {
    let Lasting {
        pool,
        shared,
        cluster,
        throttle,
        encryption,
    } = lasting;
    for (user, past) in scripts_past_rules(cfg) {
        tracing::warn!(listener = %cfg.name, user = %user, "this user may run scripts, and a script runs as cachegate's backend login, past the user's rules on {past} (a user limited to +@read can write from a script); set auth.backend_users = true to have Redis hold scripts to the user's rules, or take @scripting from the user");
    }
    session::Context {
        shared,
        cluster,
        listener: cfg.name.clone(),
        auth: cfg.auth.clone(),
        cert_users: cfg.cert_users.clone(),
        auth_limits: cfg.auth_limits,
        throttle,
        metrics: metrics.clone(),
        policy: cfg.policy.clone(),
        pool,
        limits: config.limits.clone(),
        budget: budget.clone(),
        identities: identities(&cfg.upstream),
        encryption,
        superseded: CancellationToken::new(),
    }
}

/// What a Redis listener keeps across reloads: its upstream pool and shared connections, its
/// AUTH throttle (kept while `auth_limits` stay) and its keyring.
pub struct Lasting {
    pub pool: Pool,
    pub shared: Option<Arc<Shared>>,
    /// A Redis Cluster upstream: its slot map and each node's connections.
    pub cluster: Option<Arc<crate::upstream::cluster::Cluster>>,
    pub throttle: Arc<Throttle>,
    pub encryption: Option<Arc<crate::crypt::Encryption>>,
}

/// A listener's at-rest encryption: its keyring (created with a first data key in the data
/// directory when there is none), unwrapped with the configured root key.
pub fn encryption(
    cfg: &ListenerConfig,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::crypt::Encryption>>, ServerError> {
    let Some(e) = &cfg.encryption else {
        return Ok(None);
    };
    let path = crate::crypt::keyring::keyring_path(&config.data_dir, &cfg.name);
    let (keys, created) =
        crate::crypt::keyring::open_or_create(&path, &e.root_key).map_err(|reason| {
            ServerError::Encryption {
                listener: cfg.name.clone(),
                reason,
            }
        })?;
    if created {
        tracing::warn!(listener = %cfg.name, keyring = %path.display(), "created a keyring with a new data key: keep it (and the root key); without both, the encrypted values cannot be read");
    }
    tracing::info!(listener = %cfg.name, patterns = ?e.keyspaces.patterns, data_keys = keys.all.len(), primary = keys.primary.id, "values in these keyspaces are encrypted before they reach the backend");
    Ok(Some(Arc::new(crate::crypt::Encryption::new(
        keys,
        e.keyspaces.clone(),
        e.on_plaintext,
        cfg.name.clone(),
        metrics.clone(),
    ))))
}

/// What a memcached listener's sessions check, from `config`.
pub fn memcached_rules(
    cfg: &ListenerConfig,
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<memcached::Rules, ServerError> {
    Ok(memcached::Rules {
        policy: cfg.policy.clone(),
        auth: cfg.auth.clone(),
        cert_users: cfg.cert_users.clone(),
        limits: config.limits.clone(),
        superseded: CancellationToken::new(),
        encryption: encryption(cfg, config, metrics)?,
    })
}

/// The upstream settings of one memcached node: the listener's, at the node's address, and
/// with the node's host as TLS server name unless one is configured.
pub fn node_upstream(
    cfg: &ListenerConfig,
    node: &crate::config::RingNode,
) -> Result<UpstreamConfig, ServerError> {
    node_at(cfg, &format!("{}:{}", node.host, node.port), None)
}

/// The listener's upstream settings at another node's `address` (a cluster's, a ring's),
/// verified over TLS by `name` (the hostname it announces), else by its host, unless
/// `upstream.tls.server_name` is set.
pub fn node_at(
    cfg: &ListenerConfig,
    address: &str,
    name: Option<String>,
) -> Result<UpstreamConfig, ServerError> {
    let mut upstream = UpstreamConfig {
        address: address.to_string(),
        ..cfg.upstream.clone()
    };
    if let Some(tls) = upstream.tls.as_mut().filter(|t| !t.server_name_explicit) {
        let name = name.unwrap_or_else(|| crate::config::model::host_of(address));
        tls.server_name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            ServerError::Tls {
                listener: cfg.name.clone(),
                source: crate::tls::TlsError::Invalid(format!(
                    "node {address}: `{name}` is not a valid TLS server name; set upstream.tls.server_name"
                )),
            }
        })?;
    }
    Ok(upstream)
}

/// How a listener lets connections in (TLS acceptor, allow-list, PROXY protocol), and when the
/// certificates it uses expire. `loud`: say so when it uses dev certificates (at start).
pub fn front(
    cfg: &ListenerConfig,
    config: &Config,
    port: u16,
    loud: bool,
) -> Result<(Front, Vec<CertExpiry>), ServerError> {
    let mut expiry = Vec::new();
    let tls = match &cfg.tls {
        None => None,
        Some(t) => {
            let (acceptor, chain) = acceptor(cfg, t, config, port, loud)?;
            let role = |role: &'static str, certs: &[CertificateDer<'static>]| {
                crate::tls::pem::earliest_expiry(certs).map(|not_after| CertExpiry {
                    listener: cfg.name.clone(),
                    role,
                    not_after,
                })
            };
            expiry.extend(role("server", &chain[..chain.len().min(1)]));
            if let crate::tls::server::ClientAuth::Optional(cas)
            | crate::tls::server::ClientAuth::Required(cas) = &t.options.client_auth
            {
                expiry.extend(role("client_ca", cas));
            }
            // A CRL "expires" when it is due to be replaced: the same gauge lets one alert
            // catch a CRL pipeline that stopped while cachegate runs.
            if let Some(not_after) = crate::tls::pem::earliest_next_update(&t.options.client_crls) {
                expiry.push(CertExpiry {
                    listener: cfg.name.clone(),
                    role: "client_crl",
                    not_after,
                });
            }
            Some((acceptor, t.handshake_timeout))
        }
    };
    if let Some(up) = &cfg.upstream.tls {
        let mut add = |role: &'static str, certs: &[CertificateDer<'static>]| {
            if let Some(not_after) = crate::tls::pem::earliest_expiry(certs) {
                expiry.push(CertExpiry {
                    listener: cfg.name.clone(),
                    role,
                    not_after,
                });
            }
        };
        add("upstream_ca", &up.roots);
        if let Some((chain, _)) = &up.client_cert {
            add("upstream_client", &chain[..chain.len().min(1)]);
        }
    }
    Ok((
        Front {
            tls,
            preferred: cfg.tls.as_ref().is_some_and(|t| t.preferred),
            allow: cfg.allow.clone(),
            proxy_trusted: cfg.proxy_trusted.clone(),
        },
        expiry,
    ))
}

/// The listener's TLS acceptor, and the certificate chain it serves.
fn acceptor(
    cfg: &ListenerConfig,
    tls: &ListenerTls,
    config: &Config,
    port: u16,
    loud: bool,
) -> Result<(TlsAcceptor, Vec<CertificateDer<'static>>), ServerError> {
    let (chain, key) = match &tls.identity {
        Identity::Files { chain, key } => (chain.clone(), key.clone_key()),
        Identity::Dev => {
            let dir = config.data_dir.join("dev-certs");
            let dev_err = |reason| ServerError::DevCerts {
                listener: cfg.name.clone(),
                reason,
            };
            let (files, generated) = dev_certs::ensure(&dir).map_err(dev_err)?;
            let chain = pem::load_certs(&files.cert).map_err(|e| dev_err(e.to_string()))?;
            let key = pem::load_key(&files.key).map_err(|e| dev_err(e.to_string()))?;
            if !loud {
                return Ok((build_acceptor(cfg, tls, chain.clone(), key)?, chain));
            }
            tracing::warn!(
                listener = %cfg.name,
                ca = %files.ca.display(),
                generated,
                "USING A SELF-SIGNED DEVELOPMENT CERTIFICATE: for local testing only; configure tls.cert and tls.key for anything else"
            );
            match cfg.protocol {
                Protocol::Redis => tracing::warn!(
                    "connect with: redis-cli --tls --cacert {} -h 127.0.0.1 -p {port}",
                    files.ca.display()
                ),
                Protocol::Memcached(_) => tracing::warn!(
                    "connect with: openssl s_client -quiet -CAfile {} -connect 127.0.0.1:{port}   (then e.g. `version`; or pymemcache with tls_context)",
                    files.ca.display()
                ),
            }
            (chain, key)
        }
    };
    Ok((build_acceptor(cfg, tls, chain.clone(), key)?, chain))
}

fn build_acceptor(
    cfg: &ListenerConfig,
    tls: &ListenerTls,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, ServerError> {
    let config =
        crate::tls::server::build(&tls.options, chain, key).map_err(|source| ServerError::Tls {
            listener: cfg.name.clone(),
            source,
        })?;
    Ok(TlsAcceptor::from(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The startup warning names each user whose scripts would pass its rules, and which
    /// rules; none where the listener runs no script command (`@scripting` disabled: it once
    /// warned there too, found by a reviewer) or mirrored backend users hold scripts to them.
    #[test]
    fn script_warnings_name_who_and_what_where_scripts_run() {
        let warned = |listener: &str| {
            let text = format!(
                "[[users]]\nname = \"default\"\nacl = \"off\"\n\
                 [[users]]\nname = \"ro\"\nacl = \"on >pw-ro ~* &* +@read +eval\"\n\
                 [[users]]\nname = \"narrow\"\nacl = \"on >pw-n ~app:* +@all\"\n\
                 [[users]]\nname = \"all\"\nacl = \"on >pw-a ~* &* +@all\"\n\
                 [user_groups]\ng = [\"default\", \"ro\", \"narrow\", \"all\"]\n\
                 [[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\nauth.user_group = \"g\"\n\
                 upstream.address = \"127.0.0.1:6379\"\nupstream.password = \"pw\"\n{listener}"
            );
            let config = crate::config::parse(&text, "t", std::path::Path::new(".")).unwrap();
            scripts_past_rules(&config.listeners[0])
        };
        let pair = |u: &str, p: &str| (u.to_string(), p.to_string());
        assert_eq!(
            warned(""),
            [pair("ro", "commands"), pair("narrow", "keys, channels")]
        );
        // EVAL renamed: scripts still run, under the alias.
        assert_eq!(
            warned(
                "commands.rename = { EVAL = \"run-script\" }\ncommands.scripts = \"unguarded\"\n"
            )
            .len(),
            2
        );
        assert_eq!(warned("commands.disable = [\"@scripting\"]\n"), []);
        assert!(warned("auth.backend_users = true\n").is_empty());
    }
}
