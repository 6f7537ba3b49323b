//! TLS on the client side and the upstream side, against a real redis-server.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_are_accepted() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let mut c = RawClient::try_tls(pki.client_config(versions, None), proxy.addr)
            .await
            .unwrap();
        assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    }
}

/// The server's cipher order decides: AES-128-GCM although rustls clients, like OpenSSL ones,
/// list AES-256-GCM first; a client offering only ChaCha20 still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes128_gcm_is_preferred_and_chacha20_still_offered() {
    use rustls::CipherSuite as C;
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let suite = |config| async move {
        let tls = tls_stream(config, proxy.addr).await.unwrap();
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    };
    let tls13 = pki.client_config(&[&rustls::version::TLS13], None);
    assert_eq!(
        tls13.crypto_provider().cipher_suites[0].suite(),
        C::TLS13_AES_256_GCM_SHA384
    );
    assert_eq!(suite(tls13).await, C::TLS13_AES_128_GCM_SHA256);
    let tls12 = pki.client_config(&[&rustls::version::TLS12], None);
    assert_eq!(
        suite(tls12).await,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == C::TLS13_CHACHA20_POLY1305_SHA256);
    let chacha = pki.client_config_with(provider, &[&rustls::version::TLS13], None);
    assert_eq!(suite(chacha).await, C::TLS13_CHACHA20_POLY1305_SHA256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_tls12() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "tls.min_version = \"1.3\"\n").await;
    let tls12 = pki.client_config(&[&rustls::version::TLS12], None);
    assert!(RawClient::try_tls(tls12, proxy.addr).await.is_err());
    let tls13 = pki.client_config(&[&rustls::version::TLS13], None);
    assert!(RawClient::try_tls(tls13, proxy.addr).await.is_ok());
}

/// A TLS 1.1 ClientHello (no supported_versions extension) gets a fatal alert, never a
/// ServerHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_is_refused() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x14, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await;
    assert!(!reply.is_empty(), "expected an alert");
    assert_eq!(
        reply[0], 0x15,
        "first record must be an alert, got {reply:02x?}"
    );
    // One fatal alert (handshake_failure or protocol_version) and nothing else.
    assert_eq!(reply.len(), 7, "{reply:02x?}");
    assert_eq!(reply[5], 2, "fatal");
    assert!(matches!(reply[6], 40 | 70), "{reply:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificate_is_enforced() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let extra = format!(
        "tls.client_auth = \"required\"\ntls.client_ca = {:?}\n",
        pki.ca
    );
    let proxy = Proxy::tls_with_tokens(&pki, &redis, &extra).await;
    // Without a certificate: the TLS 1.3 handshake "succeeds" on the client side, then the
    // server's alert arrives on first read.
    let no_cert =
        RawClient::try_tls(pki.client_config(rustls::ALL_VERSIONS, None), proxy.addr).await;
    if let Ok(mut c) = no_cert {
        c.send_cmd(&["PING"]).await;
        assert!(c.closed().await, "no-certificate client must be cut off");
    }
    // A certificate from another CA.
    let rogue = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.rogue_cert, &pki.rogue_key)),
    );
    if let Ok(mut c) = RawClient::try_tls(rogue, proxy.addr).await {
        c.send_cmd(&["PING"]).await;
        assert!(c.closed().await, "foreign certificate must be refused");
    }
    let good = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let mut c = RawClient::try_tls(good, proxy.addr).await.unwrap();
    assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// `tls.client_crl`: a client certificate its CA has revoked is refused in the handshake
