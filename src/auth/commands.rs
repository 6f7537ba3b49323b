//! The Redis command table (categories, flags, key specs) and key extraction from key specs.
//!
//! The table is generated from a real Redis by `scripts/gen-command-table.py` into
//! `commands.json`, checked in with the Redis version it came from, and embedded here.

use rustc_hash::FxHashMap as HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

const TABLE_JSON: &str = include_str!("commands.json");

#[derive(Debug, Deserialize)]
pub struct CommandTable {
    pub redis_version: String,
    pub categories: Vec<String>,
    pub commands: HashMap<String, CommandInfo>,
}

#[derive(Debug, Deserialize)]
pub struct CommandInfo {
    pub arity: i64,
    pub flags: Vec<String>,
    pub categories: Vec<String>,
    pub key_specs: Vec<KeySpec>,
    /// Keyed by the full name, e.g. `config|get`.
    pub subcommands: HashMap<String, CommandInfo>,
}

#[derive(Debug, Deserialize)]
pub struct KeySpec {
    pub flags: Vec<String>,
    pub begin: Begin,
    pub find: Find,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Begin {
    Index(i64),
    /// The keyword, and where to start looking for it (negative: from the end).
    Keyword((String, i64)),
    #[serde(rename = "unknown")]
    Unknown,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Find {
    /// lastkey, keystep, limit
    Range([i64; 3]),
    /// keynumidx, firstkey, keystep
    Keynum([i64; 3]),
    #[serde(rename = "unknown")]
    Unknown,
}

/// What an ACL needs to know about one key argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUse {
    pub index: usize,
    /// The key is read (`access`).
    pub read: bool,
    /// The key is written (`insert`, `update`, `delete`).
    pub write: bool,
    /// The spec says `not_key`: a name hashed like a key (a sharded channel, for its slot)
    /// that is no key; Redis's ACL leaves it to the channel rules.
    pub not_key: bool,
}

/// The commands that run a script inside Redis (as the backend login, past cachegate's view
/// of what the script does), as the command table spells them.
pub const RUNS_SCRIPT: [&str; 6] = [
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// Whether a request's argument is the keyword `word` as Redis reads keywords and names:
/// case-insensitively, up to the argument's first NUL (Redis compares them with `strcasecmp`,
/// which stops there: `STREAMS\0x` is `STREAMS` to Redis). Every keyword cachegate judges a
/// request by is compared this way, so that it reads the request as Redis will.
pub fn is_word(arg: &[u8], word: &[u8]) -> bool {
    let end = memchr::memchr(0, arg).unwrap_or(arg.len());
    arg[..end].eq_ignore_ascii_case(word)
}

/// `word` lowercased into `buf`, if it fits and is UTF-8 (a name that does not is in no table).
fn lowercase<'b>(word: &[u8], buf: &'b mut [u8; 128]) -> Option<&'b str> {
    let out = buf.get_mut(..word.len())?;
    out.copy_from_slice(word);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Whether a script could call this command (Redis refuses `noscript` ones inside scripts).
pub fn script_callable(args: &[impl AsRef<[u8]>]) -> bool {
    table()
        .lookup(args)
        .is_none_or(|(_, info)| info.script_callable())
}

/// The embedded table, parsed once.
pub fn table() -> &'static CommandTable {
    static TABLE: OnceLock<CommandTable> = OnceLock::new();
    // The JSON is generated and checked in; a parse failure is a build defect caught by tests.
    TABLE.get_or_init(|| serde_json::from_str(TABLE_JSON).expect("src/auth/commands.json is valid"))
}

impl CommandTable {
    /// The command (or subcommand) a call names: `(full name, info)`, e.g. `("config|get", ..)`.
    /// Called for every request: names are lowercased on the stack, never allocated (no name
    /// in the table is longer than the buffers, nor anything but ASCII).
    pub fn lookup(&self, args: &[impl AsRef<[u8]>]) -> Option<(&str, &CommandInfo)> {
        let mut buf = [0u8; 128];
        let name = lowercase(args.first()?.as_ref(), &mut buf)?;
        self.lookup_folded(name, args)
    }

