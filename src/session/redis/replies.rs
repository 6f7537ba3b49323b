//! The reply side: walks the slots the request side queued, reading whole upstream frames
//! and shared connections' replies, and writes them (or local answers) to the client in
//! request order.

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

/// The connection's count of subscriptions from an (un)subscribe confirmation (RESP2 array or
/// RESP3 push: the kind, the channel, the count), `None` for any other frame.
fn subscription_count((kind, _, count): Confirmation<'_>) -> Option<i64> {
    const KINDS: [&[u8]; 6] = [
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    if !KINDS.contains(&kind) {
        return None;
    }
    let count = count.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(count).ok()?.parse().ok()
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
                        let _ = back.send(half);
                        continue;
                    }
                    Ok(slot) => {
                        apply(slot, &mut up, &mut current, &mut shared, &mut out, timeout);
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
                let _ = back.send(half);
            }
            Event::Slot(Some(slot)) => {
                apply(slot, &mut up, &mut current, &mut shared, &mut out, timeout)
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

fn apply(
    slot: Slot,
    up: &mut Option<ReadHalf<Stream>>,
    current: &mut Option<Current>,
    shared: &mut Option<SharedWait>,
    out: &mut Outbox,
    timeout: Duration,
) {
    match slot {
        Slot::Shared(wait) => *shared = Some(wait),
        // Handled by the caller, which owns the read buffer.
        Slot::Detach(_) => {}
        Slot::Attach(r) => *up = Some(r),
        Slot::Local(bytes) => out.push(bytes),
        Slot::Upstream(expect) => {
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
    out: &mut Outbox,
    ctx: &Context,
    own: &Own,
    meter: &mut CommandMeter,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let session = own.id;
    // A pub/sub confirmation, read once for the count and the shard-channel follower.
    if let Some(confirmed) = super::follow::confirmation(&frame) {
        if let Some(count) = subscription_count(confirmed) {
            own.subscriptions
                .store(count, std::sync::atomic::Ordering::Release);
        }
        let unasked = kind == ReplyKind::Push || current.is_none();
        if unasked && own.follow.as_ref().is_some_and(|f| f.intercepts(confirmed)) {
            return Ok(());
        }
    }
    if kind == ReplyKind::Push {
        out.push(frame);
        return Ok(());
    }
    let Some(cur) = current.as_mut() else {
        // Unsolicited: a RESP2 pub/sub message or a MONITOR line.
        out.push(frame);
        return Ok(());
    };
    if let Some(until) = &cur.expect.until {
        if !until.matches(&frame, kind) {
            // The client's: a message, or a reply whose place an earlier frame took.
            out.push(frame);
            return Ok(());
        }
    }
    let has_login = cur.expect.login.is_some();
    if let Some(login) = cur.expect.login.take() {
        let _ = login.send(kind != ReplyKind::Error);
    }
    // A cluster node's redirection on a session's own connection (a slot that moved while it
    // was pinned) cannot be followed there, and names internal addresses: the client gets
    // something it can act on instead.
    let frame = if kind == ReplyKind::Error
        && ctx.cluster.is_some()
        && (frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK "))
    {
        Bytes::from_static(super::cluster::MOVING)
    } else {
        frame
    };
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
    if cur.expect.replies == 0 {
        if let Some((label, sent)) = cur.expect.timed {
            meter.observe(label, sent.elapsed());
        }
        *current = None;
    } else if cur.deadline.is_some() {
        cur.deadline = Some(Instant::now() + timeout);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::follow::confirmation;

    fn subscription_count(frame: &[u8]) -> Option<i64> {
        super::subscription_count(confirmation(frame)?)
    }

    proptest::proptest! {
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
