//! memcached listeners: one client connection, in front of a ring of memcached nodes.
//!
//! A session reads what the client sent, parses every complete request (`protocol::memcached`),
//! and runs them as a batch: requests are routed by key (`ring`), each node gets its share in
//! one write (multi-gets split per node), nodes are talked to in parallel, and the replies are
//! put back together in the client's order (multi-get items in the client's key order). Each
//! request forwarded produces exactly one reply cachegate reads whole: `noreply` is stripped and
//! the reply swallowed, and quiet meta commands are followed by `mn`, so the stream to every
//! node stays in step whatever the client sends.
//!
//! A node that fails (connect, I/O, timeout) fails only the requests routed to it; its
//! connection is dropped, its pool backs off, and after `eject_after` consecutive failures it
//! can leave the ring for `eject_for`.

mod answers;
mod batch;

use super::reader::{ClientReader, Filled, ReadError, ReadLimits};
use answers::*;
use batch::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::acl::{Denied, User};
use crate::auth::cert::{CertMapping, CertNames};
use crate::config::{AuthMode, Limits, MemcachedConfig, NodeDown};
use crate::error::{SessionError, UpstreamError};
use crate::live::Live;
use crate::metrics::{CommandMeter, Metrics, SecurityEvent};
use crate::policy::Policy;
use crate::protocol::memcached::{reply_len, split_values, Cmd, McRequest, Parsed, Parser, Shape};
use crate::upstream::ring::Continuum;
use crate::upstream::shared::{Frames, SharedError, SharedPool, SharedRequest};
use crate::upstream::{Conn, Pool};
use tokio::sync::oneshot;

/// Requests run together at most; more wait for the next batch.
const MAX_BATCH: usize = 128;
/// A session keeps its batch list and answer buffer for the next batch up to these sizes (an
/// idle session holds them, outside `limits.max_buffered_bytes`): a pipeline of 16 small
/// requests fits.
const KEEP_BATCH: usize = 16;
const KEEP_ANSWER: usize = 1024;

/// One node of the ring: its pool, its shared connections, and its failure record.
pub struct Node {
    pub pool: Pool,
    /// Connections shared by every session (memcached keeps no per-connection state); `None`
    /// gives each session its own connection to the node.
    pub shared: Option<SharedPool>,
    pub label: String,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// Whether the node answers meta commands (`META_*`): one-key gets go to it as meta gets
    /// once a probe has said so (`protocol::memcached::MetaGet`).
    meta: Arc<AtomicU8>,
}

const META_UNKNOWN: u8 = 0;
const META_PROBING: u8 = 1;
const META_YES: u8 = 2;
/// The probe said `ERROR`: asked again once the node has failed (it may come back upgraded).
const META_NO: u8 = 3;
/// A meta get got an answer memcached would not give: classic gets for the process's life.
const META_REFUSED: u8 = 4;

impl Node {
    pub fn new(pool: Pool, shared: Option<SharedPool>, label: String) -> Self {
        Self {
            pool,
            shared,
            label,
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            meta: Arc::new(AtomicU8::new(META_UNKNOWN)),
        }
    }

    fn ejected(&self) -> Option<Instant> {
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether one-key gets may go to this node as meta gets. Until a probe (`mn`, on a
    /// connection of the node's pool, in a task of its own) has answered, they go as they
    /// came; the first call starts the probe.
    fn speaks_meta(&self) -> bool {
        match self.meta.load(Ordering::Relaxed) {
            META_YES => true,
            META_UNKNOWN => {
                if self
                    .meta
                    .compare_exchange(
                        META_UNKNOWN,
                        META_PROBING,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    let (pool, meta) = (self.pool.clone(), self.meta.clone());
                    tokio::spawn(async move {
                        let verdict = probe_meta(&pool).await;
                        if verdict == META_UNKNOWN {
                            // Unreachable: ask again later, not on every batch meanwhile.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        meta.store(verdict, Ordering::Relaxed);
                    });
                }
                false
            }
            _ => false,
        }
    }

    /// What is known of the node's meta commands, for `stats`: `yes` (one-key gets go as
    /// meta gets), `no`, or `unknown` (not asked yet, or being asked).
    fn meta_state(&self) -> &'static str {
        match self.meta.load(Ordering::Relaxed) {
            META_YES => "yes",
            META_NO | META_REFUSED => "no",
            _ => "unknown",
        }
    }

    /// Forgets what the probe found: the node failed, and may come back as another server.
    fn meta_forgotten(&self) {
        let _ = self
            .meta
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                matches!(now, META_YES | META_NO).then_some(META_UNKNOWN)
            });
    }

