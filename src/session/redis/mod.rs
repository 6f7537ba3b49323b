//! A Redis client connection, after its TLS handshake: read -> auth -> policy -> upstream -> reply.
//! This file is the request side; `pinning`, `login` and `reply` hold the rest.
//!
//! Two halves run concurrently in the session's task:
//! - the request side reads and parses the client's commands, answers what the proxy owns (AUTH,
//!   HELLO's AUTH, QUIT, refusals), sends the rest upstream, and queues one `Slot` per command
//!   (or per batch of stateless ones) saying what to send back: a local reply, or N upstream
//!   replies;
//! - the reply side walks that queue, reading whole upstream frames and writing them (or the
//!   local replies) to the client in request order. Frames no slot waits for (RESP3 pushes,
//!   RESP2 pub/sub messages, MONITOR lines) are forwarded as they come.
//!
//! The queue is bounded, so a client that stops reading eventually stops being read from, and
//! nothing it does stalls another client. When the upstream fails mid-request the client gets an
//! error and the connection is closed (its upstream state is gone); a connection is returned to
//! the pool only when its reply stream is in step.
//!
//! Stateless commands go to a shared (multiplexed) connection, all of one client read as one
//! request; a session is pinned to a connection of its own only while it holds connection state
//! (see `admission::Disposition`). Both halves are futures of the one session task, joined.
//! Replies of 4 KiB or more reach the client from the buffer they were read into (`outbox`).

mod acl_commands;
mod cluster;
mod counting;
mod follow;
mod login;
mod pinning;
mod replies;
mod transaction;

use super::reader::{ClientReader, Filled, ReadError, ReadLimits};
use super::{admission, commands, outbox, sharing, slots};
use replies::{reply_side, Own};
use transaction::Transaction;

use crate::deadline::sleep_until;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::acl::User;
use crate::auth::cert::{CertMapping, CertNames};
use crate::auth::throttle::Throttle;
use crate::config::{AuthLimits, AuthMode, Limits};
use crate::error::{SessionError, UpstreamError};
use crate::live::Live;
use crate::metrics::{AuthLabels, CommandMeter, Metrics, SecurityEvent};
use crate::policy::Policy;
use crate::protocol::reply::{self, encode_command};
use crate::protocol::resp::{next_request, ReplyKind, ReplyScanner, Request};
use crate::upstream::shared::{Frames, Shared, SharedError, SharedReply, SharedRequest};
use crate::upstream::{Conn, Pool, Stream};
use admission::{Admission, Backend, Disposition, Identity};
use commands::{client_subcommand, plan_command, rewrite_reply, runs_script, Kind, Rewrite};
use counting::ReplyMode;
use outbox::Outbox;
use sharing::Sharing;

/// Commands queued between the two halves before the request side stops reading.
const MAX_QUEUED: usize = 1024;
/// Commands a session may have in flight on shared connections: past this it stops reading
/// its client until replies are taken, so that one client that does not read cannot pile up
/// replies (memory, and delay for the others on the same connection).
const MAX_SHARED_IN_FLIGHT: u32 = 512;
/// Upstream bytes gathered before a write, so that pipelines become one write.
const UPSTREAM_WRITE_BATCH: usize = 64 * 1024;
/// A batch buffer up to this size is kept for the session's next batch. An idle session holds
/// it too (outside `limits.max_buffered_bytes`), so it is small: a pipeline of 16 small
/// commands fits.
const KEEP_BATCH_BUFFER: usize = 1024;
/// Client bytes gathered before a write.
const CLIENT_WRITE_BATCH: usize = 64 * 1024;
/// Room made before each upstream read of a pinned session, reserved again before every read
/// so that big transfers still read in large chunks.
const READ_CHUNK: usize = 4 * 1024;
/// How long the close_notify to a departing client may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every session of one listener shares; built once by the server.
pub struct Context {
    /// Multiplexed upstream connections for sessions that hold no connection state.
    pub shared: Option<Arc<Shared>>,
    /// A Redis Cluster upstream: commands go to the node serving their keys' slot.
    pub cluster: Option<Arc<crate::upstream::cluster::Cluster>>,
    pub listener: String,
    pub auth: AuthMode,
    pub cert_users: Vec<CertMapping>,
    pub auth_limits: AuthLimits,
    /// Kept across reloads that leave `auth_limits` alone (its per-address failures too).
    pub throttle: Arc<Throttle>,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub pool: Pool,
    pub limits: Limits,
    /// The process-wide bound on buffered bytes, shared by every listener.
    pub budget: Arc<crate::budget::MemoryBudget>,
    /// Backend users cachegate provisioned (`commands.scripts = "backend_acl"`,
    /// `auth.backend_users`): who a session's own connection runs commands as.
    pub identities: Option<Identities>,
    /// At-rest encryption of values in some keyspaces (fixed for the process).
    pub encryption: Option<Arc<crate::crypt::Encryption>>,
    /// Cancelled when a reload replaces this context: wakes idle and subscribed sessions so
    /// that they take the new one (and a removed user's session closes) without waiting for
    /// the client's next request.
    pub superseded: CancellationToken,
}

/// The `AUTH` arguments of each identity a session's own connection may take.
pub struct Identities {
    /// The listener's own: its backend user, or the configured upstream credentials.
    pub listener: Vec<Bytes>,
    /// The configured upstream credentials, that renamed commands run as (the listener's
    /// backend user is denied their real names so that scripts cannot run them).
    pub admin: Option<Vec<Bytes>>,
    /// Per cachegate ACL user: its mirrored backend user, that its commands run as on its
    /// own connection (and so its scripts: Redis enforces the user's rules inside them).
    pub users: rustc_hash::FxHashMap<String, Vec<Bytes>>,
}

/// Who a session's own upstream connection is logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunsAs {
    Listener,
    Admin,
    User(String),
}

/// `ACL CAT <category>` answered by the backend lists command names: disabled ones are
/// hidden and renamed ones shown under their new name, as in COMMAND's replies.
fn acl_cat_rewrite(kind: Kind, args: &[Bytes], policy: &Policy) -> Option<Rewrite> {
    let cat =
        kind == Kind::Acl && args.len() == 3 && crate::auth::commands::is_word(&args[1], b"CAT");
    (cat && !policy.is_empty()).then_some(Rewrite::List)
}

pub use crate::auth::commands::script_callable;

/// What the reply side does for one command.
enum Slot {
    /// The upstream connection's read half, sent before the first `Upstream` slot.
    Attach(ReadHalf<Stream>),
    /// One of cachegate's own answers, with its place among the session's queued answers
    /// (charged together while they wait for a client that may not be reading; see
    /// `local_always`).
    Local(Bytes, Option<crate::budget::Ticket>),
    Upstream(Expect),
    /// A command sent on a shared connection; its one reply arrives here.
    Shared(SharedWait),
    /// Give the upstream read half back (once every reply before this is delivered), or
    /// `None` if bytes of an unfinished frame are waiting on it.
    Detach(oneshot::Sender<Option<ReadHalf<Stream>>>),
}