    /// [`CommandTable::lookup`] for a name the caller has already folded to lower case
    /// (`args[0]` as typed is then not read).
    pub fn lookup_folded(
        &self,
        lower: &str,
        args: &[impl AsRef<[u8]>],
    ) -> Option<(&str, &CommandInfo)> {
        let mut buf = [0u8; 128];
        let (name, info) = self.commands.get_key_value(lower)?;
        if !info.subcommands.is_empty() {
            if let Some(sub) = args.get(1) {
                // `name|sub`, as the table spells a subcommand.
                let mut call = [0u8; 128];
                let sub = sub.as_ref();
                if name.len() + 1 + sub.len() <= call.len() {
                    call[..name.len()].copy_from_slice(name.as_bytes());
                    call[name.len()] = b'|';
                    call[name.len() + 1..][..sub.len()].copy_from_slice(sub);
                    let full = &call[..name.len() + 1 + sub.len()];
                    if let Some(found) = lowercase(full, &mut buf)
                        .and_then(|full| info.subcommands.get_key_value(full))
                    {
                        return Some((found.0.as_str(), found.1));
                    }
                }
            }
        }
        Some((name.as_str(), info))
    }

    /// Every command and subcommand, by full name.
    pub fn all(&self) -> impl Iterator<Item = (&str, &CommandInfo)> {
        self.commands.iter().flat_map(|(name, info)| {
            std::iter::once((name.as_str(), info))
                .chain(info.subcommands.iter().map(|(n, i)| (n.as_str(), i)))
        })
    }
}

impl CommandInfo {
    /// Whether a script could call it (Redis refuses `noscript` commands inside scripts).
    pub fn script_callable(&self) -> bool {
        !self.flags.iter().any(|f| f == "noscript")
    }

    /// The key arguments of a call, from the key specs, as Redis's `getKeysUsingKeySpecs`
    /// finds them; plus the few commands whose keys no spec fully describes.
    ///
    /// Work is bounded by the arguments present, never by a count the client declares:
    /// `SINTERCARD 4000000000 k` looks at one key, and no arithmetic on a declared count can
    /// wrap. A declared range past the last argument yields the keys that are there (Redis then
    /// reports the arity or syntax error itself).
    pub fn keys(&self, name: &str, args: &[impl AsRef<[u8]>]) -> Vec<KeyUse> {
        match name {
            "migrate" => return migrate_keys(args),
            "georadius" | "georadiusbymember" => return georadius_keys(name, args),
            _ => {}
        }
        let argc = args.len() as i64;
        let mut keys = Vec::new();
        for spec in &self.key_specs {
            let mut read = spec.flags.iter().any(|f| f == "access");
            let mut write = spec
                .flags
                .iter()
                .any(|f| f == "insert" || f == "update" || f == "delete");
            if spec.flags.iter().any(|f| f == "variable_flags") {
                (read, write) = variable_flags(name, args);
            }
            let not_key = spec.flags.iter().any(|f| f == "not_key");
            let first = match &spec.begin {
                Begin::Index(i) => *i,
                Begin::Keyword((keyword, startfrom)) => {
                    let found = if *startfrom >= 0 {
                        (*startfrom..argc).find(|&i| eq(args, i, keyword))
                    } else {
                        (1..=argc + startfrom).rev().find(|&i| eq(args, i, keyword))
                    };
                    match found {
                        Some(i) => i + 1,
                        None => continue,
                    }
                }
                Begin::Unknown => continue,
            };
            let (first, last, step) = match spec.find {
                Find::Range([lastkey, step, limit]) => {
                    let last = if lastkey >= 0 {
                        first.saturating_add(lastkey)
                    } else if limit == 0 {
                        argc + lastkey
                    } else {
                        first + ((argc - first) / limit + lastkey)
                    };
                    (first, last, step)
                }
                Find::Keynum([keynumidx, firstkey, step]) => {
                    let Some(numkeys) = args
                        .get((first + keynumidx) as usize)
                        .and_then(|a| std::str::from_utf8(a.as_ref()).ok()?.parse::<i64>().ok())
                        .filter(|n| *n >= 0)
                    else {
                        continue;
                    };
                    let first = first + firstkey;
                    (first, first.saturating_add(numkeys) - 1, step)
                }
                Find::Unknown => continue,
            };
            // Only arguments that exist are keys; the loop never runs past them.
            let last = last.min(argc - 1);
            let mut i = first.max(1);
            while i <= last && step > 0 {
                keys.push(KeyUse {
                    index: i as usize,
                    read,
                    write,
                    not_key,
                });
                i += step;
            }
        }
        let extras = special_keys(name, args);
        if !extras.is_empty() {
            // (XREAD's own reading of its streams mostly finds the spec's: each index once,
            // looked up in a sorted list, so that a request naming many streams costs no
            // more than their number times its logarithm.)
            let mut found: Vec<usize> = keys.iter().map(|k| k.index).collect();
            found.sort_unstable();
            keys.extend(
                extras
                    .into_iter()
                    .filter(|e| found.binary_search(&e.index).is_err()),
            );
        }
        keys
    }
}

