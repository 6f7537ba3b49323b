//! Builds the immutable parts once (TLS acceptors, policies, pools) and runs the listeners until
//! the shutdown future completes; then drains in two beats with a deadline.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::throttle::Throttle;
use crate::config::{Config, Identity, ListenerConfig, ListenerTls, Protocol, UpstreamConfig};
use crate::listener::{accept_loop, Handler, Listener};
use crate::memcached;
use crate::metrics::Metrics;
use crate::session;
use crate::tls::{dev_certs, pem, TlsError};
use crate::upstream::conn::Protocol as UpstreamProtocol;
use crate::upstream::shared::{Shared, SharedPool};
use crate::upstream::Pool;

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
    #[error("{0} listeners configured but {1} bound")]
    ListenerCount(usize, usize),
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every session finished within the grace period.
    pub drained: bool,
}

/// The bound sockets: one per configured listener, in order, and the admin listener.
pub struct Bound {
    pub listeners: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// Binds every configured listener, in order, and the admin listener.
pub async fn bind(config: &Config) -> Result<Bound, ServerError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let tcp = TcpListener::bind(l.bind)
            .await
            .map_err(|source| ServerError::Bind {
                listener: l.name.clone(),
                addr: l.bind,
                source,
            })?;
        bound.push(tcp);
    }
    let admin = match config.admin {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    listener: "admin".into(),
                    addr,
                    source,
                })?,
        ),
    };
    Ok(Bound {
        listeners: bound,
        admin,
    })
}

