//! memcached text and meta protocol framing with limits.
//!
//! cachegate reads the client's stream exactly as memcached 1.6 reads it (measured against a
//! real memcached, see `tests/memcached_conformance.rs`): the same line ends, tokens, number
//! syntax, order of checks, error texts, and above all the same idea of where a data block ends.
//! memcached rejects some `ms` and storage lines *without* swallowing their data block (a key
//! token over 250 bytes, more than 16 flags, an unreadable length), so the block runs as the next
//! command; cachegate does the same, and then parses that block itself, under its policy. What
//! it forwards is re-encoded from the parsed tokens in canonical form (decimal numbers,
//! `noreply` handled by cachegate), so the node can only ever frame it one way: every forwarded
//! line is one memcached accepts as sent, at most 2048 bytes unless it is a get/gets.
//! Oversized values are discarded as they stream in, never buffered.
//!
//! Upstream replies are delimited by shape (`reply_len`), so each reply is forwarded whole or
//! not at all.

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What the listener's policy makes of a typed command name. The parser asks mid-line: a
/// refused storage command's data block is swallowed with it, and a renamed one is framed as
/// its real command. (The policy implements it; the parser knows no policy.)
pub trait Names {
    fn resolve(&self, typed: &[u8]) -> Named;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// Runs as typed.
    AsTyped,
    /// An alias: runs as this real command.
    Real(Bytes),
    /// Disabled (or the real name behind an alias): unknown to the client.
    Refused,
}

/// Every name as typed (no policy).
pub struct AsTyped;

impl Names for AsTyped {
    fn resolve(&self, _: &[u8]) -> Named {
        Named::AsTyped
    }
}

/// memcached's own key limit.
pub const MAX_KEY: usize = 250;
/// memcached's default item size limit (`-I 1m`).
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// Longest get/gets line cachegate buffers (memcached has no limit for those).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Most keys in one multi-get.
pub const DEFAULT_MAX_KEYS: usize = 1024;
/// memcached closes a connection that sends more than this without a newline, unless the line
/// is a get/gets (`try_read_command_ascii`).
pub const MEMCACHED_LINE_LIMIT: usize = 2048;
/// memcached parses at most this many tokens of a line (get/gets go on past it).
const MAX_TOKENS: usize = 23;
/// A meta command with this many tokens or more has too many flags.
const META_MAX_TOKENS: usize = 20;
/// Largest data block length memcached accepts (`INT_MAX - 2`).
const MAX_DATA_LEN: i64 = i32::MAX as i64 - 2;
/// The longest opaque (`O`) token.
const MAX_OPAQUE: usize = 32;

pub const ERROR: &[u8] = b"ERROR\r\n";
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const BAD_DATA_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
pub const TOO_MANY_KEYS: &[u8] = b"CLIENT_ERROR too many keys\r\n";
pub const BAD_DELETE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
pub const BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
pub const INVALID_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
pub const DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR duplicate flag\r\n";
pub const INVALID_OR_DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR invalid or duplicate flag\r\n";
pub const KEY_DECODE: &[u8] = b"CLIENT_ERROR error decoding key\r\n";
pub const FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";
pub const MG_FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags are too long\r\n";
pub const BAD_TOKEN: &[u8] = b"CLIENT_ERROR bad token in command line format\r\n";
pub const M_TOKEN_LENGTH: &[u8] = b"CLIENT_ERROR incorrect length for M token\r\n";
pub const BAD_INITIAL: &[u8] = b"CLIENT_ERROR invalid numeric initial value\r\n";
pub const BAD_DELTA_VALUE: &[u8] = b"CLIENT_ERROR invalid numeric delta value\r\n";
pub const OPAQUE_TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";
pub const MS_BAD_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ms M token\r\n";
pub const MA_BAD_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ma M token\r\n";

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
    /// Answered by cachegate: mn, stats, quit, and a gat without keys.
    MetaNoop,
    Empty,
    Stats,
    Quit,
}

/// The first byte of a binary-protocol request.
const BINARY_REQUEST: u8 = 0x80;
const BINARY_REFUSED: &[u8] =
    b"CLIENT_ERROR cachegate: the binary protocol is not supported (text and meta commands are)\r\n";

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

    /// The length of the request's line as `encode` writes it whole, without its `\r\n`.
    pub fn line_len(&self) -> usize {
        self.tokens.iter().map(|t| t.len()).sum::<usize>() + self.tokens.len().saturating_sub(1)
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

/// A one-key `get` or `gets` sent as the meta get that answers the same (`mg <key> v f`, and
/// `c` for gets). memcached writes every classic get's reply with a `sendmsg` of its own, even
/// within a pipeline, but a pipeline of meta gets' replies with one: behind a proxy whose
/// shared connections carry many clients' gets together, that is most of what a get costs the
/// node. Both count the same statistics (`cmd_get`, `get_hits`, `get_misses`) and bump the
/// item alike. `classic` turns the node's answer back into the classic reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaGet {
    /// `gets`: the reply carries the item's CAS value.
    pub cas: bool,
}

/// What a node answered a `MetaGet`, as the client's classic reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Classic {
    Reply,
    /// Not what memcached answers a meta get (`ERROR` from a server without meta commands, a
    /// `CLIENT_ERROR` for the flags, another status, a `VA` without the flags asked for):
    /// nothing written, and the node should get classic gets from now on.
    Incompatible,
}

impl MetaGet {
    /// The meta form of `req`, if it is a one-key get or gets.
    pub fn of(req: &McRequest) -> Option<Self> {
        (req.cmd == Cmd::Get && req.tokens.len() == 2).then(|| Self {
            cas: &req.tokens[0][..] == b"gets",
        })
    }

    /// Appends `mg <key> v f[ c]`. The reply's shape is `Shape::Meta`.
    pub fn encode(self, key: &[u8], out: &mut BytesMut) {
        out.put_slice(b"mg ");
        out.put_slice(key);
        out.put_slice(if self.cas { b" v f c\r\n" } else { b" v f\r\n" });
    }

