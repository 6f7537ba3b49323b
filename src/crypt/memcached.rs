//! At-rest encryption for memcached listeners: what it does to one request (seal its value,
//! open its reply, or refuse it) and how a reply's values are opened. The same envelope and
//! keys as Redis values; the memcached key (base64-decoded for meta `b`) is the associated
//! data. An allow-list: storing and getting whole values works (`set`, `add`, `replace`,
//! `cas`, `get`, `gets`, `gat`, `gats`, `ms`, `mg`), and so does what never looks at a value
//! (`delete`, `touch`, `md`, `me`); `incr`, `decr`, `append`, `prepend`, `ma` and `ms` in
//! append or prepend mode would compute on ciphertext and are refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::plan::Keyspaces;
use super::{is_sealed, Keys, OnPlaintext, OpenError};
use crate::protocol::memcached::{Cmd, McRequest};

/// How a reply is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McOpen {
    /// `VALUE <key> <flags> <bytes> [<cas>]` items then `END`: each item of an encrypted key.
    Values,
    /// A meta reply whose `VA` block is the value of this key.
    Meta(Bytes),
}

#[derive(Debug, PartialEq, Eq)]
pub enum McPlan {
    /// No key in an encrypted keyspace.
    Clear,
    /// The value (if any) sealed in place; the reply opened as said.
    Sealed(Option<McOpen>),
    /// Refused, with the reason for the client.
    Refuse(String),
}

/// Plans `req` on a listener whose keyspaces are `spaces`; seals its data block in place (and
/// its length token).
pub fn plan(req: &mut McRequest, spaces: &Keyspaces, keys: &Keys) -> McPlan {
    let name = String::from_utf8_lossy(req.name()).to_ascii_lowercase();
    // Names and keys shown on one line: a key (base64-decoded for `b`) may hold CR or LF.
    let refuse = |key: &[u8]| {
        McPlan::Refuse(one_line(&format!(
            "cachegate: '{name}' cannot work on '{}': its value is encrypted",
            String::from_utf8_lossy(key)
        )))
    };
    match req.cmd {
        Cmd::Get | Cmd::GetAndTouch => {
            if req.keys().iter().any(|k| spaces.strings(k)) {
                McPlan::Sealed(Some(McOpen::Values))
            } else {
                McPlan::Clear
            }
        }
        Cmd::Storage | Cmd::KeyLine | Cmd::Meta | Cmd::MetaSet => {
            let Some(key) = req.route_key.clone() else {
                return McPlan::Clear;
            };
            if !spaces.strings(&key) {
                return McPlan::Clear;
            }
            match (req.cmd, name.as_str()) {
                (Cmd::Storage, "set" | "add" | "replace" | "cas") => {
                    // set <key> <flags> <exptime> <bytes> [<cas>]
                    seal_data(req, keys, &key, 4);
                    McPlan::Sealed(None)
                }
                (Cmd::KeyLine, "delete" | "touch") => McPlan::Sealed(None),
                (Cmd::Meta, "mg") => {
                    // Only a `v` flag returns the value.
                    let value = req.tokens[2..].iter().any(|t| t.first() == Some(&b'v'));
                    McPlan::Sealed(value.then(|| McOpen::Meta(key)))
                }
                (Cmd::Meta, "md" | "me") => McPlan::Sealed(None),
                (Cmd::MetaSet, _) => {
                    // ms <key> <datalen> <flags>*: a mode flag of A or P appends or prepends.
                    let appends = req.tokens[3..].iter().any(|t| {
                        t.first() == Some(&b'M')
                            && matches!(t.get(1), Some(b'A' | b'a' | b'P' | b'p'))
                    });
                    if appends {
                        return refuse(&key);
                    }
                    seal_data(req, keys, &key, 2);
                    // ms returns no value.
                    McPlan::Sealed(None)
                }
                _ => refuse(&key),
            }
        }
        _ => McPlan::Clear,
    }
}

