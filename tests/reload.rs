//! Reloading the configuration while serving: certificates, tokens, users and the command
//! policy change without dropping anyone; a bad or restart-only change is refused whole and the
//! last good configuration keeps serving; watched files (a Kubernetes-style symlink swap)
//! reload by themselves; certificate expiry is exported and an expired one makes /ready 503.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

/// A TLS token listener (with an admin listener) in front of `redis`, serving `pki`'s
/// certificate, accepting `tokens`, plus `extra` lines.
fn token_config(pki: &Pki, redis: &Redis, tokens: &[&str], extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[reload]\nwatch_interval = \"0s\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = {tokens:?}\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n{extra}",
        pki.tls_toml(),
        redis.address()
    )
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.admin_get("/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_token_rotate_under_load_without_a_failed_request() {
    let old_pki = Pki::new();
    let new_pki = Pki::new();
    let redis = Redis::start().await;
    let proxy = Proxy::start(&token_config(&old_pki, &redis, &[TOKEN], "")).await;
    let addr = proxy.addr;

    // Clients keep working through the reload, each on its connection.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..4 {
        let mut c = RawClient::authed(&old_pki, addr).await;
        let (stop, done) = (stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let key = format!("load:{i}");
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = n.to_string();
                let set = c.cmd(&["SET", &key, &value]).await;
                let get = c.cmd(&["GET", &key]).await;
                if set != b"+OK\r\n" || get != format!("${}\r\n{value}\r\n", value.len()).as_bytes()
                {
                    failures.push((s(&set), s(&get)));
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // The load is running before the reloads...
    assert!(
        eventually(|| async { done.load(Ordering::Relaxed) >= 100 }).await,
        "the load never got going"
    );
    let before = done.load(Ordering::Relaxed);

    // The new certificate (another CA) and a second token, then the first token removed.
    let outcome = proxy
        .reload_with(&token_config(&new_pki, &redis, &[TOKEN, TOKEN_NEW], ""))
        .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let outcome = proxy
        .reload_with(&token_config(&new_pki, &redis, &[TOKEN_NEW], ""))
        .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    // ...and goes on after them.
    assert!(
        eventually(|| async { done.load(Ordering::Relaxed) >= before + 100 }).await,
        "the load stalled after the reloads"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let failures = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    assert!(
        done.load(Ordering::Relaxed) > before,
        "the load went on after the reloads"
    );

    // New handshakes see the new certificate: a client trusting only the old CA is refused,
    // one trusting only the new CA gets in.
    let old_trust =
        RawClient::try_tls(old_pki.client_config(rustls::ALL_VERSIONS, None), addr).await;
    if let Ok(mut c) = old_trust {
        assert!(
            c.closed().await,
            "a client trusting only the old CA completed a handshake"
        );
    }
    let mut fresh = RawClient::tls(&new_pki, addr).await;
    assert!(s(&fresh.cmd(&["AUTH", TOKEN]).await).starts_with("-WRONGPASS"));
    assert_eq!(fresh.cmd(&["AUTH", TOKEN_NEW]).await, b"+OK\r\n");
    assert_eq!(fresh.cmd(&["PING"]).await, b"+PONG\r\n");

    let text = metrics(&proxy).await;
    assert_eq!(
        metric(&text, "cachegate_config_reloads_total{result=\"success\"}"),
        2.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let reloaded = metric(
        &text,
        "cachegate_config_last_reload_success_timestamp_seconds",
    );
    assert!((now - reloaded).abs() < 60.0, "{reloaded} vs {now}");
    let expiry = metric(
        &text,
        "cachegate_certificate_expiry_timestamp_seconds{listener=\"redis-0\",role=\"server\"}",
    );
    assert!(expiry > now, "the server certificate's notAfter: {expiry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_whole_and_the_last_good_one_keeps_serving() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let good = token_config(&pki, &redis, &[TOKEN], "");
    let proxy = Proxy::start(&good).await;
    let mut open = RawClient::authed(&pki, proxy.addr).await;

    // Every problem at once, as `cachegate check` reports them.
    let bad = token_config(&pki, &redis, &[TOKEN_NEW], "colour = \"blue\"\n").replace(
        &format!("{:?}", pki.server_cert.display().to_string()),
        "\"/nonexistent/server.pem\"",
    );
    let refused = proxy.reload_with(&bad).await.unwrap_err();
    assert!(refused.contains("colour"), "{refused}");
    assert!(refused.contains("/nonexistent/server.pem"), "{refused}");

    // Nothing of it applies: the old token still logs in, the new one does not.
    assert_eq!(open.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&c.cmd(&["AUTH", TOKEN_NEW]).await).starts_with("-WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");

    // What only a restart can change is named, and refused with the rest.
    let moved = token_config(&pki, &redis, &[TOKEN_NEW], "").replace(
        "upstream.address",
        "upstream.connect_timeout = \"9s\"\nupstream.address",
    );
    let refused = proxy.reload_with(&moved).await.unwrap_err();
    assert!(refused.contains("restart"), "{refused}");
    assert!(refused.contains("upstream settings"), "{refused}");
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&c.cmd(&["AUTH", TOKEN_NEW]).await).starts_with("-WRONGPASS"));

    let text = metrics(&proxy).await;
    assert_eq!(
        metric(&text, "cachegate_config_reloads_total{result=\"failure\"}"),
        2.0
    );
    // The secret never shows in what the refusal says.
    assert!(!refused.contains(TOKEN_NEW) && !refused.contains(TOKEN));
    // The threads that serve clients are set at start too.
    let threads = format!("threads = 3\n{good}");
    let refused = proxy.reload_with(&threads).await.unwrap_err();
    assert!(refused.contains("threads"), "{refused}");
    // And the good file reloads again.
    assert!(proxy.reload_with(&good).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_is_logged_out_and_the_new_policy_applies_to_open_sessions() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |users: &str, disable: &str| {
        format!(
            "{users}\n[user_groups]\napp = [\"default\", \"alice\", \"bob\"]\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"app\"\ncommands.disable = [{disable}]\ncommands.scripts = \"unguarded\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let alice = "[[users]]\nname = \"alice\"\nacl = \"on >alice-password-123 ~* &* +@all\"\n";
    let bob = "[[users]]\nname = \"bob\"\nacl = \"on >bob-password-1234 ~* &* +@all\"\n";
    let default = "[[users]]\nname = \"default\"\nacl = \"off\"\n";
    let proxy = Proxy::start(&config(&format!("{default}{alice}{bob}"), "")).await;
    let mut a = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        a.cmd(&["AUTH", "alice", "alice-password-123"]).await,
        b"+OK\r\n"
    );
    let mut b = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        b.cmd(&["AUTH", "bob", "bob-password-1234"]).await,
        b"+OK\r\n"
    );
    assert!(s(&a.cmd(&["DBSIZE"]).await).starts_with(':'));
    // Bob listens on a channel: a session that never sends another request.
    assert!(s(&b.cmd(&["SUBSCRIBE", "news"]).await).contains("subscribe"));

    // Bob is removed from the group and DBSIZE disabled.
    let reloaded = proxy
        .reload_with(
            &config(&format!("{default}{alice}{bob}"), "\"DBSIZE\"").replace(
                "app = [\"default\", \"alice\", \"bob\"]",
                "app = [\"default\", \"alice\"]",
            ),
        )
        .await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    // Alice's open session goes on, under the new policy.
    assert!(
        s(&a.cmd(&["DBSIZE"]).await).starts_with("-ERR unknown command"),
        "a command disabled by the reload still ran on an open session"
    );
    assert_eq!(a.cmd(&["PING"]).await, b"+PONG\r\n");
    // Bob's is closed at once (he would go on receiving messages otherwise): nothing
    // published after the reload reaches him, and his backend subscription ends (its
    // connection is reset in the background, so the backend's count drops soon after); he
    // cannot log in again.
    assert!(a
        .cmd(&["PUBLISH", "news", "for alice only"])
        .await
        .starts_with(b":"));
    assert!(
        b.closed().await,
        "a removed user's session stayed open or received"
    );
    assert!(
        eventually(|| async {
            let numsub = redis
                .direct()
                .await
                .cmd(&["PUBSUB", "NUMSUB", "news"])
                .await;
            numsub.ends_with(b":0\r\n")
        })
        .await,
        "the removed user's subscription still held on the backend"
    );
    let mut b = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&b.cmd(&["AUTH", "bob", "bob-password-1234"]).await).starts_with("-WRONGPASS"));

    // A user switched off is logged out too.
    let mut a2 = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        a2.cmd(&["AUTH", "alice", "alice-password-123"]).await,
        b"+OK\r\n"
    );
    let off = config(
        &format!("{default}{}{bob}", alice.replace("on >alice", "off >alice")),
        "",
    );
    assert!(proxy.reload_with(&off).await.is_ok());
    a2.send_cmd(&["PING"]).await;
    assert!(a2.closed().await, "a disabled user's session stayed open");
}

/// A user that a reload makes certificate-bound is no longer had by sessions that did not log
/// in with its certificate: one that AUTHed as it, and one that got it as a nopass default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_user_made_certificate_bound_are_closed() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |bound: bool| {
        let required = if bound { "cert_required = true\n" } else { "" };
        format!(
            "[[users]]\nname = \"default\"\nacl = \"on nopass ~* +@all\"\n{required}\
             [[users]]\nname = \"ops\"\nacl = \"on >ops-password-123 ~* +@all\"\n{required}\
             [user_groups]\napp = [\"default\", \"ops\"]\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}\
             auth.mode = \"acl\"\nauth.user_group = \"app\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config(false)).await;
    let mut by_default = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(by_default.cmd(&["PING"]).await, b"+PONG\r\n");
    let mut by_auth = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        by_auth.cmd(&["AUTH", "ops", "ops-password-123"]).await,
        b"+OK\r\n"
    );
    assert!(proxy.reload_with(&config(true)).await.is_ok());
    by_default.send_cmd(&["PING"]).await;
    assert!(
        by_default.closed().await,
        "the nopass default session stayed"
    );
    by_auth.send_cmd(&["PING"]).await;
    assert!(by_auth.closed().await, "the AUTHed session stayed");
    // And a new connection without the certificate is nobody.
    let mut fresh = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&fresh.cmd(&["PING"]).await).starts_with("-NOAUTH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_a_reloaded_crl_is_refused_in_new_handshakes() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |crl: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"required\"\ntls.client_ca = {:?}\n{crl}auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            pki.ca,
            redis.address()
        )
    };
    let proxy = Proxy::start(&config("")).await;
    let revoked = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.revoked_cert, &pki.revoked_key)),
    );
    let mut c = RawClient::try_tls(revoked.clone(), proxy.addr)
        .await
        .unwrap();
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert!(proxy
        .reload_with(&config(&format!("tls.client_crl = {:?}\n", pki.crl)))
        .await
        .is_ok());
    // TLS 1.3: the client learns of the refusal at its first read.
    let refused = match RawClient::try_tls(revoked, proxy.addr).await {
        Err(_) => true,
        Ok(mut c) => {
            c.send_cmd(&["PING"]).await;
            c.try_read().await.is_none()
        }
    };
    assert!(
        refused,
        "a revoked certificate was accepted after the reload"
    );
    // The open connection keeps its session.
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    let good = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let mut ok = RawClient::try_tls(good, proxy.addr).await.unwrap();
    assert_eq!(ok.cmd(&["PING"]).await, b"+PONG\r\n");
    // The CRL's next update (2099-01-01) is published beside the certificates' expiry, so
    // that one alert also catches a CRL pipeline that stopped while cachegate runs.
    let crl_due =
        "cachegate_certificate_expiry_timestamp_seconds{listener=\"redis-0\",role=\"client_crl\"}";
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(metric(&text, crl_due), 4_070_908_800.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_secret_mount_reloads_by_itself() {
    // A Kubernetes secret volume: files are links through `..data`, a link to a timestamped
    // directory that an update replaces at once.
    let pki = Pki::new();
    let redis = Redis::start().await;
    let mount = tempfile::tempdir().unwrap();
    let write_version = |name: &str, token: &str| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        let link = mount.path().join("..data_tmp");
        std::os::unix::fs::symlink(name, &link).unwrap();
        std::fs::rename(&link, mount.path().join("..data")).unwrap();
    };
    write_version("v1", TOKEN);
    std::os::unix::fs::symlink("..data/token", mount.path().join("token")).unwrap();
    let token_file = mount.path().join("token");
    let proxy = Proxy::start(&format!(
        "[reload]\nwatch_interval = \"100ms\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens_file = {:?}\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        token_file,
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");

    write_version("v2", TOKEN_NEW);
    let addr = proxy.addr;
    let pki_ref = &pki;
    assert!(
        eventually(|| async move {
            let mut c = RawClient::tls(pki_ref, addr).await;
            c.cmd(&["AUTH", TOKEN_NEW]).await == b"+OK\r\n"
        })
        .await,
        "the new token from the swapped mount was never accepted"
    );
    let mut c2 = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&c2.cmd(&["AUTH", TOKEN]).await).starts_with("-WRONGPASS"));
    // The session that logged in with the old token goes on.
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_serving_certificate_makes_ready_fail() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("old.pem"), dir.path().join("old-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let proxy = Proxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.cert = {cert_path:?}\ntls.key = {key_path:?}\nauth.mode = \"none\"\nupstream.address = {:?}\n",
        redis.address()
    ))
    .await;
    let text = metrics(&proxy).await;
    let expiry = metric(
        &text,
        "cachegate_certificate_expiry_timestamp_seconds{listener=\"redis-0\",role=\"server\"}",
    );
    assert_eq!(expiry, 1_609_459_200.0, "2021-01-01T00:00:00Z");
    let (status, body) = proxy.admin_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("expired"), "{body}");

    // A valid certificate, reloaded: ready again.
    let pki = Pki::new();
    let reloaded = proxy
        .reload_with(&format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\n",
            pki.tls_toml(),
            redis.address()
        ))
        .await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let ready = eventually(|| async { proxy.admin_get("/ready").await.0 == 200 }).await;
    assert!(ready, "{:?}", proxy.admin_get("/ready").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_listener_reloads_its_policy_for_open_sessions() {
    let pki = Pki::new();
    let node = Memcached::start().await;
    let proxy = Proxy::memcached(&pki, &[&node], "").await;
    let mut c = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.line("flush_all\r\n").await, "OK\r\n");
    let reloaded = proxy
        .reload_with(&format!(
            "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\ncommands.disable = [\"flush_all\"]\n",
            pki.tls_toml(),
            node.address()
        ))
        .await;
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let refused = c.line("flush_all\r\n").await;
    assert_ne!(refused, "OK\r\n", "flush_all still ran after the reload");
    assert_eq!(
        c.line("version\r\n").await.split(' ').next(),
        Some("VERSION")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstream_tls_material_is_used_by_new_upstream_connections() {
    // The backend's certificate moves to another CA (Redis reloads it with CONFIG SET);
    // cachegate follows once its upstream CA is reloaded.
    let (a, b) = (Pki::new(), Pki::new());
    let tls_port = free_port();
    let p = |f: &std::path::Path| f.display().to_string();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &p(&a.server_cert),
        "--tls-key-file",
        &p(&a.server_key),
        "--tls-ca-cert-file",
        &p(&a.ca),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let config = |ca: &std::path::Path| {
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = \"127.0.0.1:{tls_port}\"\nupstream.health_interval = \"1h\"\nupstream.tls.ca = {ca:?}\n",
            a.tls_toml()
        )
    };
    let proxy = Proxy::start(&config(&a.ca)).await;
    let mut c = RawClient::tls(&a, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");

    let mut admin = redis.direct().await;
    let set = admin
        .cmd(&[
            "CONFIG",
            "SET",
            "tls-cert-file",
            &p(&b.server_cert),
            "tls-key-file",
            &p(&b.server_key),
        ])
        .await;
    assert_eq!(set, b"+OK\r\n");
    // Every connection cachegate has is closed: the next ones must handshake again, and the
    // old CA does not verify the new certificate.
    assert!(s(&admin.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await).starts_with(':'));
    let mut c = RawClient::tls(&a, proxy.addr).await;
    let before = c.cmd(&["PING"]).await;
    assert!(
        s(&before).starts_with("-ERR cachegate: upstream"),
        "{}",
        s(&before)
    );

    assert!(proxy.reload_with(&config(&b.ca)).await.is_ok());
    let addr = proxy.addr;
    let a_ref = &a;
    assert!(
        eventually(|| async move {
            let mut c = RawClient::tls(a_ref, addr).await;
            c.cmd(&["PING"]).await == b"+PONG\r\n"
        })
        .await,
        "the reloaded upstream CA was not used"
    );
}

/// ACL users for the tests below: alice may do anything on any key and channel.
fn acl_config(pki: &Pki, redis: &Redis, users: &str, listener_extra: &str) -> String {
    format!(
        "[reload]\nwatch_interval = \"0s\"\n\n[[users]]\nname = \"default\"\nacl = \"off\"\n{users}\n[user_groups]\napp = [\"default\", \"alice\", \"app\"]\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"optional\"\ntls.client_ca = {:?}\nauth.mode = \"acl\"\nauth.user_group = \"app\"\ncommands.scripts = \"unguarded\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n{listener_extra}",
        pki.tls_toml(),
        pki.ca,
        redis.address()
    )
}

const ALICE: &str = "[[users]]\nname = \"alice\"\nacl = \"on >alice-password-123 ~* &* +@all\"\n";
const APP: &str = "[[users]]\nname = \"app\"\nacl = \"on ~* &* +@all\"\n";

async fn alice(pki: &Pki, proxy: &Proxy) -> RawClient {
    let mut c = RawClient::tls(pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["AUTH", "alice", "alice-password-123"]).await,
        b"+OK\r\n"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_logged_in_by_its_certificate_is_closed_when_the_mapping_goes() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let mapped = "auth.certificate_users = [{ cn = \"app-client\", user = \"app\" }]\n";
    let proxy = Proxy::start(&acl_config(&pki, &redis, &format!("{ALICE}{APP}"), mapped)).await;
    let with_cert = pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    );
    let mut c = RawClient::try_tls(with_cert.clone(), proxy.addr)
        .await
        .unwrap();
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, b"$3\r\napp\r\n");
    // The same certificate, logged in as alice by password: its mapping is not its login.
    let mut by_password = RawClient::try_tls(with_cert.clone(), proxy.addr)
        .await
        .unwrap();
    assert_eq!(
        by_password
            .cmd(&["AUTH", "alice", "alice-password-123"])
            .await,
        b"+OK\r\n"
    );
    assert!(proxy
        .reload_with(&acl_config(&pki, &redis, &format!("{ALICE}{APP}"), ""))
        .await
        .is_ok());
    assert!(
        c.closed().await,
        "the certificate no longer maps to app, its session stayed"
    );
    assert_eq!(by_password.cmd(&["PING"]).await, b"+PONG\r\n");
    // RESET now returns it to no one: the mapping is gone.
    assert_eq!(by_password.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert!(s(&by_password.cmd(&["PING"]).await).starts_with("-NOAUTH"));
    let mut fresh = RawClient::try_tls(with_cert, proxy.addr).await.unwrap();
    assert!(s(&fresh.cmd(&["SET", "k", "v"]).await).starts_with("-NOAUTH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_rules_reach_queued_transactions_blocked_and_subscribed_sessions() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let proxy = Proxy::start(&acl_config(&pki, &redis, &format!("{ALICE}{APP}"), "")).await;
    let mut multi = alice(&pki, &proxy).await;
    assert_eq!(multi.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(multi.cmd(&["SET", "queued", "1"]).await, b"+QUEUED\r\n");
    let mut subscribed = alice(&pki, &proxy).await;
    assert!(s(&subscribed.cmd(&["SUBSCRIBE", "news"]).await).contains("subscribe"));
    let mut blocked = alice(&pki, &proxy).await;
    blocked.send_cmd(&["BLPOP", "queue", "0"]).await;
    let mut admin = redis.direct().await;
    assert!(
        eventually(|| async {
            s(&redis.direct().await.cmd(&["INFO", "clients"]).await).contains("blocked_clients:1")
        })
        .await
    );

    // Alice may no longer write, nor listen on `news`.
    let narrowed = ALICE.replace("~* &* +@all", "~* &other +@all -@write");
    assert!(proxy
        .reload_with(&acl_config(&pki, &redis, &format!("{narrowed}{APP}"), ""))
        .await
        .is_ok());
    assert!(
        s(&multi.cmd(&["EXEC"]).await).starts_with("-EXECABORT"),
        "a transaction queued under the old rules ran"
    );
    assert_eq!(admin.cmd(&["EXISTS", "queued"]).await, b":0\r\n");
    assert!(
        subscribed.closed().await,
        "a subscriber whose channels were revoked stayed"
    );

    // Alice switched off: her blocked BLPOP is not served what is pushed next.
    let off = ALICE.replace("on >alice", "off >alice");
    assert!(proxy
        .reload_with(&acl_config(&pki, &redis, &format!("{off}{APP}"), ""))
        .await
        .is_ok());
    assert!(
        blocked.closed().await,
        "a removed user's blocked session stayed open"
    );
    assert!(
        eventually(|| async {
            s(&redis.direct().await.cmd(&["INFO", "clients"]).await).contains("blocked_clients:0")
        })
        .await,
        "the removed user's BLPOP still waits on the backend"
    );
    assert_eq!(admin.cmd(&["RPUSH", "queue", "x"]).await, b":1\r\n");
    assert_eq!(admin.cmd(&["LLEN", "queue"]).await, b":1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_open_sessions_are_rewritten_with_the_reloaded_policy() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |extra: &str| {
        format!(
            "[reload]\nwatch_interval = \"0s\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\ncommands.scripts = \"unguarded\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n{extra}",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config("")).await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(s(&c.cmd(&["COMMAND", "LIST"]).await).contains("flushall"));
    assert!(proxy
        .reload_with(&config("commands.disable = [\"debug\"]\ncommands.rename = { flushall = \"ADMIN_FLUSH_9f2c\" }\n"))
        .await
        .is_ok());
    let list = s(&c.cmd(&["COMMAND", "LIST"]).await).to_lowercase();
    assert!(!list.contains("$8\r\nflushall\r\n"), "{list}");
    assert!(!list.contains("$5\r\ndebug\r\n"), "{list}");
    assert!(list.contains("admin_flush_9f2c"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_picks_up_a_fix_and_can_be_turned_off_and_on_again() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |watch: &str, token: &str, extra: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[reload]\nwatch_interval = {watch:?}\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{token:?}]\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n{extra}",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config("100ms", TOKEN, "")).await;
    let addr = proxy.addr;
    let pki_ref = &pki;
    let logs_in = |token: &'static str| async move {
        let mut c = RawClient::tls(pki_ref, addr).await;
        c.cmd(&["AUTH", token]).await == b"+OK\r\n"
    };
    // A file naming a token file that is not there yet: refused, then fixed by the file
    // appearing (a file the refused configuration named, which the watcher now watches).
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    Proxy::write_config(
        &proxy.config_path,
        &config("100ms", TOKEN, &format!("auth.tokens_file = {tokens:?}\n")),
    );
    // Until the watcher has seen it (and refused it).
    assert!(
        eventually(|| async {
            let metrics = proxy.admin_get("/metrics").await.1;
            metric(
                &metrics,
                "cachegate_config_reloads_total{result=\"failure\"}",
            ) >= 1.0
        })
        .await
    );
    std::fs::write(&tokens, TOKEN_NEW).unwrap();
    assert!(
        eventually(|| logs_in(TOKEN_NEW)).await,
        "the watcher did not retry once the missing file appeared"
    );

    // Off, then on again by a reload: it watches again.
    assert!(proxy.reload_with(&config("0s", TOKEN, "")).await.is_ok());
    assert!(proxy.reload_with(&config("100ms", TOKEN, "")).await.is_ok());
    Proxy::write_config(&proxy.config_path, &config("100ms", TOKEN_NEW, ""));
    assert!(
        eventually(|| logs_in(TOKEN_NEW)).await,
        "the watcher stayed off after watch_interval was set again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_refuses_web_pages_and_non_loopback_admin_listeners() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let post = |admin: std::net::SocketAddr, origin: bool| async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", admin.port()))
            .await
            .unwrap();
        let origin = if origin {
            "Origin: http://evil.example\r\n"
        } else {
            ""
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(
            format!("POST /reload HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let proxy = Proxy::start(&token_config(&pki, &redis, &[TOKEN], "")).await;
    let admin = proxy.admin.unwrap();
    assert!(post(admin, true).await.starts_with("HTTP/1.1 403"));
    assert!(post(admin, false).await.starts_with("HTTP/1.1 200"));
    let open = Proxy::start(&token_config(&pki, &redis, &[TOKEN], "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        "[admin]\nbind = \"0.0.0.0:0\"",
    ))
    .await;
    assert!(post(open.admin.unwrap(), false)
        .await
        .starts_with("HTTP/1.1 403"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_session_whose_certificate_user_goes_is_closed() {
    let pki = Pki::new();
    let node = Memcached::start().await;
    // The client certificate's CN is app-client; `mapped` is the user it maps to.
    let config = |mapped: Option<&str>| {
        format!(
            "[reload]\nwatch_interval = \"0s\"\n\n[[users]]\nname = \"default\"\nacl = \"off\"\n[[users]]\nname = \"app\"\nacl = \"on ~* +@all\"\n[[users]]\nname = \"ops\"\nacl = \"on ~* +@all\"\n\n[user_groups]\nmc = [\"default\", \"app\", \"ops\"]\n\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"required\"\ntls.client_ca = {:?}\nauth.mode = \"acl\"\nauth.user_group = \"mc\"\n{}upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            pki.ca,
            match mapped {
                Some(user) => format!("auth.certificate_users = [{{ cn = \"app-client\", user = \"{user}\" }}]\n"),
                None => String::new(),
            },
            node.address()
        )
    };
    // The mapping removed (nobody), then remapped to another user: closed either way, as a
    // Redis session is, never switched to the other user.
    for after in [None, Some("ops")] {
        let proxy = Proxy::start(&config(Some("app"))).await;
        let tls = pki.client_config(
            rustls::ALL_VERSIONS,
            Some((&pki.client_cert, &pki.client_key)),
        );
        let stream = tls_stream(tls, proxy.addr).await.unwrap();
        let mut c = McClient::new(Box::new(stream));
        assert!(c.line("version\r\n").await.starts_with("VERSION"));
        assert!(proxy.reload_with(&config(after)).await.is_ok());
        assert!(
            c.closed_after().await.is_some(),
            "a memcached session whose certificate no longer maps to its user stayed open ({after:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_nothing_of_a_session_leaves_it_alone() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    // Without multiplexing too: a subscriber is then on its own connection from the start.
    for extra in ["", "upstream.multiplex = false\n"] {
        let proxy = Proxy::start(&acl_config(&pki, &redis, &format!("{ALICE}{APP}"), extra)).await;
        let mut multi = alice(&pki, &proxy).await;
        assert_eq!(multi.cmd(&["MULTI"]).await, b"+OK\r\n");
        assert_eq!(multi.cmd(&["SET", "kept", "1"]).await, b"+QUEUED\r\n");
        let mut subscribed = alice(&pki, &proxy).await;
        assert!(s(&subscribed.cmd(&["SUBSCRIBE", "news"]).await).contains("subscribe"));

        // Alice's password rotates (the watcher would reload this from a password file).
        let rotated = ALICE.replace("alice-password-123", "alice-password-456");
        assert!(proxy
            .reload_with(&acl_config(&pki, &redis, &format!("{rotated}{APP}"), extra))
            .await
            .is_ok());
        let exec = s(&multi.cmd(&["EXEC"]).await);
        assert_eq!(exec, "*1\r\n+OK\r\n", "{extra}");
        let mut publisher = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(
            publisher
                .cmd(&["AUTH", "alice", "alice-password-456"])
                .await,
            b"+OK\r\n"
        );
        assert_eq!(publisher.cmd(&["PUBLISH", "news", "hi"]).await, b":1\r\n");
        assert!(s(&subscribed.read().await).contains("hi"));

        // Her channels narrowed: the subscriber is closed, multiplexed or not.
        let narrowed = rotated.replace("&*", "&other");
        assert!(proxy
            .reload_with(&acl_config(
                &pki,
                &redis,
                &format!("{narrowed}{APP}"),
                extra
            ))
            .await
            .is_ok());
        assert!(
            subscribed.closed().await,
            "{extra}: a revoked subscriber stayed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_buffer_bound_holds_at_once() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |bound: u64| {
        format!(
            "limits.max_buffered_bytes = {bound}\n[reload]\nwatch_interval = \"0s\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config(100_000_000)).await;
    let mut direct = redis.direct().await;
    assert_eq!(
        direct.cmd(&["SET", "big", &"v".repeat(3_000_000)]).await,
        b"+OK\r\n"
    );
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(c.cmd(&["GET", "big"]).await.starts_with(b"$3000000"));
    assert!(proxy.reload_with(&config(1_000_000)).await.is_ok());
    let reply = s(&c.cmd(&["GET", "big"]).await);
    assert!(reply.contains("limits.max_buffered_bytes"), "{:.80}", reply);
}

/// A reload that removes a token applies to an AUTH already waiting in the throttle's queue:
/// it is checked against the configuration in force when its turn comes, not the one in
/// force when it arrived (found by a reviewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_waiting_its_turn_is_checked_against_the_reloaded_tokens() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let throttled = "auth.backoff_after = 1\nauth.max_failures = 100\n";
    let both = token_config(&pki, &redis, &[TOKEN, TOKEN_NEW], throttled);
    let proxy = Proxy::start(&both).await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    // Four failures: the next attempt from this address waits its slot (800 ms).
    for _ in 0..4 {
        assert!(s(&c.cmd(&["AUTH", "wrong-token-0123456789"]).await).starts_with("-WRONGPASS"));
    }
    let throttlings = || async {
        metrics(&proxy)
            .await
            .lines()
            .filter(|l| l.starts_with("cachegate_authentication_throttled_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = throttlings().await;
    c.send_cmd(&["AUTH", TOKEN]).await;
    // Waiting its slot once the throttle has counted it.
    assert!(eventually(|| async { throttlings().await > before }).await);
    let only_new = token_config(&pki, &redis, &[TOKEN_NEW], throttled);
    assert!(proxy.reload_with(&only_new).await.is_ok());
    let reply = s(&c.read().await);
    assert!(reply.starts_with("-WRONGPASS"), "{reply}");
}

/// What a client sent before a reload, still in cachegate's buffer while the session waited
/// for the client to read its replies, is judged by the new rules: a command the reload
/// disables does not run when the session goes on (a reviewer had 265 such INCRs run after
/// the reload, the session checking for a reload only before reading more). One batch already
/// judged when the reload came (up to 128 commands: here 64 INCRs) is still sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_buffered_before_a_reload_meet_its_rules() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let config = |disable: &str| {
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\ncommands.disable = [{disable}]\n\
             commands.scripts = \"unguarded\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config("")).await;
    let mut direct = redis.direct().await;
    assert_eq!(
        direct.cmd(&["SET", "big", &"v".repeat(100_000)]).await,
        b"+OK\r\n"
    );
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let pair = [encode(&[b"GET", b"big"]), encode(&[b"INCR", b"counter"])].concat();
    c.send(&pair.repeat(1500)).await;
    // The session stops once its replies are not read: the counter stands still.
    let mut ran = s(&direct.cmd(&["GET", "counter"]).await);
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = s(&direct.cmd(&["GET", "counter"]).await);
        if now == ran && now.starts_with('$') {
            break;
        }
        ran = now;
    }
    assert!(proxy.reload_with(&config("\"INCR\"")).await.is_ok());
    // The client reads everything now: no INCR runs after the reload.
    let mut refused = 0;
    for _ in 0..3000 {
        let reply = s(&c.read().await);
        if reply.starts_with("-ERR unknown command") {
            refused += 1;
        }
    }
    assert!(refused > 0, "every INCR had run before the reload");
    let count = |reply: &str| {
        reply
            .lines()
            .nth(1)
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap()
    };
    let after = count(&s(&direct.cmd(&["GET", "counter"]).await)) - count(&ran);
    assert!(
        after <= 64,
        "{after} INCRs ran after the reload, past the one batch judged before it"
    );
}

/// One `POST /reload` at a time: another while one runs is answered 429 at once, instead of
/// queueing a blocking thread each (a reviewer's burst of POSTs filled the runtime's blocking
/// pool, which also resolves upstream hostnames). Here each reload takes a second (a root
/// key command standing in for a KMS call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_asked_while_one_runs_is_refused_not_queued() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.key");
    std::fs::write(&root, "5".repeat(64)).unwrap();
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}\
         auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\n\
         encryption.root_key_command = [\"sh\", \"-c\", \"sleep 1; cat {}\"]\n\
         encryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n",
        dir.path().join("data"),
        pki.tls_toml(),
        redis.address(),
        root.display()
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let post = || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(
            b"POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let (a, b) = tokio::join!(post(), post());
    let mut status = [&a[..12], &b[..12]];
    status.sort_unstable();
    assert_eq!(status, ["HTTP/1.1 200", "HTTP/1.1 429"], "{a}\n{b}");
    // Once it has answered, the next one runs.
    assert!(post().await.starts_with("HTTP/1.1 200"));
}

/// A session a reload closes in the middle of a pipeline (its user removed) first sends what
/// it had already judged, so that the replies its client is owed come and it closes at once:
/// it used to leave them unsent and linger until the request timeout, then end as an upstream
/// failure (a reviewer found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_a_reload_closes_mid_pipeline_answers_what_it_owes_and_goes() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let config = |group: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[reload]\nwatch_interval = \"0s\"\n\
             [[users]]\nname = \"default\"\nacl = \"off\"\n\
             [[users]]\nname = \"alice\"\nacl = \"on >alice-password-123 ~* &* +@all\"\n\
             [user_groups]\napp = [{group}]\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}\
             auth.mode = \"acl\"\nauth.user_group = \"app\"\ncommands.scripts = \"unguarded\"\n\
             upstream.address = {:?}\nupstream.health_interval = \"1h\"\nupstream.request_timeout = \"60s\"\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let proxy = Proxy::start(&config("\"default\", \"alice\"")).await;
    let mut direct = redis.direct().await;
    assert_eq!(direct.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    assert_eq!(
        direct.cmd(&["SET", "big", &"v".repeat(100_000)]).await,
        b"+OK\r\n"
    );
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["AUTH", "alice", "alice-password-123"]).await,
        b"+OK\r\n"
    );
    // Its own connection (another database), and a pipeline it stops in, its replies unread.
    assert_eq!(c.cmd(&["SELECT", "1"]).await, b"+OK\r\n");
    let pair = [encode(&[b"GET", b"big"]), encode(&[b"PING"])].concat();
    c.send(&pair.repeat(1500)).await;
    let calls = || async {
        let stats = s(&redis.direct().await.cmd(&["INFO", "commandstats"]).await);
        stats
            .lines()
            .find(|l| l.starts_with("cmdstat_get:"))
            .map(str::to_string)
    };
    let mut seen = calls().await;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = calls().await;
        if now.is_some() && now == seen {
            break;
        }
        seen = now;
    }
    assert!(proxy.reload_with(&config("\"default\"")).await.is_ok());
    // Everything owed arrives, then the connection closes, long before the 60 s timeout.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while c.try_read().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the closed session lingered");
    let text = proxy.admin_get("/metrics").await.1;
    assert!(!text.contains("cause=\"timeout\""), "{text}");
}
