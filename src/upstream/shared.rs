//! Shared (multiplexed) upstream connections for stateless Redis commands.
//!
//! Each shared connection is one task that owns its socket: requests from many sessions arrive
//! on a channel, everything waiting is written in one go, and replies are handed back in the
//! order the requests were written, each to its own session through a oneshot channel: all of
//! one request's replies as one buffer, split off the read buffer without a copy. Nothing a
//! session does can stall the others: a reply is dropped into a oneshot, never written to a
//! client from here. A failed or timed-out connection fails exactly the requests on it and is
//! replaced.

use crate::deadline::sleep_until;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::conn::Connector;
use crate::error::{ReplyError, UpstreamError};
use crate::protocol::memcached::{reply_len, McReplyError, McSkip, Shape};
use crate::protocol::resp::{rest_of_bulk, ReplyKind, ReplyScanner};

/// Reconnect backoff of a shared connection while its upstream is down.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While down, a request tries a connect at once if the last try is at least this old.
pub const ON_DEMAND_AFTER: Duration = Duration::from_millis(100);

/// A shared connection's read buffer larger than this is given back once empty.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// Requests gathered into one write at most.
const MAX_BATCH: usize = 256;
/// Requests queued per shared connection before senders wait.
const QUEUE: usize = 4096;

/// One request for a shared connection: its encoded bytes, the replies it expects, and where
/// they go (all together, in order).
pub struct SharedRequest {
    pub bytes: Bytes,
    pub frames: Frames,
    pub reply: oneshot::Sender<SharedReply>,
    /// The session its replies are charged to while they wait for it
    /// ([`crate::budget::Holder::current`] where the request is made).
    pub owner: Option<Arc<crate::budget::Holder>>,
    /// Its bytes' share of the buffer budget while it waits in the connection's queue (see
    /// [`crate::budget::queued`]); given back once they are in the connection's write buffer.
    pub queued: Option<crate::budget::Charge>,
}

/// A request's replies, or why they will not come.
pub type SharedReply = Result<Replies, SharedError>;

/// Why a request on a shared connection gets no reply; each says whose doing it is, and turns
/// into the client's error reply in one place per protocol.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// No connection to the upstream (connecting failed; until the next attempt).
    #[error("upstream unavailable ({0})")]
    Unavailable(Arc<UpstreamError>),
    /// The connection failed while the request was on it.
    #[error("upstream connection lost ({0})")]
    Lost(Arc<Broken>),
    #[error("upstream read timed out after {0:?}")]
    Timeout(Duration),
    /// The process's bound on buffered bytes refused the reply: the upstream is fine.
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
    /// One of the request's replies is larger than `limits.max_reply_bytes`: read and dropped,
    /// and the connection goes on for the requests after it.
    #[error("reply from upstream larger than {0} bytes")]
    ReplyTooLarge(usize),
    /// The shared connection's task ended before answering (its connection failed).
    #[error("upstream connection lost")]
    Gone,
    /// cachegate is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl SharedError {
    /// The upstream's doing (it counts against the upstream: memcached's ejection, a read that
    /// may miss); the others are cachegate's.
    pub fn upstream_fault(&self) -> bool {
        matches!(
            self,
            SharedError::Unavailable(_)
                | SharedError::Lost(_)
                | SharedError::Timeout(_)
                | SharedError::Gone
        )
    }

    /// A short label for metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            SharedError::Unavailable(_) => "unavailable",
            SharedError::Lost(broken) => broken.cause(),
            SharedError::Gone => "lost",
            SharedError::Timeout(_) => "timeout",
            SharedError::OverBudget(_) => "over_budget",
            SharedError::ReplyTooLarge(_) => "too_large",
            SharedError::ShuttingDown => "shutting_down",
        }
    }
}

/// What broke a shared connection under the requests on it (the text in "upstream connection
/// lost (...)").
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error("closed by upstream")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error(transparent)]
    MemcachedReply(#[from] McReplyError),
    /// A reply arrived with no request waiting for it.
    #[error("reply with no request")]
    Unrequested,
}

