//! Error types at the module boundaries, each saying who caused the failure: the client, the
//! upstream, or the proxy itself (its configuration or environment).

use std::time::Duration;

use crate::protocol::resp::ReplyError;

/// Who a failure is attributed to, for logs and (later) metrics.
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
}

/// Why a client session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol error: {0}")]
    Protocol(#[from] crate::protocol::resp::ProtocolError),
    #[error("client left a request unfinished for {0:?}")]
    PartialRequestTimeout(Duration),
    #[error("client query buffer over {0} bytes")]
    QueryBufferFull(usize),
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl SessionError {
    pub fn source(&self) -> Source {
        match self {
            SessionError::Upstream(_) => Source::Upstream,
            _ => Source::Client,
        }
    }
}
