//! The client read loop both protocols share: one read buffer sized to the client
//! (`ReadRoom`), and the same limits on it for Redis and memcached alike: what is left
//! unparsed (`limits.max_request_bytes`), how long a request may stay half-sent
//! (`limits.partial_request_timeout`), and the process-wide memory budget. The session parses
//! and runs every complete request in `buf` between two `fill`s; how a failure reaches the
//! client is the protocol's own (a Redis error, a memcached `SERVER_ERROR`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::budget::{Charge, MemoryBudget, OverBudget};
use crate::deadline::sleep_until;
use crate::read_room::ReadRoom;

/// What woke a waiting session.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// More bytes are in `buf`.
    Data,
    /// The client closed its side (a TLS close without close_notify included).
    Eof,
    /// One of the session's wake-ups fired (shutdown, a reload, an abort): the caller asks
    /// which.
    Woken,
}

/// Why reading from the client stops.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("client i/o error: {0}")]
    Io(std::io::Error),
    #[error("client left a request unfinished for {0:?}")]
    PartialTimeout(Duration),
    #[error("request larger than limits.max_request_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// The limits `fill` applies, as the listener's configuration has them now (a reload may
/// change them between two fills).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_request_bytes: usize,
    pub partial_request_timeout: Duration,
}

pub struct ClientReader<R> {
    io: R,
    /// What the client sent and the session has not parsed yet.
    pub buf: BytesMut,
    room: ReadRoom,
    partial_since: Option<Instant>,
    charge: Charge,
}

