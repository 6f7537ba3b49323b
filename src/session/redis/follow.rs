//! A cluster listener's shard channels follow a resharding: when a node ends a session's
//! `SSUBSCRIBE` because the channel's slot moved away (it sends `sunsubscribe` unasked), the
//! reply side keeps that from the client and tells the request side, which subscribes again
//! on the slot's new node, as a cluster-aware client would. The client sees its subscription
//! go on. Where that cannot be done (the session still holds other subscriptions on the old
//! node, or no new node is known in time), the client gets the `sunsubscribe` the node sent.

use super::*;
use std::sync::Mutex;

/// Shared by a cluster session's two halves.
#[derive(Default)]
pub(super) struct Follow {
    state: Mutex<State>,
    /// Wakes the request side when a node ended a subscription.
    pub(super) wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Shard channels the client itself asked to leave, and how many of its requests to leave
    /// them all are still being answered (each ends with a confirmation counting none left).
    leaving: Leaving,
    leaving_all: usize,
    /// The last request to leave that was numbered (see `Leave`).
    requests: u64,
    /// RESETs sent that the reply side has not seen answered yet: they end every subscription,
    /// so a node's ending before them is the client's to see, not to follow.
    resets: usize,
    /// Channels a node ended, to subscribe again where their slot now lives.
    ended: Vec<Bytes>,
    /// Confirmations of cachegate's own SSUBSCRIBEs (RESP3 pushes), not for the client.
    confirming: Owed,
}

/// Channel names awaited, each as many times as it was added, looked up by hashing: one
/// request may name a million channels, and each of their confirmations is looked up. (The
/// standard library's keyed hash: the names are the client's.)
#[derive(Default)]
pub(super) struct Owed(std::collections::HashMap<Bytes, usize>);

impl Owed {
    /// These names, each as many times as it appears (copied: a slice would hold the whole
    /// read buffer it came from).
    pub(super) fn of(names: &[Bytes]) -> Self {
        let mut owed = Owed::default();
        for name in names {
            owed.add(Bytes::copy_from_slice(name));
        }
        owed
    }

    fn add(&mut self, name: Bytes) {
        *self.0.entry(name).or_default() += 1;
    }

    /// Takes one of `name`: whether it was awaited.
    pub(super) fn take(&mut self, name: &[u8]) -> bool {
        let Some(n) = self.0.get_mut(name) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.0.remove(name);
        }
        true
    }
}

/// The names the client asked to leave, with the order they were asked in, to forget the
/// oldest.
#[derive(Default)]
struct Leaving {
    owed: Owed,
    /// Every name added, oldest first, with the number of the request that named it; one taken
    /// since stays here until it is the oldest.
    order: std::collections::VecDeque<(u64, Bytes)>,
    /// The bytes of the names in `order`.
    bytes: usize,
}

impl Leaving {
    fn add(&mut self, request: u64, name: Bytes) {
        self.owed.add(name.clone());
        self.bytes += name.len();
        self.order.push_back((request, name));
    }

    fn take(&mut self, name: &[u8]) -> bool {
        self.owed.take(name)
    }

    /// Forgets the oldest names beyond the last `keep` added, and beyond `keep_bytes` of them
    /// (one of that name, if still owed); never those of request `current`.
    fn keep_last(&mut self, keep: usize, keep_bytes: usize, current: u64) {
        while self.order.len() > keep
            || (self.bytes > keep_bytes && self.order.front().is_some_and(|(r, _)| *r != current))
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.bytes -= old.len();
                self.owed.take(&old);
            }
        }
    }

    /// Takes back what one request named (those of its names not forgotten yet): requests
    /// are numbered in the order they were added, so theirs lie together.
    fn withdraw(&mut self, request: u64) {
        let from = self.order.partition_point(|(r, _)| *r < request);
        let to = self.order.partition_point(|(r, _)| *r <= request);
        for (_, name) in self.order.drain(from..to) {
            self.bytes -= name.len();
            self.owed.take(&name);
        }
    }
}