    /// Appends the classic reply to the meta one (a complete `Shape::Meta` reply): `VA <n>
    /// f<flags> [c<cas>]` and its block become `VALUE <key> <flags> <n> [<cas>]`, the block
    /// and `END`; `EN` becomes `END`; a `SERVER_ERROR` stays as it is.
    pub fn classic(self, key: &[u8], reply: &[u8], out: &mut BytesMut) -> Classic {
        if reply == b"EN\r\n" {
            out.put_slice(b"END\r\n");
            return Classic::Reply;
        }
        if reply.starts_with(b"SERVER_ERROR ") {
            out.put_slice(reply);
            return Classic::Reply;
        }
        let line = reply
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(reply.len());
        let mut words = reply[..line].split(|&b| b == b' ');
        if words.next() != Some(b"VA") {
            return Classic::Incompatible;
        }
        let size = words.next().unwrap_or(b"");
        let (mut flags, mut cas): (Option<&[u8]>, Option<&[u8]>) = (None, None);
        for word in words {
            match word.split_first() {
                Some((b'f', v)) => flags = Some(v),
                Some((b'c', v)) => cas = Some(v),
                _ => {}
            }
        }
        let digits = |v: &&[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
        let (Some(flags), true) = (flags.filter(digits), digits(&size)) else {
            return Classic::Incompatible;
        };
        let cas = match cas.filter(digits) {
            Some(cas) => cas,
            None if self.cas => return Classic::Incompatible,
            None => b"",
        };
        out.reserve(reply.len() + key.len() + 32);
        out.put_slice(b"VALUE ");
        out.put_slice(key);
        for part in [flags, size] {
            out.put_u8(b' ');
            out.put_slice(part);
        }
        if self.cas {
            out.put_u8(b' ');
            out.put_slice(cas);
        }
        // The line's CRLF, the block and its CRLF, as the node sent them.
        out.put_slice(&reply[line..]);
        out.put_slice(b"END\r\n");
        Classic::Reply
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
    /// Close without an answer, as memcached does for a line over its limit.
    Close,
    /// An HTTP request line: closed without an answer (as memcached does), and a security
    /// event (a web page making a browser post to the memcached port).
    CrossProtocol,
}

/// A streaming request parser. It keeps one piece of state between calls: how much of an
/// oversized or refused data block is still to be discarded.
#[derive(Debug, Default)]
pub struct Parser {
    limits: McLimits,
    swallow: u64,
    after_swallow: Option<&'static [u8]>,
    /// The connection's first byte has been seen (memcached picks the protocol by it).
    started: bool,
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
    pub fn next(&mut self, buf: &mut BytesMut, policy: &impl Names) -> Option<Parsed> {
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
        // A binary-protocol client (its magic byte first on the connection, where memcached
        // picks the protocol): not served, and no line would ever end its request; said and
        // closed at once (it used to wait for a newline up to the partial-request timeout).
        // Later, the byte is a text command's like any other (a value block read as a line
        // after a refused storage command, a pickled value).
        if !self.started {
            match buf.first() {
                None => return None,
                Some(&BINARY_REQUEST) => {
                    let n = buf.len();
                    buf.advance(n);
                    return Some(Parsed::Fatal(BINARY_REFUSED));
                }
                Some(_) => self.started = true,
            }
        }
        match self.step(buf, policy) {
            Step::NeedMore => None,
            Step::Done(parsed, consumed) => {
                buf.advance(consumed);
                // memcached closes a connection that sends more than its line limit before a
                // newline (when the line straddles two of its reads): a line that the client's
                // kept within it may come out longer as forwarded (a bare `\n` gets its `\r`,
                // a renamed command its longer real name, a normalised number a digit), and is
                // never sent. Get lines are exempt, as memcached reads their keys as they come.
                if let Parsed::Request(req) = &parsed {
                    if req.line_len() + 1 > MEMCACHED_LINE_LIMIT
                        && !matches!(&req.tokens[0][..], b"get" | b"gets")
                    {
                        return Some(Parsed::Close);
                    }
                }
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

    fn step(&self, buf: &[u8], policy: &impl Names) -> Step {
        let Some(nl) = buf
            .iter()
            .take(self.limits.max_line + 2)
            .position(|&b| b == b'\n')
        else {
            // memcached closes a connection that sends more than its limit without a newline,
            // unless the line is a get/gets (bounded here by max_line instead).
            if buf.len() > MEMCACHED_LINE_LIMIT && !is_get_line(buf) {
                return Step::Done(Parsed::Close, buf.len());
            }
            if buf.len() > self.limits.max_line {
                return Step::Done(Parsed::Fatal(LINE_TOO_LONG), buf.len());
            }
            return Step::NeedMore;
        };
        let line_len = nl + 1;
        // memcached serves a longer line only when it happens to arrive in one read: refused
        // here always, so that no line over the limit is ever forwarded.
        if nl > MEMCACHED_LINE_LIMIT && !is_get_line(buf) {
            return Step::Done(Parsed::Close, line_len);
        }
        let mut line = &buf[..nl];
        if line.len() >= 2 && line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        // memcached reads a line as a C string: nothing after a NUL counts.
        if let Some(nul) = memchr::memchr(0, line) {
            line = &line[..nul];
        }
        let tokens: Vec<&[u8]> = line
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
            .collect();
        let Some(&typed) = tokens.first() else {
            return Step::Done(Parsed::Reply(ERROR), line_len);
        };
        // Beyond 23 tokens memcached reads nothing more (get/gets go on for keys).
        let n = tokens.len().min(MAX_TOKENS);
        let (real, refused) = match policy.resolve(typed) {
            Named::AsTyped => (typed.to_vec(), false),
            Named::Real(real) => (real.to_ascii_lowercase(), false),
            Named::Refused => (typed.to_vec(), true),
        };
        let known = is_known(&real);
        if !known && is_http(typed, &tokens[..n]) {
            return Step::Done(Parsed::CrossProtocol, line_len);
        }
        let rest = &buf[line_len..];
        if refused || !known {
            // A refused storage command's block is consumed with it, so that the value is
            // never read as a command (cachegate's own choice: a disabled name is unknown).
            if refused && is_storage(&real) {
                let len_at = if real == b"ms" { 2 } else { 4 };
                if let Some(len) = tokens.get(len_at).and_then(|t| data_len(t)) {
                    return Step::Swallow {
                        line: line_len,
                        data: len as u64 + 2,
                        reply: ERROR,
                    };
                }
            }
            return Step::Done(Parsed::Reply(ERROR), line_len);
        }
        let args = &tokens[1..n];
        match &real[..] {
            b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
                self.storage(&real, args, rest, line_len)
            }
            b"ms" => self.meta_set(args, rest, line_len),
            b"get" | b"gets" | b"gat" | b"gats" => Step::Done(
                match self.retrieval(&real, &tokens[1..]) {
                    Ok(req) => Parsed::Request(req),
                    Err(reply) => Parsed::Reply(reply),
                },
                line_len,
            ),
            _ => Step::Done(
                match self.simple(&real, args) {
                    Ok(req) => Parsed::Request(req),
                    Err(reply) => Parsed::Reply(reply),
                },
                line_len,
            ),
        }
    }

    /// Waits for a data block of `len` bytes after the line, then checks its `\r\n`.
    fn with_block(request: McRequest, len: usize, rest: &[u8], line_len: usize) -> Step {
        let block = len + 2;
        if rest.len() < block {
            return Step::NeedMore;
        }
        if &rest[len..block] != b"\r\n" {
            // As memcached: the block is consumed, the error answered, and what follows is
            // read as commands again.
            let reply = if request.quiet && request.cmd == Cmd::Storage {
                &b""[..]
            } else {
                BAD_DATA_CHUNK
            };
            return Step::Done(Parsed::Reply(reply), line_len + block);
        }
        Step::Done(
            Parsed::Request(McRequest {
                data: Some(Bytes::copy_from_slice(&rest[..len])),
                ..request
            }),
            line_len + block,
        )
    }

    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]`,
    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`, checked in memcached's
    /// order. Only a value too large swallows its block; every other refusal leaves it to be
    /// read as the next command, as memcached does.
    fn storage(&self, name: &[u8], args: &[&[u8]], rest: &[u8], line_len: usize) -> Step {
        let cas = name == b"cas";
        let (min, max) = if cas { (5, 6) } else { (4, 5) };
        if args.len() < min || args.len() > max {
            return Step::Done(Parsed::Reply(ERROR), line_len);
        }
        // Only an exact last `noreply` counts; another token in its place is ignored.
        let noreply = args.last() == Some(&&b"noreply"[..]);
        let refuse = |reply: &'static [u8]| {
            Step::Done(Parsed::Reply(if noreply { b"" } else { reply }), line_len)
        };
        let key = args[0];
        if key.len() > MAX_KEY {
            return refuse(BAD_FORMAT);
        }
        let (Some(flags), Some(exptime), Some(len)) = (
            c_strtoul(args[1]).map(|f| f as u32),
            c_strtol(args[2]).map(|e| e as i32),
            c_strtol(args[3]).map(|l| i64::from(l as i32)),
        ) else {
            return refuse(BAD_FORMAT);
        };
        let cas_unique = if cas {
            match c_strtoul(args[4]) {
                Some(c) => Some(c),
                None => return refuse(BAD_FORMAT),
            }
        } else {
            None
        };
        if !(0..=MAX_DATA_LEN).contains(&len) {
            return refuse(BAD_FORMAT);
        }
        let len = len as usize;
        if len > self.limits.max_value {
            return Step::Swallow {
                line: line_len,
                data: len as u64 + 2,
                reply: if noreply { b"" } else { TOO_LARGE },
            };
        }
        let mut tokens = vec![
            Bytes::copy_from_slice(name),
            Bytes::copy_from_slice(key),
            number(flags),
            number(exptime),
            number(len),
        ];
        tokens.extend(cas_unique.map(number));
        let request = McRequest {
            cmd: Cmd::Storage,
            tokens,
            data: None,
            key_at: 1,
            route_key: Some(Bytes::copy_from_slice(key)),
            quiet: noreply,
        };
        Self::with_block(request, len, rest, line_len)
    }

    /// `ms <key> <datalen> <flags>*`, checked in memcached's order: the first five refusals
    /// leave the block to be read as the next command; the flag checks after them swallow it.
    fn meta_set(&self, args: &[&[u8]], rest: &[u8], line_len: usize) -> Step {
        let done = |reply: &'static [u8]| Step::Done(Parsed::Reply(reply), line_len);
        let Some(&key) = args.first() else {
            return done(ERROR);
        };
        if key.len() > MAX_KEY || args.len() < 2 {
            return done(BAD_FORMAT);
        }
        if args.len() + 1 >= META_MAX_TOKENS {
            return done(FLAGS_TOO_LONG);
        }
        let Some(len) = data_len(args[1]) else {
            return done(BAD_FORMAT);
        };
        let swallow = |reply: &'static [u8]| Step::Swallow {
            line: line_len,
            data: len as u64 + 2,
            reply,
        };
        let flags = match meta_flags(key, &args[2..], b"ms") {
            Ok(flags) => flags,
            Err(reply) => return swallow(reply),
        };
        if len > self.limits.max_value {
            return swallow(TOO_LARGE);
        }
        let mut tokens = vec![
            Bytes::from_static(b"ms"),
            Bytes::copy_from_slice(key),
            number(len),
        ];
        tokens.extend(args[2..].iter().map(|t| Bytes::copy_from_slice(t)));
        let request = McRequest {
            cmd: Cmd::MetaSet,
            tokens,
            data: None,
            key_at: 1,
            route_key: Some(flags.route_key),
            quiet: flags.quiet,
        };
        Self::with_block(request, len, rest, line_len)
    }

    /// get/gets `<key>*`, gat/gats `<exptime> <key>*`: every key of the line (memcached reads
    /// past its token limit for these).
    fn retrieval(&self, name: &[u8], args: &[&[u8]]) -> Result<McRequest, &'static [u8]> {
        let touch = name.starts_with(b"gat");
        if args.is_empty() {
            return Err(ERROR);
        }
        let mut tokens = vec![Bytes::copy_from_slice(name)];
        let keys = if touch {
            let exptime = c_strtol(args[0]).ok_or(BAD_EXPTIME)? as i32;
            tokens.push(number(exptime));
            &args[1..]
        } else {
            args
        };
        if keys.len() > self.limits.max_keys {
            return Err(TOO_MANY_KEYS);
        }
        if keys.iter().any(|k| k.len() > MAX_KEY) {
            return Err(BAD_FORMAT);
        }
        if keys.is_empty() {
            // `gat 0`: memcached answers the empty result.
            return Ok(McRequest {
                cmd: Cmd::Empty,
                tokens,
                data: None,
                key_at: 1,
                route_key: None,
                quiet: false,
            });
        }
        let key_at = tokens.len();
        tokens.extend(keys.iter().map(|k| Bytes::copy_from_slice(k)));
        Ok(McRequest {
            cmd: if touch { Cmd::GetAndTouch } else { Cmd::Get },
            tokens,
            data: None,
            key_at,
            route_key: None,
            quiet: false,
        })
    }

