//! memcached listeners over TLS against real memcached nodes: text and meta protocol, noreply,
//! the ketama ring, multi-get merging, node failures, strict parsing and smuggling, policy,
//! and real clients (pymemcache over TLS, libmemcached's placement through pylibmc).

mod common;

use std::time::Duration;

use cachegate::protocol::memcached::Shape;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_commands_round_trip() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set a 7 0 5\r\nhello\r\n").await, "STORED\r\n");
    assert_eq!(c.line("add a 0 0 1\r\nx\r\n").await, "NOT_STORED\r\n");
    assert_eq!(c.line("replace a 7 0 5\r\nHELLO\r\n").await, "STORED\r\n");
    assert_eq!(c.line("append a 0 0 1\r\n!\r\n").await, "STORED\r\n");
    assert_eq!(c.line("prepend a 0 0 1\r\n>\r\n").await, "STORED\r\n");
    assert_eq!(
        c.values("get a\r\n").await,
        "VALUE a 7 7\r\n>HELLO!\r\nEND\r\n"
    );
    let gets = c.values("gets a\r\n").await;
    let cas: u64 = gets.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(
        c.line(&format!("cas a 0 0 1 {}\r\nz\r\n", cas + 1)).await,
        "EXISTS\r\n"
    );
    assert_eq!(
        c.line(&format!("cas a 0 0 1 {cas}\r\nz\r\n")).await,
        "STORED\r\n"
    );
    assert_eq!(c.line("set n 0 0 2\r\n10\r\n").await, "STORED\r\n");
    assert_eq!(c.line("incr n 5\r\n").await, "15\r\n");
    assert_eq!(c.line("decr n 100\r\n").await, "0\r\n");
    assert_eq!(c.line("incr missing 1\r\n").await, "NOT_FOUND\r\n");
    assert_eq!(c.line("touch n 100\r\n").await, "TOUCHED\r\n");
    // memcached space-pads a decremented number that got shorter.
    assert_eq!(
        c.values("gat 100 n a\r\n").await,
        "VALUE n 0 2\r\n0 \r\nVALUE a 0 1\r\nz\r\nEND\r\n"
    );
    assert!(c.values("gats 100 n\r\n").await.starts_with("VALUE n 0 2 "));
    assert_eq!(c.line("delete a\r\n").await, "DELETED\r\n");
    assert_eq!(c.line("delete a\r\n").await, "NOT_FOUND\r\n");
    assert!(c.line("version\r\n").await.starts_with("VERSION 1."));
    assert_eq!(c.line("verbosity 0\r\n").await, "OK\r\n");
    assert_eq!(c.line("flush_all\r\n").await, "OK\r\n");
    assert_eq!(c.values("get n\r\n").await, "END\r\n");
    let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
    assert!(
        stats.contains("STAT nodes 1\r\n") && stats.contains("STAT node_0_state up\r\n"),
        "{stats}"
    );
    c.send(b"quit\r\n").await;
    assert_eq!(c.closed_after().await, Some(Vec::new()));
}

