//! What encryption does to one command: nothing (no key in an encrypted keyspace), seal its
//! values and open its reply, or refuse it. An allow-list: on an encrypted key only the string
//! commands that store or return a whole value, and those that never look at values (DEL,
//! EXPIRE, TTL, ...), work; everything else (APPEND, INCR, GETRANGE, a hash command, a script
//! naming the key, a command cachegate does not know) is refused, since it would compute on
//! ciphertext or store plaintext where only ciphertext belongs.

use bytes::Bytes;

use super::Keys;
use crate::auth::acl::glob;
use crate::auth::commands::table;

/// How a reply is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// A bulk string (or nil): the value of this key.
    Bulk(Bytes),
    /// An array of bulk strings (or nils): each the value of its key, `None` for one outside
    /// the encrypted keyspaces.
    Array(Vec<Option<Bytes>>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// No key in an encrypted keyspace: as without encryption.
    Clear,
    /// Values sealed in place; the reply opened as `open` (`None`: nothing to open).
    Sealed(Option<Open>),
    /// Refused, with the reason for the client.
    Refuse(String),
}

/// Where a command's value arguments are: `(first value index, step)` after the key.
enum Shape {
    /// The value right after the key at index 1 (SET, SETNX, GETSET).
    ValueAt(usize),
    /// Key, value pairs from index 1 (MSET, MSETNX).
    Pairs,
    /// Only reads the value (GET, GETDEL, GETEX).
    Read,
    /// MGET.
    ReadMany,
    /// Never looks at a value (DEL, EXPIRE, TTL, TYPE, DUMP, ...).
    Neutral,
}

fn shape(name: &str) -> Option<Shape> {
    Some(match name {
        "set" | "setnx" | "getset" => Shape::ValueAt(2),
        "setex" | "psetex" => Shape::ValueAt(3),
        "mset" | "msetnx" => Shape::Pairs,
        "get" | "getdel" | "getex" => Shape::Read,
        "mget" => Shape::ReadMany,
        "del" | "unlink" | "exists" | "expire" | "pexpire" | "expireat" | "pexpireat" | "ttl"
        | "pttl" | "persist" | "type" | "touch" | "expiretime" | "pexpiretime" | "dump"
        | "object|encoding" | "object|freq" | "object|idletime" | "object|refcount" => {
            Shape::Neutral
        }
        _ => return None,
    })
}

/// The key patterns whose string values are encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspaces {
    pub patterns: Vec<String>,
}

impl Keyspaces {
    pub fn covers(&self, key: &[u8]) -> bool {
        self.patterns.iter().any(|p| glob(p.as_bytes(), key))
    }
}

