//! memcached text and meta protocol framing with limits.
//!
//! Requests are validated whole before anything is forwarded: key length and characters, exact
//! token counts, numeric ranges, the exact `noreply` token. A storage command's data block is
//! always consumed by cachegate, even when the command is refused, so a data block can never be
//! forwarded or read as a command. Oversized values are discarded as they stream in, never
//! buffered. A storage line whose length field cannot be read leaves no way to find the end of
//! its data block, so that connection is closed.
//!
//! Requests are re-encoded from their parsed tokens (`McRequest::encode`), and upstream replies
//! are delimited by shape (`reply_len`), so each reply is forwarded whole or not at all.

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::policy::{Decision, Policy};

/// memcached's own key limit.
pub const MAX_KEY: usize = 250;
/// memcached's default item size limit (`-I 1m`).
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// Longest command line (a multi-get of ~260 maximal keys).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Most keys in one multi-get.
pub const DEFAULT_MAX_KEYS: usize = 1024;
/// Longest meta flag token (an opaque is at most 32 bytes).
const MAX_FLAG: usize = 64;

pub const ERROR: &[u8] = b"ERROR\r\n";
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const BAD_DATA_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
pub const TOO_MANY_KEYS: &[u8] = b"CLIENT_ERROR too many keys\r\n";
pub const BAD_DELETE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
pub const INVALID_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
pub const KEY_DECODE: &[u8] = b"CLIENT_ERROR error decoding key\r\n";

#[derive(Debug, Clone, Copy)]
pub struct McLimits {
    pub max_value: usize,
    pub max_line: usize,
    pub max_keys: usize,
}

impl Default for McLimits {
    fn default() -> Self {
        Self {
            max_value: DEFAULT_MAX_VALUE,
            max_line: DEFAULT_MAX_LINE,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// The commands cachegate forwards, by the shape of their request and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// set, add, replace, append, prepend, cas: one key, a data block, one line back.
    Storage,
    /// get, gets: keys; VALUE items then END.
    Get,
    /// gat, gats: exptime then keys; VALUE items then END.
    GetAndTouch,
    /// delete, incr, decr, touch: one key, one line back.
    KeyLine,
    /// mg, md, ma, me: one key, one meta reply (with a value block for VA).
    Meta,
    /// ms: one key and a data block, one meta reply.
    MetaSet,
    /// flush_all, verbosity: every node, one line each.
    Broadcast,
    /// version: one node, one line.
    Version,
    /// Answered by cachegate: mn, stats, quit.
    MetaNoop,
    Stats,
    Quit,
}

/// The shape of an upstream reply, so it can be delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Line,
    Values,
    Meta,
    /// A quiet meta command followed by `mn`: zero or one meta reply, then `MN`.
    MetaThenNoop,
}

/// One validated request, ready to re-encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McRequest {
    pub cmd: Cmd,
    /// The real command name (after renaming), then its arguments, `noreply` removed. For meta
    /// commands a `q` flag stays (the backend applies its own quiet rules).
    pub tokens: Vec<Bytes>,
    /// The data block, without its `\r\n`.
    pub data: Option<Bytes>,
    /// Index in `tokens` of the first key (keys run to the end for multi-gets).
    pub key_at: usize,
    /// The key to hash, for single-key commands (base64-decoded for meta `b`).
    pub route_key: Option<Bytes>,
    /// `noreply` (text) or `q` (meta): the client expects no success reply.
    pub quiet: bool,
}

impl McRequest {
    pub fn name(&self) -> &[u8] {
        &self.tokens[0]
    }

    pub fn keys(&self) -> &[Bytes] {
        match self.cmd {
            Cmd::Get | Cmd::GetAndTouch => &self.tokens[self.key_at..],
            _ => &[],
        }
    }

    /// How the upstream answers this request as encoded by `encode`.
    pub fn shape(&self) -> Shape {
        match self.cmd {
            Cmd::Get | Cmd::GetAndTouch => Shape::Values,
            Cmd::Meta | Cmd::MetaSet if self.quiet => Shape::MetaThenNoop,
            Cmd::Meta | Cmd::MetaSet => Shape::Meta,
            _ => Shape::Line,
        }
    }

