//! `cachegate bench`: a small load generator for Redis and memcached, over TLS or plaintext.
//!
//! Each connection sends `pipeline` requests, reads their replies, and repeats until the
//! duration is over; a batch's latency counts for each request in it. It prints throughput,
//! p50/p99/p99.9 latency and, given a process id, that process's CPU time per request. With
//! `--compare` it runs the same load against the backend directly and through cachegate and
//! prints the ratios: "benchmark your workload with and without encryption".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::memcached::{reply_len, Shape};
use crate::protocol::resp::frame_len;

/// One load run's settings.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: SocketAddr,
    pub memcached: bool,
    /// Connect over TLS, trusting this CA bundle.
    pub tls_ca: Option<PathBuf>,
    /// Redis: AUTH with this password (and user) first.
    pub password: Option<String>,
    pub user: Option<String>,
    pub connections: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub keyspace: u64,
    pub duration: Duration,
    /// "get" or "set".
    pub command: String,
    /// A process whose CPU time per request is reported (Linux /proc).
    pub pid: Option<u32>,
    /// The backend behind the target (a proxy's): its CPU time per request in the same run.
    pub backend_pid: Option<u32>,
    /// The target is a Redis Cluster node: load the cluster as a cluster-aware client does,
    /// with a connection to every primary per connection and each key sent to its slot's node.
    pub cluster: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// The measured process's CPU time per request (`Load::pid`).
    pub cpu_per_request: Option<Cpu>,
    /// The backend's CPU time per request in the same run (`Load::backend_pid`).
    pub backend_cpu_per_request: Option<Duration>,
}

/// CPU time, as the kernel accounts it to a process: in user space, and in the kernel on its
/// behalf (system calls and, unless the kernel accounts interrupt time apart or defers it to
/// `ksoftirqd`, the loopback's receive work that its sends trigger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub user: Duration,
    pub system: Duration,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// Spent between `self` (the earlier reading) and `later`, per one of `n`.
    fn per(self, later: Cpu, n: u64) -> Option<Cpu> {
        let n = u32::try_from(n).ok().filter(|&n| n > 0)?;
        Some(Cpu {
            user: later.user.saturating_sub(self.user) / n,
            system: later.system.saturating_sub(self.system) / n,
        })
    }
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>10.0} req/s  p50 {:>7.1}µs  p99 {:>7.1}µs  p99.9 {:>7.1}µs",
            self.throughput(),
            micros(self.p50),
            micros(self.p99),
            micros(self.p999)
        )?;
        if let Some(cpu) = self.cpu_per_request {
            write!(
                f,
                "  cpu/req {:.2}µs (system {:.2}µs)",
                micros(cpu.total()),
                micros(cpu.system)
            )?;
        }
        if let Some(cpu) = self.backend_cpu_per_request {
            write!(f, "  backend cpu/req {:.2}µs", micros(cpu))?;
        }
        Ok(())
    }
}

/// Where one core's time goes when the target (a proxy) and its backend share that core, as
/// `scripts/bench.sh` runs them: throughput is then about one over the CPU time per request
/// on the core, so the ratio to a direct run follows from the CPU times alone, and so does
/// the best ratio that the target could reach if it spent nothing in user space. That holds
/// only while the core is the bottleneck: `busy` says how much of it the measured processes
/// used in each run (the load generator's core, or time no process is charged with, can be
/// the limit instead).
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// The backend's CPU per request, served directly.
    pub direct: Duration,
    /// The target's, in user space and in the kernel.
    pub target: Cpu,
    /// The backend's, behind the target.
    pub backend: Duration,
    /// The share of one core that the measured processes used: (direct run, target run).
    pub busy: (f64, f64),
}

