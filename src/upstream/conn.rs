//! One upstream connection: plain TCP or TLS, authenticated with cachegate's own credentials.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::UpstreamError;
use crate::protocol::memcached::{reply_len, Shape};
use crate::protocol::reply::encode_command;
use crate::protocol::resp::ReplyScanner;

/// The byte stream to an upstream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<crate::sends::Sends>>),
}

impl Stream {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.get_ref().0 .0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The protocol an upstream speaks, which decides how a connection is proven and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Redis,
    Memcached,
}

/// How to open and authenticate a connection; shared by all of a pool's connections.
pub struct Connector {
    pub protocol: Protocol,
    pub address: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_reply: usize,
    /// Replaced by a reload (new CA, client certificate): new connections use the current
    /// one, open ones keep theirs.
    pub tls: crate::live::Live<Option<UpstreamTls>>,
    /// `AUTH [username] password`, pre-encoded; `None` when the upstream needs no AUTH.
    pub auth: Option<Bytes>,
    /// `commands.scripts = "backend_acl"`: how to (re)create the backend user that `auth`
    /// logs in as.
    pub provision: Option<Provision>,
    /// A cluster replica serving reads: each connection says READONLY once logged in.
    pub readonly: bool,
}

/// How a pool's connections do TLS to the backend.
pub type UpstreamTls = (TlsConnector, rustls_pki_types::ServerName<'static>);

/// Creating the backend user a `backend_acl` listener's connections log in as: with the
/// configured (administrator) credentials, `ACL SETUSER` with rules that deny what the policy
/// refuses. Done on the first connection of the process, and again whenever the user's AUTH
/// fails (a restarted backend that lost its users, a user someone removed): every new
/// connection verifies that it runs as that user.
pub struct Provision {
    pub admin_auth: Option<Bytes>,
    /// One `ACL SETUSER` per backend user: the listener's, and mirrors of its ACL users.
    pub setusers: Vec<Bytes>,
    /// For logs: the users provisioned.
    pub user: String,
    /// Whether this process has provisioned them; cleared when a login as one fails.
    pub done: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("address", &self.address)
            .field("tls", &self.tls.load().is_some())
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("backend_user", &self.provision.as_ref().map(|p| &p.user))
            .finish()
    }
}

impl Connector {
    pub fn auth_frame(
        username: Option<&str>,
        password: Option<&crate::auth::secret::Password>,
    ) -> Option<Bytes> {
        let password = password?;
        let mut out = BytesMut::new();
        match username {
            Some(u) => encode_command(
                &mut out,
                [&b"AUTH"[..], u.as_bytes(), password.expose().as_bytes()].into_iter(),
            ),
            None => encode_command(
                &mut out,
                [&b"AUTH"[..], password.expose().as_bytes()].into_iter(),
            ),
        }
        Some(out.freeze())
    }

    /// Opens, (TLS-)handshakes and authenticates a new connection, each phase under a deadline.
    pub async fn connect(self: &Arc<Self>) -> Result<Conn, UpstreamError> {
        let addr = &self.address;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr.as_str()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr: addr.clone(),
                after: self.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Small requests and replies: do not wait to coalesce.
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.load();
        let stream = match tls.as_ref() {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), crate::sends::Sends(tcp)),
                )
                .await
                .map_err(|_| UpstreamError::ConnectTimeout {
                    addr: addr.clone(),
                    after: self.connect_timeout,
                })?
                .map_err(|source| UpstreamError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = Conn {
            stream,
            connector: self.clone(),
        };
        // One round trip proves the connection usable before a client gets it.
        conn.check().await?;
        Ok(conn)
    }
}

/// An open, authenticated upstream connection in a known state.
pub struct Conn {
    pub stream: Stream,
    pub connector: Arc<Connector>,
}

