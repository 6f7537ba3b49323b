//! What the session needs to know about a command besides the policy decision: which ones the
//! proxy answers itself, how many replies one produces, which may block, and how COMMAND replies
//! are rewritten so that they neither list disabled commands nor reveal the real name behind an
//! alias.

use bytes::{BufMut, Bytes, BytesMut};

use crate::policy::{Decision, Policy, Visibility};
use crate::protocol::reply::bulk;

/// A name no Redis knows: sent in place of a refused name inside COMMAND INFO / DOCS /
/// GETKEYS, so the backend itself answers "no such command" in the client's protocol.
pub const HIDDEN_PLACEHOLDER: &[u8] = b"cachegate-hidden-command";

/// Commands with meaning to the session itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Auth,
    Hello,
    Quit,
    Reset,
    Multi,
    Exec,
    Discard,
    Command,
    Subscribe,
    Unsubscribe,
    Client,
    Blocking,
    Watch,
    Unwatch,
    Select,
    /// ACL: answered by cachegate when it holds the users.
    Acl,
    /// Other commands that leave state on the connection (MONITOR, READONLY, ...).
    Stateful,
    Other,
}

/// What a command is to the session, from its name folded to lower case
/// (`protocol::name::fold`): matched as it stands, never folded again.
pub fn classify(lower: &[u8], args: &[Bytes]) -> Kind {
    match lower {
        b"auth" => Kind::Auth,
        b"hello" => Kind::Hello,
        b"quit" => Kind::Quit,
        b"reset" => Kind::Reset,
        b"multi" => Kind::Multi,
        b"exec" => Kind::Exec,
        b"discard" => Kind::Discard,
        b"command" => Kind::Command,
        b"subscribe" | b"psubscribe" | b"ssubscribe" => Kind::Subscribe,
        b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => Kind::Unsubscribe,
        b"client" => Kind::Client,
        b"watch" => Kind::Watch,
        b"unwatch" => Kind::Unwatch,
        b"select" => Kind::Select,
        b"acl" => Kind::Acl,
        b"monitor" | b"readonly" | b"readwrite" | b"asking" | b"swapdb" | b"move" | b"sync"
        | b"psync" | b"replconf" | b"debug" => Kind::Stateful,
        b"blpop" | b"brpop" | b"brpoplpush" | b"blmove" | b"blmpop" | b"bzpopmin" | b"bzpopmax"
        | b"bzmpop" | b"wait" | b"waitaof" => Kind::Blocking,
        b"xread" | b"xreadgroup"
            if args
                .iter()
                .any(|a| crate::auth::commands::is_word(a, b"BLOCK")) =>
        {
            Kind::Blocking
        }
        _ => Kind::Other,
    }
}

/// The commands that run a script server-side (any case).
pub fn runs_script(name: &[u8]) -> bool {
    crate::auth::commands::RUNS_SCRIPT
        .iter()
        .any(|s| crate::auth::commands::is_word(name, s.as_bytes()))
}

/// Redis's refusal of a client name (`CLIENT SETNAME`, `HELLO ... SETNAME`).
pub const BAD_CLIENT_NAME: &str =
    "Client names cannot contain spaces, newlines or special characters.";

/// Whether Redis takes this as a client name: printable ASCII without spaces (or empty,
/// which clears the name).
pub fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// A client name as a session keeps it: `None` for the empty one (no name), else a copy of
/// its own, so that the name does not keep alive the read buffer it arrived in (a 1-byte name
/// sent behind a 6 MB request kept those 6 MB for the session's life, found by a reviewer).
pub fn kept_name(name: &Bytes) -> Option<Bytes> {
    (!name.is_empty()).then(|| Bytes::copy_from_slice(name))
}

/// CLIENT's subcommand, upper-cased.
pub fn client_subcommand(args: &[Bytes]) -> Option<Vec<u8>> {
    args.get(1).map(|s| s.to_ascii_uppercase())
}

/// How a reply is rewritten on its way back.
#[derive(Clone)]
pub enum Rewrite {
    /// Values of encrypted keys opened (at-rest encryption).
    Open(
        std::sync::Arc<(
            std::sync::Arc<crate::crypt::Encryption>,
            crate::crypt::plan::Open,
        )>,
    ),
    /// COMMAND, COMMAND INFO: an array of entries, each an array whose first element is the name.
    Entries,
    /// COMMAND DOCS: a map (RESP3) or flat array (RESP2) of name -> docs.
    Docs,
    /// COMMAND LIST: an array of names.
    List,
    /// COMMAND COUNT, answered from a COMMAND LIST: the number of visible names.
    Count,
    /// HELLO: the `id` field becomes the session's own (the backend's id of a shared
    /// connection would tell a client which ids to aim CLIENT commands at).
    Hello,
}