/// Seals the request's data block under `key` and writes its new length at `len_at`.
fn seal_data(req: &mut McRequest, keys: &Keys, key: &[u8], len_at: usize) {
    if let Some(data) = &req.data {
        let sealed = keys.seal(key, data);
        if let Some(len) = req.tokens.get_mut(len_at) {
            *len = Bytes::from(sealed.len().to_string());
        }
        req.data = Some(sealed);
    }
}

/// The reply with its values opened; `Err((key, why))` when a value does not open.
pub fn open_reply(
    keys: &Keys,
    spaces: &Keyspaces,
    reply: &[u8],
    open: &McOpen,
    on_plaintext: OnPlaintext,
) -> Result<Bytes, (Bytes, OpenError)> {
    match open {
        McOpen::Values => open_values(keys, spaces, reply, on_plaintext),
        McOpen::Meta(key) => open_meta(keys, key, reply, on_plaintext),
    }
}

fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Where the data block of `len` (a decimal token) after the header line ending at `end`
/// lies in `reply`, checked to be whole and followed by `\r\n` (no sum wraps around).
fn block(reply: &[u8], end: usize, len: Option<&[u8]>) -> Option<(usize, usize)> {
    let len: usize = std::str::from_utf8(len?).ok()?.parse().ok()?;
    let data_at = end + 2;
    let data_end = data_at.checked_add(len)?;
    (reply.get(data_end..data_end.checked_add(2)?)? == b"\r\n").then_some((data_at, data_end))
}

/// Opens one value onto `out`; the opened length. A value in clear passes when allowed; an
/// empty one always does: it is what `mg <key> N<ttl>` (vivify on a miss, for the anti-dogpile
/// pattern) makes memcached create, it holds nothing to keep secret, and no sealed value is
/// empty (once, every read of such an item was a decryption failure until someone set it).
fn open_value(
    keys: &Keys,
    key: &[u8],
    value: &[u8],
    on_plaintext: OnPlaintext,
) -> Result<Bytes, (Bytes, OpenError)> {
    if value.is_empty() || (!is_sealed(value) && on_plaintext == OnPlaintext::Pass) {
        return Ok(Bytes::copy_from_slice(value));
    }
    keys.open(key, value)
        .map_err(|e| (Bytes::copy_from_slice(key), e))
}

fn open_values(
    keys: &Keys,
    spaces: &Keyspaces,
    reply: &[u8],
    on_plaintext: OnPlaintext,
) -> Result<Bytes, (Bytes, OpenError)> {
    let unexpected = || (Bytes::new(), OpenError::Unexpected);
    // An error line (a node's failure) passes as it is.
    if !reply.starts_with(b"VALUE ") && !reply.starts_with(b"END\r\n") {
        return Ok(Bytes::copy_from_slice(reply));
    }
    let mut out = BytesMut::with_capacity(reply.len());
    let mut at = 0;
    while reply[at..].starts_with(b"VALUE ") {
        let end = at + line(&reply[at..]).ok_or_else(unexpected)?;
        let head = &reply[at..end];
        let words: Vec<&[u8]> = head.split(|&b| b == b' ').collect();
        // VALUE <key> <flags> <bytes> [<cas>]
        let (key, len) = match words.as_slice() {
            [_, key, _, len] | [_, key, _, len, _] => (*key, *len),
            _ => return Err(unexpected()),
        };
        let (data_at, data_end) = block(reply, end, Some(len)).ok_or_else(unexpected)?;
        let value = &reply[data_at..data_end];
        if spaces.strings(key) {
            let opened = open_value(keys, key, value, on_plaintext)?;
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b' ');
                }
                if i == 3 {
                    out.put_slice(opened.len().to_string().as_bytes());
                } else {
                    out.put_slice(w);
                }
            }
            out.put_slice(b"\r\n");
            out.put_slice(&opened);
            out.put_slice(b"\r\n");
        } else {
            out.put_slice(&reply[at..data_end + 2]);
        }
        at = data_end + 2;
    }
    if &reply[at..] != b"END\r\n" {
        return Err(unexpected());
    }
    out.put_slice(b"END\r\n");
    Ok(out.freeze())
}

