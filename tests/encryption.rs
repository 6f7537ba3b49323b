//! At-rest encryption: values in the configured keyspaces reach the backend only sealed (its
//! GET, DUMP and RDB file hold no canary), read back intact through cachegate, do not open
//! under another key name or when tampered with, and commands that would compute on
//! ciphertext are refused.

mod common;

use cachegate::protocol::memcached::Shape;
use common::*;

const CANARY: &str = "canary-card-4111111111111111";

struct Setup {
    pki: Pki,
    redis: Redis,
    rdb_dir: tempfile::TempDir,
    keys: tempfile::TempDir,
    root: std::path::PathBuf,
}

async fn setup() -> Setup {
    let rdb_dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_with(&[
        "--dir",
        &rdb_dir.path().display().to_string(),
        "--dbfilename",
        "dump.rdb",
        // Compressed (LZF), a value in clear would not show as one run of bytes.
        "--rdbcompression",
        "no",
    ])
    .await;
    let keys = tempfile::tempdir().unwrap();
    let root = keys.path().join("root.key");
    std::fs::write(
        &root,
        "8f14e45fceea167a5a36dedd4bea2543c9f0f895fb98ab9159f51fd0297e236d\n",
    )
    .unwrap();
    Setup {
        pki: Pki::new(),
        redis,
        rdb_dir,
        keys,
        root,
    }
}

fn config(st: &Setup, extra: &str) -> String {
    format!(
        "data_dir = {:?}\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\nupstream.health_interval = \"1h\"\nencryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\", \"session:*\"] }}]\n{extra}",
        st.keys.path().join("data"),
        st.pki.tls_toml(),
        st.redis.address(),
        st.root
    )
}

/// `config` with an admin listener (for /metrics).
fn with_admin(config: &str) -> String {
    config.replacen(
        "\n\n[[listeners]]",
        "\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]",
        1,
    )
}

/// RESP2 and RESP3, each on shared connections (`shared`) and on a session's own
/// (`pinned`, a listener without multiplexing).
fn every_path(shared: &Proxy, pinned: &Proxy) -> [(bool, std::net::SocketAddr); 4] {
    [
        (false, shared.addr),
        (true, shared.addr),
        (false, pinned.addr),
        (true, pinned.addr),
    ]
}

async fn client(st: &Setup, addr: std::net::SocketAddr, resp3: bool) -> RawClient {
    let mut c = RawClient::tls(&st.pki, addr).await;
    if resp3 {
        assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    }
    c
}