impl Broken {
    /// The metric label, in the words of `UpstreamError::cause`: lost, or malformed when the
    /// upstream's output could not be read.
    pub fn cause(&self) -> &'static str {
        match self {
            Broken::Closed | Broken::Io(_) => "lost",
            Broken::Reply(_) | Broken::MemcachedReply(_) | Broken::Unrequested => "malformed",
        }
    }
}

/// A request's replies, back to back in request order, split off the read buffer in one piece.
pub struct Replies {
    pub bytes: Bytes,
    /// memcached: where each reply ends in `bytes` (RESP replies are relayed whole: empty).
    ends: Ends,
    /// These bytes' share of the process's buffer budget, given back when the session is done
    /// with them (its own budget takes over for what it queues for its client).
    _charge: crate::budget::Charge,
}

impl Replies {
    /// The bytes, and their share of the process's buffer budget, to keep as long as they
    /// are held (a cluster command's parts until they are merged).
    pub fn into_parts(self) -> (Bytes, crate::budget::Charge) {
        (self.bytes, self._charge)
    }

    /// How many replies (memcached).
    pub fn count(&self) -> usize {
        self.ends.len()
    }

    /// One buffer per reply (memcached), without copying, each as `f` makes it; and their
    /// share of the budget, to keep while they are held.
    pub fn split<T>(mut self, mut f: impl FnMut(Bytes) -> T) -> (Vec<T>, crate::budget::Charge) {
        let mut start = 0;
        let replies = self
            .ends
            .iter()
            .map(|&end| {
                let reply = self.bytes.split_to(end - start);
                start = end;
                f(reply)
            })
            .collect();
        (replies, self._charge)
    }
}

/// Where each memcached reply ends: inline for a batch of a few requests.
type Ends = smallvec::SmallVec<[usize; 4]>;

/// The replies a request expects.
pub enum Frames {
    /// This many RESP replies (a session's pipelined stateless commands travel together).
    Resp(usize),
    /// memcached replies of these shapes, one per request in the batch.
    Memcached(Vec<Shape>),
}

impl Frames {
    fn count(&self) -> usize {
        match self {
            Frames::Resp(n) => *n,
            Frames::Memcached(shapes) => shapes.len(),
        }
    }
}

/// A request written and waiting for its replies.
struct Waiting {
    /// Taken when the request is answered; a request failed while its replies still come
    /// (too large, over the budget) stays until they have been read and dropped.
    reply: Option<oneshot::Sender<SharedReply>>,
    frames: Frames,
    /// Replies delimited so far, and their length at the front of the read buffer.
    got: usize,
    len: usize,
    /// memcached: where each delimited reply ends (the session splits them apart).
    ends: Ends,
    sent: Instant,
    owner: Option<Arc<crate::budget::Holder>>,
}

impl Waiting {
    /// A request just written, at `sent`.
    fn new(req: SharedRequest, sent: Instant) -> Self {
        Waiting {
            got: 0,
            len: 0,
            ends: match &req.frames {
                Frames::Memcached(shapes) => Ends::with_capacity(shapes.len()),
                Frames::Resp(_) => Ends::new(),
            },
            reply: Some(req.reply),
            frames: req.frames,
            sent,
            owner: req.owner,
        }
    }
}

/// A listener's shared connections: RESP2 ones, and RESP3 ones for sessions that said HELLO 3.
pub struct Shared {
    pub resp2: SharedPool,
    pub resp3: SharedPool,
}

/// The shared connections of one upstream, for one RESP version.
pub struct SharedPool {
    senders: Vec<mpsc::Sender<SharedRequest>>,
    next: AtomicUsize,
    /// What requests waiting in the queues are charged to.
    pub budget: Arc<crate::budget::MemoryBudget>,
}