impl Conn {
    /// Proves the connection usable with one round trip: for Redis, AUTH when credentials are
    /// configured and PING otherwise (which also catches a TLS upstream that rejected our
    /// certificate, or a Redis that wants a password we do not have); for memcached, `version`.
    pub async fn check(&mut self) -> Result<(), UpstreamError> {
        let connector = self.connector.clone();
        let ok = match connector.protocol {
            Protocol::Redis if connector.provision.is_some() => self.provisioned_login().await?,
            Protocol::Redis => {
                let (probe, expected): (&[u8], &[u8]) = match &connector.auth {
                    Some(auth) => (auth, b"+OK\r\n"),
                    None => (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
                };
                let reply = self.roundtrip(probe).await?;
                (reply == expected).then_some(()).ok_or(reply)
            }
            Protocol::Memcached => {
                let reply = self.roundtrip(b"version\r\n").await?;
                reply.starts_with(b"VERSION ").then_some(()).ok_or(reply)
            }
        };
        let ok = match ok {
            Ok(()) if connector.readonly => {
                let reply = self.roundtrip(b"*1\r\n$8\r\nREADONLY\r\n").await?;
                (&reply[..] == b"+OK\r\n").then_some(()).ok_or(reply)
            }
            other => other,
        };
        ok.map_err(|reply| UpstreamError::Auth {
            addr: connector.address.clone(),
            reply: printable(&reply),
        })
    }

    /// Logs in as the provisioned backend user, creating it first when this process has not
    /// yet, or when the login is refused.
    async fn provisioned_login(&mut self) -> Result<Result<(), Bytes>, UpstreamError> {
        let connector = self.connector.clone();
        let Some(provision) = &connector.provision else {
            return Ok(Ok(()));
        };
        let auth: &[u8] = connector.auth.as_deref().unwrap_or(b"*1\r\n$4\r\nPING\r\n");
        let expected: &[u8] = if connector.auth.is_some() {
            b"+OK\r\n"
        } else {
            b"+PONG\r\n"
        };
        let done = || provision.done.load(std::sync::atomic::Ordering::Acquire);
        if !done() {
            if let Err(reply) = self.provision(provision).await? {
                return Ok(Err(reply));
            }
        }
        let reply = self.roundtrip(auth).await?;
        if &reply[..] == expected {
            return Ok(Ok(()));
        }
        if !reply.starts_with(b"-WRONGPASS") {
            return Ok(Err(reply));
        }
        tracing::warn!(upstream = %connector.address, user = %provision.user, "backend user refused its login (a restarted backend, or removed): provisioning it again");
        if let Err(reply) = self.provision(provision).await? {
            return Ok(Err(reply));
        }
        let reply = self.roundtrip(auth).await?;
        Ok(if &reply[..] == expected {
            Ok(())
        } else {
            Err(reply)
        })
    }

    async fn provision(
        &mut self,
        provision: &Provision,
    ) -> Result<Result<(), Bytes>, UpstreamError> {
        if let Some(admin) = &provision.admin_auth {
            let reply = self.roundtrip(admin).await?;
            if &reply[..] != b"+OK\r\n" {
                return Ok(Err(reply));
            }
        }
        for setuser in &provision.setusers {
            let reply = self.roundtrip(setuser).await?;
            if &reply[..] != b"+OK\r\n" {
                tracing::error!(upstream = %self.connector.address, users = %provision.user, reply = %printable(&reply), "could not provision a backend user (upstream credentials need ACL SETUSER)");
                return Ok(Err(reply));
            }
        }
        tracing::info!(upstream = %self.connector.address, user = %provision.user, "backend user provisioned: scripts cannot run the commands this listener disables");
        provision
            .done
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(Ok(()))
    }

    /// Sends pre-encoded commands and returns the first reply frame. Only for connections no
    /// client is using (setup, health checks).
    pub async fn roundtrip(&mut self, request: &[u8]) -> Result<Bytes, UpstreamError> {
        let timeout = self.connector.request_timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(request).await?;
            self.stream.flush().await?;
            let mut buf = BytesMut::with_capacity(256);
            self.read_frame(&mut buf).await
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// Reads one complete reply (a RESP frame, or a memcached line), leaving any bytes after it
    /// in `buf`.
    pub async fn read_frame(&mut self, buf: &mut BytesMut) -> Result<Bytes, UpstreamError> {
        let max = self.connector.max_reply;
        // Resumes where the last read left off: a big reply is not scanned again from its start.
        let mut scanner = ReplyScanner::default();
        loop {
            let len = match self.connector.protocol {
                Protocol::Redis => scanner.next(buf, max)?.map(|(len, _)| len),
                Protocol::Memcached => reply_len(buf, Shape::Line, max)
                    .map_err(|e| UpstreamError::Unexpected(e.to_string()))?,
            };
            if let Some(len) = len {
                return Ok(buf.split_to(len).freeze());
            }
            if self.stream.read_buf(buf).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// Sends `request` to a memcached node and reads one reply of `shape`.
    pub async fn memcached_roundtrip(
        &mut self,
        request: &[u8],
        shape: Shape,
    ) -> Result<Bytes, UpstreamError> {
        let timeout = self.connector.request_timeout;
        let max = self.connector.max_reply;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(request).await?;
            self.stream.flush().await?;
            let mut buf = BytesMut::with_capacity(256);
            loop {
                let len = reply_len(&buf, shape, max)
                    .map_err(|e| UpstreamError::Unexpected(e.to_string()))?;
                if let Some(len) = len {
                    return Ok(buf.split_to(len).freeze());
                }
                if self.stream.read_buf(&mut buf).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
        })
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// Sends `request` and reads `\n`-ended lines until one is `END` (memcached's
    /// `lru_crawler metadump`), handing each line to `each`. No timeout on the whole (a big
    /// cache's dump takes as long as it takes); each read waits `request_timeout` at most.
    pub async fn memcached_lines(
        &mut self,
        request: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), UpstreamError> {
        let timeout = self.connector.request_timeout;
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line == b"END" {
                    return Ok(());
                }
                if line.starts_with(b"ERROR")
                    || line.starts_with(b"CLIENT_ERROR")
                    || line.starts_with(b"SERVER_ERROR")
                    || line.starts_with(b"BUSY")
                {
                    return Err(UpstreamError::Unexpected(printable(line)));
                }
                each(line);
            }
            if buf.len() > 64 * 1024 {
                return Err(UpstreamError::Unexpected("a line over 64 KiB".into()));
            }
            match tokio::time::timeout(timeout, self.stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Err(UpstreamError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(UpstreamError::Timeout(timeout)),
            }
        }
    }

    /// A cheap liveness check with no round trip: a connection the upstream has closed (or that
    /// has unexpected bytes waiting) is not handed to a client.
    pub fn looks_alive(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            self.stream.tcp().poll_peek(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// A reply shortened to one printable line, for logs and errors.
pub fn printable(reply: &[u8]) -> String {
    let s = String::from_utf8_lossy(&reply[..reply.len().min(120)]);
    s.trim_end().replace(['\r', '\n'], " ")
}
