//! The ACL commands cachegate answers itself when it enforces ACL users: WHOAMI, USERS, CAT,
//! GETUSER (no secrets), DRYRUN, LOG. Commands that would change users are refused: users live
//! in cachegate's configuration, as ElastiCache keeps them in its user groups.

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::acl::UserGroup;
use crate::auth::acl::{Described, User};
use crate::auth::commands::table;
use crate::protocol::reply::{self, array, bulk};

/// The reply to `ACL <subcommand> ...` from `user` (already allowed to run it).
pub fn answer(
    args: &[Bytes],
    user: &User,
    group: &UserGroup,
    resp3: bool,
    ctx: &super::Context,
) -> Bytes {
    let sub = args
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    match (sub.as_str(), args.len()) {
        ("WHOAMI", 2) => bulk(user.name.as_bytes()),
        ("USERS", 2) => array(group.users.iter().map(|u| bulk(u.name.as_bytes()))),
        ("CAT", 2) => array(table().categories.iter().map(|c| bulk(c.as_bytes()))),
        ("CAT", 3) => {
            let cat = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
            if !table().categories.contains(&cat) {
                // As typed, and at most 128 bytes of it, as Redis says it (`%.128s`).
                let typed = String::from_utf8_lossy(&args[2][..args[2].len().min(128)]);
                return reply::error(&format!("Unknown category '{typed}'"));
            }
            // Disabled commands are not shown, renamed ones under their new name.
            let mut names: Vec<Vec<u8>> = table()
                .all()
                .filter(|(_, info)| info.categories.contains(&cat))
                .filter_map(|(n, _)| match ctx.policy.visible_name(n.as_bytes()) {
                    crate::policy::Visibility::Hidden => None,
                    crate::policy::Visibility::ShownAs(alias) => Some(alias.to_vec()),
                    crate::policy::Visibility::Shown => Some(n.as_bytes().to_vec()),
                })
                .collect();
            names.sort_unstable();
            array(names.into_iter().map(|n| bulk(&n)))
        }
        ("GETUSER", 3) => match group.get(&args[2]) {
            None => Bytes::from_static(if resp3 { b"_\r\n" } else { b"*-1\r\n" }),
            Some(u) => getuser(u, resp3),
        },
        ("DRYRUN", n) if n >= 4 => {
            // In Redis's order: the user, the command, its arity, then the verdict.
            let Some(u) = group.get(&args[2]) else {
                return reply::error(&format!(
                    "User '{}' not found",
                    String::from_utf8_lossy(&args[2])
                ));
            };
            let not_found = || {
                reply::error(&format!(
                    "Command '{}' not found",
                    String::from_utf8_lossy(&args[3])
                ))
            };
            // The command as the client names it: a disabled or renamed-away name (or a
            // disabled subcommand) is no command here, as everywhere else; an alias is checked
            // as its real command.
            let mut call = args[3..].to_vec();
            match ctx.policy.decide(&args[3]) {
                crate::policy::Decision::Refuse => return not_found(),
                crate::policy::Decision::Rename(real) => call[0] = real,
                crate::policy::Decision::Allow => {}
            }
            if call.len() > 1 && ctx.policy.refuses_subcommand(&call[0], &call[1]) {
                return not_found();
            }
            let Some((name, info)) = table().lookup(&call) else {
                return not_found();
            };
            // A container named with a subcommand it does not have: no command, for Redis.
            if call.len() > 1 && !info.subcommands.is_empty() {
                return not_found();
            }
            let argc = call.len() as i64;
            if (info.arity > 0 && info.arity != argc) || argc < -info.arity {
                return reply::error(&format!("wrong number of arguments for '{name}' command"));
            }
            match u.check(&call) {
                Ok(()) => Bytes::from_static(reply::OK),
                Err(denied) => bulk(denied.dryrun().as_bytes()),
            }
        }
        ("LOG", 2) => log(ctx, 10, resp3),
        ("LOG", 3) if crate::auth::commands::is_word(&args[2], b"RESET") => {
            ctx.metrics.reset_events(&ctx.listener);
            Bytes::from_static(reply::OK)
        }
        ("LOG", 3) => match std::str::from_utf8(&args[2])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(count) => log(ctx, count, resp3),
            None => reply::error("value is out of range, must be positive"),
        },
        ("WHOAMI" | "USERS" | "CAT" | "GETUSER" | "DRYRUN" | "LOG", _) => reply::error(&format!(
            "wrong number of arguments for 'acl|{}' command",
            sub.to_ascii_lowercase()
        )),
        _ => reply::error(&format!(
            "cachegate: ACL {sub} is not available; users are defined in cachegate's configuration"
        )),
    }
}

/// ACL LOG in Redis 7.0's shape: count, reason, context, object, username, age-seconds,
/// client-info.
fn log(ctx: &super::Context, count: usize, resp3: bool) -> Bytes {
    let events = ctx.metrics.events(&ctx.listener, count);
    let mut out = BytesMut::new();
    out.put_slice(format!("*{}\r\n", events.len()).as_bytes());
    for e in events {
        if resp3 {
            out.put_slice(b"%7\r\n");
        } else {
            out.put_slice(b"*14\r\n");
        }
        out.put_slice(&bulk(b"count"));
        out.put_slice(format!(":{}\r\n", e.count).as_bytes());
        for (k, v) in [
            ("reason", e.reason.to_string()),
            ("context", e.context.to_string()),
            ("object", e.object.clone()),
            ("username", e.username.clone()),
        ] {
            out.put_slice(&bulk(k.as_bytes()));
            out.put_slice(&bulk(v.as_bytes()));
        }
        out.put_slice(&bulk(b"age-seconds"));
        let age = format!("{:.3}", e.created.elapsed().as_secs_f64());
        if resp3 {
            out.put_slice(format!(",{age}\r\n").as_bytes());
        } else {
            out.put_slice(&bulk(age.as_bytes()));
        }
        out.put_slice(&bulk(b"client-info"));
        out.put_slice(&bulk(e.client_info.as_bytes()));
    }
    out.freeze()
}

fn getuser(u: &User, resp3: bool) -> Bytes {
    let fields = u.describe();
    let mut out = BytesMut::new();
    // Redis 7 also lists "selectors"; cachegate has only the root selector.
    let count = fields.len() + 1;
    if resp3 {
        out.put_slice(format!("%{count}\r\n").as_bytes());
    } else {
        out.put_slice(format!("*{}\r\n", count * 2).as_bytes());
    }
    for (name, value) in fields {
        out.put_slice(&bulk(name.as_bytes()));
        match value {
            Described::Text(t) => out.put_slice(&bulk(t.as_bytes())),
            Described::List(l) => out.put_slice(&array(l.iter().map(|x| bulk(x.as_bytes())))),
            // Never the hashes themselves.
            Described::Count(_) => out.put_slice(b"*0\r\n"),
        }
    }
    out.put_slice(&bulk(b"selectors"));
    out.put_slice(b"*0\r\n");
    out.freeze()
}
