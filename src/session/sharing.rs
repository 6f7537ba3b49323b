//! Which commands may travel on a shared upstream connection: an allow-list.
//!
//! A session that holds no connection state sends its commands on connections shared with
//! other sessions. A command may go there only if it is known to act on data (or on the server)
//! alone, leave nothing behind on the connection, and have exactly one reply meant for its
//! caller. Everything else needs the session's own connection (pin), its own connection that is
//! closed afterwards because RESET does not clean what it leaves (pin-taint), an answer from
//! cachegate (local), or a refusal. The verdict for every command and subcommand of the command
//! table was reviewed against a real Redis 7.0.15 (what RESET clears, what names other
//! connections) and is kept in `dispositions.tsv`; a test walks the whole table against it, so
//! a new command cannot slip onto a shared connection by default. A command the table does not
//! know (a module's, a newer Redis's) is never shared: it pins a connection that is closed
//! afterwards.

use std::sync::OnceLock;

use bytes::Bytes;
use rustc_hash::FxHashMap as HashMap;

const REVIEWED: &str = include_str!("dispositions.tsv");

/// What a command needs from the upstream connection of a session without connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Safe on a connection shared with other sessions.
    Shared,
    /// Creates connection state that RESET clears: the session's own connection.
    Pin,
    /// Leaves state RESET does not clear (SCRIPT DEBUG, CLIENT NO-EVICT, unknown commands):
    /// the session's own connection, closed instead of pooled when the session ends.
    PinTaint,
    /// Answered by cachegate (AUTH, HELLO, CLIENT ID/INFO/LIST/SETNAME, ACL with users...).
    Local,
    /// Never forwarded: the reply says why.
    Refuse(Refusal),
}

/// Why a command is refused; `reply` gives the wire text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Names or acts on connections that are not the caller's (CLIENT KILL, UNBLOCK, PAUSE,
    /// TRACKING ... REDIRECT).
    OtherConnections(&'static str),
    /// Replication and cluster internals (SYNC, PSYNC, REPLCONF, RESTORE-ASKING).
    Internal(&'static str),
    /// SCRIPT DEBUG SYNC blocks the whole server while a debugging session lasts.
    BlocksServer,
    /// A container command with a subcommand Redis 7.0 does not know.
    UnknownSubcommand,
    /// A container command without its subcommand.
    Arity,
    /// A refused subcommand called with a number of arguments Redis refuses first (Redis
    /// checks arity before anything else; its error names `container|sub`).
    SubArity(&'static str),
    /// ACL commands that act on the backend's users (cachegate's own connections use them),
    /// when cachegate holds no users itself.
    BackendUsers,
    /// CONFIG SET of a setting that decides whether cachegate's own connections reach and log
    /// in to the backend (its password, ports, TLS, client limits): changed behind cachegate's
    /// back, it locks every client out until an operator steps in.
    LocksOut(&'static str),
}

impl Refusal {
    /// The error reply, in Redis's words where Redis has them.
    pub fn reply(&self, args: &[Bytes]) -> Bytes {
        let name = String::from_utf8_lossy(&args[0]).to_string();
        let sub = args
            .get(1)
            .map(|s| String::from_utf8_lossy(s).to_string())
            .unwrap_or_default();
        let text = match self {
            Refusal::OtherConnections(what) => format!(
                "ERR cachegate: {what} acts on connections that are not this client's (upstream connections are shared); refused"
            ),
            Refusal::Internal(what) => format!(
                "ERR cachegate: {what} is internal to Redis replication or clustering and is not available through cachegate"
            ),
            Refusal::BlocksServer => {
                "ERR cachegate: SCRIPT DEBUG SYNC blocks the whole server for every client; use SCRIPT DEBUG YES".into()
            }
            Refusal::UnknownSubcommand => format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                printable(&sub),
                name.to_ascii_uppercase()
            ),
            Refusal::Arity => format!(
                "ERR wrong number of arguments for '{}' command",
                name.to_ascii_lowercase()
            ),
            Refusal::SubArity(full) => {
                format!("ERR wrong number of arguments for '{full}' command")
            }
            Refusal::BackendUsers => format!(
                "ERR cachegate: ACL {} would act on the backend's users, which cachegate's own connections use; manage them on the backend directly",
                sub.to_ascii_uppercase()
            ),
            Refusal::LocksOut(param) => format!(
                "ERR cachegate: CONFIG SET {param} could lock cachegate's own connections out of the backend, or have the backend close them, and every client with them; change it on the backend (and in cachegate's upstream settings) together"
            ),
        };
        crate::protocol::reply::error_line(&text)
    }
}

/// A client-chosen word shortened and stripped of control characters, for an error text.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The reviewed verdicts by full name (`get`, `client|kill`).
fn reviewed() -> &'static HashMap<&'static str, Sharing> {
    static TABLE: OnceLock<HashMap<&'static str, Sharing>> = OnceLock::new();
    TABLE.get_or_init(|| {
        REVIEWED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let mut cols = l.split('\t');
                let name = cols.next()?;
                let sharing = match cols.next()? {
                    "shared" => Sharing::Shared,
                    "pin" => Sharing::Pin,
                    "pin-taint" => Sharing::PinTaint,
                    "local" => Sharing::Local,
                    "refuse" => Sharing::Refuse(base_refusal(name)),
                    // A typo in the reviewed file is caught by the table test.
                    _ => return None,
                };
                Some((name, sharing))
            })
            .collect()
    })
}

