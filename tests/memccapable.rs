//! libmemcached's own protocol checker, `memccapable -a` (libmemcached-tools; ASCII tests only,
//! cachegate does not speak the binary protocol), run against a real memcached directly and
//! through cachegate: every test that passes directly must pass through cachegate. It checks
//! things between tests (`version`, `verbosity noreply`) that a stricter parser once refused,
//! failing 16 of 27. The full conformance run (Redis's Tcl suite, redis-py, pymemcache) is
//! `scripts/conformance`.

mod common;

use common::*;

/// Runs memccapable against `port`; the names of the tests it reports as passed, and its output.
async fn memccapable(port: u16) -> (Vec<String>, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("memccapable")
            .args(["-a", "-h", "127.0.0.1", "-p", &port.to_string()])
            .output()
            .expect("memccapable (libmemcached-tools; scripts/test installs it)")
    })
    .await
    .unwrap();
    let text = format!("{}{}", s(&out.stdout), s(&out.stderr));
    let passed = text
        .lines()
        .filter(|l| l.trim_end().ends_with("[pass]"))
        .map(|l| l.trim_end().trim_end_matches("[pass]").trim().to_string())
        .collect();
    (passed, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memccapable_passes_through_cachegate_as_it_does_directly() {
    let direct_node = Memcached::start().await;
    let (direct, direct_text) = memccapable(direct_node.port).await;
    assert!(direct.len() >= 27, "memccapable directly:\n{direct_text}");

    let node = Memcached::start().await;
    // memccapable speaks plaintext only: a plaintext listener on loopback.
    let proxy = Proxy::start(&format!(
        "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\ntls.enabled = false\n\
         upstream.nodes = [{:?}]\nupstream.health_interval = \"1h\"\n",
        node.address()
    ))
    .await;
    let (through, text) = memccapable(proxy.addr.port()).await;
    let missing: Vec<_> = direct.iter().filter(|t| !through.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "failed through cachegate: {missing:?}\n{text}"
    );
}
