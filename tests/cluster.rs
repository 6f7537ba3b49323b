//! A listener in front of a real Redis Cluster (redis-servers in cluster mode on loopback): a
//! client that knows nothing of clusters sees one Redis. Where cachegate re-implements the
//! cluster's judgement (hash slots, CROSSSLOT, SELECT), its answers are compared with a node's.

mod common;

use common::cluster::*;
use common::*;

fn cluster_toml(pki: &Pki, cluster: &RedisCluster, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{TOKEN:?}]\nupstream.cluster = true\n\
         upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\n{extra}",
        pki.tls_toml(),
        cluster.seed()
    )
}

/// A cluster of three primaries, and cachegate in front of it with `extra` settings.
async fn three_primaries(extra: &str) -> (Pki, RedisCluster, Proxy) {
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, extra)).await;
    (pki, cluster, proxy)
}

/// A client logged in through the proxy, once the proxy serves the cluster.
async fn client(pki: &Pki, proxy: &Proxy) -> RawClient {
    let mut c = RawClient::authed(pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "ready", "1"]).await, b"+OK\r\n");
    c
}

/// One SCAN page through `c`: the next cursor and the keys.
async fn scan_page(c: &mut RawClient, cursor: &str, count: &str) -> (String, Vec<String>) {
    let reply = s(&c.cmd(&["SCAN", cursor, "COUNT", count]).await);
    let mut lines = reply.split("\r\n");
    assert_eq!(lines.next(), Some("*2"), "{reply}");
    lines.next();
    let next = lines.next().unwrap().to_string();
    let rest: Vec<&str> = lines.collect();
    let n: usize = rest[0][1..].parse().unwrap();
    (next, (0..n).map(|i| rest[2 + 2 * i].to_string()).collect())
}

fn bulk(v: &str) -> String {
    format!("${}\r\n{v}\r\n", v.len())
}

