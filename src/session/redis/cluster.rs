//! A cluster listener's stateless commands: each goes to the primary serving its keys' hash
//! slot; a multi-key command whose keys span slots is split and its replies merged where the
//! result is well defined (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) and refused with
//! `CROSSSLOT` otherwise, as Redis Cluster does; keyless commands are defined one by one
//! (DBSIZE summed, KEYS joined, FLUSHALL everywhere, SCAN node after node, ...).
//!
//! A request is sent at once, in the order the client sent it (so that a session's commands to
//! one node run in that order); the reply side waits for the answer and follows the cluster's
//! redirections there: `MOVED` (the map is updated and the command sent where it now lives),
//! `ASK` (`ASKING` and the command to the importing node, the map left alone), `TRYAGAIN` and
//! `CLUSTERDOWN` (sent again after a short, growing pause). Each of those replies means the
//! node did not run the command, and only those are retried; so is a request that never left
//! because its node could not be reached. Retries are bounded: after them the client gets the
//! cluster's last answer.

use super::*;
use crate::protocol::resp::frame_len;
use crate::session::admission::Command;
use crate::upstream::cluster::slot::{key_slot, SLOTS};
use crate::upstream::cluster::{Cluster, Node};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Sends of one request at most, redirections included.
const MAX_TRIES: u32 = 6;
/// The first pause before a request is sent again (doubled each time).
const BACKOFF: Duration = Duration::from_millis(50);
/// SCAN cursors carry the node's position in their low bits.
const NODE_BITS: u32 = 14;

/// What waits for a routed command's reply: sends again where the cluster says, merges parts.
pub(super) type Settling = Pin<Box<dyn Future<Output = Result<Bytes, SharedError>> + Send>>;

const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
const NOT_SERVED: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";
/// What a client that knows nothing of clusters gets for a redirection cachegate does not
/// follow: something it can act on, without the nodes' addresses.
/// A script's reply that reads as a redirection: it may have run, so nothing invites a retry.
const SCRIPT_MOVED: &[u8] = b"-ERR cachegate: the script's reply reads as a cluster redirection (its keys' slot may be moving); it may have run, so it was not run again\r\n";
pub(super) const MOVING: &[u8] =
    b"-TRYAGAIN cachegate: the key's slot is moving between cluster nodes; try again\r\n";

/// How replies from several nodes become the one the client gets. An error from any part is
/// the reply (the first one, in key order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Merge {
    /// MGET: each part's values go back to their keys' positions.
    Positions(Vec<Vec<usize>>),
    /// Integer replies added up (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    Sum,
    /// `+OK` when every part said so (MSET, FLUSHALL, FLUSHDB).
    Ok,
    /// Arrays joined (KEYS).
    Concat,
    /// The first part's reply (SCRIPT LOAD: the same SHA from every node).
    First,
    /// INFO keyspace: each database's keys and expiring keys added up.
    Keyspace,
}

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// The node serving this slot; `None`: keyless, any node.
    One(Option<u16>),
    /// One request per slot, replies merged.
    Split(Vec<(u16, Vec<Bytes>)>, Merge),
    /// The same request to every primary, replies merged.
    All(Merge),
    /// SCAN, node after node.
    Scan,
    /// RANDOMKEY from the nodes in turn until one has a key.
    RandomKey,
    /// Answered here.
    Answer(Bytes),
}

/// Keys (argument positions) grouped by slot, in the order slots first appear.
fn by_slot(args: &[Bytes], positions: impl Iterator<Item = usize>) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    // Where each slot's group is: linear in the keys, however many slots they span.
    let mut at: rustc_hash::FxHashMap<u16, usize> = Default::default();
    for i in positions {
        let slot = key_slot(&args[i]);
        let g = *at.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// Where `args` goes on a cluster listener. `command`: admission's table entry.
pub(super) fn route(command: Command, args: &[Bytes]) -> Route {
    let Some((name, info)) = command.0 else {
        return Route::One(None);
    };
    let split = |step: usize, merge: fn(Vec<Vec<usize>>) -> Merge| {
        if args.len() < 2 || !(args.len() - 1).is_multiple_of(step) {
            // Let the node answer the arity error.
            return Route::One(args.get(1).map(|k| key_slot(k)));
        }
        let groups = by_slot(args, (1..args.len()).step_by(step));
        if groups.len() == 1 {
            return Route::One(Some(groups[0].0));
        }
        let positions = groups
            .iter()
            .map(|(_, keys)| keys.iter().map(|&i| (i - 1) / step).collect())
            .collect();
        let parts = groups
            .into_iter()
            .map(|(slot, keys)| {
                let mut part = Vec::with_capacity(1 + keys.len() * step);
                part.push(args[0].clone());
                for i in keys {
                    part.extend(args[i..i + step].iter().cloned());
                }
                (slot, part)
            })
            .collect();
        Route::Split(parts, merge(positions))
    };
    match name {
        "mget" => split(1, Merge::Positions),
        "mset" => split(2, |_| Merge::Ok),
        "del" | "unlink" | "exists" | "touch" => split(1, |_| Merge::Sum),
        "dbsize" => Route::All(Merge::Sum),
        "keys" => Route::All(Merge::Concat),
        "flushall" | "flushdb" => Route::All(Merge::Ok),
        "script|load" | "script|flush" | "function|load" | "function|delete" | "function|flush"
        | "function|restore" => Route::All(Merge::First),
        "scan" => Route::Scan,
        "randomkey" => Route::RandomKey,
        "cluster|keyslot" if args.len() == 3 => {
            Route::Answer(Bytes::from(format!(":{}\r\n", key_slot(&args[2]))))
        }
        "cluster|info" => Route::One(None),
        // Answered here, as every node would answer them.
        "ping" if args.len() == 1 => Route::Answer(Bytes::from_static(b"+PONG\r\n")),
        "ping" | "echo" if args.len() == 2 => Route::Answer(reply::bulk(&args[1])),
        "info" if args.len() == 2 && crate::auth::commands::is_word(&args[1], b"keyspace") => {
            Route::All(Merge::Keyspace)
        }
        "readonly" | "readwrite" | "asking" | "migrate" => Route::Answer(reply::error(&format!(
            "cachegate: '{}' is not available: this endpoint is one Redis in front of a cluster",
            String::from_utf8_lossy(&args[0])
        ))),
        _ if name.starts_with("cluster|") || name == "cluster" => {
            // The cluster's layout names nodes a client must not go around cachegate to.
            Route::Answer(reply::error(&format!(
                "cachegate: 'CLUSTER {}' is not available: this endpoint is one Redis in front of a cluster",
                args.get(1)
                    .map(|a| String::from_utf8_lossy(a).to_uppercase())
                    .unwrap_or_default()
            )))
        }
        _ => {
            let keys = info.keys(name, args);
            let mut slots = keys.iter().map(|k| key_slot(&args[k.index]));
            match slots.next() {
                None => Route::One(None),
                Some(first) if slots.all(|s| s == first) => Route::One(Some(first)),
                Some(_) => Route::Answer(reply::error_line(CROSSSLOT)),
            }
        }
    }
}

/// Sends `bytes` (`frames` commands) on `node`'s shared connection for this session.
async fn send_to(
    node: &Node,
    resp3: bool,
    session: u64,
    bytes: Bytes,
    frames: usize,
) -> oneshot::Receiver<SharedReply> {
    let (tx, rx) = oneshot::channel();
    let pool = if resp3 {
        &node.shared.resp3
    } else {
        &node.shared.resp2
    };
    let owner = crate::budget::Holder::current();
    let queued = match crate::budget::queued(&pool.budget, bytes.len(), owner.clone()) {
        Ok(queued) => queued,
        Err(over) => {
            let _ = tx.send(Err(SharedError::OverBudget(over)));
            return rx;
        }
    };
    // A closed connection task drops the request: its receiver then reads as `Gone`.
    let _ = pool
        .sender(session)
        .send(SharedRequest {
            bytes,
            frames: Frames::Resp(frames),
            reply: tx,
            owner,
            queued,
        })
        .await;
    rx
}

/// What a node's reply asks of cachegate.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Moved(u16, String),
    Ask(u16, String),
    /// TRYAGAIN, CLUSTERDOWN: not run; send again after a pause.
    Again,
}

