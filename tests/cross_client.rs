//! What one client can do to another through cachegate, tried as an attacker would: replies
//! that could stop the process, frames that could shift another client's replies on a shared
//! upstream connection, commands that could leave state behind on one.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Multiplexed (the default), one shared connection per RESP version, so that every client
/// shares it.
async fn proxy(pki: &Pki, redis: &Redis, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}\
         auth.mode = \"none\"\nupstream.address = {:?}\nupstream.shared_connections = 1\n\
         upstream.health_interval = \"1h\"\n{extra}",
        pki.tls_toml(),
        redis.address()
    ))
    .await
}

const RECURSIVE: &str = "local a = {}; local b = {a}; a[1] = b; return a";

/// A script that returns a table holding itself makes Redis send arrays nested hundreds deep.
/// Delimiting that reply once stopped the whole process (stack overflow); now it is relayed on
/// every path, and everyone else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_script_reply_is_relayed_on_every_path() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut bystander = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(bystander.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");

    let mut direct = redis.direct().await;
    let want = direct.cmd(&["EVAL", RECURSIVE, "0"]).await;
    assert!(want.len() > 1000, "Redis nests deep: {} bytes", want.len());

    for resp3 in [false, true] {
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        if resp3 {
            assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
        }
        // Shared connection.
        assert_eq!(c.cmd(&["EVAL", RECURSIVE, "0"]).await, want);
        // Pinned (inside a transaction), and the transaction's own reply.
        assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["EVAL", RECURSIVE, "0"]).await, b"+QUEUED\r\n");
        let exec = c.cmd(&["EXEC"]).await;
        assert_eq!(&exec[..4], b"*1\r\n");
        assert_eq!(&exec[4..], &want[..]);
        assert_eq!(c.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");
    }
    assert_eq!(bystander.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");
}

/// A stand-in upstream that answers `DEEP` with arrays (or maps, sets, pushes) nested 10,000
/// deep and anything else with `+OK` (HELLO with a map), to reach depths Redis itself will not.
async fn deep_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = reply_end(&buf) {
                        let request: Vec<u8> = buf.drain(..end).collect();
                        let text = String::from_utf8_lossy(&request).to_ascii_uppercase();
                        let answer = if text.contains("DEEP") {
                            let open: &[u8] = if text.contains("PUSHES") {
                                b">1\r\n"
                            } else if text.contains("MAPS") {
                                b"%1\r\n+k\r\n"
                            } else {
                                b"*1\r\n"
                            };
                            let mut frame = open.repeat(10_000);
                            frame.extend_from_slice(b"$4\r\ndeep\r\n");
                            frame
                        } else if text.contains("PING") {
                            b"+PONG\r\n".to_vec()
                        } else if text.contains("HELLO") {
                            b"%1\r\n+server\r\n+fake\r\n".to_vec()
                        } else {
                            b"+OK\r\n".to_vec()
                        };
                        if sock.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_ten_thousand_deep_is_relayed_and_nothing_stops() {
    let pki = Pki::new();
    let (upstream, _task) = deep_upstream().await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = \"{upstream}\"\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml()
    ))
    .await;
    for (args, open) in [
        (&["DEEP"][..], &b"*1\r\n"[..]),
        (&["DEEP", "MAPS"][..], &b"%1\r\n+k\r\n"[..]),
    ] {
        let mut want = open.repeat(10_000);
        want.extend_from_slice(b"$4\r\ndeep\r\n");
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        // Shared, then pinned.
        assert!(c.cmd(args).await == want, "shared: {args:?}");
        assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert!(c.cmd(args).await == want, "pinned: {args:?}");
    }
    // A push nested 10,000 deep on a pinned connection reaches its client.
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    let got = c.cmd(&["DEEP", "PUSHES"]).await;
    assert_eq!(got.len(), 4 * 10_000 + 10);
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// Pushes arrive on a shared RESP3 connection when some other connection redirects its
/// tracking there. Counted as replies, they shifted every later reply by one (a client read
/// another's value). A push is never a reply: it is dropped and counted, and every client
/// gets exactly its own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_a_shared_connection_are_never_replies() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut victim = RawClient::tls(&pki, proxy.addr).await;
    assert!(victim.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    assert_eq!(victim.cmd(&["SET", "victim:k", "secret"]).await, b"+OK\r\n");

    // The shared RESP3 connection, as the backend sees it, made the target of tracking.
    let mut direct = redis.direct().await;
    let list = s(&direct.cmd(&["CLIENT", "LIST"]).await);
    let shared_id = list
        .lines()
        .find(|l| l.contains(" resp=3") && !l.contains("cmd=client|list"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|id| id.strip_prefix("id="))
        .expect("a RESP3 shared connection")
        .to_string();
    let mut tracker = redis.direct().await;
    assert_eq!(
        tracker
            .cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &shared_id, "BCAST"])
            .await,
        b"+OK\r\n"
    );

    // Every write now pushes an invalidation onto the shared connection, between the victim's
    // own replies, and with nothing pending.
    for round in 0..50 {
        let value = format!("v{round}");
        let mut wire = Vec::new();
        wire.extend(encode(&[b"SET", b"victim:k", value.as_bytes()]));
        wire.extend(encode(&[b"GET", b"victim:k"]));
        wire.extend(encode(&[b"ECHO", format!("e{round}").as_bytes()]));
        victim.send(&wire).await;
        assert_eq!(victim.read().await, b"+OK\r\n");
        assert_eq!(victim.read().await, reply_bulk(&value));
        assert_eq!(victim.read().await, reply_bulk(&format!("e{round}")));
        assert_eq!(direct.cmd(&["SET", "other", "x"]).await, b"+OK\r\n");
    }
    let metrics = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(
            &metrics,
            "cachegate_upstream_unexpected_pushes_total{listener=\"edge\"}"
        ) >= 50.0,
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(victim.cmd(&["GET", "victim:k"]).await, reply_bulk("v49"));
}