fn bulk(v: &str) -> Vec<u8> {
    format!("${}\r\n{v}\r\n", v.len()).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_reach_the_backend_only_sealed_and_read_back_intact() {
    let st = setup().await;
    let proxy = Proxy::start(&config(&st, "")).await;
    // Without multiplexing, every session has its own (pinned) connection.
    let pinned = Proxy::start(&config(&st, "upstream.multiplex = false\n")).await;
    for (resp3, addr) in every_path(&proxy, &pinned) {
        let mut c = client(&st, addr, resp3).await;
        assert_eq!(
            c.cmd(&["SET", "pii:1", CANARY, "EX", "100"]).await,
            b"+OK\r\n"
        );
        assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
        assert_eq!(c.cmd(&["SET", "plain:1", "visible"]).await, b"+OK\r\n");
        assert_eq!(
            c.cmd(&["MSET", "pii:2", CANARY, "plain:2", "x", "session:9", CANARY])
                .await,
            b"+OK\r\n"
        );
        let nil = if resp3 { &b"_\r\n"[..] } else { b"$-1\r\n" };
        let mut want = b"*4\r\n".to_vec();
        want.extend(bulk(CANARY));
        want.extend(bulk("x"));
        want.extend(nil);
        want.extend(bulk(CANARY));
        assert_eq!(
            c.cmd(&["MGET", "pii:2", "plain:2", "pii:none", "session:9"])
                .await,
            want
        );
        assert_eq!(c.cmd(&["SETEX", "pii:3", "100", CANARY]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["SET", "pii:3", "new", "GET"]).await, bulk(CANARY));
        assert_eq!(c.cmd(&["GETSET", "pii:3", CANARY]).await, bulk("new"));
        assert_eq!(c.cmd(&["GETEX", "pii:3", "EX", "50"]).await, bulk(CANARY));
        assert_eq!(c.cmd(&["GETDEL", "pii:3"]).await, bulk(CANARY));
        assert_eq!(c.cmd(&["GET", "pii:3"]).await, nil);
        // Key commands work on encrypted keys.
        assert_eq!(c.cmd(&["EXISTS", "pii:1", "pii:2"]).await, b":2\r\n");
        assert_eq!(c.cmd(&["EXPIRE", "pii:2", "100"]).await, b":1\r\n");
        assert!(s_(&c.cmd(&["TTL", "pii:2"]).await).starts_with(':'));
    }

    // The backend holds no canary: not in GET, not in DUMP, not in its RDB file.
    let mut direct = st.redis.direct().await;
    for key in ["pii:1", "pii:2", "session:9"] {
        let stored = direct.cmd(&["GET", key]).await;
        assert!(!contains(&stored, CANARY), "{key}: {}", s_(&stored));
        assert!(
            stored.len() > CANARY.len() + 28,
            "sealed: header, nonce and tag"
        );
        let dump = direct.cmd(&["DUMP", key]).await;
        assert!(!contains(&dump, CANARY));
    }
    assert_eq!(direct.cmd(&["GET", "plain:1"]).await, bulk("visible"));
    // Not even with compression off, as a value in clear would be stored.
    assert!(contains(&direct.cmd(&["DUMP", "plain:1"]).await, "visible"));
    assert_eq!(direct.cmd(&["SAVE"]).await, b"+OK\r\n");
    let rdb = std::fs::read(st.rdb_dir.path().join("dump.rdb")).unwrap();
    assert!(contains(&rdb, "visible"), "the RDB file was read");
    assert!(!contains(&rdb, CANARY), "a canary reached the RDB file");
    // What the backend reloads from that file reads back intact through cachegate.
    assert_eq!(direct.cmd(&["DEBUG", "RELOAD"]).await, b"+OK\r\n");
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
    assert_eq!(c.cmd(&["GET", "session:9"]).await, bulk(CANARY));
}

fn s_(b: &[u8]) -> String {
    s(b)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_moved_tampered_or_written_in_clear_does_not_open() {
    let st = setup().await;
    let proxy = Proxy::start(&with_admin(&config(&st, ""))).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "pii:1", CANARY]).await, b"+OK\r\n");
    let mut direct = st.redis.direct().await;
    // Someone with the backend copies the sealed value under another name.
    let sealed = direct.cmd(&["DUMP", "pii:1"]).await;
    assert!(sealed.starts_with(b"$"));
    let raw = direct.cmd(&["GET", "pii:1"]).await;
    let start = raw.iter().position(|&b| b == b'\n').unwrap() + 1;
    let value = &raw[start..raw.len() - 2];
    direct.cmd_bytes(&[b"SET", b"pii:copy", value]).await;
    let moved = s(&c.cmd(&["GET", "pii:copy"]).await);
    assert!(
        moved.starts_with("-ERR cachegate: the value of 'pii:copy' does not verify"),
        "{moved}"
    );
    // Tampered: one byte flipped.
    let mut bad = value.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    direct.cmd_bytes(&[b"SET", b"pii:1", &bad]).await;
    assert!(s(&c.cmd(&["GET", "pii:1"]).await).starts_with("-ERR cachegate: the value of 'pii:1'"));
    // Written in clear past cachegate.
    direct.cmd(&["SET", "pii:clear", "not sealed"]).await;
    assert_eq!(
        s(&c.cmd(&["GET", "pii:clear"]).await),
        "-ERR cachegate: the value of 'pii:clear' is not encrypted\r\n"
    );
    // The connection goes on.
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "cachegate_decryption_failures_total{listener=\"redis-0\",reason=\"tampered\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "cachegate_security_events_total{listener=\"redis-0\",reason=\"decryption\"}"
        ),
        3.0
    );
    assert!(
        metric(
            &text,
            "cachegate_encryption_operations_total{listener=\"redis-0\",op=\"seal\"}"
        ) >= 1.0
    );
    assert!(
        text.lines().any(|l| l
            .starts_with("cachegate_data_key_seals_total{listener=\"redis-0\",key=")
            && !l.ends_with(" 0")),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let created = text
        .lines()
        .find(|l| l.starts_with("cachegate_data_key_created_timestamp_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!((now - created).abs() < 120.0, "{created}");

    // While a cache is migrated, values written before encryption pass.
    drop(c);
    let pass = Proxy::start(&config(&st, "encryption.on_plaintext = \"pass\"\n")).await;
    let mut c = RawClient::tls(&st.pki, pass.addr).await;
    assert_eq!(c.cmd(&["GET", "pii:clear"]).await, bulk("not sealed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_would_work_on_ciphertext_are_refused() {
    let st = setup().await;
    let proxy = Proxy::start(&config(&st, "commands.scripts = \"unguarded\"\n")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "pii:1", "10"]).await, b"+OK\r\n");
    for call in [
        &["APPEND", "pii:1", "x"][..],
        &["INCR", "pii:1"],
        &["GETRANGE", "pii:1", "0", "3"],
        &["STRLEN", "pii:1"],
        &["HSET", "pii:h", "f", "v"],
        &["RENAME", "pii:1", "pii:2"],
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "pii:1"],
        // A script naming no key could still write one in clear.
        &[
            "EVAL",
            "return redis.call('SET', ARGV[1], ARGV[2])",
            "0",
            "pii:9",
            "x",
        ],
    ] {
        let reply = s(&c.cmd(call).await);
        assert!(
            reply.starts_with(&format!("-ERR cachegate: '{}' ", call[0])),
            "{call:?}: {reply}"
        );
    }
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk("10"));
    assert_eq!(c.cmd(&["APPEND", "plain", "x"]).await, b":1\r\n");
    // Inside MULTI: writes are sealed; a read would come back sealed in EXEC's reply.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "pii:5", CANARY]).await, b"+QUEUED\r\n");
    assert!(s(&c.cmd(&["GET", "pii:5"]).await).starts_with("-ERR cachegate: reading an encrypted"));
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(c.cmd(&["DEL", "pii:1"]).await, b":1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyring_outlives_the_process_and_opens_only_with_its_root_key() {
    let st = setup().await;
    {
        let proxy = Proxy::start(&config(&st, "")).await;
        let mut c = RawClient::tls(&st.pki, proxy.addr).await;
        assert_eq!(c.cmd(&["SET", "pii:1", CANARY]).await, b"+OK\r\n");
        proxy.shutdown().await;
    }
    let keyring = st
        .keys
        .path()
        .join("data")
        .join("encryption")
        .join("redis-0.json");
    let text = std::fs::read_to_string(&keyring).unwrap();
    assert!(text.contains("\"wrapped\""), "{text}");
    let proxy = Proxy::start(&config(&st, "")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
    proxy.shutdown().await;

    // Another root key: cachegate refuses to start rather than serve what it cannot read.
    std::fs::write(&st.root, [9u8; 32]).unwrap();
    let config = cachegate::config::parse(&config(&st, ""), "t", st.keys.path()).unwrap();
    let bound = cachegate::server::bind(&config).await.unwrap();
    let err = cachegate::server::prepare(config, bound)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not unwrap with this root key"), "{err}");
}

/// A command cachegate refuses itself never reaches Redis: a CLIENT REPLY SKIP before it must
/// not leave Redis skipping the next reply instead (every reply after would be one late, and
/// a sealed value would come back as another key's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_refusal_keeps_replies_in_step() {
    let st = setup().await;
    let pinned = Proxy::start(&config(&st, "upstream.multiplex = false\n")).await;
    let shared = Proxy::start(&config(&st, "")).await;
    // Both listener kinds: a session's own connection, and shared ones (where CLIENT REPLY
    // pins the session).
    for proxy in [&pinned, &shared] {
        let mut c = RawClient::tls(&st.pki, proxy.addr).await;
        assert_eq!(c.cmd(&["SET", "pii:1", CANARY]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["SET", "plain", "v"]).await, b"+OK\r\n");
        c.send_cmd(&["CLIENT", "REPLY", "SKIP"]).await;
        c.send_cmd(&["APPEND", "pii:1", "x"]).await;
        assert_eq!(c.cmd(&["GET", "plain"]).await, bulk("v"));
        assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    }
}

/// The data key a value in the backend is sealed under.
async fn sealed_under(redis: &Redis, key: &str) -> u32 {
    let raw = redis.direct().await.cmd(&["GET", key]).await;
    let start = raw.iter().position(|&b| b == b'\n').unwrap() + 1;
    let v = &raw[start..];
    assert_eq!(&v[..3], b"\0cg");
    u32::from_be_bytes([v[4], v[5], v[6], v[7]])
}

fn keys_cli(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .arg("keys")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_and_the_root_key_changes_without_touching_values() {
    let st = setup().await;
    let proxy = Proxy::start(&config(&st, "")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "pii:1", "first"]).await, b"+OK\r\n");
    let first = sealed_under(&st.redis, "pii:1").await;

    let out = tokio::task::spawn_blocking({
        let p = proxy.config_path.clone();
        move || keys_cli(&["status"], &p)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(
        s(&out.stdout).contains(&format!("data key {first:>10}"))
            && s(&out.stdout).contains("(primary)"),
        "{}",
        s(&out.stdout)
    );
    let out = tokio::task::spawn_blocking({
        let p = proxy.config_path.clone();
        move || keys_cli(&["rotate"], &p)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    // Running cachegates take the new primary key at their next reload.
    assert!(proxy.reload_with(&config(&st, "")).await.is_ok());
    assert_eq!(c.cmd(&["SET", "pii:2", "second"]).await, b"+OK\r\n");
    let second = sealed_under(&st.redis, "pii:2").await;
    assert_ne!(first, second);
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk("first"));

    // A new root key: the data keys are re-wrapped, the values stay as they are.
    let new_root = st.keys.path().join("new-root.key");
    std::fs::write(
        &new_root,
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let (p, r) = (proxy.config_path.clone(), new_root.clone());
        move || {
            keys_cli(
                &[
                    "rotate-root",
                    "--new-root-key-file",
                    &r.display().to_string(),
                ],
                &p,
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    let with_new_root =
        config(&st, "").replace(&format!("{:?}", st.root), &format!("{new_root:?}"));
    assert!(with_new_root.contains("new-root.key"));
    // The old root key no longer opens the keyring: refused, the keys in memory serve on.
    let refused = proxy.reload_with(&config(&st, "")).await.unwrap_err();
    assert!(refused.contains("does not unwrap"), "{refused}");
    assert_eq!(c.cmd(&["GET", "pii:2"]).await, bulk("second"));
    assert!(proxy.reload_with(&with_new_root).await.is_ok());
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk("first"));
    assert_eq!(c.cmd(&["GET", "pii:2"]).await, bulk("second"));
    assert_eq!(
        sealed_under(&st.redis, "pii:1").await,
        first,
        "values untouched"
    );
}

/// Migrating a populated cache: values written in clear (before encryption) and values under
/// an older data key are re-sealed under the primary key by `keys rewrap`, while clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_seals_a_plaintext_cache_and_moves_values_to_the_primary_key() {
    let st = setup().await;
    let mut direct = st.redis.direct().await;
    for i in 0..300 {
        let (k, v) = (format!("pii:{i}"), format!("{CANARY}-{i}"));
        assert_eq!(direct.cmd(&["SET", &k, &v]).await, b"+OK\r\n");
    }
    assert_eq!(direct.cmd(&["SET", "plain:1", "visible"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&["EXPIRE", "pii:7", "1000"]).await, b":1\r\n");
    // And one in another database (clients may SELECT): every database that holds keys is
    // walked (before 2026-11-30 only database 0 was, and the run said it was complete).
    let mut db3 = st.redis.direct().await;
    assert_eq!(db3.cmd(&["SELECT", "3"]).await, b"+OK\r\n");
    assert_eq!(db3.cmd(&["SET", "pii:db3", CANARY]).await, b"+OK\r\n");
    let proxy = Proxy::start(&config(&st, "encryption.on_plaintext = \"pass\"\n")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(&format!("{CANARY}-1")));
    assert_eq!(c.cmd(&["SET", "pii:new", "sealed"]).await, b"+OK\r\n");
    let rewrap = |p: std::path::PathBuf| move || keys_cli(&["rewrap"], &p);
    // Clients go on meanwhile: reads of values being re-sealed, writes of new ones.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, tls, addr) = (
            stop.clone(),
            st.pki.client_config(rustls::ALL_VERSIONS, None),
            proxy.addr,
        );
        tokio::spawn(async move {
            let mut c = RawClient::try_tls(tls, addr).await.unwrap();
            let (mut n, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = n % 300;
                let got = c.cmd(&["GET", &format!("pii:{i}")]).await;
                if got != bulk(&format!("{CANARY}-{i}")) {
                    failures.push(s(&got));
                }
                let set = c.cmd(&["SET", &format!("pii:load:{n}"), "v"]).await;
                if set != b"+OK\r\n" {
                    failures.push(s(&set));
                }
                n += 1;
            }
            (n, failures)
        })
    };
    let out = tokio::task::spawn_blocking(rewrap(proxy.config_path.clone()))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (requests, failures) = load.await.unwrap();
    assert!(
        requests > 0 && failures.is_empty(),
        "{requests} requests: {failures:?}"
    );
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        s(&out.stdout).contains(" values scanned: 301 re-sealed under data key ")
            && s(&out.stdout).contains("(301 of them from clear)")
            && s(&out.stdout).contains("0 that do not open"),
        "{}",
        s(&out.stdout)
    );
    for i in [0, 7, 299] {
        let stored = direct.cmd(&["GET", &format!("pii:{i}")]).await;
        assert!(!contains(&stored, CANARY), "pii:{i} still in clear");
        assert_eq!(
            c.cmd(&["GET", &format!("pii:{i}")]).await,
            bulk(&format!("{CANARY}-{i}"))
        );
    }
    let ttl: i64 = s(&direct.cmd(&["TTL", "pii:7"]).await)
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((900..=1000).contains(&ttl), "TTL kept: {ttl}");
    assert_eq!(direct.cmd(&["GET", "plain:1"]).await, bulk("visible"));
    assert!(!contains(&db3.cmd(&["GET", "pii:db3"]).await, CANARY));
    let mut in_db3 = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(in_db3.cmd(&["SELECT", "3"]).await, b"+OK\r\n");
    assert_eq!(in_db3.cmd(&["GET", "pii:db3"]).await, bulk(CANARY));

    // After a rotation, a second run moves every value to the new key; then "error" holds.
    let out = tokio::task::spawn_blocking({
        let p = proxy.config_path.clone();
        move || keys_cli(&["rotate"], &p)
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let out = tokio::task::spawn_blocking(rewrap(proxy.config_path.clone()))
        .await
        .unwrap();
    assert!(
        s(&out.stdout).contains("(0 of them from clear), 0 already under it"),
        "{}",
        s(&out.stdout)
    );
    assert!(proxy.reload_with(&config(&st, "")).await.is_ok());
    assert_eq!(
        c.cmd(&["GET", "pii:299"]).await,
        bulk(&format!("{CANARY}-299"))
    );
    // Once plaintext no longer passes, a value written in clear around cachegate is refused on
    // read, and a rewrap leaves it as it is (counted as not opening): sealing it would make it
    // read as genuine (found by a reviewer).
    assert_eq!(
        direct.cmd(&["SET", "pii:injected", "forged"]).await,
        b"+OK\r\n"
    );
    let out = tokio::task::spawn_blocking(rewrap(proxy.config_path.clone()))
        .await
        .unwrap();
    assert!(
        s(&out.stdout).contains("(0 of them from clear)")
            && s(&out.stdout).contains("1 that do not open"),
        "{}",
        s(&out.stdout)
    );
    assert_eq!(direct.cmd(&["GET", "pii:injected"]).await, bulk("forged"));
    let refused = s(&c.cmd(&["GET", "pii:injected"]).await);
    assert!(refused.starts_with("-ERR cachegate:"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_field_values_are_sealed_and_bound_to_their_field() {
    let st = setup().await;
    let hashes = |extra: &str| {
        config(&st, extra).replace(
            "encryption.keyspaces = [{ patterns = [\"pii:*\", \"session:*\"] }]",
            "encryption.keyspaces = [{ patterns = [\"pii:*\"] }, { patterns = [\"user:*\"], types = [\"hash\"] }]",
        )
    };
    let proxy = Proxy::start(&hashes("")).await;
    let pinned = Proxy::start(&hashes("upstream.multiplex = false\n")).await;
    for (resp3, addr) in every_path(&proxy, &pinned) {
        let mut c = client(&st, addr, resp3).await;
        assert!(s(&c.cmd(&["DEL", "user:1"]).await).starts_with(':'));
        assert_eq!(
            c.cmd(&["HSET", "user:1", "card", CANARY, "name", "Ann"])
                .await,
            b":2\r\n"
        );
        assert_eq!(c.cmd(&["HGET", "user:1", "card"]).await, bulk(CANARY));
        let nil = if resp3 { &b"_\r\n"[..] } else { b"$-1\r\n" };
        let mut want = b"*3\r\n".to_vec();
        want.extend(bulk("Ann"));
        want.extend(nil);
        want.extend(bulk(CANARY));
        assert_eq!(
            c.cmd(&["HMGET", "user:1", "name", "none", "card"]).await,
            want
        );
        let all = c.cmd(&["HGETALL", "user:1"]).await;
        let head = if resp3 { &b"%2\r\n"[..] } else { b"*4\r\n" };
        assert!(all.starts_with(head), "{}", s(&all));
        assert!(
            contains(&all, CANARY) && contains(&all, "Ann"),
            "{}",
            s(&all)
        );
        let vals = c.cmd(&["HVALS", "user:1"]).await;
        assert!(vals.starts_with(b"*2\r\n"), "{}", s(&vals));
        assert!(
            contains(&vals, CANARY) && !contains(&vals, "$4\r\nname"),
            "{}",
            s(&vals)
        );
        let rand = c.cmd(&["HRANDFIELD", "user:1", "2", "WITHVALUES"]).await;
        assert!(contains(&rand, CANARY), "{}", s(&rand));
        // HSCAN: the cursor as it is, the values opened; MATCH filters on field names.
        let mut want = b"*2\r\n$1\r\n0\r\n*2\r\n".to_vec();
        want.extend(bulk("card"));
        want.extend(bulk(CANARY));
        assert_eq!(c.cmd(&["HSCAN", "user:1", "0", "MATCH", "c*"]).await, want);
        let page = c.cmd(&["HSCAN", "user:1", "0"]).await;
        assert!(
            page.starts_with(b"*2\r\n$1\r\n0\r\n*4\r\n")
                && contains(&page, CANARY)
                && contains(&page, "Ann"),
            "{}",
            s(&page)
        );
        assert_eq!(c.cmd(&["HLEN", "user:1"]).await, b":2\r\n");
        assert_eq!(c.cmd(&["HSETNX", "user:1", "card", "x"]).await, b":0\r\n");
        assert!(s(&c.cmd(&["HINCRBY", "user:1", "n", "1"]).await)
            .starts_with("-ERR cachegate: 'HINCRBY'"));
        assert!(s(&c.cmd(&["SET", "user:2", "x"]).await).starts_with("-ERR cachegate: 'SET'"));
    }
    // The backend holds no field value in clear; a value moved to another field does not open.
    let mut direct = st.redis.direct().await;
    let stored = direct.cmd(&["HGETALL", "user:1"]).await;
    assert!(
        !contains(&stored, CANARY) && !contains(&stored, "Ann"),
        "{}",
        s(&stored)
    );
    let raw = direct.cmd(&["HGET", "user:1", "card"]).await;
    let start = raw.iter().position(|&b| b == b'\n').unwrap() + 1;
    direct
        .cmd_bytes(&[b"HSET", b"user:1", b"name", &raw[start..raw.len() - 2]])
        .await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    let moved = s(&c.cmd(&["HGET", "user:1", "name"]).await);
    assert!(
        moved.starts_with("-ERR cachegate: the value of 'user:1' does not verify"),
        "{moved}"
    );
    assert!(s(&c.cmd(&["HGETALL", "user:1"]).await).starts_with("-ERR cachegate"));
    assert!(s(&c.cmd(&["HSCAN", "user:1", "0"]).await).starts_with("-ERR cachegate"));
}

/// A user limited to some keys meets the ACL before encryption: an encrypted key outside its
/// patterns is refused as NOPERM, whatever the command, and its own keys work sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_user_meets_the_acl_before_encryption() {
    let st = setup().await;
    let users = "[[users]]\nname = \"default\"\nacl = \"off\"\n[[users]]\nname = \"app\"\nacl = \"on >app-password-1234 ~pii:app:* +@all\"\n[user_groups]\ng = [\"default\", \"app\"]\n";
    let text = config(&st, "auth.user_group = \"g\"\n")
        .replace("auth.mode = \"none\"", "auth.mode = \"acl\"")
        .replacen(
            "\n\n[[listeners]]",
            &format!("\n\n{users}\n[[listeners]]"),
            1,
        );
    let proxy = Proxy::start(&text).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["AUTH", "app", "app-password-1234"]).await,
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&["SET", "pii:app:1", CANARY]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "pii:app:1"]).await, bulk(CANARY));
    for call in [
        &["GET", "pii:other"][..],
        &["APPEND", "pii:other", "x"],
        &["MGET", "pii:app:1", "pii:other"],
    ] {
        let reply = s(&c.cmd(call).await);
        assert!(reply.starts_with("-NOPERM"), "{call:?}: {reply}");
    }
}

/// The rotation runbook end to end: hash fields written in clear are sealed by `rewrap` too;
/// an interrupted rewrap resumes from its saved cursor; after a rotation and a complete
/// rewrap the old key is retired; a value left under it (restored from an old backup) is then
/// an error, counted as `retired_key`, while everything else reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_covers_hashes_resumes_and_lets_the_old_key_retire() {
    let st = setup().await;
    let hashes = |extra: &str| {
        config(&st, extra)
            .replace(
                "encryption.keyspaces = [{ patterns = [\"pii:*\", \"session:*\"] }]",
                "encryption.keyspaces = [{ patterns = [\"pii:*\"] }, { patterns = [\"user:*\"], types = [\"hash\"] }]",
            )
            .replacen(
                "\n\n[[listeners]]",
                "\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]",
                1,
            )
    };
    let mut direct = st.redis.direct().await;
    for i in 0..50 {
        let reply = direct
            .cmd(&["HSET", &format!("user:{i}"), "card", CANARY, "name", "ann"])
            .await;
        assert_eq!(reply, b":2\r\n");
    }
    assert_eq!(direct.cmd(&["SET", "pii:1", CANARY]).await, b"+OK\r\n");
    let proxy = Proxy::start(&hashes("encryption.on_plaintext = \"pass\"\n")).await;
    let cli = |args: &[&str]| {
        let p = proxy.config_path.clone();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            keys_cli(&args, &p)
        })
    };
    let first_id = |first: u32| first.to_string();
    let keyring = st.keys.path().join("data/encryption/redis-0.json");
    assert!(keyring.exists(), "{}", keyring.display());
    let first = sealed_key_id_of_keyring(&keyring);

    // A run that stopped after the string patterns: the saved cursor says so, and the
    // resumed run does only the hashes (its report counts what the first part did). It walks
    // each database holding keys (here database 0 alone) of each node.
    let state = st.keys.path().join("data/encryption/redis-0.json.rewrap");
    let node = st.redis.address();
    std::fs::write(
        &state,
        format!(r#"{{"primary":{first},"over":["{node} db0 string:pii:*","{node} db0 hash:user:*"],"pattern":1,"cursor":"0","tally":{{"scanned":1,"resealed":1,"from_clear":1,"current":0,"changed":0,"failed":0,"by_key":{{}}}}}}"#),
    )
    .unwrap();
    let out = cli(&["rewrap"]).await.unwrap();
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        s(&out.stderr).contains("resuming from"),
        "{}",
        s(&out.stderr)
    );
    assert!(
        s(&out.stdout).contains("51 values scanned: 101 re-sealed")
            && s(&out.stdout).contains("(101 of them from clear)"),
        "{}",
        s(&out.stdout)
    );
    assert!(
        !state.exists(),
        "the cursor is gone once the run is complete"
    );
    // pii:1 was skipped by the resumed run (the saved cursor said strings were done).
    assert_eq!(direct.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
    let stored = direct.cmd(&["HGET", "user:7", "card"]).await;
    assert!(!contains(&stored, CANARY), "hash fields sealed");
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["HGET", "user:7", "card"]).await, bulk(CANARY));
    // --restart starts over: now the string too.
    let out = cli(&["rewrap", "--restart"]).await.unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(!contains(&direct.cmd(&["GET", "pii:1"]).await, CANARY));

    // Keep a copy of a value under the first key (a backup), then rotate and rewrap.
    let backup = direct.cmd(&["GET", "pii:1"]).await;
    let backup_value =
        &backup[backup.iter().position(|&b| b == b'\n').unwrap() + 1..backup.len() - 2];
    let refused = cli(&["retire", "1"]).await.unwrap();
    assert!(!refused.status.success());
    assert!(cli(&["rotate"]).await.unwrap().status.success());
    let early = cli(&["retire", &first_id(first)]).await.unwrap();
    assert!(!early.status.success(), "no rewrap under the new key yet");
    assert!(
        s(&early.stderr).contains("no complete rewrap"),
        "{}",
        s(&early.stderr)
    );
    assert!(proxy.reload_with(&hashes("")).await.is_ok());
    let out = cli(&["rewrap"]).await.unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(
        s(&out.stdout).contains(&format!("101 under data key {first}")),
        "{}",
        s(&out.stdout)
    );
    let out = cli(&["retire", &first_id(first)]).await.unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    let status = cli(&["status"]).await.unwrap();
    assert!(
        s(&status.stdout).contains("(retired "),
        "{}",
        s(&status.stdout)
    );
    assert!(proxy.reload_with(&hashes("")).await.is_ok());
    // Everything rewrapped reads; the restored backup does not, and is counted.
    assert_eq!(c.cmd(&["HGET", "user:49", "card"]).await, bulk(CANARY));
    assert_eq!(c.cmd(&["GET", "pii:1"]).await, bulk(CANARY));
    assert_eq!(
        direct.cmd_bytes(&[b"SET", b"pii:1", backup_value]).await,
        b"+OK\r\n"
    );
    let got = s(&c.cmd(&["GET", "pii:1"]).await);
    assert!(got.contains("retired data key"), "{got}");
    let metrics = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "cachegate_decryption_failures_total{listener=\"redis-0\",reason=\"retired_key\"}"
        ),
        1.0,
        "{metrics}"
    );
    // The retired key's series are gone.
    let series = format!("key=\"{first}\"");
    assert!(!metrics.contains(&series), "{metrics}");
}

