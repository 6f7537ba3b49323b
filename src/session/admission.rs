//! Admission: what happens to one parsed request, decided from the request, the session's
//! login state and the listener's policy alone, with no I/O. The session carries the decision
//! out (answers, forwards, pins, logs in). Every refusal that depends on the request, the login
//! and the policy alone is here, so that it is tested without sockets, for every command the
//! table knows. What depends on the session's own state or its backend is the session's: a
//! cluster listener's placement (CROSSSLOT, from the live slot map), at-rest encryption
//! (sealing needs the key ring; its refusals are a function with no I/O of their own,
//! `crypt::plan::refusal`), the run-as connection's and a failed pin's errors, MULTI's
//! queueing.
//!
//! In order, as Redis and the policy require:
//! 1. an HTTP request (`POST`, `Host:`) closes the connection (a cross-protocol attack);
//! 2. the policy maps the typed name: a renamed command runs as its real name, a disabled one
//!    (or its real name behind an alias) is unknown, a disabled subcommand is unknown;
//! 3. AUTH, HELLO, QUIT and RESET are the session's own (they cannot be renamed or refused);
//! 4. before a login everything else gets `NOAUTH`;
//! 5. the user's ACL (commands, keys, channels) refuses, with a security event;
//! 6. `ACL ...` on a listener with cachegate users is answered from those users;
//! 7. the reviewed sharing table refuses what acts on other clients' connections;
//! 8. what is forwarded gets whom it runs as in the backend (a renamed command a script could
//!    call as the administrator, a user's scripts as its mirrored user) and its connection
//!    (`Disposition`): shared only for what the reviewed table calls stateless and runs as the
//!    listener, the session's own for everything else;
//! 9. a session on its own connection that nothing holds there goes back to the shared ones
//!    before a command that does not need its own (`Plan::unpin`); the session settles what
//!    its subscriptions still owe first, the one part of it that takes a round trip.

use bytes::Bytes;

use super::commands::{self, classify, Kind};
use super::sharing::{self, Sharing};
use crate::auth::acl::User;
use crate::auth::commands::CommandInfo;
use crate::policy::{Decision, Policy};
use crate::protocol::name::{fold, MAX_NAME};
use crate::protocol::reply;
use crate::protocol::resp::Request;

/// The session state admission reads.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    pub authenticated: bool,
    /// The ACL user logged in, on a listener with users.
    pub user: Option<&'a User>,
    /// The listener has cachegate ACL users (`auth.mode = "acl"`).
    pub acl: bool,
    /// Whom the session's commands may run as in the backend.
    pub backend: Backend,
    /// The connection the session stands on.
    pub connection: Connection,
    /// A Redis Cluster listener: a pinned session may need another node's connection.
    pub cluster: bool,
}

/// The connection a session stands on when a request comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// The shared connections (or none yet).
    Shared,
    /// Its own, on a listener without shared connections: there is nowhere to go back to.
    OwnOnly,
    /// Its own, on a listener with shared connections. `holds_state`: something keeps it there
    /// (a transaction, a WATCH, subscriptions, CLIENT REPLY off, state a command left).
    Own { holds_state: bool },
}

/// The backend users cachegate logs its connections in as, where it provisions them
/// (`upstream.backend_users`); all false otherwise.
#[derive(Clone, Copy, Default)]
pub struct Backend {
    /// The configured upstream credentials, that renamed commands a script could call run as.
    pub admin: bool,
    /// The logged-in user has a mirrored backend user of its own, that its scripts run as.
    pub own_user: bool,
}

/// Whom a command runs as in the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The listener's backend user (or the configured credentials): shared connections' too.
    Listener,
    /// The configured upstream credentials: a renamed command a script could call, which the
    /// listener's backend user is denied so that scripts cannot call it.
    Admin,
    /// The session's user's mirrored backend user.
    User,
}