/// (required and optional modes alike); the others get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    for mode in ["required", "optional"] {
        let extra = format!(
            "tls.client_auth = \"{mode}\"\ntls.client_ca = {:?}\ntls.client_crl = {:?}\n",
            pki.ca, pki.crl
        );
        let proxy = Proxy::tls_with_tokens(&pki, &redis, &extra).await;
        let revoked = pki.client_config(
            rustls::ALL_VERSIONS,
            Some((&pki.revoked_cert, &pki.revoked_key)),
        );
        if let Ok(mut c) = RawClient::try_tls(revoked, proxy.addr).await {
            c.send_cmd(&["PING"]).await;
            assert!(
                c.closed().await,
                "{mode}: a revoked certificate must be refused"
            );
        }
        let good = pki.client_config(
            rustls::ALL_VERSIONS,
            Some((&pki.client_cert, &pki.client_key)),
        );
        let mut c = RawClient::try_tls(good, proxy.addr).await.unwrap();
        assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    }
    // A CRL without client certificates to check is a configuration mistake.
    let text = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"none\"\ntls.client_crl = {:?}\nupstream.address = \"127.0.0.1:1\"\n",
        pki.crl
    );
    let err = cachegate::config::parse(&text, "t", pki.dir.path()).unwrap_err();
    assert!(err.to_string().contains("client_crl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificate_admits_both() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let extra = format!(
        "tls.client_auth = \"optional\"\ntls.client_ca = {:?}\n",
        pki.ca
    );
    let proxy = Proxy::tls_with_tokens(&pki, &redis, &extra).await;
    let mut plain = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(plain.cmd(&["PING"]).await, b"+PONG\r\n");
    let good = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let mut c = RawClient::try_tls(good, proxy.addr).await.unwrap();
    assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
    let rogue = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.rogue_cert, &pki.rogue_key)),
    );
    if let Ok(mut c) = RawClient::try_tls(rogue, proxy.addr).await {
        c.send_cmd(&["PING"]).await;
        assert!(
            c.closed().await,
            "a presented but unverifiable certificate is refused"
        );
    }
}

/// Plaintext RESP on the TLS port: closed with no reply, and nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_tls_port_gets_nothing() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_open(&pki, &redis, "").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"SET smuggled 1\r\n*3\r\n$3\r\nSET\r\n$9\r\nsmuggled2\r\n$1\r\n1\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "connection must be closed");
    assert!(reply.is_empty(), "no reply at all, got {:?}", s(&reply));
    let mut direct = redis.direct().await;
    assert_eq!(
        direct.cmd(&["EXISTS", "smuggled", "smuggled2"]).await,
        b":0\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_at_the_handshake_deadline() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "tls.handshake_timeout = \"200ms\"\n").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed by the handshake deadline");
    assert_eq!(n.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_works() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        // One client config shares its session cache across connections.
        let config = pki.client_config(versions, None);
        let mut first = RawClient::try_tls(config.clone(), proxy.addr)
            .await
            .unwrap();
        assert_eq!(first.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
        drop(first);
        let tls = tls_stream(config, proxy.addr).await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?} should resume"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_certificates_are_generated_when_none_configured() {
    install_crypto();
    let redis = Redis::start().await;
    let data = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"none\"\nupstream.address = {:?}\n",
        data.path(),
        redis.address()
    ))
    .await;
    let ca = data.path().join("dev-certs/dev-ca.pem");
    assert!(ca.is_file());
    // A client trusting only the generated CA connects to "localhost".
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = RawClient::try_tls(std::sync::Arc::new(config), proxy.addr)
        .await
        .unwrap();
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

/// A TLS listener with one token in front of a TLS upstream verified against `ca`.
fn tls_upstream(pki: &Pki, redis: &Redis, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{TOKEN:?}]\n\
         upstream.address = {:?}\nupstream.tls.ca = {ca:?}\nupstream.tls.server_name = \"localhost\"\n{extra}",
        pki.tls_toml(),
        redis.address(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_with_ca_and_server_name() {
    let pki = Pki::new();
    let redis = Redis::start_tls(&pki).await;
    let proxy = Proxy::start(&tls_upstream(&pki, &redis, &pki.ca, "")).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "over-tls"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, b"$8\r\nover-tls\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_requiring_a_client_certificate() {
    let pki = Pki::new();
    let redis = Redis::start_tls_with(&pki, true).await;
    let cert = format!(
        "upstream.tls.cert = {:?}\nupstream.tls.key = {:?}\n",
        pki.client_cert, pki.client_key
    );
    let upstream =
        |with_cert: bool| tls_upstream(&pki, &redis, &pki.ca, if with_cert { &cert } else { "" });
    let with = Proxy::start(&upstream(true)).await;
    let mut c = RawClient::authed(&pki, with.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    let without = Proxy::start(&upstream(false)).await;
    let mut c = RawClient::authed(&pki, without.addr).await;
    let reply = s(&c.cmd(&["PING"]).await);
    assert!(reply.starts_with("-ERR cachegate: upstream"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_with_wrong_ca_fails_clearly() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = Redis::start_tls(&pki).await;
    let proxy = Proxy::start(&tls_upstream(&pki, &redis, &other.ca, "")).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let reply = s(&c.cmd(&["PING"]).await);
    assert!(
        reply.starts_with("-ERR cachegate: upstream unavailable (")
            && reply.contains("TLS handshake with upstream"),
        "the error names the failing phase: {reply}"
    );
}

/// A plaintext listener for the client-side-gateway case: app on localhost, TLS to the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_listener_in_front_of_tls_upstream() {
    let pki = Pki::new();
    let redis = Redis::start_tls(&pki).await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.enabled = false\nauth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.tls.ca = {:?}\nupstream.tls.server_name = \"localhost\"\n",
        redis.address(),
        pki.ca
    ))
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut c = RawClient::new(Box::new(tcp));
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extras_quickly() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nmax_connections = 2\ntls.enabled = false\n\
         auth.mode = \"none\"\nupstream.address = {:?}\n",
        redis.address()
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::new(Box::new(TcpStream::connect(proxy.addr).await.unwrap()));
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        held.push(c);
    }
    let mut extra = RawClient::new(Box::new(TcpStream::connect(proxy.addr).await.unwrap()));
    assert_eq!(
        extra.read().await,
        b"-ERR max number of clients reached\r\n"
    );
    assert!(extra.closed().await);
    drop(held);
    assert!(
        eventually(|| async {
            let mut c = RawClient::new(Box::new(TcpStream::connect(proxy.addr).await.unwrap()));
            c.send_cmd(&["PING"]).await;
            c.try_read().await.as_deref() == Some(b"+PONG\r\n")
        })
        .await
    );
}