/// The primary data key id in a keyring file.
fn sealed_key_id_of_keyring(path: &std::path::Path) -> u32 {
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find("\"primary\":").unwrap() + "\"primary\":".len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Seals are counted per data key in the keyring; the primary key is rotated by cachegate
/// itself once it reaches `encryption.rotate_after_seals` (2^30 by default, a quarter of the
/// nonce bound), and the running cachegate takes the new key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_key_rotates_itself_at_its_seal_bound() {
    let st = setup().await;
    let proxy = Proxy::start(&config(&st, "encryption.rotate_after_seals = 5\n")).await;
    // A second cachegate on the same keyring (a fleet).
    let other = Proxy::start(&config(&st, "encryption.rotate_after_seals = 5\n")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    for i in 0..4 {
        assert_eq!(
            c.cmd(&["SET", &format!("pii:{i}"), CANARY]).await,
            b"+OK\r\n"
        );
    }
    let first = sealed_under(&st.redis, "pii:0").await;
    let report = |proxy: &Proxy| {
        let reloader = proxy.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.report_seals())
    };
    assert!(
        report(&proxy).await.unwrap().is_empty(),
        "4 of 5: no rotation"
    );
    // MSET seals two values: the count reaches the bound.
    let mset = c.cmd(&["MSET", "pii:4", CANARY, "pii:5", CANARY]).await;
    assert_eq!(mset, b"+OK\r\n");
    let rotations = report(&proxy).await.unwrap();
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    let (_, old, new) = rotations[0].clone();
    assert_eq!(old, first);
    assert_ne!(new, first);
    // Taken at once: new writes are sealed under the new key, old values still read.
    assert_eq!(c.cmd(&["SET", "pii:new", CANARY]).await, b"+OK\r\n");
    assert_eq!(sealed_under(&st.redis, "pii:new").await, new);
    assert_eq!(c.cmd(&["GET", "pii:0"]).await, bulk(CANARY));
    let status = tokio::task::spawn_blocking({
        let p = proxy.config_path.clone();
        move || keys_cli(&["status"], &p)
    })
    .await
    .unwrap();
    let text = s(&status.stdout);
    assert!(text.contains("6 values sealed"), "{text}");
    // The other one sealed under the old key until its report, which takes the new key.
    let mut o = RawClient::tls(&st.pki, other.addr).await;
    assert_eq!(o.cmd(&["SET", "pii:o1", CANARY]).await, b"+OK\r\n");
    assert_eq!(sealed_under(&st.redis, "pii:o1").await, first);
    let taken = report(&other).await.unwrap();
    assert_eq!(taken, vec![("redis-0".to_string(), first, new)]);
    assert_eq!(o.cmd(&["SET", "pii:o2", CANARY]).await, b"+OK\r\n");
    assert_eq!(sealed_under(&st.redis, "pii:o2").await, new);
    let status = tokio::task::spawn_blocking({
        let p = proxy.config_path.clone();
        move || keys_cli(&["status"], &p)
    })
    .await
    .unwrap();
    assert!(
        s(&status.stdout).contains("7 values sealed"),
        "{}",
        s(&status.stdout)
    );
}