fn reply_bulk(v: &str) -> Vec<u8> {
    format!("${}\r\n{v}\r\n", v.len()).into_bytes()
}

/// `COMMAND`'s RESP3 reply holds sets of maps; a decoder that builds values refused it and the
/// shared connection was dropped with every client's requests on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_in_resp3_is_relayed_whole() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "commands.rename = { FLUSHALL = \"admin-flushall\" }\ncommands.scripts = \"unguarded\"\n",
    )
    .await;
    let mut direct = redis.direct().await;
    assert!(direct.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    let want = direct.cmd(&["COMMAND", "INFO", "get"]).await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    let all = c.cmd(&["COMMAND"]).await;
    assert!(all.starts_with(b"*") && all.len() > 10_000, "{}", all.len());
    assert_eq!(c.cmd(&["COMMAND", "INFO", "get"]).await, want);
    let docs = c.cmd(&["COMMAND", "DOCS"]).await;
    assert!(docs.starts_with(b"%"));
    assert!(!s(&docs).contains("\r\nflushall\r\n"));
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// The backend's own view of its client connections, one line each.
async fn backend_clients(redis: &Redis) -> Vec<String> {
    let mut direct = redis.direct().await;
    s(&direct.cmd(&["CLIENT", "LIST"]).await)
        .lines()
        .filter(|l| l.starts_with("id=") && !l.contains("cmd=client|list"))
        .map(str::to_string)
        .collect()
}

/// `SCRIPT DEBUG YES` once ran on a shared connection: the next client's EVAL there stopped in
/// the debugger, stepped through by the attacker. It now pins the session to a connection of
/// its own that is closed afterwards (RESET does not clear the debug flag), so neither a
/// sharing client nor the next user of a pooled connection meets it. `CLIENT NO-EVICT ON`,
/// which RESET keeps too, likewise; `SCRIPT DEBUG SYNC` (which blocks the whole server) is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_and_no_evict_never_reach_another_client() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "upstream.warm_connections = 0\nupstream.max_idle = 1\n",
    )
    .await;
    let mut victim = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(victim.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");

    let mut attacker = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(attacker.cmd(&["SCRIPT", "DEBUG", "YES"]).await, b"+OK\r\n");
    assert_eq!(
        attacker.cmd(&["CLIENT", "NO-EVICT", "ON"]).await,
        b"+OK\r\n"
    );
    assert!(s(&attacker.cmd(&["SCRIPT", "DEBUG", "SYNC"]).await)
        .starts_with("-ERR cachegate: SCRIPT DEBUG SYNC"));
    // The victim, on the shared connection, runs its script undisturbed.
    for _ in 0..5 {
        assert_eq!(
            victim
                .cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"])
                .await,
            b"$1\r\nv\r\n"
        );
    }
    // RESET keeps the debug flag on Redis: the session stays on its own connection.
    assert_eq!(attacker.cmd(&["RESET"]).await, b"+RESET\r\n");
    drop(attacker);

    // The tainted connection is closed, not pooled: every later pinned session gets a clean
    // one (the pool keeps one idle connection, so a pooled tainted one would come back).
    assert!(
        eventually(|| async {
            !backend_clients(&redis).await.iter().any(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("flags="))
                    .is_some_and(|flags| flags.contains('e'))
            })
        })
        .await,
        "the no-evict connection must be closed"
    );
    for _ in 0..3 {
        let mut next = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(next.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert_eq!(next.cmd(&["EVAL", "return 1", "0"]).await, b"+QUEUED\r\n");
        assert_eq!(next.cmd(&["EXEC"]).await, b"*1\r\n:1\r\n");
    }
}

