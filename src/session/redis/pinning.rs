//! Pinning: when a session takes a connection of its own and when it gives it back, and who
//! that connection runs commands as (the listener's backend user, its ACL user's, or the
//! administrator's for a renamed command).

use super::*;

impl RequestSide {
    /// Where the session's own connection comes from and goes back to: the listener's
    /// upstream, or on a cluster listener the node it is pinned to.
    pub(super) fn own_pool(&self) -> &Pool {
        match &self.pin_node {
            Some(node) => &node.pool,
            None => &self.ctx.pool,
        }
    }

    /// The backend users this session's commands may run as, for admission.
    pub(super) fn backend(&self) -> Backend {
        let Some(ids) = &self.ctx.identities else {
            return Backend::default();
        };
        Backend {
            admin: ids.admin.is_some(),
            own_user: self
                .user
                .as_ref()
                .is_some_and(|u| ids.users.contains_key(&u.name)),
        }
    }

    /// Who a command must run as on the session's own connection.
    pub(super) fn runs_as(&self, identity: Identity) -> RunsAs {
        match (identity, &self.user) {
            (Identity::Admin, _) => RunsAs::Admin,
            (Identity::User, Some(u)) => RunsAs::User(u.name.clone()),
            _ => RunsAs::Listener,
        }
    }

    /// Who a command that is not a renamed one runs as on the session's own connection.
    pub(super) fn wanted_identity(&self) -> RunsAs {
        self.runs_as(self.backend().identity(false))
    }

    /// Logs the session's own connection in as `want` if it is not already (connecting first
    /// if needed); a refusal to send instead when that cannot be done inside MULTI.
    pub(super) async fn run_as(&mut self, want: RunsAs) -> Result<Option<Bytes>, SessionError> {
        let Some(ids) = &self.ctx.identities else {
            return Ok(None);
        };
        if self.up.is_some() && self.up_as == want {
            return Ok(None);
        }
        if self.up.is_none() && want == RunsAs::Listener {
            return Ok(None);
        }
        // Inside MULTI on the connection itself; a cluster session's MULTI held for its first
        // key has not reached the node yet, and logs in before it does.
        if self.transaction.is_open() && !self.transaction.is_held() {
            return Ok(Some(reply::error(
                "cachegate: this command runs as another backend user (a renamed command, or a script enforced by a mirrored user), which cannot change inside MULTI",
            )));
        }
        let auth = match &want {
            RunsAs::Listener => ids.listener.clone(),
            RunsAs::Admin => ids.admin.clone().unwrap_or_else(|| ids.listener.clone()),
            RunsAs::User(name) => match ids.users.get(name) {
                Some(auth) => auth.clone(),
                None => ids.listener.clone(),
            },
        };
        // Connect first (a pooled connection is logged in as the listener's user).
        if let Some(unavailable) = self.connect_own().await? {
            return Ok(Some(unavailable));
        }
        let mut frame = BytesMut::new();
        encode_command(&mut frame, auth.iter().map(|a| &a[..]));
        // Nothing else goes on the connection until the login is known to have worked: a
        // command pipelined behind a refused AUTH would run as the previous user.
        if !Box::pin(self.own_roundtrip(&frame)).await? {
            // The backend lost the user (restarted without its ACL file, or someone removed
            // it): provisioned again with the configured credentials, then tried once more.
            tracing::warn!(listener = %self.ctx.listener, "a backend user's login was refused: provisioning the backend users again");
            let connector = self.own_pool().connector();
            let mut provisioned = connector.provision.is_some();
            if let Some(provision) = &connector.provision {
                for step in provision.admin_auth.iter().chain(&provision.setusers) {
                    provisioned &= Box::pin(self.own_roundtrip(step)).await?;
                }
            }
            if !provisioned || !Box::pin(self.own_roundtrip(&frame)).await? {
                return Err(SessionError::Upstream(UpstreamError::Unexpected(
                    "the backend refused this session's backend user".into(),
                )));
            }
        }
        self.up_as = want;
        Ok(None)
    }