    /// The other commands, each as memcached's handler reads it; forwarded canonically.
    fn simple(&self, name: &[u8], args: &[&[u8]]) -> Result<McRequest, &'static [u8]> {
        let noreply = args.last() == Some(&&b"noreply"[..]);
        let silent = |reply: &'static [u8]| if noreply { &b""[..] } else { reply };
        let req = |cmd, tokens: Vec<Bytes>, route_key: Option<&[u8]>, quiet| McRequest {
            cmd,
            tokens,
            data: None,
            key_at: 1,
            route_key: route_key.map(Bytes::copy_from_slice),
            quiet,
        };
        let name_b = Bytes::copy_from_slice(name);
        let b = |t: &[u8]| Bytes::copy_from_slice(t);
        match name {
            b"delete" => {
                if args.is_empty() || args.len() > 3 {
                    return Err(ERROR);
                }
                // memcached reads `noreply` only after the key: `delete noreply` deletes the
                // key "noreply", and answers.
                let noreply = noreply && args.len() > 1;
                let silent = |reply: &'static [u8]| if noreply { &b""[..] } else { reply };
                if args.len() > 1 {
                    let zero = args[1] == b"0";
                    let valid = (args.len() == 2 && (zero || noreply))
                        || (args.len() == 3 && zero && noreply);
                    if !valid {
                        return Err(silent(BAD_DELETE));
                    }
                }
                if args[0].len() > MAX_KEY {
                    return Err(silent(BAD_FORMAT));
                }
                Ok(req(
                    Cmd::KeyLine,
                    vec![name_b, b(args[0])],
                    Some(args[0]),
                    noreply,
                ))
            }
            b"incr" | b"decr" => {
                if !(2..=3).contains(&args.len()) {
                    return Err(ERROR);
                }
                if args[0].len() > MAX_KEY {
                    return Err(silent(BAD_FORMAT));
                }
                let delta = c_strtoul(args[1]).ok_or(silent(BAD_DELTA))?;
                Ok(req(
                    Cmd::KeyLine,
                    vec![name_b, b(args[0]), number(delta)],
                    Some(args[0]),
                    noreply,
                ))
            }
            b"touch" => {
                if !(2..=3).contains(&args.len()) {
                    return Err(ERROR);
                }
                if args[0].len() > MAX_KEY {
                    return Err(silent(BAD_FORMAT));
                }
                let exptime = c_strtol(args[1]).ok_or(silent(BAD_EXPTIME))? as i32;
                Ok(req(
                    Cmd::KeyLine,
                    vec![name_b, b(args[0]), number(exptime)],
                    Some(args[0]),
                    noreply,
                ))
            }
            b"flush_all" => {
                if args.len() > 2 {
                    return Err(ERROR);
                }
                // The delay is read unless the only argument is `noreply`.
                let mut tokens = vec![name_b];
                if args.len() != usize::from(noreply) {
                    let delay = c_strtol(args[0]).ok_or(silent(BAD_EXPTIME))? as i32;
                    tokens.push(number(delay));
                }
                Ok(req(Cmd::Broadcast, tokens, None, noreply))
            }
            b"verbosity" => {
                if !(1..=2).contains(&args.len()) {
                    return Err(ERROR);
                }
                let level = c_strtoul(args[0]).ok_or(silent(BAD_FORMAT))? as u32;
                Ok(req(
                    Cmd::Broadcast,
                    vec![name_b, number(level)],
                    None,
                    noreply,
                ))
            }
            // Arguments are ignored by memcached, `noreply` too.
            b"version" => Ok(req(Cmd::Version, vec![name_b], None, false)),
            b"quit" => Ok(req(Cmd::Quit, vec![name_b], None, false)),
            b"mn" => Ok(req(Cmd::MetaNoop, vec![name_b], None, false)),
            b"stats" => Ok(req(
                Cmd::Stats,
                std::iter::once(name_b)
                    .chain(args.iter().map(|t| b(t)))
                    .collect(),
                None,
                false,
            )),
            b"mg" | b"md" | b"ma" => self.meta(name, args),
            b"me" => {
                // Only an exact `b` after the key means base64; nothing else is read.
                let Some(&key) = args.first().filter(|k| k.len() <= MAX_KEY) else {
                    return Err(BAD_FORMAT);
                };
                let base64 = args.get(1) == Some(&&b"b"[..]);
                let route_key = if base64 {
                    decode_key(key).map_err(|()| BAD_FORMAT)?
                } else {
                    Bytes::copy_from_slice(key)
                };
                let mut tokens = vec![name_b, b(key)];
                if base64 {
                    tokens.push(Bytes::from_static(b"b"));
                }
                Ok(McRequest {
                    cmd: Cmd::Meta,
                    tokens,
                    data: None,
                    key_at: 1,
                    route_key: Some(route_key),
                    quiet: false,
                })
            }
            _ => Err(ERROR),
        }
    }

    /// mg / md / ma `<key> <flags>*`.
    fn meta(&self, name: &[u8], args: &[&[u8]]) -> Result<McRequest, &'static [u8]> {
        let Some(&key) = args.first() else {
            return Err(ERROR);
        };
        if key.len() > MAX_KEY {
            return Err(BAD_FORMAT);
        }
        if args.len() + 1 >= META_MAX_TOKENS {
            return Err(if name == b"mg" {
                MG_FLAGS_TOO_LONG
            } else {
                FLAGS_TOO_LONG
            });
        }
        let flags = meta_flags(key, &args[1..], name)?;
        Ok(McRequest {
            cmd: Cmd::Meta,
            tokens: std::iter::once(name)
                .chain(args.iter().copied())
                .map(Bytes::copy_from_slice)
                .collect(),
            data: None,
            key_at: 1,
            route_key: Some(flags.route_key),
            quiet: flags.quiet,
        })
    }
}