/// The refusal of a name the reviewed file says `refuse`.
fn base_refusal(name: &str) -> Refusal {
    match name {
        "client|kill" => Refusal::OtherConnections("CLIENT KILL"),
        "client|unblock" => Refusal::OtherConnections("CLIENT UNBLOCK"),
        "client|pause" => Refusal::OtherConnections("CLIENT PAUSE"),
        "client|unpause" => Refusal::OtherConnections("CLIENT UNPAUSE"),
        "sync" => Refusal::Internal("SYNC"),
        "psync" => Refusal::Internal("PSYNC"),
        "replconf" => Refusal::Internal("REPLCONF"),
        "restore-asking" => Refusal::Internal("RESTORE-ASKING"),
        // The bare name of a container: its subcommand was not found.
        _ => Refusal::UnknownSubcommand,
    }
}

/// Redis's arity rule: exactly `arity` arguments (name included), or at least `-arity`.
pub(crate) fn arity_fits(arity: i64, given: usize) -> bool {
    let given = given as i64;
    if arity >= 0 {
        given == arity
    } else {
        given >= -arity
    }
}

/// Settings that decide whether cachegate's own connections reach the backend and log in to it,
/// or whether the backend closes them under every client on them (a request or a batch of
/// replies past a limit) (Redis 7.0's names; it has no aliases for them). `CONFIG SET` of any
/// is refused. (`timeout` is not: it closes connections only while idle, which cachegate
/// replaces, and redis-py's own tests set it.)
const LOCKOUT_SETTINGS: &[&str] = &[
    // Where a cluster's nodes say they are: a cluster listener connects there (with its
    // credentials and client certificate), verifying the name announced.
    "cluster-announce-ip",
    "cluster-announce-hostname",
    "cluster-announce-port",
    "cluster-announce-tls-port",
    "cluster-announce-bus-port",
    "cluster-preferred-endpoint-type",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "client-output-buffer-limit",
    "requirepass",
    "protected-mode",
    "port",
    "bind",
    "maxclients",
    "maxmemory-clients",
    "tls-port",
    "tls-auth-clients",
    "tls-ca-cert-file",
    "tls-ca-cert-dir",
    "tls-cert-file",
    "tls-key-file",
    "tls-key-file-pass",
    "tls-client-cert-file",
    "tls-client-key-file",
    "tls-client-key-file-pass",
    "tls-protocols",
    "tls-ciphers",
    "tls-ciphersuites",
];

/// The verdict for one call (name already resolved through the rename policy).
/// `users_here`: cachegate holds the ACL users (ACL commands are answered locally). The
/// session calls `of_found` with the entry admission looked up; this looks it up itself.
#[cfg(test)]
pub fn of(args: &[Bytes], users_here: bool) -> Sharing {
    of_found(
        args,
        crate::auth::commands::table().lookup(args),
        users_here,
    )
}

