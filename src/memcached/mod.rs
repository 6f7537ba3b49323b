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

use crate::deadline::sleep_until;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::acl::{Denied, User};
use crate::auth::cert::{CertMapping, CertNames};
use crate::config::{AuthMode, Limits, MemcachedConfig, NodeDown};
use crate::error::UpstreamError;
use crate::live::Live;
use crate::metrics::{CommandMeter, Metrics, SecurityEvent};
use crate::policy::Policy;
use crate::protocol::memcached::{reply_len, split_values, Cmd, McRequest, Parsed, Parser, Shape};
use crate::upstream::ring::Continuum;
use crate::upstream::shared::{Frames, Replies, SharedError, SharedPool, SharedRequest};
use crate::upstream::{Conn, Pool};
use tokio::sync::oneshot;

/// Requests run together at most; more wait for the next batch.
const MAX_BATCH: usize = 128;

/// One node of the ring: its pool, its shared connections, and its failure record.
pub struct Node {
    pub pool: Pool,
    /// Connections shared by every session (memcached keeps no per-connection state); `None`
    /// gives each session its own connection to the node.
    pub shared: Option<SharedPool>,
    pub label: String,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Node {
    pub fn new(pool: Pool, shared: Option<SharedPool>, label: String) -> Self {
        Self {
            pool,
            shared,
            label,
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    fn ejected(&self) -> Option<Instant> {
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        Self {
            listener,
            max_reply: rules.limits.max_reply_bytes,
            rules: Live::new(rules),
            security,
            config,
            request_timeout,
            nodes,
            ring: RwLock::new(Arc::new(ring)),
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
    /// The node's doing (unreachable, connection lost, timed out, a reply that does not
    /// parse): it counts toward ejecting the node, and a read may miss
    /// (`on_node_down = "miss"`).
    #[error("{0}")]
    Upstream(Arc<str>),
    /// cachegate's (its bound on buffered bytes, shutting down): the node is fine, and a read
    /// never misses for it.
    #[error("{0}")]
    Proxy(SharedError),
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
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One load: the user and the rules the session starts with are of one generation.
    let (generation, rules) = ctx.rules.load_with_generation();
    let Ok(user) = session_user(&rules, cert.as_ref()) else {
        tracing::info!(listener = %ctx.listener, %peer, "no user for this connection; closing");
        let _ = stream
            .write_all(b"SERVER_ERROR cachegate: access denied: no user for this connection\r\n")
            .await;
        let _ = stream.shutdown().await;
        return;
    };
    ctx.curr_connections.fetch_add(1, Ordering::Relaxed);
    ctx.total_connections.fetch_add(1, Ordering::Relaxed);
    let mut conns: Vec<Option<NodeConn>> = (0..ctx.nodes.len()).map(|_| None).collect();
    let mut who = Who { user, peer, cert };
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
    ctx.curr_connections.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => tracing::debug!(listener = %ctx.listener, %peer, "session closed"),
        Err(e) => tracing::debug!(listener = %ctx.listener, %peer, error = %e, "session ended"),
    }
}

/// The user a memcached connection acts as: its certificate's, else `default` if that user is
/// on. `Ok(None)` when the listener has no ACL users; `Err` when nobody may use it.
fn session_user(rules: &Rules, cert: Option<&CertNames>) -> Result<Option<Arc<User>>, ()> {
    let AuthMode::Acl(group) = &rules.auth else {
        return Ok(None);
    };
    let mapped = crate::auth::cert::mapped_user(group, &rules.cert_users, cert);
    let user = match mapped {
        Some(u) => Some(u.clone()),
        None => group.get(b"default").filter(|d| !d.cert_required).cloned(),
    };
    user.filter(|u| u.enabled).map(Some).ok_or(())
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
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut superseded = Box::pin(rules.superseded.clone().cancelled_owned());
    let (mut cr, mut cw) = tokio::io::split(stream);
    let mut parser = Parser::new(ctx.config.limits);
    let mut meter = ctx.security.metrics.command_meter(&ctx.listener);
    let mut rbuf = BytesMut::new();
    let mut room = crate::read_room::ReadRoom::new();
    let mut partial_since: Option<Instant> = None;
    let mut charge = crate::budget::Charge::new(ctx.security.budget.clone());
    // Registered once, not on every read: each registration takes the token's lock.
    let mut shut = std::pin::pin!(shutdown.cancelled());
    loop {
        if ctx.rules.generation() != generation {
            // A reload: the new policy and limits from this batch on; the user chosen again
            // (a session whose user was removed or disabled is closed).
            (generation, rules) = ctx.rules.load_with_generation();
            superseded.set(rules.superseded.clone().cancelled_owned());
            match session_user(&rules, who.cert.as_ref()) {
                Ok(user) => who.user = user,
                Err(()) => {
                    tracing::info!(listener = %ctx.listener, peer = %who.peer, "session closed: a reload removed or disabled its user");
                    break;
                }
            }
        }
        let mut batch = Vec::new();
        let mut close = false;
        while batch.len() < MAX_BATCH {
            match parser.next(&mut rbuf, &rules.policy) {
                None => break,
                Some(Parsed::Request(r)) if r.cmd == Cmd::Quit => {
                    close = true;
                    break;
                }
                Some(Parsed::Fatal(reply)) => {
                    batch.push(Item::Local(Bytes::from_static(reply)));
                    close = true;
                    break;
                }
                // As memcached: closed without an answer.
                Some(Parsed::Close) => {
                    close = true;
                    break;
                }
                Some(Parsed::CrossProtocol) => {
                    cross_protocol(ctx, who);
                    close = true;
                    break;
                }
                Some(Parsed::Reply(reply)) => batch.push(Item::Local(Bytes::from_static(reply))),
                Some(Parsed::Request(r)) => batch.push(Item::Request(r)),
            }
        }
        let batch_full = batch.len() >= MAX_BATCH;
        if !batch.is_empty() {
            let out = execute(ctx, batch, conns, &*who, &mut meter).await;
            if let Err(over) = charge.hold(rbuf.capacity() + out.len()) {
                cw.write_all(&server_error("", &over.to_string())).await?;
                break;
            }
            cw.write_all(&out).await?;
            cw.flush().await?;
        }
        if close {
            break;
        }
        if batch_full {
            // More complete requests may be waiting: run them before reading.
            continue;
        }
        if shutdown.is_cancelled() {
            break;
        }
        // The same cap on unparsed input as Redis listeners have: what is left once every
        // complete request in the buffer has run.
        let max = rules.limits.max_request_bytes;
        if rbuf.len() > max {
            let why = format!("request larger than limits.max_request_bytes ({max} bytes)");
            cw.write_all(&server_error("", &why)).await?;
            break;
        }
        partial_since = match (rbuf.is_empty(), partial_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        let deadline = partial_since.map(|s| s + rules.limits.partial_request_timeout);
        room.prepare(&mut rbuf);
        tokio::select! {
            read = cr.read_buf(&mut rbuf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    room.record(n);
                    if let Err(over) = charge.hold(rbuf.capacity()) {
                        cw.write_all(&server_error("", &over.to_string())).await?;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            },
            _ = sleep_until(deadline) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client left a request unfinished"));
            }
            _ = &mut shut => break,
            // A reload: the loop takes the new rules before reading on.
            _ = &mut superseded => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), cw.shutdown()).await;
    Ok(())
}

enum Item {
    Local(Bytes),
    Request(McRequest),
}

/// Where a request's reply comes from.
enum Plan {
    Local(Bytes),
    /// One reply from one node: (node, position in that node's queue).
    Single(usize, usize),
    /// A get whose keys are all on one node: (node, position); the node's reply is the answer.
    Whole(usize, usize),
    /// A multi-get: one part per node, each (node, position, keys).
    Split(Vec<(usize, usize)>),
    /// flush_all / verbosity: one reply from every node.
    All(Vec<(usize, usize)>),
    Unrouted,
}

/// Runs a batch and returns the bytes for the client, in request order.
async fn execute(
    ctx: &Context,
    batch: Vec<Item>,
    conns: &mut [Option<NodeConn>],
    who: &Who,
    meter: &mut CommandMeter<'_>,
) -> BytesMut {
    let ring = ctx.ring();
    let n = ctx.nodes.len();
    let mut queues: Vec<(BytesMut, Vec<Shape>)> =
        (0..n).map(|_| (BytesMut::new(), Vec::new())).collect();
    let mut push = |node: usize, req: &McRequest, keys: Option<&[Bytes]>| {
        let (bytes, shapes) = &mut queues[node];
        req.encode(bytes, keys);
        shapes.push(req.shape());
        (node, shapes.len() - 1)
    };
    let mut plans = Vec::with_capacity(batch.len());
    for item in &batch {
        let plan = match item {
            Item::Local(b) => Plan::Local(b.clone()),
            // memcached stays silent on errors for `noreply`; quiet meta commands still see them.
            Item::Request(req) if refused(ctx, who, req) => Plan::Local(
                if req.quiet && !matches!(req.cmd, Cmd::Meta | Cmd::MetaSet) {
                    Bytes::new()
                } else {
                    Bytes::from_static(PERMISSION_DENIED)
                },
            ),
            Item::Request(req) => match req.cmd {
                Cmd::MetaNoop => Plan::Local(Bytes::from_static(b"MN\r\n")),
                Cmd::Empty => Plan::Local(Bytes::from_static(b"END\r\n")),
                Cmd::Stats => Plan::Local(stats(ctx, req)),
                Cmd::Get | Cmd::GetAndTouch => match same_node(req, &ring) {
                    // Every key on one node (always so with one node): sent as it came, and the
                    // node's reply is already the answer.
                    Some(node) => {
                        let (node, at) = push(node, req, None);
                        Plan::Whole(node, at)
                    }
                    None => {
                        let mut per_node: Vec<Vec<Bytes>> = vec![Vec::new(); n];
                        let mut routed = true;
                        for key in req.keys() {
                            match ring.locate(key) {
                                Some(node) => per_node[node].push(key.clone()),
                                None => routed = false,
                            }
                        }
                        if !routed {
                            Plan::Unrouted
                        } else {
                            let parts = per_node
                                .iter()
                                .enumerate()
                                .filter(|(_, keys)| !keys.is_empty())
                                .map(|(node, keys)| push(node, req, Some(keys)))
                                .collect();
                            Plan::Split(parts)
                        }
                    }
                },
                Cmd::Broadcast => Plan::All((0..n).map(|node| push(node, req, None)).collect()),
                Cmd::Version => match (0..n).find(|&i| ctx.nodes[i].ejected().is_none()) {
                    Some(node) => {
                        let (node, at) = push(node, req, None);
                        Plan::Single(node, at)
                    }
                    None => Plan::Unrouted,
                },
                _ => match req.route_key.as_deref().and_then(|k| ring.locate(k)) {
                    Some(node) => {
                        let (node, at) = push(node, req, None);
                        Plan::Single(node, at)
                    }
                    None => Plan::Unrouted,
                },
            },
        };
        plans.push(plan);
    }

    // Every node with work, in parallel; each result list lines up with that node's queue.
    let exchanges = conns.iter_mut().zip(queues).enumerate().map(
        |(node, (slot, (bytes, shapes)))| async move {
            match &ctx.nodes[node].shared {
                Some(shared) => shared_exchange(ctx, node, shared, bytes, shapes).await,
                None => exchange(ctx, node, slot, bytes, shapes).await,
            }
        },
    );
    let started = Instant::now();
    let results: Vec<Vec<Result<Bytes, NodeError>>> = join_all(exchanges).await;
    let took = started.elapsed();
    // Every forwarded request of the batch waited for the whole batch.
    for (item, plan) in batch.iter().zip(&plans) {
        if let (
            Item::Request(req),
            Plan::Single(..) | Plan::Whole(..) | Plan::Split(_) | Plan::All(_),
        ) = (item, plan)
        {
            meter.observe(command_label(req.name()), took);
        }
    }

    let mut out = BytesMut::new();
    for (item, plan) in batch.iter().zip(plans) {
        let req = match item {
            Item::Request(r) => Some(r),
            Item::Local(_) => None,
        };
        match (plan, req) {
            (Plan::Local(b), _) => out.extend_from_slice(&b),
            (Plan::Unrouted, Some(req)) => {
                let none = NodeError::Upstream("no memcached node available".into());
                answer_failure(ctx, req, &none, &mut out)
            }
            (Plan::Single(node, at), Some(req)) => match &results[node][at] {
                Ok(reply) => answer(req, reply, &mut out),
                Err(e) => answer_failure(ctx, req, e, &mut out),
            },
            (Plan::Whole(node, at), Some(req)) => match &results[node][at] {
                Ok(reply) => out.extend_from_slice(reply),
                Err(_) => merge_values(ctx, req, &[(node, at)], &results, &mut out),
            },
            (Plan::Split(parts), Some(req)) => {
                merge_values(ctx, req, &parts, &results, &mut out);
            }
            (Plan::All(parts), Some(req)) => {
                // OK only if every node said OK; otherwise the first other answer.
                let replies = parts
                    .into_iter()
                    .map(|(node, at)| match &results[node][at] {
                        Ok(r) => r.clone(),
                        Err(e) => server_error(&ctx.nodes[node].label, &e.to_string()),
                    });
                let mut combined = Bytes::from_static(b"OK\r\n");
                for r in replies {
                    if &r[..] != b"OK\r\n" {
                        combined = r;
                        break;
                    }
                }
                if !req.quiet {
                    out.extend_from_slice(&combined);
                }
            }
            (_, None) => {}
        }
    }
    out
}

/// Sends a node its queue on one of the node's shared connections, where it is written together
/// with other sessions' requests; the replies come back as one list. A failure fails the batch's
/// requests on that node, nothing else.
async fn shared_exchange(
    ctx: &Context,
    node: usize,
    shared: &SharedPool,
    bytes: BytesMut,
    shapes: Vec<Shape>,
) -> Vec<Result<Bytes, NodeError>> {
    let n = shapes.len();
    if n == 0 {
        return Vec::new();
    }
    let (tx, rx) = oneshot::channel();
    let request = SharedRequest {
        bytes: bytes.freeze(),
        frames: Frames::Memcached(shapes),
        reply: tx,
    };
    let outcome = match shared.pick().send(request).await {
        Ok(()) => rx.await.unwrap_or_else(|_| Err(SharedError::Gone)),
        Err(_) => Err(SharedError::ShuttingDown),
    };
    if let Err(e) = &outcome {
        ctx.security
            .metrics
            .request_failures
            .get_or_create(&crate::metrics::ReasonLabels {
                listener: ctx.listener.clone(),
                reason: e.cause().to_string(),
            })
            .inc_by(n as u64);
    }
    match outcome.map(Replies::split) {
        Ok(frames) if frames.len() == n => {
            ctx.record(node, true);
            frames.into_iter().map(Ok).collect()
        }
        Ok(_) => vec![Err(NodeError::Upstream("wrong number of replies".into())); n],
        // The process's buffer bound refused the replies: the node is fine.
        Err(e) if !e.upstream_fault() => vec![Err(NodeError::Proxy(e)); n],
        Err(e) => {
            tracing::warn!(listener = %ctx.listener, node = %ctx.nodes[node].label, error = %e, "memcached node failed");
            ctx.record(node, false);
            vec![Err(NodeError::Upstream(e.to_string().into())); n]
        }
    }
}

/// Sends a node its queue and reads one reply per request. After a failure every remaining
/// request on that node fails too, and the connection is dropped.
async fn exchange(
    ctx: &Context,
    node: usize,
    slot: &mut Option<NodeConn>,
    bytes: BytesMut,
    shapes: Vec<Shape>,
) -> Vec<Result<Bytes, NodeError>> {
    if shapes.is_empty() {
        return Vec::new();
    }
    let fail_all = |e: &dyn std::fmt::Display| {
        vec![Err(NodeError::Upstream(e.to_string().into())); shapes.len()]
    };
    if slot.is_none() {
        match ctx.nodes[node].pool.acquire().await {
            Ok(conn) => {
                *slot = Some(NodeConn {
                    conn,
                    buf: BytesMut::new(),
                })
            }
            Err(e) => {
                ctx.record(node, false);
                return fail_all(&e);
            }
        }
    }
    let Some(nc) = slot.as_mut() else {
        return fail_all(&"no connection");
    };
    let max = ctx.max_reply;
    let mut results = Vec::with_capacity(shapes.len());
    let work = async {
        nc.conn.stream.write_all(&bytes).await?;
        nc.conn.stream.flush().await?;
        for shape in &shapes {
            loop {
                let done = reply_len(&nc.buf, *shape, max)
                    .map_err(|e| UpstreamError::Unexpected(e.to_string()))?;
                if let Some(len) = done {
                    results.push(Ok(nc.buf.split_to(len).freeze()));
                    break;
                }
                if nc.conn.stream.read_buf(&mut nc.buf).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
        }
        Ok::<(), UpstreamError>(())
    };
    let outcome = match tokio::time::timeout(ctx.request_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout(ctx.request_timeout)),
    };
    match outcome {
        Ok(()) => ctx.record(node, true),
        Err(e) => {
            tracing::warn!(listener = %ctx.listener, node = %ctx.nodes[node].label, error = %e, "memcached node failed");
            ctx.record(node, false);
            *slot = None;
            while results.len() < shapes.len() {
                results.push(Err(NodeError::Upstream(e.to_string().into())));
            }
        }
    }
    results
}

/// A single-node reply as the client should see it.
fn answer(req: &McRequest, reply: &Bytes, out: &mut BytesMut) {
    match req.shape() {
        // Quiet meta: the backend's own quiet rules applied; drop our `mn`'s MN.
        Shape::MetaThenNoop => out.extend_from_slice(&reply[..reply.len() - 4]),
        _ if req.quiet => {}
        _ => out.extend_from_slice(reply),
    }
}

fn answer_failure(ctx: &Context, req: &McRequest, err: &NodeError, out: &mut BytesMut) {
    // cachegate's own refusal (its buffer bound, shutting down) is no node failure: never a
    // miss.
    let miss = ctx.config.on_node_down == NodeDown::Miss && matches!(err, NodeError::Upstream(_));
    match req.cmd {
        Cmd::Meta if miss && req.tokens[0] == "mg" => {
            if !req.quiet {
                out.extend_from_slice(b"EN\r\n");
            }
        }
        Cmd::Get | Cmd::GetAndTouch if miss => out.extend_from_slice(b"END\r\n"),
        // memcached drops even errors for `noreply`; quiet meta mode still reports errors.
        _ if req.quiet && !matches!(req.cmd, Cmd::Meta | Cmd::MetaSet) => {}
        _ => out.extend_from_slice(&server_error("", &err.to_string())),
    }
}

fn server_error(node: &str, err: &str) -> Bytes {
    let msg = if node.is_empty() {
        format!("SERVER_ERROR cachegate: {err}\r\n")
    } else {
        format!("SERVER_ERROR cachegate: node {node}: {err}\r\n")
    };
    Bytes::from(msg.replace(['\r', '\n'], " ").trim_end().to_string() + "\r\n")
}

/// The node all of a get's keys live on, if it is one node.
fn same_node(req: &McRequest, ring: &Continuum) -> Option<usize> {
    let mut keys = req.keys().iter();
    let first = ring.locate(keys.next()?)?;
    keys.all(|k| ring.locate(k) == Some(first)).then_some(first)
}

/// Puts a multi-get back together: items in the client's key order, one END.
fn merge_values(
    ctx: &Context,
    req: &McRequest,
    parts: &[(usize, usize)],
    results: &[Vec<Result<Bytes, NodeError>>],
    out: &mut BytesMut,
) {
    let mut items: std::collections::HashMap<Bytes, std::collections::VecDeque<Bytes>> =
        std::collections::HashMap::new();
    for &(node, at) in parts {
        match &results[node][at] {
            Ok(reply) => {
                let (found, error) = split_values(reply);
                if let Some(error) = error {
                    out.extend_from_slice(&error);
                    return;
                }
                for (key, item) in found {
                    items.entry(key).or_default().push_back(item);
                }
            }
            Err(e)
                if ctx.config.on_node_down == NodeDown::Error
                    || matches!(e, NodeError::Proxy(_)) =>
            {
                out.extend_from_slice(&server_error(&ctx.nodes[node].label, &e.to_string()));
                return;
            }
            Err(_) => {}
        }
    }
    for key in req.keys() {
        if let Some(item) = items.get_mut(key).and_then(|q| q.pop_front()) {
            out.extend_from_slice(&item);
        }
    }
    out.extend_from_slice(b"END\r\n");
}

/// A bounded metric label for a forwarded memcached command.
fn command_label(name: &[u8]) -> &'static str {
    const NAMES: &[&str] = &[
        "get",
        "gets",
        "gat",
        "gats",
        "set",
        "add",
        "replace",
        "append",
        "prepend",
        "cas",
        "incr",
        "decr",
        "touch",
        "delete",
        "flush_all",
        "verbosity",
        "version",
        "mg",
        "ms",
        "md",
        "ma",
        "me",
    ];
    NAMES
        .iter()
        .find(|n| n.as_bytes() == name)
        .copied()
        .unwrap_or("other")
}

const PERMISSION_DENIED: &[u8] = b"CLIENT_ERROR permission denied\r\n";

/// An HTTP request on the memcached port: logged and counted as a security event.
fn cross_protocol(ctx: &Context, who: &Who) {
    tracing::warn!(listener = %ctx.listener, peer = %who.peer, "possible cross-protocol attack: an HTTP request on the memcached port; connection closed");
    let user = who.user.as_ref().map_or("(none)", |u| u.name.as_str());
    ctx.security.metrics.security_event(
        SecurityEvent::new(
            "cross_protocol",
            "toplevel",
            "HTTP".into(),
            user,
            &ctx.listener,
            format!("addr={} laddr=cachegate:{}", who.peer, ctx.listener),
        ),
        who.user.is_some(),
    );
}

/// Whether the session's user may not run `req`; a refusal is counted and logged.
fn refused(ctx: &Context, who: &Who, req: &McRequest) -> bool {
    let Some(user) = &who.user else {
        return false;
    };
    for call in acl_calls(req) {
        if let Err(denied) = user.check(&call) {
            let (reason, object) = match denied {
                // Name the memcached command, not the Redis one it was checked as.
                Denied::Command(_) => ("command", String::from_utf8_lossy(req.name()).into_owned()),
                other => other.event(),
            };
            let client_info = format!(
                "addr={} laddr=cachegate:{} user={}",
                who.peer, ctx.listener, user.name
            );
            ctx.security.metrics.security_event(
                SecurityEvent::new(
                    reason,
                    "toplevel",
                    object,
                    &user.name,
                    &ctx.listener,
                    client_info,
                ),
                true,
            );
            return true;
        }
    }
    false
}

/// memcached commands as the Redis calls with the same meaning, so that one ACL model (its
/// categories, and key patterns with read/write) covers both protocols. One call per key.
fn acl_calls(req: &McRequest) -> Vec<Vec<Bytes>> {
    let call = |parts: &[&'static str], key: Option<&Bytes>| -> Vec<Bytes> {
        let mut v: Vec<Bytes> = parts
            .iter()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect();
        if let Some(k) = key {
            v.insert(1, k.clone());
        }
        v
    };
    let key = req.route_key.as_ref();
    let name: &[u8] = req.name();
    match (req.cmd, name) {
        (Cmd::Get, _) => req.keys().iter().map(|k| call(&["get"], Some(k))).collect(),
        (Cmd::GetAndTouch, _) => req
            .keys()
            .iter()
            .map(|k| call(&["getex"], Some(k)))
            .collect(),
        (Cmd::Storage, b"append" | b"prepend") => vec![call(&["append", "v"], key)],
        (Cmd::Storage, _) | (Cmd::MetaSet, _) => vec![call(&["set", "v"], key)],
        (Cmd::KeyLine, b"delete") | (Cmd::Meta, b"md") => vec![call(&["del"], key)],
        (Cmd::KeyLine, b"touch") => vec![call(&["expire", "1"], key)],
        (Cmd::KeyLine, _) | (Cmd::Meta, b"ma") => vec![call(&["incrby", "1"], key)],
        (Cmd::Meta, b"me") => vec![call(&["debug", "object"], None)],
        // mg reads, but `T` changes the TTL and `N` creates the item: writes, checked as such.
        (Cmd::Meta, _) => {
            let flag = |f: u8| req.tokens.iter().skip(2).any(|t| t.first() == Some(&f));
            let mut calls = vec![call(&["get"], key)];
            if flag(b'T') {
                calls.push(call(&["getex"], key));
            }
            if flag(b'N') {
                calls.push(call(&["set", "v"], key));
            }
            calls
        }
        (Cmd::Broadcast, b"flush_all") => vec![call(&["flushall"], None)],
        (Cmd::Broadcast, _) => vec![call(&["config", "set", "loglevel", "notice"], None)],
        (Cmd::Stats, _) => vec![call(&["info"], None)],
        // Asking the version, the no-op and leaving are open to every user.
        (Cmd::Version | Cmd::MetaNoop | Cmd::Quit | Cmd::Empty, _) => Vec::new(),
    }
}

/// `stats` is answered by cachegate: the proxy's own figures and each node's state. Other
/// `stats` forms would mean a different thing on every node and are refused.
fn stats(ctx: &Context, req: &McRequest) -> Bytes {
    if req.tokens.len() > 1 {
        return Bytes::from_static(crate::protocol::memcached::ERROR);
    }
    let now = crate::deadline::unix_now() as u64;
    let mut s = String::new();
    let mut stat = |k: &str, v: &dyn std::fmt::Display| s.push_str(&format!("STAT {k} {v}\r\n"));
    stat("pid", &std::process::id());
    stat("uptime", &ctx.started.elapsed().as_secs());
    stat("time", &now);
    stat(
        "version",
        &format!("cachegate-{}", env!("CARGO_PKG_VERSION")),
    );
    stat(
        "curr_connections",
        &ctx.curr_connections.load(Ordering::Relaxed),
    );
    stat(
        "total_connections",
        &ctx.total_connections.load(Ordering::Relaxed),
    );
    stat("nodes", &ctx.nodes.len());
    for (i, node) in ctx.nodes.iter().enumerate() {
        let state = if node.ejected().is_some() {
            "ejected"
        } else if node.pool.is_healthy() {
            "up"
        } else {
            "down"
        };
        stat(&format!("node_{i}_address"), &node.label);
        stat(&format!("node_{i}_state"), &state);
    }
    s.push_str("END\r\n");
    Bytes::from(s)
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
            },
            superseded: CancellationToken::new(),
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
