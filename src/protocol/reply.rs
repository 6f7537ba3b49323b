//! The one place an outcome becomes bytes on the wire: Redis's own error texts (so real clients
//! raise the exceptions they already know) and the re-encoding of commands sent upstream.

use bytes::{BufMut, Bytes, BytesMut};

pub const OK: &[u8] = b"+OK\r\n";
pub const RESET: &[u8] = b"+RESET\r\n";
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
pub const AUTH_WITHOUT_PASSWORD: &[u8] = b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n";
pub const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
pub const SYNTAX: &[u8] = b"-ERR syntax error\r\n";

/// `-ERR <msg>` with CR/LF replaced, as Redis sanitizes error text.
pub fn error(msg: &str) -> Bytes {
    error_with_code(b"ERR ", msg.as_bytes())
}

/// A request cachegate could not carry out (its upstream failed, or its own limits refused):
/// `-ERR cachegate: <why>`, the one form every such failure takes on the wire.
pub fn failure(why: &dyn std::fmt::Display) -> Bytes {
    error(&format!("cachegate: {why}"))
}

/// `-<line>` for errors with their own code (`NOPERM ...`), CR/LF replaced.
pub fn error_line(line: &str) -> Bytes {
    error_with_code(b"", line.as_bytes())
}

/// The one error encoder: `-`, the code, the text with CR/LF turned into spaces (so an error
/// can never inject a second reply), `\r\n`.
fn error_with_code(code: &[u8], text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(code.len() + text.len() + 3);
    out.put_u8(b'-');
    out.put_slice(code);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
    out.freeze()
}

/// `-ERR Protocol error: ...`, sent just before a connection with garbage input is closed.
pub fn protocol_error(err: &super::resp::ProtocolError) -> Bytes {
    error(&format!("Protocol error: {err}"))
}

/// `-ERR wrong number of arguments for '<cmd>' command`, with the name lower-cased as Redis does.
pub fn wrong_arity(name: &[u8]) -> Bytes {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    error(&format!("wrong number of arguments for '{name}' command"))
}

/// Exactly what Redis 7 answers for a command it does not know: the name and the first
/// arguments, each clipped so that the listing stays under 128 bytes.
pub fn unknown_command(args: &[Bytes]) -> Bytes {
    let name = clip(&args[0], 128);
    let mut listed = Vec::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push(b'\'');
        listed.extend_from_slice(clip(arg, room));
        listed.extend_from_slice(b"' ");
    }
    let mut msg = Vec::with_capacity(name.len() + listed.len() + 64);
    msg.extend_from_slice(b"unknown command '");
    msg.extend_from_slice(name);
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&listed);
    error_with_code(b"ERR ", &msg)
}

/// Redis formats with `%.Ns`, which stops at a NUL byte as well as at N bytes.
fn clip(arg: &[u8], max: usize) -> &[u8] {
    let arg = &arg[..arg.len().min(max)];
    match arg.iter().position(|&b| b == 0) {
        Some(nul) => &arg[..nul],
        None => arg,
    }
}

/// A RESP bulk string.
pub fn bulk(s: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(s.len() + 16);
    put_bulk(&mut out, s);
    out.freeze()
}

/// Appends a RESP bulk string.
pub fn put_bulk(out: &mut BytesMut, s: &[u8]) {
    put_header(out, b'$', s.len());
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

/// A RESP array of already-encoded elements.
pub fn array(items: impl IntoIterator<Item = Bytes>) -> Bytes {
    let items: Vec<Bytes> = items.into_iter().collect();
    let mut out = BytesMut::new();
    put_header(&mut out, b'*', items.len());
    for i in items {
        out.put_slice(&i);
    }
    out.freeze()
}

/// Appends a command as a RESP multibulk array. Everything cachegate sends upstream goes through
/// here, so the upstream only ever sees frames cachegate built itself.
pub fn encode_command<'a>(out: &mut BytesMut, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    put_header(out, b'*', args.len());
    for arg in args {
        put_header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    out.put_slice(itoa(n, &mut [0u8; 20]));
    out.put_slice(b"\r\n");
}

fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_matches_redis() {
        let args = [
            Bytes::from_static(b"FLUSHALL"),
            Bytes::from_static(b"ASYNC"),
        ];
        assert_eq!(
            &unknown_command(&args)[..],
            b"-ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' \r\n"
        );
        let none = [Bytes::from_static(b"keys")];
        assert_eq!(
            &unknown_command(&none)[..],
            b"-ERR unknown command 'keys', with args beginning with: \r\n"
        );
    }

    #[test]
    fn errors_cannot_inject_lines() {
        assert_eq!(&error("a\r\n+OK")[..], b"-ERR a  +OK\r\n");
    }

    #[test]
    fn encodes_multibulk() {
        let mut out = BytesMut::new();
        encode_command(&mut out, [&b"SET"[..], b"k", b""].into_iter());
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