/// `of` for a call already looked up in the command table (see `User::check_found`).
pub fn of_found(
    args: &[Bytes],
    found: Option<(&str, &crate::auth::commands::CommandInfo)>,
    users_here: bool,
) -> Sharing {
    let Some((full, info)) = found else {
        // Not in the table: a module's or a newer server's command, never shared.
        return Sharing::PinTaint;
    };
    // CLIENT SETINFO is Redis 7.2's, newer than the table: cachegate keeps it itself.
    if full == "client"
        && args
            .get(1)
            .is_some_and(|s| crate::auth::commands::is_word(s, b"SETINFO"))
    {
        return Sharing::Local;
    }
    if !info.subcommands.is_empty() {
        // The container itself: called without a subcommand, or with one it does not know.
        return match args.len() {
            // COMMAND alone is the whole table (its arity is -1); no other container runs bare.
            1 if full == "command" => Sharing::Shared,
            1 => Sharing::Refuse(Refusal::Arity),
            _ if full == "acl" && users_here => Sharing::Local,
            _ => Sharing::Refuse(Refusal::UnknownSubcommand),
        };
    }
    let has = |word: &[u8]| {
        args.iter()
            .skip(2)
            .any(|a| crate::auth::commands::is_word(a, word))
    };
    match full {
        "client|tracking" if has(b"REDIRECT") => {
            Sharing::Refuse(Refusal::OtherConnections("CLIENT TRACKING ... REDIRECT"))
        }
        // Blocking only with BLOCK (a key named "block" pins too: harmless).
        "xread" | "xreadgroup"
            if args
                .iter()
                .any(|a| crate::auth::commands::is_word(a, b"BLOCK")) =>
        {
            Sharing::Pin
        }
        // Parameters at 2, 4, ... (CONFIG SET takes several pairs since Redis 7.0).
        "config|set" => match args.iter().skip(2).step_by(2).find_map(|p| {
            LOCKOUT_SETTINGS
                .iter()
                .find(|name| crate::auth::commands::is_word(p, name.as_bytes()))
        }) {
            Some(name) => Sharing::Refuse(Refusal::LocksOut(name)),
            None => Sharing::Shared,
        },
        "script|debug" if has(b"SYNC") => Sharing::Refuse(Refusal::BlocksServer),
        "script|debug" if has(b"NO") => Sharing::Shared,
        _ if full.starts_with("acl|") && !users_here => match full {
            "acl|whoami" => Sharing::Local,
            "acl|cat" | "acl|genpass" | "acl|help" | "acl|dryrun" => Sharing::Shared,
            _ => Sharing::Refuse(Refusal::BackendUsers),
        },
        name => match reviewed().get_key_value(name) {
            // Redis answers a wrong number of arguments before anything else.
            Some((full, Sharing::Refuse(_))) if !arity_fits(info.arity, args.len()) => {
                Sharing::Refuse(Refusal::SubArity(full))
            }
            Some((_, sharing)) => *sharing,
            None => Sharing::PinTaint,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::commands::table;
    use crate::session::commands::words as call;

    /// Every command and subcommand of the table has a reviewed verdict, and every reviewed
    /// name is in the table: a command added to the table (a newer Redis) fails here until
    /// someone decides where it may run.
    #[test]
    fn every_table_entry_is_reviewed() {
        let names: Vec<&str> = REVIEWED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split('\t').next().unwrap_or(""))
            .collect();
        assert_eq!(
            names.len(),
            reviewed().len(),
            "a line with an unknown verdict"
        );
        for (name, _) in table().all() {
            assert!(
                reviewed().contains_key(name),
                "{name} has no reviewed disposition in src/session/dispositions.tsv"
            );
        }
        for name in names {
            let known = table().all().any(|(n, _)| n == name);
            assert!(known, "{name} is reviewed but not in the command table");
        }
    }

    /// What the review rests on, re-derived from the table's own flags: nothing that blocks,
    /// subscribes, transacts or changes the connection is shared.
    #[test]
    fn nothing_stateful_is_shared() {
        for (name, info) in table().all() {
            if reviewed().get(name) != Some(&Sharing::Shared) {
                continue;
            }
            let in_category = |c: &str| info.categories.iter().any(|x| x == c);
            // XREAD and XREADGROUP block only with BLOCK, which `of` pins.
            let block_arg = matches!(name, "xread" | "xreadgroup");
            assert!(!in_category("blocking") || block_arg, "{name} blocks");
            assert!(!in_category("transaction"), "{name} is transactional");
            let pubsub_ok = name == "publish" || name == "spublish" || name.starts_with("pubsub|");
            assert!(!in_category("pubsub") || pubsub_ok, "{name} subscribes");
            if in_category("connection") {
                // Connection-category commands that only read: the command table, and the
                // tracking state of a shared connection (always off: tracking pins).
                let reads_only = matches!(
                    name,
                    "ping" | "echo" | "client|getredir" | "client|trackinginfo" | "client|help"
                ) || name == "command"
                    || name.starts_with("command|");
                assert!(reads_only, "{name} acts on the connection");
            }
        }
    }

    #[test]
    fn verdicts_for_the_reported_cases() {
        assert_eq!(of(&call("SCRIPT DEBUG YES"), false), Sharing::PinTaint);
        assert_eq!(
            of(&call("SCRIPT DEBUG SYNC"), false),
            Sharing::Refuse(Refusal::BlocksServer)
        );
        assert_eq!(of(&call("script debug no"), false), Sharing::Shared);
        assert_eq!(of(&call("CLIENT NO-EVICT ON"), false), Sharing::PinTaint);
        assert!(matches!(
            of(&call("CLIENT TRACKING ON REDIRECT 7 BCAST"), false),
            Sharing::Refuse(Refusal::OtherConnections(_))
        ));
        assert_eq!(of(&call("CLIENT TRACKING ON BCAST"), false), Sharing::Pin);
        for refused in [
            "CLIENT KILL ID 7",
            "CLIENT UNBLOCK 7",
            "CLIENT PAUSE 100",
            "SYNC",
            "PSYNC ? -1",
        ] {
            assert!(
                matches!(of(&call(refused), false), Sharing::Refuse(_)),
                "{refused}"
            );
        }
        for local in [
            "CLIENT ID",
            "CLIENT INFO",
            "CLIENT LIST",
            "CLIENT SETNAME x",
            "CLIENT SETINFO LIB-NAME x",
        ] {
            assert_eq!(of(&call(local), false), Sharing::Local, "{local}");
        }
        assert_eq!(of(&call("NOSUCHCOMMAND x"), false), Sharing::PinTaint);
        assert_eq!(
            of(&call("CLIENT NO-TOUCH ON"), false),
            Sharing::Refuse(Refusal::UnknownSubcommand)
        );
        assert_eq!(of(&call("CONFIG"), false), Sharing::Refuse(Refusal::Arity));
        assert_eq!(of(&call("COMMAND"), false), Sharing::Shared);
        assert_eq!(of(&call("GET k"), false), Sharing::Shared);
        assert_eq!(of(&call("XREAD STREAMS s 0"), false), Sharing::Shared);
        assert_eq!(of(&call("XREAD BLOCK 0 STREAMS s 0"), false), Sharing::Pin);
        assert_eq!(of(&call("EVAL x 0"), false), Sharing::Shared);
        assert_eq!(of(&call("ACL WHOAMI"), false), Sharing::Local);
        assert_eq!(of(&call("ACL LOG"), true), Sharing::Local);
        assert_eq!(
            of(&call("ACL SETUSER x on"), false),
            Sharing::Refuse(Refusal::BackendUsers)
        );
        assert_eq!(
            &Refusal::UnknownSubcommand.reply(&call("CLIENT NO-TOUCH ON"))[..],
            b"-ERR unknown subcommand 'NO-TOUCH'. Try CLIENT HELP.\r\n"
        );
    }
}
