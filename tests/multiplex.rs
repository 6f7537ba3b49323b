//! Multiplexed upstream connections (`upstream.multiplex = true`): sessions without connection
//! state share a few connections; stateful commands pin a session to its own; no reply ever
//! reaches the wrong client.

mod common;

use std::time::Duration;

use common::*;

async fn proxy(pki: &Pki, redis: &Redis, extra: &str) -> Proxy {
    Proxy::tls_open(
        pki,
        redis,
        &format!(
            "upstream.multiplex = true\nupstream.shared_connections = 2\nupstream.warm_connections = 0\n\
             upstream.health_interval = \"1h\"\nupstream.request_timeout = \"2s\"\n{extra}"
        ),
    )
    .await
}

async fn backend_clients(redis: &Redis) -> usize {
    let mut d = redis.direct().await;
    let info = s(&d.cmd(&["INFO", "clients"]).await);
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// 200 clients pipeline `ECHO id:seq` at varying depths, some leave and come back, and the
/// backend is paused and restarted meanwhile: every reply a client gets is its own, in order
/// (or an error while the backend is away), never another client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_exactly_its_own_replies() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let addr = proxy.addr;
    let pki = std::sync::Arc::new(pki);
    let mut tasks = Vec::new();
    for id in 0..200u32 {
        let pki = pki.clone();
        tasks.push(tokio::spawn(async move {
            let mut mismatches = 0;
            let mut ok = 0;
            let mut errors = 0;
            let mut c = RawClient::tls(&pki, addr).await;
            let mut seq = 0u32;
            for round in 0..40u32 {
                // Spread the traffic over about a second, across the faults below.
                tokio::time::sleep(Duration::from_millis(25)).await;
                if (id + round) % 17 == 0 {
                    // Leave with requests in flight, and come back.
                    c.send_cmd(&["ECHO", "abandoned"]).await;
                    c = RawClient::tls(&pki, addr).await;
                }
                let depth = 1 + (id * 7 + round * 3) % 8;
                let mut wire = Vec::new();
                for k in 0..depth {
                    let payload = format!("{id}:{}", seq + k);
                    wire.extend(encode(&[b"ECHO", payload.as_bytes()]));
                }
                c.send(&wire).await;
                for k in 0..depth {
                    let reply = c.read().await;
                    let want = format!("{id}:{}", seq + k);
                    let want = format!("${}\r\n{want}\r\n", want.len());
                    if reply == want.as_bytes() {
                        ok += 1;
                    } else if reply.starts_with(b"-ERR cachegate") {
                        errors += 1;
                    } else {
                        mismatches += 1;
                    }
                }
                seq += depth;
            }
            (ok, mismatches, errors)
        }));
    }
    // Meanwhile: pause the backend briefly, then restart it.
    let mut redis = redis;
    tokio::time::sleep(Duration::from_millis(250)).await;
    redis.pause(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.pause(false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.restart().await;
    let (mut ok, mut mismatches, mut errors) = (0, 0, 0);
    for t in tasks {
        let (o, m, e) = t.await.unwrap();
        ok += o;
        mismatches += m;
        errors += e;
    }
    eprintln!("multiplex stress: {ok} correct, {errors} errors while the backend was away, {mismatches} mismatched");
    assert_eq!(
        mismatches, 0,
        "a reply reached the wrong client or came out of order"
    );
    assert!(ok > 20_000, "most requests succeed ({ok})");
}

/// What real clients send on connect (HELLO 3, CLIENT SETNAME/SETINFO, SELECT 0, PING) does not
/// pin: many RESP3 sessions share the two RESP3 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_commands_do_not_pin() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        let hello = c.cmd(&["HELLO", "3", "SETNAME", &format!("app-{i}")]).await;
        assert!(hello.starts_with(b"%"), "{}", s(&hello));
        assert_eq!(
            c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "test"]).await,
            b"+OK\r\n"
        );
        assert_eq!(c.cmd(&["SELECT", "0"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]).await, b"+OK\r\n");
        // RESP3 replies come back as RESP3: a map for HGETALL.
        c.cmd(&["HSET", &format!("h{i}"), "f", "v"]).await;
        assert!(c
            .cmd(&["HGETALL", &format!("h{i}")])
            .await
            .starts_with(b"%1"));
        let name = format!("app-{i}");
        assert_eq!(
            s(&c.cmd(&["CLIENT", "GETNAME"]).await),
            format!("${}\r\n{name}\r\n", name.len())
        );
        clients.push(c);
    }
    // 20 sessions, but only the shared connections (2 RESP3, maybe 2 RESP2) and ours.
    assert!(backend_clients(&redis).await <= 5, "sessions were pinned");
}