/// noreply replies are swallowed by cachegate, so the stream stays in step whatever happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noreply_keeps_the_stream_in_step() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    let mut wire = String::new();
    for i in 0..50 {
        wire.push_str(&format!("set k{i} 0 0 1 noreply\r\n{}\r\n", i % 10));
    }
    // Failing noreply commands: memcached would send nothing for them either.
    wire.push_str("incr k1 x noreply\r\nset k1 0 0 1 noreply\r\n1\r\n");
    wire.push_str("set word 0 0 3 noreply\r\nabc\r\nincr word 1 noreply\r\n");
    wire.push_str(
        "add k1 0 0 1 noreply\r\nz\r\ndelete nothing noreply\r\ntouch nothing 1 noreply\r\n",
    );
    wire.push_str("get k49 k0\r\n");
    c.send(wire.as_bytes()).await;
    // Nothing for any of them, not even the bad delta (memcached is silent there too).
    assert_eq!(
        s(&c.read(Shape::Values).await),
        "VALUE k49 0 1\r\n9\r\nVALUE k0 0 1\r\n0\r\nEND\r\n"
    );
    assert_eq!(c.line("get k1\r\n").await, "VALUE k1 0 1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_commands_round_trip() {
    let (pki, a, b) = (
        Pki::new(),
        Memcached::start().await,
        Memcached::start().await,
    );
    let proxy = Proxy::memcached(&pki, &[&a, &b], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        s(&c.request(b"ms foo 3 T0 F5\r\nbar\r\n", Shape::Meta).await),
        "HD\r\n"
    );
    assert_eq!(
        s(&c.request(b"mg foo v f k O42\r\n", Shape::Meta).await),
        "VA 3 f5 kfoo O42\r\nbar\r\n"
    );
    // base64 keys route by their decoded bytes: the same item as "foo".
    assert_eq!(
        s(&c.request(b"mg Zm9v b v\r\n", Shape::Meta).await),
        "VA 3\r\nbar\r\n"
    );
    assert_eq!(
        s(&c.request(b"mg nothing v\r\n", Shape::Meta).await),
        "EN\r\n"
    );
    assert_eq!(
        s(&c.request(b"ma cnt N0 J7 v\r\n", Shape::Meta).await),
        "VA 1\r\n7\r\n"
    );
    assert_eq!(
        s(&c.request(b"ma cnt v\r\n", Shape::Meta).await),
        "VA 1\r\n8\r\n"
    );
    // Quiet mode: misses and successes are silent, mn marks the end.
    c.send(b"mg nothing v q\r\nms foo 1 q\r\nx\r\nmg foo v q k\r\nmd foo q\r\nmd foo q\r\nmn\r\n")
        .await;
    assert_eq!(s(&c.read(Shape::Meta).await), "VA 1 kfoo\r\nx\r\n");
    assert_eq!(s(&c.read(Shape::Meta).await), "NF\r\n");
    assert_eq!(s(&c.read(Shape::Line).await), "MN\r\n");
    assert_eq!(
        s(&c.request(b"mg foo 1x\r\n", Shape::Line).await),
        "CLIENT_ERROR invalid flag\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_get_spans_nodes_and_keeps_the_clients_order() {
    let pki = Pki::new();
    let nodes = [
        Memcached::start().await,
        Memcached::start().await,
        Memcached::start().await,
    ];
    let proxy = Proxy::memcached(&pki, &[&nodes[0], &nodes[1], &nodes[2]], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    for i in 0..60 {
        assert_eq!(
            c.line(&format!(
                "set key{i} {i} 0 {}\r\nvalue{i}\r\n",
                5 + i.to_string().len()
            ))
            .await,
            "STORED\r\n"
        );
    }
    for n in &nodes {
        let mut held = 0;
        for i in 0..60 {
            held += usize::from(n.holds(&format!("key{i}")).await);
        }
        assert!(held > 5, "keys are spread over every node ({held})");
    }
    let order = [59, 3, 17, 3, 42, 0, 1000, 28];
    let keys: Vec<String> = order.iter().map(|i| format!("key{i}")).collect();
    let reply = c.values(&format!("get {}\r\n", keys.join(" "))).await;
    let mut want = String::new();
    for i in order.iter().filter(|&&i| i < 60) {
        want.push_str(&format!(
            "VALUE key{i} {i} {}\r\nvalue{i}\r\n",
            5 + i.to_string().len()
        ));
    }
    want.push_str("END\r\n");
    assert_eq!(reply, want);
}

/// libmemcached (pylibmc, ketama_weighted) stores keys straight on the nodes; cachegate, asking
/// only the node its ring picks, finds every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_places_keys_where_libmemcached_does() {
    let pki = Pki::new();
    let nodes = [
        Memcached::start().await,
        Memcached::start().await,
        Memcached::start().await,
    ];
    let addrs: Vec<String> = nodes.iter().map(|n| n.address()).collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/pylibmc_place.py"
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args(&addrs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    let proxy = Proxy::memcached(&pki, &[&nodes[0], &nodes[1], &nodes[2]], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    for i in 0..200 {
        let reply = c.values(&format!("get ring:{i}\r\n")).await;
        let v = format!("v{i}");
        assert!(
            reply.contains(&format!("\r\n{v}\r\n")),
            "ring:{i} not found where libmemcached put it: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_node_fails_only_its_keys() {
    let pki = Pki::new();
    let (a, mut b) = (Memcached::start().await, Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&a, &b], "").await;
    let strict = Proxy::memcached(&pki, &[&a, &b], "memcached.on_node_down = \"error\"\n").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..40 {
        let key = format!("k{i}");
        assert_eq!(
            c.line(&format!("set {key} 0 0 1\r\nx\r\n")).await,
            "STORED\r\n"
        );
        if a.holds(&key).await {
            on_a.push(key)
        } else {
            on_b.push(key)
        }
    }
    assert!(!on_a.is_empty() && !on_b.is_empty());
    b.kill();
    // miss mode: b's keys are simply missing; a's are there.
    let reply = c.values(&format!("get {} {}\r\n", on_b[0], on_a[0])).await;
    assert_eq!(reply, format!("VALUE {} 0 1\r\nx\r\nEND\r\n", on_a[0]));
    let set_b = c.line(&format!("set {} 0 0 1\r\ny\r\n", on_b[0])).await;
    assert!(set_b.starts_with("SERVER_ERROR cachegate:"), "{set_b}");
    assert_eq!(
        c.line(&format!("set {} 0 0 1\r\ny\r\n", on_a[0])).await,
        "STORED\r\n"
    );
    assert_eq!(
        s(
            &c.request(format!("mg {} v\r\n", on_b[1]).as_bytes(), Shape::Meta)
                .await
        ),
        "EN\r\n"
    );
    // error mode: a multi-get touching the dead node is an error.
    let mut e = McClient::tls(&pki, strict.addr).await;
    let reply = e.values(&format!("get {} {}\r\n", on_a[0], on_b[0])).await;
    assert!(
        reply.starts_with("SERVER_ERROR cachegate: node "),
        "{reply}"
    );
    // The node comes back: served again without restarting cachegate.
    b.restart().await;
    let mut ok = false;
    for _ in 0..100 {
        if c.line(&format!("set {} 0 0 1\r\nz\r\n", on_b[0])).await == "STORED\r\n" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the node is used again once it is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_times_out_without_stalling_the_others() {
    let pki = Pki::new();
    let (a, b) = (Memcached::start().await, Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&a, &b], "upstream.request_timeout = \"300ms\"\n").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    let (mut on_a, mut on_b) = (None, None);
    for i in 0..40 {
        let key = format!("h{i}");
        c.line(&format!("set {key} 0 0 1\r\nx\r\n")).await;
        if a.holds(&key).await {
            on_a.get_or_insert(key);
        } else {
            on_b.get_or_insert(key);
        }
    }
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    b.pause(true);
    let reply = c.line(&format!("set {on_b} 0 0 1\r\ny\r\n")).await;
    assert!(
        reply.starts_with("SERVER_ERROR cachegate: upstream read timed out after 300ms"),
        "{reply}"
    );
    assert_eq!(
        c.line(&format!("set {on_a} 0 0 1\r\ny\r\n")).await,
        "STORED\r\n"
    );
    b.pause(false);
    // The late reply to the abandoned request reaches nobody: the next answer is the right one.
    // The node has run the abandoned set (and sent its late reply) once it holds `y`.
    let mut direct = b.direct().await;
    let mut ran = false;
    for _ in 0..200 {
        if direct
            .values(&format!("get {on_b}\r\n"))
            .await
            .contains("\r\ny\r\n")
        {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ran, "the node runs the abandoned set once resumed");
    let mut got = String::new();
    for _ in 0..50 {
        got = c.values(&format!("get {on_b}\r\n")).await;
        if got.starts_with("VALUE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got.starts_with(&format!("VALUE {on_b} 0 1\r\n")), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_node_is_ejected_after_n_failures() {
    let pki = Pki::new();
    let (a, mut b) = (Memcached::start().await, Memcached::start().await);
    let proxy = Proxy::memcached(
        &pki,
        &[&a, &b],
        "memcached.eject_after = 2\nmemcached.eject_for = \"1h\"\n",
    )
    .await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    let mut on_b = None;
    for i in 0..40 {
        let key = format!("e{i}");
        c.line(&format!("set {key} 0 0 1\r\nx\r\n")).await;
        if b.holds(&key).await {
            on_b = Some(key);
            break;
        }
    }
    let on_b = on_b.unwrap();
    b.kill();
    for _ in 0..2 {
        assert!(c
            .line(&format!("set {on_b} 0 0 1\r\ny\r\n"))
            .await
            .starts_with("SERVER_ERROR"));
    }
    // Ejected: the key now lives on the remaining node.
    assert_eq!(
        c.line(&format!("set {on_b} 0 0 1\r\ny\r\n")).await,
        "STORED\r\n"
    );
    assert!(a.holds(&on_b).await);
    let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
    assert!(stats.contains("STAT node_1_state ejected"), "{stats}");
}

/// The reported smuggling: memcached refuses some storage and `ms` lines without swallowing
/// their data block, which then runs as a command (`ms <268-char base64 key> 9 b` followed by
/// `flush_all` flushed the node past `commands.disable`). cachegate frames the client's stream
/// exactly as memcached does, so such a block is read by cachegate as the next command and
/// judged by its policy, never forwarded as data the node would run: `cmd_flush` stays 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_blocks_are_never_smuggled_as_commands() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "commands.disable = [\"flush_all\"]\n").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set keep 0 0 1\r\nk\r\n").await, "STORED\r\n");
    let long_key = "k".repeat(251);
    let b64_key = "a2tr".repeat(67);
    let forty_flags = vec!["T0"; 40].join(" ");
    for (line, first) in [
        (
            format!("set {long_key} 0 0 9"),
            "CLIENT_ERROR bad command line format",
        ),
        (
            "set ok x 0 9".to_string(),
            "CLIENT_ERROR bad command line format",
        ),
        ("set ok 0 0 9 extra more".to_string(), "ERROR"),
        (
            format!("ms {b64_key} 9 b"),
            "CLIENT_ERROR bad command line format",
        ),
        (
            format!("ms k 9 {forty_flags}"),
            "CLIENT_ERROR options flags too long",
        ),
        (
            "ms k abc".to_string(),
            "CLIENT_ERROR bad command line format",
        ),
    ] {
        // The refusal, then the block read as a command: the disabled flush_all.
        let reply = c
            .read_until_after(format!("{line}\r\nflush_all\r\n").as_bytes(), b"ERROR\r\n")
            .await;
        let want = if first == "ERROR" {
            "ERROR\r\n".to_string()
        } else {
            format!("{first}\r\nERROR\r\n")
        };
        if first == "ERROR" {
            assert_eq!(s(&reply), want, "{line:.40}");
            assert_eq!(
                c.line("").await,
                "ERROR\r\n",
                "{line:.40}: then flush_all, refused"
            );
        } else {
            assert_eq!(s(&reply), want, "{line:.40}");
        }
    }
    // A value over the limit is discarded as it streams, with memcached's own error.
    let payload = "flush_all\r\n".repeat(200_000);
    let big = format!("set big 0 0 {}\r\n{payload}\r\n", payload.len());
    assert_eq!(
        c.line(&big).await,
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(
        c.values("get keep\r\n").await,
        "VALUE keep 0 1\r\nk\r\nEND\r\n"
    );
    // A data block not ended by \r\n: consumed, answered, and what follows is read on.
    let reply = c
        .read_until_after(b"set k 0 0 3\r\nabcflush_all\r\n", b"ERROR\r\n")
        .await;
    assert!(
        s(&reply).starts_with("CLIENT_ERROR bad data chunk\r\n"),
        "{}",
        s(&reply)
    );
    assert_eq!(node.stat("cmd_flush").await, 0);
    assert!(node.holds("keep").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_disables_and_renames_memcached_commands() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let extra = "commands.disable = [\"flush_all\", \"me\"]\ncommands.rename = { delete = \"remove_7f\" }\n";
    let proxy = Proxy::memcached(&pki, &[&node], extra).await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
    assert_eq!(c.line("flush_all\r\n").await, "ERROR\r\n");
    assert_eq!(c.line("flush_all noreply\r\n").await, "ERROR\r\n");
    assert_eq!(c.line("me k\r\n").await, "ERROR\r\n");
    assert_eq!(c.line("delete k\r\n").await, "ERROR\r\n");
    assert_eq!(c.line("remove_7f k\r\n").await, "DELETED\r\n");
    for admin in [
        "stats cachedump 1 1",
        "lru_crawler metadump all",
        "watch",
        "shutdown",
        "slabs automove 1",
        "cache_memlimit 10",
        "debugtime 1",
    ] {
        assert_eq!(
            c.line(&format!("{admin}\r\n")).await,
            "ERROR\r\n",
            "{admin}"
        );
    }
    assert_eq!(node.stat("cmd_flush").await, 0);
    assert_eq!(
        c.line("set k 0 0 1\r\nv\r\n").await,
        "STORED\r\n",
        "still usable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_keys_lines_and_key_lists() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(
        &pki,
        &[&node],
        "memcached.max_keys = 3\nmemcached.max_value_bytes = 100\n",
    )
    .await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.line(&format!("get {}\r\n", "k".repeat(251))).await,
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        c.values(&format!("get {}\r\n", "k".repeat(250))).await,
        "END\r\n"
    );
    assert_eq!(
        c.line("get a b c d\r\n").await,
        "CLIENT_ERROR too many keys\r\n"
    );
    assert_eq!(
        c.line(&format!("set v 0 0 101\r\n{}\r\n", "x".repeat(101)))
            .await,
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(
        c.line(&format!("set v 0 0 100\r\n{}\r\n", "x".repeat(100)))
            .await,
        "STORED\r\n"
    );
    c.send(format!("get {}", "k ".repeat(40_000)).as_bytes())
        .await;
    assert_eq!(
        c.closed_after().await.as_deref(),
        Some(&b"CLIENT_ERROR line too long\r\n"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymemcache_over_tls_works_unchanged() {
    let (pki, a, b) = (
        Pki::new(),
        Memcached::start().await,
        Memcached::start().await,
    );
    let proxy = Proxy::memcached(&pki, &[&a, &b], "commands.disable = [\"flush_all\"]\n").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/pymemcache_tls.py"
    );
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(proxy.addr.port().to_string())
        .arg(&pki.ca);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success() && s(&out.stdout).contains("pymemcache ok"),
        "stdout: {}\nstderr: {}",
        s(&out.stdout),
        s(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_memcached_listeners_in_one_process() {
    let (pki, node, redis) = (Pki::new(), Memcached::start().await, Redis::start().await);
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{tls}auth.tokens = [{TOKEN:?}]\nupstream.address = {:?}\n\
         [[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{tls}upstream.nodes = [{:?}]\n",
        redis.address(),
        node.address(),
        tls = pki.tls_toml(),
    ))
    .await;
    let mut r = RawClient::authed(&pki, proxy.addrs[0]).await;
    assert_eq!(r.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut m = McClient::tls(&pki, proxy.addrs[1]).await;
    assert_eq!(m.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_dying_mid_request_fails_that_request_at_once() {
    let (pki, mut node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "upstream.request_timeout = \"30s\"\n").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
    node.pause(true);
    c.send(b"get k\r\n").await;
    // The request has reached the paused node.
    assert!(node.until_unread().await);
    node.kill();
    // Not the 30 s timeout: the closed connection fails the request now, and no partial
    // reply is forwarded (miss mode: an empty result).
    let reply = tokio::time::timeout(Duration::from_secs(5), c.read(Shape::Values))
        .await
        .expect("answered as soon as the node died");
    assert_eq!(s(&reply), "END\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_memcached_nodes() {
    let pki = Pki::new();
    let (a, b) = (
        Memcached::start_tls(&pki).await,
        Memcached::start_tls(&pki).await,
    );
    let extra = format!(
        "upstream.tls.ca = {:?}\nupstream.tls.server_name = \"localhost\"\n",
        pki.ca
    );
    let proxy = Proxy::memcached(&pki, &[&a, &b], &extra).await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    for i in 0..20 {
        assert_eq!(
            c.line(&format!("set t{i} 0 0 1\r\nv\r\n")).await,
            "STORED\r\n"
        );
    }
    let reply = c.values("get t0 t1 t2 t3\r\n").await;
    assert_eq!(reply.matches("VALUE").count(), 4, "{reply}");
    // Without the CA, the nodes cannot be verified: errors, not plaintext.
    let other = Pki::new();
    let extra = format!(
        "upstream.tls.ca = {:?}\nupstream.tls.server_name = \"localhost\"\n",
        other.ca
    );
    let bad = Proxy::memcached(&pki, &[&a], &extra).await;
    let mut c = McClient::tls(&pki, bad.addr).await;
    let reply = c.line("set x 0 0 1\r\nv\r\n").await;
    assert!(reply.starts_with("SERVER_ERROR cachegate:"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_listener_can_require_client_certificates() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let extra = format!(
        "tls.client_auth = \"required\"\ntls.client_ca = {:?}\n",
        pki.ca
    );
    let proxy = Proxy::memcached(&pki, &[&node], &extra).await;
    let mut anonymous = McClient::tls(&pki, proxy.addr).await;
    anonymous.send(b"version\r\n").await;
    assert_eq!(
        anonymous.closed_after().await,
        Some(Vec::new()),
        "no reply without a certificate"
    );
    let config = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = McClient::new(Box::new(tls));
    assert!(c.line("version\r\n").await.starts_with("VERSION "));
}

/// The process-wide buffer bound holds on memcached listeners too: replies that would take
/// the process past `limits.max_buffered_bytes` are refused with a clear error (never taken
/// for a miss), and others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_buffer_bound_holds() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::start(&format!(
        "limits.max_buffered_bytes = 1000000\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        node.address()
    ))
    .await;
    let mut direct = node.direct().await;
    let value = "v".repeat(900_000);
    for key in ["a", "b", "c"] {
        let set = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        assert_eq!(direct.line(&set).await, "STORED\r\n");
    }
    let mut c = McClient::tls(&pki, proxy.addr).await;
    let reply = c.line("get a b c\r\n").await.into_bytes();
    assert!(
        s(&reply).starts_with("SERVER_ERROR cachegate:")
            && s(&reply).contains("limits.max_buffered_bytes"),
        "{:.100}",
        s(&reply)
    );
    let mut d = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(d.line("set small 0 0 1\r\nx\r\n").await, "STORED\r\n");
    assert!(d.values("get a\r\n").await.len() > 900_000);
}

/// `limits.max_request_bytes` caps a memcached client's unparsed input as it caps a Redis
/// client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsed_input_is_capped_by_max_request_bytes() {
    let pki = Pki::new();
    let node = Memcached::start().await;
    let proxy = Proxy::start(&format!(
        "[limits]\nmax_request_bytes = 4096\n\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        node.address()
    ))
    .await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set small 0 0 5\r\nhello\r\n").await, "STORED\r\n");
    // Complete requests are no unparsed input: a pipeline of 8 KiB of small sets runs.
    let pipeline: String = (0..300)
        .map(|i| format!("set pipelined:{i:04} 0 0 5\r\nhello\r\n"))
        .collect();
    assert!(pipeline.len() > 8192);
    let replies = c
        .read_until_after(pipeline.as_bytes(), &b"STORED\r\n".repeat(300))
        .await;
    assert_eq!(replies, b"STORED\r\n".repeat(300));
    c.send(b"set big 0 0 100000\r\n").await;
    c.send(&[b'x'; 8192]).await;
    let said = c.closed_after().await.expect("closed");
    assert!(
        s(&said)
            .starts_with("SERVER_ERROR cachegate: request larger than limits.max_request_bytes"),
        "{}",
        s(&said)
    );
    assert!(!node.holds("big").await);
}

/// Waits until cachegate's `stats` shows this verdict on the first node's meta commands.
async fn meta_verdict(c: &mut McClient, want: &str) -> bool {
    let line = format!("STAT node_0_meta {want}\r\n");
    for _ in 0..200 {
        if s(&c.read_until_after(b"stats\r\n", b"END\r\n").await).contains(&line) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One-key gets go to a node that knows meta commands as meta gets (memcached writes each
/// classic get's reply with a `sendmsg` of its own, but a pipeline of meta replies with one),
/// and come back byte for byte as memcached answers the classic get, counted alike in the
/// node's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_gets_answer_and_count_as_memcached_does() {
    let pki = Pki::new();
    let (direct, behind) = (Memcached::start().await, Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&behind], "").await;
    let (mut ours, mut theirs) = (McClient::tls(&pki, proxy.addr).await, direct.direct().await);
    // cachegate asks the node about meta commands on its first get.
    assert_eq!(ours.values("get warm\r\n").await, "END\r\n");
    assert_eq!(theirs.values("get warm\r\n").await, "END\r\n");
    assert!(
        meta_verdict(&mut ours, "yes").await,
        "memcached 1.6 answers meta commands"
    );
    // A block holding what reads like the end of a reply; a key set in base64 ("kkk").
    let tricky = "x\r\nEND\r\nVALUE y 0 1";
    let setup = [
        "set zero 0 0 0\r\n\r\n".to_string(),
        "set max 4294967295 0 3\r\nabc\r\n".into(),
        format!("set tricky 5 0 {}\r\n{tricky}\r\n", tricky.len()),
        "ms a2tr 1 b F7\r\nx\r\n".into(),
        "set gone 0 -1 1\r\nx\r\n".into(),
    ];
    for line in &setup {
        assert_eq!(ours.line(line).await, theirs.line(line).await, "{line}");
    }
    let mut reads: Vec<String> = Vec::new();
    for key in ["zero", "max", "tricky", "kkk", "gone", "missing"] {
        reads.push(format!("get {key}\r\n"));
        reads.push(format!("gets {key}\r\n"));
    }
    for read in &reads {
        let mine = ours.values(read).await;
        assert_eq!(mine, theirs.values(read).await, "{read}");
    }
    // Pipelined, and after a flush.
    let pipeline = "get max\r\nget missing\r\ngets tricky\r\nget zero\r\n";
    for client in [&mut ours, &mut theirs] {
        client.send(pipeline.as_bytes()).await;
    }
    for _ in 0..4 {
        assert_eq!(
            ours.read(Shape::Values).await,
            theirs.read(Shape::Values).await
        );
    }
    assert_eq!(
        ours.line("flush_all\r\n").await,
        theirs.line("flush_all\r\n").await
    );
    assert_eq!(ours.values("get max\r\n").await, "END\r\n");
    assert_eq!(theirs.values("get max\r\n").await, "END\r\n");
    // Not `get_flushed`: whether a flushed item counts there depends on the second it was
    // set in, relative to the flush (it differs between two memcached nodes driven alike).
    // Nor `get_expired`: an expired item the node's LRU maintainer has already reaped is a
    // plain miss (seen under load); `get_misses` counts it either way.
    for stat in ["cmd_get", "get_hits", "get_misses"] {
        assert_eq!(behind.stat(stat).await, direct.stat(stat).await, "{stat}");
    }
    assert!(behind.stat("get_hits").await >= 9);
}

/// A node that answers `mn` with `ERROR` (memcached before 1.6) gets every get as the client
/// sent it; one that answers `MN` gets one-key gets as `mg <key> v f [c]`, and multi-key gets
/// as they came. No real memcached at hand lacks meta commands, hence the fake node: it answers
/// these few commands and records every line it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_go_as_meta_gets_only_to_a_node_that_answers_them() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    async fn fake_node(meta: Arc<AtomicBool>) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, meta) = (log.clone(), meta.clone());
                tokio::spawn(async move {
                    let (r, mut w) = tcp.into_split();
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        log.lock().unwrap().push(line.clone());
                        let reply = match (line.as_str(), meta.load(Ordering::Relaxed)) {
                            ("version", _) => "VERSION 1.4.39\r\n",
                            ("mn", true) => "MN\r\n",
                            ("mg k v f", true) => "VA 2 f3\r\nhi\r\n",
                            ("mg k v f c", true) => "VA 2 f3 c9\r\nhi\r\n",
                            ("get k", _) => "VALUE k 3 2\r\nhi\r\nEND\r\n",
                            ("gets k", _) => "VALUE k 3 2 9\r\nhi\r\nEND\r\n",
                            ("get k z", _) => "VALUE k 3 2\r\nhi\r\nEND\r\n",
                            _ => "ERROR\r\n",
                        };
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }
    let pki = Pki::new();
    // (the node has meta commands, the listener's extra configuration)
    let off = "memcached.meta_gets = false\n";
    for (meta, extra) in [(false, ""), (true, ""), (true, off)] {
        let speaks = Arc::new(AtomicBool::new(meta));
        let (addr, seen) = fake_node(speaks.clone()).await;
        let proxy = Proxy::start(&format!(
            "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [\"{addr}\"]\nupstream.health_interval = \"1h\"\nupstream.shared_connections = 1\n{extra}",
            pki.tls_toml()
        ))
        .await;
        let translated = meta && extra.is_empty();
        let mut c = McClient::tls(&pki, proxy.addr).await;
        // The first get asks the node.
        assert_eq!(c.values("get k\r\n").await, "VALUE k 3 2\r\nhi\r\nEND\r\n");
        // Switched off, the node is never asked.
        let want = match (meta, extra.is_empty()) {
            (_, false) => "unknown",
            (true, true) => "yes",
            (false, true) => "no",
        };
        assert!(
            meta_verdict(&mut c, want).await,
            "the probe's verdict: {want}"
        );
        seen.lock().unwrap().clear();
        assert_eq!(c.values("get k\r\n").await, "VALUE k 3 2\r\nhi\r\nEND\r\n");
        assert_eq!(
            c.values("gets k\r\n").await,
            "VALUE k 3 2 9\r\nhi\r\nEND\r\n"
        );
        assert_eq!(
            c.values("get k z\r\n").await,
            "VALUE k 3 2\r\nhi\r\nEND\r\n"
        );
        let seen: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.as_str() != "version")
            .cloned()
            .collect();
        let expected = if translated {
            ["mg k v f", "mg k v f c", "get k z"]
        } else {
            ["get k", "gets k", "get k z"]
        };
        assert_eq!(seen, expected, "meta: {meta}, {extra}");
        let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
        let on = if extra.is_empty() { "on" } else { "off" };
        assert!(
            stats.contains(&format!("STAT meta_gets {on}\r\n")),
            "{stats}"
        );
        if translated {
            // Replaced by a server without meta commands: one get fails, saying so, and the
            // next ones go as they came.
            // The other client on the same (one) shared connection meanwhile gets its own
            // reply, whole.
            speaks.store(false, Ordering::Relaxed);
            let mut other = McClient::tls(&pki, proxy.addr).await;
            let (failed, theirs) = tokio::join!(c.values("get k\r\n"), other.values("get k z\r\n"));
            assert_eq!(theirs, "VALUE k 3 2\r\nhi\r\nEND\r\n");
            assert!(
                failed.starts_with("SERVER_ERROR cachegate: node ")
                    && failed.contains("does not answer meta gets as memcached does"),
                "{failed}"
            );
            assert_eq!(c.values("get k\r\n").await, "VALUE k 3 2\r\nhi\r\nEND\r\n");
            let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
            assert!(stats.contains("STAT node_0_meta no\r\n"), "{stats}");
        }
    }
}

/// A stale item's first meta get wins the token to refresh it (`W`); a classic get never takes
/// it. Once a client marks items stale (`md`/`ms` with `I`), one-key gets go as they came, so a
/// classic client's get through cachegate leaves the token to the meta client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_get_never_takes_a_stale_items_win_token() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("ms k 2 T300\r\nhi\r\n").await, "HD\r\n");
    assert_eq!(c.values("get k\r\n").await, "VALUE k 0 2\r\nhi\r\nEND\r\n");
    assert!(meta_verdict(&mut c, "yes").await);
    let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
    assert!(stats.contains("STAT meta_gets on\r\n"), "{stats}");
    assert_eq!(c.line("md k I T30\r\n").await, "HD\r\n");
    assert_eq!(c.values("get k\r\n").await, "VALUE k 0 2\r\nhi\r\nEND\r\n");
    // The meta client, on the node itself, still wins the token.
    let mut meta = node.direct().await;
    let won = s(&meta.request(b"mg k v\r\n", Shape::Meta).await);
    assert!(won.starts_with("VA 2 ") && won.contains(" W"), "{won}");
    let stats = s(&c.read_until_after(b"stats\r\n", b"END\r\n").await);
    assert!(stats.contains("STAT meta_gets off\r\n"), "{stats}");
}

/// With `upstream.multiplex = false` each session has connections of its own to the nodes: the
/// same answers, and a node that fails fails only its requests, counted by cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_their_own_node_connections() {
    let (pki, mut node) = (Pki::new(), Memcached::start().await);
    let extra = "upstream.multiplex = false\n\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let proxy = Proxy::memcached(&pki, &[&node], extra).await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
    assert_eq!(c.values("get k\r\n").await, "VALUE k 0 1\r\nv\r\nEND\r\n");
    assert_eq!(
        c.values("get k k\r\n").await,
        "VALUE k 0 1\r\nv\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
    );
    node.kill();
    // A read misses (on_node_down = "miss"), a write gets SERVER_ERROR.
    assert_eq!(c.values("get k\r\n").await, "END\r\n");
    let set = c.line("set k 0 0 1\r\nw\r\n").await;
    assert!(set.starts_with("SERVER_ERROR cachegate: "), "{set}");
    let metrics = proxy.admin_get("/metrics").await.1;
    let failed: f64 = ["lost", "unavailable"]
        .iter()
        .map(|cause| {
            metric(
                &metrics,
                &format!(
                    "cachegate_request_failures_total{{listener=\"memcached-0\",reason=\"{cause}\"}}"
                ),
            )
        })
        .sum();
    assert!(failed >= 2.0, "{metrics}");
    // A session memcached would close (here an HTTP request) is counted as the client's.
    let mut web = McClient::tls(&pki, proxy.addr).await;
    web.send(b"GET / HTTP/1.1\r\n").await;
    assert_eq!(web.closed_after().await, Some(Vec::new()));
    let ended = "cachegate_session_errors_total{listener=\"memcached-0\",blame=\"client\",cause=\"protocol\"}";
    let counted = || async { metric(&proxy.admin_get("/metrics").await.1, ended) == 1.0 };
    assert!(eventually(counted).await);
}

/// A key given in base64 (meta `b`) that decodes to bytes memcached cannot print in a line is
/// refused, by every meta command: memcached prints a key it did not store as binary as it is
/// (`me`, and `mg`/`ma` with `k`, after `ma ... b N` made the item), so a decoded `\r\n` ended
/// the reply early and the rest was read as the next reply on the shared connection, another
/// client's (found by reviewers, `me` first, then `mg ... k`). What follows in the pipeline is
/// answered as memcached answers it, and another client reading meanwhile gets only its own
/// values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_key_cannot_split_a_reply_on_the_shared_connection() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.line("set secretA 0 0 6\r\nalpha1\r\n").await,
        "STORED\r\n"
    );
    assert_eq!(
        c.line("set secretB 0 0 6\r\nbravo2\r\n").await,
        "STORED\r\n"
    );
    let mut other = McClient::tls(&pki, proxy.addr).await;
    let reader = tokio::spawn(async move {
        for _ in 0..200 {
            assert_eq!(other.line("mg secretB v\r\n").await, "VA 6\r\n");
            assert_eq!(other.line("").await, "bravo2\r\n", "another client's value");
        }
    });
    // "q\r\nEN", in base64; then a key that decodes to a space.
    let wire = "ma cQ0KRU4= b N0 J5\r\nmg cQ0KRU4= b k v\r\nme cQ0KRU4= b\r\nme IA== b\r\n\
                mg secretA v\r\nget secretB\r\n";
    for _ in 0..20 {
        let got = s(&c.read_until_after(wire.as_bytes(), b"END\r\n").await);
        assert_eq!(
            got,
            "CLIENT_ERROR invalid or duplicate flag\r\nCLIENT_ERROR error decoding key\r\n\
             CLIENT_ERROR bad command line format\r\nCLIENT_ERROR bad command line format\r\n\
             VA 6\r\nalpha1\r\nVALUE secretB 0 6\r\nbravo2\r\nEND\r\n"
        );
    }
    reader.await.unwrap();
    // A printable binary key is still served.
    assert_eq!(c.line("ma a2V5 b N0 J5\r\n").await, "HD\r\n");
    let me = c.line("me a2V5 b\r\n").await;
    assert!(me.starts_with("ME key "), "{me}");
}

/// A line the client kept within memcached's 2,048-byte line limit but that would be
/// forwarded longer (a bare `\n` gets its `\r`) is never sent: memcached closes a connection
/// whose line straddles two of its reads past the limit, failing every client's requests on
/// it. The client's connection is closed instead, as memcached would close it; one byte
/// shorter is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_forwarded_past_memcacheds_limit_is_never_sent() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    // `mg <key> v T0..030`, `len` bytes before a bare newline (a miss: `EN`).
    let line = |len: usize| {
        let head = format!("mg {} v T", "k".repeat(200));
        let pad = len - head.len() - 2;
        format!("{head}{}30\n", "0".repeat(pad))
    };
    assert_eq!(line(2047).len(), 2048);
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line(&line(2047)).await, "EN\r\n");
    c.send(line(2048).as_bytes()).await;
    assert_eq!(c.closed_after().await.map(|b| s(&b)), Some(String::new()));
    // The node's connection was never broken: another client is served as before.
    let mut other = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(other.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
}

/// Three clients beside the one under test on the same shared node connection, each reading
/// `small` (its value `s`) ten times with `get` and `mg`: any reply of another client's that
/// reached them would show.
async fn small_readers(pki: &Pki, addr: std::net::SocketAddr) -> Bystanders {
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(McClient::tls(pki, addr).await);
    }
    Bystanders::start(others, |mut c: McClient| async move {
        c.send("get small\r\nmg small v\r\n".repeat(10).as_bytes())
            .await;
        let mut got = String::new();
        for _ in 0..10 {
            got += &s(&c.read_until(b"VA 1\r\ns\r\n").await);
        }
        let want = "VALUE small 0 1\r\ns\r\nEND\r\nVA 1\r\ns\r\n".repeat(10);
        assert_eq!(got, want, "another client's reply");
        c
    })
}

/// A reply over `limits.max_reply_bytes` on a shared node connection fails only the request
/// it answers, as a Redis reply does: it is read and dropped as it arrives (value blocks are
/// never held whole), and the connection goes on for every other client's requests on it. It
/// used to fail the node's connection and every request on it, counting against the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_fails_only_its_own_request() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::start(&format!(
        "limits.max_reply_bytes = 65536\n[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\n\
         protocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\n\
         upstream.shared_connections = 1\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        node.address()
    ))
    .await;
    let mut direct = node.direct().await;
    let big = "x".repeat(300_000);
    let set = format!("set big 0 0 {}\r\n{big}\r\n", big.len());
    assert_eq!(direct.line(&set).await, "STORED\r\n");
    assert_eq!(direct.line("set small 0 0 1\r\ns\r\n").await, "STORED\r\n");
    let bystanders = small_readers(&pki, proxy.addr).await;
    let mut greedy = McClient::tls(&pki, proxy.addr).await;
    // (Gets name the node whose reply it was.)
    let too_large = |reply: String| {
        assert!(
            reply.starts_with("SERVER_ERROR cachegate: ")
                && reply.ends_with("reply from upstream larger than 65536 bytes\r\n"),
            "{reply:.200}"
        );
    };
    for _ in 0..10 {
        too_large(greedy.line("get big\r\n").await);
        too_large(greedy.line("mg big v\r\n").await);
        too_large(greedy.line("gets small big\r\n").await);
    }
    assert_eq!(
        greedy.values("get small\r\n").await,
        "VALUE small 0 1\r\ns\r\nEND\r\n"
    );
    bystanders.stop().await;
    // One node connection all along, never failed.
    let text = proxy.admin_get("/metrics").await.1;
    for reason in ["malformed", "lost", "timeout", "unavailable"] {
        assert!(!text.contains(&format!("reason=\"{reason}\"")), "{text}");
    }
    let counted = "cachegate_request_failures_total{listener=\"memcached-0\",reason=\"too_large\"}";
    assert_eq!(metric(&text, counted), 30.0, "{text}");

    // On a session's own node connections too: cachegate's limit, not the node's failure,
    // so never a miss and never an ejection (it was both: `END` for a key that exists, and
    // with `eject_after` the node left the ring).
    let own = Proxy::start(&format!(
        "limits.max_reply_bytes = 65536\n[[listeners]]\nprotocol = \"memcached\"\n\
         bind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.multiplex = false\n\
         memcached.eject_after = 2\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        node.address()
    ))
    .await;
    let mut c = McClient::tls(&pki, own.addr).await;
    for _ in 0..4 {
        too_large(c.line("get big\r\n").await);
        too_large(c.line("get small big\r\n").await);
    }
    assert_eq!(
        c.values("get small\r\n").await,
        "VALUE small 0 1\r\ns\r\nEND\r\n"
    );
}

/// A value over `limits.max_reply_bytes` whose bytes look like replies (`END`, another key's
/// `VALUE`, a meta `VA`) is passed over by its announced length, never read as replies: the
/// other clients on the node's shared connection get exactly their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_value_that_looks_like_replies_is_never_read_as_them() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::start(&format!(
        "limits.max_reply_bytes = 65536\n[[listeners]]\nprotocol = \"memcached\"\n\
         bind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.shared_connections = 1\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        node.address()
    ))
    .await;
    let mut direct = node.direct().await;
    let forged =
        "\r\nEND\r\nVALUE small 0 6\r\nforged\r\nEND\r\nVA 6\r\nforged\r\nHD\r\n".repeat(2000);
    let set = format!("set forged 0 0 {}\r\n{forged}\r\n", forged.len());
    assert_eq!(direct.line(&set).await, "STORED\r\n");
    assert_eq!(direct.line("set small 0 0 1\r\ns\r\n").await, "STORED\r\n");
    let bystanders = small_readers(&pki, proxy.addr).await;
    let mut greedy = McClient::tls(&pki, proxy.addr).await;
    for _ in 0..10 {
        for ask in ["get forged\r\n", "mg forged v\r\n", "gets small forged\r\n"] {
            let reply = greedy.line(ask).await;
            assert!(
                reply.starts_with("SERVER_ERROR cachegate: ")
                    && reply.ends_with("reply from upstream larger than 65536 bytes\r\n"),
                "{ask:?}: {reply:.200}"
            );
        }
        assert_eq!(
            greedy.values("get small\r\n").await,
            "VALUE small 0 1\r\ns\r\nEND\r\n"
        );
    }
    bystanders.stop().await;
}

/// A binary-protocol client is told so in text and closed at once (it used to wait up to the
/// partial-request timeout); the same byte later on a text connection is text (a refused
/// set's value block starting with it), and that connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_client_is_refused_at_once_and_text_clients_go_on() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut binary = McClient::tls(&pki, proxy.addr).await;
    binary
        .send(b"\x80\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03\xde\xad\xbe\xef\x00\x00\x00\x00\x00\x00\x00\x00foo")
        .await;
    let said = binary.closed_after().await.map(|b| s(&b));
    assert_eq!(
        said.as_deref(),
        Some("CLIENT_ERROR cachegate: the binary protocol is not supported (text and meta commands are)\r\n")
    );
    let mut text = McClient::tls(&pki, proxy.addr).await;
    let long_key = "k".repeat(251);
    text.send(format!("set {long_key} 0 0 3\r\n").as_bytes())
        .await;
    text.send(b"\x80ab\r\n").await;
    assert!(text.line("").await.starts_with("CLIENT_ERROR"));
    assert_eq!(text.line("").await, "ERROR\r\n");
    assert_eq!(text.line("set k 0 0 1\r\nv\r\n").await, "STORED\r\n");
}
