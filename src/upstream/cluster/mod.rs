//! A Redis Cluster behind one listener: the slot map, each node's connections, and discovery.
//!
//! The map comes from `CLUSTER SLOTS`, asked of a known node (the current primaries, then the
//! configured seeds), at start, periodically, and whenever a session reports a redirection or
//! a node it cannot reach. A `MOVED` also updates its slot at once, so that the next request
//! for it goes to the right node before the refresh lands. Every node is reached with the
//! listener's upstream settings (TLS, credentials, timeouts); over TLS each node is verified
//! by its announced hostname, else its address, unless `upstream.tls.server_name` is set.

pub mod slot;
pub mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::conn::{Connector, Protocol};
use super::pool::Pool;
use super::shared::{Shared, SharedPool};
use crate::config::model::host_of;
use crate::config::UpstreamConfig;
use crate::live::Live;

/// Refreshes closer together than this are merged into one.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How soon discovery is tried again while no node answers.
const RETRY: Duration = Duration::from_millis(500);
/// Tags fit a SCAN cursor's low 14 bits.
const TAG_MASK: u16 = (1 << 14) - 1;
/// A slot no node serves.
const UNASSIGNED: u16 = u16::MAX;

/// One cluster node: its own connections (sessions pinned to it) and shared ones.
pub struct Node {
    pub address: String,
    /// The hostname it announces, that its TLS certificate is checked against.
    hostname: Option<String>,
    /// A small number for its address, kept for the process's life: what a SCAN cursor
    /// names it by.
    pub tag: u16,
    pub pool: Pool,
    pub shared: Shared,
}

/// Which node serves each slot.
pub struct Map {
    slots: Box<[u16]>,
    /// The primaries that serve at least one slot, by address (SCAN walks them by tag).
    pub primaries: Vec<Arc<Node>>,
    /// With `read_from_replicas`: each primary's replicas (connections that said READONLY).
    replicas: Vec<Vec<Arc<Node>>>,
    /// Every node the layout lists (replicas too, and with `CLUSTER SHARDS` members that serve
    /// no slot yet): the only places a redirection is followed to. A node announced elsewhere
    /// is reached once a refresh lists it. Each with the hostname it announces.
    known: HashMap<String, Option<String>>,
}

impl Map {
    fn empty() -> Self {
        Map {
            slots: vec![UNASSIGNED; slot::SLOTS].into_boxed_slice(),
            primaries: Vec::new(),
            replicas: Vec::new(),
            known: Default::default(),
        }
    }

    /// The primary serving `slot`, if the map knows one.
    pub fn node(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.slots.get(slot as usize)?;
        self.primaries.get(i as usize)
    }

    /// A replica of `slot`'s primary for a read (the `n`th, in turn), if it has any.
    pub fn replica(&self, slot: u16, n: u64) -> Option<&Arc<Node>> {
        let i = *self.slots.get(slot as usize)?;
        let replicas = self.replicas.get(i as usize)?;
        (!replicas.is_empty()).then(|| &replicas[(n % replicas.len() as u64) as usize])
    }

    /// The primaries in the order a SCAN walks them (by tag, which a resharding does not
    /// change), each with its tag.
    pub fn walk(&self) -> Vec<(u16, Arc<Node>)> {
        let mut out: Vec<(u16, Arc<Node>)> =
            self.primaries.iter().map(|n| (n.tag, n.clone())).collect();
        out.sort_by_key(|(tag, _)| *tag);
        out
    }

    /// Position of a primary in `primaries`.
    pub fn index_of(&self, address: &str) -> Option<usize> {
        self.primaries.iter().position(|n| n.address == address)
    }
}

/// Builds a node's shared connections: (connector, RESP3).
type StartShared = Box<dyn Fn(Arc<Connector>, bool) -> SharedPool + Send + Sync>;