/// Each stateful family pins the session, and works as on its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_commands_pin_and_work() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["CLIENT", "SETNAME", "keeper"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "n", "1"]).await, b"+OK\r\n");
    let before = backend_clients(&redis).await;
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "n"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n:2\r\n");
    assert_eq!(
        backend_clients(&redis).await,
        before + 1,
        "pinned to its own connection"
    );
    assert_eq!(
        c.cmd(&["CLIENT", "GETNAME"]).await,
        b"$6\r\nkeeper\r\n",
        "name carried over"
    );

    let mut w = RawClient::tls(&pki, proxy.addr).await;
    let mut other = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(w.cmd(&["WATCH", "n"]).await, b"+OK\r\n");
    assert_eq!(w.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(w.cmd(&["SET", "n", "100"]).await, b"+QUEUED\r\n");
    assert_eq!(other.cmd(&["SET", "n", "7"]).await, b"+OK\r\n");
    assert_eq!(w.cmd(&["EXEC"]).await, b"*-1\r\n");

    let mut sub = RawClient::tls(&pki, proxy.addr).await;
    sub.send_cmd(&["SUBSCRIBE", "ch"]).await;
    assert_eq!(
        sub.read().await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(other.cmd(&["PUBLISH", "ch", "hi"]).await, b":1\r\n");
    assert_eq!(
        sub.read().await,
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );

    let mut blocked = RawClient::tls(&pki, proxy.addr).await;
    blocked.send_cmd(&["BLPOP", "q", "0"]).await;
    for _ in 0..10 {
        assert_eq!(
            other.cmd(&["PING"]).await,
            b"+PONG\r\n",
            "others are not stalled"
        );
    }
    assert_eq!(other.cmd(&["RPUSH", "q", "x"]).await, b":1\r\n");
    assert_eq!(blocked.read().await, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");

    let mut db = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(db.cmd(&["SELECT", "3"]).await, b"+OK\r\n");
    assert_eq!(db.cmd(&["SET", "only3", "x"]).await, b"+OK\r\n");
    assert_eq!(
        other.cmd(&["EXISTS", "only3"]).await,
        b":0\r\n",
        "db 3 stays with its session"
    );
}

/// A hung backend fails exactly the requests on the shared connection; service continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_connection_timeout_fails_only_its_requests() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    redis.pause(true);
    let reply = s(&c.cmd(&["GET", "k"]).await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream read timed out after 2s"),
        "{reply}"
    );
    redis.pause(false);
    let mut back = String::new();
    for _ in 0..100 {
        back = s(&c.cmd(&["GET", "k"]).await);
        if back == "$1\r\nv\r\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, "$1\r\nv\r\n", "the same session goes on");
}

/// With `multiplex = false` every session has its own upstream connection, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplex_off_gives_each_session_its_own_connection() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_open(
        &pki,
        &redis,
        "upstream.multiplex = false\nupstream.warm_connections = 0\nupstream.health_interval = \"1h\"\n",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        clients.push(c);
    }
    assert!(
        backend_clients(&redis).await >= 7,
        "one connection per session, plus ours"
    );
}

