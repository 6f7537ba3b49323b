//! Binds the listeners, builds what lives as long as the process (pools, shared connections,
//! metrics) and each listener's parts (`parts`), runs them until the shutdown future completes,
//! then drains in two beats with a deadline.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::throttle::Throttle;
use crate::config::{Config, ListenerConfig, Protocol};
use crate::listener::{accept_loop, Handler, Listener};
use crate::live::Live;
use crate::metrics::Metrics;
pub use crate::parts::ServerError;
use crate::parts::{front, memcached_rules, node_upstream, redis_context};
use crate::reload::Reloader;
use crate::session::memcached;
use crate::upstream::conn::Protocol as UpstreamProtocol;
use crate::upstream::shared::{Shared, SharedPool};
use crate::upstream::Pool;

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
    /// Re-reads the configuration (SIGHUP, POST /reload, watched files).
    pub reloader: Arc<Reloader>,
    /// Stops the shared upstream connections once sessions are done with them.
    stop_shared: CancellationToken,
    grace: std::time::Duration,
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
    let mut clusters = Vec::new();
    let mut certs = Vec::new();
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
                // A cluster listener's readiness is its cluster's (its layout read), not its
                // first seed's; its connections come from each node's pool.
                if !cfg.upstream.cluster {
                    pools.push(pool.clone());
                }
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
                let cluster = cfg.upstream.cluster.then(|| {
                    let pushes = metrics
                        .unexpected_pushes
                        .get_or_create(&crate::metrics::ListenerLabels {
                            listener: cfg.name.clone(),
                        })
                        .clone();
                    let (count, timeout, budget, stop) = (
                        cfg.upstream.shared_connections.max(1),
                        cfg.upstream.request_timeout,
                        budget.clone(),
                        stop_shared.clone(),
                    );
                    let cluster = crate::upstream::cluster::Cluster::new(
                        &cfg.name,
                        &cfg.upstream,
                        max_reply,
                        Box::new(move |connector, resp3| {
                            SharedPool::start(
                                connector,
                                count,
                                resp3,
                                timeout,
                                pushes.clone(),
                                budget.clone(),
                                stop.clone(),
                            )
                        }),
                        metrics.clone(),
                    );
                    tokio::spawn(cluster.clone().maintain(stop_shared.clone()));
                    clusters.push(cluster.clone());
                    cluster
                });
                let throttle = Arc::new(Throttle::new(
                    cfg.auth_limits.backoff_after,
                    cfg.auth_limits.backoff_max,
                ));
                let encryption = crate::parts::encryption(cfg, &config, &metrics)?;
                let lasting = crate::parts::Lasting {
                    pool,
                    shared,
                    cluster,
                    throttle,
                    encryption,
                };
                let ctx = redis_context(cfg, &config, lasting, &metrics, &budget);
                Handler::Redis(Arc::new(Live::new(ctx)))
            }
            Protocol::Memcached(mc) => {
                let mut nodes = Vec::with_capacity(mc.nodes.len());
                for node in &mc.nodes {
                    let label = format!("{}:{}", node.host, node.port);
                    let upstream = node_upstream(cfg, node)?;
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
                    memcached_rules(cfg, &config, &metrics)?,
                    memcached::Security {
                        metrics: metrics.clone(),
                        budget: budget.clone(),
                    },
                    mc.clone(),
                    cfg.upstream.request_timeout,
                    nodes,
                )))
            }
        };
        let port = tcp
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(cfg.bind.port());
        let (front, expiry) = front(cfg, &config, port, true)?;
        certs.extend(expiry);
        announce(cfg, &tcp, front.tls.is_some());
        if front.preferred {
            tracing::warn!(listener = %cfg.name, "transit_encryption_mode = \"preferred\": PLAINTEXT CLIENTS ARE SERVED on this TLS port; watch cachegate_connections_total{{tls=\"false\"}} fall to zero, then set \"required\"");
        }
        let listener = Arc::new(Listener {
            metrics: metrics.clone(),
            name: cfg.name.clone(),
            handler,
            front: Live::new(front),
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            per_source: crate::listener::PerSource::new(cfg.max_connections_per_source),
            last_reject_log: std::sync::atomic::AtomicU64::new(0),
            unlogged_rejects: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        });
        listeners.push((tcp, listener));
    }
    let grace = config.shutdown_grace;
    let admin_loopback = admin
        .as_ref()
        .and_then(|a| a.local_addr().ok())
        .is_some_and(|a| a.ip().is_loopback());
    let reloader = Arc::new(Reloader::new(
        config,
        listeners.iter().map(|(_, l)| l.clone()).collect(),
        metrics.clone(),
        budget,
        certs,
    ));
    let admin = admin.map(|tcp| {
        let state = Arc::new(crate::admin::Admin {
            metrics: metrics.clone(),
            pools: pools.clone(),
            clusters: clusters.clone(),
            reloader: reloader.clone(),
            reload_allowed: admin_loopback,
            reloading: Arc::new(tokio::sync::Semaphore::new(1)),
        });
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!(%addr, "admin listening: /live /ready /metrics, POST /reload");
        }
        (tcp, state)
    });
    Ok(Prepared {
        listeners,
        pools,
        admin,
        metrics,
        reloader,
        stop_shared,
        grace,
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
        let drain = crate::drain::Drain::new();
        let stop_accepting = drain.token();
        let sessions = TaskTracker::new();
        let mut background: Vec<_> = self
            .pools
            .into_iter()
            .map(|pool| tokio::spawn(pool.maintain(stop_accepting.clone())))
            .collect();
        background.push(tokio::spawn(
            self.reloader.clone().watch(stop_accepting.clone()),
        ));
        background.push(tokio::spawn(
            self.reloader
                .clone()
                .report_seals_until(stop_accepting.clone()),
        ));
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
                tokio::spawn(accept_loop(tcp, listener, sessions.clone(), drain.clone()))
            })
            .collect();

        shutdown.await;
        tracing::info!(grace = ?self.grace, "shutting down: no new connections; draining sessions");
        drain.start();
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
