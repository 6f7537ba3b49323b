//! The cachegate binary: config checking and exit codes, the shipped example configs, logs that
//! never hold a secret, SIGTERM, and an accept loop that survives running out of descriptors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cachegate");

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// Writes `config` to `path`, checks it (it must be valid) and returns what the check logged.
fn checked_logs(path: &std::path::Path, config: &str) -> String {
    std::fs::write(path, config).unwrap();
    let out = check(path);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    format!("{}{}", s(&out.stdout), s(&out.stderr))
}

#[test]
fn shipped_example_configs_are_valid() {
    let pki = Pki::new();
    let tls = pki.dir.path();
    // The PKI directory already holds server.pem, server-key.pem, ca.pem, client.pem and
    // client-key.pem under the names the examples use.
    std::fs::copy(&pki.ca, tls.join("upstream-ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for example in [
        "cachegate.toml",
        "sidecar.toml",
        "local-dev.toml",
        "gateway.toml",
        "default.toml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/config/{example}")).unwrap();
        let text = text.replace("/etc/cachegate/tls/", &format!("{}/", tls.display()));
        let path = dir.path().join(example);
        std::fs::write(&path, text).unwrap();
        let out = check(&path);
        assert!(out.status.success(), "{example}: {}", s(&out.stderr));
        assert!(s(&out.stdout).contains("configuration is valid"));
    }
}

/// The shipped Redis examples refuse, besides flushing and enumerating, what empties or
/// replaces the data another way, stops the server, copies keys elsewhere or shows other
/// clients' commands (a reviewer noted the sidecar left SWAPDB, REPLICAOF, SHUTDOWN, MIGRATE
/// and SLOWLOG to every client), and scripts; reads and writes pass.
#[test]
fn shipped_examples_refuse_what_empties_stops_or_exposes_the_server() {
    use cachegate::policy::Decision;
    let pki = Pki::new();
    let root = env!("CARGO_MANIFEST_DIR");
    for example in ["cachegate.toml", "sidecar.toml"] {
        let text = std::fs::read_to_string(format!("{root}/config/{example}"))
            .unwrap()
            .replace(
                "/etc/cachegate/tls/",
                &format!("{}/", pki.dir.path().display()),
            );
        std::fs::copy(&pki.ca, pki.dir.path().join("upstream-ca.pem")).unwrap();
        let config = cachegate::config::parse(&text, example, pki.dir.path()).unwrap();
        let redis = &config.listeners[0];
        for refused in [
            "FLUSHDB",
            "FLUSHALL",
            "KEYS",
            "DEBUG",
            "MONITOR",
            "EVAL",
            "FUNCTION",
            "SCRIPT",
            "SWAPDB",
            "REPLICAOF",
            "SLAVEOF",
            "SHUTDOWN",
            "MIGRATE",
            "SLOWLOG",
            "MODULE",
            "CONFIG",
        ] {
            assert_eq!(
                redis.policy.decide(refused.as_bytes()),
                Decision::Refuse,
                "{example}: {refused}"
            );
        }
        for allowed in ["GET", "SET", "SCAN", "INFO", "SORT"] {
            assert_eq!(
                redis.policy.decide(allowed.as_bytes()),
                Decision::Allow,
                "{example}: {allowed}"
            );
        }
    }
}

