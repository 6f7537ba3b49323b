//! Batch planning: a client's pipelined requests grouped by the node each key lives on (over
//! the ketama ring), sent together, and the replies put back in the client's order; multi-key
//! gets split across nodes and merged.

use super::*;
use crate::budget::Charge;
use crate::crypt::memcached::{McOpen, McPlan};
use crate::protocol::memcached::{Classic, McReplyError, MetaGet};

pub(super) enum Item {
    Local(Bytes),
    Request(McRequest),
}

/// Where a request's reply comes from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    Local(Bytes),
    /// One reply from one node: (node, position in that node's queue).
    Single(usize, usize),
    /// A get whose keys are all on one node: (node, position); the node's reply is the answer.
    Whole(usize, usize),
    /// A one-key get sent as a meta get: (node, position); its reply is turned back.
    Fetch(usize, usize, MetaGet),
    /// A multi-get: one part per node, each (node, position, keys).
    Split(Vec<(usize, usize)>),
    /// flush_all / verbosity: one reply from every node.
    All(Vec<(usize, usize)>),
    Unrouted,
}

/// How a request goes to its node.
enum Send<'a> {
    /// As the client sent it; for a multi-get, with the node's share of its keys.
    AsIs(Option<&'a [Bytes]>),
    Meta(MetaGet),
}

/// What routing needs to know of the nodes besides the ring.
pub(super) trait NodeView {
    fn count(&self) -> usize;
    /// Whether one-key gets may go to `node` as meta gets.
    fn meta_gets(&self, node: usize) -> bool;
    /// The node `version` asks: the first one not ejected.
    fn first_live(&self) -> Option<usize>;
}

impl NodeView for Context {
    fn count(&self) -> usize {
        self.nodes.len()
    }

    fn meta_gets(&self, node: usize) -> bool {
        self.meta_gets() && self.nodes[node].speaks_meta()
    }

    fn first_live(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].ejected().is_none())
    }
}

/// Routes a batch's forwarded requests over the ring: each node's queue (the bytes it is sent
/// and the shapes of the replies it owes), and for each request where its reply comes from.
/// No I/O: the batch is planned whole before any node is written to.
pub(super) struct Router<'a, N: NodeView + ?Sized> {
    ring: &'a Continuum,
    nodes: &'a N,
    /// Per node: the bytes it is sent and the shape of each reply it owes, in order.
    pub(super) queues: Vec<(BytesMut, Vec<Shape>)>,
}

impl<'a, N: NodeView + ?Sized> Router<'a, N> {
    pub(super) fn new(ring: &'a Continuum, nodes: &'a N) -> Self {
        let queues = (0..nodes.count())
            .map(|_| (BytesMut::new(), Vec::new()))
            .collect();
        Self {
            ring,
            nodes,
            queues,
        }
    }

    /// Queues a request for `node`, as the client sent it or as a meta get: (node, position
    /// in that node's queue).
    fn push(&mut self, node: usize, req: &McRequest, how: Send) -> (usize, usize) {
        let (bytes, shapes) = &mut self.queues[node];
        match how {
            Send::AsIs(keys) => {
                req.encode(bytes, keys);
                shapes.push(req.shape());
            }
            Send::Meta(meta) => {
                meta.encode(&req.keys()[0], bytes);
                shapes.push(Shape::Meta);
            }
        }
        (node, shapes.len() - 1)
    }

    /// Where a request that goes to the nodes is sent, and how its reply is put together.
    pub(super) fn route(&mut self, req: &McRequest) -> Plan {
        let ring = self.ring;
        match req.cmd {
            Cmd::Get | Cmd::GetAndTouch => match same_node(req, ring) {
                // Every key on one node (always so with one node): sent as it came, and the
                // node's reply is already the answer; one key, as a meta get where the node
                // knows them.
                Some(node) => match MetaGet::of(req) {
                    Some(meta) if self.nodes.meta_gets(node) => {
                        let (node, at) = self.push(node, req, Send::Meta(meta));
                        Plan::Fetch(node, at, meta)
                    }
                    _ => {
                        let (node, at) = self.push(node, req, Send::AsIs(None));
                        Plan::Whole(node, at)
                    }
                },
                None => {
                    let mut per_node: Vec<Vec<Bytes>> = vec![Vec::new(); self.queues.len()];
                    for key in req.keys() {
                        match ring.locate(key) {
                            Some(node) => per_node[node].push(key.clone()),
                            None => return Plan::Unrouted,
                        }
                    }
                    let parts = per_node
                        .iter()
                        .enumerate()
                        .filter(|(_, keys)| !keys.is_empty())
                        .map(|(node, keys)| self.push(node, req, Send::AsIs(Some(keys))))
                        .collect();
                    Plan::Split(parts)
                }
            },
            Cmd::Broadcast => Plan::All(
                (0..self.queues.len())
                    .map(|node| self.push(node, req, Send::AsIs(None)))
                    .collect(),
            ),
            Cmd::Version => match self.nodes.first_live() {
                Some(node) => {
                    let (node, at) = self.push(node, req, Send::AsIs(None));
                    Plan::Single(node, at)
                }
                None => Plan::Unrouted,
            },
            _ => match req.route_key.as_deref().and_then(|k| ring.locate(k)) {
                Some(node) => {
                    let (node, at) = self.push(node, req, Send::AsIs(None));
                    Plan::Single(node, at)
                }
                None => Plan::Unrouted,
            },
        }
    }
}

