//! The accept loop of one listener: connection limit, PROXY protocol from trusted load
//! balancers, the source allow-list (all before any TLS work), the TLS handshake under a
//! deadline (or plaintext, on a `preferred` listener, decided by the first byte), then a
//! session. Accept errors (EMFILE and friends) back off instead of spinning or exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::drain::Drain;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::auth::cert::CertNames;
use crate::live::Live;
use crate::metrics::{ConnLabels, ReasonLabels};
use crate::session;

const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a listener's connections share.
pub struct Listener {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub name: String,
    pub handler: Handler,
    /// How a new connection is let in; a reload replaces it (open connections keep theirs).
    pub front: Live<Front>,
    pub limit: Arc<Semaphore>,
    /// `max_connections_per_source`, when set.
    pub per_source: Option<PerSource>,
    /// When a rejection was last logged as a security event (rate-limited), in ms since
    /// `started`, and how many went unlogged since.
    pub last_reject_log: std::sync::atomic::AtomicU64,
    pub unlogged_rejects: std::sync::atomic::AtomicU64,
    pub started: std::time::Instant,
}

/// How a listener lets a connection in, up to its session: what a reload may change.
pub struct Front {
    /// The TLS acceptor (certificate, client CAs and CRLs) and the handshake deadline.
    pub tls: Option<(TlsAcceptor, Duration)>,
    /// TLS and plaintext on one port (`transit_encryption_mode = "preferred"`).
    pub preferred: bool,
    /// Who may connect (after PROXY protocol); `None`: everyone who reaches the port.
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Load balancers whose PROXY protocol headers are believed.
    pub proxy_trusted: Option<Vec<ipnet::IpNet>>,
}

/// How long a PROXY protocol header may take to arrive.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

impl Listener {
    /// Counts a connection closed before any TLS work, and logs it as a security event at
    /// most once a second per listener (with how many were not logged since).
    fn reject(&self, peer: SocketAddr, reason: &'static str) {
        use std::sync::atomic::Ordering;
        self.metrics
            .connections_rejected
            .get_or_create(&ReasonLabels {
                listener: self.name.clone(),
                reason: reason.to_string(),
            })
            .inc();
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_reject_log.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= 1000;
        if !due
            || self
                .last_reject_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged_rejects.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.unlogged_rejects.swap(0, Ordering::Relaxed);
        self.metrics.security_event(
            crate::metrics::SecurityEvent::new(
                "connection",
                "toplevel",
                format!("{reason} (and {unlogged} more not logged since the last one)"),
                "(none)",
                &self.name,
                crate::metrics::SecurityEvent::client_info(peer, &self.name, None, None),
            ),
            false,
        );
    }
}

/// How many connections each source holds, against `max_connections_per_source` (and the
/// admin listener's own share per source).
pub struct PerSource {
    cap: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerSource {
    /// `None` for 0 (no cap).
    pub fn new(cap: usize) -> Option<Self> {
        (cap > 0).then(|| Self {
            cap,
            open: Default::default(),
        })
    }

    /// A place for one more connection from `ip`'s source, held until dropped; `None` when
    /// the source holds its cap already.
    pub fn enter(&self, ip: std::net::IpAddr) -> Option<SourcePlace<&Self>> {
        SourcePlace::take(self, ip)
    }

    /// As `enter`, for a place that outlives the borrow (a spawned connection's task).
    pub fn enter_owned(
        self: &std::sync::Arc<Self>,
        ip: std::net::IpAddr,
    ) -> Option<SourcePlace<std::sync::Arc<Self>>> {
        SourcePlace::take(self.clone(), ip)
    }
}

/// One connection's place in its source's share.
pub struct SourcePlace<P: std::ops::Deref<Target = PerSource>> {
    of: P,
    source: std::net::IpAddr,
}

impl<P: std::ops::Deref<Target = PerSource>> SourcePlace<P> {
    fn take(of: P, ip: std::net::IpAddr) -> Option<Self> {
        let source = crate::auth::throttle::source(ip);
        let mut open = of.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(source).or_insert(0);
        if *n >= of.cap {
            return None;
        }
        *n += 1;
        drop(open);
        Some(Self { of, source })
    }
}

impl<P: std::ops::Deref<Target = PerSource>> Drop for SourcePlace<P> {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

fn contains(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The protocol-specific session a connection runs once its TLS is up.
pub enum Handler {
    Redis(Arc<Live<session::Context>>),
    Memcached(Arc<crate::session::memcached::Context>),
}

impl Handler {
    async fn run<S>(&self, stream: S, peer: SocketAddr, cert: Option<CertNames>, shutdown: Drain)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Handler::Redis(ctx) => session::run(ctx.clone(), stream, peer, cert, shutdown).await,
            Handler::Memcached(ctx) => {
                crate::session::memcached::run(ctx.clone(), stream, peer, cert, shutdown).await
            }
        }
    }