/// For a COMMAND request (name already checked): the arguments to forward and the rewrite to
/// apply, or `Err(reply)` to answer locally.
pub fn plan_command(args: &[Bytes], policy: &Policy) -> (Vec<Bytes>, Option<Rewrite>) {
    if policy.is_empty() {
        return (args.to_vec(), None);
    }
    let sub = args.get(1).map(|s| s.to_ascii_uppercase());
    // A name as the client may spell it (an alias, `alias|sub`) to the real one, or to the
    // placeholder when hidden (disabled, renamed away, a disabled subcommand).
    let translate = |name: &Bytes| {
        let (container, sub) = match name.iter().position(|&b| b == b'|') {
            Some(bar) => (name.slice(..bar), Some(name.slice(bar + 1..))),
            None => (name.clone(), None),
        };
        let real = match policy.decide(&container) {
            Decision::Allow => container,
            Decision::Rename(real) => real,
            Decision::Refuse => return Bytes::from_static(HIDDEN_PLACEHOLDER),
        };
        match sub {
            Some(sub) if policy.refuses_subcommand(&real, &sub) => {
                Bytes::from_static(HIDDEN_PLACEHOLDER)
            }
            Some(sub) => {
                let mut full = real.to_vec();
                full.push(b'|');
                full.extend_from_slice(&sub);
                Bytes::from(full)
            }
            None => real,
        }
    };
    match sub.as_deref() {
        None => (args.to_vec(), Some(Rewrite::Entries)),
        Some(b"INFO") | Some(b"DOCS") => {
            let mut out = args[..2].to_vec();
            out.extend(args[2..].iter().map(translate));
            let rw = if sub.as_deref() == Some(b"INFO") {
                Rewrite::Entries
            } else {
                Rewrite::Docs
            };
            (out, Some(rw))
        }
        Some(b"LIST") => (args.to_vec(), Some(Rewrite::List)),
        Some(b"COUNT") if args.len() == 2 => (
            vec![args[0].clone(), Bytes::from_static(b"LIST")],
            Some(Rewrite::Count),
        ),
        Some(b"GETKEYS") | Some(b"GETKEYSANDFLAGS") if args.len() > 2 => {
            let mut out = args.to_vec();
            out[2] = translate(&args[2]);
            if args.len() > 3 && policy.refuses_subcommand(&out[2], &args[3]) {
                out[2] = Bytes::from_static(HIDDEN_PLACEHOLDER);
            }
            (out, None)
        }
        _ => (args.to_vec(), None),
    }
}

/// Applies a rewrite to one complete reply frame. Anything unexpected (an error reply, another
/// shape) is passed through unchanged: the rewrite only ever removes or renames.
/// `session` is the session's own client id (for HELLO).
pub fn rewrite_reply(frame: Bytes, rewrite: &Rewrite, policy: &Policy, session: u64) -> Bytes {
    if let Rewrite::Open(open) = rewrite {
        let (encryption, plan) = &**open;
        return encryption.open_reply(frame, plan);
    }
    let Some(agg) = Aggregate::parse(&frame) else {
        return frame;
    };
    let mut out = BytesMut::with_capacity(frame.len());
    match rewrite {
        Rewrite::Entries => {
            let kept = entries(&agg, policy, true);
            put_header(&mut out, agg.kind, kept.len());
            kept.iter().for_each(|e| out.put_slice(e));
        }
        Rewrite::Docs => {
            let Some(pairs) = docs(&agg, policy, true) else {
                return frame;
            };
            put_header(&mut out, agg.kind, pairs.len());
            pairs.iter().for_each(|p| out.put_slice(p));
        }
        Rewrite::Hello => {
            let id = session;
            let mut fields = Vec::with_capacity(agg.elements.len());
            for pair in agg.elements.chunks(2) {
                let [key, value] = pair else { return frame };
                fields.push(Bytes::copy_from_slice(key));
                if string_value(key) == Some(b"id") {
                    fields.push(Bytes::from(format!(":{id}\r\n")));
                } else {
                    fields.push(Bytes::copy_from_slice(value));
                }
            }
            put_header(&mut out, agg.kind, fields.len());
            fields.iter().for_each(|f| out.put_slice(f));
        }
        Rewrite::List | Rewrite::Count => {
            let mut names = Vec::new();
            for el in &agg.elements {
                match string_value(el).map(|n| policy.visible_name(n)) {
                    Some(Visibility::Hidden) => {}
                    Some(Visibility::ShownAs(alias)) => names.push(bulk(&alias)),
                    _ => names.push(Bytes::copy_from_slice(el)),
                }
            }
            if matches!(rewrite, Rewrite::Count) {
                out.put_slice(format!(":{}\r\n", names.len()).as_bytes());
            } else {
                put_header(&mut out, agg.kind, names.len());
                names.iter().for_each(|n| out.put_slice(n));
            }
        }
        // Handled above.
        Rewrite::Open(_) => return frame,
    }
    out.freeze()
}