/// memcached values in an encrypted keyspace reach the nodes only sealed (flags and CAS as
/// the client set them), read back intact through get/gets/gat/mg, do not open under another
/// key, and what would compute on ciphertext is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_values_are_sealed_too() {
    let st = setup().await;
    let (a, b) = (Memcached::start().await, Memcached::start().await);
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}, {:?}]\nupstream.health_interval = \"1h\"\nencryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n",
        st.keys.path().join("data"),
        st.pki.tls_toml(),
        a.address(),
        b.address(),
        st.root
    ))
    .await;
    let mut c = McClient::tls(&st.pki, proxy.addr).await;
    for i in 0..20 {
        let set = format!("set pii:{i} {i} 0 {}\r\n{CANARY}\r\n", CANARY.len());
        assert_eq!(c.line(&set).await, "STORED\r\n");
    }
    assert_eq!(c.line("set plain 3 0 2\r\nhi\r\n").await, "STORED\r\n");
    // Nothing in clear on either node; the size grew by the envelope.
    let mut sealed_seen = 0;
    for node in [&a, &b] {
        let mut d = node.direct().await;
        for i in 0..20 {
            let got = d.values(&format!("get pii:{i}\r\n")).await;
            assert!(!got.contains(CANARY), "{got}");
            if got.starts_with("VALUE") {
                sealed_seen += 1;
                let want = format!("VALUE pii:{i} {i} {}\r\n", CANARY.len() + 36);
                assert!(got.starts_with(&want), "{got}");
            }
        }
    }
    assert_eq!(sealed_seen, 20, "every value on one node");
    // Read back: a multi-get across both nodes, gets (CAS kept), gat, mg.
    let keys: Vec<String> = (0..20).map(|i| format!("pii:{i}")).collect();
    let all = c.values(&format!("get {} plain\r\n", keys.join(" "))).await;
    assert_eq!(all.matches(CANARY).count(), 20, "{all}");
    assert!(all.contains("VALUE plain 3 2\r\nhi\r\n"), "{all}");
    let gets = c.values("gets pii:3\r\n").await;
    let head = gets.lines().next().unwrap().to_string();
    let cas = head.split(' ').nth(4).unwrap().to_string();
    assert!(
        head.starts_with(&format!("VALUE pii:3 3 {} ", CANARY.len())),
        "{gets}"
    );
    let cas_set = format!("cas pii:3 9 0 3 {cas}\r\nnew\r\n");
    assert_eq!(c.line(&cas_set).await, "STORED\r\n");
    assert_eq!(
        c.values("gat 100 pii:3\r\n").await,
        "VALUE pii:3 9 3\r\nnew\r\nEND\r\n"
    );
    let mg = c
        .read_until_after(b"mg pii:3 v f\r\n", b"\r\nnew\r\n")
        .await;
    assert_eq!(s(&mg), "VA 3 f9\r\nnew\r\n");
    assert_eq!(c.line("ms pii:m 5 F4\r\nhello\r\n").await, "HD\r\n");
    let mg = c
        .read_until_after(b"mg pii:m v\r\n", b"\r\nhello\r\n")
        .await;
    assert_eq!(s(&mg), "VA 5\r\nhello\r\n");
    // Refused: what would work on ciphertext.
    for line in [
        "incr pii:1 1\r\n".to_string(),
        "append pii:1 0 0 1\r\nx\r\n".to_string(),
        "ms pii:1 1 MA\r\nx\r\n".to_string(),
    ] {
        let got = c.line(&line).await;
        assert!(
            got.starts_with("CLIENT_ERROR cachegate:") && got.contains("encrypted"),
            "{line}: {got}"
        );
    }
    assert_eq!(c.line("incr plain-n 1\r\n").await, "NOT_FOUND\r\n");
    // A value copied under another key on the node does not open.
    let node = if a.holds("pii:1").await { &a } else { &b };
    let mut d = node.direct().await;
    d.send(b"get pii:1\r\n").await;
    let raw = d.read(Shape::Values).await;
    let start = raw.iter().position(|&b| b == b'\n').unwrap() + 1;
    let body = &raw[start..raw.len() - b"\r\nEND\r\n".len()];
    // Written where the ring puts pii:copy (cachegate's own write shows which node that is).
    assert_eq!(c.line("set pii:copy 0 0 1\r\nx\r\n").await, "STORED\r\n");
    let target = if a.holds("pii:copy").await { &a } else { &b };
    let mut d = target.direct().await;
    let copy = format!("set pii:copy 0 0 {}\r\n", body.len());
    let mut wire = copy.into_bytes();
    wire.extend_from_slice(body);
    wire.extend_from_slice(b"\r\n");
    d.send(&wire).await;
    let _ = d.read_until(b"\r\n").await;
    let mut c2 = McClient::tls(&st.pki, proxy.addr).await;
    let moved = c2.line("get pii:copy\r\n").await;
    assert!(
        moved.starts_with("SERVER_ERROR cachegate: the value of 'pii:copy' does not verify"),
        "{moved}"
    );
}