    /// The process's bound on buffered bytes, that its sessions are charged to.
    fn budget(&self) -> Arc<crate::budget::MemoryBudget> {
        match self {
            Handler::Redis(ctx) => ctx.load().budget.clone(),
            Handler::Memcached(ctx) => ctx.security.budget.clone(),
        }
    }

    /// What a plaintext client over the connection limit is told, in the server's own words.
    fn refusal(&self) -> &'static [u8] {
        match self {
            Handler::Redis(_) => b"-ERR max number of clients reached\r\n",
            Handler::Memcached(_) => b"ERROR Too many open connections\r\n",
        }
    }
}

impl Listener {
    /// A session, charged to a holder of its own: evicted (its connection closed) when the
    /// process's buffers are full and it holds the most of them (a client that asks for large
    /// replies and does not read them), so that the others go on.
    async fn session<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        cert: Option<CertNames>,
        shutdown: Drain,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let holder = self.handler.budget().holder();
        let run = crate::budget::owned(
            holder.clone(),
            self.handler.run(stream, peer, cert, shutdown),
        );
        tokio::select! {
            _ = run => {}
            _ = holder.evicted() => {
                let e = crate::error::SessionError::Evicted;
                tracing::warn!(listener = %self.name, %peer, "{e}; closing the connection");
                self.metrics.session_error(&self.name, &e);
            }
        }
    }
}

/// Accepts until `shutdown`; every session is spawned on `sessions` and told about `shutdown`.
pub async fn accept_loop(
    tcp: TcpListener,
    listener: Arc<Listener>,
    sessions: TaskTracker,
    shutdown: Drain,
) {
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_START;
                a
            }
            Err(e) => {
                // Out of file descriptors or a transient network error: keep the listener,
                // slow down, and let existing sessions finish and free descriptors.
                tracing::error!(listener = %listener.name, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = listener.limit.clone().try_acquire_owned() else {
            tracing::warn!(listener = %listener.name, %peer, "connection limit reached; refusing");
            let message = listener
                .front
                .load()
                .tls
                .is_none()
                .then(|| listener.handler.refusal());
            refuse(stream, message);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let listener = listener.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            serve_connection(stream, peer, &listener, shutdown).await;
            drop(permit);
        });
    }
}

/// Refuses an over-limit connection at once. A plaintext client is told why, in its server's
/// words; a TLS client is not worth a handshake.
fn refuse(mut stream: TcpStream, message: Option<&'static [u8]>) {
    if let Some(msg) = message {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg)).await;
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    listener: &Listener,
    shutdown: Drain,
) {
    let name = &listener.name;
    // The listener's settings as they are now; taken again after each wait on the client (a
    // PROXY header, a preferred listener's first byte), so that a reload meanwhile applies.
    let mut front = listener.front.load();
    // Behind a load balancer: the real client's address, from a header only trusted
    // balancers may send; the allow-list, the AUTH throttle, ACL LOG and the logs then see it.
    if let Some(trusted) = &front.proxy_trusted {
        if !contains(trusted, peer.ip()) {
            listener.reject(peer, "untrusted_proxy");
            return;
        }
        // Boxed: a rare path, kept out of the state every connection holds for its lifetime.
        let header = Box::pin(tokio::time::timeout(
            PROXY_HEADER_TIMEOUT,
            crate::proxy_header::read(&mut stream),
        ));
        match header.await {
            Ok(Ok(Some(client))) => peer = client,
            // The balancer's own health check: its address stands.
            Ok(Ok(None)) => {}
            Ok(Err(_)) | Err(_) => {
                listener.reject(peer, "proxy_header");
                return;
            }
        }
        front = listener.front.load();
    }
    // The allow-list, for the client's address (after PROXY protocol: the real client's).
    let allowed = |front: &Front| match &front.allow {
        Some(allow) if !contains(allow, peer.ip()) => {
            listener.reject(peer, "not_allowed");
            false
        }
        _ => true,
    };
    if !allowed(&front) {
        return;
    }
    // One source's share of the connections (after PROXY protocol: the real client's), held
    // for the connection's life. Told as the connection limit is (plaintext only).
    let _place = match &listener.per_source {
        None => None,
        Some(per_source) => match per_source.enter(peer.ip()) {
            Some(place) => Some(place),
            None => {
                listener.reject(peer, "per_source");
                refuse(
                    stream,
                    front.tls.is_none().then(|| listener.handler.refusal()),
                );
                return;
            }
        },
    };
    let connected = |tls_version: &str, client_cert: bool| {
        listener
            .metrics
            .connections
            .get_or_create(&ConnLabels {
                listener: name.clone(),
                tls_version: tls_version.to_string(),
                client_cert: if client_cert { "verified" } else { "none" }.to_string(),
                tls: (tls_version != "plaintext").to_string(),
            })
            .inc();
    };
    let Some((_, deadline)) = &front.tls else {
        connected("plaintext", false);
        listener.session(stream, peer, None, shutdown).await;
        return;
    };
    if front.preferred {
        let deadline = *deadline;
        // TLS or plaintext, by the first byte (a TLS connection opens with a handshake record).
        let first = Box::pin(async {
            let mut first = [0u8; 1];
            match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
                Ok(Ok(1)) => Some(first[0]),
                _ => None,
            }
        })
        .await;
        let Some(first) = first else {
            return;
        };
        // A reload while it waited: its allow-list, CA and transit mode apply. (The
        // per-source place stays taken: the source is the same.)
        front = listener.front.load();
        if !allowed(&front) {
            return;
        }
        let plaintext_allowed = front.tls.is_none() || front.preferred;
        if first != TLS_HANDSHAKE_RECORD && plaintext_allowed {
            connected("plaintext", false);
            listener.session(stream, peer, None, shutdown).await;
            return;
        }
    }
    let Some((acceptor, deadline)) = &front.tls else {
        // TLS turned off by a reload while a preferred listener waited for a TLS client's
        // first byte: it is refused as a plaintext listener refuses TLS.
        return;
    };
    let Some(tls) = accept_tls(stream, peer, listener, acceptor, *deadline).await else {
        return;
    };
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    // rustls verified the chain: the leaf's names can be trusted.
    let cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::auth::cert::names(leaf));
    connected(version, cert.is_some());
    tracing::debug!(listener = %name, %peer, version, client_cert = ?cert, "TLS session established");
    listener.session(tls, peer, cert, shutdown).await;
}

