//! A real Redis Cluster on loopback: redis-servers in cluster mode, joined by
//! `redis-cli --cluster create`, each node's bus on a free port of its own.

use super::*;

/// A node: its process (client port) and its cluster bus port.
pub struct ClusterNode {
    pub redis: Redis,
    pub bus: u16,
    /// A TLS cluster's client config (the cluster's CA; "localhost" is in every node's
    /// certificate).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The default user's password, when the cluster has one.
    password: Option<String>,
}

impl ClusterNode {
    /// A client straight to the node (over TLS for a TLS cluster), logged in.
    pub async fn client(&self) -> RawClient {
        let mut c = match &self.tls {
            None => self.redis.direct().await,
            Some(config) => {
                RawClient::try_tls(config.clone(), self.redis.address().parse().unwrap())
                    .await
                    .expect("TLS to a cluster node")
            }
        };
        if let Some(password) = &self.password {
            assert_eq!(c.cmd(&["AUTH", password]).await, b"+OK\r\n");
        }
        c
    }
}

/// A TLS cluster's PKI: its CA, and each node's certificate for `node-<i>.cluster.test` (and
/// localhost), verified by that name only.
pub struct ClusterPki {
    pub ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    dir: PathBuf,
    issuer: DevCa,
}

impl ClusterPki {
    fn new(dir: &Path) -> ClusterPki {
        let issuer = DevCa::generate("cluster CA").unwrap();
        let client = issuer.issue_client("cluster-node").unwrap();
        let w = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        ClusterPki {
            ca: w("cluster-ca.pem", &issuer.cert_pem()),
            client_cert: w("node-client.pem", &client.cert_pem),
            client_key: w("node-client-key.pem", &client.key_pem),
            dir: dir.to_path_buf(),
            issuer,
        }
    }

    /// Node `i`'s certificate and key files.
    fn node(&self, i: usize) -> (PathBuf, PathBuf) {
        let cert = self
            .issuer
            .issue_server(&[&format!("node-{i}.cluster.test"), "localhost"])
            .unwrap();
        let c = self.dir.join(format!("node-{i}.pem"));
        let k = self.dir.join(format!("node-{i}-key.pem"));
        std::fs::write(&c, cert.cert_pem).unwrap();
        std::fs::write(&k, cert.key_pem).unwrap();
        (c, k)
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// redis-cli's TLS arguments for this cluster.
    fn cli_args(&self) -> Vec<String> {
        let p = |f: &PathBuf| f.display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            p(&self.ca),
            "--cert".into(),
            p(&self.client_cert),
            "--key".into(),
            p(&self.client_key),
        ]
    }
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    /// A TLS cluster's PKI.
    pub pki: Option<ClusterPki>,
    /// How many of the nodes are replicas.
    replicas: usize,
    dir: tempfile::TempDir,
}

/// Runs `redis-cli` with these arguments to its end; panics with its output if it fails.
pub async fn redis_cli(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed with redis-server")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "redis-cli failed: {text}");
    text
}

