//! The reply side: walks the slots the request side queued, reading whole upstream frames
//! and shared connections' replies, and writes them (or local answers) to the client in
//! request order.

use super::counting::Family;
use super::follow::Confirmation;
use super::*;

async fn read_some(
    up: Option<&mut ReadHalf<Stream>>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    match up {
        Some(up) => {
            buf.reserve(crate::protocol::resp::rest_of_bulk(buf, READ_CHUNK));
            up.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

struct Current {
    expect: Expect,
    deadline: Option<Instant>,
}

enum Event {
    Slot(Option<Slot>),
    Read(std::io::Result<usize>),
    Shared(Answer),
    Timeout,
}

/// The family and count of an (un)subscribe confirmation (RESP2 array or RESP3 push: the
/// kind, the channel, the count), `None` for any other frame.
fn subscription_count((kind, _, count): Confirmation<'_>) -> Option<(Family, i64)> {
    let family = Family::of(kind)?;
    let count = count.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    Some((family, std::str::from_utf8(count).ok()?.parse().ok()?))
}

/// Tells the request side what the connection is subscribed to.
fn publish(own: &Own, subs: &Subscriptions) {
    use std::sync::atomic::Ordering::Release;
    own.subscriptions.store(subs.total(), Release);
    own.shard_subscriptions.store(subs.shards, Release);
}

/// What the session's own connection is subscribed to, as the confirmations read so far say:
/// the backend's state at the place in its replies the reply side has reached. Redis counts
/// channels and patterns together in their confirmations, shard channels apart.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Subscriptions {
    channels: i64,
    patterns: i64,
    shards: i64,
    /// The connection speaks RESP2, as its last confirmation (a RESP2 reply, not a RESP3
    /// push) or its last HELLO's reply said.
    resp2: bool,
}

impl Subscriptions {
    /// Takes in a confirmation's count (a RESP2 reply, or a RESP3 push): whether it was an
    /// (un)subscribe confirmation.
    fn take(&mut self, confirmation: Confirmation<'_>, resp2: bool) -> bool {
        match subscription_count(confirmation) {
            Some((family, count)) => {
                self.confirmed(family, count, resp2);
                true
            }
            None => false,
        }
    }

    /// (Saturating: a count is the backend's word, or a script's shaped like one inside EXEC's
    /// reply; none may overflow.)
    fn confirmed(&mut self, family: Family, count: i64, resp2: bool) {
        match family {
            Family::Channels => self.channels = count.saturating_sub(self.patterns).max(0),
            Family::Patterns => self.patterns = count.saturating_sub(self.channels).max(0),
            Family::Shards => self.shards = count.max(0),
        }
        self.resp2 = resp2;
    }

    fn total(&self) -> i64 {
        self.channels
            .saturating_add(self.patterns)
            .saturating_add(self.shards)
    }

    /// The answers to an unsubscribe from a whole family: one per subscription, or one
    /// saying there was none.
    fn answers_to_all(&self, family: Family) -> usize {
        let n = match family {
            Family::Channels => self.channels,
            Family::Patterns => self.patterns,
            Family::Shards => self.shards,
        };
        n.max(1) as usize
    }

    /// Whether a frame is a message a RESP2 subscriber gets without asking. It is never a
    /// reply: while subscribed, a RESP2 connection runs only pub/sub commands, PING, QUIT and
    /// RESET, whose replies look otherwise.
    fn is_message(&self, frame: &[u8]) -> bool {
        self.resp2
            && self.total() > 0
            && (frame.starts_with(b"*3\r\n$7\r\nmessage\r\n")
                || frame.starts_with(b"*4\r\n$8\r\npmessage\r\n")
                || frame.starts_with(b"*3\r\n$8\r\nsmessage\r\n"))
    }
}

/// A shared command's reply: its bytes, or why none came.
type Answer = Result<Bytes, SharedError>;

async fn wait_shared(wait: &mut Option<SharedWait>) -> Answer {
    match wait.as_mut().map(|w| &mut w.reply) {
        Some(Awaited::Direct(rx)) => rx
            .await
            .unwrap_or_else(|_| Err(SharedError::Gone))
            .map(|r| r.bytes),
        Some(Awaited::Routed(settling)) => settling.await,
        None => std::future::pending().await,
    }
}

/// The reply, if it has come already.
fn shared_now(wait: &mut SharedWait) -> Option<Answer> {
    match &mut wait.reply {
        Awaited::Direct(rx) => match rx.try_recv() {
            Ok(result) => Some(result.map(|r| r.bytes)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(SharedError::Gone)),
        },
        Awaited::Routed(settling) => {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match settling.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(answer) => Some(answer),
                std::task::Poll::Pending => None,
            }
        }
    }
}

/// Writes replies to the client in request order. Returns the upstream read half, whether the
/// upstream stream ended in step (nothing outstanding), and how the side ended.
/// What the reply side knows of its session: its client id (HELLO's), and the in-flight
/// allowance it gives back as it delivers shared replies.
pub(super) struct Own {
    pub(super) id: u64,
    /// Where the connection's count of subscriptions goes, from each confirmation.
    pub(super) subscriptions: Arc<std::sync::atomic::AtomicI64>,
    /// And its count of shard channels alone (for the shard-channel follower).
    pub(super) shard_subscriptions: Arc<std::sync::atomic::AtomicI64>,
    /// A cluster session's shard channels, followed across a resharding.
    pub(super) follow: Option<Arc<super::follow::Follow>>,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// The listener's configuration as it is now: replies are rewritten (COMMAND, ACL CAT)
    /// with the policy in force when they arrive, a reload's included.
    pub(super) live: Arc<Live<Context>>,
}

impl Drop for Own {
    /// The reply side has ended: nothing gives the allowance back any more, so a request side
    /// waiting for it must hear so (it ends the session) instead of waiting forever.
    fn drop(&mut self) {
        self.in_flight.close();
    }
}

pub(super) async fn reply_side<W: AsyncWrite + Unpin>(
    ctx: &Context,
    mut cw: W,
    mut rx: slots::Receiver<Slot>,
    own: Own,
    abort: CancellationToken,
    client_gone: CancellationToken,
) -> (Option<ReadHalf<Stream>>, bool, Result<(), SessionError>) {
    let timeout = ctx.pool.request_timeout();
    let max_reply = ctx.limits.max_reply_bytes;
    let mut up: Option<ReadHalf<Stream>> = None;
    // Allocated by the first upstream read: a session on shared connections never needs it.
    let mut ubuf = BytesMut::new();
    // Grows with what is written; an idle session keeps only a few bytes.
    let mut out = Outbox::default();
    let mut current: Option<Current> = None;
    // A shared-connection reply at the head of the queue; pinned frames wait behind it.
    let mut shared: Option<SharedWait> = None;
    let mut closed = false;
    let mut scanner = ReplyScanner::default();
    let mut subs = Subscriptions::default();
    let mut meter = ctx.metrics.command_meter(&ctx.listener);
    let mut charge = crate::budget::Charge::new(ctx.budget.clone());

    let failure: Option<SessionError> = 'outer: loop {
        // Route everything already at hand, then write it in one go.
        loop {
            if let Some(wait) = shared.as_mut() {
                if let Some(result) = shared_now(wait) {
                    if let Some(wait) = shared.take() {
                        deliver_shared(wait, result, &mut out, &own, &mut meter);
                    }
                    if out.len() < CLIENT_WRITE_BATCH {
                        continue;
                    }
                }
            }
            if current.is_none() && shared.is_none() && !closed {
                match rx.try_recv() {
                    Ok(Slot::Detach(back)) => {
                        let half = up.take().filter(|_| ubuf.is_empty());
                        ubuf.clear();
                        scanner = ReplyScanner::default();
                        subs = Subscriptions::default();
                        let _ = back.send(half);
                        continue;
                    }
                    Ok(slot) => {
                        let state = (&mut up, &mut current, &mut shared, &mut subs);
                        apply(slot, state, &mut out, &own, timeout);
                        continue;
                    }
                    Err(slots::TryRecvError::Empty) => {}
                    Err(slots::TryRecvError::Disconnected) => closed = true,
                }
            }
            if up.is_some() && shared.is_none() {
                match scanner.next(&ubuf, max_reply) {
                    Ok(Some((len, kind))) => {
                        let frame = ubuf.split_to(len).freeze();
                        if let Err(e) = route(
                            frame,
                            kind,
                            &mut current,
                            &mut subs,
                            &mut out,
                            ctx,
                            &own,
                            &mut meter,
                            timeout,
                        ) {
                            break 'outer Some(e.into());
                        }
                        if out.len() < CLIENT_WRITE_BATCH {
                            continue;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break 'outer Some(UpstreamError::from(e).into()),
                }
            }
            break;
        }
        if let Err(over) = charge.hold(ubuf.capacity() + out.len()) {
            break Some(SessionError::OverBudget(over));
        }
        if !out.is_empty() {
            if let Err(e) = out.write_to(&mut cw).await {
                break Some(SessionError::ClientIo(e));
            }
        }
        if closed && current.is_none() && shared.is_none() {
            break None;
        }
        // The client has gone while a blocking command waits: nobody will read its reply, so
        // do not wait for it (Redis closes such a client too). The connection is not reused.
        let blocked = current.as_ref().is_some_and(|c| c.expect.blocking);
        if blocked && client_gone.is_cancelled() {
            break None;
        }
        let deadline = current.as_ref().and_then(|c| c.deadline);
        // Biased: what is at hand first, without a random start (everything ready was taken
        // by the loop above, so nothing here starves).
        let event = tokio::select! {
            biased;
            slot = rx.recv(), if current.is_none() && shared.is_none() && !closed => Event::Slot(slot),
            read = read_some(up.as_mut(), &mut ubuf) => Event::Read(read),
            reply = wait_shared(&mut shared) => Event::Shared(reply),
            _ = sleep_until(deadline) => Event::Timeout,
            _ = client_gone.cancelled(), if blocked => continue,
        };
        match event {
            Event::Slot(Some(Slot::Detach(back))) => {
                let half = up.take().filter(|_| ubuf.is_empty());
                ubuf.clear();
                scanner = ReplyScanner::default();
                subs = Subscriptions::default();
                let _ = back.send(half);
            }
            Event::Slot(Some(slot)) => {
                let state = (&mut up, &mut current, &mut shared, &mut subs);
                apply(slot, state, &mut out, &own, timeout)
            }
            Event::Shared(reply) => {
                // The shared connection times out and fails requests itself.
                if let Some(wait) = shared.take() {
                    deliver_shared(wait, reply, &mut out, &own, &mut meter);
                }
            }
            Event::Slot(None) => closed = true,
            Event::Read(Ok(0)) => break Some(UpstreamError::Closed.into()),
            Event::Read(Ok(_)) => {
                if let Err(over) = charge.hold(ubuf.capacity() + out.len()) {
                    break Some(SessionError::OverBudget(over));
                }
            }
            Event::Read(Err(e)) => break Some(UpstreamError::Io(e).into()),
            Event::Timeout => break Some(UpstreamError::Timeout(timeout).into()),
        }
    };

    let clean = failure.is_none() && current.is_none() && ubuf.is_empty();
    if let Some(SessionError::Upstream(e)) = &failure {
        // The client learns why before the connection closes; nothing partial was written.
        abort.cancel();
        if current.as_ref().is_some_and(|c| c.expect.forward) {
            ctx.metrics.request_failed(&ctx.listener, e.cause(), 1);
            // In the shared connections' words (SharedError): a timeout as it is, anything
            // else as the connection lost.
            let reply = match e {
                UpstreamError::Timeout(_) => reply::failure(e),
                _ => reply::failure(&format_args!("upstream connection lost ({e})")),
            };
            let _ = cw.write_all(&reply).await;
        }
    } else if let Some(SessionError::OverBudget(over)) = &failure {
        // The replies still due cannot be delivered: the client learns why, and the
        // connection (mid-reply) is not reused.
        abort.cancel();
        let _ = cw.write_all(&reply::failure(over)).await;
    } else if failure.is_some() {
        abort.cancel();
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, cw.shutdown()).await;
    (up, clean, failure.map_or(Ok(()), Err))
}

/// A shared connection's reply (or its failure) for the client; the session goes on either
/// way, since it held no state on that connection.
fn deliver_shared(
    wait: SharedWait,
    result: Answer,
    out: &mut Outbox,
    own: &Own,
    meter: &mut CommandMeter,
) {
    // The batch's in-flight allowance, as the request side took it.
    own.in_flight.add_permits(wait.permits as usize);
    let session = own.id;
    match result {
        Ok(replies) => {
            match &wait.rewrite {
                // Only ever for a request of one command.
                Some(rw) => out.push(rewrite_reply(replies, rw, &own.live.load().policy, session)),
                None => out.push(replies),
            }
            let took = wait.sent.elapsed();
            for label in &wait.labels {
                meter.observe(label, took);
            }
        }
        // One error per command, so the client's replies stay in step.
        Err(e) => {
            let ctx = own.live.load();
            let n = wait.labels.len().max(1) as u64;
            ctx.metrics.request_failed(&ctx.listener, e.cause(), n);
            let error = reply::failure(&e);
            for _ in 0..wait.labels.len().max(1) {
                out.extend_from_slice(&error);
            }
        }
    }
}

/// The reply side's state a slot changes: the upstream read half, the expected replies, the
/// shared reply awaited, and the connection's subscriptions.
type SlotState<'a> = (
    &'a mut Option<ReadHalf<Stream>>,
    &'a mut Option<Current>,
    &'a mut Option<SharedWait>,
    &'a mut Subscriptions,
);

/// Takes the next slot in. Called only once every reply before it has been routed, so what
/// the connection is subscribed to is the backend's state where the slot's replies begin.
fn apply(
    slot: Slot,
    (up, current, shared, subs): SlotState,
    out: &mut Outbox,
    own: &Own,
    timeout: Duration,
) {
    match slot {
        Slot::Shared(wait) => *shared = Some(wait),
        // Handled by the caller, which owns the read buffer.
        Slot::Detach(_) => {}
        Slot::Attach(r) => {
            *up = Some(r);
            *subs = Subscriptions::default();
        }
        // (Its charge is given back here: `out` is the reply side's, and charged as such.)
        Slot::Local(bytes, _charge) => out.push(bytes),
        Slot::Upstream(mut expect) => {
            if expect.after_reset {
                *subs = Subscriptions::default();
            }
            // (The PING that always follows a RESET: RESET's own slot is not queued when its
            // reply is skipped.)
            if let Some(follow) = own.follow.as_ref().filter(|_| expect.after_reset) {
                follow.reset_reached();
            }
            if let Some(family) = expect.answers_all {
                expect.replies = subs.answers_to_all(family);
            }
            if let Some(pushes) = expect.pushes.as_mut() {
                if pushes.left.is_none() {
                    pushes.left = pushes.family().map(|f| subs.answers_to_all(f));
                }
            }
            let deadline = (!expect.blocking).then(|| Instant::now() + timeout);
            *current = Some(Current { expect, deadline });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn route(
    frame: Bytes,
    kind: ReplyKind,
    current: &mut Option<Current>,
    subs: &mut Subscriptions,
    out: &mut Outbox,
    ctx: &Context,
    own: &Own,
    meter: &mut CommandMeter,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let session = own.id;
    // A pub/sub confirmation, read once for the count and the shard-channel follower. A RESP2
    // one counts only where a confirmation is due: unasked, or answering a subscription
    // command or cachegate's own (a script's reply may have a confirmation's shape).
    if let Some(confirmed) = super::follow::confirmation(&frame) {
        // A RESP2 connection subscribed to shard channels runs only (un)subscriptions, PING,
        // RESET and QUIT, and none of them but SUNSUBSCRIBE answers with a `sunsubscribe`:
        // one that comes while another of them is in place, or while a SUNSUBSCRIBE naming
        // other channels is, is a node ending a channel (its slot moved), never that
        // command's reply. (Inside a SUNSUBSCRIBE of all, a node's ending counts as one of
        // its answers: Redis then answers one fewer itself.)
        let ended = kind == ReplyKind::Other
            && subs.resp2
            && subs.shards > 0
            && confirmed.0 == b"sunsubscribe"
            && current.as_mut().is_some_and(|c| {
                if c.expect.exec || c.expect.until.is_some() {
                    return false;
                }
                match c.expect.shard_names.as_mut() {
                    Some(names) => !names.take(confirmed.1),
                    None => !c.expect.sunsubscribes,
                }
            });
        let due = ended
            || current
                .as_ref()
                .is_none_or(|c| c.expect.confirms || c.expect.until.is_some());
        if (kind == ReplyKind::Push || due) && subs.take(confirmed, kind != ReplyKind::Push) {
            publish(own, subs);
        }
        // One of the confirmations the command in place awaits: once they are all in, the
        // next command's reply (or cachegate's answer) may follow. Counted before the
        // follower may keep it from the client: a wait that never ends would stall the session.
        if let Some(cur) = current.as_mut().filter(|_| kind == ReplyKind::Push) {
            if let Some(pushes) = cur.expect.pushes.as_mut() {
                if pushes.verb == confirmed.0 {
                    pushes.left = Some(pushes.left.unwrap_or(0).saturating_sub(1));
                    one_came(current, meter, timeout);
                }
            }
        }
        let unasked = kind == ReplyKind::Push || current.is_none() || ended;
        if unasked && own.follow.as_ref().is_some_and(|f| f.intercepts(confirmed)) {
            return Ok(());
        }
        if ended {
            // Before the reply of the command in place, as the node sent it.
            out.push(frame);
            return Ok(());
        }
    }
    // A cluster node's redirection on a session's own connection (a slot that moved while it
    // was pinned) cannot be followed there, and names internal addresses: the client gets
    // something it can act on instead, wherever the frame goes (one may also come with no
    // command in place: a node's ending of a channel was taken as the confirmation of the
    // client's SUNSUBSCRIBE of that channel, which the node then refused as MOVED).
    let frame = if kind == ReplyKind::Error
        && ctx.cluster.is_some()
        && (frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK "))
    {
        Bytes::from_static(super::cluster::MOVING)
    } else {
        frame
    };
    if kind == ReplyKind::Push {
        out.push(frame);
        return Ok(());
    }
    let Some(cur) = current.as_mut().filter(|_| !subs.is_message(&frame)) else {
        // Unsolicited: a RESP2 pub/sub message or a MONITOR line.
        out.push(frame);
        return Ok(());
    };
    if cur.expect.exec {
        // Subscriptions made inside the transaction: confirmed inside its reply.
        let mut confirmed = false;
        for element in crate::protocol::resp::elements(&frame).unwrap_or_default() {
            if let Some(c) = super::follow::confirmation(&element) {
                confirmed |= subs.take(c, element.starts_with(b"*"));
            }
        }
        if confirmed {
            publish(own, subs);
        }
    }
    if let Some(until) = &cur.expect.until {
        if !until.matches(&frame, kind) {
            // The client's: a message, or a reply whose place an earlier frame took.
            out.push(frame);
            return Ok(());
        }
        // Everything before cachegate's own command has been read: what the connection is
        // subscribed to is known exactly here (a subscription in a transaction that failed
        // was never confirmed, nor refused).
        publish(own, subs);
    }
    let has_login = cur.expect.login.is_some();
    if let Some(login) = cur.expect.login.take() {
        let _ = login.send(kind != ReplyKind::Error);
    }
    if cur.expect.replies == 0 {
        // A RESP3 (un)subscription that awaited only pushes was refused instead (an ACL of
        // the backend's, or a shard channel's slot that moved): its one reply. The follower
        // stops awaiting what it would have confirmed.
        if let (Some(leave), Some(follow)) = (cur.expect.leave, &own.follow) {
            follow.refused(leave);
        }
        out.push(frame);
        *current = None;
        return Ok(());
    }
    // A RESP2 (un)subscription is refused as a whole, with one error however many channels it
    // named (an ACL's, a slot that moved): no confirmation follows it.
    if kind == ReplyKind::Error && cur.expect.confirms && cur.expect.replies > 1 {
        cur.expect.replies = 1;
    }
    // HELLO switches the connection's protocol (Redis allows it while subscribed in RESP3):
    // its pub/sub frames are RESP2 arrays, or RESP3 pushes, from here on.
    if matches!(cur.expect.rewrite, Some(Rewrite::Hello)) && kind != ReplyKind::Error {
        subs.resp2 = !frame.starts_with(b"%");
    }
    if cur.expect.forward {
        match &cur.expect.rewrite {
            Some(rw) => out.push(rewrite_reply(frame, rw, &own.live.load().policy, session)),
            None => out.push(frame),
        }
    } else if kind == ReplyKind::Error && !has_login {
        tracing::warn!(
            listener = %ctx.listener,
            reply = %crate::upstream::conn::printable(&frame),
            "upstream refused a command cachegate sent on its own behalf"
        );
    }
    cur.expect.replies -= 1;
    one_came(current, meter, timeout);
    Ok(())
}

/// After one of what the command in place awaits came: it ends once nothing more is owed (no
/// reply, no confirmation), its latency metered; otherwise the rest gets a new deadline.
fn one_came(current: &mut Option<Current>, meter: &mut CommandMeter, timeout: Duration) {
    let Some(cur) = current.as_mut() else {
        return;
    };
    let pushes_left = cur.expect.pushes.and_then(|p| p.left).unwrap_or(0);
    if cur.expect.replies == 0 && pushes_left == 0 {
        if let Some((label, sent)) = cur.expect.timed {
            meter.observe(label, sent.elapsed());
        }
        *current = None;
    } else if cur.deadline.is_some() {
        cur.deadline = Some(Instant::now() + timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::super::follow::confirmation;
    use super::{Family, Subscriptions};

    fn subscription_count(frame: &[u8]) -> Option<i64> {
        super::subscription_count(confirmation(frame)?).map(|(_, n)| n)
    }

    /// Follows RESP2 confirmations as a connection would send them.
    fn follow(frames: &[&[u8]]) -> Subscriptions {
        let mut subs = Subscriptions::default();
        for frame in frames {
            let (family, n) = super::subscription_count(confirmation(frame).unwrap()).unwrap();
            subs.confirmed(family, n, true);
        }
        subs
    }

    #[test]
    fn an_unsubscribe_of_all_is_answered_once_per_subscription_of_its_family() {
        // Channels and patterns are counted together, shard channels apart (Redis 7).
        let subs = follow(&[
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
            b"*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n",
            b"*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n",
            // Again: the same count, nothing new.
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:3\r\n",
        ]);
        assert_eq!((subs.channels, subs.patterns, subs.shards), (2, 1, 1));
        assert_eq!(subs.answers_to_all(Family::Channels), 2);
        assert_eq!(subs.answers_to_all(Family::Patterns), 1);
        assert_eq!(subs.answers_to_all(Family::Shards), 1);
        // With none: one answer, naming no channel.
        assert_eq!(Subscriptions::default().answers_to_all(Family::Channels), 1);
        // Messages are never replies while subscribed in RESP2, and are replies otherwise.
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        assert!(subs.is_message(message));
        assert!(subs.is_message(b"*4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$1\r\na\r\n$1\r\nx\r\n"));
        assert!(!subs.is_message(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"));
        assert!(!Subscriptions::default().is_message(message));
        let left = follow(&[
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n",
        ]);
        assert!(!left.is_message(message));
    }

    proptest::proptest! {
        /// Whatever counts confirmations carry (a script's reply inside EXEC's may look like
        /// one), following them never panics, and no family goes below zero.
        #[test]
        fn any_counts_are_followed_without_panicking(counts in proptest::collection::vec((0..3u8, proptest::prelude::any::<i64>()), 0..16)) {
            let mut subs = Subscriptions::default();
            for (family, count) in counts {
                let family = [Family::Channels, Family::Patterns, Family::Shards][family as usize];
                subs.confirmed(family, count, true);
                let _ = (subs.total(), subs.answers_to_all(family));
                proptest::prop_assert!(subs.channels >= 0 && subs.patterns >= 0 && subs.shards >= 0);
            }
        }

        /// Whatever a backend sends, reading a count never panics.
        #[test]
        fn any_frame_is_read_without_panicking(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            for head in [&b"*3\r\n"[..], b">3\r\n", b"*3\r\n$9\r\nsubscribe\r\n"] {
                let mut frame = head.to_vec();
                frame.extend_from_slice(&tail);
                let _ = subscription_count(&frame);
            }
        }
    }

    #[test]
    fn subscription_counts_come_from_confirmations_only() {
        assert_eq!(
            subscription_count(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:2\r\n"),
            Some(2)
        );
        assert_eq!(
            subscription_count(b">3\r\n$12\r\nsunsubscribe\r\n$3\r\n{a}\r\n:0\r\n"),
            Some(0)
        );
        assert_eq!(
            subscription_count(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),
            Some(0)
        );
        assert_eq!(
            subscription_count(b">3\r\n$12\r\npunsubscribe\r\n_\r\n:2\r\n"),
            Some(2)
        );
        for other in [
            &b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"[..],
            b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n$1\r\n2\r\n",
            b"*2\r\n$9\r\nsubscribe\r\n:1\r\n",
            b"$9\r\nsubscribe\r\n",
            b"*3\r\n:1\r\n:2\r\n:3\r\n",
        ] {
            assert_eq!(subscription_count(other), None, "{other:?}");
        }
    }
}
