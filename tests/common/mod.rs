//! The test harness: real redis-server processes on free loopback ports, a fresh rcgen PKI per
//! test, cachegate started in-process on 127.0.0.1:0 with a shutdown future the test controls,
//! and clients over real TLS (a raw RESP client and redis-rs).
#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cachegate::server::ShutdownReport;
use cachegate::tls::dev_certs::DevCa;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-0123456789";
pub const TOKEN_NEW: &str = "rotated-token-9876543210";
const WAIT: Duration = Duration::from_secs(10);

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // CACHEGATE_LOG=debug cargo test ... shows the proxy's logs for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CACHEGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A port that was free a moment ago, for a server started next (redis-server cannot report
/// an ephemeral port). Taken below the kernel's ephemeral range (`ip_local_port_range`, from
/// 32768 by default), so that no outgoing connection of a parallel test can take it before
/// the server binds it; each test process walks its own stretch of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if ephemeral_low < LOW + SPAN {
        // An unusual range: let the kernel choose.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A server child process on a loopback port: started, killed, paused, restarted on the same
/// port. Killed on drop.
pub struct Process {
    program: &'static str,
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Process {
    async fn start(program: &'static str, port: u16, args: Vec<String>) -> Process {
        let mut p = Process {
            program,
            port,
            args,
            child: None,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (the README's test command installs it): {e}",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not start",
                self.program
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGSTOP / SIGCONT, to make the server hang without closing its sockets.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            let sig = if paused { "-STOP" } else { "-CONT" };
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
            // kill returns once the signal is sent; every thread stops a moment later. A
            // request sent in between could still be served.
            let stopped = |pid: u32| {
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|tasks| {
                        tasks.flatten().all(|t| {
                            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                                st.rsplit(')')
                                    .next()
                                    .map(str::trim_start)
                                    .is_some_and(|rest| {
                                        rest.starts_with('T') || rest.starts_with('t')
                                    })
                            })
                        })
                    })
                    .unwrap_or(false)
            };
            let deadline = std::time::Instant::now() + WAIT;
            while paused && !stopped(c.id()) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    /// Waits until bytes sit unread in one of the server's established connections (the
    /// kernel's receive queue, from /proc/net/tcp and tcp6): a request has reached a paused
    /// server. Any connection to its port counts, so callers keep others quiet meanwhile.
    pub async fn until_unread(&self) -> bool {
        let local = format!(":{:04X}", self.port);
        eventually(|| {
            let local = local.clone();
            async move {
                let table = ["/proc/net/tcp", "/proc/net/tcp6"]
                    .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                    .join("\n");
                table.lines().skip(1).any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local address, remote address, state (01: established), tx:rx queues
                    fields.len() > 4
                        && fields[1].ends_with(&local)
                        && fields[3] == "01"
                        && fields[4]
                            .split_once(':')
                            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
                            .is_some_and(|rx| rx > 0)
                })
            }
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process is continued first, so that it is not left behind stopped.
        self.pause(false);
        self.kill();
    }
}

/// A redis-server child process.
pub struct Redis {
    process: Process,
    /// The server's own directory: a redis-server loads the dump file it finds at start, so
    /// one shared directory (redis-py's suite SAVEs) would hand one test's data, or a file
    /// half written, to another test's server.
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Redis {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Redis {
        let port = free_port();
        let mut args = strings(&[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--enable-debug-command",
            "yes",
        ]);
        let dir = Self::own_dir(port, &mut args);
        args.extend(strings(extra));
        let redis = Redis {
            process: Process::start("redis-server", port, args).await,
            _dir: dir,
        };
        // Listening is not the same as ready (loading): wait for a reply that is not LOADING.
        let mut c = redis.direct().await;
        while c.cmd(&["PING"]).await.starts_with(b"-LOADING") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    /// A TLS-only redis-server using `pki`'s server certificate.
    pub async fn start_tls(pki: &Pki) -> Redis {
        Self::start_tls_with(pki, false).await
    }

    /// A TLS-only redis-server that may require a client certificate from `pki`'s CA.
    pub async fn start_tls_with(pki: &Pki, client_certs: bool) -> Redis {
        Self::start_tls_files(
            [&pki.server_cert, &pki.server_key, &pki.ca],
            client_certs,
            Vec::new(),
        )
        .await
    }

    /// A TLS-only redis-server with this certificate, key and CA, plus `extra` arguments.
    pub async fn start_tls_files(
        [cert, key, ca]: [&PathBuf; 3],
        client_certs: bool,
        extra: Vec<String>,
    ) -> Redis {
        let port = free_port();
        let p = |f: &PathBuf| f.display().to_string();
        let mut args = strings(&[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--tls-cert-file",
            &p(cert),
            "--tls-key-file",
            &p(key),
            "--tls-ca-cert-file",
            &p(ca),
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]);
        let dir = Self::own_dir(port, &mut args);
        args.extend(extra);
        Redis {
            process: Process::start("redis-server", port, args).await,
            _dir: dir,
        }
    }

    /// A new directory and a dump file name of this server's own (a test's SAVE writes there,
    /// never into the checkout), as arguments that a caller's `--dir` still overrides; the
    /// file is named after the port so that nodes sharing a caller's directory keep apart.
    fn own_dir(port: u16, args: &mut Vec<String>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        args.extend(strings(&["--dir", &dir.path().display().to_string()]));
        args.extend(strings(&["--dbfilename", &format!("dump-{port}.rdb")]));
        dir
    }

    /// A plaintext connection straight to the backend, bypassing cachegate.
    pub async fn direct(&self) -> RawClient {
        RawClient::new(Box::new(self.tcp().await))
    }

    /// Waits (polling, up to the harness's deadline) until the backend has `n` clients blocked
    /// in a blocking command; false if it never does.
    pub async fn until_blocked(&self, n: u64) -> bool {
        let want = format!("blocked_clients:{n}\r\n");
        eventually(|| async {
            let info = self.direct().await.cmd(&["INFO", "clients"]).await;
            s(&info).contains(&want)
        })
        .await
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A per-test PKI: CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
/// second, unrelated CA with its own client certificate.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    /// A client certificate of the CA that `crl` revokes.
    pub revoked_cert: PathBuf,
    pub revoked_key: PathBuf,
    pub crl: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("cachegate test CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let client = ca.issue_client("app-client").unwrap();
        let rogue_ca = DevCa::generate("rogue CA").unwrap();
        let rogue = rogue_ca.issue_client("rogue-client").unwrap();
        let revoked = ca.issue_client("revoked-client").unwrap();
        let crl = ca.crl_pem(&[&revoked.serial]).unwrap();
        let w = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca: w("ca.pem", &ca.cert_pem()),
            server_cert: w("server.pem", &server.cert_pem),
            server_key: w("server-key.pem", &server.key_pem),
            client_cert: w("client.pem", &client.cert_pem),
            client_key: w("client-key.pem", &client.key_pem),
            rogue_cert: w("rogue.pem", &rogue.cert_pem),
            rogue_key: w("rogue-key.pem", &rogue.key_pem),
            revoked_cert: w("revoked.pem", &revoked.cert_pem),
            revoked_key: w("revoked-key.pem", &revoked.key_pem),
            crl: w("crl.pem", &crl),
            dir,
        }
    }

    /// The `[listeners.tls]` lines for this PKI's server certificate.
    pub fn tls_toml(&self) -> String {
        format!(
            "tls.cert = {:?}\ntls.key = {:?}\n",
            self.server_cert, self.server_key
        )
    }

    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_cert: Option<(&Path, &Path)>,
    ) -> Arc<rustls::ClientConfig> {
        self.client_config_with(
            rustls::crypto::ring::default_provider(),
            versions,
            client_cert,
        )
    }

    /// A client config with its own crypto provider (cipher suites, key exchange groups).
    pub fn client_config_with(
        &self,
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_cert: Option<(&Path, &Path)>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                builder
                    .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                    .unwrap()
            }
        };
        Arc::new(config)
    }
}