impl<R: AsyncRead + Unpin> ClientReader<R> {
    pub fn new(io: R, budget: std::sync::Arc<MemoryBudget>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            room: ReadRoom::new(),
            partial_since: None,
            charge: Charge::new(budget),
        }
    }

    /// A request was split off the buffer: the charge follows what the buffer still holds, so
    /// that a large request is not counted twice once the session copies it on (charged
    /// there) while the reader still counted it (a 32 MB `SET` through a 64 MiB bound was
    /// refused, found by a reviewer). Giving back never fails.
    pub fn parsed(&mut self) {
        let _ = self.charge.hold(self.buf.capacity());
    }

    /// Once every complete request in `buf` has run: checks what is left against the limits,
    /// then waits for the client's next bytes or for `wake` (biased to the read, so a session
    /// woken by its client's bytes does not poll its wake-ups first).
    pub async fn fill<W>(
        &mut self,
        limits: ReadLimits,
        wake: Pin<&mut W>,
    ) -> Result<Filled, ReadError>
    where
        W: Future<Output = ()> + ?Sized,
    {
        if self.buf.len() > limits.max_request_bytes {
            return Err(ReadError::TooLarge(limits.max_request_bytes));
        }
        // Shrunk (a burst's big buffer, now empty, let go) before it is charged: charged
        // first, an idle session kept the burst's capacity on the budget until its next read,
        // and other clients were refused meanwhile (found by a reviewer).
        self.room.prepare(&mut self.buf);
        self.charge.hold(self.buf.capacity())?;
        self.partial_since = match (self.buf.is_empty(), self.partial_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        let deadline = self
            .partial_since
            .map(|since| since + limits.partial_request_timeout);
        tokio::select! {
            biased;
            read = self.io.read_buf(&mut self.buf) => match read {
                Ok(0) => Ok(Filled::Eof),
                Ok(n) => {
                    self.room.record(n);
                    self.charge.hold(self.buf.capacity())?;
                    Ok(Filled::Data)
                }
                // Most clients close without a TLS close_notify; that is an ordinary close.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Filled::Eof),
                Err(e) => Err(ReadError::Io(e)),
            },
            _ = sleep_until(deadline) => Err(ReadError::PartialTimeout(limits.partial_request_timeout)),
            _ = wake => Ok(Filled::Woken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn limits(max: usize, partial_ms: u64) -> ReadLimits {
        ReadLimits {
            max_request_bytes: max,
            partial_request_timeout: Duration::from_millis(partial_ms),
        }
    }

    fn budget() -> std::sync::Arc<MemoryBudget> {
        MemoryBudget::new(1 << 30)
    }

    #[tokio::test]
    async fn reads_then_sees_the_end() {
        let (client, mut peer) = tokio::io::duplex(1024);
        let mut r = ClientReader::new(client, budget());
        peer.write_all(b"PING\r\n").await.unwrap();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(
            r.fill(limits(1024, 1000), never.as_mut()).await.unwrap(),
            Filled::Data
        );
        assert_eq!(&r.buf[..], b"PING\r\n");
        r.buf.clear();
        drop(peer);
        assert_eq!(
            r.fill(limits(1024, 1000), never.as_mut()).await.unwrap(),
            Filled::Eof
        );
    }

    #[tokio::test]
    async fn what_is_left_unparsed_is_bounded() {
        let (client, mut peer) = tokio::io::duplex(1024);
        let mut r = ClientReader::new(client, budget());
        peer.write_all(&[b'x'; 100]).await.unwrap();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        r.fill(limits(64, 1000), never.as_mut()).await.unwrap();
        assert!(matches!(
            r.fill(limits(64, 1000), never.as_mut()).await,
            Err(ReadError::TooLarge(64))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_request_times_out_and_an_idle_client_does_not() {
        let (client, mut peer) = tokio::io::duplex(1024);
        let mut r = ClientReader::new(client, budget());
        let mut never = std::pin::pin!(std::future::pending::<()>());
        // Idle with nothing half-sent: no deadline (the paused clock jumps to the wake-up).
        let mut woken = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        assert_eq!(
            r.fill(limits(1024, 100), woken.as_mut()).await.unwrap(),
            Filled::Woken
        );
        peer.write_all(b"*1\r\n$4\r\nPI").await.unwrap();
        r.fill(limits(1024, 100), never.as_mut()).await.unwrap();
        assert!(matches!(
            r.fill(limits(1024, 100), never.as_mut()).await,
            Err(ReadError::PartialTimeout(_))
        ));
    }

    /// A burst's big buffer, once parsed, is let go before the next charge: an idle session
    /// holds nothing of it on the budget while it waits.
    #[tokio::test]
    async fn an_emptied_burst_buffer_is_let_go_before_it_is_charged() {
        let budget = MemoryBudget::new(1 << 30);
        let (client, mut peer) = tokio::io::duplex(8 << 20);
        let mut r = ClientReader::new(client, budget.clone());
        peer.write_all(&vec![b'x'; 4 << 20]).await.unwrap();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        while r.buf.len() < 4 << 20 {
            r.fill(limits(1 << 30, 1000), never.as_mut()).await.unwrap();
        }
        assert!(budget.used() > 0);
        r.buf.clear();
        let mut woken = std::pin::pin!(std::future::ready(()));
        assert!(matches!(
            r.fill(limits(1 << 30, 1000), woken.as_mut()).await,
            Ok(Filled::Woken)
        ));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_memory_budget_applies_to_the_read_buffer() {
        let (client, mut peer) = tokio::io::duplex(1 << 20);
        // Beyond its free share, a session's buffer is charged: 256 bytes more are allowed.
        let mut r = ClientReader::new(client, MemoryBudget::new(256));
        peer.write_all(&vec![b'x'; 2 * crate::budget::FREE_PER_SESSION])
            .await
            .unwrap();
        let mut never = std::pin::pin!(std::future::pending::<()>());
        let mut outcome = Ok(Filled::Data);
        for _ in 0..64 {
            outcome = r.fill(limits(1 << 30, 1000), never.as_mut()).await;
            if outcome.is_err() {
                break;
            }
        }
        assert!(
            matches!(outcome, Err(ReadError::OverBudget(_))),
            "{outcome:?}"
        );
        // Refused once what it holds (read, or made room for) passes its free share.
        assert!(r.buf.capacity() > crate::budget::FREE_PER_SESSION);
    }
}