/// The anti-dogpile pattern on an encrypted key: `mg <key> N<ttl>` on a miss makes memcached
/// create an empty item and hand the first client the win (`W`); that empty value is read as
/// empty (every read was a decryption failure until someone set the key, found by a
/// reviewer), and what the winner then stores is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vivified_memcached_items_read_as_empty_and_fill_sealed() {
    let st = setup().await;
    let node = Memcached::start().await;
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\nencryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n",
        st.keys.path().join("data"),
        st.pki.tls_toml(),
        node.address(),
        st.root
    ))
    .await;
    let mut winner = McClient::tls(&st.pki, proxy.addr).await;
    let won = winner.request(b"mg pii:hot N30 v c\r\n", Shape::Meta).await;
    let won = s(&won);
    assert!(
        won.starts_with("VA 0 ") && won.contains(" W") && won.ends_with("\r\n\r\n"),
        "{won}"
    );
    let cas = won
        .split(' ')
        .find_map(|w| w.strip_prefix('c'))
        .unwrap()
        .trim_end()
        .to_string();
    let mut other = McClient::tls(&st.pki, proxy.addr).await;
    let late = s(&other.request(b"mg pii:hot N30 v\r\n", Shape::Meta).await);
    assert!(late.starts_with("VA 0 ") && late.contains(" Z"), "{late}");
    let fill = format!("ms pii:hot {} C{cas}\r\n{CANARY}\r\n", CANARY.len());
    assert_eq!(winner.line(&fill).await, "HD\r\n");
    assert_eq!(
        s(&other.request(b"mg pii:hot v\r\n", Shape::Meta).await),
        format!("VA {}\r\n{CANARY}\r\n", CANARY.len())
    );
    let stored = node.direct().await.values("get pii:hot\r\n").await;
    assert!(
        !stored.contains(CANARY) && stored.starts_with("VALUE pii:hot"),
        "{stored}"
    );
    // One still awaiting its value when `keys rewrap` runs: left as it is, and no failure (it
    // once failed the run as a value that does not open).
    let cold = s(&other.request(b"mg pii:cold N30 v\r\n", Shape::Meta).await);
    assert!(cold.contains(" W"), "{cold}");
    let config = proxy.config_path.clone();
    let out = tokio::task::spawn_blocking(move || keys_cli(&["rewrap"], &config))
        .await
        .unwrap();
    let said = format!("{}{}", s(&out.stdout), s(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 empty values left as they are"), "{said}");
    let late = s(&winner.request(b"mg pii:cold N30 v\r\n", Shape::Meta).await);
    assert!(late.starts_with("VA 0 ") && late.contains(" Z"), "{late}");
}

/// A populated memcached ring migrated: values written in clear (before encryption) are
/// sealed on both nodes by `keys rewrap` (the nodes list their keys; compare-and-swap writes),
/// flags and TTL kept, and read back through cachegate; a second run after a rotation moves
/// them to the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_migrates_a_memcached_ring() {
    let st = setup().await;
    let (a, b) = (Memcached::start().await, Memcached::start().await);
    let text = |extra: &str| {
        format!(
            "data_dir = {:?}\n\n[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{:?}, {:?}]\nupstream.health_interval = \"1h\"\nencryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n{extra}",
            st.keys.path().join("data"),
            st.pki.tls_toml(),
            a.address(),
            b.address(),
            st.root
        )
    };
    let proxy = Proxy::start(&text("encryption.on_plaintext = \"pass\"\n")).await;
    // Written in clear straight to the node the ring gives each key (cachegate's own write,
    // then overwritten in clear there).
    let mut c = McClient::tls(&st.pki, proxy.addr).await;
    for i in 0..40 {
        assert_eq!(
            c.line(&format!("set pii:{i} {i} 1000 1\r\nx\r\n")).await,
            "STORED\r\n"
        );
        let node = if a.holds(&format!("pii:{i}")).await {
            &a
        } else {
            &b
        };
        let mut d = node.direct().await;
        let set = format!("set pii:{i} {i} 1000 {}\r\n{CANARY}\r\n", CANARY.len());
        assert_eq!(d.line(&set).await, "STORED\r\n");
    }
    assert_eq!(c.line("set other 0 0 2\r\nhi\r\n").await, "STORED\r\n");
    // One with 40 days left (memcached reads an expiry over 30 days as a Unix time).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let long = format!(
        "set pii:long 0 {} {}\r\n{CANARY}\r\n",
        now + 40 * 86400,
        CANARY.len()
    );
    assert_eq!(c.line(&long).await, "STORED\r\n");
    let long_node = if a.holds("pii:long").await { &a } else { &b };
    assert_eq!(long_node.direct().await.line(&long).await, "STORED\r\n");
    // One whose key was stored in base64 (`b`): it stays so, and the others stay text keys.
    let bin = format!("ms cGlpOmJpbg== {} b\r\n{CANARY}\r\n", CANARY.len());
    assert_eq!(c.line(&bin).await, "HD\r\n");
    let bin_node = if a.holds("pii:bin").await { &a } else { &b };
    assert_eq!(bin_node.direct().await.line(&bin).await, "HD\r\n");
    let cli = |args: &'static [&'static str]| {
        let p = proxy.config_path.clone();
        tokio::task::spawn_blocking(move || keys_cli(args, &p))
    };
    let out = cli(&["rewrap"]).await.unwrap();
    assert!(out.status.success(), "{}{}", s(&out.stdout), s(&out.stderr));
    assert!(
        s(&out.stdout).contains("42 values scanned: 42 re-sealed")
            && s(&out.stdout).contains("(42 of them from clear)"),
        "{}",
        s(&out.stdout)
    );
    // Keys as they were stored: meta clients' `k` shows the text key, base64 only for the one
    // stored so (a rewrap once rewrote every key in base64).
    let mut d = bin_node.direct().await;
    let shown = s(&d
        .read_until_after(b"mg cGlpOmJpbg== b k\r\n", b"\r\n")
        .await);
    assert_eq!(shown, "HD kcGlpOmJpbg== b\r\n");
    let text_node = if a.holds("pii:6").await { &a } else { &b };
    let mut d = text_node.direct().await;
    let shown = s(&d.read_until_after(b"mg pii:6 k\r\n", b"\r\n").await);
    assert_eq!(shown, "HD kpii:6\r\n");
    for node in [&a, &b] {
        let mut d = node.direct().await;
        for i in 0..40 {
            let got = d.values(&format!("get pii:{i}\r\n")).await;
            assert!(!got.contains(CANARY), "{got}");
        }
    }
    // Flags and TTL kept; read back intact.
    let node = if a.holds("pii:5").await { &a } else { &b };
    let mut d = node.direct().await;
    let meta = d.read_until_after(b"mg pii:5 f t\r\n", b"\r\n").await;
    let meta = s(&meta);
    assert!(meta.starts_with("HD f5 t"), "{meta}");
    let ttl: i64 = meta.trim_end().rsplit('t').next().unwrap().parse().unwrap();
    assert!((900..=1000).contains(&ttl), "{meta}");
    assert_eq!(
        c.values("get pii:5\r\n").await,
        format!("VALUE pii:5 5 {}\r\n{CANARY}\r\nEND\r\n", CANARY.len())
    );
    let long = s(&long_node
        .direct()
        .await
        .read_until_after(b"mg pii:long t\r\n", b"\r\n")
        .await);
    let left: u64 = long.trim_end().rsplit('t').next().unwrap().parse().unwrap();
    assert!(
        left > 39 * 86400,
        "a long TTL kept, not read as 1970: {long}"
    );
    // After a rotation, a second run moves them all to the new key.
    assert!(cli(&["rotate"]).await.unwrap().status.success());
    let out = cli(&["rewrap"]).await.unwrap();
    assert!(
        s(&out.stdout).contains("42 values scanned: 42 re-sealed")
            && s(&out.stdout).contains("(0 of them from clear)"),
        "{}",
        s(&out.stdout)
    );
    assert!(proxy.reload_with(&text("")).await.is_ok());
    let mut c = McClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(
        c.values("get pii:39\r\n").await,
        format!("VALUE pii:39 39 {}\r\n{CANARY}\r\nEND\r\n", CANARY.len())
    );
}