/// The metric labels of a batch's commands, in order: inline for the usual few.
type Labels = smallvec::SmallVec<[&'static str; 4]>;

/// How a shared command's reply comes.
enum Awaited {
    /// From the one shared connection it was sent on.
    Direct(oneshot::Receiver<SharedReply>),
    /// A cluster listener's command: redirections followed, parts merged.
    Routed(cluster::Settling),
}

struct SharedWait {
    reply: Awaited,
    /// Only for a single command (COMMAND replies are rewritten).
    rewrite: Option<Rewrite>,
    /// Each command's metric label, in order, and when they were sent.
    labels: Labels,
    /// The in-flight allowance taken for it (a command per label; a split cluster command
    /// takes one per part), given back on delivery.
    permits: u32,
    sent: Instant,
}

/// Stateless commands gathered from one read of the client, sent as one request.
struct SharedBatch {
    sender: mpsc::Sender<SharedRequest>,
    /// Which of the session's shared connections `sender` is.
    resp3: bool,
    bytes: BytesMut,
    labels: Labels,
}

struct Expect {
    replies: usize,
    /// False for replies to commands cachegate sent on its own behalf (DISCARD, AUTH).
    forward: bool,
    /// Blocking commands wait as long as they must; others are bounded by the request timeout.
    blocking: bool,
    rewrite: Option<Rewrite>,
    /// The command's metric label and when it was sent, for the latency histogram.
    timed: Option<(&'static str, Instant)>,
    /// Told whether that login succeeded: the request side waits for it before it sends
    /// anything else on the connection.
    login: Option<oneshot::Sender<bool>>,
    /// For cachegate's own command on a connection that may also carry frames for the client
    /// (RESP2 pub/sub): its reply is the frame that matches; any other goes to the client.
    until: Option<Box<Until>>,
    /// A RESP2 unsubscribe from a whole family: `replies` is known only where it is answered.
    answers_all: Option<counting::Family>,
    /// Comes after a RESET: the connection has no subscriptions left by then.
    after_reset: bool,
    /// EXEC's, on a connection that (un)subscribed: the confirmations of subscriptions made
    /// in the transaction are inside it.
    exec: bool,
    /// A (un)subscription's: its RESP2 replies are confirmations.
    confirms: bool,
    /// A SUNSUBSCRIBE's: its RESP2 replies are `sunsubscribe` confirmations, as a node's
    /// ending of a shard channel is (any other command's are not).
    sunsubscribes: bool,
    /// A cluster session's RESP2 SUNSUBSCRIBE of named channels: the names still to be
    /// confirmed. A `sunsubscribe` naming another channel is a node's ending, not a reply.
    shard_names: Option<Box<follow::Owed>>,
    /// A RESP3 (un)subscription's confirmations, awaited as pushes (with no reply due, a
    /// reply is a refusal, and ends the wait).
    pushes: Option<counting::Pushes>,
    /// A RESP3 SUNSUBSCRIBE the shard-channel follower was told of, taken back if refused.
    leave: Option<follow::Leave>,
}

/// The one frame that answers cachegate's own command.
enum Until {
    /// `PING <token>`, held as the token's bulk string: that, or `*2 pong <token>` while
    /// subscribed.
    Token(Bytes),
    /// `SSUBSCRIBE <channel>`: its confirmation, or a refusal.
    Confirms(Bytes),
}

impl Until {
    fn matches(&self, frame: &[u8], kind: ReplyKind) -> bool {
        match self {
            // (A refusal of the PING answers it too: the connection's user may be denied it,
            // or be logged out by a RESET. Any other error answers a client's command before
            // it, whose answers cachegate could not count.)
            Until::Token(bulk) => {
                (kind == ReplyKind::Error && refuses_ping(frame))
                    || frame == &bulk[..]
                    || (frame.starts_with(b"*2\r\n$4\r\npong\r\n") && frame.ends_with(bulk))
            }
            Until::Confirms(channel) => {
                kind == ReplyKind::Error
                    || follow::confirmation(frame)
                        .is_some_and(|(k, c, _)| k == b"ssubscribe" && c == &channel[..])
            }
        }
    }
}

/// Whether an error reply is a refusal of cachegate's own PING: an ACL denial or an unknown
/// command that names it, or the login a RESET undid.
fn refuses_ping(frame: &[u8]) -> bool {
    frame.starts_with(b"-NOAUTH") || frame.windows(6).any(|w| w.eq_ignore_ascii_case(b"'ping'"))
}

impl Expect {
    /// One reply, forwarded to the client.
    fn one() -> Self {
        Expect {
            replies: 1,
            forward: true,
            blocking: false,
            rewrite: None,
            timed: None,
            login: None,
            until: None,
            answers_all: None,
            after_reset: false,
            exec: false,
            confirms: false,
            sunsubscribes: false,
            shard_names: None,
            pushes: None,
            leave: None,
        }
    }

    /// Replies to commands cachegate sent on its own behalf: read, not forwarded.
    fn swallowed(replies: usize) -> Self {
        Expect {
            forward: false,
            replies,
            ..Expect::one()
        }
    }
}

/// Runs a session to its end. Never panics on client input; logs how it ended.
pub async fn run<S>(
    live: Arc<Live<Context>>,
    stream: S,
    peer: SocketAddr,
    cert: Option<CertNames>,
    shutdown: crate::drain::Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (cr, cw) = tokio::io::split(stream);
    let (tx, rx) = slots::channel(MAX_QUEUED);
    let abort = CancellationToken::new();
    // Cancelled when the client has gone (EOF or a read error), not on QUIT or shutdown, which
    // let in-flight requests finish.
    let client_gone = CancellationToken::new();
    let (generation, ctx) = live.load_with_generation();
    let mut req = RequestSide {
        ctx: ctx.clone(),
        live,
        generation,
        peer,
        failed_auths: 0,
        client_gone: client_gone.clone(),
        shared: ctx.shared.as_ref().map(|_| SharedSession::default()),
        pin_state: PinState::default(),
        id: next_client_id(),
        up_as: RunsAs::Listener,
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_SHARED_IN_FLIGHT as usize)),
        in_flight_resp3: false,
        started: Instant::now(),
        name: None,
        batch: None,
        batch_buf: BytesMut::new(),
        cert_user: cert_user(&ctx, cert.as_ref()),
        cert: cert.map(Box::new),
        by_cert: false,
        listening: false,
        behind_blocking: false,
        label: "other",
        tx: Some(tx),
        up: None,
        wbuf: BytesMut::new(),
        authenticated: false,
        user: None,
        transaction: Transaction::None,
        resp3: false,
        reply_mode: ReplyMode::On,
        abort: abort.clone(),
        pin_node: None,
        pinned: None,
        holder: crate::budget::Holder::current(),
        answers: crate::budget::QueuedBytes::new(ctx.budget.clone()),
        cluster_order: None,
        subscriptions: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        shard_subscriptions: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        follow: ctx
            .cluster
            .as_ref()
            .map(|_| Arc::new(follow::Follow::default())),
    };
    req.log_out();
    let own = Own {
        id: req.id,
        subscriptions: req.subscriptions.clone(),
        shard_subscriptions: req.shard_subscriptions.clone(),
        follow: req.follow.clone(),
        in_flight: req.in_flight.clone(),
        live: req.live.clone(),
    };
    // Pinned where they are built: a future bound first, then moved, would keep its own space
    // in the session's state beside the moved copy, and every idle connection pays for that.
    let (req_result, (read_half, clean, reply_result)) = crate::session::halves::both(
        std::pin::pin!(req.run(cr, &shutdown)),
        std::pin::pin!(reply_side(
            &ctx,
            cw,
            rx,
            own,
            abort.clone(),
            client_gone.clone()
        )),
    )
    .await;

    // The client's own errors say nothing about the upstream stream; only an upstream failure
    // or bytes that never left make it unusable.
    // A tainted connection (state RESET does not clear) is closed, never pooled.
    let upstream_in_step = clean
        && req.wbuf.is_empty()
        && !req.pin_state.tainted
        && !matches!(req_result, Err(SessionError::Upstream(_)));
    if let (Some(write_half), Some(read_half)) = (req.up.take(), read_half) {
        let pool = req.own_pool().clone();
        let conn = Conn {
            stream: read_half.unsplit(write_half),
            connector: pool.connector(),
        };
        pool.release(conn, upstream_in_step);
    }
    // The reply side's error first: when it ends (the client gone, the budget, the upstream),
    // the request side's next step fails only because its partner is gone.
    match reply_result.err().or(req_result.err()) {
        None => tracing::debug!(listener = %ctx.listener, %peer, "session closed"),
        Some(e) => {
            ctx.metrics.session_error(&ctx.listener, &e);
            match e.source() {
                crate::error::Source::Upstream => {
                    tracing::warn!(listener = %ctx.listener, %peer, error = %e, "session ended by upstream failure")
                }
                _ => tracing::debug!(listener = %ctx.listener, %peer, error = %e, "session ended"),
            }
        }
    }
}