/// The elements of a flat array of bulk strings.
fn strings(reply: &[u8]) -> Vec<String> {
    let text = s(reply);
    let mut lines = text.split("\r\n");
    let header = lines.next().unwrap();
    assert!(header.starts_with('*'), "{text}");
    let mut out = Vec::new();
    while let Some(len) = lines.next() {
        if len.is_empty() {
            break;
        }
        out.push(lines.next().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_one_redis_to_a_client_that_knows_nothing_of_clusters() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut c = client(&pki, &proxy).await;
    assert_eq!(c.cmd(&["DEL", "ready"]).await, b":1\r\n");

    // Single keys land on the node that serves their slot, as the cluster says.
    for i in 0..200 {
        let key = format!("key:{i}");
        assert_eq!(c.cmd(&["SET", &key, &format!("v{i}")]).await, b"+OK\r\n");
    }
    let mut per_node = Vec::new();
    for node in &cluster.nodes {
        let mut d = node.redis.direct().await;
        let n: i64 = s(&d.cmd(&["DBSIZE"]).await)[1..].trim().parse().unwrap();
        per_node.push(n);
    }
    assert_eq!(per_node.iter().sum::<i64>(), 200, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
    for i in (0..200).step_by(37) {
        let key = format!("key:{i}");
        let mut d = cluster.nodes[0].redis.direct().await;
        let slot: u16 = s(&d.cmd(&["CLUSTER", "KEYSLOT", &key]).await)[1..]
            .trim()
            .parse()
            .unwrap();
        let owner = cluster.owner(slot).await;
        let mut o = cluster.at(&owner).redis.direct().await;
        assert_eq!(s(&o.cmd(&["GET", &key]).await), bulk(&format!("v{i}")));
    }

    // Multi-key commands across slots: split, and merged in key order.
    let keys: Vec<String> = (0..20).map(|i| format!("key:{i}")).collect();
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("missing");
    let mut want = format!("*{}\r\n", keys.len() + 1);
    for i in 0..20 {
        want.push_str(&bulk(&format!("v{i}")));
    }
    want.push_str("$-1\r\n");
    assert_eq!(s(&c.cmd(&mget).await), want);
    assert_eq!(
        c.cmd(&["EXISTS", "key:1", "key:2", "key:1", "missing"])
            .await,
        b":3\r\n"
    );
    assert_eq!(c.cmd(&["TOUCH", "key:3", "key:4", "nope"]).await, b":2\r\n");
    let mut del = vec!["DEL"];
    del.extend(keys[..10].iter().map(String::as_str));
    assert_eq!(c.cmd(&del).await, b":10\r\n");
    assert_eq!(
        c.cmd(&["UNLINK", "key:10", "key:11", "nope"]).await,
        b":2\r\n"
    );
    assert_eq!(
        c.cmd(&["MSET", "a", "1", "b", "2", "c", "3"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        s(&c.cmd(&["MGET", "c", "b", "a"]).await),
        format!("*3\r\n{}{}{}", bulk("3"), bulk("2"), bulk("1"))
    );
    assert_eq!(c.cmd(&["DBSIZE"]).await, b":191\r\n");
    let keyspace = s(&c.cmd(&["INFO", "keyspace"]).await);
    assert!(keyspace.contains("db0:keys=191,"), "{keyspace}");

    // KEYS and SCAN see every node; SCAN's cursor walks them in turn, each key once.
    let mut all = strings(&c.cmd(&["KEYS", "*"]).await);
    all.sort();
    assert_eq!(all.len(), 191);
    let mut scanned = Vec::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let (next, keys) = scan_page(&mut c, &cursor, "50").await;
        cursor = next;
        scanned.extend(keys);
        pages += 1;
        assert!(pages < 100, "SCAN does not end");
        if cursor == "0" {
            break;
        }
    }
    scanned.sort();
    assert_eq!(scanned, all, "SCAN returns each key once");
    let matched = s(&c.cmd(&["SCAN", "0", "MATCH", "zz*"]).await);
    assert!(matched.starts_with("*2\r\n"), "{matched}");
    assert_eq!(c.cmd(&["SCAN", "x"]).await, b"-ERR invalid cursor\r\n");

    // What a cluster node refuses, cachegate refuses in the node's words.
    let mut node = cluster.nodes[0].redis.direct().await;
    for cmd in [
        vec!["SUNION", "a", "b"],
        vec!["RENAME", "a", "b"],
        vec!["SELECT", "1"],
    ] {
        assert_eq!(s(&c.cmd(&cmd).await), s(&node.cmd(&cmd).await), "{cmd:?}");
    }
    assert_eq!(c.cmd(&["SELECT", "0"]).await, b"+OK\r\n");
    // Hash slots (hash tags included) as the cluster computes them.
    for key in [
        "",
        "a",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{",
        "}{",
        "{a}",
        "\u{e9}t\u{e9}",
        "key:12345",
    ] {
        assert_eq!(
            s(&c.cmd(&["CLUSTER", "KEYSLOT", key]).await),
            s(&node.cmd(&["CLUSTER", "KEYSLOT", key]).await),
            "{key:?}"
        );
    }
    for i in 0..300 {
        let key = format!("{{t{}}}x{i}", i % 7);
        assert_eq!(
            s(&c.cmd(&["CLUSTER", "KEYSLOT", &key]).await),
            s(&node.cmd(&["CLUSTER", "KEYSLOT", &key]).await),
        );
    }
    // The cluster's layout would tell a client where to go around cachegate.
    for sub in ["NODES", "SLOTS", "SHARDS"] {
        let reply = s(&c.cmd(&["CLUSTER", sub]).await);
        assert!(reply.starts_with("-ERR cachegate"), "{reply}");
        assert!(!reply.contains("127.0.0.1"), "{reply}");
    }
    assert!(s(&c.cmd(&["CLUSTER", "INFO"]).await).contains("cluster_state:ok"));
    let random = s(&c.cmd(&["RANDOMKEY"]).await);
    assert!(
        random.starts_with('$') && !random.starts_with("$-1"),
        "{random}"
    );

    // Real clients that know nothing of clusters: redis-rs (RESP2 and RESP3, a pipeline of
    // keys on every node) and redis-cli over TLS.
    for resp3 in [false, true] {
        let mut con = redis_rs(&pki, proxy.addr, Some(TOKEN), resp3)
            .await
            .unwrap();
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("SET").arg(format!("rs:{i}")).arg(i).ignore();
        }
        pipe.cmd("MGET")
            .arg((0..100).map(|i| format!("rs:{i}")).collect::<Vec<_>>());
        let (got,): (Vec<i64>,) = pipe.query_async(&mut con).await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
    let (port, ca) = (proxy.addr.port().to_string(), pki.ca.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &ca,
                "-p",
                &port,
                "--no-auth-warning",
                "-a",
                TOKEN,
            ])
            .args(["MGET", "rs:1", "rs:2", "rs:3", "rs:99"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n99\n");

    // FLUSHALL reaches every primary.
    assert_eq!(c.cmd(&["FLUSHALL"]).await, b"+OK\r\n");
    for node in &cluster.nodes {
        let mut d = node.redis.direct().await;
        assert_eq!(d.cmd(&["DBSIZE"]).await, b":0\r\n");
    }
    assert_eq!(c.cmd(&["RANDOMKEY"]).await, b"$-1\r\n");
}

fn integer(reply: &[u8]) -> i64 {
    let text = s(reply);
    text.strip_prefix(':')
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("not an integer: {text}"))
}

/// A scale-out's first step: a slot migrating to a node that serves none yet. The migrating
/// node's `ASK` names a node that `CLUSTER SLOTS` does not list (it serves no slot); `CLUSTER
/// SHARDS` lists it, and cachegate follows the `ASK` there once a refresh has read it. Before
/// 2026-11-30 the slot's moved keys got `TRYAGAIN` until the new node served a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_to_a_node_that_serves_no_slot_yet_is_followed() {
    let (pki, mut cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        cluster_toml(&pki, &cluster, "upstream.cluster_refresh = \"1h\"\n")
    ))
    .await;
    let mut c = client(&pki, &proxy).await;
    // The layout is read before the new node joins.
    assert_eq!(c.cmd(&["SET", "{m}1", "a"]).await, b"+OK\r\n");
    let new = cluster.add_empty_node().await;
    let mut any = cluster.nodes[0].redis.direct().await;
    let slot = integer(&any.cmd(&["CLUSTER", "KEYSLOT", "{m}"]).await) as u16;
    let from = cluster.owner(slot).await;
    let (from_id, to_id) = (cluster.id(&from).await, cluster.id(&new).await);
    let (to_host, to_port) = new.split_once(':').unwrap();
    let mut src = cluster.at(&from).redis.direct().await;
    let mut dst = cluster.at(&new).redis.direct().await;
    let slot_s = slot.to_string();
    assert_eq!(
        dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        src.cmd(&["MIGRATE", to_host, to_port, "", "0", "5000", "KEYS", "{m}1"])
            .await,
        b"+OK\r\n"
    );
    assert!(s(&src.cmd(&["GET", "{m}1"]).await).starts_with(&format!("-ASK {slot} {new}")));
    assert_eq!(s(&c.cmd(&["GET", "{m}1"]).await), bulk("a"));
    assert_eq!(c.cmd(&["SET", "{m}2", "b"]).await, b"+OK\r\n");
    assert_eq!(dst.cmd(&["ASKING"]).await, b"+OK\r\n");
    assert_eq!(s(&dst.cmd(&["GET", "{m}2"]).await), bulk("b"));
    let metrics = proxy.admin_get("/metrics").await.1;
    assert!(metrics.contains("reason=\"ask\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_ask_are_followed_and_nothing_runs_twice() {
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        cluster_toml(&pki, &cluster, "upstream.cluster_refresh = \"1h\"\n")
    ))
    .await;
    let mut c = client(&pki, &proxy).await;
    let mut any = cluster.nodes[0].redis.direct().await;
    let slot = integer(&any.cmd(&["CLUSTER", "KEYSLOT", "{m}"]).await) as u16;
    let from = cluster.owner(slot).await;
    let to = cluster.other_than(&from);
    let (from_id, to_id) = (cluster.id(&from).await, cluster.id(&to).await);
    let (to_host, to_port) = to.split_once(':').unwrap();
    let mut src = cluster.at(&from).redis.direct().await;
    let mut dst = cluster.at(&to).redis.direct().await;
    assert_eq!(c.cmd(&["SET", "{m}1", "a"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{m}2", "b"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "{m}n"]).await, b":1\r\n");

    // A migration begins: two of the slot's keys are on the importing node already, and the
    // migrating one answers ASK for them (and for keys it does not have).
    let slot_s = slot.to_string();
    assert_eq!(
        dst.cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        src.cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        src.cmd(&["MIGRATE", to_host, to_port, "", "0", "5000", "KEYS", "{m}1", "{m}n"])
            .await,
        b"+OK\r\n"
    );
    assert!(s(&src.cmd(&["GET", "{m}1"]).await).starts_with("-ASK "));
    assert_eq!(s(&c.cmd(&["GET", "{m}1"]).await), bulk("a"));
    assert_eq!(s(&c.cmd(&["GET", "{m}2"]).await), bulk("b"));
    assert_eq!(c.cmd(&["INCR", "{m}n"]).await, b":2\r\n");
    // A new key of a migrating slot is created on the importing node.
    assert_eq!(c.cmd(&["SET", "{m}3", "c"]).await, b"+OK\r\n");
    assert_eq!(dst.cmd(&["ASKING"]).await, b"+OK\r\n");
    assert_eq!(s(&dst.cmd(&["GET", "{m}3"]).await), bulk("c"));
    // A multi-key command whose keys are split between the two nodes gets TRYAGAIN from the
    // migrating node: sent again after a pause, it runs once the last key has moved (ASK).
    c.send_cmd(&["MGET", "{m}1", "{m}2"]).await;
    // A fixed pause, not a poll for the first TRYAGAIN: each TRYAGAIN asks for a map refresh,
    // and one still running when the slot is reassigned below would learn the new owner
    // before any MOVED is seen. (The metric check at the end shows TRYAGAIN was met.)
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        src.cmd(&["MIGRATE", to_host, to_port, "", "0", "5000", "KEYS", "{m}2"])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(
        s(&c.read().await),
        format!("*2\r\n{}{}", bulk("a"), bulk("b"))
    );

    // The migration ends: the slot is the other node's, and the old one answers MOVED.
    cluster.assign(slot, &to_id).await;
    assert!(s(&src.cmd(&["GET", "{m}1"]).await).starts_with("-MOVED "));
    assert_eq!(
        s(&c.cmd(&["MGET", "{m}1", "{m}2", "{m}3"]).await),
        format!("*3\r\n{}{}{}", bulk("a"), bulk("b"), bulk("c"))
    );
    assert_eq!(c.cmd(&["INCR", "{m}n"]).await, b":3\r\n");
    // MOVED updated the map: the next requests for the slot go straight to its new node.
    assert_eq!(src.cmd(&["CONFIG", "RESETSTAT"]).await, b"+OK\r\n");
    for _ in 0..10 {
        assert_eq!(s(&c.cmd(&["GET", "{m}1"]).await), bulk("a"));
    }
    let stats = s(&src.cmd(&["INFO", "commandstats"]).await);
    assert!(!stats.contains("cmdstat_get:"), "{stats}");
    // Each INCR ran once.
    assert_eq!(s(&dst.cmd(&["GET", "{m}n"]).await), bulk("3"));
    // Ready: the cluster's layout is read (whichever node the first seed is).
    let (status, body) = proxy.admin_get("/ready").await;
    assert_eq!(status, 200, "{body}");
    let metrics = proxy.admin_get("/metrics").await.1;
    for reason in ["moved", "ask", "again"] {
        let name = format!(
            "cachegate_cluster_redirects_total{{listener=\"redis-0\",reason=\"{reason}\"}}"
        );
        assert!(metric(&metrics, &name) >= 1.0, "{name}: {metrics}");
    }
}

/// A slot moved without cachegate knowing: a client's pipelined writes to it all meet the
/// old node's MOVED, and must still run in the order sent, whichever are sent again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_keep_their_order_across_a_moved_slot() {
    let (pki, cluster, proxy) = three_primaries("upstream.cluster_refresh = \"1h\"\n").await;
    let mut c = client(&pki, &proxy).await;
    let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", "{o}"]).await) as u16;
    let from = cluster.owner(slot).await;
    let to = cluster.other_than(&from);
    let to_id = cluster.id(&to).await;
    assert_eq!(c.cmd(&["SET", "{o}k", "0"]).await, b"+OK\r\n");
    // The slot (empty but for that key, deleted first) moves to another node.
    let mut src = cluster.at(&from).client().await;
    assert_eq!(src.cmd(&["DEL", "{o}k"]).await, b":1\r\n");
    cluster.assign(slot, &to_id).await;
    // This session's first write goes to the old node while its reply side waits behind a
    // slow script on the third node; another session then teaches cachegate the new map, and
    // this session's next write would go straight to the new node, ahead of the first's retry.
    let third = cluster
        .nodes
        .iter()
        .map(|n| n.redis.address())
        .find(|a| *a != from && *a != to)
        .unwrap();
    let mut key = None;
    for i in 0.. {
        let k = format!("slow{i}");
        let s = integer(&c.cmd(&["CLUSTER", "KEYSLOT", &k]).await) as u16;
        if cluster.owner(s).await == third {
            key = Some(k);
            break;
        }
    }
    let slow = key.unwrap();
    let busy = "local i = 0 while i < 20000000 do i = i + 1 end return 1";
    let mut wire = encode(&[b"EVAL", busy.as_bytes(), b"1", slow.as_bytes()]);
    wire.extend(encode(&[b"SET", b"{o}k", b"1"]));
    c.send(&wire).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut other = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(other.cmd(&["GET", "{o}k"]).await, b"$-1\r\n");
    let mut wire = Vec::new();
    for i in 2..=200 {
        wire.extend(encode(&[b"SET", b"{o}k", i.to_string().as_bytes()]));
    }
    c.send(&wire).await;
    assert_eq!(c.read().await, b":1\r\n");
    for _ in 1..=200 {
        assert_eq!(c.read().await, b"+OK\r\n");
    }
    assert_eq!(s(&c.cmd(&["GET", "{o}k"]).await), bulk("200"));
}

/// SCAN goes on across a resharding: every key that stays is returned, none is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_every_key_across_a_resharding() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut c = client(&pki, &proxy).await;
    assert_eq!(c.cmd(&["DEL", "ready"]).await, b":1\r\n");
    let mut wire = Vec::new();
    for i in 0..600 {
        wire.extend(encode(&[b"SET", format!("scan:{i}").as_bytes(), b"v"]));
    }
    c.send(&wire).await;
    for _ in 0..600 {
        assert_eq!(c.read().await, b"+OK\r\n");
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let (next, keys) = scan_page(&mut c, &cursor, "20").await;
        cursor = next;
        seen.extend(keys);
        pages += 1;
        if pages == 12 {
            // Mid-scan, slots move from the first node to the third.
            let a = cluster.nodes[0].redis.address();
            let b = cluster.nodes[2].redis.address();
            let (a_id, b_id) = (cluster.id(&a).await, cluster.id(&b).await);
            redis_cli(
                [
                    "--cluster",
                    "reshard",
                    &cluster.seed(),
                    "--cluster-from",
                    &a_id,
                    "--cluster-to",
                    &b_id,
                    "--cluster-slots",
                    "2000",
                    "--cluster-yes",
                ]
                .map(String::from)
                .to_vec(),
            )
            .await;
        }
        assert!(pages < 1000, "SCAN does not end");
        if cursor == "0" {
            break;
        }
    }
    assert!(pages > 12, "the resharding happened mid-scan");
    let missing: Vec<String> = (0..600)
        .map(|i| format!("scan:{i}"))
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} keys never returned: {missing:?}",
        missing.len()
    );
}

/// A session pinned to one node (WATCH) cannot reach past the cluster's refusals, and a
/// connect that fails under a transaction held for its first key leaves replies in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_keeps_the_cluster_rules_and_replies_stay_in_step() {
    let (pki, mut cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&cluster_toml(
        &pki,
        &cluster,
        "upstream.cluster_refresh = \"1h\"\n",
    ))
    .await;
    let mut c = client(&pki, &proxy).await;
    assert_eq!(c.cmd(&["WATCH", "{w}x"]).await, b"+OK\r\n");
    for cmd in [
        vec!["MONITOR"],
        vec!["CLIENT", "TRACKING", "on"],
        vec!["CLIENT", "REPLY", "OFF"],
        vec!["CLIENT", "NO-EVICT", "on"],
    ] {
        let reply = s(&c.cmd(&cmd).await);
        assert!(reply.starts_with("-ERR cachegate"), "{cmd:?}: {reply}");
    }
    assert_eq!(
        c.cmd(&["SELECT", "1"]).await,
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    assert_eq!(c.cmd(&["UNWATCH"]).await, b"+OK\r\n");
    // Unpinned again: keys of every node.
    for i in 0..30 {
        assert_eq!(c.cmd(&["SET", &format!("w:{i}"), "1"]).await, b"+OK\r\n");
    }
    // The node of {t} goes away; cachegate's map still names it.
    let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", "{t}"]).await) as u16;
    let owner = cluster.owner(slot).await;
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.redis.address() == owner)
        .unwrap()
        .redis
        .kill();
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["PUBLISH", "ch", "x"]).await, b"+QUEUED\r\n");
    let reply = s(&c.cmd(&["SET", "{t}a", "1"]).await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream unavailable"),
        "{reply}"
    );
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(c.cmd(&["ECHO", "in step"]).await, b"$7\r\nin step\r\n");
}