/// Everything built and ready to accept: the immutable per-listener state and the sockets.
pub struct Prepared {
    listeners: Vec<(TcpListener, Arc<Listener>)>,
    pools: Vec<Pool>,
    admin: Option<(TcpListener, Arc<crate::admin::Admin>)>,
    pub metrics: Arc<Metrics>,
    /// Stops the shared upstream connections once sessions are done with them.
    stop_shared: CancellationToken,
    grace: std::time::Duration,
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

/// Builds TLS acceptors (generating dev certificates if needed), policies and pools for
/// already-bound listeners (one per `config.listeners` entry, in order). Nothing is spawned yet.
pub fn prepare(config: Config, bound: Bound) -> Result<Prepared, ServerError> {
    let metrics = Arc::new(Metrics::new());
    let budget = crate::budget::MemoryBudget::new(config.limits.max_buffered_bytes);
    let stop_shared = CancellationToken::new();
    let Bound {
        listeners: bound,
        admin,
    } = bound;
    if bound.len() != config.listeners.len() {
        return Err(ServerError::ListenerCount(
            config.listeners.len(),
            bound.len(),
        ));
    }
    let mut listeners = Vec::new();
    let mut pools = Vec::new();
    for (cfg, tcp) in config.listeners.iter().zip(bound) {
        let tls_err = |source| ServerError::Tls {
            listener: cfg.name.clone(),
            source,
        };
        let max_reply = config.limits.max_reply_bytes;
        let handler = match &cfg.protocol {
            Protocol::Redis => {
                let pool = Pool::new(&cfg.upstream, max_reply, UpstreamProtocol::Redis)
                    .map_err(tls_err)?;
                pools.push(pool.clone());
                let shared = (cfg.upstream.shared_connections > 0).then(|| {
                    let pushes = metrics
                        .unexpected_pushes
                        .get_or_create(&crate::metrics::ListenerLabels {
                            listener: cfg.name.clone(),
                        })
                        .clone();
                    let start = |resp3| {
                        SharedPool::start(
                            pool.connector(),
                            cfg.upstream.shared_connections,
                            resp3,
                            cfg.upstream.request_timeout,
                            pushes.clone(),
                            budget.clone(),
                            stop_shared.clone(),
                        )
                    };
                    Arc::new(Shared {
                        resp2: start(false),
                        resp3: start(true),
                    })
                });
                if let (crate::config::AuthMode::Acl(group), true) =
                    (&cfg.auth, cfg.upstream.mirror_users.is_empty())
                {
                    for user in group.users.iter().filter(|u| u.scripts_reach_past_keys()) {
                        tracing::warn!(listener = %cfg.name, user = %user.name, "this user may run scripts but only some keys: a script can reach any key; set auth.backend_users = true to have Redis enforce the user's keys inside scripts");
                    }
                }
                Handler::Redis(Arc::new(session::Context {
                    shared,
                    listener: cfg.name.clone(),
                    auth: cfg.auth.clone(),
                    cert_users: cfg.cert_users.clone(),
                    auth_limits: cfg.auth_limits,
                    throttle: Throttle::new(
                        cfg.auth_limits.backoff_after,
                        cfg.auth_limits.backoff_max,
                    ),
                    metrics: metrics.clone(),
                    policy: cfg.policy.clone(),
                    pool,
                    limits: config.limits.clone(),
                    budget: budget.clone(),
                    identities: identities(&cfg.upstream),
                }))
            }
            Protocol::Memcached(mc) => {
                let mut nodes = Vec::with_capacity(mc.nodes.len());
                for node in &mc.nodes {
                    let label = format!("{}:{}", node.host, node.port);
                    let mut upstream = UpstreamConfig {
                        address: label.clone(),
                        ..cfg.upstream.clone()
                    };
                    if let Some(tls) = upstream.tls.as_mut().filter(|t| !t.server_name_explicit) {
                        tls.server_name = rustls_pki_types::ServerName::try_from(node.host.clone())
                            .map_err(|_| {
                                tls_err(crate::tls::TlsError::Invalid(format!(
                                    "node {label}: `{}` is not a valid TLS server name; set upstream.tls.server_name",
                                    node.host
                                )))
                            })?;
                    }
                    let pool = Pool::new(&upstream, max_reply, UpstreamProtocol::Memcached)
                        .map_err(tls_err)?;
                    pools.push(pool.clone());
                    let shared = (cfg.upstream.shared_connections > 0).then(|| {
                        SharedPool::start(
                            pool.connector(),
                            cfg.upstream.shared_connections,
                            false,
                            cfg.upstream.request_timeout,
                            prometheus_client::metrics::counter::Counter::default(),
                            budget.clone(),
                            stop_shared.clone(),
                        )
                    });
                    nodes.push(memcached::Node::new(pool, shared, label));
                }
                Handler::Memcached(Arc::new(memcached::Context::new(
                    cfg.name.clone(),
                    cfg.policy.clone(),
                    memcached::Security {
                        auth: cfg.auth.clone(),
                        cert_users: cfg.cert_users.clone(),
                        metrics: metrics.clone(),
                        budget: budget.clone(),
                    },
                    mc.clone(),
                    config.limits.clone(),
                    cfg.upstream.request_timeout,
                    nodes,
                )))
            }
        };
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some((acceptor(cfg, t, &config, &tcp)?, t.handshake_timeout)),
        };
        announce(cfg, &tcp, tls.is_some());
        let preferred = cfg.tls.as_ref().is_some_and(|t| t.preferred);
        if preferred {
            tracing::warn!(listener = %cfg.name, "transit_encryption_mode = \"preferred\": PLAINTEXT CLIENTS ARE SERVED on this TLS port; watch cachegate_connections_total{{tls=\"false\"}} fall to zero, then set \"required\"");
        }
        let listener = Arc::new(Listener {
            metrics: metrics.clone(),
            name: cfg.name.clone(),
            handler,
            tls,
            preferred,
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            allow: cfg.allow.clone(),
            proxy_trusted: cfg.proxy_trusted.clone(),
            last_reject_log: std::sync::atomic::AtomicU64::new(0),
            unlogged_rejects: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        });
        listeners.push((tcp, listener));
    }
    let admin = admin.map(|tcp| {
        let state = Arc::new(crate::admin::Admin {
            metrics: metrics.clone(),
            pools: pools.clone(),
        });
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!(%addr, "admin listening: /live /ready /metrics");
        }
        (tcp, state)
    });
    Ok(Prepared {
        listeners,
        pools,
        admin,
        metrics,
        stop_shared,
        grace: config.shutdown_grace,
    })
}

