//! The session's own commands: AUTH, HELLO and RESET, answered here and never forwarded
//! as typed; the login's security events and throttling.

use super::*;
use crate::auth::login;

impl RequestSide {
    /// `AUTH <token>` or `AUTH <user> <token>`, answered here and never forwarded. In RESP2's
    /// subscribed context it is refused as Redis refuses it there (after the arity check, as
    /// Redis's order goes): no login changes under a subscription made as someone else.
    pub(super) async fn auth(&mut self, req: &Request) -> Result<Flow, SessionError> {
        if self.transaction.is_open() {
            // Redis would queue it and log in at EXEC (or never, after DISCARD or a failed
            // WATCH), its reply inside EXEC's: refused, and the transaction fails, as HELLO.
            // (An arity error is Redis's own, which fails the transaction too.)
            let reply = match req.args.len() {
                1 => reply::wrong_arity(b"auth"),
                _ => reply::error("cachegate: AUTH cannot run inside MULTI"),
            };
            return self.refused(reply).await;
        }
        if req.args.len() > 1 && self.in_subscribed_context().await? {
            self.local(reply::error(
                "Can't execute 'auth': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        let (reply, flow) = match req.args.len() {
            2 => self.authenticate(None, &req.args[1]).await,
            3 => self.authenticate(Some(&req.args[1]), &req.args[2]).await,
            1 => (reply::wrong_arity(b"auth"), Flow::Continue),
            _ => (Bytes::from_static(reply::SYNTAX), Flow::Continue),
        };
        self.local(reply).await?;
        Ok(flow)
    }

    /// Checks credentials with everything around it: the source address's backoff, metrics,
    /// the security log, and closing the connection after too many failures.
    pub(super) async fn authenticate(
        &mut self,
        user: Option<&[u8]>,
        secret: &[u8],
    ) -> (Bytes, Flow) {
        let ip = self.peer.ip();
        match self.ctx.throttle.admit(ip) {
            crate::auth::throttle::Admission::Now => {}
            crate::auth::throttle::Admission::After(wait) => {
                self.count_throttled();
                tokio::time::sleep(wait).await;
            }
            crate::auth::throttle::Admission::Refuse => {
                self.count_throttled();
                tracing::info!(listener = %self.ctx.listener, peer = %self.peer, "authentication refused unchecked: too many recent failures from this address");
                return (
                    reply::error("cachegate: too many failed authentications from this address; try again later"),
                    Flow::Stop,
                );
            }
        }
        // Checked against the configuration in force now: a reload may have come while this
        // AUTH waited its turn, or since the session last looked (mid-pipeline).
        if self.live.generation() != self.generation && !self.refresh() {
            return (Bytes::new(), Flow::Stop);
        }
        match self.check_credentials(user, secret) {
            Verdict::Reply(reply) => (reply, Flow::Continue),
            // A success clears nothing: interleaving a valid credential buys no fresh guesses.
            Verdict::Ok { user, slot } => {
                tracing::debug!(listener = %self.ctx.listener, %user, slot, "authenticated");
                self.ctx
                    .metrics
                    .authentications
                    .get_or_create(&AuthLabels {
                        listener: self.ctx.listener.clone(),
                        user,
                        slot: slot.to_string(),
                    })
                    .inc();
                (Bytes::from_static(reply::OK), Flow::Continue)
            }
            Verdict::Failed { attempted, known } => {
                self.ctx.throttle.failure(ip);
                self.failed_auths += 1;
                self.security_event("auth", "AUTH".into(), &attempted, known);
                let limit = self.ctx.auth_limits.max_failures;
                if limit > 0 && self.failed_auths >= limit {
                    tracing::info!(listener = %self.ctx.listener, peer = %self.peer, failures = self.failed_auths, "closing connection after repeated authentication failures");
                    self.count_throttled();
                    return (Bytes::from_static(reply::WRONGPASS), Flow::Stop);
                }
                (Bytes::from_static(reply::WRONGPASS), Flow::Continue)
            }
        }
    }

    pub(super) fn count_throttled(&self) {
        self.ctx
            .metrics
            .auth_throttled
            .get_or_create(&crate::metrics::ListenerLabels {
                listener: self.ctx.listener.clone(),
            })
            .inc();
    }

    /// Counts, logs and keeps (for ACL LOG) one security event. `known` says whether `user` is
    /// a configured user name; metrics label any other name `unknown`.
    pub(super) fn security_event(
        &self,
        reason: &'static str,
        object: String,
        user: &str,
        known: bool,
    ) {
        let session_user =
            self.user
                .as_ref()
                .map(|u| u.name.as_str())
                .unwrap_or(if self.authenticated {
                    "default"
                } else {
                    "(none)"
                });
        let client_info = SecurityEvent::client_info(
            self.peer,
            &self.ctx.listener,
            Some(session_user),
            Some(if self.resp3 { 3 } else { 2 }),
        );
        let context = if self.transaction.is_open() {
            "multi"
        } else {
            "toplevel"
        };
        self.ctx.metrics.security_event(
            SecurityEvent::new(
                reason,
                context,
                object,
                user,
                &self.ctx.listener,
                client_info,
            ),
            known,
        );
    }

    /// Back to a fresh connection's identity (`auth::login::opening`): its certificate's user,
    /// else `default` when that needs no password, else not logged in; authenticated from the
    /// start when the listener has no auth.
    pub(super) fn log_out(&mut self) {
        let (user, authenticated, by_cert) =
            match login::opening(&self.ctx.auth, self.cert_user.as_ref(), true) {
                login::Opening::Open => (None, true, false),
                login::Opening::As { user, by_cert } => (Some(user), true, by_cert),
                login::Opening::Out => (None, false, false),
            };
        self.user = user;
        self.authenticated = authenticated;
        self.by_cert = by_cert;
    }

    /// The verdict on a set of credentials (`auth::login::check`); on success the session is
    /// logged in.
    pub(super) fn check_credentials(&mut self, user: Option<&[u8]>, token: &[u8]) -> Verdict {
        match login::check(&self.ctx.auth, self.cert_user.as_deref(), user, token) {
            login::Verdict::LoggedIn { user, name, slot } => {
                if let Some(user) = user {
                    self.user = Some(user);
                    self.by_cert = false;
                }
                self.authenticated = true;
                Verdict::Ok { user: name, slot }
            }
            login::Verdict::Failed { attempted, known } => Verdict::Failed { attempted, known },
            login::Verdict::NoAuth(answer) => Verdict::Reply(Bytes::from_static(match answer {
                login::NoAuthAnswer::WithoutPassword => reply::AUTH_WITHOUT_PASSWORD,
                login::NoAuthAnswer::Ok => reply::OK,
                login::NoAuthAnswer::WrongPass => reply::WRONGPASS,
            })),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: the AUTH part is checked here and
    /// stripped; the rest goes upstream so the client gets the real server's HELLO reply.
    pub(super) async fn hello(&mut self, req: Request) -> Result<Flow, SessionError> {
        if self.transaction.is_open() {
            // Redis would queue it and switch the protocol at EXEC (or never, after DISCARD
            // or a failed WATCH): cachegate could not tell how to read what follows. Refused,
            // and the transaction fails, as for any command refused inside MULTI.
            return self
                .refused(reply::error("cachegate: HELLO cannot run inside MULTI"))
                .await;
        }
        self.label = "hello";
        let mut forward = vec![req.args[0].clone()];
        let mut credentials = None;
        let mut i = 1;
        if let Some(ver) = req.args.get(1) {
            forward.push(ver.clone());
            i = 2;
        }
        while i < req.args.len() {
            let opt = &req.args[i];
            if crate::auth::commands::is_word(opt, b"AUTH") && i + 2 < req.args.len() {
                credentials = Some((req.args[i + 1].clone(), req.args[i + 2].clone()));
                i += 3;
            } else if crate::auth::commands::is_word(opt, b"SETNAME") && i + 1 < req.args.len() {
                forward.extend_from_slice(&req.args[i..i + 2]);
                i += 2;
            } else {
                let msg = format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                );
                self.local(reply::error(&msg)).await?;
                return Ok(Flow::Continue);
            }
        }
        // Redis's RESP2 subscribed context refuses HELLO (once the ACL allows it) before it
        // runs, its AUTH included, as every command but pub/sub, PING, QUIT and RESET: the
        // backend's own refusal, and nothing changes. (Only the name and version go: never
        // credentials.)
        if self.authenticated && self.in_subscribed_context().await? {
            if self.hello_denied(&forward).await? {
                return Ok(Flow::Continue);
            }
            let n = req.args.len().min(2);
            return self.forward(&req.args[..n], Expect::one()).await;
        }
        if let Some((user, pass)) = credentials {
            let (verdict, flow) = self.authenticate(Some(&user), &pass).await;
            if &verdict[..] != reply::OK || matches!(flow, Flow::Stop) {
                self.local(verdict).await?;
                return Ok(flow);
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            self.local(Bytes::from_static(reply::HELLO_NOAUTH)).await?;
            return Ok(Flow::Continue);
        }
        if self.hello_denied(&forward).await? {
            return Ok(Flow::Continue);
        }
        // As Redis: a name it refuses fails HELLO after the login, before the protocol changes.
        let bad_name = forward
            .get(2..)
            .unwrap_or_default()
            .chunks(2)
            .any(|pair| pair.len() == 2 && !commands::valid_client_name(&pair[1]));
        if bad_name {
            self.local(reply::error(commands::BAD_CLIENT_NAME)).await?;
            return Ok(Flow::Continue);
        }
        match req.args.get(1).map(|v| &v[..]) {
            Some(b"3") => self.resp3 = true,
            Some(b"2") => self.resp3 = false,
            _ => {}
        }
        if self.shared.is_some() {
            // HELLO does not pin: its SETNAME is kept here, and the reply comes from a shared
            // connection that already speaks the requested protocol.
            let mut plain = vec![forward[0].clone()];
            let mut i = 1;
            if forward.len() > 1 {
                plain.push(forward[1].clone());
                i = 2;
            }
            // (Redis sets the name only for a version it speaks: `HELLO 4 SETNAME x` fails.)
            let speaks = matches!(req.args.get(1).map(|v| &v[..]), Some(b"2" | b"3"));
            while i + 1 < forward.len() {
                if let Some(shared) = self.shared.as_mut().filter(|_| speaks) {
                    shared.name = commands::kept_name(&forward[i + 1]);
                }
                i += 2;
            }
            if let Some(cluster) = self.ctx.cluster.clone() {
                let hello = crate::session::admission::Command(
                    crate::auth::commands::table().lookup(&plain),
                );
                return Box::pin(self.forward_cluster(
                    cluster,
                    hello,
                    &plain,
                    None,
                    Some(Rewrite::Hello),
                ))
                .await;
            }
            return self
                .forward_shared(&plain, None, Some(Rewrite::Hello))
                .await;
        }
        // Pinned: the name goes with HELLO to the session's own connection, and is kept for
        // when the session goes back to shared ones, as CLIENT SETNAME's is (it used to be
        // forgotten there; a reviewer found it). Redis sets it only for a version it speaks.
        if matches!(req.args.get(1).map(|v| &v[..]), Some(b"2" | b"3")) {
            for pair in forward[2..].chunks(2) {
                if let [_, name] = pair {
                    self.name = commands::kept_name(name);
                }
            }
        }
        let mut expect = Expect::one();
        expect.rewrite = Some(Rewrite::Hello);
        self.forward(&forward, expect).await
    }

    /// HELLO is a command like any other for the ACL (its AUTH part aside): whether the
    /// session's user may not run it (answered, and the security event noted).
    async fn hello_denied(&mut self, forward: &[Bytes]) -> Result<bool, SessionError> {
        let Some(user) = self.user.clone() else {
            return Ok(false);
        };
        let Err(denied) = user.check(forward) else {
            return Ok(false);
        };
        let (reason, object) = denied.event();
        self.security_event(reason, object, &user.name, true);
        self.local(reply::error_line(&denied.error())).await?;
        Ok(true)
    }

    /// RESET: the client's connection state goes back to a fresh connection's, its
    /// authentication included.
    pub(super) async fn reset(&mut self) -> Result<Flow, SessionError> {
        // RESET's own reply is skipped after CLIENT REPLY SKIP, by Redis as by cachegate.
        let skipped = self.reply_mode == ReplyMode::SkipNext;
        self.label = "reset";
        self.transaction.end();
        self.subscriptions
            .store(0, std::sync::atomic::Ordering::Release);
        self.resp3 = false;
        self.reply_mode = ReplyMode::On;
        self.listening = false;
        self.log_out();
        if let Some(shared) = self.shared.as_mut() {
            shared.name = None;
        }
        // RESET does not clear what tainted the connection (SCRIPT DEBUG, CLIENT NO-EVICT).
        self.pin_state = PinState {
            tainted: self.pin_state.tainted,
            ..PinState::default()
        };
        self.name = None;
        if self.up.is_none() {
            if !skipped {
                self.local(Bytes::from_static(reply::RESET)).await?;
            }
            return Ok(Flow::Continue);
        }
        let expect = if skipped {
            Expect::swallowed(0)
        } else {
            Expect::one()
        };
        // (Until the PING after it is reached, the follower takes no node's ending: RESET
        // ends every subscription anyway, and the client sees the node's in its place.)
        if let Some(follow) = &self.follow {
            follow.reset_sent();
        }
        self.forward(&[Bytes::from_static(b"RESET")], expect)
            .await?;
        // The answers still owed before RESET (a RESP2 UNSUBSCRIBE of all answers once per
        // subscription) pass before anything of cachegate's behind it: its login, or the
        // connection's hand-back when the session moves to shared connections.
        self.mark_settled().await?;
        // RESET logs the upstream connection out too; log cachegate back in.
        if let Some(auth) = self.own_pool().auth_frame() {
            self.send_slot(Slot::Upstream(Expect::swallowed(1))).await?;
            self.wbuf.extend_from_slice(&auth);
        }
        self.up_as = RunsAs::Listener;
        Ok(Flow::Continue)
    }
}