/// No client may name a connection that is not its own. Ids are the session's own (stable,
/// unique, also in HELLO's reply); CLIENT LIST and INFO show only the caller; KILL, UNBLOCK,
/// PAUSE and TRACKING ... REDIRECT are refused at once; so are SYNC and PSYNC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_and_name_only_themselves() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut other = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        other.cmd(&["CLIENT", "SETNAME", "secret-name"]).await,
        b"+OK\r\n"
    );
    let other_id = s(&other.cmd(&["CLIENT", "ID"]).await);

    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let id = s(&c.cmd(&["CLIENT", "ID"]).await);
    assert!(id.starts_with(':') && id != other_id, "{id} {other_id}");
    assert_eq!(s(&c.cmd(&["CLIENT", "ID"]).await), id, "stable");
    let n = id.trim_start_matches(':').trim();
    let hello = s(&c.cmd(&["HELLO", "3"]).await);
    assert!(hello.contains(&format!("$2\r\nid\r\n:{n}\r\n")), "{hello}");
    // Pinned now (MULTI would pin; tracking does), still the same id.
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON"]).await, b"+OK\r\n");
    assert_eq!(s(&c.cmd(&["CLIENT", "ID"]).await), id);
    let list = s(&c.cmd(&["CLIENT", "LIST"]).await);
    assert!(list.contains(&format!("id={n} ")), "{list}");
    assert!(!list.contains("secret-name"), "{list}");
    assert_eq!(list.matches("id=").count(), 1, "{list}");
    let info = s(&c.cmd(&["CLIENT", "INFO"]).await);
    assert!(
        info.contains(&format!("id={n} ")) && info.contains("resp=3"),
        "{info}"
    );

    let other_n = other_id.trim_start_matches(':').trim().to_string();
    for args in [
        vec!["CLIENT", "TRACKING", "ON", "REDIRECT", &other_n, "BCAST"],
        vec!["CLIENT", "KILL", "ID", &other_n],
        vec!["CLIENT", "KILL", "127.0.0.1:1"],
        vec!["CLIENT", "UNBLOCK", &other_n],
        vec!["CLIENT", "PAUSE", "1000"],
        vec!["CLIENT", "UNPAUSE"],
        vec!["SYNC"],
        vec!["PSYNC", "?", "-1"],
        vec!["REPLCONF", "ACK", "0"],
    ] {
        let got = s(&c.cmd(&args).await);
        assert!(got.starts_with("-ERR cachegate:"), "{args:?}: {got}");
    }
    assert_eq!(other.cmd(&["PING"]).await, b"+PONG\r\n", "not killed");
    // The backend never saw any of them.
    let mut direct = redis.direct().await;
    let stats = s(&direct.cmd(&["INFO", "commandstats"]).await);
    for name in [
        "client|kill",
        "client|unblock",
        "client|pause",
        "sync",
        "psync",
        "replconf",
    ] {
        assert!(
            !stats.contains(&format!("cmdstat_{name}:")),
            "{name} reached the backend"
        );
    }
    // A wrong number of arguments is answered first, in Redis's words, as Redis does.
    for args in [
        &["CLIENT", "KILL"][..],
        &["client", "unblock"],
        &["SYNC", "x"],
    ] {
        assert_eq!(
            s(&c.cmd(args).await),
            s(&direct.cmd(args).await),
            "{args:?}"
        );
    }
}