fn open_meta(
    keys: &Keys,
    key: &Bytes,
    reply: &[u8],
    on_plaintext: OnPlaintext,
) -> Result<Bytes, (Bytes, OpenError)> {
    if !reply.starts_with(b"VA ") {
        // HD, EN, NF, an error, or a quiet command's MN: no value.
        return Ok(Bytes::copy_from_slice(reply));
    }
    let unexpected = || (key.clone(), OpenError::Unexpected);
    let end = line(reply).ok_or_else(unexpected)?;
    let words: Vec<&[u8]> = reply[..end].split(|&b| b == b' ').collect();
    let (data_at, data_end) = block(reply, end, words.get(1).copied()).ok_or_else(unexpected)?;
    let opened = open_value(keys, key, &reply[data_at..data_end], on_plaintext)?;
    let mut out = BytesMut::with_capacity(reply.len());
    out.put_slice(b"VA ");
    out.put_slice(opened.len().to_string().as_bytes());
    for w in &words[2..] {
        out.put_u8(b' ');
        out.put_slice(w);
    }
    out.put_slice(b"\r\n");
    out.put_slice(&opened);
    out.put_slice(b"\r\n");
    // A quiet mg's trailing MN.
    out.put_slice(&reply[data_end + 2..]);
    Ok(out.freeze())
}