/// What cachegate needs of a meta command's flags.
struct MetaFlags {
    quiet: bool,
    route_key: Bytes,
}

/// memcached's `_meta_flag_preparse` and the checks after it: a flag is its first byte; a
/// repeated one or a byte past ASCII is a duplicate and an unknown one invalid (both at once);
/// bad values are remembered, the last one winning, and answered after the whole line is read.
/// md and ma answer every flag error alike; `O` over 32 bytes and an unknown `M` mode come last.
fn meta_flags(key: &[u8], flags: &[&[u8]], cmd: &[u8]) -> Result<MetaFlags, &'static [u8]> {
    let plain_errors = matches!(cmd, b"md" | b"ma");
    let hard = |reply| {
        if plain_errors {
            INVALID_OR_DUPLICATE_FLAG
        } else {
            reply
        }
    };
    let mut seen = [false; 128];
    let mut soft: Option<&'static [u8]> = None;
    let mut quiet = false;
    let mut base64 = false;
    let mut mode = None;
    let mut opaque_too_long = false;
    let mut decoded = None;
    for flag in flags {
        let first = flag[0];
        if first >= 127 || seen[usize::from(first)] {
            return Err(hard(DUPLICATE_FLAG));
        }
        seen[usize::from(first)] = true;
        let value = &flag[1..];
        match first {
            // Decoded where the flag stands: a later bad value's message wins over its own.
            b'b' => {
                base64 = true;
                match decode_key(key) {
                    Ok(k) => decoded = Some(k),
                    Err(()) => soft = Some(KEY_DECODE),
                }
            }
            b'q' => quiet = true,
            b'N' | b'T' | b'R' if c_strtol(value).is_none() => soft = Some(BAD_TOKEN),
            b'C' if c_strtoul(value).is_none() => soft = Some(BAD_TOKEN),
            // A bad `F` sets no message of its own: an earlier one stands.
            b'F' if c_strtoul(value).is_none() => soft = soft.or(Some(BAD_FORMAT)),
            b'M' if flag.len() != 2 => soft = Some(M_TOKEN_LENGTH),
            b'M' => mode = Some(flag[1]),
            b'J' if c_strtoul(value).is_none() => soft = Some(BAD_INITIAL),
            b'D' if c_strtoul(value).is_none() => soft = Some(BAD_DELTA_VALUE),
            b'O' => opaque_too_long |= flag.len() > MAX_OPAQUE,
            b'N' | b'T' | b'R' | b'C' | b'F' | b'J' | b'D' | b'l' | b'P' | b'L' | b'k' | b's'
            | b't' | b'c' | b'f' | b'v' | b'h' | b'u' | b'I' => {}
            _ => return Err(hard(INVALID_FLAG)),
        }
    }
    let route_key = match decoded {
        Some(k) if base64 => k,
        _ => Bytes::copy_from_slice(key),
    };
    if let Some(reply) = soft {
        return Err(hard(reply));
    }
    // The mode is checked before the opaque's length (measured on memcached 1.6.18).
    match (cmd, mode) {
        (b"ms", Some(m)) if !matches!(m, b'E' | b'A' | b'P' | b'R' | b'S') => {
            return Err(MS_BAD_MODE)
        }
        (b"ma", Some(m)) if !matches!(m, b'I' | b'i' | b'+' | b'D' | b'd' | b'-') => {
            return Err(MA_BAD_MODE)
        }
        _ => {}
    }
    if opaque_too_long && !plain_errors {
        return Err(OPAQUE_TOO_LONG);
    }
    Ok(MetaFlags { quiet, route_key })
}

/// A base64 key (meta `b` flag), decoded for routing. Only canonical, padded base64 is
/// accepted (memcached's decoder is laxer; what it alone accepts is refused here, never
/// routed by a different key than the node would use). Nor a key memcached could not print in
/// a line: it echoes a key it did not store as binary as it is (`me`, and `mg`/`ma` with `k`
/// after `ma ... b N` made the item), and a decoded `\r\n` would end that reply line early, the
/// rest read as the next client's reply on a shared connection.
fn decode_key(key: &[u8]) -> Result<Bytes, ()> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| ())?;
    if decoded.is_empty() || !decoded.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err(());
    }
    Ok(Bytes::from(decoded))
}

/// Whether `name` is a memcached command (cachegate's or the node's own admin ones): not
/// available as a new name for a renamed command.
pub fn is_command(name: &[u8]) -> bool {
    is_known(name)
        || matches!(
            name,
            b"lru_crawler"
                | b"watch"
                | b"shutdown"
                | b"slabs"
                | b"cache_memlimit"
                | b"debugtime"
                | b"lru"
                | b"extstore"
                | b"misbehave"
                | b"bget"
        )
}

/// The known command names (after renaming). Anything else is unknown: `ERROR`, never
/// forwarded.
fn is_known(name: &[u8]) -> bool {
    matches!(
        name,
        b"set"
            | b"add"
            | b"replace"
            | b"append"
            | b"prepend"
            | b"cas"
            | b"ms"
            | b"get"
            | b"gets"
            | b"gat"
            | b"gats"
            | b"delete"
            | b"incr"
            | b"decr"
            | b"touch"
            | b"flush_all"
            | b"verbosity"
            | b"version"
            | b"quit"
            | b"stats"
            | b"mn"
            | b"mg"
            | b"md"
            | b"ma"
            | b"me"
    )
}

fn is_storage(name: &[u8]) -> bool {
    matches!(
        name,
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" | b"ms"
    )
}

/// memcached's rule for an HTTP request on its port: an unknown command (one that does not
/// start like any of its own) whose last read token starts with `HTTP/`.
fn is_http(name: &[u8], tokens: &[&[u8]]) -> bool {
    let own_start = matches!(name[0], b'g' | b's' | b'a' | b'c' | b'i' | b'd' | b't')
        || (name.len() == 2 && name[0] == b'm');
    name.len() >= 2 && !own_start && tokens.last().is_some_and(|t| t.starts_with(b"HTTP/"))
}

/// Whether a line (maybe incomplete) is a get/gets, which memcached lets run past its line
/// limit: up to 100 spaces, then `get ` or `gets `.
fn is_get_line(buf: &[u8]) -> bool {
    let spaces = buf.iter().take(101).take_while(|&&b| b == b' ').count();
    if spaces > 100 {
        return false;
    }
    let rest = &buf[spaces..];
    rest.starts_with(b"get ") || rest.starts_with(b"gets ")
}