/// A redirection, if `reply` is one (a single error line).
fn redirect(reply: &[u8]) -> Option<Redirect> {
    let line = reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let kind = words.next()?;
    if matches!(kind, "TRYAGAIN" | "CLUSTERDOWN") {
        return Some(Redirect::Again);
    }
    let moved = match kind {
        "MOVED" => Redirect::Moved,
        "ASK" => Redirect::Ask,
        _ => return None,
    };
    let slot = words
        .next()?
        .parse()
        .ok()
        .filter(|&s: &u16| (s as usize) < SLOTS)?;
    Some(moved(slot, words.next()?.to_string()))
}

/// A redirection's `host:port`; an empty host (`:6380`) is the host of the node that said it.
fn target(address: &str, from: Option<&Node>) -> String {
    let Some((host, port)) = address.rsplit_once(':') else {
        return address.to_string();
    };
    let host = match (host, from) {
        ("", Some(node)) => node
            .address
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or_default()
            .to_string(),
        // Redis writes an IPv6 endpoint bare (`::1:6380`); the layout brackets it.
        (h, _) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        (h, _) => h.to_string(),
    };
    format!("{host}:{port}")
}

/// The node serving `slot` now (any primary for a keyless command).
fn current(cluster: &Cluster, slot: Option<u16>) -> Option<Arc<Node>> {
    let map = cluster.map();
    match slot {
        Some(slot) => map.node(slot).cloned(),
        None => map.primaries.first().cloned(),
    }
}

/// One command's reply, following the cluster's redirections. `sent`: the request already on
/// its way to `node` (`None`: no node could be chosen; it is sent once one can).
struct Attempt {
    _outstanding: Outstanding,
    cluster: Arc<Cluster>,
    /// Whether the cluster's redirections are followed: not for scripts, whose own error
    /// replies can read like one after they ran (a retry would run them twice).
    follows: bool,
    resp3: bool,
    session: u64,
    slot: Option<u16>,
    bytes: Bytes,
    node: Option<Arc<Node>>,
    sent: Option<oneshot::Receiver<SharedReply>>,
}

/// A part's reply, with its share of the process's buffer budget while it is held.
type Charged = (Bytes, Option<crate::budget::Charge>);

impl Attempt {
    async fn settle(self) -> Result<Bytes, SharedError> {
        self.settle_charged().await.map(|(bytes, _)| bytes)
    }

