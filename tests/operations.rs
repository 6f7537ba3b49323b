//! Running cachegate behind load balancers and through a TLS migration: the source
//! allow-list, PROXY protocol from trusted balancers, and the "preferred" transit mode.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;

fn config(pki: &Pki, redis: &Redis, extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}\
         auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n{extra}",
        pki.tls_toml(),
        redis.address()
    )
}

async fn proxy(pki: &Pki, redis: &Redis, extra: &str) -> Proxy {
    Proxy::start(&config(pki, redis, extra)).await
}

/// A TCP connection from `source`, with `prefix` written first (a PROXY header), then TLS.
async fn tls_after(
    pki: &Pki,
    addr: SocketAddr,
    source: &str,
    prefix: &[u8],
) -> std::io::Result<RawClient> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    tls_over(pki, socket.connect(addr).await?, prefix).await
}

/// TLS on a connection already open, after `prefix`.
async fn tls_over(
    pki: &Pki,
    mut tcp: tokio::net::TcpStream,
    prefix: &[u8],
) -> std::io::Result<RawClient> {
    tcp.write_all(prefix).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(rustls::ALL_VERSIONS, None))
        .connect(name, tcp)
        .await?;
    Ok(RawClient::new(Box::new(tls)))
}

/// A reload applies to a connection still waiting on its client when it came: one accepted
/// before the reload and whose PROXY header (or, on a `preferred` listener, first byte) comes
/// after it is judged by the new allow-list (it was judged by the one in force when it was
/// accepted, found by a reviewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_connections_still_waiting_on_their_client() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let balanced =
        "proxy_protocol = { trusted = [\"127.0.0.2/32\"] }\nallow = [\"192.0.2.0/24\"]\n";
    let proxy = proxy(&pki, &redis, balanced).await;
    let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 6380\r\n";
    assert!(served(tls_after(&pki, proxy.addr, "127.0.0.2", header).await).await);
    let waiting = tcp_from("127.0.0.2", proxy.addr).await;
    let moved = balanced.replace("192.0.2.0/24", "198.51.100.0/24");
    proxy
        .reload_with(&config(&pki, &redis, &moved))
        .await
        .unwrap();
    assert!(!served(tls_over(&pki, waiting, header).await).await);
    let now_allowed = b"PROXY TCP4 198.51.100.1 10.0.0.1 51000 6380\r\n";
    assert!(served(tls_after(&pki, proxy.addr, "127.0.0.2", now_allowed).await).await);

    // A preferred listener waiting for a client's first byte.
    let preferred = "tls.transit_encryption_mode = \"preferred\"\nallow = [\"127.0.0.4/32\"]\n";
    proxy
        .reload_with(&config(&pki, &redis, preferred))
        .await
        .unwrap();
    let mut plain = RawClient::new(Box::new(tcp_from("127.0.0.4", proxy.addr).await));
    assert_eq!(plain.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut waiting = RawClient::new(Box::new(tcp_from("127.0.0.4", proxy.addr).await));
    let tls_waiting = tcp_from("127.0.0.4", proxy.addr).await;
    let moved = preferred.replace("127.0.0.4", "127.0.0.5");
    proxy
        .reload_with(&config(&pki, &redis, &moved))
        .await
        .unwrap();
    waiting.send_cmd(&["PING"]).await;
    assert!(waiting.closed().await);
    assert!(!served(tls_over(&pki, tls_waiting, b"").await).await);
}

/// Whether a client is served: a PING answered.
async fn served(client: std::io::Result<RawClient>) -> bool {
    match client {
        Ok(mut c) => {
            c.send_cmd(&["PING"]).await;
            matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), c.try_read()).await,
                Ok(Some(reply)) if reply == b"+PONG\r\n"
            )
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_sources_get_a_handshake() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "allow = [\"127.0.0.2/32\", \"::1\"]\n").await;
    assert!(served(tls_after(&pki, proxy.addr, "127.0.0.2", b"").await).await);
    assert!(!served(tls_after(&pki, proxy.addr, "127.0.0.3", b"").await).await);
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "cachegate_connections_rejected_total{listener=\"edge\",reason=\"not_allowed\"}"
        ),
        1.0,
        "{text}"
    );
    // Refused before any TLS work: no handshake was counted, failed or not.
    assert!(!text.contains("cachegate_tls_handshake_failures_total{listener=\"edge\""));
    // And as a security event (ACL LOG keeps it).
    assert!(
        metric(
            &text,
            "cachegate_security_events_total{listener=\"edge\",reason=\"connection\"}"
        ) >= 1.0
    );
    let bad = cachegate::config::parse(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"none\"\nallow = [\"10.0.0.0/33\", \"nope\"]\nupstream.address = \"127.0.0.1:1\"\n",
        "t",
        std::path::Path::new("."),
    )
    .unwrap_err();
    assert_eq!(bad.problems.len(), 2, "{bad}");
}