    /// The node answered a meta get as memcached would not: classic gets from now on.
    fn meta_refused(&self) {
        self.meta.store(META_REFUSED, Ordering::Relaxed);
    }
}

/// Asks a node whether it knows meta commands: `mn` answers `MN` on memcached 1.6 and later,
/// `ERROR` on servers without them. Anything else (a failure, another line) leaves it unknown,
/// to be asked again.
async fn probe_meta(pool: &Pool) -> u8 {
    let Ok(mut conn) = pool.acquire().await else {
        return META_UNKNOWN;
    };
    let verdict = match conn.memcached_roundtrip(b"mn\r\n", Shape::Line).await {
        Ok(reply) if &reply[..] == b"MN\r\n" => META_YES,
        Ok(reply) if &reply[..] == b"ERROR\r\n" => META_NO,
        _ => return META_UNKNOWN,
    };
    pool.release(conn, true);
    verdict
}

/// What every session of a memcached listener shares.
pub struct Context {
    pub listener: String,
    /// Replaced by a reload; sessions take the new rules before their next batch.
    pub rules: Live<Rules>,
    pub security: Security,
    pub config: MemcachedConfig,
    /// `limits.max_reply_bytes` (fixed for the process: the pools are built with it).
    pub max_reply: usize,
    pub request_timeout: Duration,
    pub nodes: Vec<Node>,
    ring: RwLock<Arc<Continuum>>,
    /// `memcached.meta_gets`, until a client marks an item stale (`md`/`ms` with `I`): a meta
    /// get would take the stale item's win token (`W`) that a classic get leaves alone.
    meta_gets: std::sync::atomic::AtomicBool,
    started: Instant,
    curr_connections: AtomicU64,
    total_connections: AtomicU64,
}

/// What a reload may change on a memcached listener: the command policy, the ACL users
/// (chosen by client certificate, or the `default` user) and the limits.
pub struct Rules {
    pub policy: Policy,
    pub auth: AuthMode,
    pub cert_users: Vec<CertMapping>,
    pub limits: Limits,
    /// Cancelled when a reload replaces these rules: wakes idle sessions to take the new ones.
    pub superseded: CancellationToken,
    /// At-rest encryption of values in some keyspaces (its keys re-read by a reload).
    pub encryption: Option<Arc<crate::crypt::Encryption>>,
}