/// The TLS handshake, under its deadline (the wait for the ClientHello included); `None` when
/// it failed, counted and logged. Apart from the session so that the connection's future does
/// not keep room for both; the stream comes boxed, since the TLS stream (over a kilobyte) would
/// otherwise be stored again in each layer's future state for as long as the connection lives.
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    acceptor: &TlsAcceptor,
    deadline: Duration,
) -> Option<Box<TlsStream<crate::sends::Sends>>> {
    let name = &listener.name;
    let handshake = async {
        // The wait for the ClientHello counts against the deadline. Anything that does not
        // open with a TLS handshake record (plaintext RESP, HTTP) is dropped unanswered.
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
            Ok(0) => return Err(HandshakeError::ClosedEarly),
            Ok(_) => return Err(HandshakeError::NotTls),
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        acceptor
            .accept(crate::sends::Sends(stream))
            .await
            .map_err(HandshakeError::Tls)
    };
    let failed = |reason: &str| {
        listener
            .metrics
            .handshake_failures
            .get_or_create(&ReasonLabels {
                listener: name.clone(),
                reason: reason.to_string(),
            })
            .inc();
    };
    let tls = match tokio::time::timeout(deadline, handshake).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            // Client-caused: counted and worth a debug line, not an error.
            failed(e.reason());
            tracing::debug!(listener = %name, %peer, reason = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            failed("timeout");
            tracing::debug!(listener = %name, %peer, "TLS handshake timed out after {deadline:?}");
            return None;
        }
    };
    Some(tls)
}

/// Why a TLS handshake did not complete (all of them the client's doing, or its network's).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("closed before the ClientHello")]
    ClosedEarly,
    #[error("not TLS (plaintext on a TLS port?)")]
    NotTls,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Tls(std::io::Error),
}

impl HandshakeError {
    /// Its label in `cachegate_tls_handshake_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            HandshakeError::ClosedEarly => "client_closed",
            HandshakeError::NotTls => "not_tls",
            HandshakeError::Io(_) => "io",
            HandshakeError::Tls(e) => handshake_failure_reason(e),
        }
    }
}

/// A bounded set of reasons for the handshake-failure metric.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::InvalidMessage(_)) => "malformed",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "client_closed",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source is an IPv4 address (an IPv4-mapped IPv6 one the same) or an IPv6 /64; a place
    /// comes back when its connection's guard goes.
    #[test]
    fn a_source_holds_its_cap_and_no_more() {
        let per_source = PerSource::new(1).expect("a cap");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let v4 = per_source.enter(ip("127.0.0.2")).expect("a first place");
        assert!(
            per_source.enter(ip("::ffff:127.0.0.2")).is_none(),
            "the same source"
        );
        assert!(
            per_source.enter(ip("127.0.0.3")).is_some(),
            "another source"
        );
        let v6 = per_source.enter(ip("2001:db8::1")).expect("a first place");
        assert!(
            per_source.enter(ip("2001:db8::2")).is_none(),
            "the same /64"
        );
        assert!(
            per_source.enter(ip("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        drop((v4, v6));
        assert!(per_source.enter(ip("127.0.0.2")).is_some(), "given back");
        assert!(
            per_source.open.lock().unwrap().is_empty(),
            "nothing left counted"
        );
        assert!(PerSource::new(0).is_none(), "0: no cap");
    }
}
