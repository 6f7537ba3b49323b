//! Security events and metrics: what happened is counted, logged (ACL LOG) and exported on the
//! admin listener; brute force is cut off per connection and slowed per source address.

mod common;

use std::time::Duration;

use common::*;

const USERS: &str = r#"
[[users]]
name = "default"
acl = "off"
[[users]]
name = "app"
acl = "on >canary-pw-one >canary-pw-two ~app:* &news +@read +@write +@pubsub +acl|log"
[user_groups]
apps = ["default", "app"]
"#;

async fn proxy(pki: &Pki, redis: &Redis, auth_extra: &str) -> Proxy {
    Proxy::start(&format!(
        "{USERS}\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"apps\"\n{auth_extra}\
         upstream.address = {:?}\nupstream.health_interval = \"100ms\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_never_a_secret() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&c.cmd(&["AUTH", "app", "canary-wrong"]).await).starts_with("-WRONGPASS"));
    assert!(s(&c.cmd(&["AUTH", "canary-typed-as-user", "x"]).await).starts_with("-WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "app", "canary-pw-one"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["AUTH", "app", "canary-pw-two"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["AUTH", "app", "canary-pw-two"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["GET", "other"]).await).starts_with("-NOPERM"));
    assert!(s(&c.cmd(&["CONFIG", "GET", "maxmemory"]).await).starts_with("-NOPERM"));
    assert!(s(&c.cmd(&["PUBLISH", "other", "x"]).await).starts_with("-NOPERM"));
    assert_eq!(c.cmd(&["SET", "app:1", "v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "app:1"]).await, b"$1\r\nv\r\n");
    // A TLS 1.2 client, and plaintext on the TLS port.
    let tls12 = pki.client_config(&[&rustls::version::TLS12], None);
    drop(RawClient::try_tls(tls12, proxy.addr).await.unwrap());
    let mut plain = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"PING\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut sink).await;

    let mut text = String::new();
    for _ in 0..50 {
        text = proxy.admin_get("/metrics").await.1;
        if text.contains("reason=\"not_tls\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = "listener=\"edge\"";
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_authentication_failures_total{{{l},user=\"app\"}}")
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_authentication_failures_total{{{l},user=\"unknown\"}}")
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_authentications_total{{{l},user=\"app\",slot=\"1\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_authentications_total{{{l},user=\"app\",slot=\"2\"}}")
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_key_authorization_failures_total{{{l},user=\"app\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_command_authorization_failures_total{{{l},user=\"app\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_channel_authorization_failures_total{{{l},user=\"app\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_commands_total{{{l},command=\"set\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_command_duration_seconds_count{{{l},command=\"get\"}}")
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!(
                "cachegate_connections_total{{{l},tls_version=\"TLSv1.2\",tls=\"true\",client_cert=\"none\"}}"
            )
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!(
                "cachegate_connections_total{{{l},tls_version=\"TLSv1.3\",tls=\"true\",client_cert=\"none\"}}"
            )
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("cachegate_tls_handshake_failures_total{{{l},reason=\"not_tls\"}}")
        ),
        1.0
    );
    assert!(
        !text.contains("canary"),
        "no secret and no client-chosen name in metrics:\n{text}"
    );
    // Nor in ACL LOG: a name that is no user may be a password typed in the wrong place.
    let log = s(&c.cmd(&["ACL", "LOG"]).await);
    assert!(
        log.contains("(unknown user)") && !log.contains("canary"),
        "{log}"
    );
}

/// An HTTP request on the Redis port (a web page making a browser post to a local-dev
/// cachegate without AUTH) is a cross-protocol attack: the connection is closed at `POST` or
/// `Host:`, as Redis does, nothing after it runs, and a security event is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_closed_unanswered() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"dev\"\nbind = \"127.0.0.1:0\"\n{}\
         auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut direct = redis.direct().await;
    assert_eq!(direct.cmd(&["SET", "keep", "1"]).await, b"+OK\r\n");
    for request in [
        &b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nFLUSHALL\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nFLUSHALL\r\n",
    ] {
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        c.send(request).await;
        let mut replies = 0;
        while c.try_read().await.is_some() {
            replies += 1;
        }
        assert!(replies <= 1, "at most GET's own error before Host: closes");
    }
    assert_eq!(direct.cmd(&["GET", "keep"]).await, b"$1\r\n1\r\n");
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "cachegate_security_events_total{listener=\"dev\",reason=\"cross_protocol\"}"
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_log_has_redis_shape() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["AUTH", "app", "canary-pw-one"]).await, b"+OK\r\n");
    for _ in 0..2 {
        assert!(s(&c.cmd(&["GET", "secret:1"]).await).starts_with("-NOPERM"));
    }
    assert_eq!(
        c.cmd(&["MULTI"]).await.first(),
        Some(&b'-'),
        "app has no @transaction"
    );
    let log = s(&c.cmd(&["ACL", "LOG"]).await);
    // The same fields as Redis 7.0, in the same order.
    let mut direct = redis.direct().await;
    direct.cmd(&["AUTH", "nobody", "x"]).await;
    let theirs = s(&direct.cmd(&["ACL", "LOG"]).await);
    let fields = |t: &str| -> Vec<String> {
        t.split("\r\n")
            .filter(|l| {
                [
                    "count",
                    "reason",
                    "context",
                    "object",
                    "username",
                    "age-seconds",
                    "client-info",
                ]
                .contains(l)
            })
            .take(7)
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(fields(&log), fields(&theirs), "{log}");
    assert!(
        log.starts_with("*2\r\n*14\r\n"),
        "two entries, newest first: {log}"
    );
    assert!(log.contains("$6\r\nreason\r\n$7\r\ncommand\r\n") && log.contains("$5\r\nmulti\r\n"));
    assert!(
        log.contains("$6\r\nobject\r\n$8\r\nsecret:1\r\n") && log.contains("$5\r\ncount\r\n:2\r\n"),
        "{log}"
    );
    assert_eq!(c.cmd(&["ACL", "LOG", "RESET"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["ACL", "LOG"]).await, b"*0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_ready() {
    let (pki, mut redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    assert_eq!(proxy.admin_get("/live").await.0, 200);
    let mut ready = 0;
    for _ in 0..100 {
        ready = proxy.admin_get("/ready").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    redis.kill();
    for _ in 0..100 {
        ready = proxy.admin_get("/ready").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503, "not ready once no upstream answers");
    assert_eq!(proxy.admin_get("/live").await.0, 200, "still live");
    assert_eq!(proxy.admin_get("/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_close_the_connection() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "auth.max_failures = 3\nauth.backoff_after = 100\n",
    )
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    for _ in 0..3 {
        assert!(s(&c.cmd(&["AUTH", "app", "wrong-guess"]).await).starts_with("-WRONGPASS"));
    }
    assert!(c.closed().await, "closed after the third failure");
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "cachegate_authentication_throttled_total{listener=\"edge\"}"
        ),
        1.0,
        "{text}"
    );
}

/// Failures from 127.0.0.2 slow 127.0.0.2 down, not 127.0.0.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_is_per_source_address() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "auth.max_failures = 0\nauth.backoff_after = 2\nauth.backoff_max = \"2s\"\n",
    )
    .await;
    // A few failures are free: the right token from the same address is not delayed.
    let mut attacker = RawClient::tls_from(&pki, proxy.addr, "127.0.0.2").await;
    assert!(s(&attacker.cmd(&["AUTH", "app", "wrong-guess"]).await).starts_with("-WRONGPASS"));
    let mut neighbour = RawClient::tls_from(&pki, proxy.addr, "127.0.0.2").await;
    let mut other = RawClient::tls_from(&pki, proxy.addr, "127.0.0.3").await;
    neighbour.send_cmd(&["AUTH", "app", "canary-pw-one"]).await;
    assert_eq!(neighbour.read().await, b"+OK\r\n");
    // Past them, every attempt from the address waits, the right one too (otherwise the
    // absence of a fast +OK would tell a wrong guess at once): another address goes first.
    for _ in 0..4 {
        attacker.send_cmd(&["AUTH", "app", "wrong-guess"]).await;
        let _ = attacker.read().await;
    }
    let mut late = RawClient::tls_from(&pki, proxy.addr, "127.0.0.2").await;
    late.send_cmd(&["AUTH", "app", "canary-pw-one"]).await;
    other.send_cmd(&["AUTH", "app", "canary-pw-one"]).await;
    let first = tokio::select! {
        r = other.read() => ("other", r),
        r = late.read() => ("late", r),
    };
    assert_eq!(first, ("other", b"+OK\r\n".to_vec()));
    // Parallel connections queue for the same slots; a queue longer than backoff_max is
    // refused unchecked (and the connection closed, so it holds no slot of the listener).
    let mut parallel = Vec::new();
    for _ in 0..12 {
        let mut c = RawClient::tls_from(&pki, proxy.addr, "127.0.0.2").await;
        c.send_cmd(&["AUTH", "app", "wrong-guess"]).await;
        parallel.push(c);
    }
    let mut refused = 0;
    for c in &mut parallel {
        if s(&c.read().await).contains("too many failed authentications") {
            refused += 1;
            assert!(c.closed().await);
        }
    }
    assert!(refused > 0);
    let text = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(
            &text,
            "cachegate_authentication_throttled_total{listener=\"edge\"}"
        ) >= 1.0,
        "{text}"
    );
}