struct RequestSide {
    /// The listener's configuration as this session last took it: a reload replaces it, and
    /// the session takes the new one before its next requests (`refresh`).
    ctx: Arc<Context>,
    live: Arc<Live<Context>>,
    generation: u64,
    peer: SocketAddr,
    /// While the session holds no connection state: its shared connections and the state
    /// cachegate keeps for it instead. `None` while pinned to its own connection.
    shared: Option<SharedSession>,
    /// Stateless commands waiting to go out together on a shared connection.
    batch: Option<SharedBatch>,
    /// The batches' buffer, kept between them: each batch is split off it, and once the
    /// shared connection has copied and dropped one, the next is written where it was.
    batch_buf: BytesMut,
    /// While pinned: the state that keeps it pinned, and its client name (to carry back).
    pin_state: PinState,
    /// The session's own `CLIENT ID`, stable for its life whichever upstream connections
    /// serve it (the backend's ids of shared connections are never shown).
    id: u64,
    /// Who its own upstream connection is logged in as.
    up_as: RunsAs,
    /// Commands it may still have in flight on shared connections.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// The RESP version of the shared connections those commands went to (a session uses one
    /// shared connection per version, per node).
    in_flight_resp3: bool,
    started: Instant,
    name: Option<Bytes>,
    /// Failed AUTHs on this connection (closed at `auth_limits.max_failures`).
    failed_auths: u32,
    /// The user the client's certificate logs in as, if any.
    cert_user: Option<Arc<User>>,
    /// The names of the client's certificate: a reload maps them to a user again.
    cert: Option<Box<CertNames>>,
    /// The session is logged in by its certificate (not by AUTH).
    by_cert: bool,
    /// The session receives without asking: subscribed, MONITOR, CLIENT TRACKING (until
    /// RESET). Kept whether or not the listener shares connections.
    listening: bool,
    /// A blocking command went on the session's own connection with its reply off or
    /// skipped, and nothing awaited since: the next reply awaited there comes only once it
    /// has ended, so it waits as long as that command does (not the request timeout).
    behind_blocking: bool,
    /// The metric label of the command at hand: admission's, or the session's own command's
    /// (HELLO, RESET); cachegate's own commands are not timed.
    label: &'static str,
    /// Dropped when the request side ends, which tells the reply side no more slots come.
    tx: Option<slots::Sender<Slot>>,
    up: Option<WriteHalf<Stream>>,
    wbuf: BytesMut,
    authenticated: bool,
    /// With ACL users: who is logged in; their rules apply to every command.
    user: Option<Arc<User>>,
    /// MULTI: open, held (cluster) or not, and whether EXEC aborts.
    transaction: Transaction,
    resp3: bool,
    reply_mode: ReplyMode,
    abort: CancellationToken,
    client_gone: CancellationToken,
    /// A cluster listener's session pinned to one node: that node (its pool gives the
    /// connection and takes it back).
    pin_node: Option<Arc<crate::upstream::cluster::Node>>,
    /// Counted in `cachegate_pinned_sessions` while held: from pinning to unpinning, or to
    /// the session's end, however it ends (an evicted session's future is dropped mid-way).
    pinned: Option<pinning::PinnedMark>,
    /// This session's share of the buffer bound: what its requests on shared connections
    /// carry, taken once (a task-local lookup) rather than for every batch.
    holder: Option<Arc<crate::budget::Holder>>,
    /// cachegate's own answers queued for the reply side, charged together.
    answers: Arc<crate::budget::QueuedBytes>,
    /// A cluster session's order of writes to each slot across a change of the map.
    cluster_order: Option<Box<cluster::Order>>,
    /// The pinned connection's count of subscriptions, as its last (un)subscribe confirmation
    /// said (kept by the reply side; `SUBSCRIBING` until a SUBSCRIBE's first one).
    subscriptions: Arc<std::sync::atomic::AtomicI64>,
    /// Of those, the shard channels (kept by the reply side).
    shard_subscriptions: Arc<std::sync::atomic::AtomicI64>,
    /// A cluster session's shard channels, followed across a resharding.
    follow: Option<Arc<follow::Follow>>,
}

/// The ACL user a verified client certificate maps to on this listener.
fn cert_user(ctx: &Context, cert: Option<&CertNames>) -> Option<Arc<User>> {
    let AuthMode::Acl(group) = &ctx.auth else {
        return None;
    };
    let user = crate::auth::cert::mapped_user(group, &ctx.cert_users, cert)?.clone();
    tracing::debug!(listener = %ctx.listener, user = %user.name, "client certificate logs in");
    Some(user)
}

/// The state cachegate keeps for a session on shared connections.
#[derive(Default)]
struct SharedSession {
    resp2: Option<mpsc::Sender<SharedRequest>>,
    resp3: Option<mpsc::Sender<SharedRequest>>,
    name: Option<Bytes>,
}

/// Connection state a pinned session holds besides MULTI.
#[derive(Default)]
struct PinState {
    watching: bool,
    /// A database other than 0.
    db: bool,
    /// Tracking, CLIENT REPLY, MONITOR and the like: only RESET ends them.
    sticky: bool,
    /// Subscribed: held while the connection counts any subscription.
    subscribed: bool,
    /// Frames may still come that no reply slot counts (RESP3's UNSUBSCRIBE confirmations),
    /// or a command whose reply was off or skipped may still run: a PING round trip settles
    /// them before the connection is handed back. Holds nothing by itself.
    unsettled: bool,
    /// State that RESET does not clear (SCRIPT DEBUG, CLIENT NO-EVICT, unknown commands):
    /// the connection is closed when the session ends, never pooled or shared again.
    tainted: bool,
}

impl PinState {
    fn any(&self) -> bool {
        self.watching || self.db || self.sticky || self.tainted
    }

    /// The connection has (un)subscribed since it was pinned: confirmations may still come,
    /// in EXEC's reply among others, and a settling PING tells what is left.
    fn pubsub(&self) -> bool {
        self.subscribed || self.unsettled
    }
}

/// Process-wide: every session's virtual `CLIENT ID` is unique.
fn next_client_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `CLIENT LIST`'s filters (`TYPE t`, `ID id...`) select this session: `None` for a
/// syntax error.
fn list_selects_me(filters: &[Bytes], id: u64) -> Option<bool> {
    match filters {
        [] => Some(true),
        [ty, t] if crate::auth::commands::is_word(ty, b"TYPE") => {
            if crate::auth::commands::is_word(t, b"NORMAL") {
                Some(true)
            } else if [&b"MASTER"[..], b"REPLICA", b"SLAVE", b"PUBSUB"]
                .iter()
                .any(|k| crate::auth::commands::is_word(t, k))
            {
                Some(false)
            } else {
                None
            }
        }
        [word, ids @ ..] if crate::auth::commands::is_word(word, b"ID") && !ids.is_empty() => {
            let mut mine = false;
            for raw in ids {
                let n: u64 = std::str::from_utf8(raw).ok()?.parse().ok()?;
                mine |= n == id;
            }
            Some(mine)
        }
        _ => None,
    }
}