/// Where security events and buffered bytes are counted.
pub struct Security {
    pub metrics: Arc<Metrics>,
    /// The process-wide bound on buffered bytes.
    pub budget: Arc<crate::budget::MemoryBudget>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        listener: String,
        rules: Rules,
        security: Security,
        config: MemcachedConfig,
        request_timeout: Duration,
        nodes: Vec<Node>,
    ) -> Self {
        let ring = Continuum::build(&config.nodes, &vec![true; config.nodes.len()]);
        let meta_gets = std::sync::atomic::AtomicBool::new(config.meta_gets);
        Self {
            listener,
            max_reply: rules.limits.max_reply_bytes,
            rules: Live::new(rules),
            security,
            config,
            request_timeout,
            nodes,
            ring: RwLock::new(Arc::new(ring)),
            meta_gets,
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
        }
    }

    /// The ring of nodes not currently ejected; re-admits nodes whose ejection is over.
    fn ring(&self) -> Arc<Continuum> {
        let now = Instant::now();
        let expired = self
            .nodes
            .iter()
            .any(|n| n.ejected().is_some_and(|until| until <= now));
        if expired {
            for n in &self.nodes {
                let mut e = n.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
                if e.is_some_and(|until| until <= now) {
                    *e = None;
                    n.failures.store(0, Ordering::Relaxed);
                    tracing::info!(listener = %self.listener, node = %n.label, "node back in the ring");
                }
            }
            self.rebuild_ring();
        }
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether one-key gets may go as meta gets at all (`memcached.meta_gets`, and no client
    /// has marked an item stale).
    fn meta_gets(&self) -> bool {
        self.meta_gets.load(Ordering::Relaxed)
    }

    /// A client marks items stale: from now on every get goes as it came, so that a meta
    /// client's win token (`W`) for a stale item is never taken by a classic get.
    fn stale_items_in_use(&self) {
        // Read first: once off, a stream of such requests writes nothing every get reads.
        if self.meta_gets() && self.meta_gets.swap(false, Ordering::Relaxed) {
            tracing::info!(listener = %self.listener, "a client marks items stale (md/ms with I): one-key gets go to the nodes as classic gets from now on");
        }
    }

    fn rebuild_ring(&self) {
        let live: Vec<bool> = self.nodes.iter().map(|n| n.ejected().is_none()).collect();
        let ring = Continuum::build(&self.config.nodes, &live);
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    fn record(&self, node: usize, ok: bool) {
        let n = &self.nodes[node];
        if ok {
            n.failures.store(0, Ordering::Relaxed);
            return;
        }
        n.meta_forgotten();
        let failures = n.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.config.eject_after;
        if limit > 0 && failures >= limit && n.ejected().is_none() {
            *n.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + self.config.eject_for);
            tracing::warn!(
                listener = %self.listener,
                node = %n.label,
                failures,
                for_ = ?self.config.eject_for,
                "node ejected from the ring; its keys go to other nodes meanwhile"
            );
            self.rebuild_ring();
        }
    }
}

/// Why a node gave a request no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The shared connection's answer: the node's doing or cachegate's (`node_fault`).
    #[error(transparent)]
    Shared(SharedError),
    /// The session's own connection to the node failed.
    #[error(transparent)]
    Own(Arc<UpstreamError>),
    /// Every node is out of the ring.
    #[error("no memcached node available")]
    NoNode,
    /// The node answered a batch with more or fewer replies than it was sent requests.
    #[error("wrong number of replies")]
    Miscounted,
}

impl NodeError {
    /// The node's doing (unreachable, connection lost, timed out, a reply that does not
    /// parse): it counts toward ejecting the node, and a read may miss
    /// (`on_node_down = "miss"`). Otherwise cachegate's (its bound on buffered bytes, shutting
    /// down): the node is fine, and a read never misses for it.
    pub fn node_fault(&self) -> bool {
        match self {
            NodeError::Shared(e) => e.upstream_fault(),
            NodeError::Own(_) | NodeError::NoNode | NodeError::Miscounted => true,
        }
    }
}

/// One open connection in `stats curr_connections`, for as long as it is held.
struct Open<'a>(&'a AtomicU64);

impl<'a> Open<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A node's connection within a session, with its read buffer.
struct NodeConn {
    conn: Conn,
    buf: BytesMut,
}

/// Runs a memcached session to its end.
pub async fn run<S>(
    ctx: Arc<Context>,
    mut stream: S,
    peer: SocketAddr,
    cert: Option<CertNames>,
    shutdown: crate::drain::Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One load: the user and the rules the session starts with are of one generation.
    let (generation, rules) = ctx.rules.load_with_generation();
    let Ok(opened) = session_user(&rules, cert.as_ref()) else {
        tracing::info!(listener = %ctx.listener, %peer, "no user for this connection; closing");
        let _ = stream
            .write_all(b"SERVER_ERROR cachegate: access denied: no user for this connection\r\n")
            .await;
        let _ = stream.shutdown().await;
        return;
    };
    // Counted open until this goes, however the session ends (an evicted one's future is
    // dropped mid-way).
    let _open = Open::new(&ctx.curr_connections);
    ctx.total_connections.fetch_add(1, Ordering::Relaxed);
    let mut conns: Vec<Option<NodeConn>> = (0..ctx.nodes.len()).map(|_| None).collect();
    let mut who = Who {
        user: opened,
        peer,
        cert,
    };
    let result = serve(
        &ctx,
        stream,
        &mut conns,
        &mut who,
        (generation, rules),
        &shutdown,
    )
    .await;
    // Connections still held are in step (failed ones were dropped where they failed).
    for (i, c) in conns.into_iter().enumerate() {
        if let Some(c) = c {
            ctx.nodes[i].pool.release(c.conn, c.buf.is_empty());
        }
    }
    match result {
        Ok(()) => tracing::debug!(listener = %ctx.listener, %peer, "session closed"),
        Err(e) => {
            tracing::debug!(listener = %ctx.listener, %peer, error = %e, "session ended");
            ctx.security.metrics.session_error(&ctx.listener, &e);
        }
    }
}

