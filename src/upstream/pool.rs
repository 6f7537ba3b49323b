//! Persistent upstream connections: opened ahead, kept warm, health-checked, re-opened with
//! backoff, and returned only in a known-clean state.
//!
//! A session takes a connection for as long as it lives (`acquire`) and gives it back with
//! `release`, which resets it in the background (`RESET`, cachegate's own `AUTH`, name and
//! library info cleared, then `ECHO` of a random nonce whose reply proves the stream in step)
//! before another client may see it; a connection whose state is unknown (a reply still
//! outstanding, an error) is dropped instead. The interface leaves room for a
//! later multiplexed mode: callers never see how connections are stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::conn::{printable, Conn, Connector, Protocol};
use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::protocol::reply::encode_command;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A reset connection that keeps sending pub/sub messages past this many frames is dropped.
const RESET_MAX_SKIPPED_FRAMES: usize = 10_000;

#[derive(Debug, Clone)]
struct Down {
    retry_at: std::time::Instant,
    /// The last connect tried, by the refill task or on demand.
    last_try: std::time::Instant,
    backoff: Duration,
    last_error: String,
}

impl Down {
    /// The state after a failed connect at `now`: the backoff doubles from the previous
    /// failure's (up to `BACKOFF_MAX`), starting at `BACKOFF_START`.
    fn after_failure(previous: Option<&Down>, last_error: String, now: std::time::Instant) -> Down {
        let backoff = previous
            .map(|d| (d.backoff * 2).min(BACKOFF_MAX))
            .unwrap_or(BACKOFF_START);
        Down {
            retry_at: now + backoff,
            last_try: now,
            backoff,
            last_error,
        }
    }

    /// Whether a request at `now` tries a connect itself (true) or fails at once: it does once
    /// the backoff is over, and also when the last try is older than `ON_DEMAND_AFTER`, so that
    /// the first request after the upstream returns does not wait for the backoff timer.
    fn may_try(&self, now: std::time::Instant) -> bool {
        now >= self.retry_at || now.duration_since(self.last_try) >= super::shared::ON_DEMAND_AFTER
    }
}

/// A number no client can know, that a reset's `ECHO` must bring back.
fn reset_nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    // Fails only if the OS has no randomness: the connection is then closed, not pooled.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a released connection is sent before it is idle again: `RESET` (state, name, logged
/// out), then cachegate's own `AUTH` if the upstream needs one.
fn reset_sequence(auth: Option<&Bytes>) -> Bytes {
    let mut reset = BytesMut::new();
    encode_command(&mut reset, [&b"RESET"[..]].into_iter());
    if let Some(auth) = auth {
        reset.extend_from_slice(auth);
    }
    reset.freeze()
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<Connector>,
    idle: Mutex<VecDeque<Conn>>,
    warm: usize,
    max_idle: usize,
    health_interval: Duration,
    healthy: AtomicBool,
    /// While the upstream is failing: when the next connect may be tried, the current backoff,
    /// and the last error. Clients asking before then fail fast instead of each waiting for a
    /// connect timeout.
    down: Mutex<Option<Down>>,
    refill: Notify,
    /// The cleanup sequence sent on release.
    reset: Bytes,
}

impl Pool {
    pub fn new(
        cfg: &UpstreamConfig,
        max_reply: usize,
        protocol: Protocol,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = upstream_tls(cfg.tls.as_ref())?;
        let admin_auth = Connector::auth_frame(cfg.username.as_deref(), cfg.password.as_ref());
        let provisioned: Vec<&crate::config::BackendUser> = cfg
            .backend_user
            .iter()
            .chain(cfg.mirror_users.iter().map(|(_, u)| u))
            .collect();
        let setuser = |user: &crate::config::BackendUser| {
            let mut out = BytesMut::new();
            let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER", user.name.as_bytes()];
            args.extend(user.rules.iter().map(|r| r.as_bytes()));
            encode_command(&mut out, args.into_iter());
            out.freeze()
        };
        let provision = (!provisioned.is_empty()).then(|| super::conn::Provision {
            admin_auth: admin_auth.clone(),
            setusers: provisioned.iter().map(|u| setuser(u)).collect(),
            user: provisioned
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            done: AtomicBool::new(false),
        });
        let auth = match &cfg.backend_user {
            None => admin_auth,
            Some(user) => Connector::auth_frame(Some(&user.name), Some(&user.password)),
        };
        let reset = reset_sequence(auth.as_ref());
        // RESET also clears the client name; library info never reaches the backend
        // (cachegate answers CLIENT SETINFO itself). Nothing here can be an error reply on
        // the backend (CLIENT SETINFO was, on Redis 7.0, in every reset).
        Ok(Self {
            inner: Arc::new(Inner {
                connector: Arc::new(Connector {
                    protocol,
                    address: cfg.address.clone(),
                    connect_timeout: cfg.connect_timeout,
                    request_timeout: cfg.request_timeout,
                    max_reply,
                    tls: crate::live::Live::new(tls),
                    auth,
                    provision,
                    readonly: cfg.readonly,
                }),
                idle: Mutex::new(VecDeque::new()),
                warm: cfg.warm_connections,
                max_idle: cfg.max_idle,
                health_interval: cfg.health_interval,
                healthy: AtomicBool::new(false),
                down: Mutex::new(None),
                refill: Notify::new(),
                reset,
            }),
        })
    }

