//! ACL users enforced by cachegate, compared with a real redis-server given the same users.

mod common;

use common::*;

fn users() -> Vec<(&'static str, String)> {
    vec![
        ("default", "on nopass ~* &* +@all".to_string()),
        (
            "app",
            format!(
                "on >app-password-1 #{} ~app:* %R~shared:* &news:* +@read +@write +@pubsub +@transaction -@dangerous +config|get +acl|whoami",
                sha256_hex("app-password-2")
            ),
        ),
        ("reader", "on >reader-password %R~* +@read -@dangerous +acl|whoami resetchannels".to_string()),
        ("scripts", "on >scripts-password ~* +@all -@scripting".to_string()),
        ("disabled", "off >disabled-password ~* +@all".to_string()),
    ]
}

fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn setup() -> (Pki, Redis, Proxy) {
    let pki = Pki::new();
    let redis = Redis::start().await;
    let mut direct = redis.direct().await;
    let mut toml = String::new();
    for (name, rules) in users() {
        let mut args = vec!["ACL", "SETUSER", name, "reset"];
        args.extend(rules.split_whitespace());
        assert_eq!(direct.cmd(&args).await, b"+OK\r\n", "{name}");
        toml.push_str(&format!("[[users]]\nname = {name:?}\nacl = {rules:?}\n"));
    }
    toml.push_str(
        "[user_groups]\napps = [\"default\", \"app\", \"reader\", \"scripts\", \"disabled\"]\n",
    );
    toml.push_str(&format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"acl\"\nauth.user_group = \"apps\"\n\
         upstream.address = {:?}\nupstream.health_interval = \"1h\"\n",
        pki.tls_toml(),
        redis.address()
    ));
    let proxy = Proxy::start(&toml).await;
    (pki, redis, proxy)
}

const BATTERY: &[&[&str]] = &[
    &["GET", "app:1"],
    &["GET", "other"],
    &["SET", "app:1", "x"],
    &["SET", "shared:1", "x"],
    &["GET", "shared:1"],
    &["MSET", "app:1", "x", "other", "y"],
    &["MGET", "app:1", "shared:2"],
    &["DEL", "app:1"],
    &["FLUSHALL"],
    &["KEYS", "*"],
    &["CONFIG", "GET", "maxmemory"],
    &["CONFIG", "SET", "maxmemory", "1"],
    &["PUBLISH", "news:today", "hi"],
    &["PUBLISH", "other", "hi"],
    &["SUBSCRIBE", "news:a", "other"],
    &["PSUBSCRIBE", "news:*"],
    &["PSUBSCRIBE", "news:a"],
    &["EVAL", "return 1", "1", "app:1"],
    &["EVAL", "return 1", "1", "other"],
    &["COPY", "shared:1", "app:2"],
    &["COPY", "app:2", "shared:1"],
    &["XREAD", "STREAMS", "app:s", "other:s", "0", "0"],
    &["SORT", "app:l", "STORE", "other"],
    &["LPUSH", "app:l", "x"],
    &["EXISTS", "shared:1"],
    &["INFO"],
];

/// For every user and a battery of commands, ACL DRYRUN through cachegate says exactly what
/// the real Redis says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dryrun_verdicts_match_real_redis() {
    let (pki, redis, proxy) = setup().await;
    let mut ours = RawClient::tls(&pki, proxy.addr).await; // default: on nopass +@all
    let mut theirs = redis.direct().await;
    for (user, _) in users() {
        for cmd in BATTERY {
            let mut args = vec!["ACL", "DRYRUN", user];
            args.extend_from_slice(cmd);
            let a = s(&ours.cmd(&args).await);
            let b = s(&theirs.cmd(&args).await);
            assert_eq!(a, b, "{user}: {cmd:?}");
        }
    }
}

