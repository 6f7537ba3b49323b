//! RESP framing with limits.
//!
//! Requests: a Redis server accepts only two request shapes, multibulk arrays of bulk strings and
//! inline lines, and answers everything else with a specific `Protocol error`. This module parses
//! exactly those shapes the way Redis does (same limits, same error texts) and bounds every
//! declared length before a byte of it is buffered, and reads lengths as strictly as Redis does.
//! The result is a list of argument slices, plus the multibulk exactly as received: that is then
//! byte for byte the canonical encoding of the arguments (a property test holds it to that), so
//! a session may forward it instead of encoding the arguments again with
//! `reply::encode_command`. Only what was parsed ever reaches the upstream.
//!
//! Replies: the upstream's frames are delimited by [`ReplyScanner`], header by header with a
//! counter instead of recursion and without building values, so cachegate knows where each
//! reply ends (of any shape and any nesting depth) and never forwards half of one.

pub use crate::error::{ProtocolError, ReplyError};
use bytes::{Buf, Bytes, BytesMut};

/// Redis's own cap on an inline request or a header line without `\r\n` (PROTO_INLINE_MAX_SIZE).
pub const DEFAULT_MAX_INLINE: usize = 64 * 1024;
/// Redis's default `proto-max-bulk-len`.
pub const DEFAULT_MAX_BULK: usize = 512 * 1024 * 1024;
/// Largest argument count accepted in one command.
pub const DEFAULT_MAX_MULTIBULK: usize = 1024 * 1024;
/// Before AUTH, Redis accepts at most 10 arguments and 16 KiB per argument; so does cachegate.
pub const UNAUTHENTICATED_MAX_MULTIBULK: usize = 10;
pub const UNAUTHENTICATED_MAX_BULK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_inline: usize,
    pub max_bulk: usize,
    pub max_multibulk: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_inline: DEFAULT_MAX_INLINE,
            max_bulk: DEFAULT_MAX_BULK,
            max_multibulk: DEFAULT_MAX_MULTIBULK,
        }
    }
}

/// One parsed command: the name and its arguments, as slices of the frozen read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Most commands have three arguments or fewer: those need no allocation.
    pub args: Args,
    /// The request exactly as the client sent it, when that is a multibulk: forwarded as is
    /// while `args` is unchanged, instead of being encoded again.
    pub raw: Option<Bytes>,
}

/// A request's arguments, name first.
pub type Args = smallvec::SmallVec<[Bytes; 3]>;

impl Request {
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }
}

/// Takes the next complete request off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed (and nothing was consumed); `Err` means the input is
/// garbage and the connection should be answered and closed. Empty commands (`*0`, blank inline
/// lines) are consumed and skipped, as Redis does.
pub fn next_request(
    buf: &mut BytesMut,
    limits: &RequestLimits,
    authenticated: bool,
) -> Result<Option<Request>, ProtocolError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let parsed = if buf[0] == b'*' {
            scan_multibulk(buf, limits, authenticated)?
        } else {
            scan_inline(buf, limits)?
        };
        match parsed {
            Scan::Incomplete => return Ok(None),
            Scan::Empty(consumed) => buf.advance(consumed),
            Scan::Multibulk { consumed, ranges } => {
                let frame = buf.split_to(consumed).freeze();
                let args = ranges.into_iter().map(|(s, e)| frame.slice(s..e)).collect();
                return Ok(Some(Request {
                    args,
                    raw: Some(frame),
                }));
            }
            Scan::Inline { consumed, args } => {
                buf.advance(consumed);
                return Ok(Some(Request { args, raw: None }));
            }
        }
    }
}

enum Scan {
    Incomplete,
    Empty(usize),
    Multibulk {
        consumed: usize,
        ranges: smallvec::SmallVec<[(usize, usize); 3]>,
    },
    Inline {
        consumed: usize,
        args: Args,
    },
}

/// Finds `\r\n` at or after `from`; returns the index of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let cr = at + memchr::memchr(b'\r', buf.get(at..)?)?;
        if buf.get(cr + 1) == Some(&b'\n') {
            return Some(cr);
        }
        at = cr + 1;
    }
}

/// A length or count as Redis reads one (`string2ll`): an optional `-`, then digits with no
/// leading zero (`0` alone is fine), nothing else. Requests are forwarded as the client encoded
/// them, so anything Redis would refuse, and that would cost a shared connection, is refused
/// here first.
fn parse_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] if digits.len() <= 19 => {}
        _ => return None,
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// A header's number and where its `\r\n` starts, read in one pass when the number is plain
/// (digits, no leading zero, at most 18 of them) and its `\r\n` is there: every request a
/// client library writes. `None` leaves the line to `find_crlf` and `parse_int`, which then
/// decide alike (the first `\r\n` is right after the digits, and the value is the same).
#[inline]
fn plain_header(buf: &[u8], from: usize) -> Option<(i64, usize)> {
    let line = buf.get(from..)?;
    let mut value: i64 = 0;
    let mut n = 0;
    for &b in line.iter().take(18) {
        if !b.is_ascii_digit() {
            break;
        }
        value = value * 10 + i64::from(b - b'0');
        n += 1;
    }
    if n == 0 || (n > 1 && line[0] == b'0') || line.get(n..n + 2) != Some(b"\r\n") {
        return None;
    }
    Some((value, from + n))
}