/// Clients that INCR counters through cachegate while `reshard` moves slots under them.
async fn incr_load(
    pki: &Pki,
    proxy: &Proxy,
    clients: usize,
    counters: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<(Vec<i64>, Vec<String>)>> {
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = RawClient::authed(pki, proxy.addr).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = vec![0i64; counters];
            let mut failures = Vec::new();
            let mut i = t;
            while !stop.is_cancelled() {
                let n = i % counters;
                let reply = c.cmd(&["INCR", &format!("counter:{n}")]).await;
                if reply.starts_with(b":") {
                    done[n] += 1;
                } else {
                    failures.push(s(&reply));
                }
                i += 1;
            }
            (done, failures)
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_fails_loses_and_repeats_nothing() {
    let (pki, cluster, proxy) = three_primaries("").await;
    client(&pki, &proxy).await;
    let counters = 200;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = incr_load(&pki, &proxy, 4, counters, stop.clone()).await;
    // The load is running before the first slot moves.
    let mut watch = client(&pki, &proxy).await;
    let mut running = false;
    for _ in 0..200 {
        let counter = s(&watch.cmd(&["GET", "counter:0"]).await);
        if counter.starts_with('$') && counter != "$-1\r\n" {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(running, "the INCR load never started");
    // Slots move from the first node to the second, then some back to the first.
    let a = cluster.nodes[0].redis.address();
    let b = cluster.nodes[1].redis.address();
    let (a_id, b_id) = (cluster.id(&a).await, cluster.id(&b).await);
    for (from, to) in [(&a_id, &b_id), (&b_id, &a_id)] {
        redis_cli(
            [
                "--cluster",
                "reshard",
                &cluster.seed(),
                "--cluster-from",
                from,
                "--cluster-to",
                to,
                "--cluster-slots",
                "1500",
                "--cluster-yes",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
    }
    stop.cancel();
    let mut expected = vec![0i64; counters];
    let mut failures = Vec::new();
    for task in tasks {
        let (done, failed) = task.await.unwrap();
        for (e, d) in expected.iter_mut().zip(done) {
            *e += d;
        }
        failures.extend(failed);
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        expected.iter().sum::<i64>() > 1000,
        "the load ran during the resharding"
    );
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    for (n, want) in expected.iter().enumerate() {
        let got = s(&c.cmd(&["GET", &format!("counter:{n}")]).await);
        let want = if *want == 0 {
            "$-1\r\n".to_string()
        } else {
            bulk(&want.to_string())
        };
        assert_eq!(got, want, "counter:{n}: a write was lost or ran twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_served_again() {
    let (pki, mut cluster) = (Pki::new(), RedisCluster::start(3, 1).await);
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, "")).await;
    let mut c = client(&pki, &proxy).await;
    let mut any = cluster.nodes[0].redis.direct().await;
    let slot = integer(&any.cmd(&["CLUSTER", "KEYSLOT", "failover"]).await) as u16;
    drop(any);
    let primary = cluster.owner(slot).await;
    for _ in 0..10 {
        assert!(c.cmd(&["INCR", "failover"]).await.starts_with(b":"));
    }
    // Let the replica take the writes before its primary goes.
    cluster
        .replicated(&primary, "failover", bulk("10").as_bytes())
        .await;
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.redis.address() == primary)
        .unwrap()
        .redis
        .kill();
    let killed = std::time::Instant::now();
    // Errors while the cluster fails over, then served again by the promoted replica.
    let mut errors = 0;
    loop {
        let reply = c.cmd(&["INCR", "failover"]).await;
        if reply.starts_with(b":") {
            break;
        }
        errors += 1;
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(30),
            "not served again 30 s after the failover began: {}",
            s(&reply)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..50 {
        assert!(c.cmd(&["INCR", "failover"]).await.starts_with(b":"));
    }
    // Every acknowledged INCR counted (those before the kill were replicated); a request that
    // failed may or may not have run, never twice.
    let value = s(&c.cmd(&["GET", "failover"]).await);
    let value: i64 = value.lines().nth(1).unwrap().parse().unwrap();
    assert!(
        (61..=61 + errors).contains(&value),
        "{value} after 61 acknowledged INCRs and {errors} failed ones"
    );
}

/// The keyless commands a MULTI queues in cachegate while it waits for its first key count
/// against `limits.max_buffered_bytes`: past it the client gets the bound's error (they were
/// held unbounded: one client's `ECHO`s grew the process ten times past the bound, found by a
/// reviewer); the others go on, and the queue's share comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_transaction_queues_within_the_buffer_bound() {
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&format!(
        "limits.max_buffered_bytes = 4194304\n{}",
        cluster_toml(&pki, &cluster, "")
    ))
    .await;
    let mut c = client(&pki, &proxy).await;
    let mut other = client(&pki, &proxy).await;
    let big = "x".repeat(1 << 20);
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    let mut queued = 0;
    let refused = loop {
        let reply = s(&c.cmd(&["ECHO", &big]).await);
        if reply != "+QUEUED\r\n" {
            break reply;
        }
        queued += 1;
        assert!(queued < 8, "8 MiB queued against a 4 MiB bound");
    };
    // (Refused as queued, or as read: the bound's error either way.)
    assert!(
        refused.starts_with("-ERR ")
            && refused.contains("cachegate's buffers for all clients are at their limit"),
        "{refused}"
    );
    assert_eq!(other.cmd(&["GET", "ready"]).await, b"$1\r\n1\r\n");
    // Refused as queued, the transaction aborts; refused as read, the connection closes.
    // Either way the queue's share is given back: a new transaction queues again.
    drop(c);
    let mut c = client(&pki, &proxy).await;
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["ECHO", &big]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["DISCARD"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_blocking_commands_and_pubsub_run_on_the_right_node() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut c = client(&pki, &proxy).await;

    // MULTI waits for its first key to know its node; keyless commands queue meanwhile.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["PING"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["SET", "{tx}a", "1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["INCR", "{tx}b"]).await, b"+QUEUED\r\n");
    assert_eq!(s(&c.cmd(&["EXEC"]).await), "*3\r\n+PONG\r\n+OK\r\n:1\r\n");
    // A name set in a transaction held for its node is the node connection's, as EXEC set it.
    let mut named = client(&pki, &proxy).await;
    assert_eq!(named.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        named.cmd(&["CLIENT", "SETNAME", "in-tx"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(named.cmd(&["SET", "{tx}n", "1"]).await, b"+QUEUED\r\n");
    assert_eq!(s(&named.cmd(&["EXEC"]).await), "*2\r\n+OK\r\n+OK\r\n");
    assert_eq!(
        s(&named.cmd(&["CLIENT", "GETNAME"]).await),
        "$5\r\nin-tx\r\n"
    );
    // A subscription in a transaction that EXEC places (no key named a node) holds the
    // session's connection as any other: it still gets the channel's messages.
    let mut sub = client(&pki, &proxy).await;
    assert_eq!(sub.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        s(&sub.cmd(&["SUBSCRIBE", "a", "b"]).await),
        "-ERR cachegate: SUBSCRIBE inside MULTI takes exactly one channel\r\n"
    );
    assert_eq!(sub.cmd(&["DISCARD"]).await, b"+OK\r\n");
    assert_eq!(sub.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(sub.cmd(&["SUBSCRIBE", "txnews"]).await, b"+QUEUED\r\n");
    assert_eq!(
        s(&sub.cmd(&["EXEC"]).await),
        "*1\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\ntxnews\r\n:1\r\n"
    );
    assert_eq!(
        s(&sub.cmd(&["PING"]).await),
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        "still subscribed"
    );
    let mut publisher = client(&pki, &proxy).await;
    assert!(publisher
        .cmd(&["PUBLISH", "txnews", "hi"])
        .await
        .starts_with(b":"));
    assert_eq!(
        s(&sub.read().await),
        "*3\r\n$7\r\nmessage\r\n$6\r\ntxnews\r\n$2\r\nhi\r\n"
    );
    // A key of another node inside the transaction: CROSSSLOT, and EXEC aborts.
    let tx_slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", "{tx}"]).await) as u16;
    let tx_node = cluster.owner(tx_slot).await;
    let (mut elsewhere, mut same_node) = (None, None);
    for i in 0.. {
        let key = format!("k{i}");
        let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", &key]).await) as u16;
        let on_tx_node = cluster.owner(slot).await == tx_node;
        if !on_tx_node && elsewhere.is_none() {
            elsewhere = Some(key);
        } else if on_tx_node && slot != tx_slot && same_node.is_none() {
            same_node = Some(key);
        }
        if elsewhere.is_some() && same_node.is_some() {
            break;
        }
    }
    let (elsewhere, same_node) = (elsewhere.unwrap(), same_node.unwrap());
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "{tx}b"]).await, b"+QUEUED\r\n");
    let cross = s(&c.cmd(&["INCR", &elsewhere]).await);
    assert!(cross.starts_with("-CROSSSLOT"), "{cross}");
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(s(&c.cmd(&["GET", "{tx}b"]).await), bulk("1"));
    // Another slot of the same node: the node's own verdict, as it gives it directly.
    let mut node = cluster.at(&tx_node).redis.direct().await;
    let mut verdicts = Vec::new();
    for client in [&mut c, &mut node] {
        let mut replies = String::new();
        for cmd in [
            vec!["MULTI"],
            vec!["INCR", "{tx}b"],
            vec!["INCR", &same_node],
            vec!["EXEC"],
        ] {
            replies.push_str(&s(&client.cmd(&cmd).await));
        }
        verdicts.push(replies);
    }
    assert_eq!(verdicts[0], verdicts[1]);
    assert!(verdicts[0].contains("CROSSSLOT"), "{}", verdicts[0]);
    assert_eq!(s(&c.cmd(&["GET", "{tx}b"]).await), bulk("1"));
    // A keyless transaction runs on any node; DISCARD drops a held one.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["ECHO", "x"]).await, b"+QUEUED\r\n");
    assert_eq!(s(&c.cmd(&["EXEC"]).await), format!("*1\r\n{}", bulk("x")));
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{tx}a", "dropped"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["DISCARD"]).await, b"+OK\r\n");
    assert_eq!(s(&c.cmd(&["GET", "{tx}a"]).await), bulk("1"));
    assert!(s(&c.cmd(&["MULTI", "x"]).await).starts_with("-ERR"));
    assert!(s(&c.cmd(&["EXEC"]).await).contains("EXEC without MULTI"));

    // WATCH pins to the key's node: a write by another client there aborts the transaction.
    let mut other = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["WATCH", "{tx}a"]).await, b"+OK\r\n");
    assert_eq!(other.cmd(&["SET", "{tx}a", "changed"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{tx}a", "mine"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, b"*-1\r\n");
    assert_eq!(s(&c.cmd(&["GET", "{tx}a"]).await), bulk("changed"));
    assert_eq!(c.cmd(&["WATCH", "{tx}a"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "{tx}a", "mine"]).await, b"+QUEUED\r\n");
    assert_eq!(s(&c.cmd(&["EXEC"]).await), "*1\r\n+OK\r\n");
    // Back on shared connections afterwards: keys of every node work again.
    for i in 0..30 {
        assert_eq!(
            c.cmd(&["SET", &format!("after:{i}"), "1"]).await,
            b"+OK\r\n"
        );
    }

    // A blocking command waits on its key's node and is woken by a push through cachegate.
    let mut blocked = RawClient::authed(&pki, proxy.addr).await;
    blocked.send_cmd(&["BLPOP", "{q}list", "10"]).await;
    let owner = cluster
        .owner(integer(&c.cmd(&["CLUSTER", "KEYSLOT", "{q}list"]).await) as u16)
        .await;
    assert!(cluster.at(&owner).redis.until_blocked(1).await);
    assert_eq!(c.cmd(&["RPUSH", "{q}list", "job"]).await, b":1\r\n");
    assert_eq!(
        s(&blocked.read().await),
        format!("*2\r\n{}{}", bulk("{q}list"), bulk("job"))
    );
    assert!(s(&blocked.cmd(&["BLPOP", "a", "b", "1"]).await).starts_with("-CROSSSLOT"));
    assert_eq!(blocked.cmd(&["SET", "after-blpop", "1"]).await, b"+OK\r\n");

    // Pub/sub: a message published through cachegate reaches a subscriber through cachegate,
    // whichever nodes each is on (the cluster spreads messages to every node).
    let mut sub = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(
        s(&sub.cmd(&["SUBSCRIBE", "news"]).await),
        format!("*3\r\n{}{}:1\r\n", bulk("subscribe"), bulk("news"))
    );
    for i in 0..5 {
        // Published from sessions that land on different nodes.
        let mut p = RawClient::authed(&pki, proxy.addr).await;
        assert!(p
            .cmd(&["PUBLISH", "news", &format!("m{i}")])
            .await
            .starts_with(b":"));
        assert_eq!(
            s(&sub.read().await),
            format!(
                "*3\r\n{}{}{}",
                bulk("message"),
                bulk("news"),
                bulk(&format!("m{i}"))
            )
        );
    }
    // Sharded pub/sub: the shard channel's node.
    let mut ssub = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(
        s(&ssub.cmd(&["SSUBSCRIBE", "{shard}ch"]).await),
        format!("*3\r\n{}{}:1\r\n", bulk("ssubscribe"), bulk("{shard}ch"))
    );
    assert_eq!(c.cmd(&["SPUBLISH", "{shard}ch", "hello"]).await, b":1\r\n");
    assert_eq!(
        s(&ssub.read().await),
        format!(
            "*3\r\n{}{}{}",
            bulk("smessage"),
            bulk("{shard}ch"),
            bulk("hello")
        )
    );
    // In RESP3, two SUNSUBSCRIBEs of all in one pipeline: the second's confirmation names no
    // channel. Both are the client's own (not a node ending a channel, to be followed and
    // kept from it), and what follows them is answered at once, in order.
    let mut r3 = RawClient::authed(&pki, proxy.addr).await;
    assert!(r3.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    let mut wire = Vec::new();
    for cmd in [
        &["SSUBSCRIBE", "{shard}ch"][..],
        &["SUNSUBSCRIBE"],
        &["SUNSUBSCRIBE"],
        &["ECHO", "after"],
    ] {
        let words: Vec<&[u8]> = cmd.iter().map(|w| w.as_bytes()).collect();
        wire.extend(encode(&words));
    }
    r3.send(&wire).await;
    let started = std::time::Instant::now();
    for want in [
        format!(">3\r\n{}{}:1\r\n", bulk("ssubscribe"), bulk("{shard}ch")),
        format!(">3\r\n{}{}:0\r\n", bulk("sunsubscribe"), bulk("{shard}ch")),
        format!(">3\r\n{}_\r\n:0\r\n", bulk("sunsubscribe")),
        bulk("after"),
    ] {
        assert_eq!(s(&r3.read().await), want);
    }
    // (Well inside the request timeout, which a confirmation kept from the client would
    // have waited out.)
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // Commands whose state cannot follow a session across nodes are refused, saying so.
    for cmd in [
        vec!["CLIENT", "TRACKING", "on"],
        vec!["MONITOR"],
        vec!["READONLY"],
    ] {
        let reply = s(&c.cmd(&cmd).await);
        assert!(reply.starts_with("-ERR cachegate"), "{cmd:?}: {reply}");
    }
    // Scripts run on the node of the keys they declare.
    assert_eq!(
        s(&c.cmd(&[
            "EVAL",
            "return redis.call('INCR', KEYS[1])",
            "1",
            "script:k"
        ])
        .await),
        ":1\r\n"
    );
    assert!(s(&c.cmd(&["EVAL", "return 1", "2", "a", "b"]).await).starts_with("-CROSSSLOT"));
}

/// A node that says it serves every slot and then redirects every key to `to`: what a
/// compromised or misconfigured node could make cachegate do (no real node can be made to
/// name an address outside its cluster's layout).
async fn redirecting_node(to: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let to = to.clone();
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                loop {
                    while let Some(len) = reply_end(&buf) {
                        let request = s(&buf.split_to(len));
                        let answer = if request.contains("SLOTS") {
                            format!(
                                "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{}\r\n$2\r\nid\r\n",
                                addr.port()
                            )
                        } else if request.contains("PING") {
                            "+PONG\r\n".to_string()
                        } else if request.contains("GET") {
                            let slot = cachegate::upstream::cluster::slot::key_slot(b"k");
                            format!("-MOVED {slot} {to}\r\n")
                        } else {
                            "+OK\r\n".to_string()
                        };
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirection_to_a_node_outside_the_layout_is_not_followed() {
    let pki = Pki::new();
    // Where a hostile redirection points: it must never see a connection (and so never
    // cachegate's upstream credentials).
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = redirecting_node(trap.local_addr().unwrap().to_string()).await;
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{TOKEN:?}]\nupstream.cluster = true\n\
         upstream.nodes = [\"{node}\"]\nupstream.password = \"upstream-secret-0123\"\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
    ))
    .await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let reply = s(&c.cmd(&["GET", "k"]).await);
    assert!(reply.starts_with("-TRYAGAIN cachegate"), "{reply}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), trap.accept())
            .await
            .is_err(),
        "cachegate connected where an unlisted redirection pointed"
    );
    let metrics = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(
            &metrics,
            "cachegate_cluster_redirects_total{listener=\"redis-0\",reason=\"unknown_node\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// `cmdstat_<name>` calls on a node since its last CONFIG RESETSTAT.
async fn calls(node: &Redis, name: &str) -> u64 {
    let mut d = node.direct().await;
    let stats = s(&d.cmd(&["INFO", "commandstats"]).await);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_only_when_asked() {
    let cluster = RedisCluster::start(3, 1).await;
    let pki = Pki::new();
    let plain = Proxy::start(&cluster_toml(&pki, &cluster, "")).await;
    let replicas = Proxy::start(&cluster_toml(
        &pki,
        &cluster,
        "upstream.read_from_replicas = true\nupstream.cluster_refresh = \"200ms\"\n",
    ))
    .await;
    let mut c = client(&pki, &plain).await;
    assert_eq!(c.cmd(&["SET", "{r}k", "v"]).await, b"+OK\r\n");
    let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", "{r}k"]).await) as u16;
    let primary = cluster.owner(slot).await;
    cluster
        .replicated(&primary, "{r}k", bulk("v").as_bytes())
        .await;
    let replica = cluster.replica_of(&primary).await;
    // (Those reads were the test's own.)
    let reset = replica.client().await.cmd(&["CONFIG", "RESETSTAT"]).await;
    assert_eq!(reset, b"+OK\r\n");
    // CLUSTER SLOTS lists a replica once the cluster has heard it has data; the proxy reads
    // the layout again every 200 ms meanwhile.
    let mut r = client(&pki, &replicas).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while calls(&replica.redis, "get").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reads never reached the replica"
        );
        assert_eq!(s(&r.cmd(&["GET", "{r}k"]).await), bulk("v"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for node in &cluster.nodes {
        let mut d = node.redis.direct().await;
        assert_eq!(d.cmd(&["CONFIG", "RESETSTAT"]).await, b"+OK\r\n");
    }
    // Off by default: every read goes to the primary.
    for _ in 0..20 {
        assert_eq!(s(&c.cmd(&["GET", "{r}k"]).await), bulk("v"));
    }
    assert_eq!(calls(&replica.redis, "get").await, 0);
    assert_eq!(calls(&cluster.at(&primary).redis, "get").await, 20);
    // Asked for: reads go to the replica, writes still to the primary.
    for _ in 0..20 {
        assert_eq!(s(&r.cmd(&["GET", "{r}k"]).await), bulk("v"));
        assert_eq!(
            s(&r.cmd(&["MGET", "{r}k", "{r}none"]).await),
            format!("*2\r\n{}$-1\r\n", bulk("v"))
        );
    }
    assert_eq!(r.cmd(&["SET", "{r}k", "w"]).await, b"+OK\r\n");
    assert_eq!(calls(&replica.redis, "get").await, 20);
    assert_eq!(calls(&replica.redis, "mget").await, 20);
    assert_eq!(calls(&cluster.at(&primary).redis, "get").await, 20);
    assert_eq!(calls(&cluster.at(&primary).redis, "set").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_with_each_node_verified_by_its_own_name() {
    let (pki, cluster) = (Pki::new(), RedisCluster::start_tls(3, 0).await);
    let ca = cluster.pki.as_ref().unwrap().ca.clone();
    let tls = format!("upstream.tls.ca = {ca:?}\n");
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, &tls)).await;
    let mut c = client(&pki, &proxy).await;
    for i in 0..60 {
        assert_eq!(c.cmd(&["SET", &format!("tls:{i}"), "v"]).await, b"+OK\r\n");
    }
    let mut per_node = Vec::new();
    for node in &cluster.nodes {
        let mut d = node.client().await;
        per_node.push(integer(&d.cmd(&["DBSIZE"]).await));
    }
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every node served: {per_node:?}"
    );
    let mut mget = vec!["MGET".to_string()];
    mget.extend((0..60).map(|i| format!("tls:{i}")));
    let mget: Vec<&str> = mget.iter().map(String::as_str).collect();
    assert_eq!(s(&c.cmd(&mget).await).matches("$1\r\nv\r\n").count(), 60);

    // One configured name for every node: only the node whose certificate carries it is
    // reached, the others are refused by verification (so the per-node name is what works).
    let one_name = format!("{tls}upstream.tls.server_name = \"node-0.cluster.test\"\n");
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, &one_name)).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    // (A key of another node fails after the retries for an unreachable node.)
    let (mut served, mut failed) = (0, 0);
    for i in 0..60 {
        let reply = c.cmd(&["GET", &format!("tls:{i}")]).await;
        if reply.starts_with(b"$1") {
            served += 1;
        } else {
            failed += 1;
        }
        if served > 0 && failed > 0 {
            break;
        }
    }
    assert!(served > 0 && failed > 0, "{served} served, {failed} failed");

    // Upstream TLS material is reloaded for every node: a proxy that trusts the wrong CA
    // reaches no node, and once reloaded with the cluster's, all of them.
    let wrong = format!("upstream.tls.ca = {:?}\n", pki.ca);
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, &wrong)).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert!(c.cmd(&["GET", "tls:0"]).await.starts_with(b"-"));
    proxy
        .reload_with(&cluster_toml(&pki, &cluster, &tls))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.cmd(&["GET", "tls:0"]).await.starts_with(b"$1") {
        assert!(
            std::time::Instant::now() < deadline,
            "not served after the reload"
        );
    }
    assert_eq!(s(&c.cmd(&mget).await).matches("$1\r\nv\r\n").count(), 60);
}

/// ACL users, backend users and the policy apply on a cluster listener as on one Redis, the
/// paths only a cluster has (a MULTI held until its first key, split commands) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_and_policy_hold_on_a_cluster_as_on_one_redis() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_with_password(3, "admin-password").await;
    let proxy = Proxy::start(&format!(
        "[[users]]\nname = \"default\"\nacl = \"off\"\n\
         [[users]]\nname = \"app\"\nacl = \"on >app-pw ~app:* +@all\"\n\
         [user_groups]\napps = [\"default\", \"app\"]\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"apps\"\n\
         auth.backend_users = true\ncommands.disable = [\"FLUSHALL\", \"KEYS\"]\ncommands.scripts = \"backend_acl\"\n\
         upstream.cluster = true\nupstream.nodes = [{:?}]\nupstream.password = \"admin-password\"\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        cluster.seed()
    ))
    .await;
    let mut admin = cluster.nodes[0].client().await;
    assert_eq!(admin.cmd(&["SET", "secret", "s3cret"]).await, b"+OK\r\n");
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["AUTH", "app", "app-pw"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "app:1", "a"]).await, b"+OK\r\n");
    for cmd in [
        vec!["GET", "secret"],
        vec!["MGET", "app:1", "secret"],
        vec!["DEL", "app:1", "secret"],
        vec!["MSET", "app:2", "x", "other", "y"],
    ] {
        let reply = s(&c.cmd(&cmd).await);
        assert!(reply.starts_with("-NOPERM"), "{cmd:?}: {reply}");
    }
    for cmd in [vec!["FLUSHALL"], vec!["KEYS", "*"]] {
        let reply = s(&c.cmd(&cmd).await);
        assert!(
            reply.starts_with("-ERR unknown command"),
            "{cmd:?}: {reply}"
        );
    }
    // A script runs as the user's backend user, on its keys' node and inside a transaction
    // held until its first key alike: Redis refuses the key the user may not touch.
    let steal = ["EVAL", "return redis.call('GET', 'secret')", "0"];
    let reply = s(&c.cmd(&steal).await);
    // Refused by Redis, as the user's backend user (not by cachegate, which would refuse
    // the script whatever it touched).
    assert!(
        reply.starts_with("-") && reply.contains("key") && !reply.contains("cachegate"),
        "{reply}"
    );
    let own = ["EVAL", "return redis.call('GET', KEYS[1])", "1", "app:1"];
    assert_eq!(s(&c.cmd(&own).await), bulk("a"));
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&steal).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["SET", "app:{secret}", "1"]).await, b"+QUEUED\r\n");
    let reply = s(&c.cmd(&["EXEC"]).await);
    assert!(!reply.contains("s3cret"), "{reply}");
    // Nor does a transaction held for its first key queue a key the user may not touch.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["GET", "secret"]).await).starts_with("-NOPERM"));
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    // A transaction cannot queue what the listener refuses outside one.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["CLIENT", "NO-EVICT", "on"]).await).starts_with("-ERR cachegate"));
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(s(&admin.cmd(&["GET", "secret"]).await), bulk("s3cret"));
}

/// A script can return an error that reads like a redirection after it ran: cachegate must
/// neither run it again nor go where it says (nor crash on a slot out of range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_cannot_forge_a_redirection() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut c = client(&pki, &proxy).await;
    let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", "forged"]).await);
    let owner = cluster.owner(slot as u16).await;
    let other = cluster.other_than(&owner);
    for error in [
        format!("MOVED {slot} {other}"),
        format!("ASK {slot} {other}"),
        "TRYAGAIN later".to_string(),
        format!("MOVED 16384 {other}"),
        format!("MOVED {slot} 10.255.255.1:6379"),
    ] {
        let script = format!("redis.call('INCR', KEYS[1]); return redis.error_reply('{error}')");
        let before = s(&c.cmd(&["GET", "forged"]).await);
        let reply = s(&c.cmd(&["EVAL", &script, "1", "forged"]).await);
        assert!(reply.starts_with('-'), "{reply}");
        if !error.contains("16384") {
            // (Not a redirection at all: the script's own error, as it wrote it.)
            assert!(
                !reply.contains(&other) && !reply.contains("10.255"),
                "{reply}"
            );
        }
        let after = s(&c.cmd(&["GET", "forged"]).await);
        let n = |v: &str| v.lines().nth(1).map_or(0, |n| n.parse::<i64>().unwrap());
        assert_eq!(n(&after), n(&before) + 1, "{error}: the script ran once");
    }
    // The map still sends the key's commands to its owner.
    let mut o = cluster.at(&owner).client().await;
    assert_eq!(o.cmd(&["CONFIG", "RESETSTAT"]).await, b"+OK\r\n");
    for _ in 0..5 {
        assert!(c.cmd(&["GET", "forged"]).await.starts_with(b"$1"));
    }
    assert_eq!(calls(&cluster.at(&owner).redis, "get").await, 5);
}

/// Every data type's commands give through cachegate what the node serving their keys gives
/// directly, in RESP2 and RESP3 (the same slot by hash tag, keys named apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_family_answers_as_the_node_does() {
    let (pki, cluster, proxy) = three_primaries("").await;
    for resp3 in [false, true] {
        let tag = if resp3 { "{fam3}" } else { "{fam2}" };
        let mut c = client(&pki, &proxy).await;
        let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", tag]).await) as u16;
        let mut direct = cluster.at(&cluster.owner(slot).await).client().await;
        let mut replies: Vec<Vec<String>> = Vec::new();
        for (side, client) in [("p", &mut c), ("d", &mut direct)] {
            if resp3 {
                assert!(client.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
            }
            let k = |name: &str| format!("{tag}{side}:{name}");
            let script = "return redis.call('GET', KEYS[1])";
            let commands: Vec<Vec<String>> = [
                vec!["SET", &k("s"), "v"],
                vec!["APPEND", &k("s"), "x"],
                vec!["GETRANGE", &k("s"), "0", "1"],
                vec!["STRLEN", &k("s")],
                vec!["INCRBYFLOAT", &k("f"), "1.5"],
                vec!["SETEX", &k("e"), "100", "v"],
                vec!["TTL", &k("e")],
                vec!["GETDEL", &k("e")],
                vec!["HSET", &k("h"), "f", "1", "g", "2"],
                vec!["HINCRBY", &k("h"), "f", "5"],
                vec!["HGETALL", &k("h")],
                vec!["HLEN", &k("h")],
                vec!["SADD", &k("set"), "a", "b", "c"],
                vec!["SISMEMBER", &k("set"), "a"],
                vec!["SMOVE", &k("set"), &k("set2"), "a"],
                vec!["SINTERCARD", "2", &k("set"), &k("set2")],
                vec!["SUNIONSTORE", &k("set3"), &k("set"), &k("set2")],
                vec!["SCARD", &k("set3")],
                vec!["ZADD", &k("z"), "1", "a", "2", "b"],
                vec!["ZRANGE", &k("z"), "0", "-1", "WITHSCORES"],
                vec!["ZINCRBY", &k("z"), "3", "a"],
                vec!["ZRANK", &k("z"), "a"],
                vec!["ZPOPMIN", &k("z")],
                vec!["RPUSH", &k("l"), "1", "2", "3"],
                vec!["LRANGE", &k("l"), "0", "-1"],
                vec!["LMOVE", &k("l"), &k("l2"), "LEFT", "RIGHT"],
                vec!["LPOS", &k("l"), "3"],
                vec!["SORT", &k("l")],
                vec!["XADD", &k("x"), "1-1", "f", "v"],
                vec!["XLEN", &k("x")],
                vec!["XRANGE", &k("x"), "-", "+"],
                vec!["PFADD", &k("hll"), "a", "b"],
                vec!["PFCOUNT", &k("hll")],
                vec![
                    "GEOADD",
                    &k("g"),
                    "13.361389",
                    "38.115556",
                    "Palermo",
                    "15.087269",
                    "37.502669",
                    "Catania",
                ],
                vec!["GEODIST", &k("g"), "Palermo", "Catania", "km"],
                vec!["SETBIT", &k("b"), "7", "1"],
                vec!["BITOP", "OR", &k("b2"), &k("b"), &k("b")],
                vec!["BITCOUNT", &k("b2")],
                vec!["EXPIRE", &k("s"), "100"],
                vec!["PERSIST", &k("s")],
                vec!["TYPE", &k("h")],
                vec!["OBJECT", "ENCODING", &k("set")],
                vec!["EXISTS", &k("s"), &k("f"), &k("none")],
                vec!["COPY", &k("s"), &k("c")],
                vec!["RENAME", &k("c"), &k("r")],
                vec!["EVAL", script, "1", &k("r")],
                vec!["DEL", &k("s"), &k("f"), &k("r")],
            ]
            .into_iter()
            .map(|c| c.into_iter().map(String::from).collect())
            .collect();
            let mut got = Vec::new();
            for cmd in &commands {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let line = format!("{cmd:?} -> {}", s(&client.cmd(&args).await));
                got.push(line.replace(&format!("{side}:"), ""));
            }
            replies.push(got);
        }
        for (through, direct) in replies[0].iter().zip(&replies[1]) {
            assert_eq!(through, direct);
        }
    }
}

/// A shard channel's subscription follows its slot to another node: the node that loses the
/// slot ends it (`sunsubscribe`), and cachegate subscribes again on the new node instead of
/// passing that on; messages published afterwards still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_subscriptions_follow_a_resharding() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    for resp3 in [false, true] {
        let channel = if resp3 { "{s3}ch" } else { "{s2}ch" };
        let mut sub = RawClient::authed(&pki, proxy.addr).await;
        if resp3 {
            assert!(sub.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
        }
        // An unsubscribe of all first (its one answer names no channel): answered, it leaves
        // nothing behind that would take a node's ending of the channel below for the
        // client's own.
        let none = s(&sub.cmd(&["SUNSUBSCRIBE"]).await);
        assert!(
            none.contains("sunsubscribe") && none.ends_with(":0\r\n"),
            "{none}"
        );
        let confirmed = s(&sub.cmd(&["SSUBSCRIBE", channel]).await);
        assert!(confirmed.contains("ssubscribe"), "{confirmed}");
        let slot = integer(&publisher.cmd(&["CLUSTER", "KEYSLOT", channel]).await) as u16;
        let from = cluster.owner(slot).await;
        let to = cluster.other_than(&from);
        let to_id = cluster.id(&to).await;
        // The slot (no keys in it) moves: the old node ends the subscription.
        cluster.assign(slot, &to_id).await;
        followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
        // The client's own SUNSUBSCRIBE still ends it, and reaches the client.
        let left = s(&sub.cmd(&["SUNSUBSCRIBE", channel]).await);
        assert!(left.contains("sunsubscribe"), "{left}");
    }

    // Two channels of two slots on one node, both moved at once: each is subscribed again
    // (one SSUBSCRIBE naming both would be CROSSSLOT).
    let first = integer(&publisher.cmd(&["CLUSTER", "KEYSLOT", "{p}a"]).await) as u16;
    let node = cluster.owner(first).await;
    let mut second = None;
    for i in 0.. {
        let ch = format!("{{q{i}}}b");
        let slot = integer(&publisher.cmd(&["CLUSTER", "KEYSLOT", &ch]).await) as u16;
        if slot != first && cluster.owner(slot).await == node {
            second = Some((ch, slot));
            break;
        }
    }
    let (second, second_slot) = second.unwrap();
    let mut sub = RawClient::authed(&pki, proxy.addr).await;
    assert!(s(&sub.cmd(&["SSUBSCRIBE", "{p}a"]).await).contains(":1\r\n"));
    assert!(s(&sub.cmd(&["SSUBSCRIBE", &second]).await).contains(":2\r\n"));
    let to = cluster.other_than(&node);
    let to_id = cluster.id(&to).await;
    for slot in [first, second_slot] {
        cluster.assign(slot, &to_id).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 2 {
        for ch in ["{p}a", second.as_str()] {
            if !got.iter().any(|g: &String| g.contains(ch)) {
                assert!(publisher
                    .cmd(&["SPUBLISH", ch, "moved"])
                    .await
                    .starts_with(b":"));
            }
        }
        while let Ok(frame) =
            tokio::time::timeout(std::time::Duration::from_millis(200), sub.read()).await
        {
            let frame = s(&frame);
            assert!(frame.contains("smessage"), "{frame}");
            if !got.contains(&frame) {
                got.push(frame);
            }
        }
        assert!(std::time::Instant::now() < deadline, "got only {got:?}");
    }
}

/// Publishes on `channel` until `sub` gets the message (cachegate needs a moment to subscribe
/// again on the channel's new node, `to`): the next frame `sub` reads is that message, not
/// the old node's `sunsubscribe`, and the new node counts one subscriber.
async fn followed(
    publisher: &mut RawClient,
    sub: &mut RawClient,
    channel: &str,
    cluster: &RedisCluster,
    to: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let got = loop {
        assert!(publisher
            .cmd(&["SPUBLISH", channel, "after"])
            .await
            .starts_with(b":"));
        match tokio::time::timeout(std::time::Duration::from_millis(200), sub.read()).await {
            Ok(frame) => break s(&frame),
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "no message after the move"
            ),
        }
    };
    assert!(got.contains("smessage") && got.contains("after"), "{got}");
    assert!(!got.contains("sunsubscribe"), "{got}");
    let mut owner = cluster.at(to).client().await;
    let numsub = s(&owner.cmd(&["PUBSUB", "SHARDNUMSUB", channel]).await);
    assert!(
        numsub.ends_with(":1\r\n"),
        "subscribed on the new node: {numsub}"
    );
}