impl Backend {
    /// Whom the session's own connection logs in as for a command (`renamed`: a renamed
    /// command a script could call).
    pub fn identity(self, renamed: bool) -> Identity {
        if renamed && self.admin {
            Identity::Admin
        } else if self.own_user {
            Identity::User
        } else {
            Identity::Listener
        }
    }
}

/// Which connection a forwarded command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Stateless: any shared connection will do.
    Shared,
    /// `SELECT 0`: already so.
    SelectZero,
    /// CLIENT SETNAME / GETNAME / SETINFO: kept by cachegate.
    SetName,
    /// The command creates connection state, or runs as someone the shared connections are
    /// not: the session needs its own connection.
    Pin,
}

/// Where a command goes when the session is on shared connections: pinned for whatever
/// leaves state on the connection, shared only for what the reviewed table allows.
fn disposition(kind: Kind, args: &[Bytes], sharing: Sharing) -> Disposition {
    match kind {
        Kind::Multi
        | Kind::Exec
        | Kind::Discard
        | Kind::Subscribe
        | Kind::Unsubscribe
        | Kind::Blocking
        | Kind::Watch
        | Kind::Unwatch
        | Kind::Stateful => Disposition::Pin,
        Kind::Client => match commands::client_subcommand(args).as_deref() {
            Some(b"SETNAME" | b"GETNAME" | b"SETINFO") => Disposition::SetName,
            _ => Disposition::Pin,
        },
        Kind::Select if args.len() == 2 && &args[1][..] == b"0" => Disposition::SelectZero,
        Kind::Select => Disposition::Pin,
        // Everything else by the reviewed allow-list: shared only if known to be safe there.
        _ if sharing == Sharing::Shared => Disposition::Shared,
        _ => Disposition::Pin,
    }
}

/// A security event to record with a refusal: its reason (`command`, `key`, `channel`) and
/// object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub reason: &'static str,
    pub object: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// An HTTP request on the Redis port: close without an answer, log a `cross_protocol`
    /// security event.
    CrossProtocol,
    /// The login and connection commands the session runs itself.
    Auth,
    Hello,
    Quit,
    Reset,
    /// Answered with `reply`, never forwarded. `fails_multi`: inside MULTI, the transaction
    /// then aborts at EXEC (as Redis does when a queued command is refused).
    Answer {
        reply: Bytes,
        fails_multi: bool,
        event: Option<Event>,
    },
    /// `ACL ...` asked of the listener's cachegate users: answered from them.
    AclLocal,
    /// Forwarded (or, for `Sharing::Local` CLIENT/ACL calls, answered by the session's own
    /// view of itself), with what the session needs to choose a connection.
    Forward(Plan),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub sharing: Sharing,
    /// The command's metric label: its name as the table spells it (a subcommand's container),
    /// or "other", so that clients cannot grow the label set.
    pub label: &'static str,
    /// The (real) command as the table knows it, looked up once here: what follows (at-rest
    /// encryption's plan) takes it instead of looking the name up again.
    pub command: Command,
    /// Whom it runs as in the backend.
    pub identity: Identity,
    /// Which connection it takes.
    pub disposition: Disposition,
    /// Back to the shared connections before it: the session is on its own connection,
    /// nothing holds it there, and this command neither needs one of its own (on a cluster
    /// listener it may, since it may need another node's) nor leaves state on it.
    pub unpin: bool,
}

/// A command-table entry (`None`: a command the table does not know), by its full name.
#[derive(Debug, Clone, Copy)]
pub struct Command(pub Option<(&'static str, &'static CommandInfo)>);

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        self.0.map(|(name, _)| name) == other.0.map(|(name, _)| name)
    }
}

impl Eq for Command {}