/// As shipped (their files live under /etc/cachegate/tls on the machine they are for), the
/// examples check with `--allow-missing-files`, which lists the files; without it, a missing
/// file is the only problem reported for it (no second, misleading one).
#[test]
fn shipped_examples_check_as_shipped() {
    let root = env!("CARGO_MANIFEST_DIR");
    for example in ["cachegate.toml", "sidecar.toml", "gateway.toml"] {
        let path = std::path::PathBuf::from(format!("{root}/config/{example}"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
            .args(["check", "--allow-missing-files", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", s(&out.stderr));
        assert!(
            s(&out.stdout).contains("/etc/cachegate/tls/"),
            "{}",
            s(&out.stdout)
        );
        let strict = check(&path);
        assert_eq!(strict.status.code(), Some(64));
        let problems = s(&strict.stderr);
        assert!(
            problems.lines().skip(1).all(|l| l.contains("no such file")),
            "{example}: {problems}"
        );
    }
}

/// A client CRL past its next update is still used but warned about (a CRL pipeline that
/// stopped would fail quietly otherwise); a current one is not.
#[test]
fn a_client_crl_past_its_date_is_warned_about() {
    use cachegate::tls::dev_certs::DevCa;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("crl issuer").unwrap();
    let path = dir.path().join("crl.toml");
    for (next_year, warned) in [(2021, true), (2099, false)] {
        let crl = dir.path().join(format!("{next_year}.crl"));
        std::fs::write(&crl, ca.crl_pem_until(&[], next_year).unwrap()).unwrap();
        let logs = checked_logs(
            &path,
            &format!(
                "data_dir = {:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"required\"\n\
                 tls.client_ca = {:?}\ntls.client_crl = {crl:?}\nauth.mode = \"none\"\n\
                 upstream.address = \"127.0.0.1:6379\"\n",
                dir.path(),
                pki.tls_toml(),
                pki.ca
            ),
        );
        assert_eq!(
            logs.contains("past its next update"),
            warned,
            "{next_year}: {logs}"
        );
    }
}

/// A CRL that rustls refuses (version 1: webpki reads only v2) is refused by `cachegate check`
/// with the setting named, as the listener refuses it at startup; `check` used to accept it.
/// openssl writes one when asked for no CRL extensions.
#[test]
fn a_v1_client_crl_is_refused_by_check_as_at_startup() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl is installed (the README's test command installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", s(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=v1 issuer",
        "-days",
        "30",
    ]);
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ndefault_md = sha256\ndefault_crl_days = 30\n",
    )
    .unwrap();
    openssl(&[
        "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
        "v1.crl",
    ]);
    let config = d.join("v1.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {d:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}tls.client_auth = \"required\"\n\
             tls.client_ca = {:?}\ntls.client_crl = {:?}\nauth.mode = \"none\"\n\
             upstream.address = \"127.0.0.1:6379\"\n",
            pki.tls_toml(),
            d.join("ca.pem"),
            d.join("v1.crl"),
        ),
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(64), "{}", s(&out.stdout));
    let problems = s(&out.stderr);
    assert!(
        problems.contains("listeners[0].tls.client_crl") && problems.contains("verifier"),
        "{problems}"
    );
}

/// A certificate and a key that do not belong together are refused by `cachegate check`, as
/// startup refuses them (check called them valid; a reviewer found it).
#[test]
fn a_key_that_is_not_the_certificates_is_refused_by_check() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mismatch.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.cert = {:?}\ntls.key = {:?}\n\
             auth.mode = \"none\"\nupstream.address = \"127.0.0.1:6379\"\n",
            dir.path(),
            pki.server_cert,
            pki.client_key
        ),
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(64), "{}", s(&out.stdout));
    assert!(
        s(&out.stderr).contains("listeners[0].tls.key"),
        "{}",
        s(&out.stderr)
    );
}

/// A trusted PROXY-protocol network of more than 16 addresses is warned about (any host in it
/// can claim any client address); the balancers' own addresses are not.
#[test]
fn a_wide_trusted_proxy_network_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pp.toml");
    let config = |trusted: &str| {
        format!(
            "data_dir = {:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.enabled = false\n\
             auth.mode = \"none\"\nupstream.address = \"127.0.0.1:6379\"\n\
             proxy_protocol = {{ trusted = [{trusted}] }}\n",
            dir.path()
        )
    };
    for (trusted, warned) in [
        ("\"10.0.0.0/24\"", true),
        ("\"2001:db8::/64\"", true),
        ("\"10.0.3.17\", \"10.0.4.0/28\", \"2001:db8::5\"", false),
    ] {
        let logs = checked_logs(&path, &config(trusted));
        assert_eq!(
            logs.contains("every host in it can claim any client address"),
            warned,
            "{trusted}: {logs}"
        );
    }
}