/// The user a memcached connection acts as (`auth::login::opening`, without AUTH): its
/// certificate's, else `default` if that user is on and needs no certificate. `Ok(None)` when
/// the listener has no ACL users; `Err` when nobody may use it.
fn session_user(rules: &Rules, cert: Option<&CertNames>) -> Result<Option<Arc<User>>, ()> {
    let AuthMode::Acl(group) = &rules.auth else {
        return Ok(None);
    };
    let mapped = crate::auth::cert::mapped_user(group, &rules.cert_users, cert);
    match crate::auth::login::opening(&rules.auth, mapped, false) {
        crate::auth::login::Opening::As { user, .. } => Ok(Some(user)),
        crate::auth::login::Opening::Open => Ok(None),
        crate::auth::login::Opening::Out => Err(()),
    }
}

/// Who a session is under reloaded rules. memcached has no AUTH: a session is who a new
/// connection with its certificate would be, so it keeps its user (as now configured) only
/// while that is still the same user, and is closed otherwise: its user removed or disabled,
/// its certificate mapped to another user (a disabled one included: how an operator shuts a
/// certificate out), a certificate now required, or the listener's users gone. A session
/// without a user (the listener had no ACL users) is chosen as a new connection would be.
fn session_after_reload(rules: &Rules, who: &Who) -> Result<Option<Arc<User>>, &'static str> {
    let now = session_user(rules, who.cert.as_ref());
    let Some(user) = &who.user else {
        return now.map_err(|()| "no user may use this listener from this connection now");
    };
    match now {
        Ok(Some(new)) if new.name == user.name => Ok(Some(new)),
        Ok(Some(_)) => Err("its connection now maps to another user"),
        Ok(None) => Err("the listener no longer has ACL users"),
        Err(()) => Err("its user was removed or disabled, or no longer maps to it"),
    }
}

/// Who is on the other end of a session.
struct Who {
    user: Option<Arc<User>>,
    peer: SocketAddr,
    /// Its client certificate's names: after a reload, they choose its user again.
    cert: Option<CertNames>,
}

