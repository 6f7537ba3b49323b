//! Error types at the module boundaries, each saying who caused the failure: the client, the
//! upstream, or the proxy itself (its configuration or environment).

use std::time::Duration;

/// Who a failure is attributed to, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Proxy,
}

/// Failures talking to the upstream. The display text is safe to send to a client: it holds no
/// secret and names the phase that failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to upstream {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("connect to upstream {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} did not accept cachegate's connection: {reply}")]
    Auth { addr: String, reply: String },
    #[error("upstream {addr} is down ({last}); retrying with backoff")]
    Down { addr: String, last: String },
    #[error("upstream read timed out after {0:?}")]
    Timeout(Duration),
    #[error("upstream closed the connection")]
    Closed,
    #[error("upstream i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error("unexpected reply from upstream: {0}")]
    Unexpected(String),
    #[error("upstream does not speak RESP3")]
    NoResp3,
    /// Redis Cluster: the layout names no node for the slot (yet).
    #[error("no node serves this slot yet")]
    NoNode,
}

impl UpstreamError {
    /// A short label for metrics, with the same words as a shared connection's
    /// (`SharedError::cause`): unavailable (no connection), lost, timeout, malformed.
    pub fn cause(&self) -> &'static str {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Auth { .. }
            | UpstreamError::Down { .. }
            | UpstreamError::NoResp3
            | UpstreamError::NoNode => "unavailable",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Closed | UpstreamError::Io(_) => "lost",
            UpstreamError::Reply(_) | UpstreamError::Unexpected(_) => "malformed",
        }
    }
}

/// Malformed client input. The display text is what follows `-ERR Protocol error: ` on the wire,
/// worded as Redis words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("too big inline request")]
    TooBigInline,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Redis never runs such a line: it looks for the line's end as far as the NUL only, and
    /// waits (then refuses it as too big). cachegate says so at once.
    #[error("NUL byte in inline request")]
    InlineNul,
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
}

/// Malformed or oversized upstream output: the upstream connection cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply from upstream: {0}")]
    Malformed(&'static str),
    #[error("reply from upstream larger than {0} bytes")]
    TooLarge(usize),
}

/// Why a client session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("client left a request unfinished for {0:?}")]
    PartialRequestTimeout(Duration),
    #[error("client not logged in within {0:?}")]
    LoginTimeout(Duration),
    #[error("client query buffer over {0} bytes")]
    QueryBufferFull(usize),
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
    /// The process's buffers were full and this session held the most of them.
    #[error("client evicted: it held the most of cachegate's buffers when they reached limits.max_buffered_bytes (replies it did not read)")]
    Evicted,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// memcached input after which the stream cannot be trusted (a line over memcached's
    /// limit, an HTTP request): the connection is closed, as memcached closes it.
    #[error("client protocol error: {0}")]
    Unreadable(&'static str),
}

impl SessionError {
    /// Whose doing it is: the process's bound on buffered bytes is cachegate's.
    pub fn source(&self) -> Source {
        match self {
            SessionError::Upstream(_) => Source::Upstream,
            SessionError::OverBudget(_) => Source::Proxy,
            _ => Source::Client,
        }
    }

    /// A short label for metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            SessionError::ClientIo(_) => "client_io",
            SessionError::Protocol(_) | SessionError::Unreadable(_) => "protocol",
            SessionError::PartialRequestTimeout(_) => "partial_request_timeout",
            SessionError::LoginTimeout(_) => "login_timeout",
            SessionError::QueryBufferFull(_) => "query_buffer_full",
            SessionError::OverBudget(_) => "over_budget",
            SessionError::Evicted => "evicted",
            SessionError::Upstream(e) => e.cause(),
        }
    }
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Proxy => "proxy",
        }
    }
}