#[test]
fn bad_config_exits_64_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "typo_key = 1\nthreads = 0\n[[listeners]]\nbind = \"127.0.0.1:6380\"\ntls.cert = \"nope.pem\"\ntls.key = \"nope-key.pem\"\n\
         auth.tokens = [\"short\"]\nupstream.address = \"127.0.0.1:6379\"\n",
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(64));
    let err = s(&out.stderr);
    for want in [
        "bad.toml: 5 problems",
        "typo_key: unknown key",
        "threads: must be 1 to 1024",
        "listeners[0].tls.cert: cannot read",
        "nope.pem",
        "listeners[0].tls.key: cannot read",
        "listeners[0].auth.tokens[0]: must be 16 to 128 characters long",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!err.contains("short\""), "tokens are never echoed");
    // The same via --check, and when running.
    let out = Command::new(BIN)
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn embedded_default_config_is_printable_and_valid() {
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(s(&out.stdout).contains("bind = \"127.0.0.1:6380\""));
    let out = Command::new(BIN).arg("check").output().unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
}

/// A running cachegate's log lines, as they come.
type Logs = std::sync::mpsc::Receiver<String>;

/// Runs the binary with JSON logs and returns it with the address of its first listener.
fn spawn(config: &str, dir: &std::path::Path, prefix: &str) -> (Child, std::net::SocketAddr, Logs) {
    let (child, addr, logs, _) = spawn_logged(config, dir, prefix);
    (child, addr, logs)
}

/// `spawn`, also returning the log lines up to the first listener's "listening".
fn spawn_logged(
    config: &str,
    dir: &std::path::Path,
    prefix: &str,
) -> (Child, std::net::SocketAddr, Logs, Vec<String>) {
    let path = dir.join("cachegate.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{prefix} exec {BIN} --log-json --config {}",
            path.display()
        ))
        .env("CACHEGATE_LOG", "trace")
        .env("CACHEGATE_DATA_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut before = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "cachegate logs 'listening'; it logged:\n{}",
                    before.join("\n")
                )
            });
        if line.contains("\"listening\"") {
            break addr_of(&line);
        }
        before.push(line);
    };
    (child, addr, rx, before)
}

/// The address a "listening" log line names.
fn addr_of(line: &str) -> std::net::SocketAddr {
    let start = line.find("\"addr\":\"").unwrap() + 8;
    let end = line[start..].find('"').unwrap() + start;
    line[start..end].parse().unwrap()
}