/// Behind a balancer, the PROXY header's client address is the one the allow-list and the
/// session see; headers are believed only from trusted balancers, and a trusted balancer's
/// connection without a valid header is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_trusted_balancers() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "proxy_protocol = { trusted = [\"127.0.0.2/32\"] }\nallow = [\"192.0.2.0/24\"]\n",
    )
    .await;
    let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 6380\r\n";
    let mut c = tls_after(&pki, proxy.addr, "127.0.0.2", v1).await.unwrap();
    let info = s(&c.cmd(&["CLIENT", "INFO"]).await);
    assert!(info.contains("addr=192.0.2.7:51000"), "{info}");
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "192.0.2.9:40000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:6380".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let mut c = tls_after(&pki, proxy.addr, "127.0.0.2", &v2).await.unwrap();
    assert!(s(&c.cmd(&["CLIENT", "INFO"]).await).contains("addr=192.0.2.9:40000"));
    // A client outside the allow-list, behind the trusted balancer.
    let outside = b"PROXY TCP4 198.51.100.1 10.0.0.1 51000 6380\r\n";
    assert!(!served(tls_after(&pki, proxy.addr, "127.0.0.2", outside).await).await);
    // The same header from an untrusted source, and the trusted one without a header.
    assert!(!served(tls_after(&pki, proxy.addr, "127.0.0.3", v1).await).await);
    assert!(!served(tls_after(&pki, proxy.addr, "127.0.0.2", b"").await).await);
    let text = proxy.admin_get("/metrics").await.1;
    for (reason, n) in [
        ("not_allowed", 1.0),
        ("untrusted_proxy", 1.0),
        ("proxy_header", 1.0),
    ] {
        assert_eq!(
            metric(
                &text,
                &format!(
                    "cachegate_connections_rejected_total{{listener=\"edge\",reason=\"{reason}\"}}"
                )
            ),
            n,
            "{reason}: {text}"
        );
    }
}

/// `transit_encryption_mode = "preferred"` serves TLS and plaintext on one port (decided by
/// the first byte), and counts each, so an operator sees when the last plaintext client is
/// gone. Plaintext is never allowed where client certificates are required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_mode_serves_both_and_counts_plaintext() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(
        &pki,
        &redis,
        "tls.transit_encryption_mode = \"preferred\"\n",
    )
    .await;
    let mut tls = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(tls.cmd(&["PING"]).await, b"+PONG\r\n");
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut plain = RawClient::new(Box::new(tcp));
    assert_eq!(plain.cmd(&["PING"]).await, b"+PONG\r\n");
    assert_eq!(plain.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    let text = proxy.admin_get("/metrics").await.1;
    let plaintext = text
        .lines()
        .find(|l| {
            l.starts_with("cachegate_connections_total{listener=\"edge\"")
                && l.contains("tls=\"false\"")
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(plaintext.ends_with(" 1"), "{plaintext}");
    let err = cachegate::config::parse(
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"none\"\n{}tls.client_auth = \"required\"\ntls.client_ca = {:?}\ntls.transit_encryption_mode = \"preferred\"\nupstream.address = \"127.0.0.1:1\"\n",
            pki.tls_toml(),
            pki.ca
        ),
        "t",
        std::path::Path::new("."),
    )
    .unwrap_err();
    assert!(err.to_string().contains("transit_encryption_mode"), "{err}");
}

/// A plain TCP connection from `source` (any 127.0.0.0/8 address).
async fn tcp_from(source: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Asks `/live` on a connection the admin listener should close unanswered, and says so.
async fn closed_unanswered(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp
        .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), tcp.read_to_end(&mut out))
        .await
        .expect("closed, not left waiting");
    assert!(out.is_empty(), "{}", s(&out));
}