/// The outcome of checking credentials.
enum Verdict {
    Ok {
        user: String,
        slot: usize,
    },
    /// `known`: `attempted` is a configured user name (safe as a metric label).
    Failed {
        attempted: String,
        known: bool,
    },
    /// Answered without a verdict on a user (no AUTH configured).
    Reply(Bytes),
}

/// Whether the request side goes on reading.
enum Flow {
    Continue,
    Stop,
}

impl RequestSide {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        cr: R,
        shutdown: &crate::drain::Drain,
    ) -> Result<(), SessionError> {
        let result = self.read_loop(cr, shutdown).await;
        self.tx = None;
        result
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        cr: R,
        shutdown: &crate::drain::Drain,
    ) -> Result<(), SessionError> {
        let mut reader = ClientReader::new(cr, self.ctx.budget.clone());
        // Registered once, not on every read: each registration takes the token's lock.
        let abort = self.abort.clone();
        let mut aborted = std::pin::pin!(abort.cancelled());
        let mut shut = std::pin::pin!(shutdown.wait());
        let mut superseded = Box::pin(self.ctx.superseded.clone().cancelled_owned());
        let follow = self.follow.clone();
        // Since when the client has been connected without being logged in (from its
        // connection, or the RESET that logged it out): `limits.login_timeout` closes it.
        let mut logged_out_since = Some(Instant::now());
        loop {
            if self.follow.is_some() {
                self.follow_shards().await?;
            }
            // Everything complete in the buffer is handled before the next read, so a pipeline
            // is forwarded as one write.
            let mut stop = false;
            loop {
                // A reload is taken before each request, not only before each read: what the
                // client sent before it, still in the buffer while the session waited on its
                // replies, is judged by the new rules (a removed user's ends here). A reviewer
                // had a disabled user's buffered INCRs run after the reload.
                if self.live.generation() != self.generation {
                    if !self.refresh() {
                        // Ends as a QUIT does: what was judged before it still goes (below),
                        // so that the replies the reply side waits for come (the session
                        // would otherwise linger until the request timeout, and end as an
                        // upstream failure).
                        stop = true;
                        break;
                    }
                    superseded.set(self.ctx.superseded.clone().cancelled_owned());
                }
                match next_request(
                    &mut reader.buf,
                    &self.ctx.limits.request,
                    self.authenticated,
                ) {
                    Ok(Some(request)) => {
                        reader.parsed();
                        if matches!(self.handle(request).await?, Flow::Stop) {
                            stop = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.local_always(reply::protocol_error(&e)).await?;
                        self.flush_upstream().await?;
                        return Err(e.into());
                    }
                }
            }
            self.flush_shared().await?;
            self.flush_upstream().await?;
            if stop || shutdown.started() {
                return Ok(());
            }
            logged_out_since = match (self.authenticated, logged_out_since) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, since) => since,
            };
            let login_timeout = self.ctx.limits.login_timeout;
            let login_deadline = logged_out_since.zip(login_timeout).map(|(s, t)| s + t);
            if let (Some(deadline), Some(t)) = (login_deadline, login_timeout) {
                if Instant::now() >= deadline {
                    let text = format!(
                        "cachegate: not logged in within {t:?} (limits.login_timeout); closing the connection"
                    );
                    self.local_always(reply::error(&text)).await?;
                    return Err(SessionError::LoginTimeout(t));
                }
            }
            let limits = ReadLimits {
                max_request_bytes: self.ctx.limits.max_request_bytes,
                partial_request_timeout: self.ctx.limits.partial_request_timeout,
            };
            // Shutdown, an abort by the reply side, or a reload (taken at the loop's top).
            let wake = std::pin::pin!(async {
                let ended = async {
                    match &follow {
                        Some(f) => f.wake.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut shut => {}
                    _ = &mut aborted => {}
                    _ = &mut superseded => {}
                    _ = ended => {}
                    // (Boxed, and only before a login: every idle session holds this future.)
                    _ = async {
                        match login_deadline {
                            Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
            });
            match reader.fill(limits, wake).await {
                Ok(Filled::Data) => {}
                Ok(Filled::Woken) if shutdown.started() || abort.is_cancelled() => return Ok(()),
                Ok(Filled::Woken) => {}
                Ok(Filled::Eof) => {
                    self.client_gone.cancel();
                    return Ok(());
                }
                Err(ReadError::Io(e)) => {
                    self.client_gone.cancel();
                    return Err(SessionError::ClientIo(e));
                }
                Err(ReadError::PartialTimeout(t)) => {
                    return Err(SessionError::PartialRequestTimeout(t))
                }
                // As Redis: a client over its query buffer limit is closed without a reply.
                Err(ReadError::TooLarge(max)) => return Err(SessionError::QueryBufferFull(max)),
                Err(ReadError::OverBudget(over)) => {
                    self.local_always(reply::failure(&over)).await?;
                    return Err(SessionError::OverBudget(over));
                }
            }
        }
    }

    /// Takes the listener's configuration after a reload: the new policy, limits and users
    /// apply from the next request on. The session is closed (false) when the reload took
    /// away who it is: its user was removed or disabled, or it logged in through its
    /// certificate and the certificate now maps to another user or none (as Redis and
    /// ElastiCache close a modified user's connections); and when it receives without asking
    /// (subscriptions, MONITOR, tracking) while its user's rules changed (Redis disconnects
    /// subscribers whose channel permissions are revoked). A transaction open across a reload
    /// fails at EXEC (EXECABORT): what was queued was checked against rules no longer in force.
    /// Token sessions go on: a removed token stops new logins only, as a new Redis password does.
    fn refresh(&mut self) -> bool {
        let (generation, ctx) = self.live.load_with_generation();
        self.generation = generation;
        let cert_user = cert_user(&ctx, self.cert.as_deref());
        // Who the session may still be is the login's call; what it is doing (receiving
        // without asking) is the session's.
        let user = crate::auth::login::keeps(
            &ctx.auth,
            self.user.as_deref(),
            self.by_cert,
            self.cert_user.as_ref().map(|u| u.name.as_str()),
            cert_user.as_deref(),
        );
        let why = match &user {
            Err(why) => Some(*why),
            Ok(Some(new))
                if self.listening
                    && self.user.as_ref().is_some_and(|old| !old.same_permissions(new)) =>
            {
                Some("its user's rules changed while it receives without asking (pub/sub, MONITOR, tracking)")
            }
            Ok(_) => None,
        };
        if let Some(why) = why {
            tracing::info!(listener = %ctx.listener, peer = %self.peer, user = %self.user_name(), "session closed by a reload: {why}");
            // Also ends a wait for a blocking command's reply, which the connection then
            // never returns to the pool.
            self.client_gone.cancel();
            return false;
        }
        let user = user.ok().flatten();
        // A transaction open across a reload that changed what it may do fails at EXEC: what
        // it queued was checked against rules no longer in force.
        let rules_changed = ctx.policy != self.ctx.policy
            || match (&self.user, &user) {
                (Some(old), Some(new)) => !old.same_permissions(new),
                _ => false,
            };
        if rules_changed {
            self.transaction.refuse();
        }
        self.user = user;
        self.cert_user = cert_user;
        self.ctx = ctx;
        true
    }

    async fn handle(&mut self, mut req: Request) -> Result<Flow, SessionError> {
        let gate = admission::Gate {
            authenticated: self.authenticated,
            user: self.user.as_deref(),
            acl: matches!(self.ctx.auth, AuthMode::Acl(_)),
            backend: self.backend(),
            connection: match (&self.shared, &self.ctx.shared) {
                (Some(_), _) => admission::Connection::Shared,
                (None, None) => admission::Connection::OwnOnly,
                (None, Some(_)) => admission::Connection::Own {
                    holds_state: self.holds_state(),
                },
            },
            cluster: self.ctx.cluster.is_some(),
        };
        let plan = match admission::admit(&mut req, gate, &self.ctx.policy) {
            Admission::Forward(plan) => plan,
            // An HTTP request on the Redis port (a web page making a browser post to
            // localhost): closed at once without an answer, as Redis does.
            Admission::CrossProtocol => {
                let name = self.user_name().to_string();
                tracing::warn!(listener = %self.ctx.listener, peer = %self.peer, "possible cross-protocol attack: an HTTP request on the Redis port; connection closed");
                self.security_event(
                    "cross_protocol",
                    String::from_utf8_lossy(req.name()).into_owned(),
                    &name,
                    self.user.is_some() || !self.authenticated,
                );
                return Ok(Flow::Stop);
            }
            // Rare paths are boxed, so that the session's future (held by every idle
            // connection) is sized for the common one.
            Admission::Auth => return Box::pin(self.auth(&req)).await,
            Admission::Hello => return Box::pin(self.hello(req)).await,
            Admission::Quit => {
                self.local(Bytes::from_static(reply::OK)).await?;
                return Ok(Flow::Stop);
            }
            Admission::Reset => return Box::pin(self.reset()).await,
            Admission::Answer {
                reply,
                fails_multi,
                event,
            } => {
                if let (Some(event), Some(user)) = (event, &self.user) {
                    let name = user.name.clone();
                    self.security_event(event.reason, event.object, &name, true);
                }
                if fails_multi {
                    self.transaction.refuse();
                }
                self.local(reply).await?;
                return Ok(Flow::Continue);
            }
            // Redis would queue it and answer inside EXEC's reply (or never, after DISCARD):
            // refused, and the transaction fails, as AUTH. Answered at once, `ACL LOG RESET`
            // in a transaction later discarded would still have wiped the security log.
            Admission::AclLocal if self.transaction.is_open() => {
                return self
                    .refused(reply::error("cachegate: ACL cannot run inside MULTI"))
                    .await;
            }
            Admission::AclLocal => {
                if let (Some(user), AuthMode::Acl(group)) = (&self.user, &self.ctx.auth) {
                    let answer =
                        acl_commands::answer(&req.args, user, group, self.resp3, &self.ctx);
                    self.local(answer).await?;
                }
                return Ok(Flow::Continue);
            }
        };
        let kind = plan.kind;
        let sharing = plan.sharing;
        let mut args = req.args;
        // The label admission found, for whatever sends this command on.
        self.label = plan.label;
        match sharing {
            Sharing::Local if kind == Kind::Client || kind == Kind::Acl => {
                if let Some(answer) = self.identity(&args) {
                    self.local(answer).await?;
                    return Ok(Flow::Continue);
                }
            }
            // (A cluster listener refuses these: its sessions are never tainted.)
            Sharing::PinTaint if self.ctx.cluster.is_none() => self.pin_state.tainted = true,
            _ => {}
        }
        // At-rest encryption: values sealed before they leave, the reply opened on its way
        // back; a command that would work on ciphertext is refused.
        let mut open: Option<Rewrite> = None;
        if let Some(enc) = &self.ctx.encryption {
            use crate::crypt::plan::{plan_found, refusal, Plan};
            // What the client sent, to count only the values sealing replaced (an argument of
            // the client's own that merely starts like a sealed value counts for nothing).
            let sent: smallvec::SmallVec<[usize; 4]> =
                args.iter().map(|a| a.as_ptr() as usize).collect();
            let sealing = plan_found(plan.command.0, &mut args, &enc.spaces, &enc.keys);
            // The backend user cachegate's connections log in as is kept from HGETALL.
            let hgetall_denied = || {
                self.ctx.identities.is_some()
                    && self.ctx.policy.decide(b"HGETALL") != crate::policy::Decision::Allow
            };
            if let Some(why) = refusal(&sealing, self.transaction.is_open(), hgetall_denied) {
                return self.refused(reply::error(&why)).await;
            }
            if let Plan::Sealed(reads) = sealing {
                req.raw = None;
                let sealed = args
                    .iter()
                    .zip(&sent)
                    .filter(|(a, &was)| a.as_ptr() as usize != was && crate::crypt::is_sealed(a))
                    .count();
                if sealed > 0 {
                    enc.count_sealed(sealed as u64);
                }
                open = reads.map(|reads| Rewrite::Open(Arc::new((enc.clone(), reads))));
            }
        }
        // Who runs it, decided once by admission: the same answer before and after it is sent.
        // (Who runs it as a `RunsAs` is built only where a connection of its own is used.)
        let as_admin = plan.identity == Identity::Admin;
        let disposition = plan.disposition;
        if self.transaction.is_held() {
            let want = self.runs_as(plan.identity);
            return Box::pin(self.held_multi(kind, plan.command, sharing, want, &args)).await;
        }
        // Back to shared connections, as admission decided, once what the subscriptions owe
        // is settled.
        if plan.unpin && Box::pin(self.subscriptions_settled()).await? {
            Box::pin(self.unpin()).await?;
        }
        // A cluster session pinned for this very command is on the node its keys chose.
        let mut placed = false;
        if self.shared.is_some() {
            match disposition {
                Disposition::Shared => {
                    let (raw, rewrite) = if kind == Kind::Command {
                        let (fwd, rw) = plan_command(&args, &self.ctx.policy);
                        args = fwd.into();
                        (None, rw)
                    } else if let Some(rw) = acl_cat_rewrite(kind, &args, &self.ctx.policy) {
                        (req.raw.as_ref(), Some(rw))
                    } else if open.is_some() {
                        (None, open)
                    } else {
                        (req.raw.as_ref(), None)
                    };
                    if let Some(cluster) = &self.ctx.cluster {
                        let cluster = cluster.clone();
                        return Box::pin(self.forward_cluster(
                            cluster,
                            plan.command,
                            &args,
                            raw,
                            rewrite,
                        ))
                        .await;
                    }
                    return self.forward_shared(&args, raw, rewrite).await;
                }
                Disposition::Pin if self.ctx.cluster.is_some() => {
                    match self.cluster_place(kind, sharing, plan.command, &args) {
                        cluster::Place::Node(node) => {
                            if let Some(unavailable) = Box::pin(self.pin_to(node)).await? {
                                return self.refused(unavailable).await;
                            }
                            placed = true;
                        }
                        cluster::Place::Answer(reply) => {
                            self.local(reply).await?;
                            return Ok(Flow::Continue);
                        }
                    }
                }
                Disposition::SelectZero => {
                    self.local(Bytes::from_static(reply::OK)).await?;
                    return Ok(Flow::Continue);
                }
                Disposition::SetName => {
                    let reply = self.virtual_client(&args);
                    self.local(reply).await?;
                    return Ok(Flow::Continue);
                }
                Disposition::Pin => {
                    if let Some(unavailable) = Box::pin(self.pin()).await? {
                        return self.refused(unavailable).await;
                    }
                }
            }
        }
        // A cluster session pinned to one node: only what that node serves goes on it.
        let misfit = match placed {
            true => None,
            false => self.cluster_fits(kind, sharing, plan.command, &args),
        };
        if let Some(refusal) = misfit {
            return self.refused(refusal).await;
        }
        // Logged in as who must run it, before anything below changes the session's state.
        if let Some(refusal) = Box::pin(self.run_as(self.runs_as(plan.identity))).await? {
            return self.refused(refusal).await;
        }
        // Inside MULTI, one channel per (un)subscription.
        if let Some(refusal) = self
            .transaction
            .is_open()
            .then(|| transaction::refused_inside(kind, &args))
            .flatten()
        {
            return self.refused(reply::error(&refusal)).await;
        }
        let mut expect = Expect::one();
        // Sent whatever CLIENT REPLY says (`counting`): the mode is already applied.
        let mut exempt = false;
        // Redis's RESP2 subscribed context refuses MULTI (as all but pub/sub, PING, QUIT and
        // RESET): the backend's own refusal, and no transaction.
        let refused =
            kind == Kind::Multi && args.len() == 1 && self.in_subscribed_context().await?;
        match kind {
            // With the wrong number of arguments, MULTI and DISCARD are arity errors that change
            // nothing (the backend says so); EXEC's aborts the transaction, as EXEC.
            Kind::Multi | Kind::Discard if args.len() != 1 => {}
            Kind::Multi if refused => {}
            Kind::Multi => self.transaction.begin(),
            // Without MULTI, EXEC and DISCARD are errors that leave a WATCH in place.
            Kind::Exec | Kind::Discard if !self.transaction.is_open() => {}
            Kind::Discard => {
                self.transaction.end();
                self.pin_state.watching = false;
            }
            Kind::Exec if self.transaction.is_dirty() => {
                // A refused command was queued: as Redis does, the whole transaction is
                // discarded. The upstream's MULTI is ended with a DISCARD whose reply is ours.
                self.transaction.end();
                // As Redis: an aborted EXEC unwatches too (DISCARD does so upstream).
                self.pin_state.watching = false;
                // Under CLIENT REPLY OFF (or SKIP) the backend answers the DISCARD with
                // nothing, and the client gets no EXECABORT, as Redis would send no EXEC reply.
                let was = self.reply_mode;
                let (replies, after) = counting::under(was, 1);
                self.reply_mode = after;
                let discard = [Bytes::from_static(b"DISCARD")];
                Box::pin(self.forward(&discard, Expect::swallowed(replies))).await?;
                if was == ReplyMode::On {
                    self.local_always(Bytes::from_static(reply::EXECABORT))
                        .await?;
                }
                return Ok(Flow::Continue);
            }
            Kind::Exec => {
                self.transaction.end();
                self.pin_state.watching = false;
                expect.exec = self.pin_state.pubsub();
            }
            Kind::Command => {
                let (fwd, rewrite) = plan_command(&args, &self.ctx.policy);
                args = fwd.into();
                expect.rewrite = rewrite;
            }
            Kind::Acl => expect.rewrite = acl_cat_rewrite(kind, &args, &self.ctx.policy),
            _ if open.is_some() => expect.rewrite = open,
            Kind::Subscribe | Kind::Unsubscribe => {
                // Redis sends confirmations whatever CLIENT REPLY says, but not the replies
                // around them: on a RESP2 connection, whose confirmations are replies, no
                // count could follow what a subscribed context refuses silently (CLIENT REPLY
                // ON among them). cachegate keeps the two apart.
                if kind == Kind::Subscribe && self.reply_mode != ReplyMode::On {
                    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
                    return self
                        .refused(reply::error(&format!(
                            "cachegate: {name} cannot run while CLIENT REPLY is OFF or SKIP"
                        )))
                        .await;
                }
                let sunsubscribes = crate::auth::commands::is_word(&args[0], b"SUNSUBSCRIBE");
                // The shard-channel follower hears of the client's own leaving (outside MULTI,
                // where it happens at EXEC or never).
                if let Some(follow) = self
                    .follow
                    .clone()
                    .filter(|_| sunsubscribes && !self.transaction.is_open())
                {
                    Box::pin(self.before_leaving(&args[1..])).await?;
                    if self.resp3 {
                        // RESP3's confirmations arrive unasked (pushes), to be told apart
                        // from a node's.
                        expect.leave = Some(follow.client_leaves(&args[1..]));
                    } else if args.len() > 1 {
                        // RESP2's are replies the reply side counts, a node's ending of
                        // another channel told apart by name.
                        expect.shard_names = Some(Box::new(follow::Owed::of(&args[1..])));
                    }
                }
                // RESP3 confirms (un)subscriptions with pushes, which need no slot; RESP2 sends
                // one reply per channel (`counting`).
                let counted = counting::count(
                    kind,
                    &args,
                    self.resp3,
                    self.reply_mode,
                    self.transaction.is_open(),
                );
                // (An unsubscribe of all is answered once per subscription: the reply side
                // counts them when it gets there.)
                expect.answers_all = counted.answers_all;
                expect.pushes = counted.pushes;
                expect.replies = counted.replies;
                expect.confirms = true;
                expect.sunsubscribes = sunsubscribes;
                if counted.exempt {
                    self.reply_mode = counted.mode;
                    exempt = true;
                }
            }
            // CLIENT REPLY changes how many replies follow; the session must count the same way.
            Kind::Client
                if args.len() == 3 && crate::auth::commands::is_word(&args[1], b"REPLY") =>
            {
                if self.transaction.is_open() {
                    // Redis 7.0 would answer the EXEC with an array whose count is wrong (the
                    // mode applies to the replies inside it): refused, and the transaction
                    // fails, as for any command refused inside MULTI.
                    return self
                        .refused(reply::error(
                            "cachegate: CLIENT REPLY cannot run inside MULTI",
                        ))
                        .await;
                }
                let quiet = !crate::auth::commands::is_word(&args[2], b"ON");
                if quiet && self.still_subscribed().await? {
                    self.local(reply::error(
                        "cachegate: CLIENT REPLY OFF and SKIP cannot run while subscribed",
                    ))
                    .await?;
                    return Ok(Flow::Continue);
                }
                let counted = counting::count(kind, &args, self.resp3, self.reply_mode, false);
                self.reply_mode = counted.mode;
                expect.replies = counted.replies;
                if counted.exempt {
                    return Box::pin(self.forward_raw(&args, expect)).await;
                }
            }
            Kind::Blocking => expect.blocking = true,
            _ => {}
        }
        self.note_sent(kind, &args);
        let flow = if exempt {
            Box::pin(self.forward_raw(&args, expect)).await?
        } else {
            Box::pin(self.forward(&args, expect)).await?
        };
        if as_admin {
            // Back at once: nothing else runs with the administrator's rights.
            let back = self.wanted_identity();
            Box::pin(self.run_as(back)).await?;
        }
        Ok(flow)
    }

    /// Sends a stateless command on this session's shared connection (one per RESP version):
    /// `raw` when the client's own encoding of `args` is at hand, or `args` encoded again.
    async fn forward_shared(
        &mut self,
        args: &[Bytes],
        raw: Option<&Bytes>,
        rewrite: Option<Rewrite>,
    ) -> Result<Flow, SessionError> {
        let resp3 = self.resp3;
        let same = self.batch.as_ref().is_some_and(|b| b.resp3 == resp3);
        if !same || rewrite.is_some() {
            Box::pin(self.flush_shared()).await?;
        }
        let batch = match &mut self.batch {
            Some(batch) => batch,
            None => {
                let (Some(pools), Some(session)) = (self.ctx.shared.as_ref(), self.shared.as_mut())
                else {
                    return Ok(Flow::Continue);
                };
                let sender = if resp3 {
                    session.resp3.get_or_insert_with(|| pools.resp3.pick())
                } else {
                    session.resp2.get_or_insert_with(|| pools.resp2.pick())
                };
                self.batch.insert(SharedBatch {
                    sender: sender.clone(),
                    resp3,
                    bytes: std::mem::take(&mut self.batch_buf),
                    labels: Labels::new(),
                })
            }
        };
        match raw {
            Some(raw) => batch.bytes.extend_from_slice(raw),
            None => encode_command(&mut batch.bytes, args.iter().map(|a| &a[..])),
        }
        batch.labels.push(self.label);
        // A rewritten reply travels alone; big batches go out without waiting for the read.
        if rewrite.is_some()
            || batch.labels.len() >= 128
            || batch.bytes.len() >= UPSTREAM_WRITE_BATCH
        {
            Box::pin(self.send_batch(rewrite)).await?;
        }
        Ok(Flow::Continue)
    }

    /// Sends the gathered stateless commands, if any. Called before anything else is queued
    /// for the reply side, so replies stay in request order.
    async fn flush_shared(&mut self) -> Result<(), SessionError> {
        self.send_batch(None).await
    }

    /// Takes the in-flight allowance for `requests` requests (at most `MAX_SHARED_IN_FLIGHT`)
    /// about to go to the session's `resp3` shared connection, waiting while the client has
    /// that many replies undelivered; returns how many permits were taken. They are given back
    /// by the reply side when it delivers the replies (a permit held in the slot would make
    /// every queued slot bigger). After a HELLO changed the version, what is still in flight
    /// on the other version's connection is answered first: two connections give no order.
    pub(super) async fn take_in_flight(
        &mut self,
        requests: usize,
        resp3: bool,
    ) -> Result<u32, SessionError> {
        let want = (requests as u32).min(MAX_SHARED_IN_FLIGHT);
        if want == 0 {
            return Ok(0);
        }
        if resp3 != self.in_flight_resp3 {
            Box::pin(self.settle_shared()).await?;
            self.in_flight_resp3 = resp3;
        }
        match self.in_flight.try_acquire_many(want) {
            Ok(permits) => permits.forget(),
            // Rare: the client has many replies waiting. Boxed, so the session stays small.
            Err(_) => Box::pin(self.in_flight.clone().acquire_many_owned(want))
                .await
                .map_err(|_| closed())?
                .forget(),
        }
        Ok(want)
    }

    /// Waits until every command sent on a shared connection has been answered, before
    /// anything goes on another connection (the session's own, or the other RESP version's):
    /// Redis runs one client's commands in the order it sent them, and two connections give
    /// no order, so `SET k v` then `WATCH k` could otherwise reach the backend the other way
    /// round. Commands not sent yet are sent first.
    pub(super) async fn settle_shared(&mut self) -> Result<(), SessionError> {
        self.flush_shared().await?;
        if self.in_flight.available_permits() == MAX_SHARED_IN_FLIGHT as usize {
            return Ok(());
        }
        // The reply side delivers in order: whatever it owes before them must leave too.
        self.flush_upstream().await?;
        let all = self
            .in_flight
            .clone()
            .acquire_many_owned(MAX_SHARED_IN_FLIGHT)
            .await
            .map_err(|_| closed())?;
        drop(all);
        Ok(())
    }

    async fn send_batch(&mut self, rewrite: Option<Rewrite>) -> Result<(), SessionError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        let n = batch.labels.len();
        let queued =
            match crate::budget::queued(&self.ctx.budget, batch.bytes.len(), self.holder.clone()) {
                Ok(queued) => queued,
                // Past the bound, each of the batch's commands fails, as a shared connection fails
                // a request whose replies are over it; the session goes on.
                Err(over) => {
                    self.ctx
                        .metrics
                        .request_failed(&self.ctx.listener, "over_budget", n as u64);
                    let answers = reply::failure(&over).repeat(n);
                    return self.queue_slot(Slot::Local(answers.into(), None)).await;
                }
            };
        let want = self.take_in_flight(n, batch.resp3).await?;
        self.queue_slot(Slot::Shared(SharedWait {
            reply: Awaited::Direct(rx),
            rewrite,
            permits: want,
            labels: batch.labels,
            sent: Instant::now(),
        }))
        .await?;
        let mut buf = batch.bytes;
        let bytes = buf.split().freeze();
        // Kept for the next batch unless a burst made it big.
        if bytes.len() + buf.capacity() <= KEEP_BATCH_BUFFER {
            self.batch_buf = buf;
        }
        let request = SharedRequest {
            bytes,
            frames: Frames::Resp(n),
            reply: tx,
            owner: self.holder.clone(),
            queued,
        };
        match batch.sender.try_send(request) {
            Ok(()) => Ok(()),
            // A full queue is rare: its wait is boxed, so the session's state stays small.
            Err(mpsc::error::TrySendError::Full(request)) => Box::pin(batch.sender.send(request))
                .await
                .map_err(|_| closed()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    /// CLIENT ID / INFO / LIST, and ACL WHOAMI without cachegate users: answered about this
    /// session alone, whichever upstream connections serve it, so that no client learns the
    /// backend's ids or addresses of connections that are not its own. `None` for the local
    /// commands answered elsewhere (SETNAME, GETNAME).
    fn identity(&mut self, args: &[Bytes]) -> Option<Bytes> {
        let sub = args
            .get(1)
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        let is_acl = crate::auth::commands::is_word(&args[0], b"ACL");
        let known = matches!(
            (is_acl, &sub[..]),
            (true, b"WHOAMI") | (false, b"ID" | b"INFO" | b"LIST")
        );
        if !known {
            return None;
        }
        if self.transaction.is_open() {
            // Its answer cannot be queued with the transaction's; refused, as a queued error.
            self.transaction.refuse();
            return Some(reply::error(
                "cachegate: CLIENT ID/INFO/LIST and ACL WHOAMI are answered by cachegate and cannot run inside MULTI",
            ));
        }
        let verbatim = |text: String| {
            if self.resp3 {
                Bytes::from(format!("={}\r\ntxt:{text}\r\n", text.len() + 4))
            } else {
                reply::bulk(text.as_bytes())
            }
        };
        Some(match (is_acl, &sub[..], args.len()) {
            (true, _, 2) => reply::bulk(self.user_name().as_bytes()),
            (false, b"ID", 2) => Bytes::from(format!(":{}\r\n", self.id)),
            (false, b"INFO", 2) => verbatim(self.client_line("client|info")),
            (false, b"LIST", _) => match list_selects_me(&args[2..], self.id) {
                Some(true) => verbatim(self.client_line("client|list")),
                Some(false) => verbatim(String::new()),
                None => Bytes::from_static(reply::SYNTAX),
            },
            (_, _, _) => reply::wrong_arity(&args[0]),
        })
    }

    fn user_name(&self) -> &str {
        self.user.as_ref().map_or("default", |u| u.name.as_str())
    }

    /// This session's line of `CLIENT LIST`, in Redis 7.0's fields.
    fn client_line(&self, cmd: &str) -> String {
        let name = match &self.shared {
            Some(shared) => shared.name.as_ref(),
            None => self.name.as_ref(),
        };
        let name = name
            .map(|n| String::from_utf8_lossy(n).replace(' ', "_"))
            .unwrap_or_default();
        format!(
            "id={} addr={} laddr=cachegate:{} fd=-1 name={name} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={} redir=-1 resp={}\n",
            self.id,
            self.peer,
            self.ctx.listener,
            self.started.elapsed().as_secs(),
            if self.transaction.is_open() { "x" } else { "N" },
            self.user_name(),
            if self.resp3 { 3 } else { 2 },
        )
    }

    /// CLIENT SETNAME / GETNAME / SETINFO for a session on shared connections.
    fn virtual_client(&mut self, args: &[Bytes]) -> Bytes {
        let Some(state) = self.shared.as_mut() else {
            return Bytes::from_static(reply::OK);
        };
        let sub = client_subcommand(args).unwrap_or_default();
        match (&sub[..], args.len()) {
            (b"SETNAME", 3) if !commands::valid_client_name(&args[2]) => {
                reply::error(commands::BAD_CLIENT_NAME)
            }
            (b"SETNAME", 3) => {
                state.name = commands::kept_name(&args[2]);
                Bytes::from_static(reply::OK)
            }
            (b"GETNAME", 2) => match &state.name {
                Some(n) => reply::bulk(n),
                None if self.resp3 => Bytes::from_static(b"_\r\n"),
                None => Bytes::from_static(b"$-1\r\n"),
            },
            // Library name and version: informational only.
            _ => Bytes::from_static(reply::OK),
        }
    }

    /// Queues a command upstream, applying CLIENT REPLY OFF/SKIP to the expected replies.
    async fn forward(&mut self, args: &[Bytes], mut expect: Expect) -> Result<Flow, SessionError> {
        if expect.forward {
            let owed = expect.replies;
            (expect.replies, self.reply_mode) = counting::under(self.reply_mode, expect.replies);
            // A command whose replies are off or skipped may still be running (a blocking
            // one, say) when nothing is owed any more: a round trip settles it before the
            // session moves to shared connections, where its next command could run first.
            self.pin_state.unsettled |= expect.replies < owed;
            self.behind_blocking |= expect.replies < owed && expect.blocking;
        }
        self.forward_raw(args, expect).await
    }

    /// Opens the session's own connection if it has none: `Some(error reply)` when that
    /// fails, and nothing is sent or queued then.
    async fn connect_own(&mut self) -> Result<Option<Bytes>, SessionError> {
        if self.up.is_some() {
            return Ok(None);
        }
        // Boxed: connecting (perhaps with TLS) is rare and its future is large.
        match Box::pin(self.own_pool().acquire()).await {
            Ok(conn) => {
                let (r, w) = tokio::io::split(conn.stream);
                self.send_slot(Slot::Attach(r)).await?;
                self.up = Some(w);
                // Pooled connections are logged in as the listener's user.
                self.up_as = RunsAs::Listener;
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(listener = %self.ctx.listener, error = %e, "no upstream connection");
                self.ctx
                    .metrics
                    .request_failed(&self.ctx.listener, e.cause(), 1);
                Ok(Some(reply::failure(&format_args!(
                    "upstream unavailable ({e})"
                ))))
            }
        }
    }

    async fn forward_raw(&mut self, args: &[Bytes], expect: Expect) -> Result<Flow, SessionError> {
        if let Some(unavailable) = self.connect_own().await? {
            // Only a command whose reply the client awaits is answered; cachegate's own
            // commands (HELLO, SETNAME, a login) connect first and fail before they get here.
            if expect.forward {
                self.local(unavailable).await?;
            }
            return Ok(Flow::Continue);
        }
        // The slot is queued before the bytes leave, so the reply side always knows what a
        // frame is for.
        let mut expect = expect;
        if expect.forward && expect.replies > 0 {
            expect.timed = Some((self.label, Instant::now()));
        }
        if expect.replies > 0 || expect.pushes.is_some() {
            self.send_slot(Slot::Upstream(expect)).await?;
        }
        encode_command(&mut self.wbuf, args.iter().map(|a| &a[..]));
        if self.wbuf.len() >= UPSTREAM_WRITE_BATCH {
            self.flush_upstream().await?;
        }
        Ok(Flow::Continue)
    }

    /// A refused command's answer: the transaction it is queued in, if any, fails at EXEC, as
    /// Redis fails one whose queued command it refused.
    async fn refused(&mut self, reply: Bytes) -> Result<Flow, SessionError> {
        self.transaction.refuse();
        self.local(reply).await?;
        Ok(Flow::Continue)
    }

    /// A proxy-made reply, unless the client turned replies off.
    async fn local(&mut self, reply: Bytes) -> Result<(), SessionError> {
        match self.reply_mode {
            ReplyMode::On => self.local_always(reply).await,
            ReplyMode::Off => Ok(()),
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                // The SKIP went to the backend too, which still holds it for the next command
                // it sees: a PING takes it there, so that the next reply forwarded is not the
                // one Redis drops (every reply after would be one late).
                if self.up.is_some() {
                    let ping = [Bytes::from_static(b"PING")];
                    Box::pin(self.forward_raw(&ping, Expect::swallowed(0))).await?;
                }
                Ok(())
            }
        }
    }

    async fn local_always(&mut self, reply: Bytes) -> Result<(), SessionError> {
        // Answers count against the buffer bound while they wait for the reply side, all of a
        // session's together (one free share): a client that asks for its 4 MB name a
        // thousand times and reads none of them held 1.5 GB uncharged, and a thousand of just
        // under 16 KiB each 16 MiB (found by reviewers).
        let (reply, charge) = match self.answers.ticket(reply.len()) {
            Ok(ticket) => (reply, Some(ticket)),
            // Past the bound: the answer is the bound's error instead.
            Err(over) => {
                self.ctx
                    .metrics
                    .request_failed(&self.ctx.listener, "over_budget", 1);
                (reply::failure(&over), None)
            }
        };
        // Boxed: every answer of cachegate's own waits here, and whatever awaits it (`handle`
        // on every request) would otherwise keep room for the whole wait in its state.
        Box::pin(self.send_slot(Slot::Local(reply, charge))).await
    }

    async fn send_slot(&mut self, mut slot: Slot) -> Result<(), SessionError> {
        if let Slot::Upstream(expect) = &mut slot {
            if std::mem::take(&mut self.behind_blocking) {
                expect.blocking = true;
            }
        }
        self.flush_shared().await?;
        self.queue_slot(slot).await
    }

    async fn queue_slot(&mut self, slot: Slot) -> Result<(), SessionError> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(closed());
        };
        match tx.try_send(slot) {
            Ok(()) => Ok(()),
            Err(slots::TrySendError::Full(slot)) => {
                // The reply side may be waiting for replies to requests still in our buffer.
                // Rare, and boxed so that the session's state stays small.
                Box::pin(async {
                    self.flush_upstream().await?;
                    let tx = self.tx.as_ref().ok_or_else(closed)?;
                    tx.send(slot).await.map_err(|_| closed())
                })
                .await
            }
            Err(slots::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    async fn flush_upstream(&mut self) -> Result<(), SessionError> {
        let Some(up) = self.up.as_mut() else {
            return Ok(());
        };
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            up.write_all(&self.wbuf).await?;
            up.flush().await
        };
        tokio::select! {
            r = write => r.map_err(|e| SessionError::Upstream(UpstreamError::Io(e)))?,
            _ = self.abort.cancelled() => return Err(closed()),
        }
        self.wbuf.clear();
        Ok(())
    }
}

fn closed() -> SessionError {
    SessionError::Upstream(UpstreamError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_ping_answers_cachegate_s_own_ping() {
        for refusal in [
            &b"-NOPERM User cachegate-x has no permissions to run the 'ping' command\r\n"[..],
            b"-NOAUTH Authentication required.\r\n",
            b"-ERR unknown command 'PING', with args beginning with: 'cachegate-settle-1' \r\n",
        ] {
            assert!(
                refuses_ping(refusal),
                "{}",
                String::from_utf8_lossy(refusal)
            );
        }
        for other in [
            &b"-ERR Can't execute 'blpop': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"[..],
            b"-ERR wrong number of arguments for 'get' command\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ] {
            assert!(!refuses_ping(other), "{}", String::from_utf8_lossy(other));
        }
    }
}