    /// Sends a pre-encoded command on the session's own connection and waits for its reply:
    /// whether it succeeded. Only for cachegate's own commands (logins, provisioning).
    pub(super) async fn own_roundtrip(&mut self, frame: &[u8]) -> Result<bool, SessionError> {
        self.own_roundtrip_until(frame, None).await
    }

    /// `own_roundtrip` where the reply is the frame `until` matches: frames before it are the
    /// client's and go to it.
    pub(super) async fn own_roundtrip_until(
        &mut self,
        frame: &[u8],
        until: Option<Until>,
    ) -> Result<bool, SessionError> {
        let mut expect = Expect::swallowed(1);
        expect.until = until.map(Box::new);
        let (done, reply) = oneshot::channel();
        expect.login = Some(done);
        self.send_slot(Slot::Upstream(expect)).await?;
        self.wbuf.extend_from_slice(frame);
        self.flush_upstream().await?;
        Ok(reply.await.unwrap_or(false))
    }

    /// Marks, on the session's own connection, where the answers still owed end: a PING of
    /// cachegate's own whose reply is swallowed, every frame before it forwarded. Nothing
    /// waits for it; what is queued behind it (a login of cachegate's) gets its own reply.
    /// (Sent after RESET only, which leaves no subscription: the reply side learns that here.)
    pub(super) async fn mark_settled(&mut self) -> Result<(), SessionError> {
        let (until, ping) = self.settling_ping();
        let mut expect = Expect::swallowed(1);
        expect.until = Some(Box::new(until));
        expect.after_reset = true;
        // The slot first: the reply side must know what the reply is for before it can come.
        self.send_slot(Slot::Upstream(expect)).await?;
        self.wbuf.extend_from_slice(&ping);
        Ok(())
    }

    /// cachegate's own `PING <token>`, whose reply comes after everything sent before it,
    /// and what its reply is: the frame that names the token (every frame before it is the
    /// client's).
    fn settling_ping(&self) -> (Until, BytesMut) {
        let token = Bytes::from(format!("cachegate-settle-{}", self.id));
        let mut ping = BytesMut::new();
        encode_command(&mut ping, [&b"PING"[..], &token[..]].into_iter());
        (Until::Token(reply::bulk(&token)), ping)
    }

    /// Sends the settling PING and waits for its reply: whether it was answered (not refused).
    async fn settle(&mut self) -> Result<bool, SessionError> {
        let (until, ping) = self.settling_ping();
        self.own_roundtrip_until(&ping, Some(until)).await
    }

    /// Whether the pinned connection holds state that sharing would lose. Blocking commands
    /// need no flag: unpinning waits for every reply still due.
    /// A subscription not yet confirmed holds nothing here: the settling PING before
    /// unpinning (`subscriptions_settled`) learns whether it happened (it may never, queued
    /// in a transaction that was discarded) and asks again.
    pub(super) fn holds_state(&self) -> bool {
        let subscriptions = self
            .subscriptions
            .load(std::sync::atomic::Ordering::Acquire);
        self.transaction.is_open()
            || self.pin_state.any()
            || self.reply_mode != ReplyMode::On
            || (self.pin_state.subscribed
                && subscriptions != 0
                && subscriptions != follow::SUBSCRIBING)
    }

    /// For a subscribed (or unsettled) session about to unpin: whether its subscriptions are
    /// really all gone. A confirmation still in flight when the count was read could be older
    /// than a SUBSCRIBE sent since, and an UNSUBSCRIBE's answers may still be owed; one round
    /// trip (PING) settles them, as its reply comes after them all. (After RESET,
    /// `mark_settled` does the same without waiting.)
    pub(super) async fn subscriptions_settled(&mut self) -> Result<bool, SessionError> {
        if !self.pin_state.pubsub() || self.up.is_none() {
            return Ok(true);
        }
        Ok(self.settle().await? && !self.holds_state())
    }