/// With `tls.client_crl`, every certificate of a client's chain is checked, intermediates
/// too: a client certificate under an intermediate CA its root revoked is refused (only the
/// leaf was checked, so revoking a compromised sub-CA did nothing; found by a reviewer), one
/// under an intermediate still in good standing gets in, and a chain whose intermediate's
/// standing is unknown (no CRL of its root given) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_intermediate_ca_revokes_what_it_issued() {
    use cachegate::tls::dev_certs::DevCa;
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let root = DevCa::generate_with_depth("test root", 1).unwrap();
    let (good, _) = root
        .issue_intermediate("intermediate in good standing")
        .unwrap();
    let (bad, bad_serial) = root.issue_intermediate("revoked intermediate").unwrap();
    let leaf = |ca: &DevCa, name: &str| {
        let issued = ca.issue_client(name).unwrap();
        (
            w(
                &format!("{name}.pem"),
                &format!("{}{}", issued.cert_pem, ca.cert_pem()),
            ),
            w(&format!("{name}-key.pem"), &issued.key_pem),
        )
    };
    let (good_leaf, good_key) = leaf(&good, "good-leaf");
    let (bad_leaf, bad_key) = leaf(&bad, "bad-leaf");
    let ca = w("root.pem", &root.cert_pem());
    let issuers_crls = format!(
        "{}{}{}",
        root.crl_pem(&[&bad_serial]).unwrap(),
        good.crl_pem(&[]).unwrap(),
        bad.crl_pem(&[]).unwrap()
    );
    let all = w("all.crl", &issuers_crls);
    let leaves_only = w(
        "leaves.crl",
        &format!(
            "{}{}",
            good.crl_pem(&[]).unwrap(),
            bad.crl_pem(&[]).unwrap()
        ),
    );
    let served =
        |proxy: std::net::SocketAddr, cert: std::path::PathBuf, key: std::path::PathBuf| {
            let config = pki.client_config(rustls::ALL_VERSIONS, Some((&cert, &key)));
            async move {
                match RawClient::try_tls(config, proxy).await {
                    Ok(mut c) => {
                        c.send_cmd(&["AUTH", TOKEN]).await;
                        c.try_read().await.as_deref() == Some(&b"+OK\r\n"[..])
                    }
                    Err(_) => false,
                }
            }
        };
    for (crl, good_in) in [(&all, true), (&leaves_only, false)] {
        let extra = format!(
            "tls.client_auth = \"required\"\ntls.client_ca = {ca:?}\ntls.client_crl = {crl:?}\n"
        );
        let proxy = Proxy::tls_with_tokens(&pki, &redis, &extra).await;
        assert_eq!(
            served(proxy.addr, good_leaf.clone(), good_key.clone()).await,
            good_in,
            "{crl:?}"
        );
        assert!(
            !served(proxy.addr, bad_leaf.clone(), bad_key.clone()).await,
            "{crl:?}"
        );
    }
}
