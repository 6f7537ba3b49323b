//! AUTH tokens and the renamed/disabled-command policy, against a real redis-server.

mod common;

use common::*;

const POLICY: &str = "commands.disable = [\"FLUSHDB\", \"KEYS\", \"@scripting\"]\n\
                      commands.rename = { FLUSHALL = \"ADMIN_FLUSHALL_9f2c\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_before_auth_get_noauth_and_nothing_is_forwarded() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    c.send(b"SET k v\r\n").await;
    assert_eq!(c.read().await, b"-NOAUTH Authentication required.\r\n");
    assert_eq!(
        c.cmd(&["HELLO", "3"]).await,
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
    );
    assert_eq!(redis.direct().await.cmd(&["EXISTS", "k"]).await, b":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_gets_redis_wrongpass() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(c.cmd(&["AUTH", "not-the-token-at-all"]).await, wrongpass);
    assert_eq!(
        c.cmd(&["AUTH", "default", "not-the-token-at-all"]).await,
        wrongpass
    );
    assert_eq!(c.cmd(&["AUTH", "someone", TOKEN]).await, wrongpass);
    assert_eq!(
        c.cmd(&["AUTH"]).await,
        b"-ERR wrong number of arguments for 'auth' command\r\n"
    );
    assert_eq!(
        c.cmd(&["AUTH", "a", "b", "c"]).await,
        b"-ERR syntax error\r\n"
    );
    assert_eq!(
        c.cmd(&["PING"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_rotation_tokens_work_in_every_form() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, "").await;
    for token in [TOKEN, TOKEN_NEW] {
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(c.cmd(&["AUTH", token]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        assert_eq!(c.cmd(&["AUTH", "default", token]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        let hello = c
            .cmd(&["HELLO", "3", "AUTH", "default", token, "SETNAME", "app"])
            .await;
        assert!(hello.starts_with(b"%"), "RESP3 map expected: {}", s(&hello));
        assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, b"$3\r\napp\r\n");
        let mut c = RawClient::tls(&pki, proxy.addr).await;
        c.send(format!("AUTH {token}\r\n").as_bytes()).await;
        assert_eq!(c.read().await, b"+OK\r\n");
    }
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let bad = c
        .cmd(&["HELLO", "3", "AUTH", "default", "wrong-token-value"])
        .await;
    assert_eq!(
        bad,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
}

/// The upstream requires its own password; the client's token is never sent there. If it were,
/// the backend would reject it and the client would see an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_uses_cachegates_own_credentials() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "backend-secret-pw"]).await;
    let extra = "upstream.password = \"backend-secret-pw\"\n";
    let proxy = Proxy::tls_with_tokens(&pki, &redis, extra).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    // RESET logs the upstream connection out; cachegate logs it back in.
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(
        c.cmd(&["GET", "k"]).await,
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["GET", "k"]).await, b"$1\r\nv\r\n");
    // The backend never saw a client token: no AUTH ever failed there.
    let mut direct = redis.direct().await;
    let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(
        direct.cmd(&["AUTH", "x"]).await,
        wrongpass,
        "same text as Redis"
    );
    assert_eq!(direct.cmd(&["AUTH", "backend-secret-pw"]).await, b"+OK\r\n");
    let log = s(&direct.cmd(&["ACL", "LOG"]).await);
    assert!(
        log.starts_with("*1\r\n"),
        "only our own failure is logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_commands_look_unknown_in_every_form() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, POLICY).await;
    let mut direct = redis.direct().await;
    assert_eq!(direct.cmd(&["SET", "keep", "1"]).await, b"+OK\r\n");
    // What Redis itself says for an unknown command, with the name swapped in.
    let unknown = s(&direct.cmd(&["NOSUCHCMDX", "ASYNC"]).await);
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    for name in ["FLUSHDB", "flushdb", "FlushDb", "FLUSHALL", "flushall"] {
        let reply = s(&c.cmd(&[name, "ASYNC"]).await);
        assert_eq!(reply, unknown.replace("NOSUCHCMDX", name));
    }
    c.send(b"flushdb\r\n").await;
    assert_eq!(
        s(&c.read().await),
        "-ERR unknown command 'flushdb', with args beginning with: \r\n"
    );
    for name in ["KEYS", "EVAL", "evalsha", "FCALL", "SCRIPT", "FUNCTION"] {
        let reply = s(&c.cmd(&[name, "x"]).await);
        assert!(reply.starts_with("-ERR unknown command"), "{name}: {reply}");
    }
    // Inline, spelt with quotes that open mid-word or an escape, between the whitespace Redis
    // skips (vertical tab, form feed): Redis would read each as FLUSHALL, and so does
    // cachegate, which refuses it (the splitter's rules are compared with redis-server in
    // `redis_faults::inline_commands_split_as_redis_splits_them`).
    for line in [
        &b"FLUSH\"ALL\"\r\n"[..],
        b"F'LUSHALL'\r\n",
        b"\x0bFL\"USHALL\"\x0c\r\n",
        b"\"\\x46LUSHALL\"\r\n",
    ] {
        c.send(line).await;
        let reply = s(&c.read().await);
        assert!(
            reply.starts_with("-ERR unknown command"),
            "{line:?}: {reply}"
        );
    }
    assert_eq!(direct.cmd(&["GET", "keep"]).await, b"$1\r\n1\r\n");
    // The backend never saw any of them.
    let stats = s(&direct.cmd(&["INFO", "commandstats"]).await);
    for real in ["flushdb", "flushall", "keys", "eval"] {
        assert!(
            !stats.contains(&format!("cmdstat_{real}:")),
            "{real} reached the backend: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_command_runs_under_its_new_name_only() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, POLICY).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["FLUSHALL"]).await).starts_with("-ERR unknown command 'FLUSHALL'"));
    assert_eq!(c.cmd(&["EXISTS", "k"]).await, b":1\r\n");
    assert_eq!(c.cmd(&["admin_flushall_9F2C"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["EXISTS", "k"]).await, b":0\r\n");
    c.send(b"ADMIN_FLUSHALL_9f2c\r\n").await;
    assert_eq!(c.read().await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_command_inside_multi_aborts_the_transaction() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, POLICY).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "in-tx", "1"]).await, b"+QUEUED\r\n");
    assert!(s(&c.cmd(&["FLUSHDB"]).await).starts_with("-ERR unknown command 'FLUSHDB'"));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(c.cmd(&["EXISTS", "in-tx"]).await, b":0\r\n");
    // The connection is usable and out of MULTI; the renamed command works inside MULTI.
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["SET", "in-tx", "2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&["EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(c.cmd(&["GET", "in-tx"]).await, b"$1\r\n2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_introspection_hides_disabled_and_real_names() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, POLICY).await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let list = s(&c.cmd(&["COMMAND", "LIST"]).await);
    assert!(list.contains("\r\nget\r\n"), "sanity");
    for hidden in [
        "\r\nflushdb\r\n",
        "\r\nflushall\r\n",
        "\r\nkeys\r\n",
        "\r\neval\r\n",
    ] {
        assert!(!list.contains(hidden), "{hidden:?} listed");
    }
    assert!(
        list.contains("\r\nadmin_flushall_9f2c\r\n"),
        "alias missing"
    );
    let count = s(&c.cmd(&["COMMAND", "COUNT"]).await);
    let listed = list.matches("\r\n$").count();
    assert_eq!(count, format!(":{listed}\r\n"));

    let all = s(&c.cmd(&["COMMAND"]).await);
    assert!(!all.contains("$7\r\nflushdb\r\n") && !all.contains("$8\r\nflushall\r\n"));
    assert!(all.contains("admin_flushall_9f2c"));

    let info = c
        .cmd(&[
            "COMMAND",
            "INFO",
            "get",
            "flushall",
            "admin_flushall_9f2c",
            "keys",
        ])
        .await;
    let mut direct = redis.direct().await;
    let null = direct.cmd(&["COMMAND", "INFO", "nosuchcommand"]).await;
    let null_entry = &null[4..]; // "*1\r\n" then the backend's own null
    let info_s = s(&info);
    assert!(info_s.starts_with("*4\r\n*"), "{info_s}");
    assert_eq!(info_s.matches(&*s(null_entry)).count(), 2, "{info_s}");
    assert!(info_s.contains("admin_flushall_9f2c") && !info_s.contains("$8\r\nflushall"));

    let docs = s(&c
        .cmd(&["COMMAND", "DOCS", "flushdb", "admin_flushall_9f2c", "get"])
        .await);
    assert!(!docs.contains("\r\nflushdb\r\n") && !docs.contains("\r\nflushall\r\n"));
    assert!(docs.contains("\r\nadmin_flushall_9f2c\r\n") && docs.contains("\r\nget\r\n"));

    let keys = s(&c.cmd(&["COMMAND", "GETKEYS", "KEYS", "*"]).await);
    assert!(keys.starts_with("-ERR"), "{keys}");

    // ACL CAT and ACL DRYRUN (answered by the backend here) do not reveal them either.
    let cat = s(&c.cmd(&["ACL", "CAT", "keyspace"]).await);
    assert!(
        !cat.contains("\r\nflushdb\r\n") && !cat.contains("\r\nkeys\r\n"),
        "{cat}"
    );
    let cat = s(&c.cmd(&["ACL", "CAT", "write"]).await);
    assert!(
        !cat.contains("\r\nflushall\r\n") && cat.contains("admin_flushall_9f2c"),
        "{cat}"
    );
    for hidden in ["FLUSHALL", "flushdb"] {
        let dry = s(&c.cmd(&["ACL", "DRYRUN", "default", hidden]).await);
        assert!(dry.starts_with("-ERR Command"), "{hidden}: {dry}");
    }
    assert_eq!(
        c.cmd(&["ACL", "DRYRUN", "default", "admin_flushall_9f2c"])
            .await,
        b"+OK\r\n"
    );
}

/// `commands.disable = ["CONFIG|SET"]` refuses that subcommand alone, with Redis's own
/// unknown-subcommand error, in every form (inline, in MULTI, through a renamed container), and
/// COMMAND's replies show neither it nor the real name behind a renamed container's
/// subcommands (`config|get` under its alias).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subcommands_are_disabled_and_hidden() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(
        &pki,
        &redis,
        "commands.disable = [\"CONFIG|SET\", \"CLIENT|NO-EVICT\"]\ncommands.rename = { CONFIG = \"cfg\" }\ncommands.scripts = \"unguarded\"\n",
    )
    .await;
    let mut c = RawClient::authed(&pki, proxy.addr).await;
    let mut direct = redis.direct().await;
    // Redis's words, with the name as the client typed it (never the real one behind it).
    let want = s(&direct.cmd(&["CONFIG", "NOSUCH", "x"]).await)
        .replace("NOSUCH", "SET")
        .replace("CONFIG", "CFG");
    assert_eq!(s(&c.cmd(&["cfg", "SET", "maxmemory", "1"]).await), want);
    assert_eq!(
        s(&c.cmd(&["cfg", "set", "maxmemory", "1"]).await),
        want.replace("'SET'", "'set'")
    );
    c.send(b"cfg SET maxmemory 1\r\n").await;
    assert!(s(&c.read().await).starts_with("-ERR unknown subcommand"));
    assert!(s(&c.cmd(&["CONFIG", "GET", "maxmemory"]).await).starts_with("-ERR unknown command"));
    assert!(c
        .cmd(&["cfg", "GET", "maxmemory"])
        .await
        .starts_with(b"*2\r\n"));
    assert!(s(&c.cmd(&["CLIENT", "NO-EVICT", "ON"]).await).starts_with("-ERR unknown subcommand"));
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert!(
        s(&c.cmd(&["cfg", "SET", "maxmemory", "1"]).await).starts_with("-ERR unknown subcommand")
    );
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(
        s(&direct.cmd(&["CONFIG", "GET", "maxmemory"]).await),
        "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n"
    );

    // Introspection: the whole table, INFO and DOCS, by any spelling.
    let all = s(&c.cmd(&["COMMAND"]).await);
    assert!(!all.contains("config|"), "real subcommand names shown");
    assert!(all.contains("cfg|get") && !all.contains("cfg|set"));
    assert!(!all.contains("client|no-evict") && all.contains("client|list"));
    for name in ["config|set", "cfg|set", "config|get", "CONFIG|GET"] {
        let info = s(&c.cmd(&["COMMAND", "INFO", name]).await);
        assert!(
            !info.contains("config|") && !info.contains("set\r\n:"),
            "{name}: {info}"
        );
    }
    let info = s(&c.cmd(&["COMMAND", "INFO", "cfg|get"]).await);
    assert!(info.contains("cfg|get"), "{info}");
    let docs = s(&c.cmd(&["COMMAND", "DOCS", "cfg"]).await);
    assert!(
        docs.contains("cfg|get") && !docs.contains("cfg|set") && !docs.contains("config|"),
        "{docs}"
    );
    assert!(c.cmd(&["HELLO", "3"]).await.starts_with(b"%"));
    let docs = s(&c.cmd(&["COMMAND", "DOCS", "cfg"]).await);
    assert!(
        docs.starts_with("%1\r\n") && docs.contains("cfg|get") && !docs.contains("cfg|set"),
        "{docs}"
    );
    let keys = s(&c.cmd(&["COMMAND", "GETKEYS", "cfg", "SET", "a", "b"]).await);
    assert!(keys.starts_with("-ERR"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_mode_none_lets_clients_in() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_open(&pki, &redis, "").await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["PING"]).await, b"+PONG\r\n");
    assert!(s(&c.cmd(&["AUTH", "x"]).await).starts_with("-ERR AUTH <password> called without"));
    assert_eq!(c.cmd(&["AUTH", "default", "anything"]).await, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works_through_cachegate() {
    let (pki, redis) = (Pki::new(), Redis::start().await);
    let proxy = Proxy::tls_with_tokens(&pki, &redis, POLICY).await;
    let port = proxy.addr.port().to_string();
    let ca = pki.ca.display().to_string();
    let run = |args: Vec<String>| {
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.args([
            "--tls",
            "--cacert",
            &ca,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--no-auth-warning",
        ]);
        cmd.args(args);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let out = run(vec![
        "-a".into(),
        TOKEN.into(),
        "SET".into(),
        "cli".into(),
        "yes".into(),
    ])
    .await;
    assert_eq!(s(&out.stdout).trim(), "OK", "{}", s(&out.stderr));
    let out = run(vec![
        "-a".into(),
        TOKEN_NEW.into(),
        "GET".into(),
        "cli".into(),
    ])
    .await;
    assert_eq!(s(&out.stdout).trim(), "yes");
    let out = run(vec![
        "-a".into(),
        "wrong-token-123456".into(),
        "GET".into(),
        "cli".into(),
    ])
    .await;
    let text = s(&out.stdout) + &s(&out.stderr);
    assert!(
        text.contains("WRONGPASS") || text.contains("NOAUTH"),
        "{text}"
    );
    let out = run(vec!["-a".into(), TOKEN.into(), "FLUSHALL".into()]).await;
    assert!(
        s(&out.stdout).contains("unknown command"),
        "{}",
        s(&out.stdout)
    );
    let out = run(vec![
        "-3".into(),
        "-a".into(),
        TOKEN.into(),
        "HELLO".into(),
        "3".into(),
    ])
    .await;
    assert!(s(&out.stdout).contains("proto"), "{}", s(&out.stdout));
}

/// `commands.scripts = "backend_acl"`: a disabled command cannot run from a script either,
/// because cachegate's connections log in as a backend user that denies it, which cachegate
/// provisions with its upstream credentials; if that user disappears (a restarted backend, a
/// DELUSER), it is provisioned again on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_run_disabled_commands_with_a_backend_user() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "admin-password"]).await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.password = \"admin-password\"\nupstream.health_interval = \"1h\"\n\
         commands.disable = [\"FLUSHALL\", \"CONFIG|SET\"]\ncommands.scripts = \"backend_acl\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["SET", "keep", "1"]).await, b"+OK\r\n");
    let flush = s(&c.cmd(&["EVAL", "return redis.call('FLUSHALL')", "0"]).await);
    assert!(
        flush.starts_with("-ERR The user executing the script can't run"),
        "{flush}"
    );
    let config = s(&c
        .cmd(&[
            "EVAL",
            "return redis.call('CONFIG', 'SET', 'maxmemory', '1')",
            "0",
        ])
        .await);
    assert!(config.starts_with("-"), "{config}");
    assert_eq!(
        c.cmd(&["EVAL", "return redis.call('GET', 'keep')", "0"])
            .await,
        b"$1\r\n1\r\n"
    );
    assert!(s(&c.cmd(&["FLUSHALL"]).await).starts_with("-ERR unknown command"));

    // The backend user goes away (Redis disconnects its clients): provisioned again.
    let mut admin = redis.direct().await;
    assert_eq!(admin.cmd(&["AUTH", "admin-password"]).await, b"+OK\r\n");
    assert_eq!(
        admin.cmd(&["ACL", "DELUSER", "cachegate-edge"]).await,
        b":1\r\n"
    );
    assert!(
        eventually(|| async {
            let mut c = RawClient::tls(&pki, proxy.addr).await;
            c.cmd(&["GET", "keep"]).await == b"$1\r\n1\r\n"
        })
        .await
    );
    let list = s(&admin.cmd(&["ACL", "LIST"]).await);
    assert!(
        list.contains("user cachegate-edge on") && list.contains("-flushall"),
        "{list}"
    );
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let flush = s(&c.cmd(&["EVAL", "return redis.call('FLUSHALL')", "0"]).await);
    assert!(flush.starts_with("-"), "{flush}");
    assert_eq!(admin.cmd(&["EXISTS", "keep"]).await, b":1\r\n");
}

/// With `backend_acl`, a renamed container runs its subcommands under its alias: those no
/// script can call (`CONFIG GET`, `noscript`) as the backend user, which denies the container
/// but allows them again (it denied them all, so the alias of the shipped example's renamed
/// `CONFIG` got `NOPERM`, found by a reviewer); a disabled one stays denied there too, and a
/// script still reaches none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_container_runs_under_its_alias_with_a_backend_user() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "admin-password"]).await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.password = \"admin-password\"\nupstream.health_interval = \"1h\"\n\
         commands.rename = {{ CONFIG = \"admin-config\", OBJECT = \"admin-object\" }}\n\
         commands.disable = [\"CONFIG|SET\"]\ncommands.scripts = \"backend_acl\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert!(c
        .cmd(&["admin-config", "GET", "maxmemory"])
        .await
        .starts_with(b"*2\r\n"));
    assert!(s(&c.cmd(&["admin-config", "SET", "maxmemory", "1"]).await)
        .starts_with("-ERR unknown subcommand"));
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["admin-object", "ENCODING", "k"]).await).starts_with("$"));
    // A script calls OBJECT ENCODING (script-callable): denied with the container.
    let script = ["EVAL", "return redis.call('OBJECT', 'ENCODING', 'k')", "0"];
    assert!(s(&c.cmd(&script).await).starts_with("-ERR The user executing the script"));
    let mut admin = redis.direct().await;
    assert_eq!(admin.cmd(&["AUTH", "admin-password"]).await, b"+OK\r\n");
    let backend = s(&admin
        .cmd(&[
            "ACL",
            "DRYRUN",
            "cachegate-edge",
            "CONFIG",
            "SET",
            "maxmemory",
            "1",
        ])
        .await);
    assert!(backend.contains("no permissions"), "{backend}");
    assert_eq!(
        admin
            .cmd(&[
                "ACL",
                "DRYRUN",
                "cachegate-edge",
                "CONFIG",
                "GET",
                "maxmemory"
            ])
            .await,
        b"+OK\r\n"
    );
}

/// With `backend_acl`, a renamed command's real name is denied to the backend user too, so no
/// script can call it; the alias runs it as the configured upstream user, and the connection
/// goes straight back. Inside MULTI (where the login cannot change) it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_commands_are_out_of_reach_of_scripts() {
    let pki = Pki::new();
    let redis = Redis::start_with(&["--requirepass", "admin-password"]).await;
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\n\
         upstream.address = {:?}\nupstream.password = \"admin-password\"\nupstream.health_interval = \"1h\"\n\
         commands.rename = {{ FLUSHALL = \"admin-flushall\" }}\ncommands.scripts = \"backend_acl\"\n",
        pki.tls_toml(),
        redis.address()
    ))
    .await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let flush_script = ["EVAL", "return redis.call('FLUSHALL')", "0"];
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&flush_script).await).starts_with("-ERR The user executing the script"));
    assert_eq!(c.cmd(&["admin-flushall"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["EXISTS", "k"]).await, b":0\r\n");
    // Back as the backend user: scripts still cannot flush.
    assert_eq!(c.cmd(&["SET", "k", "1"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&flush_script).await).starts_with("-ERR The user executing the script"));
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert!(s(&c.cmd(&["admin-flushall"]).await)
        .starts_with("-ERR cachegate: this command runs as another"));
    assert!(s(&c.cmd(&["EXEC"]).await).starts_with("-EXECABORT"));
    assert_eq!(c.cmd(&["GET", "k"]).await, b"$1\r\n1\r\n");
}