/// CONFIG SET requirepass through cachegate would leave the backend with a password that
/// cachegate's own connections do not know: every client after that is refused (so would
/// maxclients 1, another port, TLS client auth). Refused, in any position and case, inside
/// MULTI too; other settings still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_lock_cachegate_out_of_its_backend() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    for (args, setting) in [
        (
            vec!["CONFIG", "SET", "requirepass", "locked"],
            "requirepass",
        ),
        (
            vec![
                "config",
                "set",
                "maxmemory-policy",
                "noeviction",
                "RequirePass",
                "x",
            ],
            "requirepass",
        ),
        (vec!["CONFIG", "SET", "maxclients", "1"], "maxclients"),
        (vec!["CONFIG", "SET", "port", "1"], "port"),
        (
            vec!["CONFIG", "SET", "protected-mode", "yes"],
            "protected-mode",
        ),
        (
            vec!["CONFIG", "SET", "tls-auth-clients", "yes"],
            "tls-auth-clients",
        ),
        // Limits past which the backend closes a connection, shared ones under every client
        // on them.
        (
            vec![
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "normal 1 1 0",
            ],
            "client-output-buffer-limit",
        ),
        (
            vec!["CONFIG", "SET", "proto-max-bulk-len", "1048576"],
            "proto-max-bulk-len",
        ),
        (
            vec!["CONFIG", "SET", "client-query-buffer-limit", "1048576"],
            "client-query-buffer-limit",
        ),
        // Where a cluster's nodes say they are, which a cluster listener connects to.
        (
            vec![
                "CONFIG",
                "SET",
                "cluster-preferred-endpoint-type",
                "hostname",
                "cluster-announce-hostname",
                "evil.example",
            ],
            "cluster-preferred-endpoint-type",
        ),
        (
            vec!["CONFIG", "SET", "cluster-announce-ip", "203.0.113.9"],
            "cluster-announce-ip",
        ),
    ] {
        let got = s(&c.cmd(&args).await);
        assert!(
            got.starts_with(&format!("-ERR cachegate: CONFIG SET {setting} ")),
            "{args:?}: {got}"
        );
    }
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    let queued = s(&c.cmd(&["CONFIG", "SET", "requirepass", "locked"]).await);
    assert!(queued.starts_with("-ERR cachegate:"), "{queued}");
    let exec = s(&c.cmd(&["EXEC"]).await);
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    // A value that merely reads "requirepass" is not a setting; other settings pass.
    assert_eq!(
        c.cmd(&["CONFIG", "SET", "masterauth", "requirepass"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        c.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await,
        b"+OK\r\n"
    );
    let mut direct = redis.direct().await;
    let pass = s(&direct.cmd(&["CONFIG", "GET", "requirepass"]).await);
    assert!(pass.ends_with("$0\r\n\r\n"), "{pass}");
    let max = s(&direct.cmd(&["CONFIG", "GET", "maxclients"]).await);
    assert!(!max.ends_with("$1\r\n1\r\n"), "{max}");
    // A new client, on a new upstream connection, is still served.
    let mut fresh = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(fresh.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(fresh.cmd(&["PING"]).await, b"+QUEUED\r\n");
    assert_eq!(fresh.cmd(&["EXEC"]).await, b"*1\r\n+PONG\r\n");
}

/// A client that pipelines more shared commands than its in-flight allowance, never reads its
/// replies and then resets its connection must end its session: a session left waiting for an
/// allowance that is never given back would hold its connection slot forever (with
/// `max_connections` slots, a few such clients lock everyone out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_client_past_its_in_flight_allowance_frees_its_slot() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nmax_connections = 1\ntls.enabled = false\n\
         auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
        redis.address()
    ))
    .await;
    let mut direct = redis.direct().await;
    let value = "v".repeat(100_000);
    assert_eq!(direct.cmd(&["SET", "big", &value]).await, b"+OK\r\n");

    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(700);
    stream.write_all(&get).await.unwrap();
    // Its replies fill the socket; the session stops at its allowance.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A zero linger never blocks on drop (the deprecation's concern): it resets at once.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);

    assert!(
        eventually(|| async {
            let Ok(c) = tokio::net::TcpStream::connect(proxy.addr).await else {
                return false;
            };
            let mut c = RawClient::new(Box::new(c));
            c.send_cmd(&["PING"]).await;
            c.try_read().await.as_deref() == Some(b"+PONG\r\n")
        })
        .await,
        "the reset client's session still holds the only connection slot"
    );
}

