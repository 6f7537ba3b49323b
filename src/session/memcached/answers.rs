//! What the memcached session answers itself: refusals by policy and ACL (with their security
//! events), `stats` from cachegate's view, failures as memcached's own error lines.

use super::*;

/// A bounded metric label for a forwarded memcached command.
pub(super) fn command_label(name: &[u8]) -> &'static str {
    const NAMES: &[&str] = &[
        "get",
        "gets",
        "gat",
        "gats",
        "set",
        "add",
        "replace",
        "append",
        "prepend",
        "cas",
        "incr",
        "decr",
        "touch",
        "delete",
        "flush_all",
        "verbosity",
        "version",
        "mg",
        "ms",
        "md",
        "ma",
        "me",
    ];
    NAMES
        .iter()
        .find(|n| n.as_bytes() == name)
        .copied()
        .unwrap_or("other")
}

pub(super) const PERMISSION_DENIED: &[u8] = b"CLIENT_ERROR permission denied\r\n";

/// An HTTP request on the memcached port: logged and counted as a security event.
pub(super) fn cross_protocol(ctx: &Context, who: &Who) {
    tracing::warn!(listener = %ctx.listener, peer = %who.peer, "possible cross-protocol attack: an HTTP request on the memcached port; connection closed");
    let user = who.user.as_ref().map_or("(none)", |u| u.name.as_str());
    ctx.security.metrics.security_event(
        SecurityEvent::new(
            "cross_protocol",
            "toplevel",
            "HTTP".into(),
            user,
            &ctx.listener,
            SecurityEvent::client_info(who.peer, &ctx.listener, Some(user), None),
        ),
        who.user.is_some(),
    );
}

/// Whether the session's user may not run `req`; a refusal is counted and logged.
pub(super) fn refused(ctx: &Context, who: &Who, req: &McRequest) -> bool {
    let Some(user) = &who.user else {
        return false;
    };
    for call in acl_calls(req) {
        if let Err(denied) = user.check(&call) {
            let (reason, object) = match denied {
                // Name the memcached command, not the Redis one it was checked as.
                Denied::Command(_) => ("command", String::from_utf8_lossy(req.name()).into_owned()),
                other => other.event(),
            };
            let client_info =
                SecurityEvent::client_info(who.peer, &ctx.listener, Some(&user.name), None);
            ctx.security.metrics.security_event(
                SecurityEvent::new(
                    reason,
                    "toplevel",
                    object,
                    &user.name,
                    &ctx.listener,
                    client_info,
                ),
                true,
            );
            return true;
        }
    }
    false
}

/// memcached commands as the Redis calls with the same meaning, so that one ACL model (its
/// categories, and key patterns with read/write) covers both protocols. One call per key.
pub(super) fn acl_calls(req: &McRequest) -> Vec<Vec<Bytes>> {
    let call = |parts: &[&'static str], key: Option<&Bytes>| -> Vec<Bytes> {
        let mut v: Vec<Bytes> = parts
            .iter()
            .map(|p| Bytes::from_static(p.as_bytes()))
            .collect();
        if let Some(k) = key {
            v.insert(1, k.clone());
        }
        v
    };
    let key = req.route_key.as_ref();
    let name: &[u8] = req.name();
    match (req.cmd, name) {
        (Cmd::Get, _) => req.keys().iter().map(|k| call(&["get"], Some(k))).collect(),
        (Cmd::GetAndTouch, _) => req
            .keys()
            .iter()
            .map(|k| call(&["getex"], Some(k)))
            .collect(),
        (Cmd::Storage, b"append" | b"prepend") => vec![call(&["append", "v"], key)],
        (Cmd::Storage, _) | (Cmd::MetaSet, _) => vec![call(&["set", "v"], key)],
        (Cmd::KeyLine, b"delete") | (Cmd::Meta, b"md") => vec![call(&["del"], key)],
        (Cmd::KeyLine, b"touch") => vec![call(&["expire", "1"], key)],
        (Cmd::KeyLine, _) | (Cmd::Meta, b"ma") => vec![call(&["incrby", "1"], key)],
        // The item's metadata (size, expiry, CAS, last access): `DEBUG` for the command, and a
        // read of its key, so that key patterns hold (Redis's DEBUG names no key).
        (Cmd::Meta, b"me") => vec![call(&["debug", "object"], None), call(&["get"], key)],
        // mg reads, but `T` changes the TTL and `N` creates the item: writes, checked as such.
        (Cmd::Meta, _) => {
            let flag = |f: u8| req.tokens.iter().skip(2).any(|t| t.first() == Some(&f));
            let mut calls = vec![call(&["get"], key)];
            if flag(b'T') {
                calls.push(call(&["getex"], key));
            }
            if flag(b'N') {
                calls.push(call(&["set", "v"], key));
            }
            calls
        }
        (Cmd::Broadcast, b"flush_all") => vec![call(&["flushall"], None)],
        (Cmd::Broadcast, _) => vec![call(&["config", "set", "loglevel", "notice"], None)],
        (Cmd::Stats, _) => vec![call(&["info"], None)],
        // Asking the version, the no-op and leaving are open to every user.
        (Cmd::Version | Cmd::MetaNoop | Cmd::Quit | Cmd::Empty, _) => Vec::new(),
    }
}

/// `stats` is answered by cachegate: the proxy's own figures and each node's state. Other
/// `stats` forms would mean a different thing on every node and are refused.
pub(super) fn stats(ctx: &Context, req: &McRequest) -> Bytes {
    if req.tokens.len() > 1 {
        return Bytes::from_static(crate::protocol::memcached::ERROR);
    }
    let now = crate::deadline::unix_now() as u64;
    let mut s = String::new();
    let mut stat = |k: &str, v: &dyn std::fmt::Display| s.push_str(&format!("STAT {k} {v}\r\n"));
    stat("pid", &std::process::id());
    stat("uptime", &ctx.started.elapsed().as_secs());
    stat("time", &now);
    stat(
        "version",
        &format!("cachegate-{}", env!("CARGO_PKG_VERSION")),
    );
    stat(
        "curr_connections",
        &ctx.curr_connections.load(Ordering::Relaxed),
    );
    stat(
        "total_connections",
        &ctx.total_connections.load(Ordering::Relaxed),
    );
    stat("nodes", &ctx.nodes.len());
    stat("meta_gets", &if ctx.meta_gets() { "on" } else { "off" });
    for (i, node) in ctx.nodes.iter().enumerate() {
        let state = if node.ejected().is_some() {
            "ejected"
        } else if node.pool.is_healthy() {
            "up"
        } else {
            "down"
        };
        stat(&format!("node_{i}_address"), &node.label);
        stat(&format!("node_{i}_state"), &state);
        stat(&format!("node_{i}_meta"), &node.meta_state());
    }
    s.push_str("END\r\n");
    Bytes::from(s)
}
