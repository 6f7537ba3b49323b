//! `[listeners.upstream]`: address, credentials, timeouts and pools.

use super::*;

pub(super) fn upstream(
    p: &mut Problems,
    key: &str,
    u: UpstreamFile,
    base: &Path,
    memcached: bool,
) -> Option<UpstreamConfig> {
    let before = p.list.len();
    let cluster = u.cluster == Some(true);
    if u.cluster.is_some() && memcached {
        p.add(format!("{key}.cluster"), "is for Redis listeners");
    }
    if cluster && u.multiplex == Some(false) {
        p.add(
            format!("{key}.multiplex"),
            "a cluster listener sends stateless commands on shared connections to each node; it cannot be turned off",
        );
    }
    for (name, set) in [
        ("read_from_replicas", u.read_from_replicas.is_some()),
        ("cluster_refresh", u.cluster_refresh.is_some()),
    ] {
        if set && !cluster {
            p.add(
                format!("{key}.{name}"),
                "is for a Redis Cluster upstream (`cluster = true`)",
            );
        }
    }
    let mut cluster_seeds = Vec::new();
    if cluster {
        for (i, seed) in u.nodes.iter().enumerate() {
            if split_host_port(seed).is_none() {
                p.add(
                    format!("{key}.nodes[{i}]"),
                    format!("`{seed}` is not host:port"),
                );
            }
            cluster_seeds.push(seed.clone());
        }
    }
    let address = match u.address {
        None if !u.nodes.is_empty() => u.nodes[0].clone(),
        None => {
            p.add(
                format!("{key}.address"),
                "missing (e.g. \"127.0.0.1:6379\")",
            );
            String::new()
        }
        Some(a) => {
            if split_host_port(&a).is_none() {
                p.add(format!("{key}.address"), format!("`{a}` is not host:port"));
            }
            a
        }
    };
    if u.username.is_some() && u.password.is_none() {
        p.add(format!("{key}.password"), "a username needs a password");
    }
    let tls = match u.tls {
        Some(t) if t.enabled != Some(false) => {
            upstream_tls(p, &format!("{key}.tls"), t, &address, base)
        }
        _ => None,
    };
    if p.list.len() > before {
        return None;
    }
    Some(UpstreamConfig {
        backend_user: None,
        mirror_users: Vec::new(),
        cluster,
        cluster_seeds,
        cluster_refresh: u.cluster_refresh.unwrap_or(DEFAULT_CLUSTER_REFRESH),
        read_from_replicas: u.read_from_replicas == Some(true),
        readonly: false,
        address,
        username: u.username,
        password: u.password.map(Password::new),
        connect_timeout: u.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        request_timeout: u.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        warm_connections: u
            .warm_connections
            .map(|w| w as usize)
            .unwrap_or(DEFAULT_WARM_CONNECTIONS),
        max_idle: u
            .max_idle
            .map(|m| m as usize)
            .unwrap_or(DEFAULT_MAX_IDLE)
            .max(
                u.warm_connections
                    .map(|w| w as usize)
                    .unwrap_or(DEFAULT_WARM_CONNECTIONS),
            ),
        health_interval: u.health_interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
        shared_connections: if u.multiplex.unwrap_or(true) {
            u.shared_connections
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_SHARED_CONNECTIONS)
                .max(1)
        } else {
            0
        },
        tls,
    })
}
