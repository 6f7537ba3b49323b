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

/// A client logged in through the proxy, once the proxy serves the cluster.
async fn client(pki: &Pki, proxy: &Proxy) -> RawClient {
    let mut c = RawClient::authed(pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "ready", "1"]).await, b"+OK\r\n");
    c
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
    let (pki, cluster) = (Pki::new(), RedisCluster::start(3, 0).await);
    let proxy = Proxy::start(&cluster_toml(&pki, &cluster, "")).await;
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
        c.cmd(&["EXISTS", "key:1", "key:2", "key:1", "missing"]).await,
        b":3\r\n"
    );
    assert_eq!(c.cmd(&["TOUCH", "key:3", "key:4", "nope"]).await, b":2\r\n");
    let mut del = vec!["DEL"];
    del.extend(keys[..10].iter().map(String::as_str));
    assert_eq!(c.cmd(&del).await, b":10\r\n");
    assert_eq!(c.cmd(&["UNLINK", "key:10", "key:11", "nope"]).await, b":2\r\n");
    assert_eq!(
        c.cmd(&["MSET", "a", "1", "b", "2", "c", "3"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        s(&c.cmd(&["MGET", "c", "b", "a"]).await),
        format!("*3\r\n{}{}{}", bulk("3"), bulk("2"), bulk("1"))
    );
    assert_eq!(c.cmd(&["DBSIZE"]).await, b":191\r\n");

    // KEYS and SCAN see every node; SCAN's cursor walks them in turn, each key once.
    let mut all = strings(&c.cmd(&["KEYS", "*"]).await);
    all.sort();
    assert_eq!(all.len(), 191);
    let mut scanned = Vec::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let reply = s(&c.cmd(&["SCAN", &cursor, "COUNT", "50"]).await);
        let mut lines = reply.split("\r\n");
        assert_eq!(lines.next(), Some("*2"), "{reply}");
        lines.next();
        cursor = lines.next().unwrap().to_string();
        let rest: Vec<&str> = lines.collect();
        let n: usize = rest[0][1..].parse().unwrap();
        for i in 0..n {
            scanned.push(rest[2 + 2 * i].to_string());
        }
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
        "", "a", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}",
        "{", "}{", "{a}", "\u{e9}t\u{e9}", "key:12345",
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
    assert!(random.starts_with('$') && !random.starts_with("$-1"), "{random}");

    // FLUSHALL reaches every primary.
    assert_eq!(c.cmd(&["FLUSHALL"]).await, b"+OK\r\n");
    for node in &cluster.nodes {
        let mut d = node.redis.direct().await;
        assert_eq!(d.cmd(&["DBSIZE"]).await, b":0\r\n");
    }
    assert_eq!(c.cmd(&["RANDOMKEY"]).await, b"$-1\r\n");
}