/// (read, written) for the key specs whose flags depend on the arguments, as Redis's
/// `setGetKeys` and `bitfieldGetKeys` decide them: SET reads its key only with GET; BITFIELD
/// writes unless it is GET/OVERFLOW only.
fn variable_flags(name: &str, args: &[impl AsRef<[u8]>]) -> (bool, bool) {
    let is = |i: usize, w: &[u8]| is_word(args[i].as_ref(), w);
    match name {
        "set" => ((3..args.len()).any(|i| is(i, b"GET")), true),
        "bitfield" => {
            let mut i = 2;
            while i < args.len() {
                let left = args.len() - i - 1;
                if is(i, b"GET") && left >= 2 {
                    i += 3;
                } else if is(i, b"OVERFLOW") && left >= 1 {
                    i += 2;
                } else {
                    // SET, INCRBY, or a syntax error: safer to take it as a write.
                    return (true, true);
                }
            }
            (true, false)
        }
        _ => (true, true),
    }
}

fn eq(args: &[impl AsRef<[u8]>], i: i64, word: &str) -> bool {
    args.get(i as usize)
        .is_some_and(|a| is_word(a.as_ref(), word.as_bytes()))
}

/// Keys that Redis finds with a `getkeys_proc` because no key spec describes them.
fn special_keys(name: &str, args: &[impl AsRef<[u8]>]) -> Vec<KeyUse> {
    match name {
        // SORT ... STORE <destination>: written. Redis's `sortGetKeys` and SORT itself read
        // the options differently (the first does not take STORE's argument, so that
        // `STORE "GET\0x" STORE victim` has it check `GET\0x` while SORT writes `victim`; a
        // reviewer found it, and Redis 7.0's own ACL has the same hole): every argument after
        // a STORE is checked as a destination, whichever way the options are read. Stricter
        // than Redis only where a pattern or a count reads `STORE`, a SORT that fails anyway.
        "sort" => (2..args.len().saturating_sub(1))
            .filter(|&i| is_word(args[i].as_ref(), b"STORE"))
            .map(|i| KeyUse {
                index: i + 1,
                read: false,
                write: true,
                not_key: false,
            })
            .collect(),
        "xread" | "xreadgroup" => xread_keys(args),
        _ => Vec::new(),
    }
}

/// XREAD / XREADGROUP: the streams as the command itself finds them, walking its options with
/// their arguments (`GROUP g c`, `COUNT n`, `BLOCK ms`, `NOACK`) up to `STREAMS`; the keys are
/// the first half of what follows. The key spec's keyword search (from a fixed position, for
/// any `STREAMS`) can find a consumer or group named `STREAMS` instead, which shifts the keys
/// it checks and leaves a stream unchecked (`XREADGROUP GROUP g STREAMS ...` where the real
/// list comes later; Redis 7.0's own ACL has that hole, a reviewer found it): both readings
/// are checked.
fn xread_keys(args: &[impl AsRef<[u8]>]) -> Vec<KeyUse> {
    let mut i = 1;
    while i < args.len() {
        let more = args.len() - i - 1;
        let is = |w: &[u8]| is_word(args[i].as_ref(), w);
        if (is(b"BLOCK") || is(b"COUNT")) && more >= 1 {
            i += 2;
        } else if is(b"STREAMS") && more >= 1 {
            let first = i + 1;
            return (first..first + (args.len() - first) / 2)
                .map(|index| KeyUse {
                    index,
                    read: true,
                    write: false,
                    not_key: false,
                })
                .collect();
        } else if is(b"GROUP") && more >= 2 {
            i += 3;
        } else if is(b"NOACK") {
            i += 1;
        } else {
            // A syntax error: the command fails.
            break;
        }
    }
    Vec::new()
}