impl Split {
    /// From a target run measured with its backend, and a direct run measured on the backend.
    pub fn of(target: &Report, direct: &Report) -> Option<Split> {
        let (cpu, backend) = (target.cpu_per_request?, target.backend_cpu_per_request?);
        let direct_cpu = direct.cpu_per_request?.total();
        Some(Split {
            direct: direct_cpu,
            target: cpu,
            backend,
            busy: (
                direct.throughput() * direct_cpu.as_secs_f64(),
                target.throughput() * (cpu.total() + backend).as_secs_f64(),
            ),
        })
    }

    /// Whether both runs kept the core (nearly) busy, so that the model applies.
    pub fn saturated(&self) -> bool {
        self.busy.0 >= 0.9 && self.busy.1 >= 0.9
    }

    /// The throughput ratio the CPU times predict.
    pub fn ratio(&self) -> f64 {
        self.direct.as_secs_f64()
            / (self.target.total() + self.backend)
                .as_secs_f64()
                .max(1e-12)
    }

    /// The ratio with the target's user-space time at zero: its system calls and the
    /// backend's work stay.
    pub fn ceiling(&self) -> f64 {
        self.direct.as_secs_f64() / (self.target.system + self.backend).as_secs_f64().max(1e-12)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "one core's CPU per request: direct {:.2}µs; through the target {:.2}µs (user {:.2}, system {:.2}) + backend {:.2}µs; predicted ratio {:.2}, {:.2} with no user-space time in the target",
            micros(self.direct),
            micros(self.target.total()),
            micros(self.target.user),
            micros(self.target.system),
            micros(self.backend),
            self.ratio(),
            self.ceiling()
        )?;
        write!(
            f,
            " (core busy {:.2} direct, {:.2} through the target{})",
            self.busy.0,
            self.busy.1,
            if self.saturated() {
                ""
            } else {
                ": not saturated, the prediction does not apply"
            }
        )
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs one load and reports what it measured.
pub async fn run(load: &Load) -> anyhow::Result<Report> {
    let tls = match &load.tls_ca {
        None => None,
        Some(ca) => Some(tls_connector(ca)?),
    };
    // Where each key goes: the target, or (a cluster, as a cluster-aware client) the primary
    // serving its slot, each load connection being a connection to every primary.
    let (nodes, slots) = match load.cluster {
        true => {
            let (nodes, slots) = cluster_layout(load).await?;
            (nodes, Some(Arc::new(slots)))
        }
        false => (vec![load.target], None),
    };
    let node_of = move |slots: &Option<Arc<Vec<usize>>>, key: u64| match slots {
        Some(slots) => {
            let slot = crate::upstream::cluster::slot::key_slot(format!("bench:{key}").as_bytes());
            slots[slot as usize]
        }
        None => 0,
    };
    let connect_all = |load: Load, tls: Option<tokio_rustls::TlsConnector>| {
        let nodes = nodes.clone();
        async move {
            let mut conns = Vec::with_capacity(nodes.len());
            for node in nodes {
                let mut at = load.clone();
                at.target = node;
                conns.push(connect(&at, tls.as_ref()).await?);
            }
            anyhow::Ok(conns)
        }
    };
    let value = vec![b'x'; load.value_size];
    let keyspace = load.keyspace.clamp(1, 10_000);
    // Fill the keyspace once so that GETs hit.
    if load.command == "get" {
        let mut conns = connect_all(load.clone(), tls.clone()).await?;
        let mut batch = Batch::new(conns.len());
        for chunk in (0..keyspace).collect::<Vec<_>>().chunks(100) {
            batch.clear();
            for &k in chunk {
                batch.add(node_of(&slots, k), |out| {
                    encode(load, "set", k, &value, out)
                });
            }
            batch.exchange(&mut conns, load.memcached, "set").await?;
        }
    }
    let cpu_before = (
        load.pid.and_then(cpu_time),
        load.backend_pid.and_then(cpu_time),
    );
    let deadline = Instant::now() + load.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..load.connections {
        let load = load.clone();
        let value = value.clone();
        let slots = slots.clone();
        let conns = connect_all(load.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut conns = conns.await?;
            let mut latencies = Vec::new();
            let mut n: u64 = c as u64 * 7919;
            let mut batch = Batch::new(conns.len());
            while Instant::now() < deadline {
                batch.clear();
                for _ in 0..load.pipeline {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = (n >> 33) % keyspace;
                    batch.add(node_of(&slots, key), |out| {
                        encode(&load, &load.command, key, &value, out)
                    });
                }
                let t = Instant::now();
                batch
                    .exchange(&mut conns, load.memcached, &load.command)
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(report(load, all, started.elapsed(), cpu_before))
}

/// One batch of requests, by connection: all written before any reply is read.
struct Batch {
    outs: Vec<BytesMut>,
    counts: Vec<usize>,
}

impl Batch {
    fn new(conns: usize) -> Self {
        Batch {
            outs: vec![BytesMut::new(); conns],
            counts: vec![0; conns],
        }
    }

    fn clear(&mut self) {
        self.outs.iter_mut().for_each(BytesMut::clear);
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    fn add(&mut self, conn: usize, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.outs[conn]);
        self.counts[conn] += 1;
    }

    async fn exchange(
        &self,
        conns: &mut [Conn],
        memcached: bool,
        command: &str,
    ) -> anyhow::Result<()> {
        for (conn, out) in conns.iter_mut().zip(&self.outs) {
            if !out.is_empty() {
                conn.io.write_all(out).await?;
            }
        }
        for (conn, &count) in conns.iter_mut().zip(&self.counts) {
            if count > 0 {
                conn.exchange(&[], count, memcached, command).await?;
            }
        }
        Ok(())
    }
}

/// A cluster's primaries and which of them serves each slot, from `CLUSTER SLOTS`.
async fn cluster_layout(load: &Load) -> anyhow::Result<(Vec<SocketAddr>, Vec<usize>)> {
    let mut conn = connect(load, None).await?;
    conn.io
        .write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")
        .await?;
    let reply = loop {
        if let Some((len, _)) = frame_len(&conn.buf)? {
            break conn.buf.split_to(len);
        }
        if conn.io.read_buf(&mut conn.buf).await? == 0 {
            anyhow::bail!("connection closed");
        }
    };
    let host = load.target.ip().to_string();
    let ranges = crate::upstream::cluster::topology::parse_slots(&reply, &host)
        .map_err(anyhow::Error::msg)?;
    let mut nodes: Vec<SocketAddr> = Vec::new();
    let mut slots = vec![0; crate::upstream::cluster::slot::SLOTS];
    for range in ranges {
        let addr: SocketAddr = range.primary.address().parse()?;
        let i = match nodes.iter().position(|n| *n == addr) {
            Some(i) => i,
            None => {
                nodes.push(addr);
                nodes.len() - 1
            }
        };
        for s in range.start..=range.end {
            slots[s as usize] = i;
        }
    }
    Ok((nodes, slots))
}

/// A run's report from its batches' latencies.
fn report(
    load: &Load,
    mut all: Vec<Duration>,
    elapsed: Duration,
    (cpu_before, backend_before): (Option<Cpu>, Option<Cpu>),
) -> Report {
    let cpu_after = load.pid.and_then(cpu_time);
    let backend_after = load.backend_pid.and_then(cpu_time);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let requests = all.len() as u64 * load.pipeline as u64;
    Report {
        requests,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        cpu_per_request: cpu_before
            .zip(cpu_after)
            .and_then(|(a, b)| a.per(b, requests)),
        backend_cpu_per_request: backend_before
            .zip(backend_after)
            .and_then(|(a, b)| a.per(b, requests))
            .map(|cpu| cpu.total()),
    }
}

fn encode(load: &Load, command: &str, key: u64, value: &[u8], out: &mut BytesMut) {
    let key = format!("bench:{key}");
    if load.memcached {
        if command == "set" {
            out.extend_from_slice(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(format!("get {key}\r\n").as_bytes());
        }
    } else if command == "set" {
        crate::protocol::reply::encode_command(
            out,
            [&b"SET"[..], key.as_bytes(), value].into_iter(),
        );
    } else {
        crate::protocol::reply::encode_command(out, [&b"GET"[..], key.as_bytes()].into_iter());
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
}

impl Conn {
    /// Writes a batch and reads `replies` whole replies.
    async fn exchange(
        &mut self,
        out: &[u8],
        replies: usize,
        memcached: bool,
        command: &str,
    ) -> anyhow::Result<()> {
        if !out.is_empty() {
            self.io.write_all(out).await?;
        }
        let shape = if command == "get" {
            Shape::Values
        } else {
            Shape::Line
        };
        for _ in 0..replies {
            loop {
                let len = if memcached {
                    reply_len(&self.buf, shape, usize::MAX)?
                } else {
                    frame_len(&self.buf)?.map(|(len, _)| len)
                };
                if let Some(len) = len {
                    if !memcached && self.buf.first() == Some(&b'-') {
                        anyhow::bail!("error reply: {}", String::from_utf8_lossy(&self.buf[..len]));
                    }
                    let _ = self.buf.split_to(len);
                    break;
                }
                if self.io.read_buf(&mut self.buf).await? == 0 {
                    anyhow::bail!("connection closed");
                }
            }
        }
        Ok(())
    }
}

async fn connect(load: &Load, tls: Option<&tokio_rustls::TlsConnector>) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(load.target).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            Box::new(connector.connect(name, tcp).await?)
        }
    };
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(64 * 1024),
    };
    if let (Some(pw), false) = (&load.password, load.memcached) {
        let mut out = BytesMut::new();
        match &load.user {
            Some(u) => crate::protocol::reply::encode_command(
                &mut out,
                [&b"AUTH"[..], u.as_bytes(), pw.as_bytes()].into_iter(),
            ),
            None => crate::protocol::reply::encode_command(
                &mut out,
                [&b"AUTH"[..], pw.as_bytes()].into_iter(),
            ),
        }
        conn.exchange(&out, 1, false, "auth").await?;
    }
    Ok(conn)
}

fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let roots = crate::tls::pem::load_certs(ca).map_err(anyhow::Error::msg)?;
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Full or resumed TLS handshakes: opens `count` connections one after another, each doing one
/// PING (Redis) or `version` (memcached), and reports the target process's CPU per handshake.
/// `resume` shares one client config, so every connection after the first resumes its session.
pub async fn handshakes(
    load: &Load,
    count: usize,
    resume: bool,
) -> anyhow::Result<(Duration, usize)> {
    let ca = load
        .tls_ca
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("handshake runs need --cacert (TLS)"))?;
    let shared = tls_connector(ca)?;
    let before = load.pid.and_then(cpu_time);
    let mut resumed = 0;
    for _ in 0..count {
        let connector = if resume {
            shared.clone()
        } else {
            tls_connector(ca)?
        };
        let tcp = TcpStream::connect(load.target).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(name, tcp).await?;
        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        let mut conn = Conn {
            io: Box::new(tls),
            buf: BytesMut::new(),
        };
        ping(&mut conn, load.memcached).await?;
    }
    let after = load.pid.and_then(cpu_time);
    let per = match (before, after) {
        (Some(a), Some(b)) => b.total().saturating_sub(a.total()) / count.max(1) as u32,
        _ => Duration::ZERO,
    };
    Ok((per, resumed))
}

/// Opens `count` connections, does one request on each and keeps them open; reports the target
/// process's resident memory growth per connection, in bytes.
pub async fn idle_memory(load: &Load, count: usize) -> anyhow::Result<u64> {
    let pid = load
        .pid
        .ok_or_else(|| anyhow::anyhow!("idle runs need --pid"))?;
    let tls = match &load.tls_ca {
        None => None,
        Some(ca) => Some(tls_connector(ca)?),
    };
    // Warm up allocator pools with a few connections first.
    let mut held = Vec::with_capacity(count);
    for _ in 0..8 {
        let mut c = connect(load, tls.as_ref()).await?;
        ping(&mut c, load.memcached).await?;
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}/status"))?;
    for _ in 0..count {
        let mut c = connect(load, tls.as_ref()).await?;
        ping(&mut c, load.memcached).await?;
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(pid).unwrap_or(before);
    Ok(after.saturating_sub(before) / count.max(1) as u64)
}

async fn ping(conn: &mut Conn, memcached: bool) -> anyhow::Result<()> {
    if memcached {
        conn.io.write_all(b"version\r\n").await?;
        loop {
            if let Some(len) = reply_len(&conn.buf, Shape::Line, usize::MAX)? {
                let _ = conn.buf.split_to(len);
                return Ok(());
            }
            if conn.io.read_buf(&mut conn.buf).await? == 0 {
                anyhow::bail!("connection closed");
            }
        }
    }
    conn.exchange(b"*1\r\n$4\r\nPING\r\n", 1, false, "ping")
        .await
}

/// Resident set size of a process in bytes, from /proc (Linux).
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A process's user and system CPU time, from /proc (Linux).
pub fn cpu_time(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks; USER_HZ is 100 on every architecture Linux supports here.
    Some(Cpu {
        user: Duration::from_millis(utime * 10),
        system: Duration::from_millis(stime * 10),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_predicts_the_ratio_from_cpu_times() {
        let us = Duration::from_micros;
        // Requests per second, and CPU per request.
        let report = |rate: u64, cpu: Option<Cpu>, backend: Option<Duration>| Report {
            requests: rate,
            elapsed: Duration::from_secs(1),
            p50: us(1),
            p99: us(1),
            p999: us(1),
            cpu_per_request: cpu,
            backend_cpu_per_request: backend,
        };
        let proxy = Cpu {
            user: us(3),
            system: us(6),
        };
        let direct = report(
            160_000,
            Some(Cpu {
                user: us(2),
                system: us(4),
            }),
            None,
        );
        let target = report(100_000, Some(proxy), Some(us(1)));
        let split = Split::of(&target, &direct).expect("all three measured");
        assert_eq!(
            (split.direct, split.target, split.backend),
            (us(6), proxy, us(1))
        );
        // 6 µs direct against 9 + 1 through the proxy, and 6 + 1 without its user time.
        assert!((split.ratio() - 0.6).abs() < 1e-9);
        assert!((split.ceiling() - 6.0 / 7.0).abs() < 1e-9);
        // 160k × 6 µs and 100k × 10 µs of one core's second.
        assert!((split.busy.0 - 0.96).abs() < 1e-9 && (split.busy.1 - 1.0).abs() < 1e-9);
        assert!(split.saturated());
        assert!(!split.to_string().contains("not saturated"), "{split}");
        // A direct run that left the core idle half the time: the model does not apply.
        let idle = Split::of(&target, &report(80_000, direct.cpu_per_request, None)).unwrap();
        assert!(!idle.saturated());
        assert!(idle.to_string().contains("not saturated"), "{idle}");
        // Without the backend's time in the target's run there is nothing to say.
        assert!(Split::of(&report(100_000, Some(proxy), None), &direct).is_none());
    }

    #[test]
    fn reads_our_own_cpu_time() {
        // Spins until the kernel has charged some user time (it counts in ticks), or gives up.
        let spin = Instant::now();
        let mut x = 0u64;
        let cpu = loop {
            x = std::hint::black_box(x.wrapping_add(1));
            let cpu = cpu_time(std::process::id()).expect("our own /proc/<pid>/stat");
            if cpu.user > Duration::ZERO || spin.elapsed() > Duration::from_secs(5) {
                break cpu;
            }
        };
        assert!(cpu.user > Duration::ZERO, "{cpu:?} after {x} turns");
    }
}