/// `prepare` then `Prepared::run`.
pub async fn serve(
    config: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()>,
) -> Result<ShutdownReport, ServerError> {
    Ok(prepare(config, bound)?.run(shutdown).await)
}

impl Prepared {
    /// Accepts on every listener until `shutdown` completes, then drains in two beats: stop
    /// accepting and tell every session; wait for them up to the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ShutdownReport {
        let stop_accepting = CancellationToken::new();
        let sessions = TaskTracker::new();
        let mut background: Vec<_> = self
            .pools
            .into_iter()
            .map(|pool| tokio::spawn(pool.maintain(stop_accepting.clone())))
            .collect();
        if let Some((tcp, admin)) = self.admin {
            // The admin listener outlives the drain: readiness and metrics stay visible.
            background.push(tokio::spawn(crate::admin::serve(
                tcp,
                admin,
                CancellationToken::new(),
            )));
        }
        let accept_tasks: Vec<_> = self
            .listeners
            .into_iter()
            .map(|(tcp, listener)| {
                tokio::spawn(accept_loop(
                    tcp,
                    listener,
                    sessions.clone(),
                    stop_accepting.clone(),
                ))
            })
            .collect();

        shutdown.await;
        tracing::info!(grace = ?self.grace, "shutting down: no new connections; draining sessions");
        stop_accepting.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        sessions.close();
        let drained = tokio::time::timeout(self.grace, sessions.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("drain complete");
        } else {
            tracing::warn!(
                remaining = sessions.len(),
                "grace period over; closing the remaining sessions"
            );
        }
        self.stop_shared.cancel();
        for t in background {
            t.abort();
        }
        ShutdownReport { drained }
    }
}

fn acceptor(
    cfg: &ListenerConfig,
    tls: &ListenerTls,
    config: &Config,
    tcp: &TcpListener,
) -> Result<TlsAcceptor, ServerError> {
    let tls_err = |source| ServerError::Tls {
        listener: cfg.name.clone(),
        source,
    };
    let (chain, key) = match &tls.identity {
        Identity::Files { chain, key } => (chain.clone(), key.clone_key()),
        Identity::Dev => {
            let dir = config.data_dir.join("dev-certs");
            let dev_err = |reason| ServerError::DevCerts {
                listener: cfg.name.clone(),
                reason,
            };
            let (files, generated) = dev_certs::ensure(&dir).map_err(dev_err)?;
            let chain = pem::load_certs(&files.cert).map_err(dev_err)?;
            let key = pem::load_key(&files.key).map_err(dev_err)?;
            let port = tcp
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(cfg.bind.port());
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
    let config = crate::tls::server::build(&tls.options, chain, key).map_err(tls_err)?;
    Ok(TlsAcceptor::from(config))
}

fn announce(cfg: &ListenerConfig, tcp: &TcpListener, tls: bool) {
    let addr = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        listener = %cfg.name,
        %addr,
        upstream = %upstream_label(cfg),
        tls,
        upstream_tls = cfg.upstream.tls.is_some(),
        "listening"
    );
    if !tls && !cfg.bind.ip().is_loopback() {
        tracing::warn!(listener = %cfg.name, "plaintext listener on a non-loopback address: traffic and AUTH tokens cross the network unencrypted");
    }
    let no_client_certs = matches!(
        cfg.tls.as_ref().map(|t| &t.options.client_auth),
        None | Some(crate::tls::server::ClientAuth::Off)
    );
    match cfg.protocol {
        Protocol::Memcached(_) if no_client_certs => tracing::warn!(
            listener = %cfg.name,
            "memcached has no AUTH: any client that reaches this port is served (require client certificates to restrict it)"
        ),
        Protocol::Redis if matches!(cfg.auth, crate::config::AuthMode::None) => tracing::warn!(
            listener = %cfg.name,
            "auth.mode = \"none\": every client is let in without AUTH"
        ),
        _ => {}
    }
}

fn upstream_label(cfg: &ListenerConfig) -> String {
    match &cfg.protocol {
        Protocol::Redis => cfg.upstream.address.clone(),
        Protocol::Memcached(mc) => mc
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect::<Vec<_>>()
            .join(","),
    }
}