/// A client that makes cachegate think its connection is in step while replies are still due
/// (RESP2 `UNSUBSCRIBE` without channels answers once per subscription, which reads as the
/// answers to the commands pipelined behind it), and forges the `+RESET` that a pooled
/// connection's reset waits for (`EVAL "return {ok='RESET'}"`), must not hand the next
/// session that takes the connection its own late replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_reset_cannot_hand_late_replies_to_the_next_session() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "upstream.warm_connections = 0\nupstream.max_idle = 1\ncommands.scripts = \"unguarded\"\n",
    )
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    c.send_cmd(&["SUBSCRIBE", "a", "b", "c", "d"]).await;
    for _ in 0..4 {
        c.read().await;
    }
    let mut wire = encode(&[b"UNSUBSCRIBE"]);
    wire.extend(encode(&[b"BLPOP", b"k", b"1"]));
    wire.extend(encode(&[b"EVAL", b"return {ok='RESET'}", b"0"]));
    wire.extend(encode(&[b"BLPOP", b"k2", b"5"]));
    wire.extend(encode(&[b"EVAL", b"return 'INJECTED'", b"0"]));
    c.send(&wire).await;
    for _ in 0..4 {
        c.read().await;
    }
    // A stateless command: the session goes back to shared connections and its connection
    // to the pool, through a reset.
    c.send_cmd(&["GET", "x"]).await;
    // The next session comes while the connection still owes its late replies: the forged
    // RESET has run (one EVAL so far) and the second BLPOP holds. A reset that took the forged
    // reply for its own would have pooled the connection by now, and hand it to that session.
    let mut direct = redis.direct().await;
    let mut window = false;
    for _ in 0..400 {
        let info = s(&direct.cmd(&["INFO", "all"]).await);
        if info.contains("cmdstat_eval:calls=1,") && info.contains("blocked_clients:1\r\n") {
            window = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        window,
        "the forged RESET never ran with the second BLPOP holding"
    );
    // The next session that needs a connection of its own gets its own replies only.
    let mut d = RawClient::tls(&pki, proxy.addr).await;
    let mut replies = Vec::new();
    for cmd in [
        vec!["WATCH", "x"],
        vec!["SET", "x", "mine"],
        vec!["GET", "x"],
        vec!["UNWATCH"],
    ] {
        replies.push(s(&d.cmd(&cmd).await));
    }
    assert_eq!(replies, ["+OK\r\n", "+OK\r\n", "$4\r\nmine\r\n", "+OK\r\n"]);
}