/// cachegate running in-process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    /// The admin HTTP listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The config file it was started from (rewrite it, then `reload`).
    pub config_path: PathBuf,
    pub reloader: Arc<cachegate::reload::Reloader>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts cachegate with this TOML. Every `bind` should be "127.0.0.1:0".
    pub async fn start(toml: &str) -> Proxy {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("cachegate.toml");
        Self::write_config(&config_path, toml);
        let config = cachegate::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let bound = cachegate::server::bind(&config).await.unwrap();
        let addrs: Vec<SocketAddr> = bound
            .listeners
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect();
        let admin = bound.admin.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let prepared = cachegate::server::prepare(config, bound).unwrap_or_else(|e| panic!("{e}"));
        let reloader = prepared.reloader.clone();
        let task = tokio::spawn(prepared.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr: addrs[0],
            addrs,
            admin,
            config_path,
            reloader,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Writes a config file, with a `data_dir` beside it unless the text has one.
    pub fn write_config(path: &Path, toml: &str) {
        let mut toml = toml.to_string();
        if !toml.contains("data_dir") {
            toml = format!("data_dir = {:?}\n{toml}", path.parent().unwrap());
        }
        std::fs::write(path, toml).unwrap();
    }

    /// Replaces its config file with `toml` and reloads (as SIGHUP does): the outcome.
    pub async fn reload_with(&self, toml: &str) -> Result<String, String> {
        Self::write_config(&self.config_path, toml);
        let reloader = self.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.reload("test"))
            .await
            .unwrap()
            .map_err(|e| e.to_string())
    }

    /// A TLS listener with `pki`'s certificate and token auth in front of `redis`.
    pub async fn tls_with_tokens(pki: &Pki, redis: &Redis, extra: &str) -> Proxy {
        // Health checks would add commands to the backend's statistics; off unless asked for.
        let health = if extra.contains("health_interval") {
            ""
        } else {
            "upstream.health_interval = \"1h\"\n"
        };
        Proxy::start(&format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{TOKEN:?}, {TOKEN_NEW:?}]\nupstream.address = {:?}\n{health}{extra}",
            pki.tls_toml(),
            redis.address()
        ))
        .await
    }

    /// A TLS listener with `TOKEN` in front of `redis`, after process-wide settings (`limits.*`,
    /// `shutdown.*`), which TOML needs before the first table.
    pub async fn tls_with_global(pki: &Pki, redis: &Redis, global: &str) -> Proxy {
        Proxy::start(&format!(
            "{global}[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.tokens = [{TOKEN:?}]\nupstream.address = {:?}\n",
            pki.tls_toml(),
            redis.address()
        ))
        .await
    }

    /// A TLS listener with no AUTH in front of `redis`, plus `extra` config lines.
    pub async fn tls_open(pki: &Pki, redis: &Redis, extra: &str) -> Proxy {
        Proxy::start(&format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}auth.mode = \"none\"\nupstream.address = {:?}\n{extra}",
            pki.tls_toml(),
            redis.address()
        ))
        .await
    }

    /// GET an admin path; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self.admin.expect("config has [admin]");
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        let text = s(&out);
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A TLS connection to `addr` as `localhost`, for tests that look at the session itself.
pub async fn tls_stream(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A RESP client that sends exact bytes and reads whole frames, for asserting wire replies.
pub struct RawClient {
    io: Box<dyn Io>,
    buf: BytesMut,
}

impl RawClient {
    pub fn new(io: Box<dyn Io>) -> RawClient {
        RawClient {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Connects over TLS 1.3/1.2 with `pki`'s CA, no client certificate.
    pub async fn tls(pki: &Pki, addr: SocketAddr) -> RawClient {
        Self::try_tls(pki.client_config(rustls::ALL_VERSIONS, None), addr)
            .await
            .expect("TLS handshake")
    }

    /// A TLS client whose connection comes from `source` (any 127.0.0.0/8 address).
    pub async fn tls_from(pki: &Pki, addr: SocketAddr, source: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(pki.client_config(rustls::ALL_VERSIONS, None))
            .connect(name, tcp)
            .await
            .unwrap();
        RawClient::new(Box::new(tls))
    }

    pub async fn try_tls(
        config: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
    ) -> std::io::Result<RawClient> {
        Ok(RawClient::new(Box::new(tls_stream(config, addr).await?)))
    }

    /// A TLS client already authenticated with `TOKEN`.
    pub async fn authed(pki: &Pki, addr: SocketAddr) -> RawClient {
        let mut c = Self::tls(pki, addr).await;
        assert_eq!(c.cmd(&["AUTH", TOKEN]).await, b"+OK\r\n");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Sends, and says whether the connection took it (false once the peer has closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok() && self.io.flush().await.is_ok()
    }

    pub async fn send_cmd(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&encode(&args)).await;
    }

    /// Reads one complete reply frame; panics after 10 s.
    pub async fn read(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.try_read())
            .await
            .expect("reply within 10s")
            .expect("a reply, not a closed connection")
    }

    /// One frame, or `None` if the connection closed first.
    pub async fn try_read(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(len) = reply_end(&self.buf) {
                return Some(self.buf.split_to(len).to_vec());
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn cmd(&mut self, args: &[&str]) -> Vec<u8> {
        self.send_cmd(args).await;
        self.read().await
    }

    pub async fn cmd_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&encode(args)).await;
        self.read().await
    }

    /// True if the peer closes (EOF or reset) within 10 s with no further frame.
    pub async fn closed(&mut self) -> bool {
        matches!(tokio::time::timeout(WAIT, self.try_read()).await, Ok(None))
    }
}

/// The value of one sample in a Prometheus text exposition (`name{labels}` exactly), 0 if absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Where the first complete RESP2/RESP3 reply in `buf` ends, or `None` if it is incomplete.
/// The tests' own reading of RESP, written apart from cachegate's scanner so that a bug there
/// cannot hide itself: a work list of element counts (no recursion, for deep nesting).
pub fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    // Elements still to read at each open level, innermost last.
    let mut levels: Vec<i64> = vec![1];
    while let Some(&left) = levels.last() {
        if left == 0 {
            levels.pop();
            continue;
        }
        let line_end = pos + buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")?;
        let head = std::str::from_utf8(&buf[pos + 1..line_end]).ok();
        let number = head.and_then(|h| h.parse::<i64>().ok());
        let kind = buf[pos];
        pos = line_end + 2;
        // An attribute (`|`) annotates the frame after it, which is still to come.
        if kind != b'|' {
            *levels.last_mut().unwrap() -= 1;
        }
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = number.expect("blob length");
                if n >= 0 {
                    pos += n as usize + 2;
                    if pos > buf.len() {
                        return None;
                    }
                }
            }
            b'*' | b'~' | b'>' => levels.push(number.expect("aggregate length").max(0)),
            b'%' | b'|' => levels.push(2 * number.expect("map length")),
            other => panic!("not RESP: {:?}", other as char),
        }
    }
    Some(pos)
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A redis-rs async connection through cachegate over TLS, authenticated with `password`.
pub async fn redis_rs(
    pki: &Pki,
    addr: SocketAddr,
    password: Option<&str>,
    resp3: bool,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    install_crypto();
    let mut url = format!("rediss://127.0.0.1:{}/", addr.port());
    if let Some(p) = password {
        url = format!("rediss://default:{p}@127.0.0.1:{}/", addr.port());
    }
    if resp3 {
        url.push_str("?protocol=resp3");
    }
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&pki.ca).unwrap()),
        },
    )?;
    // redis-rs's own response deadline is short: a loaded machine (30 MB values) must not
    // turn into a failed test.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Clients that go on with `round` (which checks its own replies, and gives its client back)