/// A renamed stateful command is still stateful: it pins like the real one, and never leaves a
/// shared connection in MULTI for other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_multi_still_pins() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_open(
        &pki,
        &redis,
        "upstream.shared_connections = 1\ncommands.rename = { MULTI = \"BEGIN_TX\" }\ncommands.scripts = \"unguarded\"\n",
    )
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let mut other = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(c.cmd(&["BEGIN_TX"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, b"+QUEUED\r\n");
    assert_eq!(
        other.cmd(&["SET", "x", "1"]).await,
        b"+OK\r\n",
        "not queued in c's MULTI"
    );
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n+OK\r\n");
}

fn pinned(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("cachegate_pinned_sessions{listener=\"redis-0\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Each stateful family pins the session, and it goes back to the shared connections once that
/// state is gone (after EXEC/DISCARD/UNWATCH, SELECT 0, the blocking reply, the last
/// UNSUBSCRIBE, or RESET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_engages_and_releases_for_each_family() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "[admin]\nbind = \"127.0.0.1:0\"\n").await;
    let gauge = || async { pinned(&proxy.admin_get("/metrics").await.1) };
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let mut other = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(gauge().await, 0.0);

    // A subscription queued in a transaction that is discarded never happened.
    for resp3 in [false, true] {
        let hello = if resp3 { "3" } else { "2" };
        assert!(!c.cmd(&["HELLO", hello]).await.starts_with(b"-"));
        assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["SUBSCRIBE", "never"]).await, b"+QUEUED\r\n");
        assert_eq!(c.cmd(&["DISCARD"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        assert_eq!(gauge().await, 0.0, "released after a discarded SUBSCRIBE");
    }
    assert!(c.cmd(&["HELLO", "2"]).await.starts_with(b"*"));

    // MULTI / EXEC
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(gauge().await, 1.0, "MULTI pins");
    assert_eq!(c.cmd(&["INCR", "n"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n:1\r\n");
    assert_eq!(c.cmd(&["GET", "n"]).await, b"$1\r\n1\r\n");
    assert_eq!(gauge().await, 0.0, "released after EXEC");

    // WATCH / UNWATCH
    assert_eq!(c.cmd(&["WATCH", "n"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "n"]).await, b"$1\r\n1\r\n");
    assert_eq!(gauge().await, 1.0, "still watching");
    assert_eq!(c.cmd(&["UNWATCH"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "n"]).await, b"$1\r\n1\r\n");
    assert_eq!(gauge().await, 0.0, "released after UNWATCH");

    // SELECT
    assert_eq!(c.cmd(&["SELECT", "3"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "in3", "x"]).await, b"+OK\r\n");
    assert_eq!(gauge().await, 1.0);
    assert_eq!(c.cmd(&["SELECT", "0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["EXISTS", "in3"]).await, b":0\r\n", "back in db 0");
    assert_eq!(gauge().await, 0.0, "released after SELECT 0");

    // Blocking
    c.send_cmd(&["BLPOP", "q", "0"]).await;
    assert_eq!(other.cmd(&["RPUSH", "q", "x"]).await, b":1\r\n");
    assert_eq!(c.read().await, b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(gauge().await, 0.0, "released after the blocking reply");

    // Subscriptions: until RESET
    c.send_cmd(&["SUBSCRIBE", "ch"]).await;
    c.read().await;
    assert_eq!(gauge().await, 1.0);
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(gauge().await, 0.0, "released after RESET");
    assert_eq!(
        other.cmd(&["PUBLISH", "ch", "x"]).await,
        b":0\r\n",
        "no subscription left"
    );

    // Subscriptions: until the last is gone (the connection's own count says so).
    for resp3 in [false, true] {
        if resp3 {
            assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
        }
        c.send_cmd(&["SUBSCRIBE", "a", "b"]).await;
        c.read().await;
        c.read().await;
        c.send_cmd(&["PSUBSCRIBE", "p*"]).await;
        c.read().await;
        assert_eq!(gauge().await, 1.0);
        c.send_cmd(&["UNSUBSCRIBE", "a", "b"]).await;
        c.read().await;
        c.read().await;
        assert_eq!(
            c.cmd(&["PING"]).await.first(),
            Some(&if resp3 { b'+' } else { b'*' })
        );
        assert_eq!(gauge().await, 1.0, "a pattern subscription is left");
        c.send_cmd(&["PUNSUBSCRIBE", "p*"]).await;
        c.read().await;
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        assert_eq!(c.cmd(&["GET", "n"]).await, b"$1\r\n1\r\n");
        assert_eq!(gauge().await, 0.0, "released after the last unsubscribe");
        assert_eq!(
            other.cmd(&["PUBLISH", "p1", "x"]).await,
            b":0\r\n",
            "no subscription left"
        );
    }
    assert!(c.cmd(&["HELLO", "2"]).await.starts_with(b"*"));
    // RESP2's UNSUBSCRIBE without channels answers once per subscription (counted where the
    // answers begin, from the confirmations before them): released after it too.
    c.send_cmd(&["SUBSCRIBE", "a", "b"]).await;
    c.read().await;
    c.read().await;
    c.send_cmd(&["UNSUBSCRIBE"]).await;
    c.read().await;
    c.read().await;
    assert_eq!(c.cmd(&["GET", "n"]).await, b"$1\r\n1\r\n");
    assert_eq!(gauge().await, 0.0, "released after unsubscribing from all");
    assert_eq!(
        other.cmd(&["PUBLISH", "a", "x"]).await,
        b":0\r\n",
        "no subscription left"
    );

    // The name set while pinned is kept when going back.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&["CLIENT", "SETNAME", "pinned-name"]).await,
        b"+QUEUED\r\n"
    );
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(
        c.cmd(&["CLIENT", "GETNAME"]).await,
        b"$11\r\npinned-name\r\n"
    );
}

/// memcached sessions share the nodes' connections too, and each still gets its own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_sessions_share_node_connections() {
    let (pki, a, b) = (
        Pki::new(),
        Memcached::start().await,
        Memcached::start().await,
    );
    let proxy = Proxy::memcached(&pki, &[&a, &b], "upstream.warm_connections = 0\n").await;
    let addr = proxy.addr;
    let pki = std::sync::Arc::new(pki);
    let mut tasks = Vec::new();
    for id in 0..40 {
        let pki = pki.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = McClient::tls(&pki, addr).await;
            for round in 0..20 {
                let key = format!("s{id}:{round}");
                let value = format!("v{id}-{round}");
                let mut wire = format!("set {key} 0 0 {} noreply\r\n{value}\r\n", value.len());
                wire.push_str(&format!("get {key} s{id}:0\r\n"));
                c.send(wire.as_bytes()).await;
                let got = s(&c.read(cachegate::protocol::memcached::Shape::Values).await);
                let first = format!("VALUE {key} 0 {}\r\n{value}\r\n", value.len());
                assert!(got.starts_with(&first), "{id}/{round}: {got}");
            }
            c
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    // 40 sessions open, but each node sees only cachegate's shared connections (and ours).
    for node in [&a, &b] {
        let conns = node.stat("curr_connections").await;
        assert!(conns <= 6, "node has {conns} connections");
    }
}

/// CLIENT TRACKING and MONITOR pin until RESET; a client that leaves while blocked leaves no
/// blocked connection behind for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_monitor_and_blocked_leavers() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "[admin]\nbind = \"127.0.0.1:0\"\n").await;
    let gauge = || async { pinned(&proxy.admin_get("/metrics").await.1) };
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "t"]).await, b"_\r\n");
    assert_eq!(gauge().await, 1.0, "tracking keeps the session pinned");
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(gauge().await, 0.0);

    let mut m = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(m.cmd(&["MONITOR"]).await, b"+OK\r\n");
    assert_eq!(gauge().await, 1.0, "MONITOR pins");
    drop(m);

    let mut blocked = RawClient::tls(&pki, proxy.addr).await;
    blocked.send_cmd(&["BLPOP", "never", "0"]).await;
    assert!(redis.until_blocked(1).await);
    drop(blocked);
    let mut after = 0.0;
    for _ in 0..50 {
        after = gauge().await;
        if after == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after, 0.0, "leavers are no longer counted");
    // Whoever comes next is served at once: no connection stuck in BLPOP is handed out.
    for _ in 0..5 {
        let mut next = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(next.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert_eq!(next.cmd(&["PING"]).await, b"+QUEUED\r\n");
        assert_eq!(next.cmd(&["EXEC"]).await, b"*1\r\n+PONG\r\n");
    }
}

/// A RESP2 session unsubscribing while messages still flow, with a blocking command behind
/// it: the check that lets it unpin (a PING of cachegate's own) must not take the client's
/// own reply for its answer. The client gets every reply, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinning_after_unsubscribe_never_takes_a_clients_reply() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    c.send_cmd(&["SUBSCRIBE", "a"]).await;
    c.read().await;
    // Messages on `a` all along.
    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = {
        let stop = stop.clone();
        let mut p = redis.direct().await;
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                p.cmd(&["PUBLISH", "a", "m"]).await;
            }
        })
    };
    // The messages are flowing.
    while !s(&c.read().await).contains("message") {}
    let mut wire = encode(&[b"UNSUBSCRIBE", b"a"]);
    wire.extend(encode(&[b"BLPOP", b"q", b"1"]));
    c.send(&wire).await;
    // The GET goes after the BLPOP has reached the backend.
    assert!(redis.until_blocked(1).await);
    c.send_cmd(&["GET", "k"]).await;
    let mut replies = Vec::new();
    while replies.len() < 3 {
        let frame = s(&c.read().await);
        if !frame.contains("message") {
            replies.push(frame);
        }
    }
    stop.cancel();
    let _ = publishing.await;
    assert!(replies[0].contains("unsubscribe"), "{replies:?}");
    assert_eq!(replies[1..], ["*-1\r\n", "$1\r\nv\r\n"], "{replies:?}");
}
