//! Certificate identities (Redis and memcached) and memcached under ACL users.

mod common;

use cachegate::protocol::memcached::Shape;
use common::*;

const USERS: &str = r#"
[[users]]
name = "default"
acl = "off"
[[users]]
name = "app"
acl = "on nopass ~app:* +@read +@write -@dangerous +acl|whoami"
cert_required = true
[[users]]
name = "reader"
acl = "on >reader-password %R~* +@read +acl|whoami"
[user_groups]
apps = ["default", "app", "reader"]
"#;

fn with_cert(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    pki.client_config(
        rustls::ALL_VERSIONS,
        Some((&pki.client_cert, &pki.client_key)),
    )
}

async fn redis_proxy(pki: &Pki, redis: &Redis) -> Proxy {
    Proxy::start(&format!(
        "{USERS}[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"optional\"\ntls.client_ca = {:?}\n\
         auth.mode = \"acl\"\nauth.user_group = \"apps\"\n\
         auth.certificate_users = [{{ cn = \"app-client\", user = \"app\" }}]\n\
         upstream.address = {:?}\n",
        pki.tls_toml(),
        pki.ca,
        redis.address()
    ))
    .await
}

/// The Pki's client certificate has CN app-client: that connection is `app` from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_logs_in_as_its_user() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = redis_proxy(&pki, &redis).await;
    let mut c = RawClient::try_tls(with_cert(&pki), proxy.addr)
        .await
        .unwrap();
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, b"$3\r\napp\r\n");
    assert_eq!(c.cmd(&["SET", "app:1", "v"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["SET", "other", "v"]).await).starts_with("-NOPERM"));
    // RESET returns to the certificate's user, not to an unauthenticated state.
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, b"$3\r\napp\r\n");
    // Without a certificate: default is off, so nothing until AUTH.
    let mut anon = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        anon.cmd(&["GET", "app:1"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
}

/// `app` is nopass but certificate-required: naming it is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_required_user_cannot_be_logged_into_by_name() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = redis_proxy(&pki, &redis).await;
    let mut anon = RawClient::tls(&pki, proxy.addr).await;
    let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(anon.cmd(&["AUTH", "app", "anything"]).await, wrongpass);
    let hello = anon.cmd(&["HELLO", "3", "AUTH", "app", "anything"]).await;
    assert_eq!(hello, wrongpass);
    // Other users still log in with their passwords.
    assert_eq!(
        anon.cmd(&["AUTH", "reader", "reader-password"]).await,
        b"+OK\r\n"
    );
    assert_eq!(anon.cmd(&["ACL", "WHOAMI"]).await, b"$6\r\nreader\r\n");
}