    /// The reply, charged to the process's buffer budget until the caller lets it go.
    async fn settle_charged(mut self) -> Result<Charged, SharedError> {
        // A node but nothing sent: deferred until everything the session sent before it has
        // been answered; it goes out now, to the slot's node as the map now says.
        if self.node.is_some() && self.sent.is_none() {
            self.node = current(&self.cluster, self.slot);
            if let Some(node) = &self.node {
                let bytes = self.bytes.clone();
                self.sent = Some(send_to(node, self.resp3, self.session, bytes, 1).await);
            }
        }
        let mut asking = false;
        let mut pause = BACKOFF;
        for attempt in 1..=MAX_TRIES {
            let last = attempt == MAX_TRIES;
            let outcome = match self.sent.take() {
                Some(rx) => rx.await.unwrap_or(Err(SharedError::Gone)),
                None if last => return Ok((Bytes::from_static(NOT_SERVED), None)),
                None => Err(SharedError::Unavailable(Arc::new(
                    crate::error::UpstreamError::NoNode,
                ))),
            };
            match outcome {
                Ok(replies) => {
                    let (mut bytes, charge) = replies.into_parts();
                    if asking {
                        // ASKING's own +OK first.
                        if let Ok(Some((len, _))) = frame_len(&bytes) {
                            let _ = bytes.split_to(len);
                        }
                    }
                    asking = false;
                    let redirect = redirect(&bytes);
                    // Only a redirection of the request's own slot is the cluster's: any other
                    // (and any from a script, which can return an error reading like one after
                    // it ran) is not followed, and not shown (it names internal addresses).
                    let own = match &redirect {
                        Some(Redirect::Moved(s, _) | Redirect::Ask(s, _)) => {
                            self.follows && self.slot == Some(*s)
                        }
                        Some(Redirect::Again) => self.follows,
                        None => true,
                    };
                    match redirect {
                        None => return Ok((bytes, Some(charge))),
                        Some(Redirect::Moved(..) | Redirect::Ask(..)) if last || !own => {
                            self.cluster.stale();
                            return Ok((
                                Bytes::from_static(if self.follows {
                                    MOVING
                                } else {
                                    SCRIPT_MOVED
                                }),
                                None,
                            ));
                        }
                        Some(_) if last || !own => return Ok((bytes, Some(charge))),
                        Some(Redirect::Moved(_, ref to) | Redirect::Ask(_, ref to))
                            if !self.cluster.knows(&target(to, self.node.as_deref())) =>
                        {
                            // Not a node of the layout: gone to once a refresh lists it.
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                            self.node = current(&self.cluster, self.slot);
                        }
                        Some(Redirect::Moved(slot, to)) => {
                            self.cluster.count("moved");
                            let to = target(&to, self.node.as_deref());
                            self.cluster.moved(slot, &to);
                            self.node = self.cluster.node_at(&to).ok();
                        }
                        Some(Redirect::Ask(_, to)) => {
                            self.cluster.count("ask");
                            let to = target(&to, self.node.as_deref());
                            self.node = self.cluster.node_at(&to).ok();
                            asking = true;
                        }
                        Some(Redirect::Again) => {
                            self.cluster.count("again");
                            self.cluster.stale();
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                            self.node = current(&self.cluster, self.slot);
                        }
                    }
                }
                // Never sent: safe to send again once the map has been read again.
                Err(SharedError::Unavailable(_)) if !last => {
                    self.cluster.count("again");
                    self.cluster.stale();
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    self.node = current(&self.cluster, self.slot);
                }
                Err(e) => {
                    if e.upstream_fault() {
                        self.cluster.stale();
                    }
                    return Err(e);
                }
            }
            if let Some(node) = &self.node {
                self.sent = Some(if asking {
                    let mut both = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
                    both.extend_from_slice(&self.bytes);
                    send_to(node, self.resp3, self.session, both.freeze(), 2).await
                } else {
                    send_to(node, self.resp3, self.session, self.bytes.clone(), 1).await
                });
            }
        }
        Ok((Bytes::from_static(NOT_SERVED), None))
    }
}

/// A session's routed commands not yet answered, counted by their attempts.
struct Outstanding(Arc<AtomicUsize>);

