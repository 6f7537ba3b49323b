//! Consistent hashing of keys to memcached nodes, compatible with libmemcached's weighted ketama
//! (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, pylibmc's `ketama_weighted`) and with twemproxy's
//! `distribution: ketama` + `hash: md5`.
//!
//! Each live node gets `floor(weight / total * 40 * live) * 4` points (160 with equal weights),
//! four per MD5 of `"<host>-<i>"` (or `"<host>:<port>-<i>"` when the port is not 11211, which is
//! how libmemcached and twemproxy name servers). A key goes to the first point at or after the
//! first four bytes (little-endian) of its MD5, wrapping around. Clients that move behind
//! cachegate keep their key -> node mapping.

use md5::{Digest, Md5};

pub use crate::config::RingNode;

/// libmemcached and twemproxy omit the port from a server's name when it is memcached's default.
const DEFAULT_PORT: u16 = 11211;
const POINTS_PER_SERVER: f32 = 160.0;

impl RingNode {
    fn name(&self) -> String {
        if self.port == DEFAULT_PORT {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The points of the live nodes, sorted.
#[derive(Debug, Clone, Default)]
pub struct Continuum {
    points: Vec<(u32, usize)>,
    /// Set when every point is one node's: keys need no hashing then.
    only: Option<usize>,
}

impl Continuum {
    /// Builds the continuum of the nodes with `live[i]` set (indices stay those of `nodes`).
    pub fn build(nodes: &[RingNode], live: &[bool]) -> Self {
        let live_count = live.iter().filter(|&&l| l).count();
        let total: u64 = nodes
            .iter()
            .zip(live)
            .filter(|(_, &l)| l)
            .map(|(n, _)| u64::from(n.weight))
            .sum();
        let mut points = Vec::with_capacity(live_count * POINTS_PER_SERVER as usize);
        if total == 0 {
            return Self { points, only: None };
        }
        for (index, node) in nodes.iter().enumerate() {
            if !live[index] {
                continue;
            }
            // The same single-precision arithmetic as libmemcached, so rounding agrees.
            let pct = node.weight as f32 / total as f32;
            let per_server = ((pct * POINTS_PER_SERVER / 4.0 * live_count as f32 + 0.000_000_000_1)
                .floor() as u32)
                * 4;
            let name = node.name();
            for i in 0..per_server / 4 {
                let digest = Md5::digest(format!("{name}-{i}").as_bytes());
                for align in 0..4 {
                    let b = &digest[align * 4..align * 4 + 4];
                    points.push((u32::from_le_bytes([b[0], b[1], b[2], b[3]]), index));
                }
            }
        }
        points.sort_unstable();
        let only = points
            .first()
            .map(|&(_, first)| first)
            .filter(|&first| points.iter().all(|&(_, i)| i == first));
        Self { points, only }
    }

    /// The node for a key, or `None` when no node is live.
    pub fn locate(&self, key: &[u8]) -> Option<usize> {
        if let Some(only) = self.only {
            return Some(only);
        }
        let hash = key_hash(key);
        let at = self.points.partition_point(|&(value, _)| value < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map(|&(_, index)| index)
    }
}

/// libmemcached's MD5 key hash: the digest's first four bytes, little-endian.
pub fn key_hash(key: &[u8]) -> u32 {
    let d = Md5::digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> RingNode {
        RingNode {
            host: host.into(),
            port,
            weight: 1,
        }
    }

    /// Placements made by libmemcached 1.1.4 (pylibmc, behaviors={"ketama_weighted": True}) on
    /// three real memcached instances, read back from each instance.
    #[test]
    fn matches_libmemcached_ketama_weighted() {
        let nodes = [
            node("127.0.0.1", 11211),
            node("127.0.0.2", 11211),
            node("127.0.0.3", 22000),
        ];
        let ring = Continuum::build(&nodes, &[true; 3]);
        let z250 = "z".repeat(250);
        let table: &[(&str, usize)] = &[
            ("key:0", 0),
            ("key:1", 0),
            ("key:2", 2),
            ("key:3", 1),
            ("key:4", 0),
            ("key:5", 2),
            ("key:6", 0),
            ("key:7", 2),
            ("key:8", 1),
            ("key:9", 0),
            ("key:10", 1),
            ("key:11", 2),
            ("key:12", 0),
            ("key:13", 2),
            ("key:14", 0),
            ("key:15", 0),
            ("key:16", 0),
            ("key:17", 0),
            ("key:18", 2),
            ("key:19", 1),
            ("key:20", 1),
            ("key:21", 1),
            ("key:22", 1),
            ("key:23", 1),
            ("key:24", 2),
            ("key:25", 0),
            ("key:26", 2),
            ("key:27", 0),
            ("key:28", 2),
            ("key:29", 0),
            ("key:30", 0),
            ("key:31", 1),
            ("key:32", 1),
            ("key:33", 2),
            ("key:34", 0),
            ("key:35", 2),
            ("key:36", 0),
            ("key:37", 1),
            ("key:38", 2),
            ("key:39", 2),
            ("foo", 0),
            ("bar", 0),
            ("user:1000", 2),
            ("session:abcdef", 1),
            ("a", 0),
            (&z250, 1),
        ];
        for (key, want) in table {
            assert_eq!(ring.locate(key.as_bytes()), Some(*want), "{key}");
        }
    }

    #[test]
    fn equal_weights_give_160_points_each() {
        let nodes: Vec<_> = (0..7).map(|i| node("10.0.0.1", 11000 + i)).collect();
        let ring = Continuum::build(&nodes, &[true; 7]);
        assert_eq!(ring.points.len(), 7 * 160);
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let nodes: Vec<_> = (0..4).map(|i| node("10.0.0.1", 12000 + i)).collect();
        let all = Continuum::build(&nodes, &[true; 4]);
        let without = Continuum::build(&nodes, &[true, true, false, true]);
        for i in 0..2000 {
            let key = format!("k{i}");
            let before = all.locate(key.as_bytes()).unwrap();
            let after = without.locate(key.as_bytes()).unwrap();
            if before != 2 {
                assert_eq!(before, after, "{key} moved although its node stayed");
            } else {
                assert_ne!(after, 2);
            }
        }
    }

    #[test]
    fn no_live_node_locates_nothing() {
        let ring = Continuum::build(&[node("h", 1)], &[false]);
        assert_eq!(ring.locate(b"k"), None);
    }

    #[test]
    fn one_live_node_takes_every_key_and_none_takes_none() {
        let nodes = [node("10.0.0.1", 11211), node("10.0.0.2", 11211)];
        let both = Continuum::build(&nodes, &[true, true]);
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("key:{i}").into_bytes()).collect();
        assert!(keys.iter().any(|k| both.locate(k) == Some(0)));
        assert!(keys.iter().any(|k| both.locate(k) == Some(1)));
        let second = Continuum::build(&nodes, &[false, true]);
        assert!(keys.iter().all(|k| second.locate(k) == Some(1)));
        let first = Continuum::build(&nodes[..1], &[true]);
        assert!(keys.iter().all(|k| first.locate(k) == Some(0)));
        assert_eq!(Continuum::build(&nodes, &[false, false]).locate(b"k"), None);
    }
}