    /// Whether the session's own connection is subscribed to anything, as the backend's own
    /// confirmations say: a PING's reply comes after every one still owed. With replies off
    /// or skipped, none: they were on at every subscription, and were turned off only with
    /// none left. Inside MULTI, none either: a subscription there is only queued (and the
    /// PING would be too).
    pub(super) async fn still_subscribed(&mut self) -> Result<bool, SessionError> {
        let quiet = self.reply_mode != ReplyMode::On;
        if !self.pin_state.subscribed || self.up.is_none() || quiet || self.transaction.is_open() {
            return Ok(false);
        }
        // Boxed: the round trip's wait is rare, and its callers (`handle` on every request
        // among them) would otherwise keep room for it in their state.
        Box::pin(self.settle()).await?;
        Ok(self
            .subscriptions
            .load(std::sync::atomic::Ordering::Acquire)
            != 0)
    }

    /// RESP2's subscribed context, where Redis refuses every command but pub/sub, PING, QUIT
    /// and RESET (`still_subscribed` settles what is in flight first).
    pub(super) async fn in_subscribed_context(&mut self) -> Result<bool, SessionError> {
        Ok(!self.resp3 && self.still_subscribed().await?)
    }

    /// What a command about to go on the session's own connection does to it: whether the
    /// session now receives without asking, and the state it leaves (`track_state`).
    pub(super) fn note_sent(&mut self, kind: Kind, args: &[Bytes]) {
        self.listening |= kind == Kind::Subscribe
            || args
                .first()
                .is_some_and(|a| crate::auth::commands::is_word(a, b"MONITOR"))
            || (kind == Kind::Client
                && args.len() > 2
                && crate::auth::commands::is_word(&args[1], b"TRACKING")
                && crate::auth::commands::is_word(&args[2], b"ON"));
        // On every listener, multiplexed or not: the reply side reads a transaction's
        // confirmations, and a RESP2 subscribed context's refusals are told apart, by it.
        self.track_state(kind, args);
    }

    /// Notes the connection state a command creates or ends while pinned.
    pub(super) fn track_state(&mut self, kind: Kind, args: &[Bytes]) {
        let st = &mut self.pin_state;
        // Whether the command may not run now: queued in a transaction (it runs at EXEC, or
        // never), or sent in RESP2's subscribed context (which refuses all but pub/sub, PING,
        // QUIT and RESET). Only the backend knows; what it would change is assumed done, and
        // what it would undo is assumed not.
        let unsure = self.transaction.is_open() || (st.subscribed && !self.resp3);
        match kind {
            // Held until the connection's own count of subscriptions (in every confirmation
            // the reply side reads) is back to 0: after the last UNSUBSCRIBE, or when a
            // cluster node ends a shard channel's subscription (a resharding).
            Kind::Subscribe => {
                st.subscribed = true;
                self.subscriptions
                    .store(follow::SUBSCRIBING, std::sync::atomic::Ordering::Release);
            }
            // Its confirmations are owed even with nothing subscribed (RESP3 pushes no reply
            // slot waits for): the settling PING before unpinning comes after them, so the
            // connection is not handed back with them unread.
            Kind::Unsubscribe => st.unsettled = true,
            Kind::Stateful => st.sticky = true,
            // A SETNAME that may not run (queued, it runs at EXEC or never): only the backend
            // knows, so the session keeps its connection (and asks it).
            Kind::Client if unsure => st.sticky = true,
            Kind::Client => match client_subcommand(args).as_deref() {
                Some(b"SETNAME") if args.len() == 3 => self.name = commands::kept_name(&args[2]),
                Some(b"GETNAME" | b"SETINFO" | b"ID" | b"INFO" | b"LIST") => {}
                _ => st.sticky = true,
            },
            Kind::Watch => st.watching = true,
            Kind::Unwatch if !unsure => st.watching = false,
            // Another database is assumed until a SELECT 0 that surely runs.
            Kind::Select => st.db = unsure || args.get(1).is_some_and(|d| &d[..] != b"0"),
            _ => {}
        }
    }