/// GEORADIUS key ... [STORE key] [STOREDIST key]: the source key (read) and *every* STORE or
/// STOREDIST destination (written). Redis 7.0's key specs check only the first STORE and the
/// first STOREDIST, while the command writes the last one given (`GEORADIUS k ... STORE app:d
/// STORE other:d` writes `other:d` past `~app:*`); cachegate checks them all, stricter than
/// Redis there on purpose.
fn georadius_keys(name: &str, args: &[impl AsRef<[u8]>]) -> Vec<KeyUse> {
    let mut keys = Vec::new();
    if args.len() > 1 {
        keys.push(KeyUse {
            index: 1,
            read: true,
            write: false,
            not_key: false,
        });
    }
    // Options start after `key longitude latitude radius unit` (BYMEMBER: `key member radius
    // unit`), as the key specs' keyword searches do.
    let start = if name == "georadius" { 6 } else { 5 };
    let mut i = start;
    while i + 1 < args.len() {
        let a = args[i].as_ref();
        if is_word(a, b"STORE") || is_word(a, b"STOREDIST") {
            keys.push(KeyUse {
                index: i + 1,
                read: false,
                write: true,
                not_key: false,
            });
            i += 1;
        }
        i += 1;
    }
    keys
}

/// MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS k...]:
/// as Redis's `migrateGetKeys`: the options after the timeout are walked with their arguments
/// skipped (so `AUTH KEYS` is a password, not the keyword), and the keys are those after KEYS
/// when it comes, else the key argument (even empty). Read and deleted.
fn migrate_keys(args: &[impl AsRef<[u8]>]) -> Vec<KeyUse> {
    let used = |index| KeyUse {
        index,
        read: true,
        write: true,
        not_key: false,
    };
    let is = |i: usize, w: &[u8]| is_word(args[i].as_ref(), w);
    let (mut first, mut count) = (3, 1);
    let mut i = 6;
    while i < args.len() {
        if is(i, b"KEYS") {
            if args.get(3).is_some_and(|k| !k.as_ref().is_empty()) {
                // Redis refuses the call (the key argument must be empty with KEYS).
                return Vec::new();
            }
            first = i + 1;
            count = args.len() - first;
            break;
        }
        if is(i, b"AUTH") {
            i += 1;
        } else if is(i, b"AUTH2") {
            i += 2;
        }
        i += 1;
    }
    (first..first + count)
        .filter(|&index| index < args.len())
        .map(used)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(args: &[&str]) -> Vec<(usize, bool, bool)> {
        let t = table();
        let (name, info) = t.lookup(args).unwrap();
        info.keys(name, args)
            .into_iter()
            .map(|k| (k.index, k.read, k.write))
            .collect()
    }

    #[test]
    fn table_loads_with_its_version() {
        let t = table();
        assert!(t.redis_version.starts_with('7'), "{}", t.redis_version);
        assert!(t.commands.len() > 200);
        assert!(t.categories.contains(&"scripting".to_string()));
        let (name, info) = t.lookup(&["CONFIG", "get", "x"]).unwrap();
        assert_eq!(name, "config|get");
        assert!(info.categories.contains(&"admin".to_string()));
    }

    #[test]
    fn keys_from_specs() {
        assert_eq!(keys(&["GET", "k"]), vec![(1, true, false)]);
        // SET reads its key only with GET (Redis's setGetKeys).
        assert_eq!(keys(&["SET", "k", "v"]), vec![(1, false, true)]);
        assert_eq!(keys(&["SET", "k", "v", "get"]), vec![(1, true, true)]);
        assert_eq!(
            keys(&["BITFIELD", "k", "GET", "u8", "0"]),
            vec![(1, true, false)]
        );
        assert_eq!(
            keys(&["BITFIELD", "k", "GET", "u8", "0", "SET", "u8", "0", "1"]),
            vec![(1, true, true)]
        );
        assert_eq!(
            keys(&["MSET", "a", "1", "b", "2"]),
            vec![(1, false, true), (3, false, true)]
        );
        assert_eq!(
            keys(&["DEL", "a", "b"]),
            vec![(1, false, true), (2, false, true)]
        );
        assert_eq!(keys(&["EXISTS", "a"]), vec![(1, false, false)]);
        assert_eq!(
            keys(&["EVAL", "s", "2", "a", "b", "argv"]),
            vec![(3, true, true), (4, true, true)]
        );
        assert_eq!(
            keys(&["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"]),
            vec![(4, true, false), (5, true, false)]
        );
        assert_eq!(
            keys(&["COPY", "src", "dst"]),
            vec![(1, true, false), (2, false, true)]
        );
        let sort = keys(&["SORT", "l", "BY", "w_*", "STORE", "dst"]);
        assert!(
            sort.contains(&(1, true, false)) && sort.contains(&(5, false, true)),
            "{sort:?}"
        );
        let migrate = keys(&["MIGRATE", "h", "1", "", "0", "10", "KEYS", "a", "b"]);
        assert_eq!(migrate, vec![(7, true, true), (8, true, true)]);
        // `AUTH KEYS`: KEYS is the password; the (empty) key argument is the key.
        let migrate = keys(&["MIGRATE", "h", "1", "", "0", "10", "AUTH", "KEYS"]);
        assert_eq!(migrate, vec![(3, true, true)]);
        let migrate = keys(&[
            "MIGRATE", "h", "1", "", "0", "10", "AUTH2", "u", "KEYS", "KEYS", "k",
        ]);
        assert_eq!(migrate, vec![(10, true, true)]);
        // Malformed calls yield no keys (the server reports the arity error).
        assert_eq!(keys(&["EVAL", "s", "x"]), vec![]);
    }

    /// A declared key count costs work only for the arguments present: four billion declared,
    /// one key there, one key checked (the loop stops at the last argument); no arithmetic
    /// wraps.
    #[test]
    fn declared_counts_are_bounded_by_the_arguments() {
        for count in ["4000000000", "9223372036854775807", "2147483648"] {
            assert_eq!(keys(&["SINTERCARD", count, "k"]), vec![(2, true, false)]);
            assert_eq!(
                keys(&["EVAL", "s", count, "a", "b"]),
                vec![(3, true, true), (4, true, true)]
            );
            assert_eq!(keys(&["ZUNION", count, "a"]), vec![(2, true, false)]);
            assert_eq!(keys(&["LMPOP", count, "a", "LEFT"]).len(), 2);
        }
    }

    /// Every STORE / STOREDIST of GEORADIUS is a written key, not only the first of each (the
    /// command writes the last one given); SORT writes its last STORE, skipping option values.
    #[test]
    fn every_destination_is_a_key() {
        let geo = keys(&[
            "GEORADIUS",
            "g",
            "15",
            "37",
            "200",
            "km",
            "STORE",
            "a",
            "STORE",
            "b",
        ]);
        assert_eq!(
            geo,
            vec![(1, true, false), (7, false, true), (9, false, true)]
        );
        let geo = keys(&[
            "GEORADIUSBYMEMBER",
            "g",
            "m",
            "200",
            "km",
            "STOREDIST",
            "a",
            "STORE",
            "b",
        ]);
        assert_eq!(
            geo,
            vec![(1, true, false), (6, false, true), (8, false, true)]
        );
        // Every argument after a STORE: SORT writes the last, Redis's key finder checks
        // another when an option reads differently (`STORE "GET\0x" STORE b`).
        let sort = keys(&["SORT", "l", "STORE", "a", "STORE", "b"]);
        assert!(sort.contains(&(5, false, true)) && sort.contains(&(3, false, true)));
        let sort = keys(&["SORT", "l", "STORE", "GET\0x", "STORE", "b"]);
        assert!(sort.contains(&(5, false, true)) && sort.contains(&(3, false, true)));
        // A pattern that reads STORE: its next argument is checked too (that SORT fails).
        assert_eq!(
            keys(&["SORT", "l", "BY", "STORE", "x"]),
            vec![(1, true, false), (4, false, true)]
        );
    }
}