/// Decides what happens to `req`; rewrites its name to the real one when renamed (and an
/// `ACL DRYRUN`'s command to what clients see), dropping the raw bytes when it does.
pub fn admit(req: &mut Request, gate: Gate<'_>, policy: &Policy) -> Admission {
    // The name is folded to lower case once, here: the policy, the command table, the kind
    // and the metric label all read that copy (or the real name, kept lower-case).
    let mut folded = [0u8; MAX_NAME];
    let typed = fold(req.name(), &mut folded);
    if matches!(typed, Some(b"post" | b"host:")) {
        return Admission::CrossProtocol;
    }
    // The real name decides what a command does (a renamed MULTI is MULTI). The commands
    // cachegate answers itself cannot be renamed or refused, so they always pass as typed.
    let decision = match typed {
        Some(typed) if !policy.is_empty() => policy.decide_folded(typed),
        _ => Decision::Allow,
    };
    // A disabled subcommand's refusal names the command as typed (never the real name behind
    // an alias); made now, while the typed name is at hand, answered after the auth gate.
    let sub_refused = (req.args.len() > 1
        && policy.refuses_subcommand(
            match &decision {
                Decision::Rename(real) => real,
                _ => &req.args[0],
            },
            &req.args[1],
        ))
    .then(|| {
        sharing::Refusal::UnknownSubcommand.reply(&[req.args[0].clone(), req.args[1].clone()])
    });
    let lower: &[u8] = match &decision {
        Decision::Rename(real) => {
            req.args[0] = real.clone();
            req.raw = None;
            real
        }
        _ => typed.unwrap_or_default(),
    };
    let kind = classify(lower, &req.args);
    match kind {
        Kind::Auth => return Admission::Auth,
        Kind::Hello => return Admission::Hello,
        Kind::Quit => return Admission::Quit,
        Kind::Reset => return Admission::Reset,
        _ => {}
    }
    if !gate.authenticated {
        return answer(Bytes::from_static(reply::NOAUTH), false, None);
    }
    if decision == Decision::Refuse {
        return answer(reply::unknown_command(&req.args), true, None);
    }
    if let Some(refusal) = sub_refused {
        return answer(refusal, true, None);
    }
    // The one look-up of the (real) name in the command table, for the ACL and the sharing
    // verdict alike. ACL DRYRUN's rewrite below touches neither the name nor the subcommand.
    let found = std::str::from_utf8(lower)
        .ok()
        .and_then(|lower| crate::auth::commands::table().lookup_folded(lower, &req.args));
    // A name with a NUL in it is in no table, but Redis compares names only up to the NUL
    // (its hash covers the rest): one such name in a few hundred runs a real command
    // (`flushall\0102` ran FLUSHALL past `commands.disable`). Unknown here. (Looked for only
    // among names the table does not know: no cost to a known command.)
    if found.is_none() && memchr::memchr(0, req.name()).is_some() {
        return answer(reply::unknown_command(&req.args), true, None);
    }
    if let Some(user) = gate.user {
        // Checked when queued inside MULTI too; a refusal there aborts the EXEC, as in Redis.
        if let Err(denied) = user.check_found(&req.args, found) {
            let (reason, object) = denied.event();
            return answer(
                reply::error_line(&denied.error()),
                true,
                Some(Event { reason, object }),
            );
        }
        if kind == Kind::Acl && gate.acl {
            return Admission::AclLocal;
        }
    }
    // ACL DRYRUN answered by the backend: the command named as clients see it (a hidden name
    // is unknown, an alias is its real command).
    if kind == Kind::Acl
        && req.args.len() > 3
        && crate::auth::commands::is_word(&req.args[1], b"DRYRUN")
        && !policy.is_empty()
    {
        // (A name with a NUL is no command here: Redis would find one in a few hundred such
        // names as the command before the NUL, a disabled one included.)
        req.args[3] = match policy.decide(&req.args[3]) {
            _ if memchr::memchr(0, &req.args[3]).is_some() => {
                Bytes::from_static(commands::HIDDEN_PLACEHOLDER)
            }
            Decision::Allow => req.args[3].clone(),
            Decision::Rename(real) => real,
            Decision::Refuse => Bytes::from_static(commands::HIDDEN_PLACEHOLDER),
        };
        req.raw = None;
    }
    let sharing = sharing::of_found(&req.args, found, gate.acl);
    if let Sharing::Refuse(why) = sharing {
        return answer(why.reply(&req.args), true, None);
    }
    // A renamed command that a script could call runs as the administrator: the backend
    // user denies its real name, so that scripts cannot call it. A user's scripts run as its
    // mirrored user, where Redis enforces its rules inside them. Either needs a connection of
    // the session's own.
    let identity = gate.backend.identity(
        matches!(decision, Decision::Rename(_))
            && found.is_none_or(|(_, info)| info.script_callable()),
    );
    let own_connection = match identity {
        Identity::Admin => true,
        Identity::User => commands::runs_script(lower),
        Identity::Listener => false,
    };
    let disposition = if own_connection {
        Disposition::Pin
    } else {
        disposition(kind, &req.args, sharing)
    };
    Admission::Forward(Plan {
        kind,
        sharing,
        label: found.map_or("other", |(name, _)| name.split('|').next().unwrap_or(name)),
        command: Command(found),
        identity,
        disposition,
        // A command that taints the connection it runs on never takes the session back first,
        // whatever its disposition.
        unpin: gate.connection == Connection::Own { holds_state: false }
            && (disposition != Disposition::Pin || gate.cluster)
            && sharing != Sharing::PinTaint,
    })
}