impl Outstanding {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Outstanding(count.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What keeps a session's commands to one slot in the order it sent them when the map
/// changes under them: a command sent at once to the slot's node goes out before the answers
/// to earlier ones have come, and those may be redirected (and sent again, later) to another
/// node. So once a slot's commands would go to a different node than the session's earlier,
/// still unanswered ones, that command and every one after it wait for their turn (the reply
/// side sends them as it reaches them), until nothing is outstanding.
#[derive(Default)]
pub(super) struct Order {
    outstanding: Arc<AtomicUsize>,
    /// Where each slot's unanswered commands went (the node's tag).
    sent_to: rustc_hash::FxHashMap<u16, u16>,
    deferring: bool,
}

impl Order {
    /// Whether a command for `slot` to `node` goes out now; false: when its turn comes.
    fn sends_now(&mut self, slot: Option<u16>, node: Option<&Arc<Node>>) -> bool {
        if self.outstanding.load(Ordering::Relaxed) == 0 {
            self.sent_to.clear();
            self.deferring = false;
        }
        let (Some(slot), Some(node)) = (slot, node) else {
            return !self.deferring;
        };
        if self.deferring || self.sent_to.get(&slot).is_some_and(|&t| t != node.tag) {
            self.deferring = true;
            return false;
        }
        self.sent_to.insert(slot, node.tag);
        true
    }
}

fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

fn unexpected(reply: &[u8]) -> Bytes {
    reply::error(&format!(
        "cachegate: a cluster node gave an unexpected reply ({})",
        crate::upstream::conn::printable(reply)
    ))
}

/// A bulk (or RESP3 verbatim) string's text.
fn bulk_text(reply: &[u8]) -> Option<String> {
    let end = memchr::memchr(b'\n', reply)?;
    if !matches!(reply.first(), Some(b'$' | b'=')) {
        return None;
    }
    let body = reply.get(end + 1..reply.len().checked_sub(2)?)?;
    let body = match reply[0] {
        b'=' => body.get(4..)?,
        _ => body,
    };
    Some(String::from_utf8_lossy(body).into_owned())
}

/// Several nodes' `INFO keyspace` as one: per database, keys and expiring keys added up, and
/// the average TTL weighted by each node's expiring keys.
fn keyspace(texts: &[String]) -> String {
    // db -> (keys, expires, sum of avg_ttl * expires)
    let mut dbs: std::collections::BTreeMap<u64, (u64, u64, u128)> = Default::default();
    for text in texts {
        for line in text.lines() {
            let Some((db, fields)) = line.trim().split_once(':') else {
                continue;
            };
            let Some(n) = db.strip_prefix("db").and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let entry = dbs.entry(n).or_default();
            entry.0 += field("keys");
            entry.1 += field("expires");
            entry.2 += field("avg_ttl") as u128 * field("expires") as u128;
        }
    }
    let mut out = String::from("# Keyspace\r\n");
    for (db, (keys, expires, ttl)) in dbs {
        let avg = if expires == 0 {
            0
        } else {
            ttl / expires as u128
        };
        out.push_str(&format!(
            "db{db}:keys={keys},expires={expires},avg_ttl={avg}\r\n"
        ));
    }
    out
}

/// The client's one reply from the parts' replies, in part order.
/// The parts merged, or the error a single node's reply past `max_reply` gets.
fn merged_within(how: &Merge, parts: Vec<Bytes>, max_reply: usize) -> Result<Bytes, SharedError> {
    if parts.iter().map(Bytes::len).sum::<usize>() > max_reply {
        return Err(SharedError::ReplyTooLarge(max_reply));
    }
    Ok(merge(how, parts))
}

fn merge(merge: &Merge, parts: Vec<Bytes>) -> Bytes {
    if let Some(error) = parts.iter().find(|p| is_error(p)) {
        return error.clone();
    }
    match merge {
        Merge::First => parts.into_iter().next().unwrap_or_default(),
        Merge::Keyspace => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in &parts {
                match bulk_text(p) {
                    Some(text) => texts.push(text),
                    None => return unexpected(p),
                }
            }
            reply::bulk(keyspace(&texts).as_bytes())
        }
        Merge::Ok => match parts.iter().find(|p| !p.starts_with(b"+OK\r\n")) {
            Some(other) => unexpected(other),
            None => Bytes::from_static(reply::OK),
        },
        Merge::Sum => {
            let mut total: i64 = 0;
            for p in &parts {
                let n = p
                    .strip_prefix(b":")
                    .and_then(|n| n.strip_suffix(b"\r\n"))
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| n.parse::<i64>().ok());
                match n {
                    Some(n) => total = total.saturating_add(n),
                    None => return unexpected(p),
                }
            }
            Bytes::from(format!(":{total}\r\n"))
        }
        Merge::Concat => {
            let mut all = Vec::new();
            for p in &parts {
                match crate::protocol::resp::elements(p) {
                    Some(items) => all.extend(items),
                    None => return unexpected(p),
                }
            }
            reply::array(all)
        }
        Merge::Positions(positions) => {
            let total: usize = positions.iter().map(Vec::len).sum();
            let mut slots: Vec<Option<Bytes>> = vec![None; total];
            for (p, places) in parts.iter().zip(positions) {
                match crate::protocol::resp::elements(p) {
                    Some(items) if items.len() == places.len() => {
                        for (item, &at) in items.into_iter().zip(places) {
                            if let Some(slot) = slots.get_mut(at) {
                                *slot = Some(item);
                            }
                        }
                    }
                    _ => return unexpected(p),
                }
            }
            if slots.iter().any(Option::is_none) {
                return unexpected(b"");
            }
            reply::array(slots.into_iter().flatten())
        }
    }
}

/// A SCAN cursor as the client sees it: the node's cursor, then the node's tag (which says
/// which node it is however the layout changes meanwhile).
fn scan_cursor(node: u16, cursor: u64) -> Option<u64> {
    (cursor < 1 << (64 - NODE_BITS)).then_some((cursor << NODE_BITS) | node as u64)
}

/// SCAN's reply from the node tagged `node`, its cursor made the client's: the node's next
/// page, or the first page of `next` (the node that follows in the walk).
fn scan_reply(reply: Bytes, node: u16, next: Option<u16>) -> Bytes {
    if is_error(&reply) {
        return reply;
    }
    let Some(mut items) = crate::protocol::resp::elements(&reply).filter(|i| i.len() == 2) else {
        return unexpected(&reply);
    };
    let cursor = items[0]
        .strip_prefix(b"$")
        .and_then(|b| memchr::memchr(b'\n', b).map(|i| &b[i + 1..]))
        .and_then(|c| c.strip_suffix(b"\r\n"))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    let next = match (cursor, next) {
        (Some(0), Some(next)) => scan_cursor(next, 0),
        (Some(0), None) => Some(0),
        (Some(c), _) => scan_cursor(node, c),
        (None, _) => None,
    };
    let Some(next) = next else {
        return unexpected(&reply);
    };
    items[0] = reply::bulk(next.to_string().as_bytes());
    reply::array(items)
}

impl RequestSide {
    fn order(&mut self) -> &mut Order {
        self.cluster_order.get_or_insert_with(Default::default)
    }

    /// Where one request of a cluster command goes, and whether it goes now: the slot's node (a
    /// replica of it for `reads`, where there is one; the first primary for a keyless one),
    /// sent at once unless an earlier write of the session to that slot is still being placed
    /// (then the reply side sends it in its turn). Reads from a replica are not ordered against
    /// writes anyway: not tracked.
    async fn place_request(
        &mut self,
        map: &crate::upstream::cluster::Map,
        slot: Option<u16>,
        reads: bool,
        bytes: &Bytes,
    ) -> (Option<Arc<Node>>, Option<oneshot::Receiver<SharedReply>>) {
        let node = match slot {
            Some(slot) if reads => map.replica(slot, self.id).or_else(|| map.node(slot)),
            Some(slot) => map.node(slot),
            None => map.primaries.first(),
        }
        .cloned();
        let tracked = if reads { None } else { slot };
        let now = self.order().sends_now(tracked, node.as_ref());
        let sent = match &node {
            Some(n) if now => Some(send_to(n, self.resp3, self.id, bytes.clone(), 1).await),
            _ => None,
        };
        (node, sent)
    }