    /// New upstream TLS material (a reload): connections opened from now on use it.
    pub fn set_tls(&self, tls: Option<super::conn::UpstreamTls>) {
        self.inner.connector.tls.store(Arc::new(tls));
    }

    pub fn address(&self) -> &str {
        &self.inner.connector.address
    }

    /// Whether the last attempt to reach the upstream succeeded.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// The pre-encoded `AUTH` cachegate sends upstream, if any (needed again after a client's
    /// `RESET`, which logs the connection out).
    pub fn auth_frame(&self) -> Option<Bytes> {
        self.inner.connector.auth.clone()
    }

    /// Shared by every connection of this pool; a session needs it to hand a connection back.
    pub fn connector(&self) -> Arc<Connector> {
        self.inner.connector.clone()
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.connector.request_timeout
    }

    /// A ready connection: a warm one if there is one, else a new one.
    pub async fn acquire(&self) -> Result<Conn, UpstreamError> {
        let warm = {
            let mut idle = self.lock_idle();
            let mut found = None;
            while let Some(conn) = idle.pop_front() {
                if conn.looks_alive() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        self.inner.refill.notify_one();
        if let Some(conn) = warm {
            return Ok(conn);
        }
        if let Some(down) = self.lock_down().as_mut() {
            // While down, fail at once unless this request may try (bounded by
            // connect_timeout).
            let now = std::time::Instant::now();
            if !down.may_try(now) {
                return Err(UpstreamError::Down {
                    addr: self.address().to_string(),
                    last: down.last_error.clone(),
                });
            }
            down.last_try = now;
        }
        let result = self.inner.connector.connect().await;
        self.set_health(result.is_ok(), result.as_ref().err());
        result
    }

    /// Gives a connection back. `clean` says its reply stream is in step (nothing outstanding);
    /// otherwise it is closed. A clean one is reset in the background before reuse.
    pub fn release(&self, conn: Conn, clean: bool) {
        if !clean {
            return;
        }
        if self.inner.connector.protocol == Protocol::Memcached {
            // memcached keeps no per-connection state worth resetting.
            self.put_idle(conn);
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            match pool.reset(conn).await {
                Ok(conn) => pool.put_idle(conn),
                Err(e) => {
                    tracing::debug!(upstream = %pool.address(), error = %e, "dropping upstream connection that did not reset")
                }
            }
        });
    }

    async fn reset(&self, mut conn: Conn) -> Result<Conn, UpstreamError> {
        let timeout = self.inner.connector.request_timeout;
        let expect_auth = self.inner.connector.auth.is_some();
        // The reset ends with `ECHO <nonce>`: only its reply, which no client can have made
        // (a script can return `+RESET`, not a number it never saw), says that everything the
        // last session left in the stream has been read, and that RESET (and AUTH) just
        // before it succeeded.
        let nonce = reset_nonce()
            .ok_or_else(|| UpstreamError::Unexpected("no randomness for the reset".into()))?;
        let mut reset = BytesMut::from(&self.inner.reset[..]);
        encode_command(&mut reset, [&b"ECHO"[..], nonce.as_bytes()].into_iter());
        let echoed = crate::protocol::reply::bulk(nonce.as_bytes());
        tokio::time::timeout(timeout, async move {
            conn.stream.write_all(&reset).await?;
            conn.stream.flush().await?;
            let mut buf = BytesMut::new();
            // Replies still due, pub/sub messages or MONITOR lines come first.
            let mut last: [Bytes; 2] = [Bytes::new(), Bytes::new()];
            let mut skipped = 0;
            loop {
                let frame = conn.read_frame(&mut buf).await?;
                if frame == echoed {
                    break;
                }
                last = [std::mem::take(&mut last[1]), frame];
                skipped += 1;
                if skipped > RESET_MAX_SKIPPED_FRAMES {
                    return Err(UpstreamError::Unexpected("no reply to the reset".into()));
                }
            }
            let (reset_reply, auth_reply) = if expect_auth {
                (&last[0], Some(&last[1]))
            } else {
                (&last[1], None)
            };
            if &reset_reply[..] != b"+RESET\r\n" || auth_reply.is_some_and(|r| &r[..] != b"+OK\r\n")
            {
                return Err(UpstreamError::Unexpected(format!(
                    "the reset was refused: {} {}",
                    printable(reset_reply),
                    auth_reply.map(|r| printable(r)).unwrap_or_default()
                )));
            }
            if !buf.is_empty() {
                return Err(UpstreamError::Unexpected("extra bytes after reset".into()));
            }
            Ok(conn)
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.lock_idle();
        if idle.len() < self.inner.max_idle {
            idle.push_back(conn);
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Conn>> {
        // A panic while holding this lock cannot leave the deque inconsistent (push/pop only).
        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, Option<Down>> {
        self.inner.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_health(&self, ok: bool, err: Option<&UpstreamError>) {
        {
            let mut down = self.lock_down();
            *down = match (ok, down.take()) {
                (true, _) => None,
                (false, previous) => Some(Down::after_failure(
                    previous.as_ref(),
                    err.map(|e| e.to_string()).unwrap_or_default(),
                    std::time::Instant::now(),
                )),
            };
        }
        let was = self.inner.healthy.swap(ok, Ordering::Relaxed);
        match (was, ok) {
            (false, true) => tracing::info!(upstream = %self.address(), "upstream reachable"),
            (true, false) => tracing::warn!(
                upstream = %self.address(),
                error = %err.map(|e| e.to_string()).unwrap_or_default(),
                "upstream unreachable; clients get errors until it is back"
            ),
            _ => {}
        }
    }

    /// Keeps `warm` connections open and checked until `shutdown`, reconnecting with backoff.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut first = true;
        loop {
            let ok = self.check_and_fill().await;
            if first && !ok {
                tracing::warn!(upstream = %self.address(), "upstream unreachable at start; will keep trying");
            }
            first = false;
            let wait = if ok {
                backoff = BACKOFF_START;
                self.inner.health_interval
            } else {
                let w = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.refill.notified(), if ok => {}
            }
        }
    }

    /// Pings idle connections, drops the dead, opens new ones up to `warm`. True if healthy.
    async fn check_and_fill(&self) -> bool {
        let idle: Vec<Conn> = self.lock_idle().drain(..).collect();
        let mut alive = Vec::with_capacity(idle.len());
        for mut conn in idle {
            if conn.looks_alive() && conn.check().await.is_ok() {
                alive.push(conn);
            }
        }
        let mut ok = true;
        while alive.len() < self.inner.warm {
            match self.inner.connector.connect().await {
                Ok(conn) => alive.push(conn),
                Err(e) => {
                    self.set_health(false, Some(&e));
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            if self.inner.warm == 0 {
                // Nothing to keep warm: probe reachability with a throwaway connection.
                match self.inner.connector.connect().await {
                    Ok(_) => self.set_health(true, None),
                    Err(e) => {
                        self.set_health(false, Some(&e));
                        ok = false;
                    }
                }
            } else {
                self.set_health(true, None);
            }
        }
        let mut idle = self.lock_idle();
        for conn in alive {
            if idle.len() < self.inner.max_idle {
                idle.push_back(conn);
            }
        }
        ok
    }
}

/// The TLS connector and server name for these options (`None`: plaintext).
pub fn upstream_tls(
    opts: Option<&crate::tls::client::UpstreamTlsOptions>,
) -> Result<Option<super::conn::UpstreamTls>, crate::tls::TlsError> {
    Ok(match opts {
        None => None,
        Some(opts) => Some((
            TlsConnector::from(crate::tls::client::build(opts)?),
            opts.server_name.clone(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::shared::ON_DEMAND_AFTER;
    use std::time::Instant;

    #[test]
    fn backoff_doubles_to_its_cap_and_fails_fast_between_tries() {
        let t0 = Instant::now();
        let mut down = Down::after_failure(None, "refused".into(), t0);
        assert_eq!(down.backoff, BACKOFF_START);
        let mut seen = vec![down.backoff];
        for _ in 0..10 {
            down = Down::after_failure(Some(&down), "refused".into(), t0);
            seen.push(down.backoff);
        }
        assert!(
            seen.windows(2).all(|w| w[1] == (w[0] * 2).min(BACKOFF_MAX)),
            "{seen:?}"
        );
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
        // Within the backoff and right after a try: fail fast.
        assert!(!down.may_try(t0));
        assert!(!down.may_try(t0 + ON_DEMAND_AFTER / 2));
        // A request long enough after the last try tries itself, before the backoff is over.
        assert!(ON_DEMAND_AFTER < BACKOFF_MAX);
        assert!(down.may_try(t0 + ON_DEMAND_AFTER));
        assert!(down.may_try(t0 + BACKOFF_MAX));
    }

    #[test]
    fn a_released_connection_is_reset_then_logged_in_again() {
        assert_eq!(&reset_sequence(None)[..], b"*1\r\n$5\r\nRESET\r\n");
        let auth = Connector::auth_frame(
            Some("app"),
            Some(&crate::auth::secret::Password::new("pw".into())),
        )
        .unwrap();
        let seq = reset_sequence(Some(&auth));
        assert!(seq.starts_with(b"*1\r\n$5\r\nRESET\r\n"));
        assert!(seq.ends_with(&auth));
    }

    fn config(address: String, max_idle: usize) -> UpstreamConfig {
        let file: crate::config::file::FileConfig = toml::from_str(&format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.enabled = false\nauth.mode = \"none\"\n\
             upstream.address = {address:?}\nupstream.max_idle = {max_idle}\n\
             upstream.warm_connections = 0\n"
        ))
        .unwrap();
        let mut problems = Vec::new();
        let cfg = crate::config::build::build(file, std::path::Path::new("."), &mut problems)
            .unwrap_or_else(|| panic!("{problems:?}"));
        cfg.listeners[0].upstream.clone()
    }

    /// A socket pair's client side as an upstream connection (no backend needed: these
    /// tests look at which connections the pool keeps, never at what they carry).
    async fn conns(
        pool: &Pool,
        listener: &tokio::net::TcpListener,
        n: usize,
    ) -> Vec<(Conn, tokio::net::TcpStream)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
            let (client, server) = tokio::join!(client, listener.accept());
            out.push((
                Conn {
                    stream: super::super::Stream::Plain(client.unwrap()),
                    connector: pool.connector(),
                },
                server.unwrap().0,
            ));
        }
        out
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_dead_ones_never_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(
            &config(listener.local_addr().unwrap().to_string(), 2),
            1 << 20,
            Protocol::Memcached,
        )
        .unwrap();
        let mut made = conns(&pool, &listener, 4).await;
        let (kept_open, peer_open) = made.remove(0);
        let (closed, peer_closed) = made.remove(0);
        // An unclean release drops the connection whatever the room.
        let (unclean, _peer) = made.remove(0);
        pool.release(unclean, false);
        assert_eq!(pool.lock_idle().len(), 0);
        // The peer of `closed` goes away while it sits idle.
        pool.release(closed, true);
        pool.release(kept_open, true);
        let (third, _peer3) = made.remove(0);
        pool.release(third, true);
        assert_eq!(pool.lock_idle().len(), 2, "max_idle bounds the idle list");
        drop(peer_closed);
        // Until the close has reached the idle connection (at once on loopback).
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.lock_idle().front().is_some_and(Conn::looks_alive) {
            assert!(Instant::now() < deadline, "the close never arrived");
            tokio::task::yield_now().await;
        }
        let got = pool.acquire().await.unwrap();
        // The dead one was skipped: the one handed out is the live one.
        assert_eq!(
            got.stream.tcp().local_addr().unwrap(),
            peer_open.peer_addr().unwrap()
        );
        assert_eq!(pool.lock_idle().len(), 0);
    }
}