/// A data block's length as memcached reads it: a C `long`, taken as a 32-bit `int`, from 0 to
/// `INT_MAX - 2`.
fn data_len(token: &[u8]) -> Option<usize> {
    let len = i64::from(c_strtol(token)? as i32);
    (0..=MAX_DATA_LEN).contains(&len).then_some(len as usize)
}

fn number(n: impl std::fmt::Display) -> Bytes {
    Bytes::from(n.to_string())
}

/// The digits of a C `strtol`/`strtoul` in base 10 as memcached's `safe_strto*` accept them:
/// leading white space, an optional sign, at least one digit, then the end of the token or
/// white space (anything after that is ignored); a value that does not fit 64 bits is refused.
fn c_number(token: &[u8]) -> Option<(bool, u64)> {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = token.iter().take_while(|b| space(b)).count();
    let negative = match token.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = token[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &d in &token[i..i + digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    match token.get(i + digits) {
        None => Some((negative, value)),
        Some(b) if space(b) => Some((negative, value)),
        Some(_) => None,
    }
}

/// `safe_strtol`: a signed 64-bit value.
fn c_strtol(token: &[u8]) -> Option<i64> {
    let (negative, value) = c_number(token)?;
    if negative {
        0i64.checked_sub_unsigned(value)
    } else {
        i64::try_from(value).ok()
    }
}

/// `safe_strtoul` / `safe_strtoull`: an unsigned 64-bit value. `strtoull` negates a negative
/// one modulo 2^64, and memcached refuses the result only when it reads negative as a signed
/// number: `-1` is refused, `-18446744073709551615` is 1.
fn c_strtoul(token: &[u8]) -> Option<u64> {
    let (negative, v) = c_number(token)?;
    if !negative {
        return Some(v);
    }
    let wrapped = v.wrapping_neg();
    (wrapped as i64 >= 0).then_some(wrapped)
}

/// A length in an upstream reply: digits only (the node writes them canonically).
fn parse_num<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    if token.is_empty() || token.len() > 20 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// The largest item memcached stores (`ITEM_SIZE_MAX_UPPER_LIMIT`: `-I` goes up to 1 GiB).
pub const MAX_ITEM_BYTES: usize = 1 << 30;

/// Malformed upstream output.
#[derive(Debug, thiserror::Error)]
pub enum McReplyError {
    #[error("malformed reply from upstream: {0}")]
    Malformed(String),
    #[error("reply from upstream larger than {0} bytes")]
    TooLarge(usize),
}

/// The status words of memcached's meta replies other than `VA` (`OK` is `HD` under
/// `-o meta_response_old`). Anything else where a meta reply is due means the stream is out of
/// step.
const META_STATUS: [&[u8]; 8] = [b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME", b"OK"];

/// What a line of an upstream reply of `shape` says: the reply ends with it, a value block
/// of `len` bytes (with its `\r\n`) follows (the reply's last part for a meta `VA`), or more
/// lines follow. The reply grammar, in one place for `reply_len` and `McSkip`.
enum LineStep {
    End,
    Block { len: usize, last: bool },
    More,
}

fn line_step(shape: Shape, text: &[u8]) -> Result<LineStep, McReplyError> {
    let mut words = text.split(|&b| b == b' ');
    let word = words.next().unwrap_or(b"");
    let is_error = matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
    // The announced length of a value block, with its `\r\n`. memcached stores no item over
    // 1 GiB (`-I` stops there): a larger size is no reply of memcached's, malformed, rather
    // than a too-large value passed over for as long as a hostile node keeps sending (a size
    // near usize::MAX must not wrap around either).
    let block = |size: Option<&[u8]>| {
        size.and_then(parse_num::<usize>)
            .filter(|&n| n <= MAX_ITEM_BYTES)
            .map(|n| n + 2)
            .ok_or_else(|| malformed(text))
    };
    Ok(match shape {
        Shape::Line => LineStep::End,
        Shape::Values if is_error || text == b"END" => LineStep::End,
        Shape::Values if word == b"VALUE" => LineStep::Block {
            len: block(words.nth(2))?,
            last: false,
        },
        Shape::MetaThenNoop if text == b"MN" => LineStep::End,
        Shape::Meta | Shape::MetaThenNoop if word == b"VA" => LineStep::Block {
            len: block(words.next())?,
            last: shape == Shape::Meta,
        },
        Shape::Meta if is_error || META_STATUS.contains(&word) => LineStep::End,
        Shape::MetaThenNoop if is_error || META_STATUS.contains(&word) => LineStep::More,
        _ => return Err(malformed(text)),
    })
}

/// Delimits one upstream reply of `shape` at the front of `buf`: its length when complete.
pub fn reply_len(buf: &[u8], shape: Shape, max: usize) -> Result<Option<usize>, McReplyError> {
    let mut pos = 0;
    loop {
        let Some(line) = line_at(buf, pos, max)? else {
            return Ok(None);
        };
        let text = &buf[pos..pos + line - 2];
        let (end, last) = match line_step(shape, text)? {
            // (A meta reply's status line counts against the limit too.)
            LineStep::End if shape == Shape::Meta && pos + line > max => {
                return Err(McReplyError::TooLarge(max))
            }
            LineStep::End => return Ok(Some(pos + line)),
            LineStep::More if pos + line > max => return Err(McReplyError::TooLarge(max)),
            LineStep::More => {
                pos += line;
                continue;
            }
            LineStep::Block { len, last } => (
                (pos + line)
                    .checked_add(len)
                    .ok_or_else(|| malformed(text))?,
                last,
            ),
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
        if last {
            return Ok(Some(end));
        }
        pos = end;
    }
}

/// Passes over one upstream reply of a shape as it arrives, without holding it: a reply too
/// large to hand on (`limits.max_reply_bytes`) is read and dropped piece by piece, and the
/// connection goes on with the reply after it. Lines are still read whole (they are short:
/// `DEFAULT_MAX_LINE`), value blocks by their announced length.
#[derive(Debug, Clone, Copy)]
pub struct McSkip {
    shape: Shape,
    /// Bytes of a value block (with its `\r\n`) still to come.
    block: usize,
    /// The reply ends with the block being passed (a meta `VA`).
    last_block: bool,
}

impl McSkip {
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            block: 0,
            last_block: false,
        }
    }

    /// Consumes what it can from the front of `buf`: how many bytes, and whether the reply
    /// has ended with them.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), McReplyError> {
        let mut pos = 0;
        loop {
            if self.block > 0 {
                let n = self.block.min(buf.len() - pos);
                pos += n;
                self.block -= n;
                if self.block > 0 {
                    return Ok((pos, false));
                }
                if self.last_block {
                    return Ok((pos, true));
                }
            }
            let Some(line) = line_at(buf, pos, DEFAULT_MAX_LINE)? else {
                return Ok((pos, false));
            };
            let text = &buf[pos..pos + line - 2];
            pos += line;
            match line_step(self.shape, text)? {
                LineStep::End => return Ok((pos, true)),
                LineStep::More => {}
                LineStep::Block { len, last } => {
                    self.block = len;
                    self.last_block = last;
                }
            }
        }
    }
}

/// The length of the `\r\n`-terminated line at `pos` (including it), if complete.
fn line_at(buf: &[u8], pos: usize, max: usize) -> Result<Option<usize>, McReplyError> {
    match buf[pos..].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i + 2)),
        // Past a reply limit below the longest line: cachegate's limit. Past the longest line
        // itself: no memcached reply (its lines are short), malformed.
        None if buf.len() - pos > max && max < DEFAULT_MAX_LINE => Err(McReplyError::TooLarge(max)),
        None if buf.len() - pos > DEFAULT_MAX_LINE => Err(McReplyError::Malformed(
            "a line without CRLF in 64 KiB".into(),
        )),
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
    use crate::policy::Policy;
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
        // A refused storage line does not swallow its block: `z` is read next (ERROR).
        assert_eq!(
            parse_all(b"set k x 0 1 noreply\r\nz\r\n"),
            vec![Parsed::Reply(b""), Parsed::Reply(ERROR)]
        );
        assert_eq!(parse_all(b"bogus noreply\r\n"), vec![Parsed::Reply(ERROR)]);
        // Meta commands have no `noreply`: it is an invalid flag, answered.
        assert_eq!(
            parse_all(b"mg k noreply\r\n"),
            vec![Parsed::Reply(INVALID_FLAG)]
        );
    }

    #[test]
    fn only_the_exact_noreply_token_counts() {
        // Another token where `noreply` goes is ignored, as memcached ignores it.
        let r = req(b"set k 0 0 1 NOREPLY\r\nx\r\n");
        assert!(!r.quiet);
        assert_eq!(encoded(&r), b"set k 0 0 1\r\nx\r\n");
        assert_eq!(
            parse_all(b"delete k norepl\r\n"),
            vec![Parsed::Reply(BAD_DELETE)]
        );
        assert!(req(b"delete k noreply\r\n").quiet);
        assert!(!req(b"delete k\r\n").quiet);
        assert!(req(b"delete k 0 noreply\r\n").quiet);
        assert_eq!(encoded(&req(b"incr k 1 x\r\n")), b"incr k 1\r\n");
    }

    /// memcached swallows a storage command's block only when the value is too large; every
    /// other refusal leaves the block to be read as the next command. cachegate frames it the
    /// same way, and the block it then reads is a command under cachegate's own policy.
    #[test]
    fn refused_storage_lines_frame_as_memcached_does() {
        let long_key = format!("set {} 0 0 9\r\nflush_all\r\nget a\r\n", "k".repeat(251));
        let out = parse_all(long_key.as_bytes());
        assert_eq!(out[0], Parsed::Reply(BAD_FORMAT));
        assert!(
            matches!(&out[1], Parsed::Request(r) if r.cmd == Cmd::Broadcast),
            "{out:?}"
        );
        assert!(
            matches!(&out[2], Parsed::Request(r) if r.cmd == Cmd::Get),
            "{out:?}"
        );
        for (line, reply) in [
            ("set k x 0 9", BAD_FORMAT),
            ("set k 0 x 9", BAD_FORMAT),
            ("set k -1 0 9", BAD_FORMAT),
            ("set k 0 0 abc", BAD_FORMAT),
            ("set k 0 0 2147483646", BAD_FORMAT),
            ("set k 0 0", ERROR),
            ("set k 0 0 9 extra more", ERROR),
            ("cas k 0 0 9", ERROR),
        ] {
            let input = format!("{line}\r\nversion\r\n");
            let out = parse_all(input.as_bytes());
            assert_eq!(out[0], Parsed::Reply(reply), "{line}");
            assert!(
                matches!(&out[1], Parsed::Request(r) if r.cmd == Cmd::Version),
                "{line}: {out:?}"
            );
        }
        // A bad chunk: the block is consumed, the error answered, the rest read on.
        assert_eq!(
            parse_all(b"set k 0 0 3\r\nabcd\r\nversion\r\n")[..2],
            [Parsed::Reply(BAD_DATA_CHUNK), Parsed::Reply(ERROR)]
        );
        // Numbers as C reads them, forwarded canonically; 32-bit fields wrap as in memcached.
        assert_eq!(
            encoded(&req(b"set k +5 07 +3\r\nabc\r\n")),
            b"set k 5 7 3\r\nabc\r\n"
        );
        assert_eq!(
            encoded(&req(b"set k 0 0 4294967299\r\nabc\r\n")),
            b"set k 0 0 3\r\nabc\r\n"
        );
    }

    /// The reported smuggling: memcached refuses an `ms` whose raw key token is over 250 bytes
    /// (before decoding base64) or that has more than 16 flags, and does not swallow the block.
    /// cachegate refuses the same lines the same way, so the block is read (and judged) as a
    /// command here, never forwarded as data the node would run.
    #[test]
    fn meta_set_refusals_frame_as_memcached_does() {
        let key = base64::engine::general_purpose::STANDARD.encode(vec![b'k'; 201]);
        assert_eq!(key.len(), 268);
        let smuggle = format!("ms {key} 9 b\r\nflush_all\r\n");
        let policy = Policy::new(&["flush_all".into()], &[]).unwrap();
        let mut p = Parser::new(McLimits::default());
        let mut buf = BytesMut::from(smuggle.as_bytes());
        assert_eq!(p.next(&mut buf, &policy), Some(Parsed::Reply(BAD_FORMAT)));
        assert_eq!(
            p.next(&mut buf, &policy),
            Some(Parsed::Reply(ERROR)),
            "disabled"
        );
        let flags: Vec<String> = (0..17).map(|i| format!("O{i}")).collect();
        let forty = format!("ms k 7 {}\r\nversion\r\n", flags.join(" "));
        let out = parse_all(forty.as_bytes());
        assert_eq!(out[0], Parsed::Reply(FLAGS_TOO_LONG));
        assert!(matches!(&out[1], Parsed::Request(r) if r.cmd == Cmd::Version));
        let sixteen = format!(
            "ms k 7 {}\r\nversion\r\n",
            flags[..16].join(" ").replace("O1 ", "k ")
        );
        assert!(matches!(
            &parse_all(sixteen.as_bytes())[0],
            Parsed::Reply(DUPLICATE_FLAG) | Parsed::Request(_)
        ));
        for line in ["ms k", "ms k abc", "ms k -1", "ms k 7x"] {
            let out = parse_all(format!("{line}\r\nversion\r\n").as_bytes());
            assert_eq!(out[0], Parsed::Reply(BAD_FORMAT), "{line}");
            assert!(
                matches!(&out[1], Parsed::Request(r) if r.cmd == Cmd::Version),
                "{line}"
            );
        }
        assert_eq!(parse_all(b"ms\r\n"), vec![Parsed::Reply(ERROR)]);
        // Flag errors after the length swallow the block.
        for (flags, reply) in [
            ("T0 T1", DUPLICATE_FLAG),
            ("x", INVALID_FLAG),
            ("Tabc", BAD_TOKEN),
            ("MX", MS_BAD_MODE),
            ("MEE", M_TOKEN_LENGTH),
        ] {
            let out = parse_all(format!("ms k 7 {flags}\r\nversion\r\n").as_bytes());
            assert_eq!(out, vec![Parsed::Reply(reply)], "{flags}");
        }
        // A flag is its first byte: `qx` is quiet, `bx` is base64.
        assert!(req(b"ms k 1 qx\r\nv\r\n").quiet);
        assert!(req(b"mg k qx\r\n").quiet);
        assert_eq!(req(b"mg Zm9v bx\r\n").route_key.unwrap(), &b"foo"[..]);
        assert_eq!(encoded(&req(b"ms k +1 T5\r\nv\r\n")), b"ms k 1 T5\r\nv\r\n");
    }

    #[test]
    fn lines_memcached_closes_are_closed() {
        let long = format!("set {} 0 0 1", "k".repeat(2100));
        assert_eq!(parse_all(long.as_bytes()), vec![Parsed::Close]);
        assert_eq!(
            parse_all(format!("{long}\r\n").as_bytes()),
            vec![Parsed::Close]
        );
        let get = format!("get {}", "k ".repeat(1100));
        assert_eq!(parse_all(get.as_bytes()), vec![]);
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.0\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            assert_eq!(parse_all(http), vec![Parsed::CrossProtocol]);
        }
        assert_eq!(parse_all(b"get / HTTP/1.1\r\n").len(), 1);
        assert!(matches!(
            parse_all(b"get / HTTP/1.1\r\n")[0],
            Parsed::Request(_)
        ));
    }

    #[test]
    fn text_commands_as_memcached_reads_them() {
        assert_eq!(encoded(&req(b"version foo bar\r\n")), b"version\r\n");
        assert_eq!(
            parse_all(b"verbosity noreply\r\n"),
            vec![Parsed::Reply(b"")]
        );
        assert!(req(b"verbosity 0 noreply\r\n").quiet);
        assert_eq!(
            parse_all(b"verbosity foo\r\n"),
            vec![Parsed::Reply(BAD_FORMAT)]
        );
        assert_eq!(parse_all(b"verbosity\r\n"), vec![Parsed::Reply(ERROR)]);
        assert_eq!(encoded(&req(b"verbosity 1 x\r\n")), b"verbosity 1\r\n");
        assert_eq!(encoded(&req(b"flush_all 0 foo\r\n")), b"flush_all 0\r\n");
        assert_eq!(encoded(&req(b"flush_all noreply\r\n")), b"flush_all\r\n");
        assert_eq!(
            parse_all(b"flush_all foo\r\n"),
            vec![Parsed::Reply(BAD_EXPTIME)]
        );
        assert_eq!(
            parse_all(b"flush_all 0 0 0\r\n"),
            vec![Parsed::Reply(ERROR)]
        );
        assert_eq!(req(b"gat 0\r\n").cmd, Cmd::Empty);
        assert_eq!(parse_all(b"gat x k\r\n"), vec![Parsed::Reply(BAD_EXPTIME)]);
        assert_eq!(
            parse_all(b"touch k x\r\n"),
            vec![Parsed::Reply(BAD_EXPTIME)]
        );
        assert_eq!(parse_all(b"delete\r\n"), vec![Parsed::Reply(ERROR)]);
        assert_eq!(parse_all(b"delete k a b c\r\n"), vec![Parsed::Reply(ERROR)]);
        assert_eq!(parse_all(b"me\r\n"), vec![Parsed::Reply(BAD_FORMAT)]);
        assert_eq!(encoded(&req(b"me k x y\r\n")), b"me k\r\n");
        assert_eq!(req(b"mn foo\r\n").cmd, Cmd::MetaNoop);
        assert_eq!(req(b"quit now\r\n").cmd, Cmd::Quit);
        assert_eq!(
            parse_all(b"md k x\r\n"),
            vec![Parsed::Reply(INVALID_OR_DUPLICATE_FLAG)]
        );
        // NUL ends a line as memcached reads it.
        assert_eq!(encoded(&req(b"get k\0junk\r\n")), b"get k\r\n");
        // LF-only line ends.
        assert_eq!(req(b"version\n").cmd, Cmd::Version);
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
        // memcached checks a key's length only.
        assert_eq!(req(b"get a\x01b\r\n").keys()[0], &b"a\x01b"[..]);
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

    /// What is over cachegate's reply limit (a node's reply it may skip, the node being fine)
    /// and what no memcached writes (malformed: it counts against the node) are told apart.
    #[test]
    fn replies_too_large_and_malformed_are_told_apart() {
        let too_large =
            |r: Result<Option<usize>, McReplyError>| matches!(r, Err(McReplyError::TooLarge(_)));
        let malformed =
            |r: Result<Option<usize>, McReplyError>| matches!(r, Err(McReplyError::Malformed(_)));
        assert!(too_large(reply_len(
            b"VALUE k 0 5000\r\n",
            Shape::Values,
            1000
        )));
        assert!(too_large(reply_len(b"VA 5000\r\n", Shape::Meta, 1000)));
        let huge = format!("VALUE k 0 {}\r\n", usize::MAX - 3);
        assert!(malformed(reply_len(
            huge.as_bytes(),
            Shape::Values,
            usize::MAX
        )));
        // Past the largest item memcached stores (1 GiB): malformed, and never passed over
        // as a value too large for cachegate (a hostile node could keep sending it forever).
        for reply in [
            format!("VALUE k 0 {}\r\n", MAX_ITEM_BYTES + 1),
            format!("VA {}\r\n", MAX_ITEM_BYTES + 1),
        ] {
            let shape = if reply.starts_with("VA") {
                Shape::Meta
            } else {
                Shape::Values
            };
            assert!(
                malformed(reply_len(reply.as_bytes(), shape, 1000)),
                "{reply}"
            );
            assert!(
                matches!(
                    McSkip::new(shape).advance(reply.as_bytes()),
                    Err(McReplyError::Malformed(_))
                ),
                "{reply}"
            );
        }
        let largest = format!("VALUE k 0 {MAX_ITEM_BYTES}\r\n");
        assert!(too_large(reply_len(
            largest.as_bytes(),
            Shape::Values,
            1000
        )));
        assert_eq!(
            McSkip::new(Shape::Values)
                .advance(largest.as_bytes())
                .unwrap(),
            (largest.len(), false)
        );
        let endless = vec![b'x'; DEFAULT_MAX_LINE + 10];
        assert!(malformed(reply_len(&endless, Shape::Line, 1 << 30)));
        assert!(too_large(reply_len(&endless[..200], Shape::Line, 100)));
    }

    /// A binary-protocol request (a binary GET of "foo") is answered in text and closed at
    /// once: no newline would ever come to end it.
    #[test]
    fn a_binary_request_is_refused_at_once() {
        let get = b"\x80\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03\xde\xad\xbe\xef\x00\x00\x00\x00\x00\x00\x00\x00foo";
        assert_eq!(parse_all(get), vec![Parsed::Fatal(BINARY_REFUSED)]);
        assert_eq!(parse_all(b"\x80"), vec![Parsed::Fatal(BINARY_REFUSED)]);
        // Later on a text connection the byte is no binary request (memcached picks the
        // protocol by the first byte): a refused set's value block that starts with it (a
        // pickled value) is read as a line, as memcached reads it, and the connection goes on.
        let long_key = "k".repeat(251);
        let wire = [
            format!("set {long_key} 0 0 3\r\n").as_bytes(),
            b"\x80ab\r\nget x\r\n",
        ]
        .concat();
        let parsed = parse_all(&wire);
        assert!(
            !parsed.contains(&Parsed::Fatal(BINARY_REFUSED)),
            "{parsed:?}"
        );
        assert_eq!(
            parsed.len(),
            3,
            "the block read as a line of its own: {parsed:?}"
        );
        assert!(
            matches!(parsed.last(), Some(Parsed::Request(r)) if r.cmd == Cmd::Get),
            "{parsed:?}"
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
    fn one_key_gets_go_as_meta_gets_and_come_back_classic() {
        let get = MetaGet::of(&req(b"get k\r\n")).unwrap();
        let gets = MetaGet::of(&req(b"gets k\r\n")).unwrap();
        assert!(MetaGet::of(&req(b"get a b\r\n")).is_none());
        assert!(MetaGet::of(&req(b"gat 0 k\r\n")).is_none());
        assert!(MetaGet::of(&req(b"mg k v\r\n")).is_none());
        let wire = |m: MetaGet| {
            let mut out = BytesMut::new();
            m.encode(b"k", &mut out);
            out
        };
        assert_eq!(&wire(get)[..], b"mg k v f\r\n");
        assert_eq!(&wire(gets)[..], b"mg k v f c\r\n");
        let classic = |m: MetaGet, reply: &[u8]| {
            let mut out = BytesMut::new();
            let outcome = m.classic(b"k", reply, &mut out);
            (outcome, String::from_utf8_lossy(&out).into_owned())
        };
        // A block holding what looks like the end of a reply is carried as it is.
        let va = b"VA 9 f4294967295 c17\r\nx\r\nEND\r\ny\r\n";
        assert_eq!(
            classic(get, b"VA 9 f4294967295\r\nx\r\nEND\r\ny\r\n"),
            (
                Classic::Reply,
                "VALUE k 4294967295 9\r\nx\r\nEND\r\ny\r\nEND\r\n".into()
            )
        );
        assert_eq!(
            classic(gets, va),
            (
                Classic::Reply,
                "VALUE k 4294967295 9 17\r\nx\r\nEND\r\ny\r\nEND\r\n".into()
            )
        );
        assert_eq!(
            classic(get, b"VA 0 f0\r\n\r\n"),
            (Classic::Reply, "VALUE k 0 0\r\n\r\nEND\r\n".into())
        );
        assert_eq!(classic(gets, b"EN\r\n"), (Classic::Reply, "END\r\n".into()));
        assert_eq!(
            classic(get, b"SERVER_ERROR out of memory\r\n"),
            (Classic::Reply, "SERVER_ERROR out of memory\r\n".into())
        );
        // What memcached never answers a meta get: the node gets classic gets from then on.
        for reply in [
            &b"ERROR\r\n"[..],
            b"CLIENT_ERROR invalid flag\r\n",
            b"HD\r\n",
            b"NF\r\n",
            b"VA\r\n",
            b"VA 1\r\nx\r\n",
            b"VA x f0\r\nx\r\n",
            b"VA 1 f c\r\nx\r\n",
            b"VA 1 f-1\r\nx\r\n",
        ] {
            assert_eq!(classic(get, reply), (Classic::Incompatible, String::new()));
        }
        // A gets needs the CAS value; a get does not.
        assert_eq!(classic(gets, b"VA 1 f0\r\nx\r\n").0, Classic::Incompatible);
        assert_eq!(classic(get, b"VA 1 f0 c5\r\nx\r\n").0, Classic::Reply);
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
        // A meta reply is a known status or an error, and a VA block ends with CRLF.
        assert!(reply_len(b"BOGUS\r\n", Shape::Meta, 100).is_err());
        assert!(reply_len(b"VALUE a 0 1\r\n", Shape::Meta, 100).is_err());
        assert!(reply_len(b"VA 2 f0\r\nhiX\n", Shape::Meta, 100).is_err());
        assert_eq!(
            reply_len(b"VA 2 f0\r\nhi\r", Shape::Meta, 100).unwrap(),
            None
        );
        assert_eq!(
            reply_len(b"ME k exp=-1\r\n", Shape::Meta, 100).unwrap(),
            Some(13)
        );
        assert_eq!(
            reply_len(b"SERVER_ERROR x\r\n", Shape::Meta, 100).unwrap(),
            Some(16)
        );
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

    /// A reply of each shape as memcached writes it, from a few parts (values may hold `\r\n`).
    fn arb_reply() -> impl Strategy<Value = (Shape, Vec<u8>)> {
        let value =
            prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..40);
        let meta = prop_oneof![
            value.clone().prop_map(|v| [
                format!("VA {} f0 k\r\n", v.len()).into_bytes(),
                v,
                b"\r\n".to_vec()
            ]
            .concat()),
            Just(b"HD\r\n".to_vec()),
            Just(b"EN\r\n".to_vec()),
            Just(b"SERVER_ERROR out of memory\r\n".to_vec()),
        ];
        prop_oneof![
            Just((Shape::Line, b"STORED\r\n".to_vec())),
            Just((Shape::Line, b"CLIENT_ERROR bad data chunk\r\n".to_vec())),
            prop::collection::vec(value, 0..4).prop_map(|vs| {
                let mut r = Vec::new();
                for (i, v) in vs.iter().enumerate() {
                    r.extend_from_slice(format!("VALUE k{i} 0 {}\r\n", v.len()).as_bytes());
                    r.extend_from_slice(v);
                    r.extend_from_slice(b"\r\n");
                }
                (Shape::Values, [r, b"END\r\n".to_vec()].concat())
            }),
            meta.clone().prop_map(|m| (Shape::Meta, m)),
            prop::collection::vec(meta, 0..3).prop_map(|ms| (
                Shape::MetaThenNoop,
                [ms.concat(), b"MN\r\n".to_vec()].concat()
            )),
        ]
    }

    proptest! {
        #[test]
        /// A reply passed over piece by piece (`McSkip`, for one too large to hand on) ends
        /// exactly where `reply_len` delimits it, whatever the pieces: the next reply on the
        /// connection is read from its own first byte.
        fn a_skipped_reply_ends_where_it_is_delimited(
            case in arb_reply(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let (shape, reply) = case;
            prop_assert_eq!(reply_len(&reply, shape, usize::MAX).unwrap(), Some(reply.len()));
            let wire = [&reply[..], b"STORED\r\n"].concat();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut skip = McSkip::new(shape);
            let (mut buf, mut dropped, mut last, mut ended) = (Vec::new(), 0, 0, false);
            for cut in points.into_iter().chain([wire.len()]) {
                buf.extend_from_slice(&wire[last..cut]);
                last = cut;
                let (n, done) = skip.advance(&buf).unwrap();
                buf.drain(..n);
                dropped += n;
                if done {
                    ended = true;
                    break;
                }
            }
            prop_assert!(ended);
            prop_assert_eq!(dropped, reply.len());
        }

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
        /// Lines near memcached's 2,048-byte limit, ended by `\r\n` or a bare `\n`, padded in
        /// a number or in runs of spaces: whatever is forwarded has at most 2,047 bytes before
        /// its `\r\n` (memcached counts the `\r`).
        fn lines_near_the_limit_are_forwarded_within_it(
            len in 2044usize..2052,
            bare in any::<bool>(),
            spaces in 0usize..2,
            command in 0usize..3,
        ) {
            // Three numeric flags share the padding (memcached reads each as a number).
            let (head, flags) = [
                ("mg", ["v N", " T", " R"]),
                ("ma", ["N", " J", " D"]),
                ("ms", ["1 T", " F", " C"]),
            ][command];
            let head = format!("{head}{}{} ", " ".repeat(spaces + 1), "k".repeat(200));
            let fixed = head.len() + flags.iter().map(|f| f.len() + 2).sum::<usize>();
            let pad = len.saturating_sub(fixed);
            let mut line = head;
            for (i, flag) in flags.iter().enumerate() {
                let zeros = pad / 3 + usize::from(i < pad % 3);
                line.push_str(&format!("{flag}{}30", "0".repeat(zeros)));
            }
            line.push_str(if bare { "\n" } else { "\r\n" });
            line.push_str("x\r\n");
            let mut p = Parser::new(McLimits::default());
            let mut buf = BytesMut::from(line.as_bytes());
            if let Some(Parsed::Request(r)) = p.next(&mut buf, &Policy::default()) {
                prop_assert!(r.line_len() < MEMCACHED_LINE_LIMIT, "{}", r.line_len());
            }
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
                        prop_assert!(r.keys().iter().all(|k| !k.is_empty() && k.len() <= MAX_KEY && !k.contains(&b' ') && !k.contains(&0)));
                        if let Some(k) = &r.route_key { prop_assert!(!k.is_empty() && k.len() <= MAX_KEY); }
                        let mut out = BytesMut::new();
                        r.encode(&mut out, None);
                        // What goes upstream is exactly one request: its line has no stray CR/LF,
                        // fits memcached's line limit unless it is a get/gets, and reads back as
                        // the same request (the node frames it one way only).
                        let line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
                        prop_assert!(!out[..line_end].contains(&b'\n'));
                        // (memcached's limit counts the `\r` before the `\n`.)
                        prop_assert!(line_end < MEMCACHED_LINE_LIMIT || matches!(r.cmd, Cmd::Get));
                        let mut again = BytesMut::from(&out[..]);
                        match Parser::new(limits).next(&mut again, &Policy::default()) {
                            Some(Parsed::Request(back)) => {
                                prop_assert_eq!(&back.tokens, &r.tokens);
                                prop_assert_eq!(&back.data, &r.data);
                                prop_assert_eq!(back.route_key, r.route_key);
                            }
                            other => prop_assert!(false, "{:?} re-read as {:?}", out, other),
                        }
                    }
                    Parsed::Fatal(_) | Parsed::Close | Parsed::CrossProtocol => break,
                    Parsed::Reply(_) => {}
                }
            }
        }
    }
}
