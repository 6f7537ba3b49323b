//! Bad input and failures: malformed frames, huge lengths, slow clients, a backend that dies,
//! hangs or comes back, oversized replies, shutdown with requests in flight.

mod common;

use std::time::Duration;

use common::*;

/// Redis's own reply to the same garbage, for comparison.
async fn redis_says(redis: &Redis, garbage: &[u8]) -> Vec<u8> {
    let mut direct = redis.direct().await;
    direct.send(garbage).await;
    direct.read().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_redis_protocol_errors_and_a_close() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let mut bystander = RawClient::authed(&pki, proxy.addr).await;
    let cases: &[&[u8]] = &[
        b"*1\r\n$-5\r\n",
        b"*1\r\n$999999999999\r\n",
        b"*x\r\n",
        b"*2\r\n$3\r\nGET\r\n:1\r\n",
        b"SET a \"unbalanced\r\n",
    ];
    for garbage in cases {
        let mut c = RawClient::authed(&pki, proxy.addr).await;
        c.send(garbage).await;
        let ours = c.read().await;
        assert_eq!(
            s(&ours),
            s(&redis_says(&redis, garbage).await),
            "{}",
            s(garbage)
        );
        assert!(c.closed().await, "connection closes after a protocol error");
        assert_eq!(bystander.cmd(&["PING"]).await, b"+PONG\r\n");
    }
    // Before AUTH, Redis's small limits apply.
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let many: Vec<&[u8]> = vec![b"x"; 11];
    c.send(&encode(&many)).await;
    assert_eq!(
        c.read().await,
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_bulk_limit_is_enforced_before_buffering() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(&pki, &redis, "limits.max_bulk_bytes = 1024\n").await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd_bytes(&[b"SET", b"k", &[b'v'; 1024]]).await,
        b"+OK\r\n"
    );
    // Only the header is sent: the error must come without waiting for 1025 bytes.
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n").await;
    assert_eq!(
        c.read().await,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_is_dropped_at_the_deadline() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy =
        Proxy::tls_with_global(&pki, &redis, "limits.partial_request_timeout = \"200ms\"\n").await;
    let mut slow = RawClient::authed(&pki, proxy.addr).await;
    slow.send(b"*2\r\n$3\r\nGET\r\n$10\r\nabc").await;
    assert!(slow.closed().await, "slow client is cut off");
    // An idle client with nothing half-sent is not.
    let mut idle = RawClient::authed(&pki, proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(idle.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// A client that does not log in within `limits.login_timeout` (of its connection, or of the
/// RESET that logged it out) is told so and closed, idle or not, so that clients that never
/// log in cannot hold every connection slot; a logged-in client may idle for ever, and `"0s"`
/// turns the limit off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_logs_in_is_closed_at_the_login_timeout() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(
        &pki,
        &redis,
        "limits.login_timeout = \"300ms\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    let mut idle = RawClient::tls(&pki, proxy.addr).await;
    let mut busy = RawClient::tls(&pki, proxy.addr).await;
    let mut logged_in = RawClient::authed(&pki, proxy.addr).await;
    let mut reset = RawClient::authed(&pki, proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Logged out 200 ms into its connection: its 300 ms start again.
    assert_eq!(reset.cmd(&["RESET"]).await, b"+RESET\r\n");
    for _ in 0..3 {
        assert!(s(&busy.cmd(&["PING"]).await).starts_with("-NOAUTH"));
    }
    let told = "-ERR cachegate: not logged in within 300ms (limits.login_timeout); closing the connection\r\n";
    for c in [&mut idle, &mut busy, &mut reset] {
        assert_eq!(s(&c.read().await), told);
        assert!(c.closed().await);
    }
    assert_eq!(logged_in.cmd(&["PING"]).await, b"+PONG\r\n");
    let (status, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("cause=\"login_timeout\""),
        "counted: {metrics}"
    );

    let off = Proxy::tls_with_global(&pki, &redis, "limits.login_timeout = \"0s\"\n").await;
    let mut patient = RawClient::tls(&pki, off.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s(&patient.cmd(&["PING"]).await).starts_with("-NOAUTH"));
}

/// The login timeout gives a connection slot back: with `max_connections = 1`, a client that
/// connects and never logs in refuses everyone else until `limits.login_timeout`, and no
/// longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_logs_in_gives_its_slot_back_at_the_login_timeout() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(&format!(
        "limits.login_timeout = \"2s\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nmax_connections = 1\n\
         tls.enabled = false\nauth.tokens = [{TOKEN:?}]\nupstream.address = {:?}\n\
         upstream.health_interval = \"1h\"\n",
        redis.address()
    ))
    .await;
    let plain = || async {
        RawClient::new(Box::new(
            tokio::net::TcpStream::connect(proxy.addr).await.unwrap(),
        ))
    };
    let mut idle = plain().await;
    // (Its session holds the slot once it answers.)
    assert!(s(&idle.cmd(&["PING"]).await).starts_with("-NOAUTH"));
    let mut refused = plain().await;
    refused.send_cmd(&["AUTH", TOKEN]).await;
    let told = s(&refused.try_read().await.unwrap_or_default());
    assert!(
        told.starts_with("-ERR max number of clients reached"),
        "{told}"
    );
    assert!(
        eventually(|| async {
            let mut c = plain().await;
            c.send_cmd(&["AUTH", TOKEN]).await;
            c.try_read().await.as_deref() == Some(b"+OK\r\n")
        })
        .await,
        "the slot never came back"
    );
    assert!(s(&idle.read().await).contains("limits.login_timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_and_restarted_recovers_without_restarting_cachegate() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let proxy =
        Proxy::tls_with_tokens(&pki, &redis, "upstream.health_interval = \"100ms\"\n").await;
    let mut a = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(a.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    redis.kill();
    // The connected client gets an error or a close, never a hang.
    a.send_cmd(&["GET", "k"]).await;
    match tokio::time::timeout(Duration::from_secs(10), a.try_read()).await {
        Ok(None) => {}
        Ok(Some(reply)) => assert!(s(&reply).starts_with("-ERR cachegate"), "{}", s(&reply)),
        Err(_) => panic!("client hung after backend death"),
    }
    // New clients are told the upstream is unavailable, and stay connected.
    let mut b = RawClient::authed(&pki, proxy.addr).await;
    let reply = s(&b.cmd(&["PING"]).await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream unavailable"),
        "{reply}"
    );
    redis.restart().await;
    let mut recovered = false;
    for _ in 0..200 {
        if b.cmd(&["PING"]).await == b"+PONG\r\n" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "service resumes once the backend is back");
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "again"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_mid_request_gives_an_error_not_a_partial_reply() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let admin = "[admin]\nbind = \"127.0.0.1:0\"\n\n";
    let proxy = Proxy::tls_with_global(&pki, &redis, admin).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    c.send_cmd(&["BLPOP", "never", "30"]).await;
    // The request has reached the backend, which holds it.
    assert!(redis.until_blocked(1).await);
    redis.kill();
    let reply = s(&c.read().await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream connection lost"),
        "{reply}"
    );
    assert!(c.closed().await);
    // Counted, as a request on a shared connection would be.
    let metrics = proxy.admin_get("/metrics").await.1;
    let lost = "cachegate_request_failures_total{listener=\"redis-0\",reason=\"lost\"}";
    assert_eq!(metric(&metrics, lost), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_times_out_with_a_named_error() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy =
        Proxy::tls_with_tokens(&pki, &redis, "upstream.request_timeout = \"300ms\"\n").await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    c.send_cmd(&["DEBUG", "SLEEP", "2"]).await;
    assert_eq!(
        s(&c.read().await),
        "-ERR cachegate: upstream read timed out after 300ms\r\n"
    );
    assert!(c.closed().await);
    // The late reply to the abandoned request never reaches anyone. Redis answers a direct
    // PING only once the sleep is over, so the late reply has been sent by then.
    assert_eq!(redis.direct().await.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut d = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(d.cmd(&["ECHO", "mine"]).await, b"$4\r\nmine\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_reply_is_refused_whole() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(&pki, &redis, "limits.max_reply_bytes = 4096\n").await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd_bytes(&[b"SET", b"big", &[b'x'; 10_000]]).await,
        b"+OK\r\n"
    );
    let reply = s(&c.cmd(&["GET", "big"]).await);
    assert!(reply.contains("larger than 4096 bytes"), "{reply}");
    // On a shared connection the session holds no state and goes on; a pinned one closes.
    c.send_cmd(&["PING"]).await;
    match c.try_read().await {
        None => {}
        Some(r) => assert_eq!(r, b"+PONG\r\n"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let addr = proxy.addr;
    let mut c = RawClient::authed(&pki, addr).await;
    c.send_cmd(&["BLPOP", "nothing", "1"]).await;
    assert!(redis.until_blocked(1).await);
    let report = tokio::spawn(proxy.shutdown());
    assert_eq!(c.read().await, b"*-1\r\n", "in-flight request completes");
    assert!(c.closed().await, "then the connection closes");
    assert!(report.await.unwrap().drained);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_period_bounds_the_drain() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(&pki, &redis, "shutdown.grace = \"300ms\"\n").await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    c.send_cmd(&["BLPOP", "nothing", "0"]).await;
    assert!(redis.until_blocked(1).await);
    let report = tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("shutdown is bounded by the grace period");
    assert!(!report.drained);
}

/// `limits.max_buffered_bytes` bounds what the whole process buffers for its clients: a client
/// that would take it past the limit gets a clear error (a huge request, or a huge reply on its
/// own connection, close the session; a reply refused by a shared connection fails only that
/// request); the others go on, and the memory is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_buffer_bound_holds() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(&pki, &redis, "limits.max_buffered_bytes = 4000000\n").await;
    let mut bystander = RawClient::authed(&pki, proxy.addr).await;
    // A request that would need 8 MB buffered.
    let mut big = RawClient::authed(&pki, proxy.addr).await;
    big.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8000000\r\n")
        .await;
    let chunk = vec![b'x'; 1 << 20];
    let mut got = None;
    for _ in 0..8 {
        big.send(&chunk).await;
        if let Ok(Some(reply)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), big.try_read()).await
        {
            got = Some(reply);
            break;
        }
    }
    let got = match got {
        Some(reply) => s(&reply),
        None => s(&big.read().await),
    };
    assert!(got.contains("limits.max_buffered_bytes"), "{got}");
    assert_eq!(bystander.cmd(&["PING"]).await, b"+PONG\r\n");
    // A reply of 6 MB, shared and pinned.
    let mut direct = redis.direct().await;
    let value = "v".repeat(6_000_000);
    assert_eq!(direct.cmd(&["SET", "huge", &value]).await, b"+OK\r\n");
    for pin in [false, true] {
        let mut c = RawClient::authed(&pki, proxy.addr).await;
        if pin {
            assert_eq!(c.cmd(&["WATCH", "w"]).await, b"+OK\r\n");
        }
        let reply = s(&c.cmd(&["GET", "huge"]).await);
        assert!(
            reply.contains("limits.max_buffered_bytes"),
            "pinned {pin}: {:.80}",
            reply
        );
        if pin {
            // Mid-reply on its own connection: the session cannot go on.
            assert!(c.closed().await);
        } else {
            // Refused by the shared connection: only that request failed.
            assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        }
    }
    assert_eq!(bystander.cmd(&["PING"]).await, b"+PONG\r\n");
    // Given back: a smaller value goes through.
    let value = "v".repeat(1_000_000);
    assert_eq!(direct.cmd(&["SET", "big", &value]).await, b"+OK\r\n");
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["GET", "big"]).await.len(), 1_000_000 + 12);
}

/// A client that asks for large replies and does not read them cannot make the others'
/// requests fail: when the process's buffers fill, the session holding the most of them is
/// evicted (its connection closed, as Redis 7's `maxmemory-clients` does) and the request that
/// found them full goes through. A reviewer had every other client's `PING` refused with
/// "buffers at their limit" for as long as such a client kept its connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_evicted_and_the_others_go_on() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_global(
        &pki,
        &redis,
        "limits.max_buffered_bytes = 4000000\n[admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    let mut direct = redis.direct().await;
    assert_eq!(
        direct.cmd(&["SET", "big", &"v".repeat(500_000)]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        direct.cmd(&["SET", "mine", "bystander-own"]).await,
        b"+OK\r\n"
    );
    let mut bystander = RawClient::authed(&pki, proxy.addr).await;
    let mut hog = RawClient::authed(&pki, proxy.addr).await;
    let hog = tokio::spawn(async move {
        // One at a time, each a request of its own on the shared connection: their replies
        // wait for a client that reads none of them, once the sockets' buffers are full.
        for _ in 0..400 {
            if !hog.try_send(&encode(&[b"GET", b"big"])).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Closed (after what the sockets held).
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while hog.try_read().await.is_some() {}
        });
        drained.await.is_ok()
    });
    let evicted =
        "cachegate_session_errors_total{listener=\"redis-0\",blame=\"client\",cause=\"evicted\"}";
    let mut rounds = 0;
    loop {
        // Every request of the other client is served meanwhile, large ones too, and with
        // its own replies (a key of its own: the evicted client's are never handed on).
        assert_eq!(
            bystander.cmd(&["GET", "mine"]).await,
            b"$13\r\nbystander-own\r\n",
            "round {rounds}"
        );
        assert_eq!(
            bystander.cmd(&["PING"]).await,
            b"+PONG\r\n",
            "round {rounds}"
        );
        let got = bystander.cmd(&["GET", "big"]).await;
        assert_eq!(got.len(), 500_000 + 11, "round {rounds}: {:.100}", s(&got));
        rounds += 1;
        if metric(&proxy.admin_get("/metrics").await.1, evicted) == 1.0 {
            break;
        }
        assert!(
            rounds < 2000,
            "the client that does not read was never evicted"
        );
    }
    assert!(hog.await.unwrap(), "the evicted connection stays open");
    // One batch of 200 (pipelined in one write): its replies wait in the shared connection's
    // read buffer until the last has come, charged to that client: past the bound its batch
    // fails, as one refusal per command, and the others go on.
    let mut batch = RawClient::authed(&pki, proxy.addr).await;
    batch.send(&encode(&[b"GET", b"big"]).repeat(200)).await;
    let first = s(&batch.read().await);
    assert!(first.contains("limits.max_buffered_bytes"), "{first:.100}");
    assert_eq!(bystander.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(bystander.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// While the backend is down, every request is answered at once (not after a backoff timer,
/// which once made redis-cli look hung for seconds), on shared and pinned paths alike; and the
/// first request after the backend returns is served, not failed until a timer fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_answers_at_once_and_the_first_request_after_it_returns_works() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let mut shared = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(shared.cmd(&["PING"]).await, b"+PONG\r\n");
    redis.kill();
    // A budget far above "at once" and far below the 5 s backoff ceiling.
    let quick = std::time::Duration::from_millis(1500);
    for _ in 0..8 {
        let started = std::time::Instant::now();
        let reply = s(&shared.cmd(&["PING"]).await);
        assert!(reply.starts_with("-ERR cachegate: upstream"), "{reply}");
        assert!(started.elapsed() < quick, "{:?}", started.elapsed());
        let mut pinned = RawClient::authed(&pki, proxy.addr).await;
        let started = std::time::Instant::now();
        let reply = s(&pinned.cmd(&["WATCH", "k"]).await);
        assert!(reply.starts_with("-ERR cachegate: upstream"), "{reply}");
        assert!(started.elapsed() < quick, "{:?}", started.elapsed());
    }
    redis.restart().await;
    // A request tries a connect itself once the last try is 100 ms old.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(shared.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut pinned = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(pinned.cmd(&["WATCH", "k"]).await, b"+OK\r\n");
}

/// Inline commands are split into words as Redis splits them (`sdssplitargs`: C's `isspace`,
/// quotes and their escapes): each line, on a fresh connection, gets the reply redis-server
/// gives it directly. Before 2026-11-30 a form feed ended a word here and not in Redis, a quote
/// in the middle of a word was taken as a letter, and a NUL did not end the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_split_as_redis_splits_them() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_open(&pki, &redis, "").await;
    let fixed: &[&[u8]] = &[
        b"ECHO a\r\n",
        b"ECHO\tb\r\n",
        b"ECHO\x0bc\r\n",
        b"ECHO\x0cd\r\n",
        b"ECHO \x0b e \x0c\r\n",
        b"ECHO\re\r\n",
        b"ECHO \"a b\"\r\n",
        b"ECHO \"\\x41\\n\\t\"\r\n",
        b"ECHO 'it\\'s'\r\n",
        b"ECHO \"a\"\x0b\r\n",
        b"ECHO 'a'\x0c\r\n",
        b"ECHO \"a\"b\r\n",
        b"ECHO 'a\r\n",
        b"\x0b\x0c\t PING\r\n",
        // Quotes opening mid-word.
        b"ECHO a\"b c\"\r\n",
        b"ECHO a'b c'\r\n",
        b"ECHO a\"b\"c\r\n",
        b"ECHO \"a\"'b'\r\n",
        b"ECHO 'a\\'\r\n",
        b"ECHO \"\\xZZ\\x4\"\r\n",
    ];
    let mut lines: Vec<Vec<u8>> = fixed.iter().map(|l| l.to_vec()).collect();
    // And lines generated from the characters that matter to the splitter, `ECHO` first (any
    // number of words: arity errors are compared too).
    let alphabet = b" \t\x0b\x0c\r\"'\\x4fa";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        let mut line = b"ECHO ".to_vec();
        for _ in 0..1 + seed % 12 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            line.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        line.extend_from_slice(b"\r\n");
        lines.push(line);
    }
    for line in &lines {
        let mut ours = RawClient::tls(&pki, proxy.addr).await;
        let mut theirs = redis.direct().await;
        ours.send(line).await;
        theirs.send(line).await;
        assert_eq!(
            s(&ours.read().await),
            s(&theirs.read().await),
            "{:?}",
            s(line)
        );
    }
    // A NUL: Redis looks for the line's end only as far as it, so it never runs the line (it
    // waits, then refuses it as too big); cachegate refuses it at once, and closes.
    let mut ours = RawClient::tls(&pki, proxy.addr).await;
    ours.send(b"ECHO a\0 FLUSHALL\r\n").await;
    assert_eq!(
        ours.read().await,
        b"-ERR Protocol error: NUL byte in inline request\r\n"
    );
    assert!(ours.closed().await);
}

/// An upstream that stops reading (its socket full) fails the requests on its shared
/// connection at the request timeout, as one that stops answering does: a pipeline of 30 MB
/// of `SET`s to a paused backend gets its errors, instead of waiting for as long as the
/// backend stays paused (found by a reviewer). Once it reads again, clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_an_upstream_that_stopped_reading_times_out() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.shared_connections = 1\nupstream.request_timeout = \"1s\"\n\
         upstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    redis.pause(true);
    let value = vec![b'v'; 1 << 20];
    let set = encode(&[b"SET", b"k", &value]);
    let wire = set.repeat(30);
    let mut reader = c;
    let sending = tokio::spawn(async move {
        reader.send(&wire).await;
        reader
    });
    let mut c = tokio::time::timeout(std::time::Duration::from_secs(20), sending)
        .await
        .expect("the pipeline is taken in")
        .unwrap();
    for _ in 0..30 {
        let reply = s(&c.read().await);
        assert!(
            reply.starts_with("-ERR cachegate: upstream") && reply.contains("timed out"),
            "{reply}"
        );
    }
    redis.pause(false);
    assert!(
        eventually(|| async {
            let mut after = RawClient::tls(&pki, proxy.addr).await;
            after.cmd(&["PING"]).await == b"+PONG\r\n"
        })
        .await
    );
}

/// Requests that get no reply are counted by cause, the upstream's or cachegate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_reply_are_counted_by_cause() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    redis.kill();
    let mut d = RawClient::tls(&pki, proxy.addr).await;
    let mut unavailable = false;
    for _ in 0..3 {
        let reply = s(&d.cmd(&["PING"]).await);
        assert!(reply.starts_with("-ERR cachegate: upstream"), "{reply}");
        unavailable |= reply.starts_with("-ERR cachegate: upstream unavailable");
    }
    assert!(unavailable);
    let text = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(
            &text,
            "cachegate_request_failures_total{listener=\"redis-0\",reason=\"unavailable\"}"
        ) >= 1.0,
        "{text}"
    );
}

