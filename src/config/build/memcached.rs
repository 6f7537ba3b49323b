//! memcached listeners: nodes, their ring, auth and node-down settings.

use super::*;

/// memcached listeners have no AUTH command: client certificates are how they restrict access.
pub(super) fn memcached_auth(p: &mut Problems, key: &str, a: AuthFile) -> Option<AuthMode> {
    match (a.mode.as_deref(), a.tokens.is_empty()) {
        (None | Some("none"), true) => Some(AuthMode::None),
        _ => {
            p.add(
                key,
                "memcached has no AUTH command: use mode = \"acl\" with certificate_users, or leave [auth] out and restrict clients with tls.client_auth = \"required\"",
            );
            None
        }
    }
}

/// `upstream.nodes` (or a single `upstream.address`) as ring nodes: "host:port[:weight]".
pub(super) fn memcached_nodes(p: &mut Problems, key: &str, u: &UpstreamFile) -> Vec<RingNode> {
    if u.username.is_some() || u.password.is_some() {
        p.add(key, "memcached upstreams take no username or password");
    }
    if u.address.is_some() && !u.nodes.is_empty() {
        p.add(key, "give either `address` (one node) or `nodes`, not both");
    }
    let list: Vec<String> = match &u.address {
        Some(a) if u.nodes.is_empty() => vec![a.clone()],
        _ => u.nodes.clone(),
    };
    let mut nodes = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let weighted = || {
            let (rest, weight) = entry.rsplit_once(':')?;
            let (h, port) = split_host_port(rest)?;
            let weight = weight.parse::<u32>().ok().filter(|w| *w > 0)?;
            Some((h.to_string(), port, weight))
        };
        let parsed =
            weighted().or_else(|| split_host_port(entry).map(|(h, port)| (h.to_string(), port, 1)));
        match parsed {
            Some((host, port, _))
                if nodes
                    .iter()
                    .any(|b: &RingNode| b.host == host && b.port == port) =>
            {
                p.add(
                    format!("{key}.nodes[{i}]"),
                    format!("{host}:{port} is listed twice"),
                )
            }
            Some((host, port, weight)) => nodes.push(RingNode { host, port, weight }),
            None => p.add(
                format!("{key}.nodes[{i}]"),
                format!("`{entry}` is not host:port or host:port:weight"),
            ),
        }
    }
    nodes
}

pub(super) fn memcached_settings(
    p: &mut Problems,
    key: &str,
    m: MemcachedFile,
    nodes: Vec<RingNode>,
) -> MemcachedConfig {
    let defaults = McLimits::default();
    let on_node_down = match m.on_node_down.as_deref() {
        None | Some("miss") => NodeDown::Miss,
        Some("error") => NodeDown::Error,
        Some(other) => {
            p.add(
                format!("{key}.on_node_down"),
                format!("`{other}` is not one of \"miss\", \"error\""),
            );
            NodeDown::Miss
        }
    };
    let limit = |p: &mut Problems, name: &str, v: Option<u64>, d: usize| {
        size(p, &format!("{key}.{name}"), v, d)
    };
    MemcachedConfig {
        nodes,
        limits: McLimits {
            max_value: limit(p, "max_value_bytes", m.max_value_bytes, defaults.max_value),
            max_line: limit(p, "max_line_bytes", m.max_line_bytes, defaults.max_line),
            max_keys: limit(p, "max_keys", m.max_keys, defaults.max_keys),
        },
        on_node_down,
        eject_after: m.eject_after.unwrap_or(0),
        eject_for: m.eject_for.unwrap_or(DEFAULT_EJECT_FOR),
        meta_gets: m.meta_gets.unwrap_or(true),
    }
}