/// COMMAND / COMMAND INFO entries, hidden or renamed by their first element (the name);
/// `nested`: a top-level entry's subcommands (its tenth element, entries of the same shape)
/// are rewritten too, one level down and no further.
fn entries(agg: &Aggregate<'_>, policy: &Policy, nested: bool) -> Vec<Bytes> {
    let mut kept = Vec::with_capacity(agg.elements.len());
    for entry in &agg.elements {
        let Some(inner) = Aggregate::parse(entry).filter(|i| !i.elements.is_empty()) else {
            kept.push(Bytes::copy_from_slice(entry));
            continue;
        };
        let name = match string_value(inner.elements[0]).map(|n| policy.visible_name(n)) {
            Some(Visibility::Hidden) => continue,
            Some(Visibility::ShownAs(alias)) => bulk(&alias),
            _ => Bytes::copy_from_slice(inner.elements[0]),
        };
        let mut e = BytesMut::new();
        put_header(&mut e, inner.kind, inner.elements.len());
        e.put_slice(&name);
        for (i, el) in inner.elements.iter().enumerate().skip(1) {
            match Aggregate::parse(el) {
                Some(subs) if nested && i == 9 => {
                    let subs_kept = entries(&subs, policy, false);
                    put_header(&mut e, subs.kind, subs_kept.len());
                    subs_kept.iter().for_each(|s| e.put_slice(s));
                }
                _ => e.put_slice(el),
            }
        }
        kept.push(e.freeze());
    }
    kept
}

/// COMMAND DOCS: name -> docs pairs (a map in RESP3, a flat array in RESP2), hidden or
/// renamed by name; `nested`: each doc's `subcommands` (pairs of the same shape) too.
/// Elements in the order to write them (a name, then its docs), or `None` for an odd shape.
fn docs(agg: &Aggregate<'_>, policy: &Policy, nested: bool) -> Option<Vec<Bytes>> {
    let mut out = Vec::with_capacity(agg.elements.len());
    for pair in agg.elements.chunks(2) {
        let [name, doc] = pair else { return None };
        let name = match string_value(name).map(|n| policy.visible_name(n)) {
            Some(Visibility::Hidden) => continue,
            Some(Visibility::ShownAs(alias)) => bulk(&alias),
            _ => Bytes::copy_from_slice(name),
        };
        out.push(name);
        let doc = match Aggregate::parse(doc).filter(|_| nested) {
            Some(fields) => {
                let mut d = BytesMut::new();
                put_header(&mut d, fields.kind, fields.elements.len());
                for field in fields.elements.chunks(2) {
                    let [key, value] = field else { return None };
                    d.put_slice(key);
                    match Aggregate::parse(value) {
                        Some(subs) if string_value(key) == Some(b"subcommands") => {
                            let subs_kept = docs(&subs, policy, false)?;
                            put_header(&mut d, subs.kind, subs_kept.len());
                            subs_kept.iter().for_each(|s| d.put_slice(s));
                        }
                        _ => d.put_slice(value),
                    }
                }
                d.freeze()
            }
            None => Bytes::copy_from_slice(doc),
        };
        out.push(doc);
    }
    Some(out)
}

/// An array, set or map frame split into the raw bytes of its elements (a map's keys and values
/// alternate).
struct Aggregate<'a> {
    kind: u8,
    elements: Vec<&'a [u8]>,
}

impl<'a> Aggregate<'a> {
    fn parse(frame: &'a [u8]) -> Option<Self> {
        let kind = *frame.first()?;
        if !matches!(kind, b'*' | b'~' | b'%') {
            return None;
        }
        let eol = frame.windows(2).position(|w| w == b"\r\n")?;
        let count: usize = std::str::from_utf8(&frame[1..eol]).ok()?.parse().ok()?;
        let count = if kind == b'%' {
            count.checked_mul(2)?
        } else {
            count
        };
        let mut pos = eol + 2;
        let mut elements = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            let (len, _) = crate::protocol::resp::frame_len(&frame[pos..]).ok()??;
            elements.push(&frame[pos..pos + len]);
            pos += len;
        }
        Some(Self { kind, elements })
    }
}

/// The text of a simple or bulk string element.
fn string_value(el: &[u8]) -> Option<&[u8]> {
    let eol = el.windows(2).position(|w| w == b"\r\n")?;
    match el.first()? {
        b'+' => Some(&el[1..eol]),
        b'$' => el.get(eol + 2..el.len() - 2),
        _ => None,
    }
}

