//! Reloading the configuration while serving (SIGHUP, `POST /reload`, a watched file that
//! changed): everything is read and validated first, then swapped in at once; a configuration
//! that does not load, or that changes what only a restart can, is refused whole, and the last
//! good one keeps serving.
//!
//! What a reload changes: listener certificates, keys, client CAs and CRLs (new handshakes),
//! `transit_encryption_mode`, the allow-list and trusted proxies (new connections), AUTH
//! tokens, users, user groups, certificate users, `commands.disable` / `rename`, limits and
//! client timeouts (open sessions, from their next request), and upstream TLS material (new
//! upstream connections). Sessions logged in as a user the reload removed or disabled are
//! closed. Everything else (binds, protocols, upstream addresses and credentials, ...) is
//! reported as needing a restart: see `restart_changes`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Config, ConfigError, ListenerConfig, Protocol, UpstreamConfig};
use crate::deadline::unix_now as now;
use crate::listener::{Handler, Listener};
use crate::metrics::{CertLabels, Metrics, ResultLabels};
use crate::parts::{CertExpiry, ServerError};
use prometheus_client::metrics::counter::Counter;

/// Why a reload was refused; the configuration in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cachegate was started without a config file (the embedded default): there is nothing to reload")]
    NoFile,
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error("{} change{} need{} a restart (nothing was reloaded):{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, if .0.len() == 1 { "s" } else { "" }, .0.iter().map(|c| format!("\n  - {c}")).collect::<String>())]
    NeedsRestart(Vec<String>),
    #[error("{0}")]
    Build(#[from] ServerError),
}

pub struct Reloader {
    state: Mutex<State>,
    /// The certificates in use; apart from `state`, whose lock a reload holds through its file
    /// reads, so that `/ready` never waits on a disk.
    certs: Mutex<Vec<CertExpiry>>,
    listeners: Vec<Arc<Listener>>,
    metrics: Arc<Metrics>,
    budget: Arc<crate::budget::MemoryBudget>,
    /// Per listener and data key: its seal counter, and how much of it was reported to the
    /// keyring (`report_seals`).
    reported: Mutex<std::collections::HashMap<(String, u32), (Counter, u64)>>,
}

/// How often seals are reported to the keyrings (and a rotation at the bound started).
pub const SEAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

struct State {
    /// The configuration in force.
    config: Config,
    /// The files the last load (or attempt) read, and what they held: the watcher reloads
    /// when they differ, so a fix to a refused file (or a file it newly names) is picked up.
    watched: crate::config::Watched,
}

impl Reloader {
    pub fn new(
        config: Config,
        listeners: Vec<Arc<Listener>>,
        metrics: Arc<Metrics>,
        budget: Arc<crate::budget::MemoryBudget>,
        certs: Vec<CertExpiry>,
    ) -> Self {
        let reloader = Self {
            state: Mutex::new(State {
                watched: config.watched.clone(),
                config,
            }),
            certs: Mutex::new(Vec::new()),
            listeners,
            metrics,
            budget,
            reported: Mutex::new(std::collections::HashMap::new()),
        };
        reloader.publish_certs(certs);
        reloader.metrics.config_last_reload_success.set(now());
        reloader
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The certificates in use whose `notAfter` has passed, at `now` (Unix seconds).
    pub fn expired_server_certs(&self, now: i64) -> Vec<CertExpiry> {
        self.certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.role == "server" && c.not_after <= now)
            .cloned()
            .collect()
    }

    /// Re-reads the config file and every file it names; swaps the result in, or refuses it
    /// (logged, counted) and keeps the configuration in force. `trigger` is for the log.
    pub fn reload(&self, trigger: &str) -> Result<String, ReloadError> {
        let mut state = self.lock();
        let result = self.try_reload(&mut state);
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels {
                result: outcome.into(),
            })
            .inc();
        match &result {
            Ok(summary) => {
                self.metrics.config_last_reload_success.set(now());
                tracing::info!(trigger, "configuration reloaded: {summary}");
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    "configuration reload refused; the previous configuration stays in force: {e}"
                )
            }
        }
        result
    }

    fn try_reload(&self, state: &mut State) -> Result<String, ReloadError> {
        let path = state.config.source.clone().ok_or(ReloadError::NoFile)?;
        // Whatever happens, these files (as read) have been tried: the watcher waits for them
        // to change again instead of retrying a broken file every interval.
        let new = match crate::config::load(&path) {
            Ok(new) => new,
            Err(e) => {
                state.watched = e.watched.clone();
                return Err(e.into());
            }
        };
        state.watched = new.watched.clone();
        let changes = restart_changes(&state.config, &new);
        if !changes.is_empty() {
            return Err(ReloadError::NeedsRestart(changes));
        }
        // Build everything first; nothing is swapped until all of it is ready.
        let mut staged = Vec::with_capacity(self.listeners.len());
        let mut certs = Vec::new();
        for (listener, cfg) in self.listeners.iter().zip(&new.listeners) {
            let (front, expiry) = crate::parts::front(cfg, &new, cfg.bind.port(), false)?;
            certs.extend(expiry);
            let handler = match (&listener.handler, &cfg.protocol) {
                (Handler::Redis(live), Protocol::Redis) => {
                    let old = live.load();
                    let tls = crate::upstream::pool::upstream_tls(cfg.upstream.tls.as_ref())
                        .map_err(|source| tls_error(cfg, source))?;
                    let throttle = if same_throttle(&old.auth_limits, &cfg.auth_limits) {
                        old.throttle.clone()
                    } else {
                        Arc::new(crate::auth::throttle::Throttle::new(
                            cfg.auth_limits.backoff_after,
                            cfg.auth_limits.backoff_max,
                        ))
                    };
                    let ctx = crate::parts::redis_context(
                        cfg,
                        &new,
                        crate::parts::Lasting {
                            pool: old.pool.clone(),
                            shared: old.shared.clone(),
                            cluster: old.cluster.clone(),
                            throttle,
                            // The keyring read again: a rotated data key, a new root key.
                            encryption: crate::parts::encryption(cfg, &new, &self.metrics)?,
                        },
                        &self.metrics,
                        &self.budget,
                    );
                    Staged::Redis(ctx, tls, cfg.upstream.tls.clone().map(Box::new))
                }
                (Handler::Memcached(_), Protocol::Memcached(mc)) => {
                    let mut tls = Vec::with_capacity(mc.nodes.len());
                    for node in &mc.nodes {
                        let upstream = crate::parts::node_upstream(cfg, node)?;
                        tls.push(
                            crate::upstream::pool::upstream_tls(upstream.tls.as_ref())
                                .map_err(|source| tls_error(cfg, source))?,
                        );
                    }
                    Staged::Memcached(
                        crate::parts::memcached_rules(cfg, &new, &self.metrics)?,
                        tls,
                    )
                }
                // restart_changes refuses a change of protocol.
                _ => unreachable!("a listener's protocol changed without a restart"),
            };
            staged.push((front, handler));
        }
        // Swap.
        for (listener, (front, staged)) in self.listeners.iter().zip(staged) {
            // As loud as at startup: plaintext served on a TLS port from now on.
            if front.preferred && !listener.front.load().preferred {
                tracing::warn!(listener = %listener.name, "reload: transit_encryption_mode = \"preferred\": PLAINTEXT CLIENTS ARE SERVED on this TLS port from now on");
            }
            listener.front.store(Arc::new(front));
            match (&listener.handler, staged) {
                (Handler::Redis(live), Staged::Redis(ctx, tls, options)) => {
                    ctx.pool.set_tls(tls);
                    if let Some(cluster) = &ctx.cluster {
                        cluster.set_tls(options.map(|o| *o));
                    }
                    let old = live.load();
                    live.store(Arc::new(ctx));
                    old.superseded.cancel();
                }
                (Handler::Memcached(ctx), Staged::Memcached(rules, tls)) => {
                    for (node, tls) in ctx.nodes.iter().zip(tls) {
                        node.pool.set_tls(tls);
                    }
                    let old = ctx.rules.load();
                    ctx.rules.store(Arc::new(rules));
                    old.superseded.cancel();
                }
                _ => unreachable!("staged in the listener's own protocol"),
            }
        }
        let summary = format!(
            "{} listener{}; {} file{} read",
            new.listeners.len(),
            if new.listeners.len() == 1 { "" } else { "s" },
            new.watched.files.len(),
            if new.watched.files.len() == 1 {
                ""
            } else {
                "s"
            },
        );
        self.publish_certs(certs);
        self.budget.set_limit(new.limits.max_buffered_bytes);
        state.config = new;
        Ok(summary)
    }

    fn publish_certs(&self, certs: Vec<CertExpiry>) {
        let mut current = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        let labels = |c: &CertExpiry| CertLabels {
            listener: c.listener.clone(),
            role: c.role.to_string(),
        };
        for old in current.iter() {
            if !certs
                .iter()
                .any(|c| c.listener == old.listener && c.role == old.role)
            {
                self.metrics.certificate_expiry.remove(&labels(old));
            }
        }
        for c in &certs {
            self.metrics
                .certificate_expiry
                .get_or_create(&labels(c))
                .set(c.not_after);
            if c.not_after <= now() && c.role != "client_crl" {
                tracing::error!(listener = %c.listener, role = c.role, "a certificate in use has EXPIRED");
            }
        }
        *current = certs;
    }

    /// Checks the config file and every file it names every `reload.watch_interval`, and
    /// reloads when any of them changed (a Kubernetes secret mount swaps a symlink: files are
    /// read through their names, so the new target is what counts). Runs until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        // Off ("0s") until asked again: a reload may turn it back on.
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
            // The state's lock is held while a reload reads files: taken on a blocking thread,
            // never on the runtime's.
            let me = self.clone();
            let check = tokio::task::spawn_blocking(move || me.changed()).await;
            match check {
                Ok(Check::NoFile) | Err(_) => return,
                Ok(Check::Off) => wait = Duration::from_secs(1),
                Ok(Check::Same(interval)) => wait = interval,
                Ok(Check::Changed(interval)) => {
                    wait = interval;
                    let me = self.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || me.reload("a watched file changed"))
                            .await;
                }
            }
        }
    }

    /// Adds what each encrypting listener sealed since the last report to its keyring's count
    /// for the data key (counted by the `cachegate_data_key_seals_total` counters, which go on
    /// across reloads); when a primary key reaches `encryption.rotate_after_seals`, the
    /// keyring gets a new primary key and the configuration is reloaded to take it. Returns
    /// the rotations made (listener, old key, new key).
    pub fn report_seals(&self) -> Vec<(String, u32, u32)> {
        let mut rotations = Vec::new();
        // What each encrypting listener's report needs from the configuration, taken under the
        // state's lock and then released: the keyring I/O below (a file lock another
        // cachegate may hold) never holds up a reload.
        let settings: Vec<(
            String,
            std::path::PathBuf,
            Arc<crate::crypt::keyring::RootKey>,
            u64,
        )> = {
            let state = self.lock();
            state
                .config
                .listeners
                .iter()
                .filter_map(|c| {
                    let e = c.encryption.as_ref()?;
                    let path = crate::crypt::keyring::keyring_path(&state.config.data_dir, &c.name);
                    Some((
                        c.name.clone(),
                        path,
                        e.root_key.clone(),
                        e.rotate_after_seals,
                    ))
                })
                .collect()
        };
        {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            for l in &self.listeners {
                let enc = match &l.handler {
                    Handler::Redis(live) => live.load().encryption.clone(),
                    Handler::Memcached(ctx) => ctx.rules.load().encryption.clone(),
                };
                let Some(enc) = enc else {
                    continue;
                };
                let Some((_, path, root_key, rotate_after)) =
                    settings.iter().find(|(name, ..)| name == &l.name)
                else {
                    continue;
                };
                let primary = enc.keys.primary.id;
                reported
                    .entry((l.name.clone(), primary))
                    .or_insert_with(|| (enc.primary_seals(), 0));
                // Keys that were primary between two reports (a rotation and a reload in
                // between) have a counter too: their seals count.
                for key in &enc.keys.all {
                    let labels = crate::metrics::KeyLabels {
                        listener: l.name.clone(),
                        key: key.id.to_string(),
                    };
                    if let Some(counter) = self.metrics.data_key_seals.get(&labels) {
                        reported
                            .entry((l.name.clone(), key.id))
                            .or_insert_with(|| (counter.clone(), 0));
                    }
                }
                for ((name, id), (counter, done)) in reported.iter_mut() {
                    if name != &l.name {
                        continue;
                    }
                    let now = counter.get();
                    if now <= *done {
                        continue;
                    }
                    match crate::crypt::keyring::record_seals(
                        path,
                        root_key,
                        *id,
                        now - *done,
                        *rotate_after,
                    ) {
                        Ok(r) => {
                            *done = now;
                            if let Some(new) = r.rotated {
                                tracing::warn!(listener = %l.name, old = id, new, seals = r.total, "data key reached encryption.rotate_after_seals: a new data key is primary (values under the old one still open; `cachegate keys rewrap` moves them)");
                                rotations.push((l.name.clone(), *id, new));
                            } else if *id == primary && r.primary != primary {
                                // Rotated by another cachegate sharing the keyring: take it.
                                tracing::info!(listener = %l.name, old = id, new = r.primary, "the keyring has a new primary data key; reloading to take it");
                                rotations.push((l.name.clone(), *id, r.primary));
                            }
                        }
                        Err(why) => {
                            tracing::warn!(listener = %l.name, key = id, "cannot record seals in the keyring: {why}")
                        }
                    }
                }
            }
        }
        if !rotations.is_empty() {
            if let Err(e) = self.reload("a data key reached its seal bound") {
                // Retried at the next report; meanwhile seals go on under the old key, counted.
                tracing::error!(error = %e, "could not reload to take the new data key; sealing goes on under the old one until a reload succeeds");
            }
        }
        rotations
    }

    /// Reports seals every `SEAL_REPORT_INTERVAL` until `stop`, and once more then.
    pub async fn report_seals_until(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stopped = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(SEAL_REPORT_INTERVAL) => false,
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.report_seals()).await;
            if stopped {
                return;
            }
        }
    }

    /// Whether the watched files changed since they were last read (by a load or a reload
    /// attempt, whichever was last: compared with the state's own record, not a copy).
    fn changed(&self) -> Check {
        let (interval, watched) = {
            let state = self.lock();
            if state.config.source.is_none() {
                return Check::NoFile;
            }
            (state.config.watch_interval, state.watched.clone())
        };
        if interval.is_zero() {
            return Check::Off;
        }
        let now = watched.now();
        // A reload meanwhile read them again: that record is the one to compare with.
        let state = self.lock();
        if state.watched == watched && now != watched.fingerprint {
            Check::Changed(interval)
        } else {
            Check::Same(interval)
        }
    }
}

