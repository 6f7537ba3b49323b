//! The accept loop of one listener: connection limit, TLS handshake under a deadline, then a
//! session. Accept errors (EMFILE and friends) back off instead of spinning or exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session;

const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a listener's connections share.
pub struct Listener {
    pub name: String,
    pub handler: Handler,
    pub tls: Option<(TlsAcceptor, Duration)>,
    pub limit: Arc<Semaphore>,
}

/// The protocol-specific session a connection runs once its TLS is up.
pub enum Handler {
    Redis(Arc<session::Context>),
    Memcached(Arc<crate::memcached::Context>),
}

impl Handler {
    async fn run<S>(&self, stream: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match self {
            Handler::Redis(ctx) => session::run(ctx.clone(), stream, peer, shutdown).await,
            Handler::Memcached(ctx) => {
                crate::memcached::run(ctx.clone(), stream, peer, shutdown).await
            }
        }
    }

    /// What a plaintext client over the connection limit is told, in the server's own words.
    fn refusal(&self) -> &'static [u8] {
        match self {
            Handler::Redis(_) => b"-ERR max number of clients reached\r\n",
            Handler::Memcached(_) => b"ERROR Too many open connections\r\n",
        }
    }
}

/// Accepts until `shutdown`; every session is spawned on `sessions` and told about `shutdown`.
pub async fn accept_loop(
    tcp: TcpListener,
    listener: Arc<Listener>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_START;
                a
            }
            Err(e) => {
                // Out of file descriptors or a transient network error: keep the listener,
                // slow down, and let existing sessions finish and free descriptors.
                tracing::error!(listener = %listener.name, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = listener.limit.clone().try_acquire_owned() else {
            tracing::warn!(listener = %listener.name, %peer, "connection limit reached; refusing");
            let message = listener.tls.is_none().then(|| listener.handler.refusal());
            refuse(stream, message);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let listener = listener.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            serve_connection(stream, peer, &listener, shutdown).await;
            drop(permit);
        });
    }
}

/// Refuses an over-limit connection at once. A plaintext client is told why, in its server's
/// words; a TLS client is not worth a handshake.
fn refuse(mut stream: TcpStream, message: Option<&'static [u8]>) {
    if let Some(msg) = message {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg)).await;
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    shutdown: CancellationToken,
) {
    let name = &listener.name;
    let Some((acceptor, deadline)) = &listener.tls else {
        listener.handler.run(stream, peer, shutdown).await;
        return;
    };
    let handshake = async {
        // The wait for the ClientHello counts against the deadline. Anything that does not
        // open with a TLS handshake record (plaintext RESP, HTTP) is dropped unanswered.
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
            Ok(_) => return Err("not TLS (plaintext on a TLS port?)".to_string()),
            Err(e) => return Err(e.to_string()),
        }
        acceptor.accept(stream).await.map_err(|e| e.to_string())
    };
    let tls = match tokio::time::timeout(*deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(reason)) => {
            // Client-caused: worth a debug line, not an error.
            tracing::debug!(listener = %name, %peer, %reason, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %name, %peer, "TLS handshake timed out after {deadline:?}");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    tracing::debug!(
        listener = %name,
        %peer,
        version = ?conn.protocol_version(),
        client_cert = conn.peer_certificates().is_some(),
        "TLS session established"
    );
    listener.handler.run(tls, peer, shutdown).await;
}