    /// Sends a stateless command of a cluster listener where its keys live; the reply side
    /// waits for the answer (and follows redirections) in the command's turn.
    pub(super) async fn forward_cluster(
        &mut self,
        cluster: Arc<Cluster>,
        command: Command,
        args: &[Bytes],
        raw: Option<&Bytes>,
        rewrite: Option<Rewrite>,
    ) -> Result<Flow, SessionError> {
        let route = route(command, args);
        // One reading of the map for the whole command.
        let map = cluster.map();
        // The in-flight allowance, taken before anything is sent: one per request it makes.
        let requests = match &route {
            Route::Answer(_) => 0,
            Route::Split(parts, _) => parts.len(),
            Route::All(_) => map.primaries.len(),
            _ => 1,
        };
        let permits = self.take_in_flight(requests, self.resp3).await?;
        let encode = |args: &[Bytes]| {
            let mut out = BytesMut::new();
            encode_command(&mut out, args.iter().map(|a| &a[..]));
            out.freeze()
        };
        let (resp3, session) = (self.resp3, self.id);
        // With `read_from_replicas`, a read-only command goes to a replica of its slot.
        // (Not TOUCH: it is flagged read-only, but what it updates is the primary's LRU; nor
        // the read-only script commands: scripts are loaded on primaries.)
        let script = runs_script(&args[0]);
        let reads = cluster.reads_from_replicas()
            && !script
            && command.0.is_some_and(|(name, info)| {
                name != "touch" && info.flags.iter().any(|f| f == "readonly")
            });
        let follows = !script;
        let outstanding = self
            .cluster_order
            .get_or_insert_with(Default::default)
            .outstanding
            .clone();
        let attempt = |slot: Option<u16>,
                       bytes: Bytes,
                       (node, sent): (
            Option<Arc<Node>>,
            Option<oneshot::Receiver<SharedReply>>,
        )| Attempt {
            _outstanding: Outstanding::new(&outstanding),
            cluster: cluster.clone(),
            follows,
            resp3,
            session,
            slot,
            bytes,
            node,
            sent,
        };
        let settling: Settling = match route {
            Route::Answer(reply) => {
                if is_error(&reply) {
                    self.transaction.refuse();
                }
                self.local(reply).await?;
                return Ok(Flow::Continue);
            }
            Route::One(slot) => {
                let bytes = raw.cloned().unwrap_or_else(|| encode(args));
                let placed = self.place_request(&map, slot, reads, &bytes).await;
                Box::pin(attempt(slot, bytes, placed).settle())
            }
            Route::Split(parts, how) => {
                let mut attempts = Vec::with_capacity(parts.len());
                for (slot, part) in parts {
                    let bytes = encode(&part);
                    let placed = self.place_request(&map, Some(slot), reads, &bytes).await;
                    attempts.push(attempt(Some(slot), bytes, placed).settle_charged());
                }
                let max_reply = self.ctx.limits.max_reply_bytes;
                Box::pin(async move {
                    let mut replies = Vec::with_capacity(attempts.len());
                    // Each part stays charged to the process's buffer budget until the merge
                    // (a part the budget refuses fails the command), and the whole is held to
                    // `max_reply_bytes` as a single node's reply is.
                    let mut charges = Vec::with_capacity(attempts.len());
                    for r in futures_util::future::join_all(attempts).await {
                        let (bytes, charge) = r?;
                        replies.push(bytes);
                        charges.push(charge);
                    }
                    merged_within(&how, replies, max_reply)
                })
            }
            Route::All(how) => {
                let bytes = raw.cloned().unwrap_or_else(|| encode(args));
                if map.primaries.is_empty() {
                    self.in_flight.add_permits(permits as usize);
                    self.local(Bytes::from_static(NOT_SERVED)).await?;
                    return Ok(Flow::Continue);
                }
                // Sent at once, or in turn behind commands that wait for theirs.
                let mut waits = Vec::with_capacity(map.primaries.len());
                let now = self.order().sends_now(None, None);
                if now {
                    for node in &map.primaries {
                        waits.push(send_to(node, resp3, session, bytes.clone(), 1).await);
                    }
                }
                let nodes = map.primaries.clone();
                let guard = Outstanding::new(&outstanding);
                let max_reply = self.ctx.limits.max_reply_bytes;
                Box::pin(async move {
                    let _guard = guard;
                    if !now {
                        for node in &nodes {
                            waits.push(send_to(node, resp3, session, bytes.clone(), 1).await);
                        }
                    }
                    let mut replies = Vec::with_capacity(waits.len());
                    let mut charges = Vec::with_capacity(waits.len());
                    for rx in waits {
                        let (bytes, charge) =
                            rx.await.unwrap_or(Err(SharedError::Gone))?.into_parts();
                        replies.push(bytes);
                        charges.push(charge);
                    }
                    merged_within(&how, replies, max_reply)
                })
            }
            Route::Scan => {
                let walk = map.walk();
                let cursor = args.get(1).and_then(|c| std::str::from_utf8(c).ok());
                let Some(cursor) = cursor.and_then(|c| c.parse::<u64>().ok()) else {
                    self.in_flight.add_permits(permits as usize);
                    self.local(reply::error("invalid cursor")).await?;
                    return Ok(Flow::Continue);
                };
                let (tag, mut node_cursor) = (
                    (cursor & ((1 << NODE_BITS) - 1)) as u16,
                    cursor >> NODE_BITS,
                );
                // The node the cursor names, by its tag; if it is no longer a primary (a
                // failover), the next one in the walk from its start: keys may come twice,
                // as SCAN allows, but no node is skipped.
                let at = match cursor {
                    0 => (!walk.is_empty()).then_some(0),
                    _ => walk.iter().position(|(t, _)| *t == tag).or_else(|| {
                        node_cursor = 0;
                        walk.iter().position(|(t, _)| *t > tag)
                    }),
                };
                let Some(at) = at else {
                    let reply = if walk.is_empty() {
                        Bytes::from_static(NOT_SERVED)
                    } else {
                        Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n")
                    };
                    self.in_flight.add_permits(permits as usize);
                    self.local(reply).await?;
                    return Ok(Flow::Continue);
                };
                let mut scan = args.to_vec();
                scan[1] = Bytes::from(node_cursor.to_string());
                let (this, node) = walk[at].clone();
                let next = walk.get(at + 1).map(|(s, _)| *s);
                let bytes = encode(&scan);
                let sent = match self.order().sends_now(None, None) {
                    true => Some(send_to(&node, resp3, session, bytes.clone(), 1).await),
                    false => None,
                };
                let guard = Outstanding::new(&outstanding);
                Box::pin(async move {
                    let _guard = guard;
                    let rx = match sent {
                        Some(rx) => rx,
                        None => send_to(&node, resp3, session, bytes, 1).await,
                    };
                    let reply = rx.await.unwrap_or(Err(SharedError::Gone))?.bytes;
                    Ok(scan_reply(reply, this, next))
                })
            }
            Route::RandomKey => {
                let nodes = map.primaries.clone();
                let bytes = encode(args);
                let start = self.id as usize;
                Box::pin(async move {
                    let mut reply = Bytes::from_static(NOT_SERVED);
                    for i in 0..nodes.len() {
                        let node = &nodes[(start + i) % nodes.len()];
                        let rx = send_to(node, resp3, session, bytes.clone(), 1).await;
                        reply = rx.await.unwrap_or(Err(SharedError::Gone))?.bytes;
                        if !matches!(&reply[..], b"$-1\r\n" | b"_\r\n") {
                            break;
                        }
                    }
                    Ok(reply)
                })
            }
        };
        let mut labels = Labels::new();
        labels.push(self.label);
        self.queue_slot(Slot::Shared(SharedWait {
            reply: Awaited::Routed(settling),
            rewrite,
            permits,
            labels,
            sent: Instant::now(),
        }))
        .await?;
        Ok(Flow::Continue)
    }
}