/// Sends SIGHUP and returns the log line saying how the reload went.
fn hangup(child: &Child, logs: &Logs) -> String {
    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    loop {
        let line = logs
            .recv_timeout(Duration::from_secs(20))
            .expect("the reload is logged");
        if line.contains("configuration reload") {
            return line;
        }
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("cachegate did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_and_sigterm_drains() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "canary-upstream-password"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [\"canary-token-one-123\", \"canary-token-two-456\"]\n\
         upstream.address = {:?}\nupstream.password = \"canary-upstream-password\"\n",
        pki.tls_toml(),
        redis.address()
    );
    let (mut child, addr, logs) = spawn(&config, dir.path(), "");
    let mut c = RawClient::tls(&pki, addr).await;
    assert!(s(&c.cmd(&["AUTH", "canary-wrong-token-789"]).await).starts_with("-WRONGPASS"));
    // A password typed where the user name goes.
    assert!(s(&c.cmd(&["AUTH", "canary-typed-as-user", "x"]).await).starts_with("-WRONGPASS"));
    assert!(s(&c
        .cmd(&["HELLO", "3", "AUTH", "default", "canary-wrong-token-789"])
        .await)
    .starts_with("-WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "canary-token-one-123"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&["AUTH", "default", "canary-token-two-456"]).await,
        b"+OK\r\n"
    );
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    drop(c);
    let status = sigterm(&mut child);
    assert!(status.success(), "{status:?}");
    let all: Vec<String> = logs.try_iter().collect();
    let text = all.join("\n");
    assert!(
        text.contains("\"security event\"") && text.contains("\"reason\":\"auth\""),
        "failures are logged:\n{text}"
    );
    assert!(text.contains("drain complete"), "{text}");
    for canary in [
        "canary-token-one",
        "canary-token-two",
        "canary-wrong-token",
        "canary-upstream-password",
        "canary-typed-as-user",
    ] {
        assert!(!text.contains(canary), "{canary} appeared in the logs");
    }
}

/// With a tiny descriptor limit, a burst of connections makes accept fail with EMFILE; the
/// listener backs off, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_survives_running_out_of_descriptors() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls.enabled = false\nauth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.warm_connections = 0\n",
        redis.address()
    );
    let (mut child, addr, logs) = spawn(&config, dir.path(), "ulimit -n 48;");
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
            held.push(c);
        }
    }
    assert!(
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            logs.try_iter().any(|l| l.contains("accept failed"))
        }),
        "the burst should exhaust descriptors"
    );
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = RawClient::new(Box::new(tcp));
        c.send_cmd(&["PING"]).await;
        if let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(2), c.try_read()).await {
            assert_eq!(reply, b"+PONG\r\n");
            ok = true;
            break;
        }
    }
    assert!(ok, "serving again after descriptors are freed");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(sigterm(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_passwords_never_reach_the_logs() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[users]]\nname = \"default\"\nacl = \"off\"\n\
         [[users]]\nname = \"app\"\nacl = \"on >canary-acl-password ~app:* +@read\"\n\
         [user_groups]\ng = [\"default\", \"app\"]\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"g\"\n\
         upstream.address = {:?}\n",
        pki.tls_toml(),
        redis.address()
    );
    let (mut child, addr, logs) = spawn(&config, dir.path(), "");
    let mut c = RawClient::tls(&pki, addr).await;
    assert!(s(&c.cmd(&["AUTH", "app", "canary-acl-wrong"]).await).starts_with("-WRONGPASS"));
    assert_eq!(
        c.cmd(&["AUTH", "app", "canary-acl-password"]).await,
        b"+OK\r\n"
    );
    assert!(s(&c.cmd(&["SET", "app:1", "canary-acl-value"]).await).starts_with("-NOPERM"));
    drop(c);
    assert!(sigterm(&mut child).success());
    let text: String = logs.try_iter().collect::<Vec<_>>().join("\n");
    assert!(
        text.contains("\"reason\":\"command\""),
        "denials are logged:\n{text}"
    );
    for canary in ["canary-acl-password", "canary-acl-wrong"] {
        assert!(!text.contains(canary), "{canary} appeared in the logs");
    }
}