/// Every request that gets an error instead of a reply is counted by cause, on a connection of
/// the session's own too, and a session ended by an error is counted by blame and cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_cause_and_blame() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let admin = "[admin]\nbind = \"127.0.0.1:0\"\n\n";
    let proxy = Proxy::tls_with_global(&pki, &redis, admin).await;
    // The client's doing: a malformed request ends its session.
    let mut bad = RawClient::authed(&pki, proxy.addr).await;
    bad.send(b"*1\r\n$x\r\n").await;
    assert!(s(&bad.read().await).starts_with("-ERR Protocol error"));
    assert!(bad.closed().await);
    // A pinned command finds no upstream.
    redis.kill();
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let reply = s(&c.cmd(&["WATCH", "k"]).await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream unavailable"),
        "{reply}"
    );
    let l = "listener=\"redis-0\"";
    let counted = |name: String| {
        let proxy = &proxy;
        async move { metric(&proxy.admin_get("/metrics").await.1, &name) }
    };
    let unavailable = format!("cachegate_request_failures_total{{{l},reason=\"unavailable\"}}");
    assert!(counted(unavailable).await >= 1.0);
    // The session's end is counted once its task has finished.
    let protocol =
        format!("cachegate_session_errors_total{{{l},blame=\"client\",cause=\"protocol\"}}");
    assert!(
        eventually(|| {
            let counting = counted(protocol.clone());
            async move { counting.await == 1.0 }
        })
        .await
    );
}
