//! The PROXY protocol (v1 text, v2 binary) header a load balancer puts in front of a
//! connection, read off the stream exactly (nothing after it is consumed: the client's TLS
//! ClientHello or first command follows) and parsed with the `ppp` crate.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A v1 line is at most 107 bytes (the spec's limit).
const V1_MAX: usize = 107;
/// The v2 signature's first six bytes, enough to tell it from v1's `PROXY `.
const V2_START: &[u8] = b"\r\n\r\n\0\r";

/// Why a header was refused: a bounded set, for the rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("connection closed while reading the PROXY protocol header")]
    Closed,
}

/// Reads the header and returns the client's address, or `None` for a header that carries
/// none (`PROXY UNKNOWN`, a v2 `LOCAL`: the balancer's own health checks).
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, HeaderError> {
    let mut head = [0u8; 6];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|_| HeaderError::Closed)?;
    if &head == b"PROXY " {
        // v1: up to CRLF, byte by byte so as not to read past it (once per connection).
        let mut line = head.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(HeaderError::Malformed);
            }
            line.push(stream.read_u8().await.map_err(|_| HeaderError::Closed)?);
        }
        let text = std::str::from_utf8(&line).map_err(|_| HeaderError::Malformed)?;
        let header = ppp::v1::Header::try_from(text).map_err(|_| HeaderError::Malformed)?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if head != V2_START {
        return Err(HeaderError::Missing);
    }
    // v2: the rest of the 16-byte fixed part, then as many bytes as it says.
    let mut fixed = [0u8; 16];
    fixed[..6].copy_from_slice(&head);
    stream
        .read_exact(&mut fixed[6..])
        .await
        .map_err(|_| HeaderError::Closed)?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut whole = fixed.to_vec();
    whole.resize(16 + len, 0);
    stream
        .read_exact(&mut whole[16..])
        .await
        .map_err(|_| HeaderError::Closed)?;
    let header = ppp::v2::Header::try_from(&whole[..]).map_err(|_| HeaderError::Malformed)?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let mut input = bytes;
        let result = read(&mut input).await;
        (result, input.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_leave_what_follows() {
        let (r, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 6380\r\n\x16\x03\x01").await;
        assert_eq!(r, Ok(Some("192.0.2.7:51000".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 6380\r\nPING\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:51000".parse().unwrap())));
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r, Ok(None));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.4:40000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:6380".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut wire = v2.clone();
        wire.extend_from_slice(b"PING\r\n");
        let (r, rest) = parse(&wire).await;
        assert_eq!(r, Ok(Some("198.51.100.4:40000".parse().unwrap())));
        assert_eq!(rest, b"PING\r\n");
    }

    #[tokio::test]
    async fn garbage_is_refused_with_a_reason() {
        assert_eq!(
            parse(b"PING\r\nPING\r\n").await.0,
            Err(HeaderError::Missing)
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01").await.0,
            Err(HeaderError::Missing)
        );
        assert_eq!(
            parse(b"PROXY TCP4 nonsense\r\n").await.0,
            Err(HeaderError::Malformed)
        );
        let long = format!("PROXY {}", "9".repeat(200));
        assert_eq!(parse(long.as_bytes()).await.0, Err(HeaderError::Malformed));
        assert_eq!(parse(b"PROX").await.0, Err(HeaderError::Closed));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00").await.0,
            Err(HeaderError::Closed)
        );
    }
}