/// `text` with control characters (CR, LF among them) shown as `?`: it goes on one reply line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::memcached::{McLimits, Parsed, Parser};

    fn keys() -> Keys {
        crate::crypt::one_test_key()
    }

    fn spaces() -> Keyspaces {
        Keyspaces {
            patterns: vec!["pii:*".into()],
            hashes: vec![],
        }
    }

    fn req(line: &[u8]) -> McRequest {
        let mut buf = BytesMut::from(line);
        match Parser::new(McLimits::default()).next(&mut buf, &crate::protocol::memcached::AsTyped)
        {
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
    fn values_are_sealed_with_their_length_and_refusals_name_the_command() {
        let (keys, spaces) = (keys(), spaces());
        let mut r = req(b"set pii:1 7 0 5\r\nhello\r\n");
        assert_eq!(plan(&mut r, &spaces, &keys), McPlan::Sealed(None));
        let sealed = encoded(&r);
        let want_len = (5 + crate::crypt::HEADER + crate::crypt::TAG).to_string();
        assert!(sealed.starts_with(format!("set pii:1 7 0 {want_len}\r\n").as_bytes()));
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let mut r = req(b"set other 0 0 5\r\nhello\r\n");
        assert_eq!(plan(&mut r, &spaces, &keys), McPlan::Clear);
        for line in [
            &b"incr pii:1 1\r\n"[..],
            b"decr pii:1 1\r\n",
            b"append pii:1 0 0 1\r\nx\r\n",
            b"prepend pii:1 0 0 1\r\nx\r\n",
            b"ma pii:1\r\n",
            b"ms pii:1 1 MA\r\nx\r\n",
        ] {
            let mut r = req(line);
            assert!(
                matches!(plan(&mut r, &spaces, &keys), McPlan::Refuse(ref m) if m.contains("pii:1")),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let mut r = req(b"mg pii:1 v f\r\n");
        assert_eq!(
            plan(&mut r, &spaces, &keys),
            McPlan::Sealed(Some(McOpen::Meta(Bytes::from_static(b"pii:1"))))
        );
        let mut r = req(b"mg pii:1 f\r\n");
        assert_eq!(plan(&mut r, &spaces, &keys), McPlan::Sealed(None));
        let mut r = req(b"get other pii:2\r\n");
        assert_eq!(
            plan(&mut r, &spaces, &keys),
            McPlan::Sealed(Some(McOpen::Values))
        );
    }

    #[test]
    fn replies_open_item_by_item_and_bad_values_are_errors() {
        let (keys, spaces) = (keys(), spaces());
        let sealed = keys.seal(b"pii:1", b"hello");
        let mut reply = format!("VALUE pii:1 7 {} 42\r\n", sealed.len()).into_bytes();
        reply.extend_from_slice(&sealed);
        reply.extend_from_slice(b"\r\nVALUE other 0 2\r\nhi\r\nEND\r\n");
        let opened =
            open_reply(&keys, &spaces, &reply, &McOpen::Values, OnPlaintext::Error).unwrap();
        assert_eq!(
            &opened[..],
            b"VALUE pii:1 7 5 42\r\nhello\r\nVALUE other 0 2\r\nhi\r\nEND\r\n"
        );
        let plain = b"VALUE pii:1 0 2\r\nhi\r\nEND\r\n";
        assert_eq!(
            open_reply(&keys, &spaces, plain, &McOpen::Values, OnPlaintext::Error),
            Err((Bytes::from_static(b"pii:1"), OpenError::Plaintext))
        );
        assert_eq!(
            &open_reply(&keys, &spaces, plain, &McOpen::Values, OnPlaintext::Pass).unwrap()[..],
            plain
        );
        let moved = keys.seal(b"pii:2", b"hello");
        let mut reply = format!("VALUE pii:1 0 {}\r\n", moved.len()).into_bytes();
        reply.extend_from_slice(&moved);
        reply.extend_from_slice(b"\r\nEND\r\n");
        assert!(matches!(
            open_reply(&keys, &spaces, &reply, &McOpen::Values, OnPlaintext::Error),
            Err((_, OpenError::Tampered))
        ));
        let mut va = format!("VA {} f7\r\n", sealed.len()).into_bytes();
        va.extend_from_slice(&sealed);
        va.extend_from_slice(b"\r\nMN\r\n");
        let meta = McOpen::Meta(Bytes::from_static(b"pii:1"));
        assert_eq!(
            &open_reply(&keys, &spaces, &va, &meta, OnPlaintext::Error).unwrap()[..],
            b"VA 5 f7\r\nhello\r\nMN\r\n"
        );
        assert_eq!(
            &open_reply(&keys, &spaces, b"EN\r\n", &meta, OnPlaintext::Error).unwrap()[..],
            b"EN\r\n"
        );
        // A hostile node's lengths never wrap around.
        for huge in [
            &b"VALUE pii:1 0 18446744073709551614\r\nEND\r\n"[..],
            b"VALUE pii:1 0 18446744073709551615\r\n",
        ] {
            assert!(open_reply(&keys, &spaces, huge, &McOpen::Values, OnPlaintext::Pass).is_err());
        }
        assert!(open_reply(
            &keys,
            &spaces,
            b"VA 18446744073709551614\r\n",
            &meta,
            OnPlaintext::Pass
        )
        .is_err());
    }

    #[test]
    fn a_refusal_stays_on_one_line_whatever_the_key() {
        let (keys, spaces) = (keys(), spaces());
        // `ma <base64 of "pii:x\r\nHD">` b: a key memcached could not print in a line is
        // refused by the parser, in one line, before encryption sees it.
        let mut buf = BytesMut::from(&b"ma cGlpOngNCkhE b\r\n"[..]);
        match Parser::new(McLimits::default()).next(&mut buf, &crate::protocol::memcached::AsTyped)
        {
            Some(Parsed::Reply(reply)) => {
                assert!(
                    reply.ends_with(b"\r\n") && reply.iter().filter(|&&b| b == b'\n').count() == 1
                )
            }
            other => panic!("{other:?}"),
        }
        // `ma <base64 of "pii:x">` b: printable, refused by encryption in one line.
        let mut r = req(b"ma cGlpOng= b\r\n");
        match plan(&mut r, &spaces, &keys) {
            McPlan::Refuse(why) => assert!(!why.contains('\r') && !why.contains('\n'), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_replies_never_panic(
            prefix in proptest::sample::select(vec![&b""[..], b"VALUE pii:1 0 ", b"VA ", b"END\r\n"]),
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let (keys, spaces) = (keys(), spaces());
            let mut reply = prefix.to_vec();
            reply.extend_from_slice(&rest);
            for open in [McOpen::Values, McOpen::Meta(Bytes::from_static(b"pii:1"))] {
                let _ = open_reply(&keys, &spaces, &reply, &open, OnPlaintext::Pass);
                let _ = open_reply(&keys, &spaces, &reply, &open, OnPlaintext::Error);
            }
        }
    }
}
