//! A real Redis Cluster on loopback: redis-servers in cluster mode, joined by
//! `redis-cli --cluster create`, each node's bus on a free port of its own.

use super::*;

/// A node's client port and its cluster id.
pub struct ClusterNode {
    pub redis: Redis,
    pub bus: u16,
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    /// How many of the nodes are replicas.
    replicas: usize,
    _dir: tempfile::TempDir,
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

/// `name:value` from an INFO-style text.
pub fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, every slot served.
    pub async fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let bus = free_port();
            let conf = dir.path().join(format!("nodes-{bus}.conf"));
            let redis = Redis::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf.display().to_string(),
                "--cluster-port",
                &bus.to_string(),
                // Failures are noticed (and replicas promoted) within a few seconds.
                "--cluster-node-timeout",
                "1000",
                "--dir",
                &dir.path().display().to_string(),
            ])
            .await;
            nodes.push(ClusterNode { redis, bus });
        }
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(|n| n.redis.address()));
        args.extend([
            "--cluster-replicas".to_string(),
            replicas.to_string(),
            "--cluster-yes".to_string(),
        ]);
        redis_cli(args).await;
        let cluster = RedisCluster {
            nodes,
            replicas: primaries * replicas,
            _dir: dir,
        };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node says the cluster is ok with every slot served, and knows every
    /// node.
    pub async fn wait_ok(&self) {
        let total = self.nodes.len().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            let mut c = node.redis.direct().await;
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

    pub fn seed(&self) -> String {
        self.nodes[0].redis.address()
    }

    /// The address of the primary serving `slot`, as the first node says now.
    pub async fn owner(&self, slot: u16) -> String {
        let mut c = self.nodes[0].redis.direct().await;
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
        let mut c = self.nodes[0].redis.direct().await;
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

    /// A node's cluster id.
    pub async fn id(&self, address: &str) -> String {
        let mut c = self.at(address).redis.direct().await;
        let reply = s(&c.cmd(&["CLUSTER", "MYID"]).await);
        reply.lines().nth(1).unwrap_or_default().to_string()
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