/// Puts the node at `from` to sleep for a second, after which it gives `slot` to the node
/// `to_id` before it reads anything else: what a session sends it meanwhile is answered
/// after the node's `sunsubscribe` for the slot's channels. Returns once the node is seen
/// asleep (another connection's PING goes unanswered), with the connection whose replies
/// (+OK twice) say it is done.
async fn asleep_then_moved(
    cluster: &RedisCluster,
    from: &str,
    slot: u16,
    to_id: &str,
) -> RawClient {
    let mut old = cluster.at(from).client().await;
    let mut wire = encode(&[b"DEBUG", b"SLEEP", b"1"]);
    let slot_s = slot.to_string();
    wire.extend(encode(&[
        b"CLUSTER",
        b"SETSLOT",
        slot_s.as_bytes(),
        b"NODE",
        to_id.as_bytes(),
    ]));
    old.send(&wire).await;
    let mut probe = cluster.at(from).client().await;
    let short = std::time::Duration::from_millis(50);
    for _ in 0..200 {
        probe.send_cmd(&["PING"]).await;
        if tokio::time::timeout(short, probe.read()).await.is_err() {
            return old;
        }
    }
    panic!("the node at {from} never slept");
}

/// A client logged in (RESP3 with `resp3`) and subscribed to the shard channel `channel`.
async fn shard_subscriber(pki: &Pki, proxy: &Proxy, channel: &str, resp3: bool) -> RawClient {
    let mut sub = RawClient::authed(pki, proxy.addr).await;
    if resp3 {
        assert!(sub.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    }
    assert!(s(&sub.cmd(&["SSUBSCRIBE", channel]).await).ends_with(":1\r\n"));
    sub
}

/// `channel`'s slot, the node serving it, another node, and that one's id.
async fn slot_and_nodes(
    publisher: &mut RawClient,
    cluster: &RedisCluster,
    channel: &str,
) -> (u16, String, String, String) {
    let slot = integer(&publisher.cmd(&["CLUSTER", "KEYSLOT", channel]).await) as u16;
    let from = cluster.owner(slot).await;
    let to = cluster.other_than(&from);
    let to_id = cluster.id(&to).await;
    (slot, from, to, to_id)
}

/// The two replies (+OK) of `asleep_then_moved`'s connection: the node is awake, and the
/// slot has left it.
async fn moved(old: &mut RawClient) {
    assert_eq!(old.read().await, b"+OK\r\n");
    assert_eq!(old.read().await, b"+OK\r\n");
}

/// A channel of another slot than `slot` on `node`.
async fn elsewhere_on(
    publisher: &mut RawClient,
    cluster: &RedisCluster,
    node: &str,
    slot: u16,
) -> String {
    for i in 0.. {
        let ch = format!("{{r{i}}}x");
        let s = integer(&publisher.cmd(&["CLUSTER", "KEYSLOT", &ch]).await) as u16;
        if s != slot && cluster.owner(s).await == node {
            return ch;
        }
    }
    unreachable!()
}

/// On RESP2, a node's ending of a shard channel that comes while the session's PING, RESET or
/// SSUBSCRIBE is on its way (a subscribed RESP2 connection runs nothing else but QUIT and
/// the other (un)subscriptions) is the node's, not that command's reply. Behind a PING, the
/// channel is followed to its new node, and so after a switch from RESP3 with `HELLO 2`;
/// behind a RESET, or a PING with a RESET after it, the client gets it as the node sent it
/// (before +RESET: RESET ends every subscription anyway) and nothing is subscribed again;
/// behind an SSUBSCRIBE, which keeps the old node's connection, the client gets it after a
/// moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ending_a_shard_channel_during_another_command_is_not_its_reply() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    for (channel, command) in [
        ("{s5}ch", "PING"),
        ("{s4}ch", "HELLO 2, PING"),
        ("{s7}ch", "RESET"),
        ("{s8}ch", "PING, RESET"),
        ("{s9}ch", "SSUBSCRIBE"),
    ] {
        let mut sub = RawClient::authed(&pki, proxy.addr).await;
        if command.starts_with("HELLO") {
            assert!(sub.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
        }
        assert!(s(&sub.cmd(&["SSUBSCRIBE", channel]).await).contains("ssubscribe"));
        if command.starts_with("HELLO") {
            assert!(sub.cmd(&["HELLO", "2"]).await.starts_with(b"*"));
        }
        let (slot, from, to, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
        let other = elsewhere_on(&mut publisher, &cluster, &from, slot).await;
        // The command sent now is answered after the node's sunsubscribe (by then the
        // connection is subscribed to nothing, so a PING's reply is +PONG).
        let mut old = asleep_then_moved(&cluster, &from, slot, &to_id).await;
        let ended = |n: u8| format!("*3\r\n$12\r\nsunsubscribe\r\n$6\r\n{channel}\r\n:{n}\r\n");
        match command {
            "RESET" | "PING, RESET" => {
                let mut wire = Vec::new();
                if command.starts_with("PING") {
                    wire.extend(encode(&[b"PING"]));
                }
                wire.extend(encode(&[b"RESET"]));
                sub.send(&wire).await;
                assert_eq!(s(&sub.read().await), ended(0));
                if command.starts_with("PING") {
                    assert_eq!(s(&sub.read().await), "+PONG\r\n");
                }
                assert_eq!(s(&sub.read().await), "+RESET\r\n");
            }
            "SSUBSCRIBE" => {
                sub.send_cmd(&["SSUBSCRIBE", &other]).await;
                let confirmed = s(&sub.read().await);
                assert!(
                    confirmed.starts_with("*3\r\n$10\r\nssubscribe\r\n")
                        && confirmed.ends_with(":1\r\n"),
                    "{confirmed}"
                );
                assert_eq!(s(&sub.read().await), ended(1));
            }
            _ => {
                sub.send_cmd(&["PING"]).await;
                assert_eq!(s(&sub.read().await), "+PONG\r\n");
            }
        }
        moved(&mut old).await;
        // The other nodes learn the move too.
        cluster.assign(slot, &to_id).await;
        if command.ends_with("RESET") {
            // (A round trip, logging in again: the request side has had its turn to follow.)
            assert_eq!(sub.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
        }
        if command.ends_with("PING") {
            followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
        } else {
            let mut owner = cluster.at(&to).client().await;
            let numsub = s(&owner.cmd(&["PUBSUB", "SHARDNUMSUB", channel]).await);
            assert!(numsub.ends_with(":0\r\n"), "not followed: {numsub}");
        }
    }
}

/// A node ending one shard channel while the client's SUNSUBSCRIBE of another is on its way:
/// the node's ending is not taken for the client's confirmation (in RESP2 the two look
/// alike), so the client gets its own confirmation in its place, and the channel that moved
/// is followed. In RESP2 and RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ending_one_channel_while_the_client_leaves_another_is_told_apart() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    for (channel, resp3) in [("{s1}ch", false), ("{s2}ch", true)] {
        let (slot, from, to, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
        let other = elsewhere_on(&mut publisher, &cluster, &from, slot).await;
        let mut sub = shard_subscriber(&pki, &proxy, channel, resp3).await;
        assert!(s(&sub.cmd(&["SSUBSCRIBE", &other]).await).ends_with(":2\r\n"));
        let mut old = asleep_then_moved(&cluster, &from, slot, &to_id).await;
        sub.send_cmd(&["SUNSUBSCRIBE", &other]).await;
        let head = if resp3 { ">3" } else { "*3" };
        let own = format!(
            "{head}\r\n$12\r\nsunsubscribe\r\n${}\r\n{other}\r\n:0\r\n",
            other.len()
        );
        assert_eq!(s(&sub.read().await), own);
        moved(&mut old).await;
        cluster.assign(slot, &to_id).await;
        followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
    }
}

/// The client leaves the very channel whose slot is moving: the node ends it, then refuses
/// the client's SUNSUBSCRIBE with a redirection, which reaches the client as cachegate's
/// TRYAGAIN (no node's address), though no command of the client's is in place by then (the
/// node's ending answered it). In RESP2 and RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirection_with_no_command_in_place_names_no_node() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    for (channel, resp3) in [("{s1}ch", false), ("{s2}ch", true)] {
        let (slot, from, _, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
        let mut sub = shard_subscriber(&pki, &proxy, channel, resp3).await;
        let mut old = asleep_then_moved(&cluster, &from, slot, &to_id).await;
        sub.send_cmd(&["SUNSUBSCRIBE", channel]).await;
        let head = if resp3 { ">3" } else { "*3" };
        let ended = format!("{head}\r\n$12\r\nsunsubscribe\r\n$6\r\n{channel}\r\n:0\r\n");
        assert_eq!(s(&sub.read().await), ended);
        let refused = s(&sub.read().await);
        assert!(refused.starts_with("-TRYAGAIN cachegate:"), "{refused}");
        moved(&mut old).await;
        // Answered in order after it.
        assert_eq!(sub.cmd(&["PING"]).await, b"+PONG\r\n");
    }
}