/// A client's RESP3 `SUNSUBSCRIBE` the follower was told of: taken back if the backend refuses
/// it (no confirmation will come for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Leave {
    request: u64,
    all: bool,
}

/// How long a moved channel waits for the map to name its slot's new node.
const NEW_NODE_WAIT: Duration = Duration::from_secs(3);

/// A connection's subscription count while a SUBSCRIBE has been sent and its first
/// confirmation not read yet (kept by the reply side, with `confirmation` below).
pub(super) const SUBSCRIBING: i64 = i64::MAX;

/// A pub/sub confirmation's kind, channel and count (the count as sent: `:N\r\n`).
pub(super) type Confirmation<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// A three-element array or push whose first two elements are bulk strings (the shape of an
/// (un)subscribe confirmation): the first two, and the bytes of the third.
pub(super) fn confirmation(frame: &[u8]) -> Option<Confirmation<'_>> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    fn bulk(at: &[u8]) -> Option<(usize, &[u8])> {
        // (UNSUBSCRIBE with no subscription left names no channel: RESP2's null or RESP3's.)
        if at.starts_with(b"$-1\r\n") {
            return Some((5, b""));
        }
        if at.starts_with(b"_\r\n") {
            return Some((3, b""));
        }
        if !at.starts_with(b"$") {
            return None;
        }
        let (len, _) = crate::protocol::resp::frame_len(at).ok()??;
        let body = at.get(memchr::memchr(b'\n', at)? + 1..len.checked_sub(2)?)?;
        Some((len, body))
    }
    let (len, kind) = bulk(rest)?;
    let (channel_len, channel) = bulk(&rest[len..])?;
    Some((kind, channel, &rest[len + channel_len..]))
}

impl Follow {
    /// The client asked to leave these shard channels (all of them when empty).
    pub(super) fn client_leaves(&self, channels: &[Bytes]) -> Leave {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.requests += 1;
        let request = st.requests;
        if channels.is_empty() {
            st.leaving_all = st.leaving_all.saturating_add(1);
        } else {
            // Copied: a slice would hold the whole read buffer it came from.
            for c in channels {
                st.leaving.add(request, Bytes::copy_from_slice(c));
            }
        }
        // Names whose confirmation never came (a refused SUNSUBSCRIBE, one inside a discarded
        // MULTI) are not kept for ever: past this many, the oldest are forgotten (a node's
        // sunsubscribe for one of them then reads as the client's own and is passed on). The
        // names of this request are always kept: forgotten, their confirmations would read as
        // a node's, be kept from the client, and the channels subscribed again.
        // So too past 1 MiB of names: 1,024 names of a request's size each were a gigabyte
        // and more held for one client (found by a reviewer).
        const KEPT: usize = 1024;
        const KEPT_BYTES: usize = 1 << 20;
        st.leaving
            .keep_last(KEPT.max(channels.len()), KEPT_BYTES, request);
        Leave {
            request,
            all: channels.is_empty(),
        }
    }

