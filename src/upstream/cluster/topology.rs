//! The cluster's layout as a node reports it: `CLUSTER SLOTS`, parsed into slot ranges with
//! their primary and replicas.

use redis_protocol::resp2::types::OwnedFrame;

/// One node as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// The preferred endpoint: an IP, or a hostname when the cluster announces those.
    pub host: String,
    pub port: u16,
    pub id: String,
    /// `cluster-announce-hostname`, when set: the name its TLS certificate carries.
    pub hostname: Option<String>,
}

impl NodeAddr {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A range of slots, its primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: u16,
    pub end: u16,
    pub primary: NodeAddr,
    pub replicas: Vec<NodeAddr>,
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8(b.clone()).ok()
        }
        _ => None,
    }
}

fn int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

/// One node entry: `[endpoint, port, id, [key, value, ...]]` (Redis 7; older ones stop
/// after the id). `None` for a node without a known endpoint (`?`, or an empty one).
fn node(frame: &OwnedFrame, seed_host: &str) -> Option<NodeAddr> {
    let OwnedFrame::Array(items) = frame else {
        return None;
    };
    let mut host = text(items.first()?)?;
    let port = u16::try_from(int(items.get(1)?)?).ok()?;
    let id = items.get(2).and_then(text).unwrap_or_default();
    let mut hostname = None;
    if let Some(OwnedFrame::Array(meta)) = items.get(3) {
        for pair in meta.chunks(2) {
            if let [k, v] = pair {
                if text(k).as_deref() == Some("hostname") {
                    hostname = text(v).filter(|h| !h.is_empty());
                }
            }
        }
    }
    if host == "?" {
        return None;
    }
    // A node that does not know its own address reports it empty: it is the one asked.
    if host.is_empty() {
        host = seed_host.to_string();
    }
    Some(NodeAddr {
        host,
        port,
        id,
        hostname,
    })
}

/// Why a `CLUSTER SLOTS` reply gives no layout.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    #[error("CLUSTER SLOTS: {0}")]
    Decode(#[from] redis_protocol::error::RedisProtocolError),
    #[error("CLUSTER SLOTS: incomplete reply")]
    Incomplete,
    /// The node's error reply (cluster support disabled, a denied command).
    #[error("CLUSTER SLOTS: {0}")]
    Refused(String),
    #[error("CLUSTER SLOTS: not an array")]
    NotArray,
    #[error("CLUSTER SLOTS: a range is not an array")]
    RangeNotArray,
    #[error("CLUSTER SLOTS: a range without valid bounds")]
    Bounds,
    #[error("CLUSTER SLOTS: range {0}-{1} is reversed")]
    Reversed(u16, u16),
    #[error("CLUSTER SLOTS: no slot is served")]
    NoSlots,
}

/// Parses a `CLUSTER SLOTS` reply (RESP2). `seed_host` is the host of the node asked, for a
/// node that reports its own endpoint empty.
pub fn parse_slots(reply: &[u8], seed_host: &str) -> Result<Vec<Range>, SlotsError> {
    let (frame, _) = redis_protocol::resp2::decode::decode(reply)?.ok_or(SlotsError::Incomplete)?;
    let items = match frame {
        OwnedFrame::Array(items) => items,
        OwnedFrame::Error(e) => return Err(SlotsError::Refused(e.to_string())),
        _ => return Err(SlotsError::NotArray),
    };
    let mut ranges = Vec::with_capacity(items.len());
    for item in &items {
        let OwnedFrame::Array(parts) = item else {
            return Err(SlotsError::RangeNotArray);
        };
        let bound = |i: usize| {
            parts
                .get(i)
                .and_then(int)
                .and_then(|v| u16::try_from(v).ok())
                .filter(|&v| (v as usize) < super::slot::SLOTS)
        };
        let (Some(start), Some(end)) = (bound(0), bound(1)) else {
            return Err(SlotsError::Bounds);
        };
        if start > end {
            return Err(SlotsError::Reversed(start, end));
        }
        let Some(primary) = parts.get(2).and_then(|n| node(n, seed_host)) else {
            // A range whose primary has no known endpoint cannot be served: left unassigned.
            continue;
        };
        let replicas = parts[3..]
            .iter()
            .filter_map(|n| node(n, seed_host))
            .collect();
        ranges.push(Range {
            start,
            end,
            primary,
            replicas,
        });
    }
    Ok(ranges)
}