/// until stopped: the other clients on the shared connections while a test misbehaves beside
/// them.
pub struct Bystanders {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u32>>,
}

impl Bystanders {
    pub fn start<C, R, Fut>(clients: Vec<C>, round: R) -> Bystanders
    where
        C: Send + 'static,
        R: Fn(C) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = C> + Send,
    {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|mut c| {
                let (stop, round) = (stop.clone(), round.clone());
                tokio::spawn(async move {
                    let mut rounds = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds == 0 {
                        c = round(c).await;
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        Bystanders { stop, tasks }
    }

    /// Stops them; each went at least one round, every reply as it should be.
    pub async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            assert!(t.await.unwrap() > 0);
        }
    }
}

/// Polls `f` until it returns true, up to 10 s.
pub async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A memcached child process.
pub struct Memcached {
    process: Process,
}

impl std::ops::Deref for Memcached {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Memcached {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Memcached {
    pub async fn start() -> Memcached {
        Self::start_with(Vec::new()).await
    }

    /// A memcached that speaks only TLS, with `pki`'s server certificate.
    pub async fn start_tls(pki: &Pki) -> Memcached {
        let cert = format!(
            "ssl_chain_cert={},ssl_key={}",
            pki.server_cert.display(),
            pki.server_key.display()
        );
        Self::start_with(strings(&["-Z", "-o", &cert])).await
    }

    async fn start_with(extra: Vec<String>) -> Memcached {
        let port = free_port();
        let mut args = strings(&[
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "1",
        ]);
        // memcached refuses to run as root without -u.
        if is_root() {
            args.extend(strings(&["-u", "root"]));
        }
        args.extend(extra);
        Memcached {
            process: Process::start("memcached", port, args).await,
        }
    }

    pub async fn direct(&self) -> McClient {
        McClient::new(Box::new(self.tcp().await))
    }

    /// One `stats` value straight from the node.
    pub async fn stat(&self, name: &str) -> u64 {
        let mut c = self.direct().await;
        c.send(b"stats\r\n").await;
        let text = s(&c.read_until(b"END\r\n").await);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no stat {name} in {text}"))
    }

    /// Whether the node itself holds `key`.
    pub async fn holds(&self, key: &str) -> bool {
        let mut c = self.direct().await;
        let reply = c
            .request(
                format!("get {key}\r\n").as_bytes(),
                cachegate::protocol::memcached::Shape::Values,
            )
            .await;
        reply.starts_with(b"VALUE")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A memcached text/meta client that sends exact bytes and reads whole replies.
/// Where the first complete memcached reply of `shape` in `buf` ends: the tests' own reading,
/// written apart from cachegate's (`reply_len`), so that a bug there cannot hide itself.
pub fn mc_reply_end(buf: &[u8], shape: cachegate::protocol::memcached::Shape) -> Option<usize> {
    use cachegate::protocol::memcached::Shape;
    let line_end = |from: usize| -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i + 2)
    };
    // The byte count after `word` in a VALUE or VA line.
    let size = |line: &[u8], at: usize| -> Option<usize> {
        std::str::from_utf8(line)
            .ok()?
            .trim_end()
            .split(' ')
            .nth(at)?
            .parse()
            .ok()
    };
    let mut pos = 0;
    loop {
        let end = line_end(pos)?;
        let line = &buf[pos..end];
        let word = line
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or(b"");
        let error = matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR");
        match shape {
            Shape::Line => return Some(end),
            Shape::Values if error || word == b"END" => return Some(end),
            Shape::Values => {
                pos = end + size(line, 3)? + 2;
                if pos > buf.len() {
                    return None;
                }
            }
            Shape::Meta | Shape::MetaThenNoop => {
                let after = if word == b"VA" {
                    end + size(line, 1)? + 2
                } else {
                    end
                };
                if after > buf.len() {
                    return None;
                }
                if shape == Shape::Meta || word == b"MN" {
                    return Some(after);
                }
                pos = after;
            }
        }
    }
}

pub struct McClient {
    io: Box<dyn Io>,
    buf: BytesMut,
}

impl McClient {
    pub fn new(io: Box<dyn Io>) -> McClient {
        McClient {
            io,
            buf: BytesMut::new(),
        }
    }

    pub async fn tls(pki: &Pki, addr: SocketAddr) -> McClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(pki.client_config(rustls::ALL_VERSIONS, None))
            .connect(name, tcp)
            .await
            .unwrap();
        McClient::new(Box::new(tls))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Reads one reply of `shape`; panics after 10 s.
    pub async fn read(&mut self, shape: cachegate::protocol::memcached::Shape) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(len) = mc_reply_end(&self.buf, shape) {
                    return self.buf.split_to(len).to_vec();
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap_or(0);
                assert!(n > 0, "connection closed; had {:?}", s(&self.buf));
            }
        })
        .await
        .expect("reply within 10s")
    }

    pub async fn request(
        &mut self,
        bytes: &[u8],
        shape: cachegate::protocol::memcached::Shape,
    ) -> Vec<u8> {
        self.send(bytes).await;
        self.read(shape).await
    }

    /// A request with a one-line reply.
    pub async fn line(&mut self, bytes: &str) -> String {
        s(&self
            .request(
                bytes.as_bytes(),
                cachegate::protocol::memcached::Shape::Line,
            )
            .await)
    }

    /// A retrieval (VALUE ... END).
    pub async fn values(&mut self, bytes: &str) -> String {
        s(&self
            .request(
                bytes.as_bytes(),
                cachegate::protocol::memcached::Shape::Values,
            )
            .await)
    }

    pub async fn read_until_after(&mut self, request: &[u8], end: &[u8]) -> Vec<u8> {
        self.send(request).await;
        self.read_until(end).await
    }

    pub async fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                    return self.buf.split_to(i + end.len()).to_vec();
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap_or(0);
                assert!(n > 0, "connection closed; had {:?}", s(&self.buf));
            }
        })
        .await
        .expect("reply within 10s")
    }

    /// True if the peer closes within 10 s, returning what it sent before closing.
    pub async fn closed_after(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Some(self.buf.split().to_vec()),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

impl Proxy {
    /// A TLS memcached listener in front of `nodes`, with extra TOML lines for the listener.
    pub async fn memcached(pki: &Pki, nodes: &[&Memcached], extra: &str) -> Proxy {
        let list: Vec<String> = nodes.iter().map(|n| format!("{:?}", n.address())).collect();
        Proxy::start(&format!(
            "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n{}upstream.nodes = [{}]\nupstream.health_interval = \"1h\"\n{extra}",
            pki.tls_toml(),
            list.join(", ")
        ))
        .await
    }
}

/// This test process's resident memory (the proxy runs in it), in bytes.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}