    /// The backend refused that request (its user may not run it, or its channels' slots
    /// differ): none of its confirmations will come, so a node's ending of those channels is
    /// a node's again, and the follower no longer waits for an end of all.
    pub(super) fn refused(&self, leave: Leave) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if leave.all {
            st.leaving_all = st.leaving_all.saturating_sub(1);
        } else {
            st.leaving.withdraw(leave.request);
        }
    }

    /// Reply side, for a frame nobody asked for: whether it is kept from the client (a node
    /// ending a subscription the client did not leave, or the confirmation of cachegate's own
    /// subscription).
    /// Takes the frame as `confirmation` read it (the reply side reads each frame once).
    pub(super) fn intercepts(&self, (kind, channel, count): Confirmation<'_>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            // (A RESET on its way ends the channel anyway: the client sees what the node sent,
            // in its place, before RESET's reply, and nothing is subscribed again.)
            b"sunsubscribe" if st.resets > 0 => false,
            b"sunsubscribe" => {
                if st.leaving_all > 0 {
                    if count == b":0\r\n" {
                        st.leaving_all -= 1;
                    }
                    return false;
                }
                // A node ending a subscription names its channel; only an unsubscribe of all,
                // with nothing left to leave, names none.
                if channel.is_empty() {
                    return false;
                }
                if st.leaving.take(channel) {
                    return false;
                }
                st.ended.push(Bytes::copy_from_slice(channel));
                drop(st);
                self.wake.notify_one();
                true
            }
            b"ssubscribe" => st.confirming.take(channel),
            _ => false,
        }
    }

    /// Request side: a RESET is sent. The channels nodes ended before it are not followed.
    pub(super) fn reset_sent(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.resets += 1;
        st.ended.clear();
        // Nothing before the RESET is followed, so no confirmation before it needs telling
        // apart: those still awaited would make a node's later ending read as the client's.
        st.leaving = Leaving::default();
        st.leaving_all = 0;
    }

    /// Reply side: the RESET is answered (the PING of cachegate's own behind it is in place).
    pub(super) fn reset_reached(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.resets = st.resets.saturating_sub(1);
    }

    /// Request side: the client leaves these shard channels (all when empty), outside MULTI.
    /// A node's ending of one of them that the follower has kept but not acted on yet is not
    /// followed (subscribing it again now would undo what the client asked for): it is
    /// returned, for the client to get before its SUNSUBSCRIBE's answers, as from Redis.
    pub(super) fn client_unsubscribes(&self, channels: &[Bytes]) -> Vec<Bytes> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if channels.is_empty() || st.ended.is_empty() {
            return std::mem::take(&mut st.ended);
        }
        // (Hashed: one request may name a million channels.)
        let leaving: std::collections::HashSet<&[u8]> = channels.iter().map(|c| &c[..]).collect();
        let (left, kept) = std::mem::take(&mut st.ended)
            .into_iter()
            .partition(|e| leaving.contains(&e[..]));
        st.ended = kept;
        left
    }

    fn take_ended(&self) -> Vec<Bytes> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).ended)
    }

    /// Takes a confirmation back that never came: whether it was still awaited.
    fn unconfirm(&self, channel: &[u8]) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.confirming.take(channel)
    }

    fn confirm(&self, channel: Bytes) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .confirming
            .add(channel);
    }
}

/// The `sunsubscribe` a node sent, for the client after all.
fn ended_frame(channel: &[u8], count: i64, resp3: bool) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    reply::put_bulk(&mut out, b"sunsubscribe");
    reply::put_bulk(&mut out, channel);
    out.extend_from_slice(format!(":{count}\r\n").as_bytes());
    out.freeze()
}

impl RequestSide {
    /// Before the client's SUNSUBSCRIBE (outside MULTI) is sent: a node's ending of one of
    /// its channels that is kept but not followed yet reaches the client first, and is not
    /// followed.
    pub(super) async fn before_leaving(&mut self, channels: &[Bytes]) -> Result<(), SessionError> {
        let Some(follow) = self.follow.clone() else {
            return Ok(());
        };
        for channel in follow.client_unsubscribes(channels) {
            let count = self
                .shard_subscriptions
                .load(std::sync::atomic::Ordering::Acquire)
                .max(0);
            self.local_always(ended_frame(&channel, count, self.resp3))
                .await?;
        }
        Ok(())
    }