/// The admin listener bounds its connections: past `MAX_CONNECTIONS` open at once, a new one
/// is closed unanswered (a client that opens connections and sends nothing cannot use up the
/// process's file descriptors), and one that sends no complete request is closed after the
/// header timeout, freeing its place; a scraper is served again once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_bounds_its_connections() {
    use tokio::io::AsyncReadExt;
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let admin = proxy.admin.unwrap();
    let sources = cachegate::admin::MAX_CONNECTIONS / cachegate::admin::MAX_CONNECTIONS_PER_SOURCE;
    let mut idle = Vec::new();
    for i in 0..sources {
        for _ in 0..cachegate::admin::MAX_CONNECTIONS_PER_SOURCE {
            idle.push(tcp_from(&format!("127.0.1.{}", i + 1), admin).await);
        }
    }
    // The one past the limit, from a source that holds none: closed at once, without an
    // answer (it waits for none).
    closed_unanswered(tcp_from("127.0.2.1", admin).await).await;
    // The idle ones are closed at the header timeout, all of them.
    let started = std::time::Instant::now();
    for c in &mut idle {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(cachegate::admin::HEADER_TIMEOUT * 3, c.read(&mut buf))
            .await
            .expect("closed at the header timeout");
        assert!(
            matches!(n, Ok(0) | Err(_)) || s(&buf).contains("408"),
            "{}",
            s(&buf)
        );
    }
    assert!(started.elapsed() >= cachegate::admin::HEADER_TIMEOUT / 2);
    assert_eq!(proxy.admin_get("/live").await.0, 200);
}

/// The loopback admin listener answers requests that name it as loopback is named (localhost
/// or an IP address, or no `Host`): a web page that rebinds its own DNS name to 127.0.0.1
/// sends that name, and gets `421` instead of `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_admin_listener_refuses_other_host_names() {
    use tokio::io::AsyncReadExt;
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    let get = |head: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(format!("GET /metrics {head}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        s(&out).get(9..12).unwrap_or("").to_string()
    };
    for host in [
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            get(format!("HTTP/1.1\r\nHost: {host}\r\n")).await,
            "200",
            "{host}"
        );
    }
    assert_eq!(get("HTTP/1.0\r\n".into()).await, "200");
    for host in [
        format!("rebound.example:{port}"),
        "localhost.example".to_string(),
        "127.0.0.1.example".to_string(),
        "[::1".to_string(),
    ] {
        assert_eq!(
            get(format!("HTTP/1.1\r\nHost: {host}\r\n")).await,
            "421",
            "{host}"
        );
    }
}

/// One source that opens admin connections and sends nothing takes at most its share of the
/// places: its connection past `MAX_CONNECTIONS_PER_SOURCE` is closed unanswered, while the
/// orchestrator's `/live` probe from another address is answered (with one cap for all, one
/// client could keep the probe refused until the process is restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_admin_place() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "").await;
    let admin = proxy.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..cachegate::admin::MAX_CONNECTIONS_PER_SOURCE {
        held.push(tcp_from("127.0.0.2", admin).await);
    }
    closed_unanswered(tcp_from("127.0.0.2", admin).await).await;
    assert_eq!(proxy.admin_get("/live").await.0, 200);
    // Its places come back as its connections close.
    drop(held);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let mut tcp = tcp_from("127.0.0.2", admin).await;
            let _ = tcp
                .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut out).await;
            if !out.is_empty() {
                return s(&out).split(' ').nth(1).unwrap_or("").to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("served again once its connections closed");
    assert_eq!(status, "200");
}

/// `max_connections_per_source`: one source (here 127.0.0.2) holds at most that many
/// connections, refused past it (counted as `per_source`), and gets a place again when one of
/// its connections closes; another source (127.0.0.3) is not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_the_connections() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = proxy(&pki, &redis, "max_connections_per_source = 2\n").await;
    let mut first = tls_after(&pki, proxy.addr, "127.0.0.2", b"").await.unwrap();
    assert_eq!(first.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut second = tls_after(&pki, proxy.addr, "127.0.0.2", b"").await.unwrap();
    assert_eq!(second.cmd(&["PING"]).await, b"+PONG\r\n");
    assert!(!served(tls_after(&pki, proxy.addr, "127.0.0.2", b"").await).await);
    assert!(served(tls_after(&pki, proxy.addr, "127.0.0.3", b"").await).await);
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "cachegate_connections_rejected_total{listener=\"edge\",reason=\"per_source\"}"
        ),
        1.0,
        "{text}"
    );
    drop(first);
    assert!(
        eventually(|| async { served(tls_after(&pki, proxy.addr, "127.0.0.2", b"").await).await })
            .await,
        "the closed connection's place never came back"
    );
    assert_eq!(second.cmd(&["PING"]).await, b"+PONG\r\n");
}