    /// Appends the request as sent upstream. For multi-gets, `keys` replaces the key list (the
    /// node's share of it).
    pub fn encode(&self, out: &mut BytesMut, keys: Option<&[Bytes]>) {
        let head = match keys {
            Some(_) => &self.tokens[..self.key_at],
            None => &self.tokens[..],
        };
        let tail = keys.unwrap_or(&[]);
        for (i, t) in head.iter().chain(tail).enumerate() {
            if i > 0 {
                out.put_u8(b' ');
            }
            out.put_slice(t);
        }
        out.put_slice(b"\r\n");
        if let Some(data) = &self.data {
            out.put_slice(data);
            out.put_slice(b"\r\n");
        }
        if self.shape() == Shape::MetaThenNoop {
            out.put_slice(b"mn\r\n");
        }
    }
}

/// What the parser made of the next bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Request(McRequest),
    /// Answer this locally (possibly nothing, for a failed `noreply` command); the connection
    /// goes on.
    Reply(&'static [u8]),
    /// Answer this, then close: the byte stream cannot be trusted to resynchronise.
    Fatal(&'static [u8]),
}

/// A streaming request parser. It keeps one piece of state between calls: how much of an
/// oversized or refused data block is still to be discarded.
#[derive(Debug, Default)]
pub struct Parser {
    limits: McLimits,
    swallow: u64,
    after_swallow: Option<&'static [u8]>,
}

enum Step {
    NeedMore,
    Done(Parsed, usize),
    /// Consume `line` bytes now, discard `data` more as they arrive, then answer.
    Swallow {
        line: usize,
        data: u64,
        reply: &'static [u8],
    },
}

impl Parser {
    pub fn new(limits: McLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The next complete outcome at the front of `buf`, or `None` when more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut, policy: &Policy) -> Option<Parsed> {
        if self.swallow > 0 {
            let n = (self.swallow).min(buf.len() as u64) as usize;
            buf.advance(n);
            self.swallow -= n as u64;
            if self.swallow > 0 {
                return None;
            }
        }
        if let Some(reply) = self.after_swallow.take() {
            return Some(Parsed::Reply(reply));
        }
        match self.step(buf, policy) {
            Step::NeedMore => None,
            Step::Done(parsed, consumed) => {
                buf.advance(consumed);
                Some(parsed)
            }
            Step::Swallow { line, data, reply } => {
                buf.advance(line);
                self.swallow = data;
                self.after_swallow = Some(reply);
                self.next(buf, policy)
            }
        }
    }

    fn step(&self, buf: &[u8], policy: &Policy) -> Step {
        let Some(nl) = buf
            .iter()
            .take(self.limits.max_line + 2)
            .position(|&b| b == b'\n')
        else {
            if buf.len() > self.limits.max_line {
                return Step::Done(Parsed::Fatal(LINE_TOO_LONG), buf.len());
            }
            return Step::NeedMore;
        };
        let line_len = nl + 1;
        let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
        let tokens: Vec<&[u8]> = line
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
            .collect();
        let Some(&typed) = tokens.first() else {
            return Step::Done(Parsed::Reply(ERROR), line_len);
        };
        let (real, refused) = match policy.decide(typed) {
            Decision::Allow => (typed.to_vec(), false),
            Decision::Rename(real) => (real.to_ascii_lowercase(), false),
            Decision::Refuse => (typed.to_vec(), true),
        };
        let args = &tokens[1..];
        // memcached reads `noreply` before validating, so even its errors are silent then
        // (except ERROR for a command it does not know).
        let silent = !refused
            && args.last() == Some(&&b"noreply"[..])
            && !matches!(&real[..], b"get" | b"gets" | b"gat" | b"gats");
        let step = self.dispatch(&real, args, buf, line_len, refused);
        match step {
            Step::Done(Parsed::Reply(r), n) if silent && r != ERROR => {
                Step::Done(Parsed::Reply(b""), n)
            }
            Step::Swallow { line, data, reply } if silent && reply != ERROR => Step::Swallow {
                line,
                data,
                reply: b"",
            },
            other => other,
        }
    }

    fn dispatch(
        &self,
        real: &[u8],
        args: &[&[u8]],
        buf: &[u8],
        line_len: usize,
        refused: bool,
    ) -> Step {
        let with_data = matches!(
            real,
            b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" | b"ms"
        );
        if with_data {
            return self.storage(real, args, &buf[line_len..], line_len, refused);
        }
        let done = |p| Step::Done(p, line_len);
        if refused {
            return done(Parsed::Reply(ERROR));
        }
        done(match self.simple(real, args) {
            Ok(req) => Parsed::Request(req),
            Err(reply) => Parsed::Reply(reply),
        })
    }

    /// Storage commands and `ms`: the data block is consumed whatever the verdict on the line.
    fn storage(
        &self,
        name: &[u8],
        args: &[&[u8]],
        rest: &[u8],
        line_len: usize,
        refused: bool,
    ) -> Step {
        let meta = name == b"ms";
        // ms <key> <datalen> <flags>*; set <key> <flags> <exptime> <bytes> ...
        let len_at = if meta { 1 } else { 3 };
        let Some(len) = args.get(len_at).and_then(|t| parse_num::<u64>(t)) else {
            // Without a length there is no way to tell where the data block ends.
            return Step::Done(Parsed::Fatal(BAD_FORMAT), line_len);
        };
        if len > i32::MAX as u64 - 2 {
            return Step::Done(Parsed::Fatal(BAD_FORMAT), line_len);
        }
        let block = len + 2;
        let verdict: Result<McRequest, &'static [u8]> = if refused {
            Err(ERROR)
        } else if len as usize > self.limits.max_value {
            Err(TOO_LARGE)
        } else if meta {
            self.meta(name, args, 2)
        } else {
            storage_line(name, args)
        };
        let request = match verdict {
            Ok(r) => r,
            Err(reply) => {
                return Step::Swallow {
                    line: line_len,
                    data: block,
                    reply,
                }
            }
        };
        let block = block as usize;
        if rest.len() < block {
            return Step::NeedMore;
        }
        if &rest[block - 2..block] != b"\r\n" {
            return Step::Done(Parsed::Fatal(BAD_DATA_CHUNK), line_len + block);
        }
        let data = Bytes::copy_from_slice(&rest[..block - 2]);
        Step::Done(
            Parsed::Request(McRequest {
                data: Some(data),
                ..request
            }),
            line_len + block,
        )
    }

    fn simple(&self, name: &[u8], all_args: &[&[u8]]) -> Result<McRequest, &'static [u8]> {
        // Retrievals take no `noreply`: a trailing "noreply" there is a key.
        let retrieval = matches!(name, b"get" | b"gets" | b"gat" | b"gats");
        let (noreply, args) = if retrieval {
            (false, all_args)
        } else {
            split_noreply(all_args)
        };
        let req = |cmd, key_at, tokens: Vec<&[u8]>, route_key: Option<&[u8]>| McRequest {
            cmd,
            tokens: owned(name, &tokens),
            data: None,
            key_at,
            route_key: route_key.map(Bytes::copy_from_slice),
            quiet: noreply,
        };
        match name {
            b"get" | b"gets" | b"gat" | b"gats" => {
                let touch = name.starts_with(b"gat");
                let first_key = usize::from(touch);
                if args.len() <= first_key {
                    return Err(ERROR);
                }
                if touch && parse_num::<i64>(args[0]).is_none() {
                    return Err(BAD_FORMAT);
                }
                let keys = &args[first_key..];
                if keys.len() > self.limits.max_keys {
                    return Err(TOO_MANY_KEYS);
                }
                if !keys.iter().all(|k| valid_key(k)) {
                    return Err(BAD_FORMAT);
                }
                let cmd = if touch { Cmd::GetAndTouch } else { Cmd::Get };
                Ok(req(cmd, 1 + first_key, args.to_vec(), None))
            }
            b"delete" => match args {
                [key] | [key, b"0"] if valid_key(key) => {
                    Ok(req(Cmd::KeyLine, 1, vec![*key], Some(key)))
                }
                [key] | [key, _] if !valid_key(key) => Err(BAD_FORMAT),
                _ => Err(BAD_DELETE),
            },
            b"incr" | b"decr" => match args {
                [key, delta] if valid_key(key) => {
                    parse_num::<u64>(delta).ok_or(BAD_DELTA)?;
                    Ok(req(Cmd::KeyLine, 1, vec![*key, *delta], Some(key)))
                }
                _ => Err(BAD_FORMAT),
            },
            b"touch" => match args {
                [key, exptime] if valid_key(key) && parse_num::<i64>(exptime).is_some() => {
                    Ok(req(Cmd::KeyLine, 1, vec![*key, *exptime], Some(key)))
                }
                _ => Err(BAD_FORMAT),
            },
            b"flush_all" => match args {
                [] => Ok(req(Cmd::Broadcast, 1, vec![], None)),
                [delay] if parse_num::<i64>(delay).is_some() => {
                    Ok(req(Cmd::Broadcast, 1, vec![*delay], None))
                }
                _ => Err(BAD_FORMAT),
            },
            b"verbosity" => match args {
                [level] if parse_num::<u32>(level).is_some() => {
                    Ok(req(Cmd::Broadcast, 1, vec![*level], None))
                }
                _ => Err(ERROR),
            },
            b"version" if args.is_empty() && !noreply => Ok(req(Cmd::Version, 1, vec![], None)),
            b"quit" if args.is_empty() && !noreply => Ok(req(Cmd::Quit, 1, vec![], None)),
            b"stats" if !noreply => Ok(req(Cmd::Stats, 1, args.to_vec(), None)),
            b"mn" if args.is_empty() && !noreply => Ok(req(Cmd::MetaNoop, 1, vec![], None)),
            // `noreply` is not a meta flag: put it back and let the flag check refuse it.
            b"mg" | b"md" | b"ma" | b"me" => {
                let mut all = args.to_vec();
                if noreply {
                    all.push(b"noreply");
                }
                self.meta(name, &all, 1)
            }
            _ => Err(ERROR),
        }
    }

    /// A meta command: `<cmd> <key> [<datalen>] <flags>*`. `flags_at` is where flags start.
    fn meta(
        &self,
        name: &[u8],
        args: &[&[u8]],
        flags_at: usize,
    ) -> Result<McRequest, &'static [u8]> {
        if args.len() < flags_at {
            return Err(BAD_FORMAT);
        }
        let key = args[0];
        let flags = &args[flags_at..];
        let mut quiet = false;
        let mut base64 = false;
        for flag in flags {
            let ok = flag.len() <= MAX_FLAG
                && flag[0].is_ascii_alphabetic()
                && flag[1..].iter().all(|&b| b > b' ' && b != 0x7f);
            if !ok {
                return Err(INVALID_FLAG);
            }
            match flag[0] {
                b'q' if flag.len() == 1 => quiet = true,
                b'b' if flag.len() == 1 => base64 = true,
                _ => {}
            }
        }
        let route_key = if base64 {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| KEY_DECODE)?;
            if decoded.is_empty() || decoded.len() > MAX_KEY {
                return Err(KEY_DECODE);
            }
            Bytes::from(decoded)
        } else if valid_key(key) {
            Bytes::copy_from_slice(key)
        } else {
            return Err(BAD_FORMAT);
        };
        let cmd = if name == b"ms" {
            Cmd::MetaSet
        } else {
            Cmd::Meta
        };
        Ok(McRequest {
            cmd,
            tokens: owned(name, args),
            data: None,
            key_at: 1,
            route_key: Some(route_key),
            quiet,
        })
    }
}

/// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]`,
/// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`.
fn storage_line(name: &[u8], args: &[&[u8]]) -> Result<McRequest, &'static [u8]> {
    let (noreply, args) = split_noreply(args);
    let want = if name == b"cas" { 5 } else { 4 };
    if args.len() != want || !valid_key(args[0]) {
        return Err(BAD_FORMAT);
    }
    let numbers_ok = parse_num::<u32>(args[1]).is_some()
        && parse_num::<i64>(args[2]).is_some_and(|e| i32::try_from(e).is_ok())
        && (want == 4 || parse_num::<u64>(args[4]).is_some());
    if !numbers_ok {
        return Err(BAD_FORMAT);
    }
    Ok(McRequest {
        cmd: Cmd::Storage,
        tokens: owned(name, args),
        data: None,
        key_at: 1,
        route_key: Some(Bytes::copy_from_slice(args[0])),
        quiet: noreply,
    })
}

/// Only the exact last token `noreply` counts.
fn split_noreply<'a, 'b>(args: &'a [&'b [u8]]) -> (bool, &'a [&'b [u8]]) {
    match args.split_last() {
        Some((&b"noreply", rest)) => (true, rest),
        _ => (false, args),
    }
}

fn owned(name: &[u8], args: &[&[u8]]) -> Vec<Bytes> {
    std::iter::once(name)
        .chain(args.iter().copied())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// A memcached key: 1 to 250 bytes, no control characters or spaces.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// A decimal number as memcached reads it: digits only (a leading `-` for signed types).
fn parse_num<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    if token.is_empty() || token.len() > 20 || token[0] == b'+' {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Malformed upstream output.
#[derive(Debug, thiserror::Error)]
pub enum McReplyError {
    #[error("malformed reply from upstream: {0}")]
    Malformed(String),
    #[error("reply from upstream larger than {0} bytes")]
    TooLarge(usize),
}

/// Delimits one upstream reply of `shape` at the front of `buf`: its length when complete.
pub fn reply_len(buf: &[u8], shape: Shape, max: usize) -> Result<Option<usize>, McReplyError> {
    let mut pos = 0;
    loop {
        let Some(line) = line_at(buf, pos, max)? else {
            return Ok(None);
        };
        let text = &buf[pos..pos + line - 2];
        let word = text.split(|&b| b == b' ').next().unwrap_or(b"");
        let is_error = matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
        let end = match shape {
            Shape::Line => return Ok(Some(line)),
            Shape::Values if is_error || text == b"END" => return Ok(Some(pos + line)),
            Shape::Values if word == b"VALUE" => {
                let size = text
                    .split(|&b| b == b' ')
                    .nth(3)
                    .and_then(parse_num::<usize>);
                let size = size.ok_or_else(|| malformed(text))?;
                pos + line + size + 2
            }
            Shape::Values => return Err(malformed(text)),
            Shape::Meta | Shape::MetaThenNoop => {
                if shape == Shape::MetaThenNoop && text == b"MN" {
                    return Ok(Some(pos + line));
                }
                let end = if word == b"VA" {
                    let size = text
                        .split(|&b| b == b' ')
                        .nth(1)
                        .and_then(parse_num::<usize>);
                    pos + line + size.ok_or_else(|| malformed(text))? + 2
                } else {
                    pos + line
                };
                if shape == Shape::Meta {
                    if end > max {
                        return Err(McReplyError::TooLarge(max));
                    }
                    return Ok((buf.len() >= end).then_some(end));
                }
                end
            }
        };
        if end > max {
            return Err(McReplyError::TooLarge(max));
        }
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(McReplyError::Malformed(
                "value block not ended by CRLF".into(),
            ));
        }
        pos = end;
    }
}

/// The length of the `\r\n`-terminated line at `pos` (including it), if complete.
fn line_at(buf: &[u8], pos: usize, max: usize) -> Result<Option<usize>, McReplyError> {
    match buf[pos..].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i + 2)),
        None if buf.len() - pos > DEFAULT_MAX_LINE.min(max) => Err(McReplyError::TooLarge(max)),
        None => Ok(None),
    }
}