/// Denials in real use: the same NOPERM errors as Redis, and nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_commands_get_redis_noperm_errors() {
    let (pki, redis, proxy) = setup().await;
    let mut ours = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        ours.cmd(&["AUTH", "app", "app-password-1"]).await,
        b"+OK\r\n"
    );
    let mut theirs = redis.direct().await;
    assert_eq!(
        theirs.cmd(&["AUTH", "app", "app-password-1"]).await,
        b"+OK\r\n"
    );
    for cmd in [
        &["GET", "other"][..],
        &["FLUSHALL"],
        &["PUBLISH", "other", "x"],
        &["SET", "shared:1", "x"],
        &["CONFIG", "SET", "maxmemory", "1"],
    ] {
        assert_eq!(
            s(&ours.cmd(cmd).await),
            s(&theirs.cmd(cmd).await),
            "{cmd:?}"
        );
    }
    assert_eq!(ours.cmd(&["SET", "app:1", "v"]).await, b"+OK\r\n");
    assert_eq!(ours.cmd(&["GET", "app:1"]).await, b"$1\r\nv\r\n");
    assert_eq!(ours.cmd(&["ACL", "WHOAMI"]).await, b"$3\r\napp\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_command_inside_multi_aborts_and_nothing_runs() {
    let (pki, redis, proxy) = setup().await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(c.cmd(&["AUTH", "app", "app-password-1"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&["INCR", "app:counter"]).await, b"+QUEUED\r\n");
    assert!(s(&c.cmd(&["SET", "other", "x"]).await).starts_with("-NOPERM"));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    let mut direct = redis.direct().await;
    let stats = s(&direct.cmd(&["INFO", "commandstats"]).await);
    assert!(!stats.contains("cmdstat_incr:"), "INCR never ran: {stats}");
    assert!(!stats.contains("cmdstat_set:calls"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_with_either_password_and_disabled_users_cannot() {
    let (pki, _redis, proxy) = setup().await;
    let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["ACL", "WHOAMI"]).await,
        b"$7\r\ndefault\r\n",
        "default is nopass"
    );
    assert_eq!(c.cmd(&["AUTH", "app", "app-password-1"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&["AUTH", "app", "app-password-2"]).await,
        b"+OK\r\n",
        "hashed second password"
    );
    assert_eq!(c.cmd(&["AUTH", "app", "wrong"]).await, wrongpass);
    assert_eq!(
        c.cmd(&["ACL", "WHOAMI"]).await,
        b"$3\r\napp\r\n",
        "a failed AUTH keeps the user"
    );
    assert_eq!(
        c.cmd(&["AUTH", "disabled", "disabled-password"]).await,
        wrongpass
    );
    assert_eq!(c.cmd(&["AUTH", "nobody", "x"]).await, wrongpass);
    let hello = c
        .cmd(&["HELLO", "3", "AUTH", "reader", "reader-password"])
        .await;
    assert!(hello.starts_with(b"%"), "{}", s(&hello));
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, b"$6\r\nreader\r\n");
    assert!(s(&c.cmd(&["SET", "k", "v"]).await).starts_with("-NOPERM"));
    // RESET goes back to default (on, nopass), as in Redis.
    assert_eq!(c.cmd(&["RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, b"$7\r\ndefault\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_introspection_without_secrets() {
    let (pki, redis, proxy) = setup().await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    let mut direct = redis.direct().await;
    assert_eq!(
        c.cmd(&["ACL", "CAT"]).await,
        direct.cmd(&["ACL", "CAT"]).await
    );
    let ours = s(&c.cmd(&["ACL", "USERS"]).await);
    for name in ["default", "app", "reader", "scripts", "disabled"] {
        assert!(ours.contains(&format!("\r\n{name}\r\n")), "{ours}");
    }
    let getuser = s(&c.cmd(&["ACL", "GETUSER", "app"]).await);
    assert!(
        getuser.contains("$9\r\npasswords\r\n*0\r\n"),
        "no hashes shown: {getuser}"
    );
    assert!(getuser.contains("~app:* %R~shared:*"), "{getuser}");
    assert!(
        !getuser.contains(&sha256_hex("app-password-2")),
        "{getuser}"
    );
    assert!(s(&c.cmd(&["ACL", "SETUSER", "evil", "on", "+@all"]).await)
        .starts_with("-ERR cachegate: ACL SETUSER is not available"));
    assert!(s(&c.cmd(&["ACL", "LIST"]).await).starts_with("-ERR cachegate"));
    // Only users allowed to run ACL GETUSER may see rules.
    assert_eq!(
        c.cmd(&["AUTH", "reader", "reader-password"]).await,
        b"+OK\r\n"
    );
    let denied = s(&c.cmd(&["ACL", "GETUSER", "app"]).await);
    assert!(denied.starts_with("-NOPERM"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripting_can_be_denied_per_user() {
    let (pki, _redis, proxy) = setup().await;
    let mut c = RawClient::tls(&pki, proxy.addr).await;
    assert_eq!(
        c.cmd(&["AUTH", "scripts", "scripts-password"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        s(&c.cmd(&["EVAL", "return redis.call('FLUSHALL')", "0"]).await),
        "-NOPERM this user has no permissions to run the 'eval' command\r\n"
    );
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, b"+OK\r\n");
}