/// Where a command that needs a connection of the session's own runs on a cluster listener.
pub(super) enum Place {
    /// Pinned to this node.
    Node(Arc<Node>),
    /// Answered here (a refusal, or MULTI held until a key names its node).
    Answer(Bytes),
}

/// What a cluster listener refuses whether or not the session is pinned: connection state
/// that cannot follow a session across nodes, databases other than 0, and what could not run
/// on a shared connection (unknown commands, SCRIPT DEBUG, ...).
fn cluster_refusal(kind: Kind, sharing: Sharing, args: &[Bytes]) -> Option<Bytes> {
    let refused = match kind {
        Kind::Select if args.len() == 2 && &args[1][..] == b"0" => false,
        Kind::Select => return Some(reply::error("SELECT is not allowed in cluster mode")),
        Kind::Multi
        | Kind::Exec
        | Kind::Discard
        | Kind::Watch
        | Kind::Unwatch
        | Kind::Blocking
        | Kind::Subscribe
        | Kind::Unsubscribe => false,
        Kind::Client => !matches!(
            client_subcommand(args).as_deref(),
            Some(b"SETNAME" | b"GETNAME" | b"SETINFO")
        ),
        Kind::Stateful => true,
        _ => sharing != Sharing::Shared,
    };
    refused.then(|| {
        reply::error(&format!(
            "cachegate: '{}' is not supported on a Redis Cluster listener",
            String::from_utf8_lossy(&args[0])
        ))
    })
}

/// Whether a command has as many arguments as the table says (for what cachegate answers
/// itself instead of a node).
fn arity_fits(command: Command, args: &[Bytes]) -> bool {
    command
        .0
        .is_none_or(|(_, info)| sharing::arity_fits(info.arity, args.len()))
}

fn spans_nodes(args: &[Bytes], while_: &str) -> Bytes {
    reply::error(&format!(
        "cachegate: '{}' spans the cluster's nodes and cannot run {while_}",
        String::from_utf8_lossy(&args[0])
    ))
}

impl RequestSide {
    /// The node a stateful command pins the session to: the one serving its keys (WATCH,
    /// blocking commands, SSUBSCRIBE), any for keyless ones (SUBSCRIBE, PSUBSCRIBE). MULTI
    /// waits for its first key; what needs state no node-pinned session can keep is refused.
    pub(super) fn cluster_place(
        &mut self,
        kind: Kind,
        sharing: Sharing,
        command: Command,
        args: &[Bytes],
    ) -> Place {
        let Some(cluster) = self.ctx.cluster.clone() else {
            return Place::Answer(reply::error("cachegate: not a cluster listener"));
        };
        let answer = |text: &str| Place::Answer(reply::error(text));
        if !arity_fits(command, args) {
            return Place::Answer(reply::wrong_arity(&args[0]));
        }
        match kind {
            Kind::Multi => {
                self.transaction.begin_held();
                Place::Answer(Bytes::from_static(reply::OK))
            }
            Kind::Exec => answer("EXEC without MULTI"),
            Kind::Discard => answer("DISCARD without MULTI"),
            Kind::Unwatch => Place::Answer(Bytes::from_static(reply::OK)),
            _ => {
                if let Some(refusal) = cluster_refusal(kind, sharing, args) {
                    return Place::Answer(refusal);
                }
                // WATCH, blocking commands, subscriptions, and a command that runs as another
                // backend user (a script of a mirrored user, a renamed command): the node of
                // their keys, any for keyless ones.
                match route(command, args) {
                    Route::One(slot) => match current(&cluster, slot) {
                        Some(node) => Place::Node(node),
                        None => Place::Answer(Bytes::from_static(NOT_SERVED)),
                    },
                    Route::Answer(reply) if is_error(&reply) => Place::Answer(reply),
                    Route::Answer(_) => match current(&cluster, None) {
                        Some(node) => Place::Node(node),
                        None => Place::Answer(Bytes::from_static(NOT_SERVED)),
                    },
                    _ => Place::Answer(spans_nodes(args, "on one node")),
                }
            }
        }
    }

