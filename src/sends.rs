//! A TCP stream under a TLS layer (a client's, or a TLS backend's), writing a single buffer
//! with `send(2)`.
//!
//! rustls hands every write over as a vector of TLS records, almost always one, and a TCP
//! stream writes vectors with `writev(2)`: the file layer's path (the iovec copied in, the
//! permission hook) on every reply. `send(2)` goes to the socket layer directly, as the
//! plaintext listeners' writes do. Several records still leave in one `writev`.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A stream (a TCP stream) whose one-buffer vectored writes are plain writes.
#[derive(Debug)]
pub struct Sends<S = TcpStream>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for Sends<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sends<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        match (full.next(), full.next()) {
            (Some(one), None) => Pin::new(&mut self.0).poll_write(cx, one),
            (None, _) => Poll::Ready(Ok(0)),
            _ => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that records which kind of write each call was.
    #[derive(Default)]
    struct Recorder {
        plain: usize,
        vectored: usize,
        data: Vec<u8>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.plain += 1;
            self.data.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored += 1;
            let mut n = 0;
            for b in bufs {
                self.data.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn one_record_is_a_plain_write_and_several_stay_one_vectored_write() {
        let mut sends = Sends(Recorder::default());
        assert!(sends.is_write_vectored());
        // One record, even behind empty slices: a plain write (send(2) on a socket).
        let one = [IoSlice::new(b""), IoSlice::new(b"one;")];
        assert_eq!(sends.write_vectored(&one).await.unwrap(), 4);
        assert_eq!((sends.0.plain, sends.0.vectored), (1, 0));
        // Two: still one vectored write (writev(2)).
        let two = [
            IoSlice::new(b"two;"),
            IoSlice::new(b""),
            IoSlice::new(b"three"),
        ];
        assert_eq!(sends.write_vectored(&two).await.unwrap(), 9);
        assert_eq!((sends.0.plain, sends.0.vectored), (1, 1));
        // Nothing: no write at all.
        assert_eq!(sends.write_vectored(&[IoSlice::new(b"")]).await.unwrap(), 0);
        assert_eq!((sends.0.plain, sends.0.vectored), (1, 1));
        assert_eq!(sends.0.data, b"one;two;three");
    }

    #[tokio::test]
    async fn one_buffer_several_and_none_all_arrive_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let mut client = client.await.unwrap();
        let mut sends = Sends(server);
        let empty: [IoSlice<'_>; 2] = [IoSlice::new(b""), IoSlice::new(b"")];
        assert_eq!(sends.write_vectored(&empty).await.unwrap(), 0);
        let one = [IoSlice::new(b""), IoSlice::new(b"one;")];
        assert_eq!(sends.write_vectored(&one).await.unwrap(), 4);
        let two = [IoSlice::new(b"two;"), IoSlice::new(b"three")];
        assert_eq!(sends.write_vectored(&two).await.unwrap(), 9);
        sends.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"one;two;three");
    }
}