    /// Back to the shared connections: the reply side hands back the pinned connection once
    /// every reply due on it has been delivered, and it is reset and pooled as a leaving
    /// session's would be.
    pub(super) async fn unpin(&mut self) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.send_slot(Slot::Detach(tx)).await?;
        self.flush_upstream().await?;
        let read_half = rx.await.map_err(|_| closed())?;
        if let (Some(write_half), Some(read_half)) = (self.up.take(), read_half) {
            let pool = self.own_pool().clone();
            let conn = Conn {
                stream: read_half.unsplit(write_half),
                connector: pool.connector(),
            };
            pool.release(conn, self.wbuf.is_empty());
        }
        self.up = None;
        self.pin_node = None;
        // Nothing is received without asking any more (MONITOR and tracking never unpin).
        self.listening = false;
        self.pin_state = PinState::default();
        self.shared = Some(SharedSession {
            name: self.name.take(),
            ..SharedSession::default()
        });
        self.pinned = None;
        tracing::trace!(listener = %self.ctx.listener, peer = %self.peer, "session back on shared connections");
        Ok(())
    }

    pub(super) fn listener_labels(&self) -> crate::metrics::ListenerLabels {
        crate::metrics::ListenerLabels {
            listener: self.ctx.listener.clone(),
        }
    }

    /// From now on this session has its own connection, with the state kept so far (RESP
    /// version, client name) applied to it. Replies still due from shared connections come
    /// first: the reply side takes slots in order.
    /// `Some(error reply)` when no connection could be opened: the session stays on shared
    /// connections then, and nothing was sent.
    pub(super) async fn pin(&mut self) -> Result<Option<Bytes>, SessionError> {
        if self.shared.is_none() {
            return Ok(None);
        }
        // What went to shared connections runs first in the backend, as the client sent it.
        Box::pin(self.settle_shared()).await?;
        if let Some(unavailable) = self.connect_own().await? {
            return Ok(Some(unavailable));
        }
        let Some(state) = self.shared.take() else {
            return Ok(None);
        };
        let gauge = self
            .ctx
            .metrics
            .pinned_sessions
            .get_or_create(&self.listener_labels())
            .clone();
        self.pinned = Some(PinnedMark::new(gauge));
        self.name = state.name.clone();
        tracing::trace!(listener = %self.ctx.listener, peer = %self.peer, "session pinned to its own upstream connection");
        if self.resp3 {
            let hello = [Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")];
            self.forward_raw(&hello, Expect::swallowed(1)).await?;
        }
        if let Some(name) = state.name {
            let setname = [
                Bytes::from_static(b"CLIENT"),
                Bytes::from_static(b"SETNAME"),
                name,
            ];
            self.forward_raw(&setname, Expect::swallowed(1)).await?;
        }
        Ok(None)
    }

    /// A cluster session's [`pin`](Self::pin) to `node`'s connection; on failure the session
    /// holds no node, as before.
    pub(super) async fn pin_to(
        &mut self,
        node: Arc<crate::upstream::cluster::Node>,
    ) -> Result<Option<Bytes>, SessionError> {
        self.pin_node = Some(node);
        let outcome = self.pin().await;
        if !matches!(outcome, Ok(None)) {
            self.pin_node = None;
        }
        outcome
    }
}

/// One session counted in the pinned-sessions gauge, for as long as it is held.
pub(super) struct PinnedMark(prometheus_client::metrics::gauge::Gauge);

impl PinnedMark {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for PinnedMark {
    fn drop(&mut self) {
        self.0.dec();
    }
}