/// `n` counts elements; a map's header counts pairs.
fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    let n = if kind == b'%' { n / 2 } else { n };
    out.put_u8(kind);
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

/// A command's words from one line split at spaces (for tests).
#[cfg(test)]
pub(crate) fn words(line: &str) -> Vec<Bytes> {
    line.split(' ')
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &["FLUSHDB".into()],
            &[("FLUSHALL".into(), "admin_flushall".into())],
        )
        .unwrap()
    }

    #[test]
    fn list_hides_and_renames() {
        let frame = Bytes::from_static(b"*3\r\n$3\r\nget\r\n$7\r\nflushdb\r\n$8\r\nflushall\r\n");
        let out = rewrite_reply(frame.clone(), &Rewrite::List, &policy(), 0);
        assert_eq!(&out[..], b"*2\r\n$3\r\nget\r\n$14\r\nadmin_flushall\r\n");
        let count = rewrite_reply(frame, &Rewrite::Count, &policy(), 0);
        assert_eq!(&count[..], b":2\r\n");
    }

    #[test]
    fn entries_keep_everything_but_the_name() {
        let frame = Bytes::from_static(
            b"*2\r\n*2\r\n$8\r\nflushall\r\n:-1\r\n*2\r\n$7\r\nflushdb\r\n:-1\r\n",
        );
        let out = rewrite_reply(frame, &Rewrite::Entries, &policy(), 0);
        assert_eq!(&out[..], b"*1\r\n*2\r\n$14\r\nadmin_flushall\r\n:-1\r\n");
    }

    #[test]
    fn docs_as_map_and_flat_array() {
        let map = Bytes::from_static(b"%2\r\n$7\r\nflushdb\r\n%0\r\n$3\r\nget\r\n%0\r\n");
        assert_eq!(
            &rewrite_reply(map, &Rewrite::Docs, &policy(), 0)[..],
            b"%1\r\n$3\r\nget\r\n%0\r\n"
        );
        let flat = Bytes::from_static(b"*4\r\n$8\r\nflushall\r\n*0\r\n$3\r\nget\r\n*0\r\n");
        assert_eq!(
            &rewrite_reply(flat, &Rewrite::Docs, &policy(), 0)[..],
            b"*4\r\n$14\r\nadmin_flushall\r\n*0\r\n$3\r\nget\r\n*0\r\n"
        );
    }

    #[test]
    fn hello_shows_the_session_id() {
        let resp3 = Bytes::from_static(
            b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:12\r\n$5\r\nproto\r\n:3\r\n",
        );
        assert_eq!(
            &rewrite_reply(resp3, &Rewrite::Hello, &policy(), 7)[..],
            b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:7\r\n$5\r\nproto\r\n:3\r\n"
        );
        let resp2 = Bytes::from_static(b"*4\r\n$2\r\nid\r\n:12\r\n$4\r\nmode\r\n$3\r\nstd\r\n");
        assert_eq!(
            &rewrite_reply(resp2, &Rewrite::Hello, &policy(), 9)[..],
            b"*4\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$3\r\nstd\r\n"
        );
    }

    #[test]
    fn errors_pass_through() {
        let err = Bytes::from_static(b"-ERR nope\r\n");
        assert_eq!(
            rewrite_reply(err.clone(), &Rewrite::List, &policy(), 0),
            err
        );
    }

    #[test]
    fn info_requests_translate_names() {
        let args: Vec<Bytes> = [
            "COMMAND",
            "INFO",
            "get",
            "admin_flushall",
            "flushall",
            "FLUSHDB",
        ]
        .iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect();
        let (fwd, rw) = plan_command(&args, &policy());
        assert!(matches!(rw, Some(Rewrite::Entries)));
        let fwd: Vec<&[u8]> = fwd.iter().map(|b| &b[..]).collect();
        assert_eq!(
            fwd,
            vec![
                &b"COMMAND"[..],
                b"INFO",
                b"get",
                b"flushall",
                HIDDEN_PLACEHOLDER,
                HIDDEN_PLACEHOLDER
            ]
        );
    }

    #[test]
    fn classify_blocking_and_state() {
        let no = |s: &str| classify(s.as_bytes(), &[]);
        assert_eq!(no("blpop"), Kind::Blocking);
        assert_eq!(no("xread"), Kind::Other);
        let args = [Bytes::from_static(b"XREAD"), Bytes::from_static(b"block")];
        assert_eq!(classify(b"xread", &args), Kind::Blocking);
        assert_eq!(no("hello"), Kind::Hello);
        assert_eq!(no("psubscribe"), Kind::Subscribe);
        // The name comes folded: the caller folds it once for everything that reads it.
        assert_eq!(no("HELLO"), Kind::Other);
    }
}