/// HVALS of an encrypted hash is read as HGETALL: where HGETALL is disabled and cachegate's
/// connections log in as a backend user that is denied it, HVALS is refused with the reason
/// (it failed with a NOPERM naming a command the client never sent); HMGET reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvals_says_why_when_hgetall_is_kept_from_the_backend_user() {
    let st = setup().await;
    let redis = Redis::start_with(&["--requirepass", "admin-password"]).await;
    let proxy = Proxy::start(&format!(
        "data_dir = {:?}\n\n[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.password = \"admin-password\"\nupstream.health_interval = \"1h\"\n\
         commands.disable = [\"HGETALL\"]\ncommands.scripts = \"backend_acl\"\n\
         encryption.root_key_file = {:?}\nencryption.keyspaces = [{{ patterns = [\"user:*\"], types = [\"hash\"] }}]\n",
        st.keys.path().join("data"),
        st.pki.tls_toml(),
        redis.address(),
        st.root
    ))
    .await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["HSET", "user:1", "card", CANARY]).await, b":1\r\n");
    let vals = s(&c.cmd(&["HVALS", "user:1"]).await);
    assert!(
        vals.starts_with("-ERR cachegate: 'HVALS' of an encrypted hash is read as HGETALL"),
        "{vals}"
    );
    let mut want = b"*1\r\n".to_vec();
    want.extend(bulk(CANARY));
    assert_eq!(c.cmd(&["HMGET", "user:1", "card"]).await, want);
}