/// Every member `CLUSTER SHARDS` (Redis 7) lists, those that serve no slot yet too (a node
/// just added, which a slot being migrated to it sends `ASK` to): with `tls`, each at its
/// `tls-port` when it gives one (as `CLUSTER SLOTS` names the TLS port on a TLS connection).
/// Nothing when the reply is an error (an older Redis, a user denied it) or not understood:
/// `CLUSTER SLOTS` still gives the layout.
pub fn parse_shards(reply: &[u8], seed_host: &str, tls: bool) -> Vec<NodeAddr> {
    let Ok(Some((OwnedFrame::Array(shards), _))) = redis_protocol::resp2::decode::decode(reply)
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for shard in &shards {
        let OwnedFrame::Array(fields) = shard else {
            continue;
        };
        let nodes = fields
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some("nodes"))
            .and_then(|kv| kv.get(1));
        let Some(OwnedFrame::Array(nodes)) = nodes else {
            continue;
        };
        for node in nodes {
            let OwnedFrame::Array(kv) = node else {
                continue;
            };
            let field = |name: &str| {
                kv.chunks(2)
                    .find(|pair| text(&pair[0]).as_deref() == Some(name))
                    .and_then(|pair| pair.get(1))
            };
            let port = |name: &str| {
                field(name)
                    .and_then(int)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
            };
            let port = if tls {
                port("tls-port").or_else(|| port("port"))
            } else {
                port("port")
            };
            let (Some(port), Some(mut host)) = (port, field("endpoint").and_then(text)) else {
                continue;
            };
            if host == "?" {
                continue;
            }
            if host.is_empty() {
                host = seed_host.to_string();
            }
            found.push(NodeAddr {
                host,
                port,
                id: field("id").and_then(text).unwrap_or_default(),
                hostname: field("hostname").and_then(text).filter(|h| !h.is_empty()),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_list_every_member_at_the_port_of_the_connection() {
        // Two shards: one serving slots (a primary and a replica, over TLS), one empty.
        let node = |id: &str, port: u16, tls: u16, endpoint: &str, extra: &str| {
            let mut fields = vec![
                format!("$2\r\nid\r\n${}\r\n{id}\r\n", id.len()),
                format!("$4\r\nport\r\n:{port}\r\n"),
                format!("$8\r\ntls-port\r\n:{tls}\r\n"),
                format!("$8\r\nendpoint\r\n${}\r\n{endpoint}\r\n", endpoint.len()),
            ];
            if !extra.is_empty() {
                fields.push(format!("$8\r\nhostname\r\n${}\r\n{extra}\r\n", extra.len()));
            }
            format!("*{}\r\n{}", fields.len() * 2, fields.concat())
        };
        let reply = format!(
            "*2\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*2\r\n{}{}\
             *4\r\n$5\r\nslots\r\n*0\r\n$5\r\nnodes\r\n*2\r\n{}{}",
            node("a", 7000, 8000, "10.0.0.1", "node-a"),
            node("b", 7001, 8001, "10.0.0.2", ""),
            node("c", 7002, 8002, "", ""),
            node("d", 7003, 8003, "?", ""),
        );
        let tls: Vec<String> = parse_shards(reply.as_bytes(), "10.0.0.9", true)
            .iter()
            .map(NodeAddr::address)
            .collect();
        assert_eq!(tls, ["10.0.0.1:8000", "10.0.0.2:8001", "10.0.0.9:8002"]);
        let plain = parse_shards(reply.as_bytes(), "10.0.0.9", false);
        assert_eq!(plain[0].address(), "10.0.0.1:7000");
        assert_eq!(plain[0].hostname.as_deref(), Some("node-a"));
        for refused in [
            &b"-ERR unknown subcommand 'SHARDS'\r\n"[..],
            b"*1\r\n:1\r\n",
            b"*1",
        ] {
            assert!(parse_shards(refused, "h", false).is_empty());
        }
    }

    #[test]
    fn a_redis_7_reply_parses_with_hostnames_and_replicas() {
        let reply = b"*2\r\n\
*4\r\n:0\r\n:5460\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*2\r\n$8\r\nhostname\r\n$5\r\nnode1\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$3\r\nid2\r\n\
*3\r\n:5461\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$3\r\nid3\r\n";
        let ranges = parse_slots(reply, "10.0.0.9").unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].start, ranges[0].end), (0, 5460));
        assert_eq!(ranges[0].primary.address(), "127.0.0.1:7000");
        assert_eq!(ranges[0].primary.hostname.as_deref(), Some("node1"));
        assert_eq!(ranges[0].replicas[0].address(), "127.0.0.1:7003");
        assert_eq!(ranges[1].primary.address(), "10.0.0.9:7001");
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"-ERR This instance has cluster support disabled\r\n"[..],
            b"*1\r\n:1\r\n",
            b"*1\r\n*2\r\n:5\r\n:1\r\n",
            b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\na\r\n:1\r\n",
            b"*1\r\n*3\r\n:0\r\n:1",
        ] {
            assert!(
                parse_slots(bad, "h").is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