impl SharedPool {
    /// Starts `count` shared connections (RESP3 ones say HELLO 3 first).
    pub fn start(
        connector: Arc<Connector>,
        count: usize,
        resp3: bool,
        timeout: Duration,
        unexpected_pushes: Counter,
        budget: Arc<crate::budget::MemoryBudget>,
        shutdown: CancellationToken,
    ) -> Self {
        let senders = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let link = Link {
                    connector: connector.clone(),
                    resp3,
                    timeout,
                    unexpected_pushes: unexpected_pushes.clone(),
                    budget: budget.clone(),
                };
                tokio::spawn(run(link, rx, shutdown.clone()));
                tx
            })
            .collect();
        Self {
            senders,
            next: AtomicUsize::new(0),
            budget,
        }
    }

    /// The connection a session with this number always uses (a cluster session keeps one per
    /// node, so that its commands to a node run in the order it sent them).
    pub fn sender(&self, n: u64) -> &mpsc::Sender<SharedRequest> {
        &self.senders[(n % self.senders.len() as u64) as usize]
    }

    /// A connection for a session to use (round robin).
    pub fn pick(&self) -> mpsc::Sender<SharedRequest> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].clone()
    }
}

/// What one shared connection's task needs to (re)connect and serve.
struct Link {
    connector: Arc<Connector>,
    resp3: bool,
    timeout: Duration,
    unexpected_pushes: Counter,
    budget: Arc<crate::budget::MemoryBudget>,
}

async fn run(link: Link, mut rx: mpsc::Receiver<SharedRequest>, shutdown: CancellationToken) {
    let Link {
        ref connector,
        resp3,
        ..
    } = link;
    let mut backoff = BACKOFF_START;
    // Requests that arrived while a connect was under way: they wait for its outcome.
    let mut held: Vec<SharedRequest> = Vec::new();
    loop {
        let attempt = connect(connector, resp3);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = &mut attempt => break c,
                req = rx.recv() => match req {
                    Some(req) => held.push(req),
                    None => return,
                },
            }
        };
        let mut conn = match result {
            Ok(c) => {
                backoff = BACKOFF_START;
                c
            }
            Err(e) => {
                // Down: what waits is answered at once, and so is every request until the next
                // attempt, which a request makes at once when the last one is not too recent:
                // the first request after the upstream returns does not wait for a timer.
                let down = SharedError::Unavailable(Arc::new(e));
                for req in held.drain(..) {
                    let _ = req.reply.send(Err(down.clone()));
                }
                let tried = Instant::now();
                let retry = tokio::time::sleep(backoff);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = &mut retry => break,
                        req = rx.recv() => match req {
                            None => return,
                            Some(req) if tried.elapsed() >= ON_DEMAND_AFTER => {
                                held.push(req);
                                break;
                            }
                            Some(req) => {
                                let _ = req.reply.send(Err(down.clone()));
                            }
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let first = std::mem::take(&mut held);
        let error = serve(&mut conn, &mut rx, first, &link, &shutdown).await;
        match error {
            None => return,
            Some(e) => {
                tracing::warn!(upstream = %connector.address, error = %e, "shared upstream connection failed; replacing it")
            }
        }
    }
}

/// Fails the request at the head of the connection with `error` while its replies are still
/// coming, drops those read so far, and has the scanner pass the rest by: whether there was
/// one (its replies are then skipped as they arrive).
fn fail_head(
    pending: &mut VecDeque<Waiting>,
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    error: SharedError,
) -> bool {
    let Some(head) = pending.front_mut() else {
        return false;
    };
    if let Some(reply) = head.reply.take() {
        let _ = reply.send(Err(error));
    }
    bytes::Buf::advance(buf, head.len);
    head.len = 0;
    scanner.pass_blobs(true);
    true
}

/// Drops `n` bytes of a failed request's reply as they are read; while they keep coming, its
/// request timeout counts from the last of them (a slow drain must not fail the requests
/// queued behind it).
fn drop_passed(buf: &mut BytesMut, pending: &mut VecDeque<Waiting>, n: usize) {
    bytes::Buf::advance(buf, n);
    if n > 0 {
        if let Some(head) = pending.front_mut() {
            head.sent = Instant::now();
        }
    }
}

/// A burst's read buffer is not kept for ever: given back once empty.
fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
        *buf = BytesMut::with_capacity(16 * 1024);
    }
}