/// Redis reads keywords and names up to their first NUL (`strcasecmp`), and so does cachegate
/// now: a keyword with a NUL and a tail is the keyword. `XREAD BLOCK\0` blocks, so it pins
/// (on a shared connection it held every other client's replies until the request timeout);
/// `SCRIPT DEBUG SYNC\0` is refused as SYNC is; `CONFIG SET requirepass\0x` is refused as
/// `requirepass` is; and a command name with a NUL in it is unknown (Redis runs one in a few
/// hundred of them as the command before the NUL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywords_with_a_nul_are_read_as_redis_reads_them() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "upstream.request_timeout = \"2s\"\n").await;
    let mut blocked = RawClient::tls(&pki, proxy.addr).await;
    let mut other = RawClient::tls(&pki, proxy.addr).await;
    blocked
        .send(&encode(&[
            b"XREAD",
            b"BLOCK\0x",
            b"0",
            b"STREAMS",
            b"s",
            b"$",
        ]))
        .await;
    assert!(redis.until_blocked(1).await);
    // The shared connection is not the one blocked: answered at once, not timed out.
    assert_eq!(other.cmd(&["GET", "k"]).await, b"$-1\r\n");
    assert!(s(&other.cmd(&["XADD", "s", "*", "f", "v"]).await).starts_with('$'));
    let got = s(&blocked.read().await);
    assert!(got.contains("\r\nf\r\n$1\r\nv\r\n"), "{got}");

    let refused = s(&other.cmd_bytes(&[b"SCRIPT", b"DEBUG", b"SYNC\0x"]).await);
    assert!(refused.starts_with("-ERR cachegate:"), "{refused}");
    let refused = s(&other
        .cmd_bytes(&[b"CONFIG", b"SET", b"requirepass\0x", b"secret-pw"])
        .await);
    assert!(refused.starts_with("-ERR cachegate:"), "{refused}");
    let mut direct = redis.direct().await;
    assert_eq!(
        s(&direct.cmd(&["CONFIG", "GET", "requirepass"]).await),
        "*2\r\n$11\r\nrequirepass\r\n$0\r\n\r\n"
    );
    assert_eq!(other.cmd(&["SET", "keep", "1"]).await, b"+OK\r\n");
    for i in 0..300 {
        let name = format!("flushall\0{i}");
        let reply = s(&other.cmd_bytes(&[name.as_bytes()]).await);
        assert!(reply.starts_with("-ERR unknown command"), "{reply}");
    }
    assert_eq!(other.cmd(&["GET", "keep"]).await, b"$1\r\n1\r\n");
}

/// A reply over `limits.max_reply_bytes` on a shared connection fails only the request it
/// answers: it is read and dropped as it arrives, and the connection goes on for every other
/// client's requests on it (it used to fail them all, and be replaced, so that one client
/// reading a large value over and over broke everyone else's requests; found by a
/// reviewer). The client that asked gets the error and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_fails_only_its_own_request() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::start(&format!(
        "limits.max_reply_bytes = 65536\n[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"edge\"\n\
         bind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\n\
         upstream.shared_connections = 1\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut direct = redis.direct().await;
    let big = vec![b'x'; 300_000];
    assert_eq!(direct.cmd_bytes(&[b"SET", b"big", &big]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&["SET", "small", "s"]).await, b"+OK\r\n");
    let mut greedy = RawClient::tls(&pki, proxy.addr).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(RawClient::tls(&pki, proxy.addr).await);
    }
    let bystanders = Bystanders::start(others, |mut c: RawClient| async move {
        c.send(&encode(&[b"GET", b"small"]).repeat(20)).await;
        for _ in 0..20 {
            assert_eq!(c.read().await, b"$1\r\ns\r\n", "another client's reply");
        }
        c
    });
    for _ in 0..20 {
        let reply = s(&greedy.cmd(&["GET", "big"]).await);
        assert_eq!(
            reply,
            "-ERR cachegate: reply from upstream larger than 65536 bytes\r\n"
        );
    }
    assert_eq!(greedy.cmd(&["GET", "small"]).await, b"$1\r\ns\r\n");
    bystanders.stop().await;
    // One shared connection all along: never replaced.
    let text = proxy.admin_get("/metrics").await.1;
    for reason in ["malformed", "lost", "timeout", "unavailable"] {
        assert!(!text.contains(&format!("reason=\"{reason}\"")), "{text}");
    }
    let too_large = "cachegate_request_failures_total{listener=\"edge\",reason=\"too_large\"}";
    assert_eq!(metric(&text, too_large), 20.0, "{text}");
}