pub struct Cluster {
    listener: String,
    /// The listener's upstream settings; each node's are these with its own address.
    base: UpstreamConfig,
    max_reply: usize,
    seeds: Vec<String>,
    map: Live<Map>,
    /// The upstream TLS options, replaced by a reload.
    tls: Live<Option<crate::tls::client::UpstreamTlsOptions>>,
    /// Every node met so far, by address (a node leaves the map, not this).
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Each address's tag.
    tags: Mutex<HashMap<String, u16>>,
    /// Serialises changes to the map.
    changing: Mutex<()>,
    refresh: Notify,
    interval: Duration,
    start_shared: StartShared,
    refreshes: AtomicU64,
    healthy: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Cluster {
    pub fn new(
        listener: &str,
        base: &UpstreamConfig,
        max_reply: usize,
        start_shared: StartShared,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let seeds = if base.cluster_seeds.is_empty() {
            vec![base.address.clone()]
        } else {
            base.cluster_seeds.clone()
        };
        Arc::new(Cluster {
            listener: listener.to_string(),
            base: base.clone(),
            max_reply,
            seeds,
            map: Live::new(Map::empty()),
            tls: Live::new(base.tls.clone()),
            nodes: Mutex::new(HashMap::new()),
            changing: Mutex::new(()),
            tags: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
            interval: base.cluster_refresh,
            start_shared,
            refreshes: AtomicU64::new(0),
            healthy: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    /// The map as it is now.
    pub fn map(&self) -> Arc<Map> {
        self.map.load()
    }

    /// Whether read-only commands may go to replicas.
    pub fn reads_from_replicas(&self) -> bool {
        self.base.read_from_replicas
    }

    /// Whether the last reading of the layout succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Completed refreshes so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Asks for a refresh soon (a redirection, a node that failed).
    pub fn stale(&self) {
        self.refresh.notify_one();
    }

    /// The node at `address`, its connections made on first use. `hostname`: the name it
    /// announces, that its TLS certificate is checked against.
    /// New upstream TLS material (a reload): every node's new connections use it, each
    /// verified by its own name, and so do nodes met from now on.
    pub fn set_tls(&self, options: Option<crate::tls::client::UpstreamTlsOptions>) {
        self.tls.store(Arc::new(options));
        let nodes: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for node in nodes {
            match self.node_tls(&node.address, node.hostname.as_deref()) {
                Ok(tls) => node.pool.set_tls(tls),
                Err(e) => {
                    tracing::warn!(listener = %self.listener, error = %e, "cluster node keeps its TLS material")
                }
            }
        }
    }

    /// A node's upstream TLS options: the listener's, verified by the node's own name unless
    /// `upstream.tls.server_name` is set.
    fn node_tls_options(
        &self,
        address: &str,
        hostname: Option<&str>,
    ) -> Result<Option<crate::tls::client::UpstreamTlsOptions>, ClusterError> {
        let mut options = (*self.tls.load()).clone();
        if let Some(tls) = options.as_mut().filter(|t| !t.server_name_explicit) {
            let name = match hostname {
                Some(h) => h.to_string(),
                None => host_of(address),
            };
            tls.server_name =
                rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                    ClusterError::ServerName {
                        address: address.to_string(),
                        name,
                    }
                })?;
        }
        Ok(options)
    }

    fn node_tls(
        &self,
        address: &str,
        hostname: Option<&str>,
    ) -> Result<Option<super::conn::UpstreamTls>, ClusterError> {
        let options = self.node_tls_options(address, hostname)?;
        super::pool::upstream_tls(options.as_ref()).map_err(|e| ClusterError::tls(address, e))
    }

    pub fn node(&self, address: &str, hostname: Option<&str>) -> Result<Arc<Node>, ClusterError> {
        self.node_as(address, hostname, false)
    }

    /// The node at `address` for reads as a replica (its connections say READONLY), or as a
    /// primary.
    fn node_as(
        &self,
        address: &str,
        hostname: Option<&str>,
        readonly: bool,
    ) -> Result<Arc<Node>, ClusterError> {
        let key = if readonly {
            format!("{address} readonly")
        } else {
            address.to_string()
        };
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get(&key) {
            // Met first without its hostname (a seed given by address): made again once the
            // layout names it, so that TLS checks the name its certificate carries.
            if hostname.is_none() || node.hostname.as_deref() == hostname {
                return Ok(node.clone());
            }
        }
        let cfg = UpstreamConfig {
            address: address.to_string(),
            readonly,
            tls: self.node_tls_options(address, hostname)?,
            ..self.base.clone()
        };
        let pool = Pool::new(&cfg, self.max_reply, Protocol::Redis)
            .map_err(|e| ClusterError::tls(address, e))?;
        let tag = {
            let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
            let next = tags.len() as u16 & TAG_MASK;
            *tags.entry(address.to_string()).or_insert(next)
        };
        let node = Arc::new(Node {
            tag,
            address: address.to_string(),
            hostname: hostname.map(str::to_string),
            shared: Shared {
                resp2: (self.start_shared)(pool.connector(), false),
                resp3: (self.start_shared)(pool.connector(), true),
            },
            pool,
        });
        nodes.insert(key, node.clone());
        Ok(node)
    }

    /// Counts a redirection followed (or not) by its reason.
    pub fn count(&self, reason: &str) {
        self.metrics
            .cluster_redirects
            .get_or_create(&crate::metrics::ReasonLabels {
                listener: self.listener.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Whether a redirection may go to `address`: a node of the layout last read, or a seed.
    /// Anything else (a node just added, or a reply that names an arbitrary host) waits for a
    /// refresh to list it: cachegate's credentials go only where the cluster's layout says.
    pub fn knows(&self, address: &str) -> bool {
        let known =
            self.map.load().known.contains_key(address) || self.seeds.iter().any(|s| s == address);
        if !known {
            self.count("unknown_node");
            self.stale();
        }
        known
    }

    /// The node at `address` a redirection names: the layout's own (with its hostname) when
    /// it lists it.
    pub fn node_at(&self, address: &str) -> Result<Arc<Node>, ClusterError> {
        let map = self.map.load();
        match map.primaries.iter().find(|n| n.address == address) {
            Some(node) => Ok(node.clone()),
            None => self.node(address, map.known.get(address).and_then(|h| h.as_deref())),
        }
    }

    /// A node answered `MOVED slot address`: that slot is served there from now on (if the
    /// layout knows that node), and the whole map is read again soon.
    pub fn moved(&self, slot: u16, address: &str) {
        self.stale();
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load();
        if map.node(slot).is_some_and(|n| n.address == address) {
            return;
        }
        let node = match self.node_at(address) {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(listener = %self.listener, error = %e, "cluster redirection to a node cachegate cannot reach");
                return;
            }
        };
        let mut primaries = map.primaries.clone();
        let mut replicas = map.replicas.clone();
        let mut slots = map.slots.clone();
        let index = match primaries.iter().position(|n| n.address == address) {
            Some(i) => i,
            None => {
                primaries.push(node);
                replicas.resize(primaries.len(), Vec::new());
                primaries.len() - 1
            }
        };
        slots[slot as usize] = index as u16;
        self.map.store(Arc::new(Map {
            slots,
            primaries,
            replicas,
            known: map.known.clone(),
        }));
    }

    /// Lets go of nodes the layout no longer lists (nor the seeds): their connections close
    /// once no session holds them.
    fn forget_departed(&self, map: &Map) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, node| {
            map.known.contains_key(&node.address) || self.seeds.contains(&node.address)
        });
    }

    /// Keeps the map current until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let ok = match self.discover().await {
                Ok(map) => {
                    let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
                    self.forget_departed(&map);
                    self.map.store(Arc::new(map));
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(e) => {
                    tracing::warn!(listener = %self.listener, error = %e, "cluster discovery failed");
                    false
                }
            };
            self.healthy.store(ok, Ordering::Relaxed);
            self.metrics
                .cluster_refreshes
                .get_or_create(&crate::metrics::ReasonLabels {
                    listener: self.listener.clone(),
                    reason: if ok { "ok" } else { "failed" }.to_string(),
                })
                .inc();
            let wait = if ok { self.interval } else { RETRY };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.refresh.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            // Bursts of reports (every request of a moved slot) make one refresh.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_GAP) => {}
            }
        }
    }

    /// Reads the layout from the first node that gives it: the known primaries, then seeds.
    async fn discover(&self) -> Result<Map, ClusterError> {
        let mut candidates: Vec<String> = self
            .map
            .load()
            .primaries
            .iter()
            .map(|n| n.address.clone())
            .collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last = ClusterError::NoSeeds;
        for address in candidates {
            match self.ask(&address).await {
                Ok(map) => return Ok(map),
                Err(e) => {
                    last = ClusterError::At {
                        address,
                        error: Box::new(e),
                    }
                }
            }
        }
        Err(last)
    }

    async fn ask(&self, address: &str) -> Result<Map, ClusterError> {
        let node = self.node(address, None)?;
        let mut conn = node.pool.acquire().await?;
        // Connections log in as the backend user cachegate provisions, when it does, which the
        // policy may deny CLUSTER: the layout is read with the configured credentials, on a
        // connection that is then closed rather than pooled.
        let connector = node.pool.connector();
        let admin = connector
            .provision
            .as_ref()
            .and_then(|p| p.admin_auth.clone());
        if let Some(admin) = &admin {
            let reply = conn.roundtrip(admin).await?;
            if &reply[..] != b"+OK\r\n" {
                return Err(ClusterError::Refused(super::conn::printable(&reply)));
            }
        }
        let reply = conn
            .roundtrip(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")
            .await;
        // Every member, those serving no slot yet too: where an `ASK` may also go (a slot
        // migrating to a node just added). An error reply (Redis 6) leaves it to SLOTS.
        let shards = match &reply {
            Ok(_) => conn
                .roundtrip(b"*2\r\n$7\r\nCLUSTER\r\n$6\r\nSHARDS\r\n")
                .await
                .ok(),
            Err(_) => None,
        };
        let clean = shards.is_some() && admin.is_none();
        node.pool.release(conn, clean);
        let reply: Bytes = reply?;
        let host = host_of(address);
        let ranges = topology::parse_slots(&reply, &host)?;
        if ranges.is_empty() {
            return Err(topology::SlotsError::NoSlots.into());
        }
        let mut map = Map::empty();
        let mut by_address: Vec<(String, Option<String>)> = ranges
            .iter()
            .map(|r| (r.primary.address(), r.primary.hostname.clone()))
            .collect();
        by_address.sort();
        by_address.dedup_by(|a, b| a.0 == b.0);
        for (address, hostname) in &by_address {
            map.primaries.push(self.node(address, hostname.as_deref())?);
        }
        map.replicas = vec![Vec::new(); map.primaries.len()];
        if self.base.read_from_replicas {
            for range in &ranges {
                let Some(i) = map.index_of(&range.primary.address()) else {
                    continue;
                };
                for r in &range.replicas {
                    let address = r.address();
                    if !map.replicas[i].iter().any(|n| n.address == address) {
                        map.replicas[i].push(self.node_as(
                            &address,
                            r.hostname.as_deref(),
                            true,
                        )?);
                    }
                }
            }
        }
        for range in &ranges {
            for node in std::iter::once(&range.primary).chain(&range.replicas) {
                map.known.insert(node.address(), node.hostname.clone());
            }
            let address = range.primary.address();
            let index = map.index_of(&address).unwrap_or_default() as u16;
            for s in range.start..=range.end {
                map.slots[s as usize] = index;
            }
        }
        let tls = self.tls.load().is_some();
        for member in topology::parse_shards(shards.as_deref().unwrap_or_default(), &host, tls) {
            map.known.entry(member.address()).or_insert(member.hostname);
        }
        Ok(map)
    }
}

/// Why a node cannot be reached or the layout cannot be read (logged; never sent to a
/// client).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "node {address}: `{name}` is not a valid TLS server name; set upstream.tls.server_name"
    )]
    ServerName { address: String, name: String },
    #[error("node {address}: {error}")]
    Tls {
        address: String,
        error: crate::tls::TlsError,
    },
    #[error(transparent)]
    Upstream(#[from] crate::error::UpstreamError),
    #[error("the configured upstream credentials were refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Slots(#[from] topology::SlotsError),
    #[error("no seed nodes")]
    NoSeeds,
    /// The last node asked for the layout, and why it gave none.
    #[error("{address}: {error}")]
    At {
        address: String,
        error: Box<ClusterError>,
    },
}

impl ClusterError {
    fn tls(address: &str, error: crate::tls::TlsError) -> Self {
        ClusterError::Tls {
            address: address.to_string(),
            error,
        }
    }
}
