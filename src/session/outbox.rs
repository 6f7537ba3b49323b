//! Replies on their way to a client: small ones gathered into one buffer, big ones (bulk
//! payloads) kept as the buffers they arrived in and written vectored, so that a value is
//! copied only by TLS's own encryption (or not at all on a plaintext listener).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Replies at least this long are written from their own buffer instead of being copied.
pub const ZERO_COPY_MIN: usize = 4 * 1024;
/// Buffers handed to one vectored write at most.
const MAX_SLICES: usize = 32;

#[derive(Default)]
pub struct Outbox {
    /// Written first, in order: gathered small replies and big ones as they came.
    parts: VecDeque<Bytes>,
    /// Small replies after the last part.
    tail: BytesMut,
    len: usize,
}

impl Outbox {
    /// Queues a reply: copied when small, kept as is when big.
    pub fn push(&mut self, reply: Bytes) {
        if reply.len() < ZERO_COPY_MIN {
            self.extend_from_slice(&reply);
            return;
        }
        if !self.tail.is_empty() {
            self.parts.push_back(self.tail.split().freeze());
        }
        self.len += reply.len();
        self.parts.push_back(reply);
    }

    /// Queues bytes by copying them.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes everything queued, then flushes.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.parts.is_empty() {
            // The common case, small replies only: one plain write.
            w.write_all(&self.tail).await?;
        } else {
            if !self.tail.is_empty() {
                self.parts.push_back(self.tail.split().freeze());
            }
            while !self.parts.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, part) in slices.iter_mut().zip(&self.parts) {
                    *slot = IoSlice::new(part);
                    count += 1;
                }
                let mut written = w.write_vectored(&slices[..count]).await?;
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                while written > 0 {
                    let Some(front) = self.parts.front_mut() else {
                        break;
                    };
                    let n = written.min(front.len());
                    front.advance(n);
                    written -= n;
                    if front.is_empty() {
                        self.parts.pop_front();
                    }
                }
            }
        }
        self.tail.clear();
        self.len = 0;
        w.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call and counts vectored calls.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
        vectored: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.got.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.vectored += 1;
            let mut left = self.chunk;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn big_replies_are_not_copied_and_order_is_kept_across_partial_writes() {
        let big = Bytes::from(vec![b'v'; 3 * ZERO_COPY_MIN]);
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"+OK\r\n"));
        out.push(big.clone());
        out.extend_from_slice(b":1\r\n");
        out.push(big.clone());
        // The big replies are queued as the same buffers, not copies.
        assert!(out
            .parts
            .iter()
            .filter(|p| p.len() == big.len())
            .all(|p| p.as_ptr() == big.as_ptr()));
        let mut want = b"+OK\r\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b":1\r\n");
        want.extend_from_slice(&big);
        assert_eq!(out.len(), want.len());
        let mut w = Trickle {
            got: Vec::new(),
            chunk: 1000,
            vectored: 0,
        };
        out.write_to(&mut w).await.unwrap();
        assert_eq!(w.got, want);
        assert!(w.vectored > 0);
        assert!(out.is_empty());
        // Small replies only: one plain write, no vectored call.
        out.push(Bytes::from_static(b"+PONG\r\n"));
        let vectored = w.vectored;
        out.write_to(&mut w).await.unwrap();
        assert_eq!(w.vectored, vectored);
        assert!(w.got.ends_with(b"+PONG\r\n"));
    }
}