/// A RESP2 SSUBSCRIBE of two channels that the node refuses as a whole (their slot has just
/// moved: one MOVED, however many channels) is answered once, and what follows is answered in
/// its place; the node's ending of the session's earlier channel is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_refused_as_a_whole_is_answered_once() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    let channel = "{s3}ch";
    let (slot, from, to, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
    let mut sub = shard_subscriber(&pki, &proxy, channel, false).await;
    let mut old = asleep_then_moved(&cluster, &from, slot, &to_id).await;
    sub.send_cmd(&["SSUBSCRIBE", "{s3}a", "{s3}b"]).await;
    let refused = s(&sub.read().await);
    assert!(refused.starts_with("-TRYAGAIN cachegate:"), "{refused}");
    moved(&mut old).await;
    cluster.assign(slot, &to_id).await;
    followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
    let pong = s(&sub.cmd(&["PING"]).await);
    assert!(pong.contains("pong"), "{pong}");
}

/// A RESET pipelined behind RESP3 SUNSUBSCRIBEs (of all, and of a name) leaves the follower as
/// on a new connection: a channel subscribed after it is followed when its slot moves (what
/// the SUNSUBSCRIBEs left awaited would otherwise make the node's ending read as the
/// client's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_behind_sunsubscribes_leaves_nothing_awaited() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    let channel = "{s0}ch";
    let mut sub = shard_subscriber(&pki, &proxy, channel, true).await;
    let mut wire = encode(&[b"SUNSUBSCRIBE"]);
    wire.extend(encode(&[b"SUNSUBSCRIBE", channel.as_bytes()]));
    wire.extend(encode(&[b"RESET"]));
    sub.send(&wire).await;
    for _ in 0..2 {
        let left = s(&sub.read().await);
        assert!(left.starts_with(">3\r\n$12\r\nsunsubscribe\r\n"), "{left}");
    }
    assert_eq!(sub.read().await, b"+RESET\r\n");
    assert_eq!(sub.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
    assert!(sub.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    assert!(s(&sub.cmd(&["SSUBSCRIBE", channel]).await).ends_with(":1\r\n"));
    let (slot, _, to, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
    cluster.assign(slot, &to_id).await;
    followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
}

/// A RESP3 SUNSUBSCRIBE the node refuses (here: a user that may not run it) confirms nothing:
/// the follower no longer waits for its confirmations, so a node's later ending of the
/// channel is still followed, not passed on as the client's own. (Channels of two slots never
/// reach a node: cachegate answers CROSSSLOT itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sunsubscribe_leaves_the_follower_as_it_was() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut publisher = client(&pki, &proxy).await;
    let channel = "{s6}ch";
    let (slot, from, to, to_id) = slot_and_nodes(&mut publisher, &cluster, channel).await;
    let mut sub = RawClient::authed(&pki, proxy.addr).await;
    assert!(sub.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    assert!(s(&sub.cmd(&["SSUBSCRIBE", channel]).await).contains("ssubscribe"));
    let mut old = cluster.at(&from).client().await;
    assert_eq!(
        old.cmd(&["ACL", "SETUSER", "default", "-sunsubscribe"])
            .await,
        b"+OK\r\n"
    );
    for leave in [&["SUNSUBSCRIBE", channel][..], &["SUNSUBSCRIBE"]] {
        let denied = s(&sub.cmd(leave).await);
        assert!(denied.starts_with("-NOPERM"), "{denied}");
    }
    assert_eq!(
        old.cmd(&["ACL", "SETUSER", "default", "+sunsubscribe"])
            .await,
        b"+OK\r\n"
    );
    // Still subscribed, and answered in order.
    assert_eq!(sub.cmd(&["PING"]).await, b"+PONG\r\n");
    cluster.assign(slot, &to_id).await;
    followed(&mut publisher, &mut sub, channel, &cluster, &to).await;
}

/// A cluster listener is ready once it has read its cluster's layout, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_listener_is_ready_once_it_has_a_layout() {
    let pki = Pki::new();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}\
         auth.tokens = [{TOKEN:?}]\nupstream.cluster = true\nupstream.nodes = [{nowhere:?}]\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
    ))
    .await;
    let (status, body) = proxy.admin_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let reply = s(&c.cmd(&["GET", "k"]).await);
    assert!(reply.starts_with("-CLUSTERDOWN"), "{reply}");
}