/// Removes `len` bytes at `from` from the read buffer (a push found between replies).
fn drop_push(buf: &mut BytesMut, from: usize, len: usize) {
    if from == 0 {
        bytes::Buf::advance(buf, len);
    } else {
        // Rare: copies what follows the push back over it.
        let tail = buf.split_off(from + len);
        buf.truncate(from);
        buf.unsplit(tail);
    }
}

async fn connect(connector: &Arc<Connector>, resp3: bool) -> Result<super::Conn, UpstreamError> {
    let mut conn = connector.connect().await?;
    if resp3 {
        let reply = conn.roundtrip(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n").await?;
        if !reply.starts_with(b"%") {
            return Err(UpstreamError::NoResp3);
        }
    }
    Ok(conn)
}

/// Serves one connection until it fails (`Some(error)`: `Lost` or `Timeout`) or shutdown
/// (`None`).
async fn serve(
    conn: &mut super::Conn,
    rx: &mut mpsc::Receiver<SharedRequest>,
    first: Vec<SharedRequest>,
    link: &Link,
    shutdown: &CancellationToken,
) -> Option<SharedError> {
    let timeout = link.timeout;
    let mut pending: VecDeque<Waiting> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::new();
    let mut scanner = ReplyScanner::default();
    let mut unexpected_pushes = 0u64;
    let max = conn.connector.max_reply;
    // Fails everything on the connection as timed out (no reply, or no room to write, within
    // the request timeout).
    let time_out = |pending: &mut VecDeque<Waiting>| {
        let timed_out = SharedError::Timeout(timeout);
        for w in pending.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(timed_out.clone()));
            }
        }
        Some(timed_out)
    };
    // Fails everything on the connection with what broke it, and says so.
    let fail = |pending: &mut VecDeque<Waiting>, broken: Broken| {
        let lost = SharedError::Lost(Arc::new(broken));
        for w in pending.drain(..) {
            if let Some(reply) = w.reply {
                let _ = reply.send(Err(lost.clone()));
            }
        }
        Some(lost)
    };
    // What the read buffer holds beyond a free share, charged to the process's budget as it
    // grows: replies of a batch wait there until the last of them has come.
    // (No session's until a batch is at the head: see `hold_for`.)
    let mut held = crate::budget::Charge::owned_by(link.budget.clone(), None);
    // The head request failed (a reply too large, or over the budget) while its replies were
    // still coming: they are read and dropped as they arrive, and the connection goes on.
    let mut skipping = false;
    // Where a memcached reply being dropped has got to.
    let mut mc_skip: Option<McSkip> = None;
    // Registered once, not on every turn: each registration takes the token's lock.
    let mut shut = std::pin::pin!(shutdown.cancelled());
    // What waited for this connection goes out first, in one write.
    if !first.is_empty() {
        let now = Instant::now();
        for req in first {
            out.extend_from_slice(&req.bytes);
            pending.push_back(Waiting::new(req, now));
        }
        match tokio::time::timeout(timeout, conn.stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(&mut pending, e.into()),
            Err(_) => return time_out(&mut pending),
        }
    }
    loop {
        // Hand out every complete reply.
        loop {
            // A request whose session has gone (closed, evicted) is failed as its replies come:
            // they are dropped as they arrive, never held and charged for no one.
            let gone = pending
                .front()
                .is_some_and(|w| w.reply.as_ref().is_some_and(|r| r.is_closed()));
            if gone && !skipping {
                skipping = fail_head(&mut pending, &mut buf, &mut scanner, SharedError::Gone);
                continue;
            }
            let from = pending.front().map_or(0, |w| w.len);
            let memcached = pending.front().and_then(|w| match &w.frames {
                Frames::Memcached(shapes) => Some(shapes[w.got]),
                Frames::Resp(_) => None,
            });
            let delimited = match memcached {
                // A memcached reply of a failed request: passed over as it arrives (its value
                // blocks are never held whole), counted as one of zero bytes when it ends.
                Some(shape) if skipping => {
                    let skip = mc_skip.get_or_insert_with(|| McSkip::new(shape));
                    match skip.advance(&buf) {
                        Ok((n, done)) => {
                            drop_passed(&mut buf, &mut pending, n);
                            if !done {
                                break;
                            }
                            mc_skip = None;
                            Ok(Some(0))
                        }
                        Err(e) => Err(Broken::from(e)),
                    }
                }
                Some(shape) => reply_len(&buf[from..], shape, max).map_err(Broken::from),
                _ => match scanner.next(&buf[from..], if skipping { usize::MAX } else { max }) {
                    // A push is never a reply: no command that subscribes or tracks ever
                    // reaches a shared connection, so it belongs to no client here (another
                    // connection's `CLIENT TRACKING ... REDIRECT`, for one). Counting it as
                    // a reply would hand every later reply to the wrong client; it is dropped
                    // where it stands, between or inside the replies around it.
                    Ok(Some((len, ReplyKind::Push))) => {
                        drop_push(&mut buf, from, len);
                        unexpected_pushes += 1;
                        if unexpected_pushes == 1 {
                            tracing::warn!(upstream = %conn.connector.address, "dropping an unsolicited push on a shared upstream connection (someone redirected tracking or pub/sub to it)");
                        }
                        link.unexpected_pushes.inc();
                        continue;
                    }
                    other => other.map(|r| r.map(|(len, _)| len)).map_err(Broken::from),
                },
            };
            // One of the head request's replies is too large (RESP or memcached): that request
            // alone fails, its replies are read and dropped as they arrive (the scanner starts
            // the large one again from its beginning, now at the buffer's front), and the rest
            // go on.
            if let Err(
                Broken::Reply(ReplyError::TooLarge(limit))
                | Broken::MemcachedReply(McReplyError::TooLarge(limit)),
            ) = delimited
            {
                if !skipping && !pending.is_empty() {
                    let too_large = SharedError::ReplyTooLarge(limit);
                    skipping = fail_head(&mut pending, &mut buf, &mut scanner, too_large);
                    continue;
                }
            }
            match delimited {
                Ok(Some(len)) => {
                    let Some(head) = pending.front_mut() else {
                        return fail(&mut pending, Broken::Unrequested);
                    };
                    head.got += 1;
                    head.len += len;
                    if let Frames::Memcached(_) = head.frames {
                        head.ends.push(head.len);
                    }
                    if skipping {
                        // Dropped as soon as it is read.
                        bytes::Buf::advance(&mut buf, head.len);
                        head.len = 0;
                        if head.got == head.frames.count() {
                            pending.pop_front();
                            skipping = false;
                            scanner.pass_blobs(false);
                            shrink(&mut buf);
                        }
                        continue;
                    }
                    if head.got == head.frames.count() {
                        if let Some(done) = pending.pop_front() {
                            let bytes = buf.split_to(done.len).freeze();
                            // Out of the read buffer's charge before the reply's own; what is
                            // left (the next replies, read with these) is the next head's.
                            let _ = held.hold_for(
                                buf.len(),
                                pending.front().and_then(|w| w.owner.as_ref()),
                            );
                            // Held until the session takes them: charged, or refused (and
                            // dropped here) past the process's limit.
                            let result = match crate::budget::Charge::exact(
                                &link.budget,
                                bytes.len(),
                                done.owner.clone(),
                            ) {
                                Ok(charge) => Ok(Replies {
                                    bytes,
                                    ends: done.ends,
                                    _charge: charge,
                                }),
                                Err(over) => Err(over.into()),
                            };
                            if let Some(reply) = done.reply {
                                let _ = reply.send(result);
                            }
                            shrink(&mut buf);
                        }
                    }
                }
                Ok(None) => {
                    if skipping {
                        // What is read of the reply being dropped goes at once; while it keeps
                        // coming, the request timeout counts from the last of it (a slow
                        // drain must not fail the requests queued behind it).
                        let n = scanner.scanned().min(buf.len());
                        drop_passed(&mut buf, &mut pending, n);
                        scanner.dropped(n);
                    }
                    break;
                }
                Err(e) => return fail(&mut pending, e),
            }
        }
        // The buffer as it stands is charged, to the session whose replies fill it (the one
        // the process's buffers evict first); past the process's bound, that request fails,
        // and its replies are dropped as they come.
        if let Err(over) = held.hold_for(buf.len(), pending.front().and_then(|w| w.owner.as_ref()))
        {
            if !skipping && fail_head(&mut pending, &mut buf, &mut scanner, over.into()) {
                skipping = true;
                continue;
            }
        }
        let deadline = pending.front().map(|w| w.sent + timeout);
        // Room for the rest of a big RESP bulk string at once, instead of growing the buffer
        // as it arrives; otherwise the buffer's own growth.
        if let Some(Waiting {
            frames: Frames::Resp(_),
            len,
            ..
        }) = pending.front().filter(|_| !skipping)
        {
            let room = rest_of_bulk(&buf[*len..], 0);
            if room > buf.capacity() - buf.len() {
                buf.reserve(room);
            }
        }
        tokio::select! {
            _ = &mut shut, if pending.is_empty() => return None,
            req = rx.recv() => {
                let req = req?;
                // Let every other ready session queue its request first, so that they all
                // leave in this one write instead of one write each.
                tokio::task::yield_now().await;
                // Not kept at the size of the largest request it ever wrote.
                if out.capacity() > 1 << 20 {
                    out = BytesMut::new();
                }
                out.clear();
                let now = Instant::now();
                let waiting = |req: SharedRequest| Waiting::new(req, now);
                out.extend_from_slice(&req.bytes);
                pending.push_back(waiting(req));
                // Coalesce everything else already waiting into the same write.
                for _ in 1..MAX_BATCH {
                    if out.len() > 256 * 1024 {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(more) => {
                            out.extend_from_slice(&more.bytes);
                            pending.push_back(waiting(more));
                        }
                        Err(_) => break,
                    }
                }
                // Under the request timeout too: an upstream that stopped reading (a full
                // socket) would otherwise hold this connection's sessions for as long as it
                // stays so, with no deadline able to run (found by a reviewer).
                match tokio::time::timeout(timeout, conn.stream.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return fail(&mut pending, e.into()),
                    Err(_) => return time_out(&mut pending),
                }
            }
            read = conn.stream.read_buf(&mut buf) => match read {
                Ok(0) => return fail(&mut pending, Broken::Closed),
                Ok(_) => {}
                Err(e) => return fail(&mut pending, e.into()),
            },
            _ = sleep_until(deadline) => return time_out(&mut pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_failure_names_its_cause_in_the_words_clients_already_see() {
        let lost = |b: Broken| SharedError::Lost(Arc::new(b));
        let cases: [(SharedError, &str, &str, bool); 7] = [
            (
                lost(Broken::Closed),
                "upstream connection lost (closed by upstream)",
                "lost",
                true,
            ),
            (
                lost(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()),
                "upstream connection lost (connection reset)",
                "lost",
                true,
            ),
            (
                lost(ReplyError::Malformed("bad type byte").into()),
                "upstream connection lost (malformed reply from upstream: bad type byte)",
                "malformed",
                true,
            ),
            (
                lost(Broken::Unrequested),
                "upstream connection lost (reply with no request)",
                "malformed",
                true,
            ),
            (
                SharedError::Unavailable(Arc::new(UpstreamError::NoResp3)),
                "upstream unavailable (upstream does not speak RESP3)",
                "unavailable",
                true,
            ),
            (
                SharedError::Timeout(Duration::from_secs(2)),
                "upstream read timed out after 2s",
                "timeout",
                true,
            ),
            (
                crate::budget::OverBudget { limit: 10 }.into(),
                "cachegate's buffers for all clients are at their limit (10 bytes, limits.max_buffered_bytes)",
                "over_budget",
                false,
            ),
        ];
        for (error, text, cause, upstream) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.cause(), cause, "{text}");
            assert_eq!(error.upstream_fault(), upstream, "{text}");
        }
    }
}