    /// While pinned to a node: a refusal for a command that node does not serve (a key of
    /// another node, a command that spans nodes). Inside MULTI that is CROSSSLOT, as a node
    /// answers a transaction that names another slot.
    pub(super) fn cluster_fits(
        &self,
        kind: Kind,
        sharing: Sharing,
        command: Command,
        args: &[Bytes],
    ) -> Option<Bytes> {
        let cluster = self.ctx.cluster.as_ref()?;
        let pinned = self.pin_node.as_ref()?;
        if let Some(refusal) = cluster_refusal(kind, sharing, args) {
            return Some(refusal);
        }
        match route(command, args) {
            Route::One(None) => None,
            Route::One(Some(slot)) => {
                if cluster
                    .map()
                    .node(slot)
                    .is_some_and(|n| n.address == pinned.address)
                {
                    None
                } else if self.transaction.is_open() {
                    Some(reply::error_line(CROSSSLOT))
                } else {
                    Some(reply::error(&format!(
                        "cachegate: '{}' names a key of another node than the one this session holds a connection to (for WATCH, a blocking command or subscriptions)",
                        String::from_utf8_lossy(&args[0])
                    )))
                }
            }
            // Refused anywhere; what is answered here (PING, CLUSTER KEYSLOT) the node answers
            // as well, and in its own way for a subscribed connection.
            Route::Answer(reply) => is_error(&reply).then_some(reply),
            _ => Some(spans_nodes(
                args,
                "while this session holds a connection to one node",
            )),
        }
    }