/// Two clients whose commands interleave on the same shared connections to every node (one per
/// node here): each gets its own replies, in its own order, single keys and split ones alike,
/// while a third pipelines writes to the same nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_node_connections_each_get_their_own_replies() {
    let (pki, _cluster, proxy) = three_primaries("upstream.shared_connections = 1\n").await;
    client(&pki, &proxy).await;
    let mut tasks = Vec::new();
    for who in ["a", "b", "c"] {
        let mut c = RawClient::authed(&pki, proxy.addr).await;
        tasks.push(tokio::spawn(async move {
            let keys: Vec<String> = (0..40).map(|i| format!("{who}:{i}")).collect();
            for round in 0..20 {
                let mut wire = Vec::new();
                for k in &keys {
                    wire.extend(encode(&[
                        b"SET",
                        k.as_bytes(),
                        format!("{who}{round}").as_bytes(),
                    ]));
                }
                let mut mget: Vec<&[u8]> = vec![b"MGET"];
                mget.extend(keys.iter().map(|k| k.as_bytes()));
                wire.extend(encode(&mget));
                for k in &keys {
                    wire.extend(encode(&[b"GET", k.as_bytes()]));
                }
                c.send(&wire).await;
                let value = format!("{who}{round}");
                for _ in &keys {
                    assert_eq!(c.read().await, b"+OK\r\n");
                }
                let mut want = format!("*{}\r\n", keys.len());
                for _ in &keys {
                    want.push_str(&bulk(&value));
                }
                assert_eq!(s(&c.read().await), want, "{who}'s MGET");
                for _ in &keys {
                    assert_eq!(s(&c.read().await), bulk(&value), "{who}'s GET");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A command split across nodes is held to `limits.max_reply_bytes` as a whole, as one node's
/// reply is: each part under the limit, their merge over it, is refused with the same error
/// (the parts were merged whatever their total, uncharged to `limits.max_buffered_bytes`, so
/// that one read-only client naming many large keys across slots could make cachegate hold
/// any amount; found by a reviewer). The session goes on, and a smaller split is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_command_is_held_to_the_reply_limit_as_a_whole() {
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&format!(
        "limits.max_reply_bytes = 65536\n{}",
        cluster_toml(&pki, &cluster, "")
    ))
    .await;
    let mut c = client(&pki, &proxy).await;
    // Three keys on three nodes, 30 KB each.
    let mut keys: Vec<String> = Vec::new();
    let mut owners = Vec::new();
    for i in 0.. {
        let k = format!("big{i}");
        let slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", &k]).await) as u16;
        let owner = cluster.owner(slot).await;
        if !owners.contains(&owner) {
            owners.push(owner);
            keys.push(k);
        }
        if keys.len() == 3 {
            break;
        }
    }
    let value = "v".repeat(30_000);
    for k in &keys {
        assert_eq!(c.cmd(&["SET", k, &value]).await, b"+OK\r\n");
    }
    let mut all = vec!["MGET"];
    all.extend(keys.iter().map(String::as_str));
    assert_eq!(
        s(&c.cmd(&all).await),
        "-ERR cachegate: reply from upstream larger than 65536 bytes\r\n"
    );
    let two = s(&c.cmd(&["MGET", &keys[0], &keys[1]]).await);
    assert!(two.starts_with("*2\r\n$30000\r\n"), "{:.40}", two);
    // KEYS, asked of every primary: 90 names of 1,000 bytes, about 30 KB on each node.
    for i in 0..90 {
        let name = format!("long{i:02}-{}", "n".repeat(993));
        assert_eq!(c.cmd(&["SET", &name, "1"]).await, b"+OK\r\n");
    }
    assert_eq!(
        s(&c.cmd(&["KEYS", "long*"]).await),
        "-ERR cachegate: reply from upstream larger than 65536 bytes\r\n"
    );
    let few = s(&c.cmd(&["KEYS", "long0*"]).await);
    assert!(few.starts_with("*10\r\n$1000\r\n"), "{:.40}", few);
}

/// `cachegate keys rewrap` on a cluster listener walks every primary's keys: before
/// 2026-11-30 it walked only the seed node's, said the run was complete, and `keys retire`
/// then left the other shards' values sealed under a retired key (a reviewer lost two thirds
/// of a cluster's encrypted values that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_walks_every_primary_of_a_cluster() {
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.key");
    std::fs::write(&root, "7".repeat(64)).unwrap();
    let config = format!(
        "data_dir = {:?}\n{}encryption.root_key_file = {root:?}\n\
         encryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n",
        dir.path().join("data"),
        cluster_toml(&pki, &cluster, "")
    );
    let proxy = Proxy::start(&config).await;
    let mut c = client(&pki, &proxy).await;
    for i in 0..30 {
        assert_eq!(
            c.cmd(&["SET", &format!("pii:{i}"), "secret"]).await,
            b"+OK\r\n"
        );
    }
    let cli = |args: &'static [&'static str]| {
        let path = proxy.config_path.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
                .arg("keys")
                .arg("--config")
                .arg(&path)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let rotated = cli(&["rotate"]).await.unwrap();
    assert!(rotated.status.success(), "{}", s(&rotated.stderr));
    let out = cli(&["rewrap"]).await.unwrap();
    let said = s(&out.stdout);
    assert!(out.status.success(), "{said}{}", s(&out.stderr));
    assert!(
        said.contains(" values scanned: 30 re-sealed under data key ")
            && said.contains("0 that do not open"),
        "{said}"
    );
    // A slot on its way to another node holds keys a walk of the primaries can miss: the run
    // stops, saying so, and is not recorded complete; once the slot is settled it goes through.
    // Between two nodes neither of which is the seed: each node shows only its own slots on
    // the move (a check of the seed's view alone passed this).
    let seed = cluster.nodes[0].redis.address();
    let mut slot = 0;
    let mut from = String::new();
    for i in 0..30 {
        slot = integer(&c.cmd(&["CLUSTER", "KEYSLOT", &format!("pii:{i}")]).await) as u16;
        from = cluster.owner(slot).await;
        if from != seed {
            break;
        }
    }
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.redis.address())
        .find(|a| *a != seed && *a != from)
        .unwrap();
    let (from_id, to_id) = (cluster.id(&from).await, cluster.id(&to).await);
    let slot = slot.to_string();
    let mut src = cluster.at(&from).redis.direct().await;
    let mut dst = cluster.at(&to).redis.direct().await;
    let importing = ["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id];
    assert_eq!(dst.cmd(&importing).await, b"+OK\r\n");
    let migrating = ["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id];
    assert_eq!(src.cmd(&migrating).await, b"+OK\r\n");
    let out = cli(&["rewrap"]).await.unwrap();
    let said = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("slot {slot} is migrating")),
        "{said}"
    );
    for node in [&mut src, &mut dst] {
        let stable = ["CLUSTER", "SETSLOT", &slot, "STABLE"];
        assert_eq!(node.cmd(&stable).await, b"+OK\r\n");
    }
    let out = cli(&["rewrap"]).await.unwrap();
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
}

/// Redirections go to the members `CLUSTER SHARDS` lists, so no client may change who they
/// are: `CLUSTER MEET` (and every other subcommand that changes the layout) is refused on a
/// cluster listener, and the node it names is never told of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_add_a_member_the_redirections_would_trust() {
    let (pki, cluster, proxy) = three_primaries("").await;
    let mut c = client(&pki, &proxy).await;
    // A node told to meet it would connect to its cluster bus port: here, the trap.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bus = trap.local_addr().unwrap().port().to_string();
    let port = free_port().to_string();
    for call in [
        &["CLUSTER", "MEET", "127.0.0.1", &port, &bus][..],
        &["CLUSTER", "MEET", "127.0.0.1", &bus],
        &["CLUSTER", "FORGET", "x"],
        &["CLUSTER", "SETSLOT", "1", "NODE", "x"],
        &["CLUSTER", "ADDSLOTS", "1"],
        &["CLUSTER", "REPLICATE", "x"],
        &["CLUSTER", "RESET"],
    ] {
        let reply = s(&c.cmd(call).await);
        assert!(reply.starts_with('-'), "{call:?}: {reply}");
    }
    // No node was told to meet it, and no node knows more members than the cluster has
    // (a node told to meet an address counts it at once, in handshake).
    trap.set_nonblocking(true).unwrap();
    assert!(
        trap.accept().is_err(),
        "a node connected to the named address"
    );
    let mut direct = cluster.nodes[0].client().await;
    let info = s(&direct.cmd(&["CLUSTER", "INFO"]).await);
    assert_eq!(
        info_field(&info, "cluster_known_nodes"),
        Some("3"),
        "{info}"
    );
}