    /// Subscribes again, on their slots' new node, the shard channels a node ended.
    pub(super) async fn follow_shards(&mut self) -> Result<(), SessionError> {
        let (Some(follow), Some(cluster)) = (self.follow.clone(), self.ctx.cluster.clone()) else {
            return Ok(());
        };
        let mut ended = follow.take_ended();
        if ended.is_empty() {
            return Ok(());
        }
        // A resharding moves slots one after another: while the old node still holds other
        // subscriptions of this session, wait a moment for them to end too, so that all move
        // together.
        let deadline = Instant::now() + NEW_NODE_WAIT;
        while self.shared.is_none()
            && self
                .shard_subscriptions
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ended.extend(follow.take_ended());
        }
        let old = self.pin_node.as_ref().map(|n| n.address.clone());
        // The count the client is told along with a node's sunsubscribe: its shard channels
        // (Redis counts them apart from channels and patterns).
        let count = self.shard_subscriptions.clone();
        let count = move || count.load(std::sync::atomic::Ordering::Acquire).max(0);
        // Other subscriptions still hold the old node's connection: the client learns what
        // the node did.
        if self.shared.is_some()
            || old.is_none()
            || self.holds_state()
            || !Box::pin(self.subscriptions_settled()).await?
        {
            for channel in ended {
                let frame = ended_frame(&channel, count(), self.resp3);
                self.local_always(frame).await?;
            }
            return Ok(());
        }
        Box::pin(self.unpin()).await?;
        cluster.stale();
        let slot = crate::upstream::cluster::slot::key_slot(&ended[0]);
        let deadline = Instant::now() + NEW_NODE_WAIT;
        let node = loop {
            match cluster.map().node(slot) {
                Some(n) if Some(&n.address) != old.as_ref() => break Some(n.clone()),
                _ if Instant::now() >= deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (mut again, mut lost) = (Vec::new(), Vec::new());
        for channel in ended {
            let same = node.as_ref().is_some_and(|n| {
                cluster
                    .map()
                    .node(crate::upstream::cluster::slot::key_slot(&channel))
                    .is_some_and(|m| m.address == n.address)
            });
            if same {
                again.push(channel);
            } else {
                lost.push(channel);
            }
        }
        if let Some(node) = node.filter(|_| !again.is_empty()) {
            if Box::pin(self.pin_to(node)).await?.is_some() {
                // The new node cannot be reached.
                lost.append(&mut again);
            } else if Box::pin(self.run_as(self.wanted_identity()))
                .await?
                .is_some()
            {
                lost.append(&mut again);
            }
        } else {
            lost.append(&mut again);
        }
        // One channel at a time (channels of two slots in one SSUBSCRIBE would be CROSSSLOT),
        // each checked: RESP2 answers it; RESP3 confirms with a push (kept from the client),
        // which a PING's reply follows.
        let mut subscribed = 0;
        for channel in again {
            let mut frame = BytesMut::new();
            encode_command(&mut frame, [&b"SSUBSCRIBE"[..], &channel[..]].into_iter());
            // The count as it was, should this channel not be subscribed.
            let before = self
                .subscriptions
                .load(std::sync::atomic::Ordering::Acquire);
            self.track_state(Kind::Subscribe, &[]);
            let ok = if self.resp3 {
                follow.confirm(channel.clone());
                self.wbuf.extend_from_slice(&frame);
                if !Box::pin(self.own_roundtrip(b"*1\r\n$4\r\nPING\r\n")).await? {
                    // The refusal took the PING's place: its reply would reach the client
                    // unasked. Ended at once (nothing more is written to the client) rather
                    // than out of step.
                    self.abort.cancel();
                    return Err(SessionError::Upstream(UpstreamError::Unexpected(
                        "a node refused to subscribe a shard channel again".into(),
                    )));
                }
                !follow.unconfirm(&channel)
            } else {
                // (Messages for channels already moved may come first: the client's.)
                let until = Some(Until::Confirms(channel.clone()));
                Box::pin(self.own_roundtrip_until(&frame, until)).await?
            };
            if ok {
                subscribed += 1;
            } else {
                self.subscriptions
                    .store(before, std::sync::atomic::Ordering::Release);
                lost.push(channel);
            }
        }
        if subscribed > 0 {
            self.listening = true;
            tracing::debug!(listener = %self.ctx.listener, peer = %self.peer, channels = subscribed, "shard channels subscribed again after a resharding");
        } else {
            self.pin_state.subscribed = false;
            self.subscriptions
                .store(0, std::sync::atomic::Ordering::Release);
        }
        for channel in lost {
            let frame = ended_frame(&channel, count(), self.resp3);
            self.local_always(frame).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RESP3 `sunsubscribe` of `name` leaving no shard channel.
    fn ended_push(name: &str) -> String {
        format!(
            ">3\r\n$12\r\nsunsubscribe\r\n${}\r\n{name}\r\n:0\r\n",
            name.len()
        )
    }

    fn intercepts(f: &Follow, frame: &[u8]) -> bool {
        confirmation(frame).is_some_and(|c| f.intercepts(c))
    }

    /// The names of unconfirmed leaves are kept to 1 MiB beyond the newest request's: a client
    /// that leaves channels with huge names over and over holds no more.
    #[test]
    fn the_names_kept_for_leaves_are_bounded_in_bytes() {
        let f = Follow::default();
        let huge = Bytes::from(vec![b'c'; 700 << 10]);
        for _ in 0..50 {
            f.client_leaves(std::slice::from_ref(&huge));
        }
        let st = f.state.lock().unwrap();
        assert!(st.leaving.bytes <= 2 * huge.len(), "{}", st.leaving.bytes);
        assert_eq!(
            st.leaving.bytes,
            st.leaving.order.iter().map(|(_, n)| n.len()).sum::<usize>()
        );
        drop(st);
        // The newest request's names are kept whatever their size.
        let bigger = Bytes::from(vec![b'd'; 3 << 20]);
        f.client_leaves(std::slice::from_ref(&bigger));
        let st = f.state.lock().unwrap();
        assert_eq!(
            st.leaving.order.back().map(|(_, n)| n.len()),
            Some(bigger.len())
        );
        assert_eq!(st.leaving.order.len(), 1);
    }

    #[test]
    fn a_node_ending_a_channel_is_told_apart_from_the_client_leaving_it() {
        let f = Follow::default();
        let ended = b">3\r\n$12\r\nsunsubscribe\r\n$4\r\n{a}x\r\n:0\r\n";
        f.client_leaves(&[Bytes::from_static(b"{a}x")]);
        assert!(!intercepts(&f, ended), "the client's own SUNSUBSCRIBE");
        assert!(intercepts(&f, ended), "a node's");
        assert_eq!(f.take_ended(), vec![Bytes::from_static(b"{a}x")]);
        f.client_leaves(&[]);
        assert!(!intercepts(
            &f,
            b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:1\r\n"
        ));
        assert!(!intercepts(&f, ended), "the last of all");
        assert!(intercepts(&f, ended), "all left: a node's again");
        f.confirm(Bytes::from_static(b"c"));
        assert!(intercepts(
            &f,
            b">3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"
        ));
        assert!(!intercepts(
            &f,
            b">3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"
        ));
        assert!(!intercepts(
            &f,
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"
        ));
        assert_eq!(ended_frame(b"{a}x", 0, true), Bytes::from_static(ended));
    }

    #[test]
    fn every_unsubscribe_of_all_and_every_name_left_is_the_clients_own() {
        // Two SUNSUBSCRIBEs of all in one pipeline: the first ends with a count of none, the
        // second, with nothing left, names no channel. Neither is a node's.
        let f = Follow::default();
        f.client_leaves(&[]);
        f.client_leaves(&[]);
        assert!(!intercepts(
            &f,
            b">3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n"
        ));
        assert!(!intercepts(&f, b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"));
        // Nor is a confirmation naming none, whoever asked.
        assert!(!intercepts(&f, b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"));
        assert!(f.take_ended().is_empty());
        // However many channels one SUNSUBSCRIBE names, each confirmation is the client's,
        // found without going through the others (a linear search per confirmation took
        // minutes of one thread for a million names).
        let leave = ended_push;
        let many: Vec<Bytes> = (0..200_000)
            .map(|i| Bytes::from(format!("{{t}}{i}")))
            .collect();
        f.client_leaves(&many);
        for name in &many {
            let name = String::from_utf8_lossy(name);
            assert!(!intercepts(&f, leave(&name).as_bytes()), "{name}");
        }
        assert!(f.take_ended().is_empty());
        // A name left twice is owed twice; a third confirmation is a node's.
        f.client_leaves(&[Bytes::from_static(b"{t}x")]);
        f.client_leaves(&[Bytes::from_static(b"{t}x")]);
        assert!(!intercepts(&f, leave("{t}x").as_bytes()));
        assert!(!intercepts(&f, leave("{t}x").as_bytes()));
        assert!(intercepts(&f, leave("{t}x").as_bytes()));
        assert_eq!(f.take_ended(), vec![Bytes::from_static(b"{t}x")]);
        // Names never confirmed are forgotten past the last 1,024 asked for: the oldest then
        // reads as a node's, the newest still as the client's.
        for i in 0..1_100 {
            f.client_leaves(&[Bytes::from(format!("{{t}}old{i}"))]);
        }
        assert!(intercepts(&f, leave("{t}old0").as_bytes()));
        assert!(!intercepts(&f, leave("{t}old1099").as_bytes()));
    }

    #[test]
    fn a_channel_the_client_leaves_is_not_followed_after_all() {
        let ended = ended_push;
        let f = Follow::default();
        assert!(intercepts(&f, ended("{a}x").as_bytes()));
        assert!(intercepts(&f, ended("{b}y").as_bytes()));
        assert_eq!(
            f.client_unsubscribes(&[Bytes::from_static(b"{a}x")]),
            vec![Bytes::from_static(b"{a}x")]
        );
        assert_eq!(f.take_ended(), vec![Bytes::from_static(b"{b}y")]);
        assert!(intercepts(&f, ended("{a}x").as_bytes()));
        assert_eq!(
            f.client_unsubscribes(&[]),
            vec![Bytes::from_static(b"{a}x")]
        );
        assert!(f.take_ended().is_empty());
        // A RESET forgets what the client was leaving: a node's ending after it is a node's.
        f.client_leaves(&[]);
        f.client_leaves(&[Bytes::from_static(b"{c}z")]);
        f.reset_sent();
        f.reset_reached();
        assert!(intercepts(&f, ended("{c}z").as_bytes()));
        assert!(intercepts(&f, ended("{d}w").as_bytes()));
    }

    #[test]
    fn a_refused_sunsubscribe_is_awaited_no_more() {
        let ended = ended_push;
        let f = Follow::default();
        // An end of all, refused: a node's ending is a node's at once (it was the client's
        // own until the refusal, for ever).
        let all = f.client_leaves(&[]);
        f.refused(all);
        assert!(intercepts(&f, ended("{a}x").as_bytes()));
        // Named channels, refused between two other requests naming some of the same: only
        // the refused request's names are taken back.
        f.client_leaves(&[Bytes::from_static(b"{a}x")]);
        let refused = f.client_leaves(&[Bytes::from_static(b"{a}x"), Bytes::from_static(b"{b}y")]);
        f.client_leaves(&[Bytes::from_static(b"{b}y")]);
        f.refused(refused);
        assert!(!intercepts(&f, ended("{a}x").as_bytes()), "the first's");
        assert!(!intercepts(&f, ended("{b}y").as_bytes()), "the third's");
        assert!(intercepts(&f, ended("{a}x").as_bytes()), "a node's");
        assert!(intercepts(&f, ended("{b}y").as_bytes()), "a node's");
        // Refused twice, or after its names were forgotten: nothing else moves.
        f.refused(refused);
        f.refused(all);
        let kept = f.client_leaves(&[Bytes::from_static(b"{c}z")]);
        for i in 0..1_100 {
            f.client_leaves(&[Bytes::from(format!("{{t}}old{i}"))]);
        }
        f.refused(kept);
        assert!(!intercepts(&f, ended("{t}old1099").as_bytes()));
        assert!(intercepts(&f, ended("{c}z").as_bytes()));
    }
}