/// A smoke run of the load generator (no timing is asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_against_redis_and_memcached() {
    let redis = Redis::start().await;
    let node = Memcached::start().await;
    for (target, extra) in [
        (redis.address(), vec![]),
        (node.address(), vec!["--memcached"]),
    ] {
        for command in ["set", "get"] {
            let out = tokio::task::spawn_blocking({
                let target = target.clone();
                let extra = extra.clone();
                move || {
                    Command::new(BIN)
                        .args(["bench", "--target", &target, "--duration", "200ms"])
                        .args([
                            "--connections",
                            "2",
                            "--pipeline",
                            "4",
                            "--command",
                            command,
                        ])
                        .args(&extra)
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            assert!(out.status.success(), "{}", s(&out.stderr));
            assert!(s(&out.stdout).contains("req/s"), "{}", s(&out.stdout));
        }
    }
    // A comparison with every process measured (here Redis stands for the proxy as well as
    // the backend) says where the core's time goes.
    let pid = redis.pid().expect("running").to_string();
    let out = tokio::task::spawn_blocking(move || {
        let target = redis.address();
        Command::new(BIN)
            .args(["bench", "--target", &target, "--duration", "200ms"])
            .args(["--connections", "2", "--pid", &pid, "--backend-pid", &pid])
            .args(["--compare", "--direct", &target, "--direct-pid", &pid])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = s(&out.stdout);
    assert!(out.status.success(), "{}", s(&out.stderr));
    for part in [
        "backend cpu/req",
        "(system",
        "one core's CPU per request",
        "core busy",
    ] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }
}

/// Secrets from outside the file: `${VAR}` and `..._file` for tokens, the upstream password
/// and user passwords. `cachegate check` says where each came from, never the value; a
/// missing variable or file is a problem naming its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_the_environment() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "canary-upstream-from-file"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), "canary-token-from-file-1\n").unwrap();
    std::fs::write(dir.path().join("upstream"), "canary-upstream-from-file\n").unwrap();
    std::fs::write(dir.path().join("app"), "canary-user-from-file\n").unwrap();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [\"${{CG_TEST_TOKEN_7}}\"]\nauth.tokens_file = \"tokens\"\n\
         upstream.address = {:?}\nupstream.password_file = \"upstream\"\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"g\"\nupstream.address = {:?}\n\
         upstream.password = \"${{CG_TEST_UPSTREAM_7}}\"\n\
         [[users]]\nname = \"default\"\nacl = \"off\"\n[[users]]\nname = \"app\"\nacl = \"on >${{CG_TEST_APP_7}} ~* +@all\"\npassword_file = \"app\"\n\
         [user_groups]\ng = [\"default\", \"app\"]\n",
        pki.tls_toml(),
        redis.address(),
        pki.tls_toml(),
        redis.address(),
    );
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, &config).unwrap();
    let envs = [
        ("CG_TEST_TOKEN_7", "canary-token-from-env-1"),
        ("CG_TEST_UPSTREAM_7", "canary-upstream-from-file"),
        ("CG_TEST_APP_7", "canary-user-from-env"),
    ];
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .envs(envs)
        .output()
        .unwrap();
    let text = s(&out.stdout);
    assert!(out.status.success(), "{}", s(&out.stderr));
    for line in [
        "secret listeners[0].auth.tokens[0]: from environment variable CG_TEST_TOKEN_7",
        "secret listeners[0].auth.tokens[1]: from file tokens (line 1)",
        "secret listeners[0].upstream.password: from file upstream",
        "secret listeners[1].upstream.password: from environment variable CG_TEST_UPSTREAM_7",
        "secret users[1].acl: from environment variable CG_TEST_APP_7",
        "secret users[1].password_file: from file app",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(!text.contains("canary"), "{text}");
    // Unset: a problem naming the key and the variable, never a value.
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = s(&out.stderr);
    assert!(
        err.contains(
            "listeners[0].auth.tokens[0]: environment variable CG_TEST_TOKEN_7 is not set"
        ),
        "{err}"
    );
    // And they work: the proxy runs with them.
    let prefix: String = envs.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let (mut child, addr, logs) = spawn(&config, dir.path(), &prefix);
    let mut c = RawClient::tls(&pki, addr).await;
    assert_eq!(
        c.cmd(&["AUTH", "canary-token-from-file-1"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        c.cmd(&["AUTH", "canary-token-from-env-1"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        c.cmd(&["PING"]).await,
        b"+PONG\r\n",
        "upstream password from the file"
    );
    let _ = child.kill();
    let _ = child.wait();
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(
        !logged.join("\n").contains("canary"),
        "a secret reached the logs"
    );
}

/// The container image cannot be built here (no container engine), so what the Dockerfile
/// promises is checked against the binary: the entrypoint and its command line run the shipped
/// sidecar configuration read-only from a directory the user cannot write, as an unprivileged
/// user (when the test can drop to one), with the data directory the image sets; the exposed
/// ports are the configuration's listeners; the HEALTHCHECK is `cachegate live`, which answers
/// from the admin listener's `/live`.
#[test]
fn the_dockerfile_matches_what_the_binary_does() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("FROM ").next().unwrap();
    let directive = |name: &str| -> String {
        runtime
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
            .trim()
            .to_string()
    };
    let json_args = |text: &str| -> Vec<String> {
        serde_json::from_str::<Vec<String>>(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    assert_eq!(directive("USER"), "cachegate", "not root");
    let entrypoint = json_args(&directive("ENTRYPOINT"));
    let cmd = json_args(&directive("CMD"));
    assert_eq!(entrypoint, ["/usr/local/bin/cachegate"]);
    let config_path = cmd
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap()
        .clone();
    assert_eq!(config_path, "/etc/cachegate/cachegate.toml");
    let healthcheck = directive("HEALTHCHECK");
    let health_cmd = json_args(healthcheck.split_once("CMD ").unwrap().1);
    assert_eq!(health_cmd[..2], ["/usr/local/bin/cachegate", "live"]);
    let health_admin =
        health_cmd[health_cmd.iter().position(|a| a == "--admin").unwrap() + 1].clone();

    // The sidecar example, as mounted: its listeners are what the image exposes, its admin
    // listener is where the HEALTHCHECK asks.
    let sidecar = std::fs::read_to_string(format!("{root}/config/sidecar.toml")).unwrap();
    let mut exposed: Vec<String> = directive("EXPOSE")
        .split_whitespace()
        .map(String::from)
        .collect();
    exposed.sort();
    let mut binds: Vec<String> = sidecar
        .lines()
        .filter_map(|l| l.strip_prefix("bind = \""))
        .map(|b| {
            b.trim_end_matches('"')
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|port| format!("127.0.0.1:{port}") != health_admin)
        .collect();
    binds.sort();
    assert_eq!(exposed, binds, "EXPOSE and the sidecar's listeners");
    assert!(
        sidecar.contains(&format!("bind = \"{health_admin}\"")),
        "admin listener"
    );

    // Run it: the config read-only in a directory the user cannot write, the data directory
    // the image sets, as an unprivileged user when the test can become one.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc-cachegate");
    let data = dir.path().join("var-lib-cachegate");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let admin_port = free_port();
    let text = sidecar
        .replace(
            "/etc/cachegate/tls/",
            &format!("{}/", pki.dir.path().display()),
        )
        .replace("0.0.0.0:6380", "127.0.0.1:0")
        .replace("0.0.0.0:11212", "127.0.0.1:0")
        .replace(&health_admin, &format!("127.0.0.1:{admin_port}"));
    let config = etc.join("cachegate.toml");
    std::fs::write(&config, text).unwrap();
    let readonly = |p: &std::path::Path, mode| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    readonly(&config, 0o444);
    readonly(&etc, 0o555);
    // Reachable by others, as /etc/cachegate is in the image.
    readonly(dir.path(), 0o755);
    readonly(pki.dir.path(), 0o755);
    for f in std::fs::read_dir(pki.dir.path()).unwrap() {
        readonly(&f.unwrap().path(), 0o444);
    }
    let root_user = is_root();
    let mut command = if root_user {
        // nobody: may read the world-readable files, write only its data directory.
        std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&data)
            .status()
            .unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]);
        c.arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    let mut args: Vec<String> = cmd.clone();
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    args[at] = config.display().to_string();
    let mut child = command
        .args(&args)
        .env("CACHEGATE_DATA_DIR", &data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = |admin: &str| {
        Command::new(BIN)
            .args(["live", "--admin", admin])
            .output()
            .unwrap()
            .status
            .success()
    };
    let admin = format!("127.0.0.1:{admin_port}");
    let mut up = false;
    for _ in 0..100 {
        if health(&admin) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if root_user {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        assert!(uid.contains("65534"), "{uid}");
    }
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        up && exited.is_none(),
        "the HEALTHCHECK command never saw /live: {exited:?} {}",
        s(&out.stderr)
    );
    assert!(!health(&admin), "and it fails once the process is gone");
}

/// Whether this test runs as root (then it drops to nobody to run the image's command line).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

/// The binary reloads on SIGHUP and on `cachegate reload` (POST /reload on its admin
/// listener): a new token is accepted without a restart, a bad file is refused with its
/// problems while the last good configuration serves, and no token reaches the logs.
/// A SIGHUP that arrives while cachegate still reads its configuration (here a root key
/// command that takes two seconds, as a KMS call may) does not end the process: it starts and
/// serves (it used to exit 129; a reviewer found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_startup_does_not_end_the_process() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.key");
    std::fs::write(&root, "6".repeat(64)).unwrap();
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\n\
         encryption.root_key_command = [\"sh\", \"-c\", \"sleep 2; cat {}\"]\n\
         encryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n",
        pki.tls_toml(),
        redis.address(),
        root.display()
    );
    // The shell that becomes cachegate (exec keeps its pid) has it signalled half a second in.
    let (mut child, addr, _logs) = spawn(&config, dir.path(), "(sleep 0.5; kill -HUP $$) &");
    let mut c = RawClient::tls(&pki, addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert!(child.try_wait().unwrap().is_none());
    let _ = child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_cachegate_reload_apply_a_new_config_without_a_restart() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = |token: &str| {
        format!(
            "[admin]\nbind = {admin:?}\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{token:?}]\nupstream.address = {:?}\n",
            pki.tls_toml(),
            redis.address()
        )
    };
    let (mut child, addr, logs) = spawn(&config("canary-token-one-123"), dir.path(), "");
    let path = dir.path().join("cachegate.toml");
    let mut open = RawClient::tls(&pki, addr).await;
    assert_eq!(
        open.cmd(&["AUTH", "canary-token-one-123"]).await,
        b"+OK\r\n"
    );

    std::fs::write(&path, config("canary-token-two-456")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let pki_ref = &pki;
    assert!(
        eventually(|| async move {
            let mut c = RawClient::tls(pki_ref, addr).await;
            c.cmd(&["AUTH", "canary-token-two-456"]).await == b"+OK\r\n"
        })
        .await,
        "SIGHUP did not reload"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );

    let reload = |admin: String| {
        move || {
            Command::new(BIN)
                .args(["reload", "--admin", &admin])
                .output()
                .unwrap()
        }
    };
    // A token too short for ElastiCache's rules: refused, and the token in force still works.
    std::fs::write(&path, config("canary-short")).unwrap();
    let out = tokio::task::spawn_blocking(reload(admin.clone()))
        .await
        .unwrap();
    assert!(!out.status.success());
    let said = s(&out.stderr);
    assert!(said.contains("auth.tokens"), "{said}");
    assert!(!said.contains("canary-short"), "{said}");
    let mut c = RawClient::tls(&pki, addr).await;
    assert_eq!(c.cmd(&["AUTH", "canary-token-two-456"]).await, b"+OK\r\n");

    std::fs::write(&path, config("canary-token-three-789")).unwrap();
    let out = tokio::task::spawn_blocking(reload(admin.clone()))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(s(&out.stdout).starts_with("reloaded"), "{}", s(&out.stdout));
    let mut c = RawClient::tls(&pki, addr).await;
    assert_eq!(c.cmd(&["AUTH", "canary-token-three-789"]).await, b"+OK\r\n");
    // The session from before every reload goes on.
    assert_eq!(open.cmd(&["PING"]).await, b"+PONG\r\n");

    let status = sigterm(&mut child);
    assert!(status.success(), "{status:?}");
    let text = logs.try_iter().collect::<Vec<_>>().join("\n");
    assert!(text.contains("configuration reloaded"), "{text}");
    assert!(text.contains("configuration reload refused"), "{text}");
    for canary in ["canary-token", "canary-short"] {
        assert!(!text.contains(canary), "{canary} appeared in the logs");
    }
}

/// The runtime's own account of itself in the start-up log line: its scheduler and how many
/// threads it runs tasks on.
fn runtime_of(before: &[String]) -> (String, String) {
    let line = before
        .iter()
        .find(|l| l.contains("\"starting\""))
        .expect("cachegate logs 'starting'");
    let field = |name: &str| {
        let start = line.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        let value = line[start..].split([',', '}']).next().unwrap();
        value.trim_matches('"').to_string()
    };
    (field("scheduler"), field("threads"))
}

/// `threads = 1` serves on tokio's single-threaded scheduler, and
/// everything works there: concurrent sessions on shared connections, a pinned subscriber
/// woken by another client, memcached, a reload and a draining SIGTERM. Without the setting,
/// the threads follow the CPUs the process may use (one under `taskset -c 0`); `threads = 3`
/// gets three workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_pick_the_scheduler_and_one_thread_serves_everything() {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let node = Memcached::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listeners = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{tls}auth.tokens = [\"threads-token-0123456\"]\n\
         upstream.address = {:?}\n\
         [[listeners]]\nname = \"cache\"\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n\
         tls.enabled = false\nupstream.nodes = [{:?}]\n",
        redis.address(),
        node.address(),
        tls = pki.tls_toml(),
    );
    let config = dir.path().join("cachegate.toml");
    let (mut child, addr, logs, before) =
        spawn_logged(&format!("threads = 1\n{listeners}"), dir.path(), "");
    assert_eq!(runtime_of(&before), ("single-threaded".into(), "1".into()));
    let memcached_addr = loop {
        let line = logs
            .recv_timeout(Duration::from_secs(20))
            .expect("the memcached listener is announced");
        if line.contains("\"listening\"") && line.contains("\"cache\"") {
            break addr_of(&line);
        }
    };
    let login = |mut c: RawClient| async move {
        assert_eq!(c.cmd(&["AUTH", "threads-token-0123456"]).await, b"+OK\r\n");
        c
    };
    let mut subscriber = login(RawClient::tls(&pki, addr).await).await;
    subscriber.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        subscriber.read().await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = login(RawClient::tls(&pki, addr).await).await;
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            for j in 0..50 {
                let (key, value) = (format!("k{i}"), format!("{i}-{j}"));
                assert_eq!(c.cmd(&["SET", &key, &value]).await, b"+OK\r\n");
                let want = format!("${}\r\n{value}\r\n", value.len());
                assert_eq!(s(&c.cmd(&["GET", &key]).await), want);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut publisher = login(RawClient::tls(&pki, addr).await).await;
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hi"]).await, b":1\r\n");
    assert_eq!(
        subscriber.read().await,
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    let cache = tokio::net::TcpStream::connect(memcached_addr)
        .await
        .unwrap();
    let mut cache = McClient::new(Box::new(cache));
    let got = cache
        .read_until_after(b"set m 0 0 2\r\nok\r\nget m\r\n", b"END\r\n")
        .await;
    assert_eq!(s(&got), "STORED\r\nVALUE m 0 2\r\nok\r\nEND\r\n");
    // A reload runs on the blocking pool while the single thread goes on serving; a new
    // number of threads needs a restart.
    let reloaded = hangup(&child, &logs);
    assert!(reloaded.contains("configuration reloaded"), "{reloaded}");
    assert_eq!(publisher.cmd(&["PING"]).await, b"+PONG\r\n");
    std::fs::write(&config, format!("threads = 2\n{listeners}")).unwrap();
    let refused = hangup(&child, &logs);
    assert!(
        refused.contains("reload refused") && refused.contains("threads"),
        "{refused}"
    );
    assert_eq!(publisher.cmd(&["PING"]).await, b"+PONG\r\n");
    drop((publisher, subscriber));
    assert!(sigterm(&mut child).success());

    // Pinned to one CPU (as `taskset -c 0`) and with no setting: one thread, from the
    // affinity mask.
    let (mut child, _, logs, before) =
        spawn_logged(&listeners, dir.path(), "taskset -pc 0 $$ >/dev/null;");
    assert_eq!(runtime_of(&before), ("single-threaded".into(), "1".into()));
    // Given every CPU while running, it still reloads: the setting did not change (the
    // default is not read again and taken for one).
    let cpus = format!(
        "0-{}",
        std::thread::available_parallelism().unwrap().get() - 1
    );
    let widened = Command::new("taskset")
        .args(["-pc", &cpus, &child.id().to_string()])
        .output()
        .unwrap();
    assert!(widened.status.success(), "{}", s(&widened.stderr));
    std::fs::write(&config, &listeners).unwrap();
    let reloaded = hangup(&child, &logs);
    assert!(reloaded.contains("configuration reloaded"), "{reloaded}");
    assert!(sigterm(&mut child).success());

    let (mut child, _, _, before) =
        spawn_logged(&format!("threads = 3\n{listeners}"), dir.path(), "");
    assert_eq!(runtime_of(&before), ("multi-threaded".into(), "3".into()));
    assert!(sigterm(&mut child).success());
}