fn answer(reply: Bytes, fails_multi: bool, event: Option<Event>) -> Admission {
    Admission::Answer {
        reply,
        fails_multi,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::User;
    use crate::auth::commands::table;

    fn request(args: &[&str]) -> Request {
        Request {
            args: args
                .iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
            raw: None,
        }
    }

    fn policy(disable: &[&str], rename: &[(&str, &str)]) -> Policy {
        let disable: Vec<String> = disable.iter().map(|s| s.to_string()).collect();
        let rename: Vec<(String, String)> = rename
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Policy::new(&disable, &rename).unwrap()
    }

    fn user(rules: &str) -> User {
        User::parse("u", rules).unwrap()
    }

    const NO_USERS: Backend = Backend {
        admin: false,
        own_user: false,
    };
    const IN: Gate<'static> = Gate {
        authenticated: true,
        user: None,
        acl: false,
        backend: NO_USERS,
        connection: Connection::Shared,
        cluster: false,
    };
    const OUT: Gate<'static> = Gate {
        authenticated: false,
        ..IN
    };

    /// A plausible call of every command and subcommand the table knows.
    fn every_call() -> Vec<Vec<String>> {
        table()
            .all()
            .map(|(full, _)| {
                let mut call: Vec<String> = full.split('|').map(str::to_uppercase).collect();
                call.extend(["k".to_string(), "v".to_string()]);
                call
            })
            .collect()
    }

    fn admit_call(call: &[String], gate: Gate<'_>, policy: &Policy) -> (Admission, Request) {
        let args: Vec<&str> = call.iter().map(String::as_str).collect();
        let mut req = request(&args);
        (admit(&mut req, gate, policy), req)
    }

    #[test]
    fn before_a_login_only_the_login_commands_pass() {
        let open = Policy::default();
        for call in every_call() {
            let (a, _) = admit_call(&call, OUT, &open);
            match call[0].as_str() {
                "AUTH" => assert_eq!(a, Admission::Auth),
                "HELLO" => assert_eq!(a, Admission::Hello),
                "QUIT" => assert_eq!(a, Admission::Quit),
                "RESET" => assert_eq!(a, Admission::Reset),
                _ => assert_eq!(
                    a,
                    answer(Bytes::from_static(reply::NOAUTH), false, None),
                    "{call:?}"
                ),
            }
        }
    }

    #[test]
    fn with_no_policy_every_command_is_forwarded_unless_it_acts_on_other_connections() {
        let open = Policy::default();
        for call in every_call() {
            let (a, req) = admit_call(&call, IN, &open);
            match a {
                Admission::Auth | Admission::Hello | Admission::Quit | Admission::Reset => {}
                Admission::Forward(plan) => {
                    assert_eq!(plan.identity, Identity::Listener);
                    assert_eq!(plan.sharing, sharing::of(&req.args, false), "{call:?}");
                    // Shared only what the reviewed table calls stateless (or SELECT 0 and
                    // the connection name, which cachegate keeps itself).
                    match plan.disposition {
                        Disposition::Shared => {
                            assert_eq!(plan.sharing, Sharing::Shared, "{call:?}");
                            assert!(
                                !matches!(
                                    plan.kind,
                                    Kind::Multi
                                        | Kind::Exec
                                        | Kind::Discard
                                        | Kind::Watch
                                        | Kind::Unwatch
                                        | Kind::Subscribe
                                        | Kind::Unsubscribe
                                        | Kind::Blocking
                                        | Kind::Stateful
                                        | Kind::Select
                                ),
                                "{call:?}"
                            );
                        }
                        Disposition::SelectZero => assert_eq!(plan.kind, Kind::Select),
                        Disposition::SetName => assert_eq!(plan.kind, Kind::Client),
                        Disposition::Pin => {}
                    }
                }
                Admission::Answer {
                    reply, fails_multi, ..
                } => {
                    // Only the sharing table's refusals (CLIENT KILL, SYNC, ...).
                    let Sharing::Refuse(why) = sharing::of(&req.args, false) else {
                        panic!("{call:?} was refused: {reply:?}");
                    };
                    assert_eq!(reply, why.reply(&req.args));
                    assert!(fails_multi);
                }
                other => panic!("{call:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_name_folded_once_decides_the_same_in_every_case() {
        let p = policy(&["flushall"], &[("multi", "BEGIN_X")]);
        for call in every_call() {
            let lower: Vec<String> = call.iter().map(|s| s.to_lowercase()).collect();
            let mut mixed = call.clone();
            mixed[0] = call[0]
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect();
            // (Errors echo the name as typed; compared without case.)
            let uncased = |a: Admission| match a {
                Admission::Answer {
                    reply,
                    fails_multi,
                    event,
                } => answer(reply.to_ascii_lowercase().into(), fails_multi, event),
                other => other,
            };
            let upper = uncased(admit_call(&call, IN, &p).0);
            assert_eq!(uncased(admit_call(&lower, IN, &p).0), upper, "{call:?}");
            assert_eq!(uncased(admit_call(&mixed, IN, &p).0), upper, "{mixed:?}");
            if let Admission::Forward(plan) = upper {
                // The label is the table's name of the command (a subcommand's container).
                assert_eq!(plan.label, lower[0], "{call:?}");
                assert_eq!(plan.kind, classify(lower[0].as_bytes(), &request(&[]).args));
            }
        }
        // A renamed command is labelled and classified by its real name; one the table does
        // not know is "other", never the client's word.
        let (a, _) = admit_call(&["Begin_X".into()], IN, &p);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        assert_eq!((plan.label, plan.kind), ("multi", Kind::Multi));
        let (a, _) = admit_call(&["NoSuchCommand".into()], IN, &p);
        assert!(
            matches!(a, Admission::Forward(Plan { label: "other", .. })),
            "{a:?}"
        );
        // A name longer than any the policy or the table holds is forwarded as it is.
        let long = "X".repeat(MAX_NAME + 1);
        let (a, _) = admit_call(&[long], IN, &p);
        assert!(
            matches!(
                a,
                Admission::Forward(Plan {
                    label: "other",
                    kind: Kind::Other,
                    ..
                })
            ),
            "{a:?}"
        );
    }

    #[test]
    fn a_disabled_command_is_unknown_under_its_name_and_every_case() {
        let p = policy(&["flushall", "config|set"], &[]);
        for name in ["FLUSHALL", "flushall", "FlushAll"] {
            let (a, _) = admit_call(&[name.to_string()], IN, &p);
            let Admission::Answer {
                reply, fails_multi, ..
            } = a
            else {
                panic!("{name}: {a:?}")
            };
            assert!(reply.starts_with(b"-ERR unknown command"), "{reply:?}");
            assert!(fails_multi);
        }
        let (a, _) = admit_call(&["CONFIG".into(), "SET".into(), "x".into()], IN, &p);
        assert!(matches!(a, Admission::Answer { .. }), "{a:?}");
        let (a, _) = admit_call(&["CONFIG".into(), "GET".into(), "x".into()], IN, &p);
        assert!(matches!(a, Admission::Forward(_)), "{a:?}");
        // Not before the auth gate: the unauthenticated learn nothing of the policy.
        let (a, _) = admit_call(&["FLUSHALL".into()], OUT, &p);
        assert_eq!(a, answer(Bytes::from_static(reply::NOAUTH), false, None));
    }

    #[test]
    fn a_renamed_command_runs_only_under_its_new_name_and_as_its_real_one() {
        let p = policy(
            &[],
            &[("flushall", "ADMIN_FLUSH_9f2c"), ("multi", "BEGIN_X")],
        );
        let (a, req) = admit_call(&["admin_flush_9f2c".into(), "ASYNC".into()], IN, &p);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        assert!(req.args[0].eq_ignore_ascii_case(b"flushall"));
        // Without provisioned backend users it runs as everything else does.
        assert_eq!(
            (plan.identity, plan.disposition),
            (Identity::Listener, Disposition::Shared)
        );
        let admin = Gate {
            backend: Backend {
                admin: true,
                own_user: false,
            },
            ..IN
        };
        let (a, _) = admit_call(&["admin_flush_9f2c".into()], admin, &p);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        // FLUSHALL can be called from a script: the listener's backend user is denied it,
        // and it runs as the administrator, on the session's own connection.
        assert_eq!(
            (plan.identity, plan.disposition),
            (Identity::Admin, Disposition::Pin)
        );
        let (a, _) = admit_call(&["FLUSHALL".into()], IN, &p);
        assert!(matches!(a, Admission::Answer { .. }), "{a:?}");
        // A renamed MULTI is MULTI.
        let (a, _) = admit_call(&["BEGIN_X".into()], IN, &p);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        assert_eq!(plan.kind, Kind::Multi);
        let (a, _) = admit_call(&["BEGIN_X".into()], admin, &p);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            plan.identity,
            Identity::Listener,
            "MULTI cannot run inside a script"
        );
    }

    #[test]
    fn a_user_s_scripts_run_as_its_mirrored_user_on_a_connection_of_its_own() {
        let mirrored = Gate {
            backend: Backend {
                admin: true,
                own_user: true,
            },
            ..IN
        };
        let open = Policy::default();
        for name in [
            "EVAL",
            "evalsha",
            "Eval_Ro",
            "EVALSHA_RO",
            "FCALL",
            "fcall_ro",
        ] {
            let (a, _) = admit_call(&[name.into(), "s".into(), "0".into()], mirrored, &open);
            let Admission::Forward(plan) = a else {
                panic!("{a:?}")
            };
            assert_eq!(
                (plan.identity, plan.disposition),
                (Identity::User, Disposition::Pin),
                "{name}"
            );
            // Without a mirrored user, by the sharing table like any other command.
            let (a, req) = admit_call(&[name.into(), "s".into(), "0".into()], IN, &open);
            let Admission::Forward(plan) = a else {
                panic!("{a:?}")
            };
            assert_eq!(plan.identity, Identity::Listener);
            let shared = sharing::of(&req.args, false) == Sharing::Shared;
            assert_eq!(plan.disposition == Disposition::Shared, shared, "{name}");
        }
        // What runs no script stays on shared connections (as the listener's backend user).
        let (a, _) = admit_call(&["GET".into(), "k".into()], mirrored, &open);
        let Admission::Forward(plan) = a else {
            panic!("{a:?}")
        };
        assert_eq!(plan.disposition, Disposition::Shared);
    }

    #[test]
    fn a_restricted_user_is_refused_with_an_event_and_fails_the_transaction() {
        let u = user("on nopass ~app:* &* -@all +get +set +acl");
        let gate = Gate {
            user: Some(&u),
            acl: true,
            ..IN
        };
        let open = Policy::default();
        let (a, _) = admit_call(&["GET".into(), "app:1".into()], gate, &open);
        assert!(matches!(a, Admission::Forward(_)), "{a:?}");
        let (a, _) = admit_call(&["GET".into(), "other".into()], gate, &open);
        let Admission::Answer {
            event, fails_multi, ..
        } = a
        else {
            panic!("{a:?}")
        };
        assert!(fails_multi);
        assert_eq!(event.unwrap().reason, "key");
        let (a, _) = admit_call(&["DEL".into(), "app:1".into()], gate, &open);
        let Admission::Answer { event, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(event.unwrap().reason, "command");
        // ACL is answered from cachegate's users, never by the backend's.
        let (a, _) = admit_call(&["ACL".into(), "WHOAMI".into()], gate, &open);
        assert_eq!(a, Admission::AclLocal);
        // Every command the user may not run is refused before anything else looks at it.
        for call in every_call() {
            if matches!(
                call[0].as_str(),
                "AUTH" | "HELLO" | "QUIT" | "RESET" | "GET" | "SET" | "ACL"
            ) {
                continue;
            }
            let (a, _) = admit_call(&call, gate, &open);
            assert!(
                matches!(&a, Admission::Answer { event: Some(e), .. } if e.reason == "command"),
                "{call:?}: {a:?}"
            );
        }
    }

    #[test]
    fn an_http_request_closes_the_connection_before_any_login() {
        for name in ["POST", "post", "Host:", "HOST:"] {
            let (a, _) = admit_call(&[name.to_string(), "/".into()], OUT, &Policy::default());
            assert_eq!(a, Admission::CrossProtocol);
        }
    }

    #[test]
    fn a_dryrun_names_commands_as_clients_see_them() {
        let p = policy(&["keys"], &[("flushall", "ADMIN_FLUSH_9f2c")]);
        let (_, req) = admit_call(
            &[
                "ACL".into(),
                "DRYRUN".into(),
                "u".into(),
                "ADMIN_FLUSH_9f2c".into(),
            ],
            IN,
            &p,
        );
        assert!(req.args[3].eq_ignore_ascii_case(b"flushall"));
        let (_, req) = admit_call(
            &[
                "ACL".into(),
                "DRYRUN".into(),
                "u".into(),
                "KEYS".into(),
                "*".into(),
            ],
            IN,
            &p,
        );
        assert_eq!(&req.args[3][..], commands::HIDDEN_PLACEHOLDER);
        // A name with a NUL cannot probe a disabled command (Redis would read one in a few
        // hundred as the command before the NUL); nor is a command so named run.
        let (_, req) = admit_call(
            &[
                "ACL".into(),
                "DRYRUN".into(),
                "u".into(),
                "keys\x00111".into(),
            ],
            IN,
            &p,
        );
        assert_eq!(&req.args[3][..], commands::HIDDEN_PLACEHOLDER);
        let (a, _) = admit_call(&["keys\x00111".into(), "*".into()], IN, &p);
        assert!(
            matches!(&a, Admission::Answer { reply, .. } if reply.starts_with(b"-ERR unknown command")),
            "{a:?}"
        );
        // Nor a subcommand with a NUL (Redis looks subcommands up the same way): it is in no
        // table, so it is refused as unknown, disabled or not, and never forwarded.
        let p = policy(&["config|set"], &[]);
        for call in [
            &["CONFIG", "SET\x00111", "requirepass", "x"][..],
            &["CLIENT", "KILL\x00111", "TYPE", "normal"],
            &["CONFIG", "GET\x00111", "requirepass"],
        ] {
            let call: Vec<String> = call.iter().map(|s| s.to_string()).collect();
            let (a, _) = admit_call(&call, IN, &p);
            assert!(
                matches!(&a, Admission::Answer { reply, .. } if reply.starts_with(b"-ERR unknown subcommand")),
                "{call:?}: {a:?}"
            );
        }
    }

    #[test]
    fn a_pinned_session_goes_back_to_shared_connections_only_when_nothing_holds_it() {
        let free = Connection::Own { holds_state: false };
        let held = Connection::Own { holds_state: true };
        let unpin = |call: &[&str], connection: Connection, cluster: bool| {
            let gate = Gate {
                connection,
                cluster,
                ..IN
            };
            let call: Vec<String> = call.iter().map(|s| s.to_string()).collect();
            match admit_call(&call, gate, &Policy::default()).0 {
                Admission::Forward(plan) => plan.unpin,
                other => panic!("{call:?}: {other:?}"),
            }
        };
        // What needs no connection of its own leaves a free one; SELECT 0 and CLIENT SETNAME
        // are kept by cachegate, and leave it too.
        for call in [
            &["GET", "k"][..],
            &["SET", "k", "v"],
            &["SELECT", "0"],
            &["CLIENT", "SETNAME", "n"],
        ] {
            assert!(unpin(call, free, false), "{call:?}");
            // Never from the shared connections, nor where there are none, nor while
            // something holds the session (a transaction, subscriptions, replies off...).
            for stays in [Connection::Shared, Connection::OwnOnly, held] {
                assert!(!unpin(call, stays, false), "{call:?} {stays:?}");
                assert!(!unpin(call, stays, true), "{call:?} {stays:?}");
            }
        }
        // What needs its own connection stays on the one it has, except on a cluster listener,
        // where it may need another node's.
        for call in [
            &["SUBSCRIBE", "c"][..],
            &["MULTI"],
            &["WATCH", "k"],
            &["BLPOP", "k", "0"],
            &["SELECT", "1"],
            &["CLIENT", "TRACKING", "on"],
        ] {
            assert!(!unpin(call, free, false), "{call:?}");
            assert!(unpin(call, free, true), "{call:?}");
            assert!(!unpin(call, held, true), "{call:?}");
        }
        // A renamed command a script could call runs as the administrator, on its own
        // connection: a free session keeps it.
        let p = policy(&[], &[("flushall", "ADMIN_FLUSH_9f2c")]);
        let admin = Gate {
            backend: Backend {
                admin: true,
                own_user: false,
            },
            connection: free,
            ..IN
        };
        let (a, _) = admit_call(&["ADMIN_FLUSH_9f2c".into()], admin, &p);
        assert!(
            matches!(a, Admission::Forward(Plan { unpin: false, .. })),
            "{a:?}"
        );
        // Nothing that leaves state on the connection it runs on takes a session back first,
        // on any listener, for every call of the table.
        let mut tainting = 0;
        for cluster in [false, true] {
            let gate = Gate {
                connection: free,
                cluster,
                ..IN
            };
            for call in every_call() {
                if let Admission::Forward(plan) = admit_call(&call, gate, &Policy::default()).0 {
                    if plan.sharing == Sharing::PinTaint {
                        tainting += 1;
                        assert!(!plan.unpin, "{call:?}");
                    }
                }
            }
        }
        assert!(
            tainting > 0,
            "the table has commands that taint a connection"
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, admission decides without panicking, and nothing but the login
        /// commands passes the auth gate.
        #[test]
        fn any_request_is_decided_and_the_gate_holds(
            words in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec!["GET", "auth", "Hello", "quit", "RESET", "ACL", "CLIENT", "kill", "MULTI", "DRYRUN", "SETNAME", "POST"]).prop_map(String::from),
                    "[ -~]{0,12}",
                ],
                1..6usize,
            ),
            authenticated: bool,
        ) {
            let p = policy(&["keys", "client|kill"], &[("flushall", "ADMIN_FLUSH_9f2c")]);
            let gate = Gate { authenticated, ..IN };
            let (a, _) = admit_call(&words, gate, &p);
            if !authenticated {
                prop_assert!(!matches!(a, Admission::Forward(_) | Admission::AclLocal), "{:?}", a);
            }
        }
    }
}