fn malformed(line: &[u8]) -> McReplyError {
    let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    McReplyError::Malformed(shown)
}

/// The VALUE items of a complete `Values` reply, each with its key, and whether it ended with
/// END (rather than an error line, which is returned as the second element).
pub fn split_values(reply: &Bytes) -> (Vec<(Bytes, Bytes)>, Option<Bytes>) {
    let mut items = Vec::new();
    let mut pos = 0;
    while pos < reply.len() {
        let Some(i) = reply[pos..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let text = &reply[pos..pos + i];
        if text.starts_with(b"VALUE ") {
            let mut parts = text.split(|&b| b == b' ');
            let key = parts.nth(1).unwrap_or(b"");
            let size: usize = parts.nth(1).and_then(parse_num).unwrap_or(0);
            let end = pos + i + 2 + size + 2;
            let key = reply.slice_ref(key);
            items.push((key, reply.slice(pos..end.min(reply.len()))));
            pos = end;
        } else if text == b"END" {
            return (items, None);
        } else {
            return (items, Some(reply.slice(pos..pos + i + 2)));
        }
    }
    (items, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Vec<Parsed> {
        let mut p = Parser::new(McLimits::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(x) = p.next(&mut buf, &Policy::default()) {
            let fatal = matches!(x, Parsed::Fatal(_));
            out.push(x);
            if fatal {
                break;
            }
        }
        out
    }

    fn req(input: &[u8]) -> McRequest {
        match parse_all(input).pop() {
            Some(Parsed::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn encoded(r: &McRequest) -> Vec<u8> {
        let mut out = BytesMut::new();
        r.encode(&mut out, None);
        out.to_vec()
    }

    #[test]
    fn storage_round_trip_and_noreply() {
        let r = req(b"set k 5 0 3 noreply\r\nabc\r\n");
        assert!(r.quiet);
        assert_eq!(encoded(&r), b"set k 5 0 3\r\nabc\r\n");
        let r = req(b"cas k 0 0 1 99\r\nx\r\n");
        assert_eq!(encoded(&r), b"cas k 0 0 1 99\r\nx\r\n");
        assert_eq!(r.shape(), Shape::Line);
    }

    #[test]
    fn noreply_silences_errors_as_memcached_does() {
        assert_eq!(parse_all(b"incr k x noreply\r\n"), vec![Parsed::Reply(b"")]);
        assert_eq!(
            parse_all(b"set k x 0 1 noreply\r\nz\r\n"),
            vec![Parsed::Reply(b"")]
        );
        assert_eq!(parse_all(b"bogus noreply\r\n"), vec![Parsed::Reply(ERROR)]);
    }

    #[test]
    fn only_the_exact_noreply_token_counts() {
        assert_eq!(
            parse_all(b"set k 0 0 1 NOREPLY\r\nx\r\n"),
            vec![Parsed::Reply(BAD_FORMAT)]
        );
        assert_eq!(
            parse_all(b"delete k norepl\r\n"),
            vec![Parsed::Reply(BAD_DELETE)]
        );
        assert!(req(b"delete k noreply\r\n").quiet);
        assert!(!req(b"delete k\r\n").quiet);
    }

    #[test]
    fn rejected_storage_line_consumes_its_data_block() {
        let long_key = format!(
            "set {} 0 0 11\r\nflush_all\r\n\r\nget a\r\n",
            "k".repeat(251)
        );
        let out = parse_all(long_key.as_bytes());
        assert_eq!(out[0], Parsed::Reply(BAD_FORMAT));
        assert!(
            matches!(&out[1], Parsed::Request(r) if r.cmd == Cmd::Get),
            "{out:?}"
        );
        assert_eq!(out.len(), 2, "flush_all was never a command: {out:?}");
        // Bad flags, bad exptime, extra tokens: same.
        for line in [
            "set k x 0 9",
            "set k 0 x 9",
            "set k 0 0 9 extra",
            "set k -1 0 9",
        ] {
            let input = format!("{line}\r\nflush_all\r\n");
            assert_eq!(
                parse_all(input.as_bytes()),
                vec![Parsed::Reply(BAD_FORMAT)],
                "{line}"
            );
        }
    }

    #[test]
    fn refused_storage_command_consumes_its_data_block() {
        let policy = Policy::new(&["set".into()], &[]).unwrap();
        let mut p = Parser::new(McLimits::default());
        let mut buf = BytesMut::from(&b"set k 0 0 9\r\nflush_all\r\nversion\r\n"[..]);
        assert_eq!(p.next(&mut buf, &policy), Some(Parsed::Reply(ERROR)));
        assert!(
            matches!(p.next(&mut buf, &policy), Some(Parsed::Request(r)) if r.cmd == Cmd::Version)
        );
    }

    #[test]
    fn unreadable_length_closes_the_connection() {
        assert_eq!(
            parse_all(b"set k 0 0\r\nflush_all\r\n"),
            vec![Parsed::Fatal(BAD_FORMAT)]
        );
        assert_eq!(
            parse_all(b"set k 0 0 abc\r\nflush_all\r\n"),
            vec![Parsed::Fatal(BAD_FORMAT)]
        );
        assert_eq!(
            parse_all(b"set k 0 0 3\r\nabcd\r\n"),
            vec![Parsed::Fatal(BAD_DATA_CHUNK)]
        );
    }

    #[test]
    fn oversized_value_is_discarded_as_it_streams() {
        let limits = McLimits {
            max_value: 10,
            ..McLimits::default()
        };
        let mut p = Parser::new(limits);
        let mut buf = BytesMut::from(&b"set k 0 0 100\r\n"[..]);
        assert_eq!(p.next(&mut buf, &Policy::default()), None);
        assert!(buf.is_empty(), "the line is consumed at once");
        for _ in 0..10 {
            buf.extend_from_slice(&[b'x'; 10]);
            assert_eq!(p.next(&mut buf, &Policy::default()), None);
            assert!(buf.is_empty(), "data is discarded, not buffered");
        }
        buf.extend_from_slice(b"\r\nget k\r\n");
        assert_eq!(
            p.next(&mut buf, &Policy::default()),
            Some(Parsed::Reply(TOO_LARGE))
        );
        assert!(matches!(
            p.next(&mut buf, &Policy::default()),
            Some(Parsed::Request(_))
        ));
    }

    #[test]
    fn retrieval_and_keys() {
        let r = req(b"get a b c\r\n");
        assert_eq!(r.keys().len(), 3);
        let mut out = BytesMut::new();
        r.encode(&mut out, Some(&[Bytes::from_static(b"b")]));
        assert_eq!(&out[..], b"get b\r\n");
        let r = req(b"gat 100 a b\r\n");
        let mut out = BytesMut::new();
        r.encode(&mut out, Some(&[Bytes::from_static(b"a")]));
        assert_eq!(&out[..], b"gat 100 a\r\n");
        assert_eq!(parse_all(b"get\r\n"), vec![Parsed::Reply(ERROR)]);
        assert_eq!(
            req(b"get a noreply\r\n").keys().len(),
            2,
            "noreply is a key here"
        );
        assert_eq!(
            parse_all(b"get a\x01b\r\n"),
            vec![Parsed::Reply(BAD_FORMAT)]
        );
        let too_many = format!("get {}\r\n", vec!["k"; 1025].join(" "));
        assert_eq!(
            parse_all(too_many.as_bytes()),
            vec![Parsed::Reply(TOO_MANY_KEYS)]
        );
        let long_line = format!("get {}\r\n", "k".repeat(70_000));
        assert_eq!(
            parse_all(long_line.as_bytes()),
            vec![Parsed::Fatal(LINE_TOO_LONG)]
        );
    }

    #[test]
    fn unknown_and_admin_commands_are_errors() {
        for line in [
            "slabs reassign 1 2",
            "lru_crawler metadump all",
            "watch",
            "shutdown",
            "foo",
            "GET a",
        ] {
            assert_eq!(
                parse_all(format!("{line}\r\n").as_bytes()),
                vec![Parsed::Reply(ERROR)],
                "{line}"
            );
        }
        assert_eq!(parse_all(b"\r\n"), vec![Parsed::Reply(ERROR)]);
    }

    #[test]
    fn meta_commands() {
        let r = req(b"mg foo v k O123 q\r\n");
        assert!(r.quiet);
        assert_eq!(r.shape(), Shape::MetaThenNoop);
        assert_eq!(encoded(&r), b"mg foo v k O123 q\r\nmn\r\n");
        let r = req(b"ms foo 2 T10\r\nhi\r\n");
        assert_eq!(encoded(&r), b"ms foo 2 T10\r\nhi\r\n");
        let r = req(b"mg Zm9v b v\r\n");
        assert_eq!(r.route_key.as_deref(), Some(&b"foo"[..]));
        assert_eq!(parse_all(b"mg !!! b\r\n"), vec![Parsed::Reply(KEY_DECODE)]);
        assert_eq!(
            parse_all(b"mg foo 1x\r\n"),
            vec![Parsed::Reply(INVALID_FLAG)]
        );
        assert_eq!(parse_all(b"mg foo noreply\r\n").len(), 1);
        assert!(matches!(req(b"mn\r\n").cmd, Cmd::MetaNoop));
    }

    #[test]
    fn renamed_commands_parse_as_the_real_one() {
        let policy = Policy::new(&[], &[("flush_all".into(), "admin_flush".into())]).unwrap();
        let mut p = Parser::new(McLimits::default());
        let mut buf = BytesMut::from(&b"flush_all\r\nadmin_flush 0\r\n"[..]);
        assert_eq!(p.next(&mut buf, &policy), Some(Parsed::Reply(ERROR)));
        match p.next(&mut buf, &policy) {
            Some(Parsed::Request(r)) => assert_eq!(encoded(&r), b"flush_all 0\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(reply_len(b"STORED\r\n", Shape::Line, 100).unwrap(), Some(8));
        let values = b"VALUE a 0 3\r\nabc\r\nVALUE b 1 0\r\n\r\nEND\r\n";
        assert_eq!(
            reply_len(values, Shape::Values, 1000).unwrap(),
            Some(values.len())
        );
        for cut in 0..values.len() {
            assert_eq!(
                reply_len(&values[..cut], Shape::Values, 1000).unwrap(),
                None
            );
        }
        let (items, err) = split_values(&Bytes::from_static(values));
        assert_eq!(items.len(), 2);
        assert_eq!(&items[1].0[..], b"b");
        assert!(err.is_none());
        assert_eq!(
            reply_len(b"SERVER_ERROR x\r\n", Shape::Values, 100).unwrap(),
            Some(16)
        );
        assert_eq!(
            reply_len(b"VA 2 t\r\nhi\r\n", Shape::Meta, 100).unwrap(),
            Some(12)
        );
        assert_eq!(
            reply_len(b"MN\r\n", Shape::MetaThenNoop, 100).unwrap(),
            Some(4)
        );
        assert_eq!(
            reply_len(b"HD\r\nMN\r\n", Shape::MetaThenNoop, 100).unwrap(),
            Some(8)
        );
        assert_eq!(
            reply_len(b"HD\r\nMN", Shape::MetaThenNoop, 100).unwrap(),
            None
        );
        assert!(reply_len(b"VALUE a 0 500\r\n", Shape::Values, 100).is_err());
        assert!(reply_len(b"BOGUS\r\n", Shape::Values, 100).is_err());
    }

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(33u8..127, 1..20)
    }

    fn arb_request() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                arb_key(),
                prop::collection::vec(any::<u8>(), 0..50),
                any::<bool>()
            )
                .prop_map(|(k, v, nr)| {
                    let mut out = format!(
                        "set {} 1 0 {}{}\r\n",
                        String::from_utf8(k).unwrap(),
                        v.len(),
                        if nr { " noreply" } else { "" }
                    )
                    .into_bytes();
                    out.extend(v);
                    out.extend(b"\r\n");
                    out
                }),
            prop::collection::vec(arb_key(), 1..5).prop_map(|ks| {
                let ks: Vec<String> = ks
                    .into_iter()
                    .map(|k| String::from_utf8(k).unwrap())
                    .collect();
                format!("get {}\r\n", ks.join(" ")).into_bytes()
            }),
            (arb_key(), 0u64..1000).prop_map(|(k, d)| format!(
                "incr {} {d}\r\n",
                String::from_utf8(k).unwrap()
            )
            .into_bytes()),
            arb_key().prop_map(
                |k| format!("mg {} v k q\r\n", String::from_utf8(k).unwrap()).into_bytes()
            ),
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_requests(
            reqs in prop::collection::vec(arb_request(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let wire: Vec<u8> = reqs.concat();
            let whole = parse_all(&wire);
            prop_assert_eq!(whole.len(), reqs.len());
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut p = Parser::new(McLimits::default());
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut last = 0;
            for cut in points.into_iter().chain([wire.len()]) {
                buf.extend_from_slice(&wire[last..cut]);
                last = cut;
                while let Some(x) = p.next(&mut buf, &Policy::default()) {
                    got.push(x);
                }
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn accepted_requests_respect_the_limits(input in prop::collection::vec(any::<u8>(), 0..300)) {
            let limits = McLimits { max_value: 16, max_line: 64, max_keys: 3 };
            let mut p = Parser::new(limits);
            let mut buf = BytesMut::from(&input[..]);
            while let Some(x) = p.next(&mut buf, &Policy::default()) {
                match x {
                    Parsed::Request(r) => {
                        prop_assert!(r.data.as_ref().is_none_or(|d| d.len() <= 16));
                        prop_assert!(r.keys().len() <= 3);
                        prop_assert!(r.keys().iter().all(|k| valid_key(k)));
                        if let Some(k) = &r.route_key { prop_assert!(!k.is_empty() && k.len() <= MAX_KEY); }
                        let mut out = BytesMut::new();
                        r.encode(&mut out, None);
                        // What goes upstream is exactly one request: its line has no stray CR/LF.
                        let line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
                        prop_assert!(!out[..line_end].contains(&b'\n'));
                    }
                    Parsed::Fatal(_) => break,
                    Parsed::Reply(_) => {}
                }
            }
        }
    }
}