fn scan_multibulk(
    buf: &[u8],
    limits: &RequestLimits,
    authenticated: bool,
) -> Result<Scan, ProtocolError> {
    let (count, eol) = match plain_header(buf, 1) {
        Some(header) => header,
        None => {
            let Some(eol) = find_crlf(buf, 1) else {
                if buf.len() > limits.max_inline {
                    return Err(ProtocolError::TooBigMultibulkCount);
                }
                return Ok(Scan::Incomplete);
            };
            let count = parse_int(&buf[1..eol]).ok_or(ProtocolError::InvalidMultibulkLength)?;
            (count, eol)
        }
    };
    let mut pos = eol + 2;
    if count <= 0 {
        return Ok(Scan::Empty(pos));
    }
    let count = count as u64;
    if count > limits.max_multibulk as u64 {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    if !authenticated && count > UNAUTHENTICATED_MAX_MULTIBULK as u64 {
        return Err(ProtocolError::UnauthenticatedMultibulkLength);
    }
    // The count is bounded above, but a client could still declare a million arguments and send
    // none: grow the range list with the arguments actually present, not with the declaration.
    let mut ranges = smallvec::SmallVec::new();
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(Scan::Incomplete);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError::ExpectedBulk(buf[pos]));
        }
        let (len, eol) = match plain_header(buf, pos + 1) {
            Some(header) => header,
            None => {
                let Some(eol) = find_crlf(buf, pos + 1) else {
                    if buf.len() - pos > limits.max_inline {
                        return Err(ProtocolError::TooBigBulkCount);
                    }
                    return Ok(Scan::Incomplete);
                };
                let len = parse_int(&buf[pos + 1..eol]).ok_or(ProtocolError::InvalidBulkLength)?;
                (len, eol)
            }
        };
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return Err(ProtocolError::InvalidBulkLength);
        }
        if !authenticated && len as u64 > UNAUTHENTICATED_MAX_BULK as u64 {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        let start = eol + 2;
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(Scan::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        ranges.push((start, end));
        pos = end + 2;
    }
    Ok(Scan::Multibulk {
        consumed: pos,
        ranges,
    })
}

fn scan_inline(buf: &[u8], limits: &RequestLimits) -> Result<Scan, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(Scan::Incomplete);
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::TooBigInline);
    }
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    if memchr::memchr(0, line).is_some() {
        return Err(ProtocolError::InlineNul);
    }
    let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
    if args.is_empty() {
        return Ok(Scan::Empty(nl + 1));
    }
    Ok(Scan::Inline {
        consumed: nl + 1,
        args: args.into_iter().map(Bytes::from).collect(),
    })
}