enum Check {
    NoFile,
    Off,
    Same(Duration),
    Changed(Duration),
}

enum Staged {
    Redis(
        crate::session::Context,
        Option<crate::upstream::conn::UpstreamTls>,
        /// A cluster's nodes: the options each node's TLS is built from (its own name).
        Option<Box<crate::tls::client::UpstreamTlsOptions>>,
    ),
    Memcached(
        crate::session::memcached::Rules,
        Vec<Option<crate::upstream::conn::UpstreamTls>>,
    ),
}

fn tls_error(cfg: &ListenerConfig, source: crate::tls::TlsError) -> ReloadError {
    ReloadError::Build(ServerError::Tls {
        listener: cfg.name.clone(),
        source,
    })
}

fn same_throttle(a: &crate::config::AuthLimits, b: &crate::config::AuthLimits) -> bool {
    a.backoff_after == b.backoff_after && a.backoff_max == b.backoff_max
}

/// What differs between `old` and `new` that only a restart can apply, one line each (never
/// a secret's value).
pub fn restart_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: String, a: String, b: String| {
        if a != b {
            out.push(what);
        }
    };
    differ("data_dir".into(), dbg(&old.data_dir), dbg(&new.data_dir));
    differ("admin.bind".into(), dbg(&old.admin), dbg(&new.admin));
    differ("threads".into(), dbg(&old.threads), dbg(&new.threads));
    differ(
        "limits.max_reply_bytes".into(),
        dbg(&old.limits.max_reply_bytes),
        dbg(&new.limits.max_reply_bytes),
    );
    differ(
        "shutdown.grace".into(),
        dbg(&old.shutdown_grace),
        dbg(&new.shutdown_grace),
    );
    let names = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| l.name.clone())
            .collect::<Vec<_>>()
    };
    if names(old) != names(new) {
        out.push(format!(
            "the listeners (names, count or order): {:?} -> {:?}",
            names(old),
            names(new)
        ));
        return out;
    }
    for (a, b) in old.listeners.iter().zip(&new.listeners) {
        let mut differ = |what: &str, x: String, y: String| {
            if x != y {
                out.push(format!("listener `{}`: {what}", a.name));
            }
        };
        differ("bind", dbg(&a.bind), dbg(&b.bind));
        differ(
            "max_connections",
            dbg(&a.max_connections),
            dbg(&b.max_connections),
        );
        differ(
            "max_connections_per_source",
            dbg(&a.max_connections_per_source),
            dbg(&b.max_connections_per_source),
        );
        differ(
            "protocol (or its memcached settings)",
            dbg(&a.protocol),
            dbg(&b.protocol),
        );
        differ("tls.enabled", dbg(&a.tls.is_some()), dbg(&b.tls.is_some()));
        differ("auth.mode", auth_kind(&a.auth), auth_kind(&b.auth));
        // Turning encryption on or off: values already sealed (or not) would read wrongly
        // until every session has the new setting; a restart makes that one moment.
        differ(
            "encryption on or off",
            dbg(&a.encryption.is_some()),
            dbg(&b.encryption.is_some()),
        );
        differ(
            "upstream settings other than TLS material (address, credentials, timeouts, pool sizes, backend users)",
            upstream_key(&a.upstream),
            upstream_key(&b.upstream),
        );
    }
    out
}

fn dbg(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

fn auth_kind(a: &AuthMode) -> String {
    match a {
        AuthMode::None => "none",
        AuthMode::Tokens(_) => "tokens",
        AuthMode::Acl(_) => "acl",
    }
    .into()
}

/// The upstream settings a restart applies, as one comparable text. It holds secrets: it is
/// compared, never shown.
fn upstream_key(u: &UpstreamConfig) -> String {
    let user = |b: &crate::config::BackendUser| {
        format!("{}|{}|{:?}", b.name, b.password.expose(), b.rules)
    };
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}|{}|{:?}|{:?}|{}|{:?}|{:?}|{}",
        u.address,
        u.username,
        u.password.as_ref().map(|p| p.expose()),
        u.connect_timeout,
        u.request_timeout,
        u.warm_connections,
        u.max_idle,
        u.shared_connections,
        u.health_interval,
        u.tls.is_some(),
        u.backend_user.as_ref().map(user),
        u.mirror_users
            .iter()
            .map(|(n, b)| format!("{n}={}", user(b)))
            .collect::<Vec<_>>(),
        u.cluster,
        u.cluster_seeds,
        u.cluster_refresh,
        u.read_from_replicas,
    )
}