/// Only values cachegate seals count toward a data key's seals (and so its rotation): a
/// client's argument that merely starts like a sealed value counts for nothing, where many
/// such arguments once made cachegate count a million seals per request and rotate at will
/// (found by a reviewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_values_cachegate_seals_are_counted() {
    let st = setup().await;
    let proxy = Proxy::start(&with_admin(&config(&st, ""))).await;
    let seals = || async {
        metric(
            &proxy.admin_get("/metrics").await.1,
            "cachegate_encryption_operations_total{listener=\"redis-0\",op=\"seal\"}",
        )
    };
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "pii:1", "v"]).await, b"+OK\r\n");
    let before = seals().await;
    assert_eq!(before, 1.0);
    let fake = b"\0cg\x01fake";
    let reply = s(&c.cmd_bytes(&[b"DEL", b"pii:1", fake, fake, fake]).await);
    assert_eq!(reply, ":1\r\n");
    assert_eq!(
        c.cmd_bytes(&[b"MSET", b"pii:2", b"v", b"plain", fake])
            .await,
        b"+OK\r\n"
    );
    assert_eq!(seals().await, before + 1.0, "MSET sealed one value");
}

/// Where the listener refuses `SELECT` and `SWAPDB`, its clients reach database 0 alone: a
/// rewrap walks that one, and leaves another database (another application's data) as it
/// is. `SELECT` renamed, or `SWAPDB` allowed, and clients reach the others: all are walked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_walks_database_0_alone_where_select_is_refused() {
    let st = setup().await;
    let mut direct = st.redis.direct().await;
    assert_eq!(direct.cmd(&["SET", "pii:0", CANARY]).await, b"+OK\r\n");
    let mut db3 = st.redis.direct().await;
    assert_eq!(db3.cmd(&["SELECT", "3"]).await, b"+OK\r\n");
    assert_eq!(db3.cmd(&["SET", "pii:other-app", CANARY]).await, b"+OK\r\n");
    // A rewrap through a listener with these command settings: what it said.
    let rewrap = |commands: &str| {
        let extra = format!("encryption.on_plaintext = \"pass\"\n{commands}");
        let st = &st;
        async move {
            let proxy = Proxy::start(&config(st, &extra)).await;
            let path = proxy.config_path.clone();
            let out = tokio::task::spawn_blocking(move || keys_cli(&["rewrap"], &path))
                .await
                .unwrap();
            let said = s(&out.stdout);
            assert!(out.status.success(), "{said}{}", s(&out.stderr));
            said
        }
    };
    let said = rewrap("commands.disable = [\"SELECT\", \"SWAPDB\", \"@scripting\"]\n").await;
    assert!(
        said.contains(" values scanned: 1 re-sealed under data key "),
        "{said}"
    );
    assert!(!contains(&direct.cmd(&["GET", "pii:0"]).await, CANARY));
    assert_eq!(db3.cmd(&["GET", "pii:other-app"]).await, bulk(CANARY));
    for reachable in [
        "commands.disable = [\"SELECT\", \"@scripting\"]\n",
        "commands.disable = [\"SWAPDB\", \"@scripting\"]\ncommands.rename = { SELECT = \"PICKDB\" }\n",
    ] {
        // Both databases' values: pii:0 already under the primary key, pii:other-app sealed.
        let said = rewrap(reachable).await;
        assert!(said.contains(": 2 values scanned: "), "{reachable}: {said}");
    }
    assert!(!contains(&db3.cmd(&["GET", "pii:other-app"]).await, CANARY));
}

/// A command cachegate does not know (a module's scripting command, which writes keys it does
/// not name) is refused on a listener with encrypted keyspaces whatever its arguments, and
/// nothing of it reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_never_reach_the_backend_of_an_encrypted_listener() {
    let st = setup().await;
    let proxy = Proxy::start(&config(&st, "commands.scripts = \"unguarded\"\n")).await;
    let mut c = RawClient::tls(&st.pki, proxy.addr).await;
    for call in [
        &["TFCALL", "lib.fn", "0"][..],
        &["TFCALL", "lib.fn", "1", "pii:1", CANARY],
        &["NOSUCHCOMMAND", "pii:1", CANARY],
    ] {
        let reply = s(&c.cmd(call).await);
        assert!(
            reply.starts_with(&format!("-ERR cachegate: '{}' is not known", call[0])),
            "{call:?}: {reply}"
        );
    }
    let mut direct = st.redis.direct().await;
    let stats = s(&direct.cmd(&["INFO", "errorstats"]).await);
    assert!(
        !stats.contains("errorstat_ERR"),
        "a refused command reached Redis: {stats}"
    );
    assert_eq!(direct.cmd(&["EXISTS", "pii:1"]).await, b":0\r\n");
}
