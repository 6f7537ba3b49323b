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
    pub ctx: Arc<session::Context>,
    pub tls: Option<(TlsAcceptor, Duration)>,
    pub limit: Arc<Semaphore>,
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
                tracing::error!(listener = %listener.ctx.listener, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = listener.limit.clone().try_acquire_owned() else {
            tracing::warn!(listener = %listener.ctx.listener, %peer, "connection limit reached; refusing");
            refuse(stream, listener.tls.is_none());
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

/// Refuses an over-limit connection at once. A plaintext client is told why, in Redis's words;
/// a TLS client is not worth a handshake.
fn refuse(mut stream: TcpStream, plaintext: bool) {
    if plaintext {
        tokio::spawn(async move {
            let msg = b"-ERR max number of clients reached\r\n";
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
    let ctx = listener.ctx.clone();
    let Some((acceptor, deadline)) = &listener.tls else {
        session::run(ctx, stream, peer, shutdown).await;
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
            tracing::debug!(listener = %ctx.listener, %peer, %reason, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %ctx.listener, %peer, "TLS handshake timed out after {deadline:?}");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    tracing::debug!(
        listener = %ctx.listener,
        %peer,
        version = ?conn.protocol_version(),
        client_cert = conn.peer_certificates().is_some(),
        "TLS session established"
    );
    session::run(ctx, tls, peer, shutdown).await;
}