    /// A command while MULTI waits for its first key: keyless ones are queued here (answered
    /// QUEUED); the first key pins the session to its node, where MULTI and the queue are
    /// sent ahead of it; EXEC without any key runs the transaction on any node.
    pub(super) async fn held_multi(
        &mut self,
        kind: Kind,
        command: Command,
        sharing: Sharing,
        want: RunsAs,
        args: &[Bytes],
    ) -> Result<Flow, SessionError> {
        // What could not run on a shared connection (connection state, an unknown command) is
        // not queued either; nor a renamed command that must run as the administrator, which
        // cannot change inside MULTI. Checked as outside a transaction, before anything.
        let transactional = matches!(
            kind,
            Kind::Multi | Kind::Exec | Kind::Discard | Kind::Watch | Kind::Unwatch | Kind::Blocking
        );
        let refusal = if !arity_fits(command, args) {
            Some(reply::wrong_arity(&args[0]))
        } else if let Some(refusal) =
            cluster_refusal(kind, sharing, args).filter(|_| !transactional)
        {
            Some(refusal)
        } else if want == RunsAs::Admin {
            Some(reply::error(
                "cachegate: this command runs as another backend user (a renamed command), which cannot change inside MULTI",
            ))
        } else {
            super::transaction::refused_inside(kind, args).map(|r| reply::error(&r))
        };
        if let Some(refusal) = refusal {
            return self.refused(refusal).await;
        }
        let slot = match kind {
            Kind::Multi => {
                self.local(reply::error("MULTI calls can not be nested"))
                    .await?;
                return Ok(Flow::Continue);
            }
            Kind::Watch => {
                self.local(reply::error("WATCH inside MULTI is not allowed"))
                    .await?;
                return Ok(Flow::Continue);
            }
            Kind::Discard => {
                self.transaction.end();
                self.local(Bytes::from_static(reply::OK)).await?;
                return Ok(Flow::Continue);
            }
            Kind::Exec if self.transaction.is_dirty() => {
                self.transaction.end();
                self.local(Bytes::from_static(reply::EXECABORT)).await?;
                return Ok(Flow::Continue);
            }
            Kind::Exec => None,
            _ => match route(command, args) {
                // Refused anywhere: answered now, and the transaction fails at EXEC.
                Route::Answer(reply) if is_error(&reply) => {
                    return self.refused(reply).await;
                }
                Route::One(None) | Route::Answer(_) => {
                    let mut bytes = BytesMut::new();
                    encode_command(&mut bytes, args.iter().map(|a| &a[..]));
                    if let Err(over) = self
                        .transaction
                        .hold(kind, bytes.freeze(), &self.ctx.budget)
                    {
                        return self.refused(reply::failure(&over)).await;
                    }
                    self.local(Bytes::from_static(b"+QUEUED\r\n")).await?;
                    return Ok(Flow::Continue);
                }
                Route::One(Some(slot)) => Some(slot),
                _ => {
                    return self.refused(spans_nodes(args, "inside MULTI")).await;
                }
            },
        };
        let Some(cluster) = self.ctx.cluster.clone() else {
            return Ok(Flow::Continue);
        };
        let Some(node) = current(&cluster, slot) else {
            return self.refused(Bytes::from_static(NOT_SERVED)).await;
        };
        if let Some(unavailable) = Box::pin(self.pin_to(node)).await? {
            // Nothing was sent: the transaction stays held and fails at EXEC; at EXEC, it
            // ends with this error.
            if kind == Kind::Exec {
                self.transaction.end();
            } else {
                self.transaction.refuse();
            }
            self.local(unavailable).await?;
            return Ok(Flow::Continue);
        }
        // Logged in as the session's backend identity (its mirrored user, whose rules Redis
        // applies inside its scripts) before the transaction begins on the node.
        if let Some(refusal) = Box::pin(self.run_as(want)).await? {
            return self.refused(refusal).await;
        }
        let held = self.transaction.place();
        // MULTI and the queue were answered already: their replies are read, not forwarded.
        self.forward_raw(&[Bytes::from_static(b"MULTI")], Expect::swallowed(1))
            .await?;
        for (kind, queued) in held {
            // What a queued command may do to the connection (a CLIENT SETNAME runs at EXEC
            // or never), as for one queued on a pinned connection.
            self.note_sent(kind, &[]);
            self.send_slot(Slot::Upstream(Expect::swallowed(1))).await?;
            self.wbuf.extend_from_slice(&queued);
        }
        // And the command that placed it (a keyed one, or EXEC).
        self.note_sent(kind, args);
        let mut expect = Expect::one();
        if kind == Kind::Exec {
            self.transaction.end();
            // The confirmations of subscriptions made in it come inside its reply.
            expect.exec = self.pin_state.pubsub();
        }
        self.forward(args, expect).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn route_of(words: &[&str]) -> Route {
        let a = args(words);
        let found = crate::auth::commands::table().lookup(&a);
        route(Command(found), &a)
    }

    #[test]
    fn keys_in_one_slot_go_to_it_and_others_are_crossslot_or_split() {
        let s = key_slot(b"{u}a");
        assert_eq!(route_of(&["GET", "{u}a"]), Route::One(Some(s)));
        assert_eq!(route_of(&["MGET", "{u}a", "{u}b"]), Route::One(Some(s)));
        assert_eq!(route_of(&["TIME"]), Route::One(None));
        assert_eq!(
            route_of(&["PING"]),
            Route::Answer(Bytes::from_static(b"+PONG\r\n"))
        );
        match route_of(&["SUNION", "a", "b"]) {
            Route::Answer(r) => assert!(r.starts_with(b"-CROSSSLOT")),
            other => panic!("{other:?}"),
        }
        match route_of(&["MGET", "a", "b", "{a}c"]) {
            Route::Split(parts, Merge::Positions(pos)) => {
                assert_eq!(parts.len(), 2);
                assert_eq!(pos, vec![vec![0, 2], vec![1]]);
                assert_eq!(parts[0].1, args(&["MGET", "a", "{a}c"]));
            }
            other => panic!("{other:?}"),
        }
        match route_of(&["MSET", "a", "1", "b", "2"]) {
            Route::Split(parts, Merge::Ok) => {
                assert_eq!(parts[0].1, args(&["MSET", "a", "1"]));
                assert_eq!(parts[1].1, args(&["MSET", "b", "2"]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route_of(&["MSET", "a", "1", "b"]),
            Route::One(Some(key_slot(b"a")))
        );
    }

    #[test]
    fn replies_merge_in_key_order_and_errors_win() {
        let pos = Merge::Positions(vec![vec![0, 2], vec![1]]);
        let merged = merge(
            &pos,
            vec![
                Bytes::from_static(b"*2\r\n$1\r\na\r\n$-1\r\n"),
                Bytes::from_static(b"*1\r\n$1\r\nb\r\n"),
            ],
        );
        assert_eq!(&merged[..], b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n");
        let sum = merge(
            &Merge::Sum,
            vec![Bytes::from_static(b":2\r\n"), Bytes::from_static(b":3\r\n")],
        );
        assert_eq!(&sum[..], b":5\r\n");
        let err = merge(
            &Merge::Sum,
            vec![
                Bytes::from_static(b":2\r\n"),
                Bytes::from_static(b"-ERR x\r\n"),
            ],
        );
        assert_eq!(&err[..], b"-ERR x\r\n");
        let odd = merge(
            &pos,
            vec![Bytes::from_static(b"*1\r\n$1\r\na\r\n"), Bytes::new()],
        );
        assert!(odd.starts_with(b"-ERR cachegate"));
    }

    #[test]
    fn keyspaces_add_up() {
        let a = "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=1000\r\n".to_string();
        let b = "# Keyspace\r\ndb0:keys=4,expires=3,avg_ttl=2000\r\n".to_string();
        assert_eq!(
            keyspace(&[a, b, "# Keyspace\r\n".into()]),
            "# Keyspace\r\ndb0:keys=7,expires=4,avg_ttl=1750\r\n"
        );
        let verbatim = b"=15\r\ntxt:# Keyspace\r\n\r\n";
        assert_eq!(bulk_text(verbatim).as_deref(), Some("# Keyspace\r\n"));
        assert!(bulk_text(b":1\r\n").is_none());
    }

    #[test]
    fn redirections_parse_and_others_do_not() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved(3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(b"-ASK 3999 :6381\r\n"),
            Some(Redirect::Ask(3999, ":6381".into()))
        );
        assert_eq!(
            redirect(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::Again)
        );
        assert_eq!(redirect(b"-ERR MOVED\r\n"), None);
        assert_eq!(redirect(b"-MOVED 16384 127.0.0.1:6381\r\n"), None);
        assert_eq!(redirect(b"-ASK 65535 127.0.0.1:6381\r\n"), None);
        assert_eq!(target("::1:6380", None), "[::1]:6380");
        assert_eq!(target("10.0.0.1:6380", None), "10.0.0.1:6380");
        assert_eq!(redirect(b"$5\r\nMOVED\r\n"), None);
    }

    #[test]
    fn scan_cursors_walk_the_nodes_in_turn() {
        let page = |cursor: &str| {
            Bytes::from(format!(
                "*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n",
                cursor.len()
            ))
        };
        // A node's cursor carries its tag; its last page leads to the next node.
        let c = (17u64 << 14) | 5461;
        let r = scan_reply(page("17"), 5461, Some(10923));
        let want = format!("*2\r\n${}\r\n{c}\r\n", c.to_string().len());
        assert!(r.starts_with(want.as_bytes()));
        let r = scan_reply(page("0"), 5461, Some(10923));
        assert!(r.starts_with(b"*2\r\n$5\r\n10923\r\n"));
        let r = scan_reply(page("0"), 10923, None);
        assert!(r.starts_with(b"*2\r\n$1\r\n0\r\n"));
        assert!(scan_reply(page("x"), 0, None).starts_with(b"-ERR cachegate"));
    }
}