async fn serve<S>(
    ctx: &Context,
    stream: S,
    conns: &mut [Option<NodeConn>],
    who: &mut Who,
    (mut generation, mut rules): (u64, Arc<Rules>),
    shutdown: &crate::drain::Drain,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut superseded = Box::pin(rules.superseded.clone().cancelled_owned());
    let (cr, mut cw) = tokio::io::split(stream);
    let mut parser = Parser::new(ctx.config.limits);
    let mut meter = ctx.security.metrics.command_meter(&ctx.listener);
    let mut reader = ClientReader::new(cr, ctx.security.budget.clone());
    let mut charge = crate::budget::Charge::new(ctx.security.budget.clone());
    // Registered once, not on every read: each registration takes the token's lock.
    let mut shut = std::pin::pin!(shutdown.wait());
    // What ended the session, when it is closed on an error after answering it.
    let mut ended = None;
    // A batch's requests and the bytes of its answer, kept from one batch to the next.
    let mut batch = Vec::new();
    let mut out = BytesMut::new();
    loop {
        if ctx.rules.generation() != generation {
            // A reload: the new policy and limits from this batch on; the user as now
            // configured (a session whose user was removed or disabled, or whose certificate
            // now maps to another user, is closed).
            (generation, rules) = ctx.rules.load_with_generation();
            superseded.set(rules.superseded.clone().cancelled_owned());
            match session_after_reload(&rules, who) {
                Ok(user) => who.user = user,
                Err(why) => {
                    tracing::info!(listener = %ctx.listener, peer = %who.peer, reason = why, "session closed by a reload");
                    break;
                }
            }
        }
        batch.clear();
        if batch.capacity() > KEEP_BATCH {
            batch = Vec::new();
        }
        let mut close = false;
        while batch.len() < MAX_BATCH {
            match parser.next(&mut reader.buf, &rules.policy) {
                None => break,
                Some(Parsed::Request(r)) if r.cmd == Cmd::Quit => {
                    close = true;
                    break;
                }
                Some(Parsed::Fatal(reply)) => {
                    batch.push(Item::Local(Bytes::from_static(reply)));
                    ended = Some(SessionError::Unreadable("a line memcached closes for"));
                    close = true;
                    break;
                }
                // As memcached: closed without an answer.
                Some(Parsed::Close) => {
                    ended = Some(SessionError::Unreadable("a line over memcached's limit"));
                    close = true;
                    break;
                }
                Some(Parsed::CrossProtocol) => {
                    cross_protocol(ctx, who);
                    ended = Some(SessionError::Unreadable("an HTTP request"));
                    close = true;
                    break;
                }
                Some(Parsed::Reply(reply)) => batch.push(Item::Local(Bytes::from_static(reply))),
                Some(Parsed::Request(r)) => batch.push(Item::Request(r)),
            }
        }
        let batch_full = batch.len() >= MAX_BATCH;
        if !batch.is_empty() {
            let enc = rules.encryption.as_deref();
            execute(ctx, &mut batch, &mut out, conns, &*who, enc, &mut meter).await;
            if let Err(over) = charge.hold(out.len()) {
                cw.write_all(&server_error("", &over.to_string()))
                    .await
                    .map_err(SessionError::ClientIo)?;
                ended = Some(SessionError::OverBudget(over));
                break;
            }
            cw.write_all(&out).await.map_err(SessionError::ClientIo)?;
            cw.flush().await.map_err(SessionError::ClientIo)?;
            // Written: no longer held (the budget is not charged for it while idle).
            let _ = charge.hold(0);
            out.clear();
            if out.capacity() > KEEP_ANSWER {
                out = BytesMut::new();
            }
        }
        if close {
            break;
        }
        if batch_full {
            // More complete requests may be waiting: run them before reading.
            continue;
        }
        if shutdown.started() {
            break;
        }
        let limits = ReadLimits {
            max_request_bytes: rules.limits.max_request_bytes,
            partial_request_timeout: rules.limits.partial_request_timeout,
        };
        // Shutdown, or a reload (taken at the loop's top).
        let wake = std::pin::pin!(async {
            tokio::select! {
                _ = &mut shut => {}
                _ = &mut superseded => {}
            }
        });
        match reader.fill(limits, wake).await {
            Ok(Filled::Data) => {}
            Ok(Filled::Woken) if shutdown.started() => break,
            Ok(Filled::Woken) => {}
            Ok(Filled::Eof) => break,
            Err(ReadError::Io(e)) => return Err(SessionError::ClientIo(e)),
            Err(ReadError::PartialTimeout(t)) => {
                return Err(SessionError::PartialRequestTimeout(t))
            }
            // The same cap on unparsed input, and the same budget, as Redis listeners have.
            Err(e @ (ReadError::TooLarge(_) | ReadError::OverBudget(_))) => {
                cw.write_all(&server_error("", &e.to_string()))
                    .await
                    .map_err(SessionError::ClientIo)?;
                ended = Some(match e {
                    ReadError::OverBudget(over) => SessionError::OverBudget(over),
                    ReadError::TooLarge(max) => SessionError::QueryBufferFull(max),
                    _ => unreachable!("matched above"),
                });
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), cw.shutdown()).await;
    ended.map_or(Ok(()), Err)
}

/// The memcached parser asks the policy what a typed name is (mid-line: see `Names`).
impl crate::protocol::memcached::Names for Policy {
    fn resolve(&self, typed: &[u8]) -> crate::protocol::memcached::Named {
        use crate::protocol::memcached::Named;
        match self.decide(typed) {
            crate::policy::Decision::Allow => Named::AsTyped,
            crate::policy::Decision::Rename(real) => Named::Real(real),
            crate::policy::Decision::Refuse => Named::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::UserGroup;
    use crate::auth::cert::NameKind;
    use crate::protocol::memcached::McLimits;

    fn rules(users: &[(&str, &str)], mapped: &[(&str, &str)]) -> Rules {
        let users = users
            .iter()
            .map(|(n, acl)| Arc::new(User::parse(n, acl).unwrap()))
            .collect();
        Rules {
            policy: Policy::default(),
            auth: AuthMode::Acl(Arc::new(UserGroup {
                name: "g".into(),
                users,
            })),
            cert_users: mapped
                .iter()
                .map(|(cn, user)| CertMapping {
                    kind: NameKind::Cn,
                    value: cn.to_string(),
                    user: user.to_string(),
                })
                .collect(),
            limits: Limits {
                request: Default::default(),
                max_reply_bytes: 1 << 20,
                max_request_bytes: 1 << 20,
                max_buffered_bytes: 1 << 20,
                partial_request_timeout: Duration::from_secs(1),
                login_timeout: None,
            },
            superseded: CancellationToken::new(),
            encryption: None,
        }
    }

    fn cert(cn: &str) -> CertNames {
        CertNames {
            cn: vec![cn.into()],
            dns: Vec::new(),
            uri: Vec::new(),
        }
    }

    fn request(line: &str) -> McRequest {
        let mut buf = BytesMut::from(line);
        match Parser::new(McLimits::default()).next(&mut buf, &Policy::default()) {
            Some(Parsed::Request(r)) => r,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn a_connection_is_its_certificate_s_user_or_default() {
        let r = rules(
            &[
                ("default", "on nopass ~pub:* +@read"),
                ("app", "on nopass ~* +@all"),
                ("ops", "off nopass ~* +@all"),
            ],
            &[("app-client", "app"), ("ops-client", "ops")],
        );
        let name = |c: Option<&CertNames>| session_user(&r, c).map(|u| u.map(|u| u.name.clone()));
        assert_eq!(name(Some(&cert("app-client"))), Ok(Some("app".into())));
        assert_eq!(name(Some(&cert("someone"))), Ok(Some("default".into())));
        assert_eq!(name(None), Ok(Some("default".into())));
        // A disabled user is nobody's: the connection is refused.
        assert_eq!(name(Some(&cert("ops-client"))), Err(()));
        // default only for certificates: without a mapped one, nobody.
        let strict = rules(
            &[
                ("default", "on nopass ~* +@all"),
                ("app", "on nopass ~* +@all"),
            ],
            &[("app-client", "app")],
        );
        let mut strict_default = (*match &strict.auth {
            AuthMode::Acl(g) => g.get(b"default").unwrap().clone(),
            _ => unreachable!(),
        })
        .clone();
        strict_default.cert_required = true;
        let strict = Rules {
            auth: AuthMode::Acl(Arc::new(UserGroup {
                name: "g".into(),
                users: vec![
                    Arc::new(strict_default),
                    Arc::new(User::parse("app", "on nopass ~* +@all").unwrap()),
                ],
            })),
            ..strict
        };
        assert_eq!(session_user(&strict, None).map(|u| u.is_some()), Err(()));
    }

    #[test]
    fn a_reload_keeps_a_session_s_user_only_while_its_connection_would_get_it() {
        let users = [
            ("default", "on nopass ~pub:* +@read"),
            ("app", "on nopass ~* +@all"),
            ("ops", "on nopass ~* +@all"),
        ];
        let before = rules(&users, &[("app-client", "app")]);
        let who = |c: &str| Who {
            user: session_user(&before, Some(&cert(c))).unwrap(),
            peer: "127.0.0.1:1".parse().unwrap(),
            cert: Some(cert(c)),
        };
        let (app, someone) = (who("app-client"), who("someone"));
        let after =
            |r: &Rules, w: &Who| session_after_reload(r, w).map(|u| u.map(|u| u.name.clone()));
        // Nothing changed for either.
        assert_eq!(after(&before, &app), Ok(Some("app".into())));
        assert_eq!(after(&before, &someone), Ok(Some("default".into())));
        // The certificate now maps to another user: closed, not switched; a default session
        // whose certificate gains a mapping too (a new connection would not be default).
        let remapped = rules(&users, &[("app-client", "ops"), ("someone", "app")]);
        let moved = Err("its connection now maps to another user");
        assert_eq!(after(&remapped, &app), moved);
        assert_eq!(after(&remapped, &someone), moved);
        // Mapped to a disabled user, to shut the certificate out: closed.
        let shut_out = rules(
            &[
                ("default", "on nopass ~pub:* +@read"),
                ("app", "on nopass ~* +@all"),
                ("banned", "off nopass ~* +@all"),
            ],
            &[("app-client", "app"), ("someone", "banned")],
        );
        let out = Err("its user was removed or disabled, or no longer maps to it");
        assert_eq!(after(&shut_out, &someone), out);
        assert_eq!(after(&shut_out, &app), Ok(Some("app".into())));
        // New rules for the same user: kept, with the new rules.
        let narrowed = rules(
            &[
                ("default", "on nopass ~pub:* +@read"),
                ("app", "on nopass ~* +@read"),
                ("ops", "on nopass ~* +@all"),
            ],
            &[("app-client", "app")],
        );
        let kept = session_after_reload(&narrowed, &app).unwrap().unwrap();
        assert!(app.user.as_ref().unwrap().check(&["SET", "k", "v"]).is_ok());
        assert!(kept.check(&["SET", "k", "v"]).is_err());
        assert!(kept.check(&["GET", "k"]).is_ok());
        // Removed or disabled: closed.
        let gone = rules(&[("default", "on nopass ~pub:* +@read")], &[]);
        assert_eq!(after(&gone, &app), moved);
        let off = rules(
            &[
                ("default", "off nopass ~* +@all"),
                ("app", "on nopass ~* +@all"),
            ],
            &[("app-client", "app")],
        );
        assert_eq!(after(&off, &someone), out);
    }

    #[test]
    fn only_a_node_s_own_failure_counts_against_it_and_may_read_as_a_miss() {
        let over = SharedError::OverBudget(crate::budget::OverBudget { limit: 1 });
        let down = SharedError::Timeout(Duration::from_secs(1));
        assert!(!NodeError::Shared(over).node_fault());
        assert!(!NodeError::Shared(SharedError::ShuttingDown).node_fault());
        assert!(NodeError::Shared(down.clone()).node_fault());
        assert!(NodeError::Own(Arc::new(UpstreamError::Closed)).node_fault());
        assert!(NodeError::NoNode.node_fault());
        assert_eq!(
            &server_error("", &NodeError::NoNode.to_string())[..],
            b"SERVER_ERROR cachegate: no memcached node available\r\n"
        );
        assert_eq!(
            &server_error("n:1", &NodeError::Shared(down).to_string())[..],
            b"SERVER_ERROR cachegate: node n:1: upstream read timed out after 1s\r\n"
        );
    }

    #[test]
    fn each_command_is_judged_as_the_redis_calls_it_resembles() {
        let names = |line: &str| -> Vec<String> {
            acl_calls(&request(line))
                .iter()
                .map(|c| {
                    c.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(names("get a b\r\n"), ["get a", "get b"]);
        assert_eq!(names("set k 0 0 1\r\nv\r\n"), ["set k v"]);
        assert_eq!(names("append k 0 0 1\r\nv\r\n"), ["append k v"]);
        assert_eq!(names("delete k\r\n"), ["del k"]);
        assert_eq!(names("incr k 1\r\n"), ["incrby k 1"]);
        assert_eq!(names("mg k v T30 N30\r\n"), ["get k", "getex k", "set k v"]);
        assert_eq!(names("flush_all\r\n"), ["flushall"]);
        assert!(names("version\r\n").is_empty());
    }

    #[test]
    fn a_server_error_is_one_line_whatever_the_reason_holds() {
        assert_eq!(
            &server_error("10.0.0.1:11211", "connection lost\r\n(reset)")[..],
            b"SERVER_ERROR cachegate: node 10.0.0.1:11211: connection lost  (reset)\r\n"
        );
        assert_eq!(&server_error("", "x")[..], b"SERVER_ERROR cachegate: x\r\n");
    }

    #[test]
    fn a_get_goes_whole_to_one_node_only_when_every_key_lives_there() {
        let nodes: Vec<crate::config::RingNode> = (0..3)
            .map(|i| crate::config::RingNode {
                host: "127.0.0.1".into(),
                port: 11211 + i,
                weight: 1,
            })
            .collect();
        let ring = Continuum::build(&nodes, &[true, true, true]);
        let one = request("get k1\r\n");
        assert_eq!(same_node(&one, &ring), ring.locate(b"k1"));
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        let many = request(&format!("get {}\r\n", keys.join(" ")));
        assert_eq!(same_node(&many, &ring), None, "50 keys over 3 nodes");
        let single = Continuum::build(&nodes[..1], &[true]);
        assert_eq!(same_node(&many, &single), Some(0));
    }
}