/// A `default` that needs no password but requires a certificate is nobody's by default: a
/// client without that certificate gets NOAUTH (it was logged in as `default` at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_default_is_not_had_without_the_certificate() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let users = USERS.replace(
        "name = \"default\"\nacl = \"off\"",
        "name = \"default\"\nacl = \"on nopass ~* +@all\"\ncert_required = true",
    );
    assert_ne!(users, USERS);
    let proxy = Proxy::start(&format!(
        "{users}[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"optional\"\ntls.client_ca = {:?}\n\
         auth.mode = \"acl\"\nauth.user_group = \"apps\"\n\
         auth.certificate_users = [{{ cn = \"app-client\", user = \"default\" }}]\n\
         upstream.address = {:?}\n",
        pki.tls_toml(),
        pki.ca,
        redis.address()
    ))
    .await;
    let mut anon = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        anon.cmd(&["GET", "k"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    let mut mapped = RawClient::try_tls(with_cert(&pki), proxy.addr)
        .await
        .unwrap();
    assert_eq!(mapped.cmd(&["ACL", "WHOAMI"]).await, b"$7\r\ndefault\r\n");
}

async fn memcached_proxy(pki: &Pki, node: &Memcached, default_on: bool) -> Proxy {
    let users = if default_on {
        USERS.replace("acl = \"off\"", "acl = \"on nopass %R~pub:* +@read\"")
    } else {
        USERS.to_string()
    };
    memcached_proxy_with(pki, node, &users).await
}

async fn memcached_proxy_with(pki: &Pki, node: &Memcached, users: &str) -> Proxy {
    Proxy::start(&format!(
        "{users}[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}\
         tls.client_auth = \"optional\"\ntls.client_ca = {:?}\n\
         auth.mode = \"acl\"\nauth.user_group = \"apps\"\n\
         auth.certificate_users = [{{ cn = \"app-client\", user = \"app\" }}]\n\
         upstream.nodes = [{:?}]\n",
        pki.tls_toml(),
        pki.ca,
        node.address()
    ))
    .await
}

async fn mc_with_cert(pki: &Pki, proxy: &Proxy) -> McClient {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(with_cert(pki))
        .connect(name, tcp)
        .await
        .unwrap();
    McClient::new(Box::new(tls))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_categories_and_key_patterns() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = memcached_proxy(&pki, &node, true).await;
    // With the certificate: `app`, ~app:* with @read @write.
    let mut app = mc_with_cert(&pki, &proxy).await;
    assert_eq!(app.line("set app:1 0 0 1\r\nv\r\n").await, "STORED\r\n");
    assert_eq!(
        app.line("set other 0 0 1\r\nv\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        app.values("get app:1\r\n").await,
        "VALUE app:1 0 1\r\nv\r\nEND\r\n"
    );
    assert_eq!(
        app.line("get app:1 other\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        s(&app.request(b"ms other 1\r\nx\r\n", Shape::Meta).await),
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        app.line("incr app:1 1\r\n").await,
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    // flush_all is @dangerous: not in app's rules.
    assert_eq!(
        app.line("flush_all\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(node.stat("cmd_flush").await, 0);
    // Without a certificate: `default`, read-only on pub:*.
    let mut anon = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(anon.values("get pub:1\r\n").await, "END\r\n");
    assert_eq!(
        anon.line("get app:1\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        anon.line("set pub:1 0 0 1\r\nv\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    // noreply stays silent even when refused, as memcached is for errors.
    anon.send(b"set pub:2 0 0 1 noreply\r\nv\r\n").await;
    assert_eq!(anon.values("get pub:2\r\n").await, "END\r\n");
    // mg reads, but with T (new TTL) or N (create on miss) it writes: refused to a reader,
    // as gat and touch are.
    for line in ["mg pub:1 T1 t\r\n", "mg pub:new N3600 v t\r\n"] {
        assert_eq!(
            anon.line(line).await,
            "CLIENT_ERROR permission denied\r\n",
            "{line}"
        );
    }
    assert!(!node.holds("pub:new").await);
    // A base64 key (the b flag) is judged as the key it decodes to: app:1 (YXBwOjE=) is out of
    // reach for reading and writing; pub:1 (cHViOjE=) is in it.
    for line in ["mg YXBwOjE= b v\r\n", "ms YXBwOjE= 1 b\r\nx\r\n"] {
        assert_eq!(
            anon.line(line).await,
            "CLIENT_ERROR permission denied\r\n",
            "{line}"
        );
    }
    assert_eq!(anon.line("mg cHViOjE= b v\r\n").await, "EN\r\n");
}

/// `me` (an item's size, expiry, CAS and last access) is a read of its key: a user with every
/// command but keys limited to `app:*` gets its own items' metadata and `permission denied`
/// for any other key, however it is spelt (base64), as `get` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_meta_debug_keeps_to_the_key_patterns() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let users = USERS.replace(
        "on nopass ~app:* +@read +@write -@dangerous +acl|whoami",
        "on nopass ~app:* +@all",
    );
    let proxy = memcached_proxy_with(&pki, &node, &users).await;
    let mut app = mc_with_cert(&pki, &proxy).await;
    assert_eq!(app.line("set app:1 0 0 1\r\nv\r\n").await, "STORED\r\n");
    assert!(app.line("me app:1\r\n").await.starts_with("ME app:1 "));
    let mut other = McClient::new(Box::new(
        tokio::net::TcpStream::connect(node.address())
            .await
            .unwrap(),
    ));
    assert_eq!(
        other.line("set bob:secret 0 0 1\r\nv\r\n").await,
        "STORED\r\n"
    );
    // bob:secret, and the same in base64.
    for line in ["me bob:secret\r\n", "me Ym9iOnNlY3JldA== b\r\n"] {
        assert_eq!(
            app.line(line).await,
            "CLIENT_ERROR permission denied\r\n",
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_without_a_user_is_refused() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let proxy = memcached_proxy(&pki, &node, false).await;
    let mut anon = McClient::tls(&pki, proxy.addr).await;
    anon.send(b"version\r\n").await;
    let said = anon.closed_after().await.unwrap_or_default();
    assert!(
        s(&said).starts_with("SERVER_ERROR cachegate: access denied"),
        "{}",
        s(&said)
    );
    let mut app = mc_with_cert(&pki, &proxy).await;
    assert!(app.line("version\r\n").await.starts_with("VERSION "));
}

/// At-rest encryption under restricted memcached users, two clients on the same shared node
/// connections: a user limited to `app:*` meets the ACL before encryption (an encrypted key
/// outside its patterns is `permission denied`, never its value, whatever the command), and
/// pipelined reads of the two clients, interleaved on the shared connections, each get their
/// own key's value opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_memcached_values_stay_with_their_user() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    let keys = tempfile::tempdir().unwrap();
    let root = keys.path().join("root.key");
    std::fs::write(&root, "11".repeat(32)).unwrap();
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n\
         [[users]]\nname = \"default\"\nacl = \"on nopass ~app:* +@all\"\n\
         [[users]]\nname = \"ops\"\nacl = \"on nopass ~* +@all\"\ncert_required = true\n\
         [user_groups]\ng = [\"default\", \"ops\"]\n\
         [[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}\
         tls.client_auth = \"optional\"\ntls.client_ca = {:?}\n\
         auth.mode = \"acl\"\nauth.user_group = \"g\"\n\
         auth.certificate_users = [{{ cn = \"app-client\", user = \"ops\" }}]\n\
         upstream.nodes = [{:?}]\n\
         encryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\", \"app:*\"] }}]\n",
        keys.path().join("data"),
        pki.tls_toml(),
        pki.ca,
        node.address(),
        root
    ))
    .await;
    let secret = "ops-only-4111111111111111";
    let mut ops = mc_with_cert(&pki, &proxy).await;
    let set = format!("set pii:1 0 0 {}\r\n{secret}\r\n", secret.len());
    assert_eq!(ops.line(&set).await, "STORED\r\n");
    let mut app = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(app.line("set app:1 0 0 4\r\nmine\r\n").await, "STORED\r\n");
    // Outside its patterns: refused by the ACL, before encryption looks at anything.
    for line in [
        "get pii:1\r\n",
        "gets app:1 pii:1\r\n",
        "mg pii:1 v\r\n",
        "incr pii:1 1\r\n",
        "append pii:1 0 0 1\r\nx\r\n",
    ] {
        let got = app.line(line).await;
        assert_eq!(got, "CLIENT_ERROR permission denied\r\n", "{line}");
    }
    // Interleaved on the shared connection to the node: each reply is its own.
    for _ in 0..50 {
        ops.send(b"get pii:1\r\nget app:1\r\n").await;
        app.send(b"get app:1\r\n").await;
        let mine = s(&app.read(Shape::Values).await);
        assert_eq!(mine, "VALUE app:1 0 4\r\nmine\r\nEND\r\n");
        let theirs = s(&ops.read(Shape::Values).await);
        assert_eq!(
            theirs,
            format!("VALUE pii:1 0 {}\r\n{secret}\r\nEND\r\n", secret.len())
        );
        assert_eq!(s(&ops.read(Shape::Values).await), mine);
    }
    // The node holds neither value in clear.
    let stored = node.direct().await.values("get pii:1 app:1\r\n").await;
    assert!(
        !stored.contains(secret) && !stored.contains("mine"),
        "{stored}"
    );
}

/// One-key gets travel to the node as meta gets, but a restricted user is judged on the get it
/// sent: a key out of its reach is refused before anything reaches the node. And a request
/// it may not run (`md ... I`, which would mark an item stale) changes nothing for the
/// listener's other clients: meta gets stay on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_gets_keep_the_acl_and_a_refused_user_changes_nothing() {
    let (pki, node) = (Pki::new(), Memcached::start().await);
    // `app` may also read cachegate's `stats` (checked as INFO).
    let users = USERS
        .replace("acl = \"off\"", "acl = \"on nopass %R~pub:* +@read\"")
        .replace("-@dangerous +acl|whoami", "-@dangerous +info +acl|whoami");
    let proxy = memcached_proxy_with(&pki, &node, &users).await;
    let mut app = mc_with_cert(&pki, &proxy).await;
    assert_eq!(app.line("set app:1 0 0 1\r\nv\r\n").await, "STORED\r\n");
    // Without a certificate: `default`, read-only on pub:*. Its first get has the node asked.
    let mut anon = McClient::tls(&pki, proxy.addr).await;
    assert_eq!(anon.values("get pub:1\r\n").await, "END\r\n");
    let mut on = false;
    for _ in 0..200 {
        let stats = s(&app.read_until_after(b"stats\r\n", b"END\r\n").await);
        if stats.contains("STAT node_0_meta yes\r\n") {
            on = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(on, "the node answers meta commands");
    let gets = node.stat("cmd_get").await;
    assert_eq!(
        anon.line("get app:1\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        anon.line("gets app:1\r\n").await,
        "CLIENT_ERROR permission denied\r\n"
    );
    assert_eq!(
        node.stat("cmd_get").await,
        gets,
        "a refused get reached the node"
    );
    for line in ["md app:1 I\r\n", "md pub:1 I\r\n", "ms pub:1 1 I\r\nx\r\n"] {
        assert_eq!(
            anon.line(line).await,
            "CLIENT_ERROR permission denied\r\n",
            "{line}"
        );
    }
    let stats = s(&app.read_until_after(b"stats\r\n", b"END\r\n").await);
    assert!(stats.contains("STAT meta_gets on\r\n"), "{stats}");
    assert_eq!(
        app.values("get app:1\r\n").await,
        "VALUE app:1 0 1\r\nv\r\nEND\r\n"
    );
}