/// Plans `args` (name first, already the real name); seals values in place.
pub fn plan(args: &mut [Bytes], spaces: &Keyspaces, keys: &Keys) -> Plan {
    let Some((name, info)) = table().lookup(args) else {
        // A module's or a newer server's command: which keys it touches is unknown here.
        let any = args[1..].iter().any(|a| spaces.covers(a));
        return if any {
            Plan::Refuse(format!(
                "cachegate: '{}' is not known to cachegate, which cannot tell whether it works on an encrypted key",
                String::from_utf8_lossy(&args[0])
            ))
        } else {
            Plan::Clear
        };
    };
    let name = name.to_string();
    // A script can write any key, named or built inside it: stored in clear under an encrypted
    // key. Refused where values are encrypted.
    if matches!(
        name.as_str(),
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
    ) {
        return Plan::Refuse(format!(
            "cachegate: '{}' is refused on a listener with encrypted keyspaces: a script could store a value in clear under an encrypted key",
            String::from_utf8_lossy(&args[0])
        ));
    }
    let key_args: Vec<usize> = info.keys(&name, &*args).iter().map(|k| k.index).collect();
    let Some(first) = key_args.iter().copied().find(|&i| spaces.covers(&args[i])) else {
        return Plan::Clear;
    };
    let Some(shape) = shape(&name) else {
        return Plan::Refuse(format!(
            "cachegate: '{}' cannot work on '{}': its value is encrypted (only whole-value string commands and key commands can)",
            String::from_utf8_lossy(&args[0]),
            String::from_utf8_lossy(&args[first])
        ));
    };
    match shape {
        Shape::Neutral => Plan::Sealed(None),
        Shape::Read => Plan::Sealed(Some(Open::Bulk(args[1].clone()))),
        Shape::ReadMany => Plan::Sealed(Some(Open::Array(
            args[1..]
                .iter()
                .map(|k| spaces.covers(k).then(|| k.clone()))
                .collect(),
        ))),
        Shape::ValueAt(at) => {
            if args.len() <= at {
                // Redis answers the arity error itself.
                return Plan::Sealed(None);
            }
            let key = args[1].clone();
            args[at] = keys.seal(&key, &args[at]);
            // SET ... GET returns the old value.
            let get = name == "getset"
                || (name == "set" && args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"GET")));
            Plan::Sealed(get.then_some(Open::Bulk(key)))
        }
        Shape::Pairs => {
            let mut i = 1;
            while i + 1 < args.len() {
                if spaces.covers(&args[i]) {
                    let key = args[i].clone();
                    args[i + 1] = keys.seal(&key, &args[i + 1]);
                }
                i += 2;
            }
            Plan::Sealed(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::DataKey;
    use std::sync::Arc;

    fn keys() -> Keys {
        let k = Arc::new(DataKey::new(1, &[3u8; 32]));
        Keys {
            primary: k.clone(),
            all: vec![k],
        }
    }

    fn spaces() -> Keyspaces {
        Keyspaces {
            patterns: vec!["pii:*".into()],
        }
    }

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn writes_are_sealed_and_reads_opened_only_in_the_keyspaces() {
        let (keys, spaces) = (keys(), spaces());
        let mut a = args(&["SET", "pii:1", "canary", "EX", "10"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Sealed(None));
        assert_eq!(&keys.open(b"pii:1", &a[2]).unwrap()[..], b"canary");
        assert_eq!(&a[3][..], b"EX");
        let mut a = args(&["SET", "other", "canary"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Clear);
        assert_eq!(&a[2][..], b"canary");
        let mut a = args(&["set", "pii:1", "v", "GET"]);
        assert_eq!(
            plan(&mut a, &spaces, &keys),
            Plan::Sealed(Some(Open::Bulk(Bytes::from_static(b"pii:1"))))
        );
        let mut a = args(&["MSET", "pii:1", "a", "x", "b"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Sealed(None));
        assert!(crate::crypt::is_sealed(&a[2]));
        assert_eq!(&a[4][..], b"b");
        let mut a = args(&["MGET", "x", "pii:2"]);
        assert_eq!(
            plan(&mut a, &spaces, &keys),
            Plan::Sealed(Some(Open::Array(vec![
                None,
                Some(Bytes::from_static(b"pii:2"))
            ])))
        );
        let mut a = args(&["SETEX", "pii:3", "10", "v"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Sealed(None));
        assert!(crate::crypt::is_sealed(&a[3]));
    }

    #[test]
    fn what_would_compute_on_ciphertext_or_store_plaintext_is_refused() {
        let (keys, spaces) = (keys(), spaces());
        for call in [
            &["APPEND", "pii:1", "x"][..],
            &["INCR", "pii:1"],
            &["GETRANGE", "pii:1", "0", "1"],
            &["STRLEN", "pii:1"],
            &["SETRANGE", "pii:1", "0", "x"],
            &["HSET", "pii:1", "f", "v"],
            &["LPUSH", "pii:1", "v"],
            &["RENAME", "pii:1", "pii:2"],
            &["COPY", "pii:1", "x"],
            &["EVAL", "return 1", "1", "pii:1"],
            &[
                "EVAL",
                "return redis.call('SET', ARGV[1], ARGV[2])",
                "0",
                "pii:2",
                "x",
            ],
            &["FCALL", "f", "0"],
            &["BITCOUNT", "pii:1"],
            &["NOSUCHMODULECMD", "pii:1"],
        ] {
            let mut a = args(call);
            assert!(
                matches!(plan(&mut a, &spaces, &keys), Plan::Refuse(_)),
                "{call:?}"
            );
        }
        let mut a = args(&["DEL", "pii:1", "x"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Sealed(None));
        let mut a = args(&["APPEND", "x", "y"]);
        assert_eq!(plan(&mut a, &spaces, &keys), Plan::Clear);
    }
}