/// Runs a batch and appends the bytes for the client to `out`, in request order.
pub(super) async fn execute(
    ctx: &Context,
    batch: &mut [Item],
    out: &mut BytesMut,
    conns: &mut [Option<NodeConn>],
    who: &Who,
    enc: Option<&crate::crypt::Encryption>,
    meter: &mut CommandMeter<'_>,
) {
    let ring = ctx.ring();
    let mut router = Router::new(&ring, ctx);
    // Where each request's reply comes from, and how it is opened (at-rest encryption), in
    // batch order.
    let mut plans: Vec<(Plan, Option<McOpen>)> = Vec::with_capacity(batch.len());
    // memcached stays silent on errors for `noreply`; quiet meta commands still see them.
    let silent = |req: &McRequest| req.quiet && !matches!(req.cmd, Cmd::Meta | Cmd::MetaSet);
    for item in batch.iter_mut() {
        // The ACL first (its refusal is a security event), then encryption, which seals the
        // request's value in place or refuses what would work on ciphertext.
        let denied = matches!(&*item, Item::Request(req) if refused(ctx, who, req));
        let sealing = match (&mut *item, enc) {
            (Item::Request(req), Some(enc)) if !denied => {
                let plan = crate::crypt::memcached::plan(req, &enc.spaces, &enc.keys);
                if matches!(plan, McPlan::Sealed(_)) && req.data.is_some() {
                    enc.count_sealed(1);
                }
                plan
            }
            _ => McPlan::Clear,
        };
        let item = &*item;
        let plan = match item {
            Item::Local(b) => Plan::Local(b.clone()),
            Item::Request(req) if denied => Plan::Local(if silent(req) {
                Bytes::new()
            } else {
                Bytes::from_static(PERMISSION_DENIED)
            }),
            Item::Request(req) if matches!(sealing, McPlan::Refuse(_)) => {
                Plan::Local(match &sealing {
                    McPlan::Refuse(why) if !silent(req) => {
                        Bytes::from(format!("CLIENT_ERROR {why}\r\n"))
                    }
                    _ => Bytes::new(),
                })
            }
            Item::Request(req) if marks_stale(req) => {
                ctx.stale_items_in_use();
                router.route(req)
            }
            Item::Request(req) => match req.cmd {
                Cmd::MetaNoop => Plan::Local(Bytes::from_static(b"MN\r\n")),
                Cmd::Empty => Plan::Local(Bytes::from_static(b"END\r\n")),
                Cmd::Stats => Plan::Local(stats(ctx, req)),
                _ => router.route(req),
            },
        };
        let open = match sealing {
            McPlan::Sealed(open) => open,
            _ => None,
        };
        plans.push((plan, open));
    }

    // Every node with work, in parallel; each result list lines up with that node's queue.
    let exchanges = conns.iter_mut().zip(router.queues).enumerate().map(
        |(node, (slot, (bytes, shapes)))| async move {
            match &ctx.nodes[node].shared {
                Some(shared) => shared_exchange(ctx, node, shared, bytes, shapes).await,
                None => exchange(ctx, node, slot, bytes, shapes).await,
            }
        },
    );
    let started = Instant::now();
    // The replies stay charged to the buffer budget until the answer is built from them.
    let (results, _charges): (Vec<Vec<Result<Bytes, NodeError>>>, Vec<_>) =
        join_all(exchanges).await.into_iter().unzip();
    let took = started.elapsed();
    // Every forwarded request of the batch waited for the whole batch.
    for (item, (plan, _)) in batch.iter().zip(&plans) {
        if let (
            Item::Request(req),
            Plan::Single(..) | Plan::Whole(..) | Plan::Fetch(..) | Plan::Split(_) | Plan::All(_),
        ) = (item, plan)
        {
            meter.observe(command_label(req.name()), took);
        }
    }

    for (item, (plan, open)) in batch.iter().zip(plans) {
        let req = match item {
            Item::Request(r) => Some(r),
            Item::Local(_) => None,
        };
        // Where this request's answer starts: opened there once it is whole (a multi-get's
        // parts merged first).
        let start = out.len();
        let local = matches!(plan, Plan::Local(_));
        match (plan, req) {
            (Plan::Local(b), _) => out.extend_from_slice(&b),
            (Plan::Unrouted, Some(req)) => {
                ctx.security
                    .metrics
                    .request_failed(&ctx.listener, "unavailable", 1);
                answer_failure(ctx, req, &NodeError::NoNode, out)
            }
            (Plan::Single(node, at), Some(req)) => match &results[node][at] {
                Ok(reply) => answer(req, reply, out),
                Err(e) => answer_failure(ctx, req, e, out),
            },
            // A one-node get whose node failed: a miss or an error, as for a split one.
            (Plan::Whole(node, at) | Plan::Fetch(node, at, _), Some(req))
                if results[node][at].is_err() =>
            {
                merge_values(ctx, req, &[(node, at)], &results, out)
            }
            (Plan::Whole(node, at), Some(_)) => {
                if let Ok(reply) = &results[node][at] {
                    out.extend_from_slice(reply)
                }
            }
            (Plan::Fetch(node, at, meta), Some(req)) => {
                if let Ok(reply) = &results[node][at] {
                    if meta.classic(&req.keys()[0], reply, out) == Classic::Incompatible {
                        // Not memcached's answer to a meta get (a server without meta
                        // commands since the probe, or with only some): this get fails, and
                        // the node gets classic gets from now on.
                        let node = &ctx.nodes[node];
                        tracing::warn!(listener = %ctx.listener, node = %node.label, "memcached node answered a meta get as memcached does not; one-key gets go to it as classic gets from now on");
                        node.meta_refused();
                        let e = "the node does not answer meta gets as memcached does";
                        out.extend_from_slice(&server_error(&node.label, e));
                    }
                }
            }
            (Plan::Split(parts), Some(req)) => {
                merge_values(ctx, req, &parts, &results, out);
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
        if let (Some(open), Some(enc), false) = (&open, enc, local) {
            let answer = out.split_off(start);
            out.extend_from_slice(&enc.open_mc_reply(&answer, open));
        }
    }
}

/// A node's replies, one per request of its queue, and their share of the process's buffer
/// budget (`limits.max_buffered_bytes`), held until the batch's answer is built from them.
type Exchanged = (Vec<Result<Bytes, NodeError>>, Option<Charge>);

/// Sends a node its queue on one of the node's shared connections, where it is written together
/// with other sessions' requests; the replies come back as one list. A failure fails the batch's
/// requests on that node, nothing else.
pub(super) async fn shared_exchange(
    ctx: &Context,
    node: usize,
    shared: &SharedPool,
    bytes: BytesMut,
    shapes: Vec<Shape>,
) -> Exchanged {
    let n = shapes.len();
    if n == 0 {
        return (Vec::new(), None);
    }
    let (tx, rx) = oneshot::channel();
    let owner = crate::budget::Holder::current();
    let queued = crate::budget::queued(&shared.budget, bytes.len(), owner.clone());
    let outcome = match queued {
        Err(over) => Err(SharedError::OverBudget(over)),
        Ok(queued) => {
            let request = SharedRequest {
                bytes: bytes.freeze(),
                frames: Frames::Memcached(shapes),
                reply: tx,
                owner,
                queued,
            };
            match shared.pick().send(request).await {
                Ok(()) => rx.await.unwrap_or_else(|_| Err(SharedError::Gone)),
                Err(_) => Err(SharedError::ShuttingDown),
            }
        }
    };
    if let Err(e) = &outcome {
        ctx.security
            .metrics
            .request_failed(&ctx.listener, e.cause(), n as u64);
    }
    match outcome {
        Ok(replies) if replies.count() == n => {
            ctx.record(node, true);
            let (replies, charge) = replies.split(Ok);
            (replies, Some(charge))
        }
        Ok(_) => (vec![Err(NodeError::Miscounted); n], None),
        Err(e) => {
            // (The process's buffer bound refusing the replies is no fault of the node's.)
            if e.upstream_fault() {
                tracing::warn!(listener = %ctx.listener, node = %ctx.nodes[node].label, error = %e, "memcached node failed");
                ctx.record(node, false);
            }
            (vec![Err(NodeError::Shared(e)); n], None)
        }
    }
}

/// Sends a node its queue and reads one reply per request, charging what it holds to the
/// buffer budget as it reads. After a failure every remaining request on that node fails too,
/// and the connection is dropped.
pub(super) async fn exchange(
    ctx: &Context,
    node: usize,
    slot: &mut Option<NodeConn>,
    bytes: BytesMut,
    shapes: Vec<Shape>,
) -> Exchanged {
    if shapes.is_empty() {
        return (Vec::new(), None);
    }
    let nc = match slot {
        Some(nc) => nc,
        None => match ctx.nodes[node].pool.acquire().await {
            Ok(conn) => slot.insert(NodeConn {
                conn,
                buf: BytesMut::new(),
            }),
            Err(e) => {
                ctx.record(node, false);
                let n = shapes.len() as u64;
                ctx.security
                    .metrics
                    .request_failed(&ctx.listener, e.cause(), n);
                return (vec![Err(NodeError::Own(Arc::new(e))); shapes.len()], None);
            }
        },
    };
    let max = ctx.max_reply;
    let mut results = Vec::with_capacity(shapes.len());
    // The replies read so far and the one coming: a batch of up to `MAX_BATCH` requests, each
    // up to `limits.max_reply_bytes`, must not grow past the process's bound unseen.
    let mut charge = Charge::new(ctx.security.budget.clone());
    let mut kept = 0;
    let own = |e: UpstreamError| NodeError::Own(Arc::new(e));
    let work = async {
        nc.conn
            .stream
            .write_all(&bytes)
            .await
            .map_err(|e| own(e.into()))?;
        nc.conn.stream.flush().await.map_err(|e| own(e.into()))?;
        for shape in &shapes {
            loop {
                let done = reply_len(&nc.buf, *shape, max).map_err(|e| match e {
                    // Over `limits.max_reply_bytes`: cachegate's limit, not the node's fault
                    // (no miss, no ejection).
                    McReplyError::TooLarge(limit) => {
                        NodeError::Shared(SharedError::ReplyTooLarge(limit))
                    }
                    e => own(UpstreamError::Unexpected(e.to_string())),
                })?;
                if let Some(len) = done {
                    results.push(Ok(nc.buf.split_to(len).freeze()));
                    kept += len;
                    break;
                }
                match nc.conn.stream.read_buf(&mut nc.buf).await {
                    Ok(0) => return Err(own(UpstreamError::Closed)),
                    Ok(_) => {}
                    Err(e) => return Err(own(e.into())),
                }
                charge
                    .hold(kept + nc.buf.len())
                    .map_err(|over| NodeError::Shared(SharedError::OverBudget(over)))?;
            }
        }
        Ok(())
    };
    let outcome = match tokio::time::timeout(ctx.request_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(own(UpstreamError::Timeout(ctx.request_timeout))),
    };
    match outcome {
        Ok(()) => ctx.record(node, true),
        // The connection, failed or mid-reply, is dropped.
        Err(e) => {
            let cause = match &e {
                NodeError::Own(e) => e.cause(),
                NodeError::Shared(e) => e.cause(),
                NodeError::NoNode | NodeError::Miscounted => "malformed",
            };
            if e.node_fault() {
                tracing::warn!(listener = %ctx.listener, node = %ctx.nodes[node].label, error = %e, "memcached node failed");
                ctx.record(node, false);
            }
            let unanswered = (shapes.len() - results.len()) as u64;
            ctx.security
                .metrics
                .request_failed(&ctx.listener, cause, unanswered);
            *slot = None;
            results.resize(shapes.len(), Err(e));
        }
    }
    (results, Some(charge))
}

/// A single-node reply as the client should see it.
pub(super) fn answer(req: &McRequest, reply: &Bytes, out: &mut BytesMut) {
    match req.shape() {
        // Quiet meta: the backend's own quiet rules applied; drop our `mn`'s MN.
        Shape::MetaThenNoop => out.extend_from_slice(&reply[..reply.len() - 4]),
        _ if req.quiet => {}
        _ => out.extend_from_slice(reply),
    }
}

pub(super) fn answer_failure(ctx: &Context, req: &McRequest, err: &NodeError, out: &mut BytesMut) {
    // cachegate's own refusal (its buffer bound, shutting down) is no node failure: never a
    // miss.
    let miss = ctx.config.on_node_down == NodeDown::Miss && err.node_fault();
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

pub(super) fn server_error(node: &str, err: &str) -> Bytes {
    let msg = if node.is_empty() {
        format!("SERVER_ERROR cachegate: {err}\r\n")
    } else {
        format!("SERVER_ERROR cachegate: node {node}: {err}\r\n")
    };
    Bytes::from(msg.replace(['\r', '\n'], " ").trim_end().to_string() + "\r\n")
}

/// The node all of a get's keys live on, if it is one node.
pub(super) fn same_node(req: &McRequest, ring: &Continuum) -> Option<usize> {
    let mut keys = req.keys().iter();
    let first = ring.locate(keys.next()?)?;
    keys.all(|k| ring.locate(k) == Some(first)).then_some(first)
}

/// Puts a multi-get back together: items in the client's key order, one END.
pub(super) fn merge_values(
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
            Err(e) if ctx.config.on_node_down == NodeDown::Error || !e.node_fault() => {
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

/// `md` or `ms` with the `I` flag: the key's item may become stale, and a stale item's first
/// meta get wins the token to refresh it (`W`), which a classic get never takes.
fn marks_stale(req: &McRequest) -> bool {
    matches!(req.cmd, Cmd::Meta | Cmd::MetaSet)
        && matches!(req.name(), b"md" | b"ms")
        && req.tokens[2..].iter().any(|t| t.first() == Some(&b'I'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RingNode;
    use crate::protocol::memcached::McLimits;

    /// Nodes as routing sees them: which know meta gets, and which one `version` asks.
    struct Nodes {
        meta: Vec<bool>,
        live: Option<usize>,
    }

    impl NodeView for Nodes {
        fn count(&self) -> usize {
            self.meta.len()
        }
        fn meta_gets(&self, node: usize) -> bool {
            self.meta[node]
        }
        fn first_live(&self) -> Option<usize> {
            self.live
        }
    }

    fn ring_with(live: &[bool]) -> Continuum {
        let nodes: Vec<RingNode> = (0..live.len())
            .map(|i| RingNode {
                host: format!("10.0.0.{i}"),
                port: 11211,
                weight: 1,
            })
            .collect();
        Continuum::build(&nodes, live)
    }

    fn request(line: &str) -> McRequest {
        let mut buf = BytesMut::from(line);
        match Parser::new(McLimits::default()).next(&mut buf, &Policy::default()) {
            Some(Parsed::Request(r)) => r,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    /// What each node is sent, as text.
    fn sent<N: NodeView>(router: &Router<'_, N>) -> Vec<String> {
        router
            .queues
            .iter()
            .map(|(bytes, _)| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    }

    /// Keys that live on different nodes of `ring`, one per node.
    fn key_per_node(ring: &Continuum, n: usize) -> Vec<String> {
        (0..n)
            .map(|node| {
                (0..)
                    .map(|i| format!("k{i}"))
                    .find(|k| ring.locate(k.as_bytes()) == Some(node))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn one_key_gets_go_as_meta_gets_only_where_the_node_knows_them() {
        let ring = ring_with(&[true, true]);
        let keys = key_per_node(&ring, 2);
        let nodes = Nodes {
            meta: vec![true, false],
            live: Some(0),
        };
        let mut router = Router::new(&ring, &nodes);
        let (a, b) = (&keys[0], &keys[1]);
        assert_eq!(
            router.route(&request(&format!("get {a}\r\n"))),
            Plan::Fetch(0, 0, MetaGet { cas: false })
        );
        assert_eq!(
            router.route(&request(&format!("gets {a}\r\n"))),
            Plan::Fetch(0, 1, MetaGet { cas: true })
        );
        assert_eq!(
            router.route(&request(&format!("get {b}\r\n"))),
            Plan::Whole(1, 0)
        );
        // Several keys on one node, and gat: as they came.
        assert_eq!(
            router.route(&request(&format!("get {a} {a}\r\n"))),
            Plan::Whole(0, 2)
        );
        assert_eq!(
            router.route(&request(&format!("gat 10 {a}\r\n"))),
            Plan::Whole(0, 3)
        );
        assert_eq!(
            sent(&router),
            [
                format!("mg {a} v f\r\nmg {a} v f c\r\nget {a} {a}\r\ngat 10 {a}\r\n"),
                format!("get {b}\r\n"),
            ]
        );
        let shapes: Vec<Vec<Shape>> = router.queues.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(
            shapes,
            [
                vec![Shape::Meta, Shape::Meta, Shape::Values, Shape::Values],
                vec![Shape::Values]
            ]
        );
    }

    #[test]
    fn a_multi_get_is_split_by_node_in_the_clients_key_order() {
        let ring = ring_with(&[true, true, true]);
        let keys = key_per_node(&ring, 3);
        let nodes = Nodes {
            meta: vec![true; 3],
            live: Some(0),
        };
        let mut router = Router::new(&ring, &nodes);
        let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
        let line = format!("get {c} {a} {c} {b}\r\n");
        assert_eq!(
            router.route(&request(&line)),
            Plan::Split(vec![(0, 0), (1, 0), (2, 0)])
        );
        // A second one takes the next place in each node's queue it touches.
        let line = format!("get {b} {c}\r\n");
        assert_eq!(
            router.route(&request(&line)),
            Plan::Split(vec![(1, 1), (2, 1)])
        );
        assert_eq!(
            sent(&router),
            [
                format!("get {a}\r\n"),
                format!("get {b}\r\nget {b}\r\n"),
                format!("get {c} {c}\r\nget {c}\r\n")
            ]
        );
    }

    #[test]
    fn broadcasts_version_and_keyed_commands() {
        let ring = ring_with(&[true, true]);
        let keys = key_per_node(&ring, 2);
        let nodes = Nodes {
            meta: vec![false; 2],
            live: Some(1),
        };
        let mut router = Router::new(&ring, &nodes);
        assert_eq!(
            router.route(&request("flush_all\r\n")),
            Plan::All(vec![(0, 0), (1, 0)])
        );
        assert_eq!(router.route(&request("version\r\n")), Plan::Single(1, 1));
        let set = format!("set {} 5 0 2\r\nhi\r\n", keys[0]);
        assert_eq!(router.route(&request(&set)), Plan::Single(0, 1));
        assert_eq!(
            sent(&router),
            [
                format!("flush_all\r\n{set}"),
                "flush_all\r\nversion\r\n".to_string()
            ]
        );
        // Every node out of the ring: nothing routed by key is sent, not even a multi-get's
        // routable part.
        let (dark, down) = (
            ring_with(&[false, false]),
            Nodes {
                meta: vec![true; 2],
                live: None,
            },
        );
        let mut router = Router::new(&dark, &down);
        for line in [
            "get a\r\n",
            "get a b\r\n",
            "version\r\n",
            "set a 0 0 1\r\nx\r\n",
        ] {
            assert_eq!(router.route(&request(line)), Plan::Unrouted, "{line}");
        }
        assert!(router
            .queues
            .iter()
            .all(|(bytes, shapes)| bytes.is_empty() && shapes.is_empty()));
        // No node at all: the same.
        let (empty, none) = (
            Continuum::build(&[], &[]),
            Nodes {
                meta: vec![],
                live: None,
            },
        );
        let mut router = Router::new(&empty, &none);
        assert_eq!(router.route(&request("version\r\n")), Plan::Unrouted);
        assert_eq!(router.route(&request("get a\r\n")), Plan::Unrouted);
        assert_eq!(router.route(&request("get a b\r\n")), Plan::Unrouted);
        assert_eq!(router.route(&request("delete a\r\n")), Plan::Unrouted);
    }

    #[test]
    fn a_node_out_of_the_ring_gets_nothing() {
        // Node 1 ejected: every key goes to node 0 or 2.
        let ring = ring_with(&[true, false, true]);
        let nodes = Nodes {
            meta: vec![true; 3],
            live: Some(0),
        };
        let mut router = Router::new(&ring, &nodes);
        for i in 0..50 {
            router.route(&request(&format!("set k{i} 0 0 1\r\nx\r\n")));
            router.route(&request(&format!("get k{i} j{i}\r\n")));
        }
        assert!(router.queues[1].0.is_empty());
        assert!(!router.queues[0].0.is_empty() && !router.queues[2].0.is_empty());
    }
}