/// `redis-cli` as `redis_cli` does, but given up (and killed) after `limit`: `None` then.
/// (`--cluster create` waits for ever for a cluster whose nodes never all meet.)
async fn redis_cli_within(args: Vec<String>, limit: Duration) -> Option<String> {
    let mut child = Command::new("redis-cli")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed with redis-server");
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("redis-cli runs") {
            let out = child.wait_with_output().expect("redis-cli's output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(status.success(), "redis-cli failed: {text}");
            return Some(text);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `name:value` from an INFO-style text.
pub fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, every slot served.
    pub async fn start(primaries: usize, replicas: usize) -> RedisCluster {
        Self::start_with(primaries, replicas, false, None).await
    }

    /// A cluster whose default user needs `password` (replicas use it too).
    pub async fn start_with_password(primaries: usize, password: &str) -> RedisCluster {
        Self::start_with(primaries, 0, false, Some(password)).await
    }

    /// The same over TLS only: client ports, the cluster bus and replication. Each node
    /// announces the hostname its certificate carries (`node-<i>.cluster.test`) and is
    /// reached by IP, so only a proxy that verifies each node by its own name gets in.
    pub async fn start_tls(primaries: usize, replicas: usize) -> RedisCluster {
        Self::start_with(primaries, replicas, true, None).await
    }

    /// Starts the nodes and joins them, again from the start if they do not all meet: with
    /// a short node timeout (for quick failovers), a node under load can drop another's
    /// handshake before it completes, and `redis-cli --cluster create` then waits for ever.
    async fn start_with(
        primaries: usize,
        replicas: usize,
        tls: bool,
        password: Option<&str>,
    ) -> RedisCluster {
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start(primaries, replicas, tls, password).await {
                return cluster;
            }
            eprintln!("the cluster's nodes did not all meet: starting them again");
        }
        panic!("the cluster's nodes did not all meet, three times");
    }

    async fn try_start(
        primaries: usize,
        replicas: usize,
        tls: bool,
        password: Option<&str>,
    ) -> Option<RedisCluster> {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls.then(|| ClusterPki::new(dir.path()));
        let mut nodes = Vec::new();
        for i in 0..primaries * (1 + replicas) {
            let bus = free_port();
            let conf = dir.path().join(format!("nodes-{bus}.conf"));
            let mut args = vec![
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
                "--cluster-port".into(),
                bus.to_string(),
                // Failures are noticed (and replicas promoted) within a few seconds.
                "--cluster-node-timeout".into(),
                "1000".into(),
                "--dir".into(),
                dir.path().display().to_string(),
            ];
            if let Some(password) = password {
                args.extend(
                    ["--requirepass", password, "--masterauth", password].map(String::from),
                );
            }
            let redis = match &pki {
                None => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Redis::start_with(&args).await
                }
                Some(pki) => {
                    let (cert, key) = pki.node(i);
                    let p = |f: &PathBuf| f.display().to_string();
                    args.extend(
                        [
                            "--appendonly",
                            "no",
                            "--protected-mode",
                            "no",
                            "--tls-cluster",
                            "yes",
                            "--tls-replication",
                            "yes",
                            "--tls-client-cert-file",
                            &p(&pki.client_cert),
                            "--tls-client-key-file",
                            &p(&pki.client_key),
                            "--cluster-announce-hostname",
                            &format!("node-{i}.cluster.test"),
                        ]
                        .map(String::from),
                    );
                    Redis::start_tls_files([&cert, &key, &pki.ca], false, args).await
                }
            };
            nodes.push(ClusterNode {
                redis,
                bus,
                tls: pki.as_ref().map(ClusterPki::client_config),
                password: password.map(str::to_string),
            });
        }
        let mut args = pki.as_ref().map(ClusterPki::cli_args).unwrap_or_default();
        if let Some(password) = password {
            args.extend([
                "-a".to_string(),
                password.to_string(),
                "--no-auth-warning".to_string(),
            ]);
        }
        args.extend(["--cluster".to_string(), "create".to_string()]);
        args.extend(nodes.iter().map(|n| n.redis.address()));
        args.extend([
            "--cluster-replicas".to_string(),
            replicas.to_string(),
            "--cluster-yes".to_string(),
        ]);
        redis_cli_within(args, Duration::from_secs(30)).await?;
        let cluster = RedisCluster {
            nodes,
            pki,
            replicas: primaries * replicas,
            dir,
        };
        cluster.wait_ok().await;
        Some(cluster)
    }

    /// Waits until every node says the cluster is ok with every slot served, and knows every
    /// node.
    pub async fn wait_ok(&self) {
        let total = self.nodes.len().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            let mut c = node.client().await;
            loop {
                let info = s(&c.cmd(&["CLUSTER", "INFO"]).await);
                let layout = s(&c.cmd(&["CLUSTER", "NODES"]).await);
                let replicas = layout.lines().filter(|l| l.contains("slave")).count();
                if info_field(&info, "cluster_state") == Some("ok")
                    && info_field(&info, "cluster_slots_ok") == Some("16384")
                    && info_field(&info, "cluster_known_nodes") == Some(total.as_str())
                    && replicas == self.replicas
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster did not become ok: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The first node's address: by name ("localhost") for a TLS cluster, whose
    /// certificates carry no IP address.
    pub fn seed(&self) -> String {
        let address = self.nodes[0].redis.address();
        match self.pki {
            None => address,
            Some(_) => address.replace("127.0.0.1", "localhost"),
        }
    }

    /// The address of the primary serving `slot`, as the first node says now.
    pub async fn owner(&self, slot: u16) -> String {
        let mut c = self.nodes[0].client().await;
        let nodes = s(&c.cmd(&["CLUSTER", "NODES"]).await);
        nodes
            .lines()
            .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")) && serves(l, slot))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|a| a.split('@').next())
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {nodes}"))
            .to_string()
    }

    /// The replica of the primary at `primary`.
    pub async fn replica_of(&self, primary: &str) -> &ClusterNode {
        let id = self.id(primary).await;
        let mut c = self.nodes[0].client().await;
        let layout = s(&c.cmd(&["CLUSTER", "NODES"]).await);
        let address = layout
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(id.as_str()))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|a| a.split('@').next())
            .unwrap_or_else(|| panic!("{primary} has no replica: {layout}"))
            .to_string();
        self.at(&address)
    }

    /// Waits until the replica of the primary at `primary` answers `reply` to `GET key`.
    /// (A WAIT on a new connection to the primary proves nothing: it waits only for that
    /// connection's own writes.)
    pub async fn replicated(&self, primary: &str, key: &str, reply: &[u8]) {
        let mut r = self.replica_of(primary).await.client().await;
        assert_eq!(r.cmd(&["READONLY"]).await, b"+OK\r\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while r.cmd(&["GET", key]).await != reply {
            assert!(
                std::time::Instant::now() < deadline,
                "the replica of {primary} never had {key}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A node's cluster id.
    pub async fn id(&self, address: &str) -> String {
        let mut c = self.at(address).client().await;
        let reply = s(&c.cmd(&["CLUSTER", "MYID"]).await);
        reply.lines().nth(1).unwrap_or_default().to_string()
    }

    /// A primary other than the one at `address`.
    pub fn other_than(&self, address: &str) -> String {
        self.nodes
            .iter()
            .map(|n| n.redis.address())
            .find(|a| a != address)
            .expect("another node")
    }

    /// `CLUSTER SETSLOT slot NODE id` on every node, the slot's current owner first (it ends
    /// its shard channels' subscriptions when it learns the slot is gone).
    pub async fn assign(&self, slot: u16, id: &str) {
        let owner = self.owner(slot).await;
        let mut order: Vec<&ClusterNode> = vec![self.at(&owner)];
        order.extend(self.nodes.iter().filter(|n| n.redis.address() != owner));
        for node in order {
            let mut c = node.client().await;
            assert_eq!(
                c.cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", id])
                    .await,
                b"+OK\r\n"
            );
        }
    }

    /// Adds a primary that serves no slot (a scale-out's first step), met by every node:
    /// its address. Plaintext clusters without a password only.
    pub async fn add_empty_node(&mut self) -> String {
        assert!(self.pki.is_none() && self.nodes[0].password.is_none());
        let bus = free_port();
        let dir = self.dir.path();
        let conf = dir.join(format!("nodes-{bus}.conf"));
        let redis = Redis::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf.display().to_string(),
            "--cluster-port",
            &bus.to_string(),
            "--cluster-node-timeout",
            "1000",
            "--dir",
            &dir.display().to_string(),
        ])
        .await;
        let address = redis.address();
        let mut first = self.nodes[0].client().await;
        let meet = [
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &redis.port.to_string(),
            &bus.to_string(),
        ];
        assert_eq!(first.cmd(&meet).await, b"+OK\r\n");
        self.nodes.push(ClusterNode {
            redis,
            bus,
            tls: None,
            password: None,
        });
        // Every node knows every other (wait_ok), the new one included.
        self.wait_ok().await;
        address
    }

    /// The node at this address.
    pub fn at(&self, address: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.redis.address() == address)
            .expect("a node of this cluster")
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn serves(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        if range.starts_with('[') {
            return false;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                a.parse::<u16>().is_ok_and(|a| a <= slot)
                    && b.parse::<u16>().is_ok_and(|b| slot <= b)
            }
            None => range.parse::<u16>() == Ok(slot),
        }
    })
}
