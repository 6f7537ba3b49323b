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

#[cfg(test)]
mod tests {
    use super::*;

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