/// C's `isspace` in the "C" locale, as `sdssplitargs` uses it between words and after a
/// closing quote (Rust's `is_ascii_whitespace` leaves out the vertical tab).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Splits an inline command line as Redis's `sdssplitargs` does, step for step: words
/// separated by C's `isspace`, an unquoted word ending only at a space, `\t`, `\r`, `\n` or
/// NUL; "double quotes" with C-like escapes (`\n`, `\xHH`, ...) and 'single quotes' with
/// `\'`, each of which may open in the middle of a word (`a"b c"` is `ab c`) and must close
/// before whitespace or the end of the line. The line is read as the C string Redis reads: a
/// NUL ends it (inside quotes, unbalanced). `None`: unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // The byte at `i`, NUL past the end, as a C string reads.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while at(i) != 0 && is_space(at(i)) {
            i += 1;
        }
        if at(i) == 0 {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(i);
            if in_double {
                match c {
                    b'\\'
                        if at(i + 1) == b'x'
                            && at(i + 2).is_ascii_hexdigit()
                            && at(i + 3).is_ascii_hexdigit() =>
                    {
                        let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                        cur.push(hex(at(i + 2)) * 16 + hex(at(i + 3)));
                        i += 3;
                    }
                    b'\\' if at(i + 1) != 0 => {
                        i += 1;
                        cur.push(match at(i) {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    b'"' if at(i + 1) != 0 && !is_space(at(i + 1)) => return None,
                    b'"' => {
                        i += 1;
                        break;
                    }
                    0 => return None,
                    other => cur.push(other),
                }
            } else if in_single {
                match c {
                    b'\\' if at(i + 1) == b'\'' => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    b'\'' if at(i + 1) != 0 && !is_space(at(i + 1)) => return None,
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    0 => return None,
                    other => cur.push(other),
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => cur.push(other),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

/// What kind of reply frame was delimited; enough for the session to route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An out-of-band RESP3 push (pub/sub message, invalidation).
    Push,
    Error,
    Other,
}

/// Delimits the next complete reply frame at the front of `buf`: its length and kind, or `None`
/// when more bytes are needed.
pub fn next_reply_len(
    buf: &[u8],
    max_reply: usize,
) -> Result<Option<(usize, ReplyKind)>, ReplyError> {
    ReplyScanner::default().next(buf, max_reply)
}

/// The room to make before reading more of a reply at the front of `buf`: the rest of a bulk
/// string whose header has arrived (so that a big value is read into a buffer of its size, not
/// one grown and copied as it arrives), else `min`. Call only after the reply was found
/// incomplete and within the reply limit.
pub fn rest_of_bulk(buf: &[u8], min: usize) -> usize {
    if buf.first() != Some(&b'$') {
        return min;
    }
    let Some(eol) = find_crlf(buf, 1) else {
        return min;
    };
    match parse_int(&buf[1..eol]) {
        Some(len) if len >= 0 => (eol + 2 + len as usize + 2)
            .saturating_sub(buf.len())
            .max(min),
        _ => min,
    }
}

/// Delimits upstream replies one after another, without recursion and without building a
/// value: a frame is walked header by header with one counter of the elements still due
/// (an aggregate of n adds n, a map 2n, an attribute 2n before the frame it annotates), so
/// nesting of any depth costs no stack, and any legal shape (sets of maps, attributes, big
/// numbers, verbatim strings, RESP2 and RESP3 nulls, nested pushes) is delimited alike.
///
/// It also resumes where the last incomplete attempt stopped: a large reply (LRANGE, HGETALL,
/// SCAN, pub/sub batches) is delimited as it arrives instead of again from its start on every
/// read, which would cost time quadratic in its size.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Inside an unfinished frame: where it was left.
    progress: Option<Progress>,
    /// Reading a frame only to drop it: a blob's body is passed by its declared length before
    /// it has arrived, so that the caller can drop it as it comes (`scanned`, `dropped`).
    passing: bool,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Bytes of the frame delimited so far.
    pos: usize,
    /// Elements (frames) still due, the frame's own unfinished slot included.
    due: u64,
    /// The kind of the frame, once its own header (not an attribute's) was seen.
    kind: Option<ReplyKind>,
}

impl ReplyScanner {
    /// Bytes of the unfinished frame delimited so far. They may run past what the buffer
    /// holds: a blob string's body is passed over by its declared length.
    pub fn scanned(&self) -> usize {
        self.progress.map_or(0, |p| p.pos)
    }

    /// The caller dropped `n` bytes (at most `scanned()`) from the front of the buffer: the
    /// unfinished frame goes on from there (a frame being read only to be discarded).
    pub fn dropped(&mut self, n: usize) {
        if let Some(p) = &mut self.progress {
            p.pos -= n.min(p.pos);
        }
    }

    /// Frames from now on are read only to be dropped (or no longer).
    pub fn pass_blobs(&mut self, on: bool) {
        self.passing = on;
    }

    /// The next complete reply at the front of `buf` (which must hold the same bytes as on the
    /// previous call, plus more), or `None` when more bytes are needed.
    pub fn next(
        &mut self,
        buf: &[u8],
        max_reply: usize,
    ) -> Result<Option<(usize, ReplyKind)>, ReplyError> {
        let mut p = self.progress.take().unwrap_or(Progress {
            pos: 0,
            due: 1,
            kind: None,
        });
        while p.due > 0 {
            // Every element needs at least 3 bytes: a count that could never fit is refused
            // now instead of after waiting for max_reply bytes.
            if p.due > (max_reply / 3) as u64 {
                return Err(ReplyError::TooLarge(max_reply));
            }
            let Some(&ty) = buf.get(p.pos) else {
                self.progress = Some(p);
                return Ok(None);
            };
            let Some(eol) = find_crlf(buf, p.pos + 1) else {
                self.progress = Some(p);
                return too_large_or_incomplete(buf, max_reply);
            };
            let line = &buf[p.pos + 1..eol];
            let header_end = eol + 2;
            // The frame's own header: its kind decides how the frame is routed.
            let top = p.due == 1 && p.kind.is_none() && ty != b'|';
            if top {
                p.kind = Some(match ty {
                    b'>' => ReplyKind::Push,
                    b'-' | b'!' => ReplyKind::Error,
                    _ => ReplyKind::Other,
                });
            }
            match ty {
                // Lines: simple string, error, integer, null, double, boolean, big number.
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    p.pos = header_end;
                    p.due -= 1;
                }
                // Blob string, blob error, verbatim string. `$-1` is RESP2's null.
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or(ReplyError::Malformed("bad blob length"))?;
                    if len == -1 && ty == b'$' {
                        p.pos = header_end;
                        p.due -= 1;
                        continue;
                    }
                    let len = usize::try_from(len)
                        .map_err(|_| ReplyError::Malformed("bad blob length"))?;
                    let end = header_end
                        .checked_add(len)
                        .and_then(|e| e.checked_add(2))
                        .filter(|&e| e <= max_reply)
                        .ok_or(ReplyError::TooLarge(max_reply))?;
                    if buf.len() < end && self.passing {
                        // Dropped as it comes: its body (and CRLF) passed by length.
                        p.pos = end;
                        p.due -= 1;
                        continue;
                    }
                    if buf.len() < end {
                        // Resume at this header: it is cheap to read again.
                        self.progress = Some(Progress {
                            kind: if top { None } else { p.kind },
                            ..p
                        });
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(ReplyError::Malformed("blob not terminated by CRLF"));
                    }
                    p.pos = end;
                    p.due -= 1;
                }
                // Array, set, push, map; `*-1` is RESP2's null array. An attribute adds its
                // pairs in front of the frame it annotates, which stays due.
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let count =
                        parse_int(line).ok_or(ReplyError::Malformed("bad aggregate length"))?;
                    p.pos = header_end;
                    if count == -1 && ty == b'*' {
                        p.due -= 1;
                        continue;
                    }
                    let count = u64::try_from(count)
                        .map_err(|_| ReplyError::Malformed("bad aggregate length"))?;
                    let elements = if matches!(ty, b'%' | b'|') {
                        count.saturating_mul(2)
                    } else {
                        count
                    };
                    if ty != b'|' {
                        p.due -= 1;
                    }
                    p.due = p.due.saturating_add(elements);
                }
                // Streamed strings and aggregates (`$?`, `*?`) are RESP3's, but Redis never
                // sends them; anything else is not RESP at all.
                _ => return Err(ReplyError::Malformed("unknown frame type")),
            }
        }
        if p.pos > max_reply {
            return Err(ReplyError::TooLarge(max_reply));
        }
        if p.pos > buf.len() {
            // A passed blob's body is still to come: the frame ends there.
            self.progress = Some(p);
            return Ok(None);
        }
        Ok(Some((p.pos, p.kind.unwrap_or(ReplyKind::Other))))
    }
}

fn too_large_or_incomplete(
    buf: &[u8],
    max_reply: usize,
) -> Result<Option<(usize, ReplyKind)>, ReplyError> {
    if buf.len() > max_reply {
        Err(ReplyError::TooLarge(max_reply))
    } else {
        Ok(None)
    }
}

/// Delimits one complete RESP2 or RESP3 frame, of any size: its length and kind, or `None` if
/// incomplete.
pub fn frame_len(buf: &[u8]) -> Result<Option<(usize, ReplyKind)>, ReplyError> {
    next_reply_len(buf, usize::MAX)
}

/// An array (or set) reply's elements, each a whole frame; `None` if `reply` is not one, or
/// is incomplete.
pub fn elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    let header_end = memchr::memchr(b'\n', reply)?;
    if !matches!(reply.first(), Some(b'*' | b'~')) {
        return None;
    }
    let count: i64 = std::str::from_utf8(&reply[1..header_end - 1])
        .ok()?
        .parse()
        .ok()?;
    let mut rest = reply.slice(header_end + 1..);
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let (len, _) = frame_len(&rest).ok()??;
        out.push(rest.split_to(len));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8], authed: bool) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = next_request(&mut buf, &RequestLimits::default(), authed)? {
            out.push(req.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        crate::protocol::reply::encode_command(&mut out, args.iter().map(|a| &a[..]));
        out.to_vec()
    }

    #[test]
    fn multibulk_and_inline() {
        let got = parse_all(
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a \"b c\\x41\"\r\nPING\n",
            true,
        );
        assert_eq!(
            got.unwrap(),
            vec![
                vec![b"GET".to_vec(), b"k".to_vec()],
                vec![b"SET".to_vec(), b"a".to_vec(), b"b cA".to_vec()],
                vec![b"PING".to_vec()],
            ]
        );
    }

    #[test]
    fn empty_commands_are_skipped() {
        assert_eq!(
            parse_all(b"*0\r\n\r\n   \r\n*-1\r\n", true).unwrap().len(),
            0
        );
    }

    #[test]
    fn redis_error_texts() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (
                b"*1\r\n$3\r\nabcde\r\n",
                "bulk string not terminated by CRLF",
            ),
            (b"SET a \"b\r\n", "unbalanced quotes in request"),
            (b"SET a 'b'c\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let err = parse_all(input, true).unwrap_err();
            assert_eq!(err.to_string(), *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn lengths_are_bounded_before_buffering() {
        let limits = RequestLimits {
            max_inline: 16,
            max_bulk: 10,
            max_multibulk: 3,
        };
        let run = |input: &[u8], authed| next_request(&mut BytesMut::from(input), &limits, authed);
        assert_eq!(
            run(b"*4\r\n", true),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            run(b"*1\r\n$11\r\n", true),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            run(b"*1\r\n$999999999999\r\n", true),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(run(&[b'a'; 17], true), Err(ProtocolError::TooBigInline));
        assert_eq!(
            run(b"*11111111111111111", true),
            Err(ProtocolError::TooBigMultibulkCount)
        );
        // A 512 MB declaration is rejected at once, not buffered.
        let big = RequestLimits::default();
        let r = next_request(
            &mut BytesMut::from(&b"*1\r\n$536870913\r\n"[..]),
            &big,
            true,
        );
        assert_eq!(r, Err(ProtocolError::InvalidBulkLength));
    }

    #[test]
    fn unauthenticated_clients_get_small_limits() {
        let many = encode(&vec![b"x".to_vec(); 11]);
        assert_eq!(
            parse_all(&many, false),
            Err(ProtocolError::UnauthenticatedMultibulkLength)
        );
        assert_eq!(parse_all(&many, true).unwrap().len(), 1);
        let big = encode(&[b"AUTH".to_vec(), vec![b'a'; 16 * 1024 + 1]]);
        assert_eq!(
            parse_all(&big, false),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
    }

    #[test]
    fn reply_lengths() {
        assert_eq!(
            next_reply_len(b"+OK\r\n", 100).unwrap(),
            Some((5, ReplyKind::Other))
        );
        assert_eq!(
            next_reply_len(b"-ERR x\r\n", 100).unwrap(),
            Some((8, ReplyKind::Error))
        );
        assert_eq!(next_reply_len(b"$5\r\nhel", 100).unwrap(), None);
        assert_eq!(
            next_reply_len(b"$-1\r\n", 100).unwrap(),
            Some((5, ReplyKind::Other))
        );
        let push = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n";
        assert_eq!(
            next_reply_len(push, 100).unwrap(),
            Some((push.len(), ReplyKind::Push))
        );
        assert!(matches!(
            next_reply_len(b"$1000\r\n", 100),
            Err(ReplyError::TooLarge(100))
        ));
        assert!(next_reply_len(b"@@@\r\n", 100).is_err());
        // RESP2 nulls, top level and nested, and RESP3 types nested in RESP2 ones.
        let mget = b"*2\r\n$1\r\na\r\n$-1\r\n";
        assert_eq!(
            next_reply_len(mget, 100).unwrap(),
            Some((mget.len(), ReplyKind::Other))
        );
        assert_eq!(
            next_reply_len(b"*-1\r\n", 100).unwrap(),
            Some((5, ReplyKind::Other))
        );
        let mixed = b"*2\r\n%1\r\n+a\r\n_\r\n,1.5\r\n";
        assert_eq!(
            next_reply_len(mixed, 100).unwrap(),
            Some((mixed.len(), ReplyKind::Other))
        );
        assert_eq!(
            next_reply_len(&mixed[..mixed.len() - 1], 100).unwrap(),
            None
        );
    }

    /// Nesting 10,000 deep of every aggregate type: delimited without recursion, whole, and
    /// incomplete at every cut short of the end.
    #[test]
    fn deep_nesting_costs_no_stack() {
        for (open, kind) in [
            (&b"*1\r\n"[..], ReplyKind::Other),
            (b"~1\r\n", ReplyKind::Other),
            (b">1\r\n", ReplyKind::Push),
            (b"%1\r\n+k\r\n", ReplyKind::Other),
            (b"|1\r\n+a\r\n:1\r\n*1\r\n", ReplyKind::Other),
        ] {
            let mut frame = open.repeat(10_000);
            frame.extend_from_slice(b"$1\r\nx\r\n");
            assert_eq!(frame_len(&frame).unwrap(), Some((frame.len(), kind)));
            assert_eq!(frame_len(&frame[..frame.len() - 1]).unwrap(), None);
            let mut scanner = ReplyScanner::default();
            for cut in (0..frame.len()).step_by(997) {
                assert_eq!(scanner.next(&frame[..cut], usize::MAX).unwrap(), None);
            }
            assert_eq!(
                scanner.next(&frame, usize::MAX).unwrap(),
                Some((frame.len(), kind))
            );
        }
        // What a Lua script returning a table that holds itself sends.
        let mut recursive = b"*1\r\n".repeat(100_000);
        recursive.extend_from_slice(b"*0\r\n");
        assert_eq!(
            frame_len(&recursive).unwrap(),
            Some((recursive.len(), ReplyKind::Other))
        );
    }

    /// Every reply shape Redis 7 sends, RESP2 and RESP3, alone and nested in each other.
    #[test]
    fn every_reply_shape() {
        let shapes: &[(&[u8], ReplyKind)] = &[
            (b"+OK\r\n", ReplyKind::Other),
            (b"-ERR no\r\n", ReplyKind::Error),
            (b":-12\r\n", ReplyKind::Other),
            (b"$0\r\n\r\n", ReplyKind::Other),
            (b"$-1\r\n", ReplyKind::Other),
            (b"*-1\r\n", ReplyKind::Other),
            (b"*0\r\n", ReplyKind::Other),
            (b"_\r\n", ReplyKind::Other),
            (b",3.14\r\n", ReplyKind::Other),
            (b",inf\r\n", ReplyKind::Other),
            (b"#t\r\n", ReplyKind::Other),
            (
                b"(3492890328409238509324850943850943825024385\r\n",
                ReplyKind::Other,
            ),
            (b"!21\r\nSYNTAX invalid syntax\r\n", ReplyKind::Error),
            (b"=15\r\ntxt:Some string\r\n", ReplyKind::Other),
            (b"%0\r\n", ReplyKind::Other),
            (b"~0\r\n", ReplyKind::Other),
            (b">0\r\n", ReplyKind::Push),
            // COMMAND's RESP3 reply: sets of maps (redis-protocol refuses these).
            (
                b"~2\r\n%1\r\n+a\r\n:1\r\n%1\r\n+b\r\n~1\r\n+c\r\n",
                ReplyKind::Other,
            ),
            // An attribute before a reply, and inside one.
            (b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", ReplyKind::Other),
            (b"|1\r\n+a\r\n_\r\n-ERR x\r\n", ReplyKind::Error),
            (b"*2\r\n|1\r\n+a\r\n_\r\n:1\r\n:2\r\n", ReplyKind::Other),
            // A map with maps as keys, a push holding a push.
            (b"%1\r\n%1\r\n+k\r\n+v\r\n*1\r\n_\r\n", ReplyKind::Other),
            (b">2\r\n+message\r\n>1\r\n+x\r\n", ReplyKind::Push),
        ];
        for (frame, kind) in shapes {
            assert_eq!(
                frame_len(frame).unwrap(),
                Some((frame.len(), *kind)),
                "{}",
                String::from_utf8_lossy(frame)
            );
            for cut in 0..frame.len() {
                assert_eq!(frame_len(&frame[..cut]).unwrap(), None);
            }
        }
        for bad in [
            &b"$?\r\n;1\r\nx\r\n;0\r\n"[..],
            b"*?\r\n",
            b"$-2\r\n",
            b"%-1\r\n",
            b"$1\r\nxy\r\n",
            b"@1\r\n",
        ] {
            assert!(frame_len(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn impossible_counts_fail_at_once() {
        assert_eq!(
            next_reply_len(b"*1000000\r\n", 1000),
            Err(ReplyError::TooLarge(1000))
        );
        assert_eq!(
            next_reply_len(b"%9223372036854775807\r\n", usize::MAX),
            Err(ReplyError::TooLarge(usize::MAX))
        );
    }

    /// A RESP3 value of any shape, encoded.
    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            "[a-z]{0,8}".prop_map(|t| format!("+{t}\r\n").into_bytes()),
            "[a-z]{0,8}".prop_map(|t| format!("-ERR {t}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(|v| {
                let mut f = format!("${}\r\n", v.len()).into_bytes();
                f.extend(v);
                f.extend(b"\r\n");
                f
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b",1.5\r\n".to_vec()),
            Just(b"#f\r\n".to_vec()),
            Just(b"(12345678901234567890\r\n".to_vec()),
            Just(b"=7\r\ntxt:abc\r\n".to_vec()),
            Just(b"!3\r\nERR\r\n".to_vec()),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                (
                    prop::sample::select(vec![b'*', b'~', b'>']),
                    prop::collection::vec(inner.clone(), 0..6)
                )
                    .prop_map(|(t, els)| {
                        let mut f = format!("{}{}\r\n", t as char, els.len()).into_bytes();
                        els.into_iter().for_each(|e| f.extend(e));
                        f
                    }),
                prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(|pairs| {
                    let mut f = format!("%{}\r\n", pairs.len()).into_bytes();
                    for (k, v) in pairs {
                        f.extend(k);
                        f.extend(v);
                    }
                    f
                }),
                (
                    prop::collection::vec((inner.clone(), inner.clone()), 1..3),
                    inner
                )
                    .prop_map(|(pairs, value)| {
                        let mut f = format!("|{}\r\n", pairs.len()).into_bytes();
                        for (k, v) in pairs {
                            f.extend(k);
                            f.extend(v);
                        }
                        f.extend(value);
                        f
                    }),
            ]
        })
    }

    fn arb_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)
    }

    #[test]
    fn rest_of_bulk_is_what_the_value_still_needs() {
        // Header 9 bytes, value and CRLF 100,002, 12 bytes here.
        assert_eq!(rest_of_bulk(b"$100000\r\nabc", 4096), 100_011 - 12);
        assert_eq!(rest_of_bulk(b"$10\r\nabc", 4096), 4096);
        assert_eq!(rest_of_bulk(b"$100000", 4096), 4096);
        assert_eq!(rest_of_bulk(b"*2\r\n", 4096), 4096);
        assert_eq!(rest_of_bulk(b"$-1\r", 4096), 4096);
        assert_eq!(rest_of_bulk(b"", 4096), 4096);
    }

    #[test]
    fn numbers_are_read_as_redis_reads_them() {
        for (text, want) in [
            (&b"0"[..], Some(0)),
            (b"7", Some(7)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"03", None),
            (b"+3", None),
            (b"-0", None),
            (b" 3", None),
            (b"", None),
            (b"-", None),
            (b"3a", None),
        ] {
            assert_eq!(parse_int(text), want, "{}", String::from_utf8_lossy(text));
        }
        let mut buf = BytesMut::from(&b"*1\r\n$03\r\nget\r\n"[..]);
        assert_eq!(
            next_request(&mut buf, &RequestLimits::default(), true),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    /// A large blob read only to be dropped never waits whole in the buffer: what has come of
    /// it is dropped after every read.
    #[test]
    fn a_passed_blob_is_dropped_as_it_comes() {
        let mut wire = b"*2\r\n$1000000\r\n".to_vec();
        wire.extend(vec![b'x'; 1_000_000]);
        wire.extend(b"\r\n:1\r\n");
        let mut scanner = ReplyScanner::default();
        scanner.pass_blobs(true);
        let (mut buf, mut dropped, mut most) = (Vec::new(), 0, 0);
        let mut done = None;
        for chunk in wire.chunks(65_536) {
            buf.extend_from_slice(chunk);
            most = most.max(buf.len());
            match scanner.next(&buf, usize::MAX).unwrap() {
                Some((len, _)) => done = Some(dropped + len),
                None => {
                    let n = scanner.scanned().min(buf.len());
                    buf.drain(..n);
                    scanner.dropped(n);
                    dropped += n;
                }
            }
        }
        assert_eq!(done, Some(wire.len()));
        assert!(most <= 65_536 + 16, "{most}");
    }

    /// Where `cuts` cut `wire`, in order.
    fn cut_points(wire: &[u8], cuts: &[prop::sample::Index]) -> Vec<usize> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort_unstable();
        points
    }

    /// The frame lengths a resumable scanner finds in `wire` delivered in pieces cut at `cuts`.
    fn scan_in_chunks(wire: &[u8], cuts: &[prop::sample::Index]) -> Vec<usize> {
        let points = cut_points(wire, cuts);
        let mut scanner = ReplyScanner::default();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut last = 0;
        for cut in points.into_iter().chain([wire.len()]) {
            buf.extend_from_slice(&wire[last..cut]);
            last = cut;
            while let Some((len, _)) = scanner.next(&buf, 1 << 20).unwrap() {
                got.push(len);
                buf.drain(..len);
            }
        }
        got
    }

    proptest! {
        /// The one-pass header read agrees with the general one wherever it answers, and
        /// answers for every plain length a client writes.
        #[test]
        fn a_plain_header_reads_as_the_general_path_reads_it(
            line in prop::collection::vec(prop::sample::select(b"0123456789\r\n-+ x".to_vec()), 0..24),
            plain in 0u64..1_000_000_000_000_000_000,
        ) {
            if let Some((value, eol)) = plain_header(&line, 0) {
                prop_assert_eq!(find_crlf(&line, 0), Some(eol));
                prop_assert_eq!(parse_int(&line[..eol]), Some(value));
            }
            let written = format!("{plain}\r\n");
            prop_assert_eq!(
                plain_header(written.as_bytes(), 0),
                Some((plain as i64, written.len() - 2))
            );
        }

        #[test]
        fn strict_prefixes_are_incomplete(cmds in prop::collection::vec(arb_args(), 1..4)) {
            let wire: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
            let first = encode(&cmds[0]);
            for cut in 0..first.len() {
                let mut buf = BytesMut::from(&first[..cut]);
                prop_assert_eq!(next_request(&mut buf, &RequestLimits::default(), true), Ok(None));
                prop_assert_eq!(buf.len(), cut, "nothing consumed on incomplete");
            }
            prop_assert_eq!(parse_all(&wire, true).unwrap(), cmds);
        }

        #[test]
        fn any_chunking_gives_the_same_requests(
            cmds in prop::collection::vec(arb_args(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let wire: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([wire.len()]) {
                buf.extend_from_slice(&wire[last..p]);
                last = p;
                while let Some(r) = next_request(&mut buf, &RequestLimits::default(), true).unwrap() {
                    got.push(r.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(got, cmds);
        }

        #[test]
        fn garbage_never_panics_and_accepted_requests_respect_limits(
            input in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let limits = RequestLimits { max_inline: 32, max_bulk: 8, max_multibulk: 4 };
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(r)) = next_request(&mut buf, &limits, true) {
                prop_assert!(!r.args.is_empty());
                if input[0] == b'*' {
                    prop_assert!(r.args.len() <= 4);
                    prop_assert!(r.args.iter().all(|a| a.len() <= 8));
                }
            }
        }

        #[test]
        fn accepted_multibulks_are_canonical(
            args in arb_args(),
            count_form in 0..4usize,
            len_forms in prop::collection::vec(0..4usize, 6),
        ) {
            // Numbers written as Redis writes them, or with a leading zero, a plus sign or a
            // space: whatever is accepted is forwarded as sent, so it must be what re-encoding
            // the arguments would give.
            let number = |n: usize, form: usize| match form {
                0 => n.to_string(),
                1 => format!("0{n}"),
                2 => format!("+{n}"),
                _ => format!(" {n}"),
            };
            let mut wire = format!("*{}\r\n", number(args.len(), count_form)).into_bytes();
            for (a, form) in args.iter().zip(&len_forms) {
                wire.extend(format!("${}\r\n", number(a.len(), *form)).into_bytes());
                wire.extend(a);
                wire.extend(b"\r\n");
            }
            let mut buf = BytesMut::from(&wire[..]);
            if let Ok(Some(r)) = next_request(&mut buf, &RequestLimits::default(), true) {
                prop_assert_eq!(r.raw.as_deref(), Some(&encode(&args)[..]));
            }
        }

        #[test]
        fn scanner_agrees_with_the_decoder_under_any_chunking(
            arrays in prop::collection::vec(arb_args(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            // Replies: arrays of bulks, with a RESP3 map and a null mixed in.
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for a in &arrays {
                let f = encode(a);
                want.push(f.len());
                wire.extend(f);
                wire.extend(b"%1\r\n+k\r\n_\r\n");
                want.push(11);
                wire.extend(b"*-1\r\n");
                want.push(5);
            }
            prop_assert_eq!(scan_in_chunks(&wire, &cuts), want);
        }

        #[test]
        fn reply_prefixes_are_incomplete(args in arb_args()) {
            let frame = encode(&args);
            for cut in 0..frame.len() {
                prop_assert!(next_reply_len(&frame[..cut], 1 << 20).unwrap().is_none());
            }
            prop_assert_eq!(next_reply_len(&frame, 1 << 20).unwrap(), Some((frame.len(), ReplyKind::Other)));
        }

        #[test]
        fn any_frame_is_delimited_whole_under_any_chunking(
            frames in prop::collection::vec(arb_frame(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let wire: Vec<u8> = frames.concat();
            let want: Vec<usize> = frames.iter().map(|f| f.len()).collect();
            for f in &frames {
                prop_assert_eq!(frame_len(f).unwrap().map(|(len, _)| len), Some(f.len()));
                for cut in 0..f.len() {
                    prop_assert_eq!(frame_len(&f[..cut]).unwrap(), None);
                }
            }
            prop_assert_eq!(scan_in_chunks(&wire, &cuts), want);
        }

        /// Frames read only to be dropped, under any chunking, with what the scanner has passed
        /// dropped after every read (blobs before they arrive): the bytes dropped and the
        /// frames it reports complete add up to each frame's length.
        #[test]
        fn frames_passed_and_dropped_as_they_come_add_up(
            frames in prop::collection::vec(arb_frame(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let wire: Vec<u8> = frames.concat();
            let want: Vec<usize> = frames.iter().map(|f| f.len()).collect();
            let points = cut_points(&wire, &cuts);
            let mut scanner = ReplyScanner::default();
            scanner.pass_blobs(true);
            let (mut buf, mut got, mut dropped, mut last) = (Vec::new(), Vec::new(), 0, 0);
            for cut in points.into_iter().chain([wire.len()]) {
                buf.extend_from_slice(&wire[last..cut]);
                last = cut;
                loop {
                    match scanner.next(&buf, usize::MAX).unwrap() {
                        Some((len, _)) => {
                            got.push(dropped + len);
                            buf.drain(..len);
                            dropped = 0;
                        }
                        None => {
                            let n = scanner.scanned().min(buf.len());
                            buf.drain(..n);
                            scanner.dropped(n);
                            dropped += n;
                            break;
                        }
                    }
                }
            }
            prop_assert_eq!(got, want);
        }

        /// Where redis-protocol's decoder (a second, independent reading of RESP3) accepts a
        /// frame, it finds the same end.
        #[test]
        fn same_end_as_redis_protocol(frame in arb_frame()) {
            use redis_protocol::resp3::decode::complete::decode_range;
            if frame.starts_with(b"$-1") || frame.starts_with(b"*-1") {
                return Ok(());
            }
            if let Ok(Some((_, len))) = decode_range(&frame) {
                prop_assert_eq!(frame_len(&frame).unwrap().map(|(l, _)| l), Some(len));
            }
        }
    }
}
