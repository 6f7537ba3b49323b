//! redis-py's own tests (`test_commands`, `test_pipeline`, `test_pubsub`, `test_scripting`, from
//! the sdist of the redis-py version the system python3 imports) run against a real Redis
//! directly and, at the same time, against another through cachegate over TLS: every test that
//! passes directly must pass through cachegate, except the deviations README's "Conformance"
//! section lists by name with their reasons (`DEVIATIONS` below, the same list). A deviation that
//! starts passing fails the test too, so that README's list stays true.
//!
//! scripts/test fetches the test files (scripts/fetch-python-suites) and names them in
//! `CACHEGATE_REDIS_PY_TESTS`; without it the default cache directory is tried. The whole
//! comparison, with Redis's Tcl suite and pymemcache's tests, is `scripts/conformance`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Tests that pass against Redis directly and are refused through cachegate on purpose (README,
/// "Conformance": each with its reason). Substrings of pytest node ids.
const DEVIATIONS: &[&str] = &[
    // No client acts on another's connection: the backend connections are shared or pooled.
    "TestRedisCommands::test_client_kill",
    "TestRedisCommands::test_client_kill_filter_by_id",
    "TestRedisCommands::test_client_kill_filter_by_addr",
    "TestRedisCommands::test_client_kill_filter_by_laddr",
    "TestRedisCommands::test_client_kill_filter_by_user",
    "TestRedisCommands::test_client_unblock",
    "TestRedisCommands::test_client_pause",
    "TestRedisCommands::test_client_pause_all",
    "TestRedisCommands::test_client_unpause",
    "TestRedisCommands::test_client_tracking",
    // A client sees only itself in CLIENT LIST.
    "TestRedisCommands::test_client_list_client_id",
    "TestPubSubConnectionKilled::test_connection_error_raised_when_connection_dies",
    // The backend's users are cachegate's to use (no cachegate users: ACL SETUSER etc. refused).
    "TestRedisCommands::test_acl_dryrun",
    "TestRedisCommands::test_acl_deluser",
    "TestRedisCommands::test_acl_getuser_setuser",
    "TestRedisCommands::test_acl_list",
    "TestRedisCommands::test_acl_log",
    "TestRedisCommands::test_acl_users",
    "TestRedisCommands::test_acl_setuser_categories_without_prefix_fails",
    "TestRedisCommands::test_acl_setuser_commands_without_prefix_fails",
    "TestRedisCommands::test_acl_setuser_add_passwords_and_nopass_fails",
];

/// Not run on either side: it sets `requirepass` on the backend (refused through cachegate, see
/// README "No client locks cachegate out"; run directly it would leave the password set for
/// every later test). `scripts/conformance` runs it last, on its own.
const NOT_RUN: &str = "tests/test_commands.py::TestRedisCommands::test_auth";

const FILES: &[&str] = &[
    "tests/test_commands.py",
    "tests/test_pipeline.py",
    "tests/test_pubsub.py",
    "tests/test_scripting.py",
];

/// Where redis-py's `tests/` directory is.
fn suite_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CACHEGATE_REDIS_PY_TESTS") {
        return PathBuf::from(dir);
    }
    let version = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .expect("/usr/bin/python3");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache
        .join("cachegate-conformance")
        .join(format!("redis-{}", s(&version.stdout).trim()))
        .join("tests")
}

/// Runs pytest on `tests` (node ids or files) from `work` against `url`; the node ids that
/// passed (call and teardown), and the output.
async fn pytest(work: &Path, url: String, tests: Vec<String>) -> (BTreeSet<String>, String) {
    let work = work.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .current_dir(&work)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA"])
            .args(["--tb=line", "--redis-url", &url, "--deselect", NOT_RUN])
            .args(&tests)
            .output()
            .expect("/usr/bin/python3 -m pytest (python3-pytest; scripts/test installs it)")
    })
    .await
    .unwrap();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    let node = |l: &str, tag: &str| {
        l.strip_prefix(tag)
            .map(|rest| rest.split(" - ").next().unwrap().trim().to_string())
    };
    let failed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| node(l, "ERROR ").or_else(|| node(l, "FAILED ")))
        .collect();
    let passed = text
        .lines()
        .filter_map(|l| node(l, "PASSED "))
        .filter(|n| !failed.contains(n))
        .collect();
    (passed, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_tests_pass_through_cachegate_as_they_do_directly() {
    let tests = suite_dir();
    assert!(
        tests.join("conftest.py").is_file(),
        "redis-py's tests are not at {} (scripts/test fetches them: \
         scripts/fetch-python-suites redis)",
        tests.display()
    );
    // A copy outside the sdist, so that they import the installed redis package.
    let work = tempfile::tempdir().unwrap();
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(&tests)
        .arg(work.path())
        .status()
        .unwrap();
    assert!(copy.success());

    let pki = Pki::new();
    let direct_redis = Redis::start().await;
    let redis = Redis::start().await;
    let proxy = Proxy::tls_open(&pki, &redis, "").await;
    let files: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    let through_url = format!(
        "rediss://127.0.0.1:{}/0?ssl_ca_certs={}",
        proxy.addr.port(),
        pki.ca.display()
    );
    let ((direct, direct_text), (through, through_text)) = tokio::join!(
        pytest(
            work.path(),
            format!("redis://{}/0", direct_redis.address()),
            files.clone()
        ),
        pytest(work.path(), through_url.clone(), files),
    );
    assert!(
        direct.len() > 400,
        "redis-py's tests directly: only {} passed\n{direct_text}",
        direct.len()
    );
    let declared = |n: &str| DEVIATIONS.iter().any(|d| n.ends_with(d));
    let mut differences: Vec<String> = direct
        .iter()
        .filter(|n| !through.contains(*n) && !declared(n))
        .cloned()
        .collect();
    // Timing tests (pubsub timeouts) on a loaded machine: a difference must hold on a second
    // run of that test alone.
    if !differences.is_empty() {
        let (again, _) = pytest(work.path(), through_url, differences.clone()).await;
        differences.retain(|n| !again.contains(n));
    }
    assert!(
        differences.is_empty(),
        "pass directly, fail through cachegate: {differences:?}\n{through_text}"
    );
    let stale: Vec<&str> = DEVIATIONS
        .iter()
        .filter(|d| through.iter().any(|n| n.ends_with(*d)))
        .copied()
        .collect();
    assert!(
        stale.is_empty(),
        "declared deviations that now pass through cachegate (update DEVIATIONS and README): \
         {stale:?}"
    );
    let unmatched: Vec<&str> = DEVIATIONS
        .iter()
        .filter(|d| !direct.iter().any(|n| n.ends_with(*d)))
        .copied()
        .collect();
    assert!(
        unmatched.is_empty(),
        "declared deviations that do not pass directly (renamed, or failing for another reason): \
         {unmatched:?}\n{direct_text}"
    );
}
