//! `cachegate keys rewrap`: re-seals every value of a listener's encrypted keyspaces (strings,
//! and hash field values) under the primary data key, straight on the backend (with the
//! listener's upstream settings and credentials). Values sealed under an older key are opened and sealed again; values in
//! clear (a cache being migrated) are sealed. Safe against concurrent writers: each value is
//! read under `WATCH` and written back in `MULTI`/`EXEC`, so a value changed meanwhile (by a
//! client through cachegate, which seals it itself) is left as it is. Idempotent: values
//! already under the primary key are skipped, and the SCAN cursor is saved after every batch
//! (beside the keyring), so an interrupted run resumes where it stopped. A run that went
//! through everything with no failure is noted in the keyring: `keys retire` relies on it.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ListenerConfig};
use crate::crypt::{Keys, OpenError};
use crate::protocol::reply::encode_command;
use crate::upstream::conn::Protocol;
use crate::upstream::{Conn, Pool};

/// Why a rewrap stopped.
#[derive(Debug, thiserror::Error)]
pub enum RewrapError {
    #[error("listener `{0}` has no encryption")]
    NoEncryption(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Upstream(#[from] crate::error::UpstreamError),
    #[error("the backend refused {command}: {reply}")]
    Refused { command: String, reply: String },
    #[error("the backend's SCAN reply does not parse")]
    Scan,
    #[error("cannot save the rewrap's cursor: {0}")]
    State(String),
    #[error(transparent)]
    Node(#[from] crate::parts::ServerError),
    #[error("a memcached node answered `{0}`")]
    Memcached(String),
    /// A cluster whose keys are moving, or whose slots are not all served: a walk of its
    /// primaries could miss values.
    #[error("{0}; run rewrap again once the cluster is settled")]
    Layout(String),
}

/// What a rewrap did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub scanned: u64,
    /// Sealed under the primary key: from an older key, or from clear.
    pub resealed: u64,
    pub from_clear: u64,
    /// Already under the primary key.
    pub current: u64,
    /// Changed by someone else between the read and the write: left as they are.
    pub changed: u64,
    /// Values that do not open (tampered, or under a key no longer in the keyring).
    pub failed: u64,
    /// Empty memcached values: items `mg <key> N<ttl>` created on a miss, awaiting the
    /// value their winner will store (sealed); nothing to seal, and left as they are (a
    /// rewrite would end their win state).
    #[serde(default)]
    pub empty: u64,
    /// Values found under each data key before this run (hash fields counted one by one).
    pub by_key: BTreeMap<u32, u64>,
    /// Each data key's seal count in the keyring when the run began (kept across a resume):
    /// what the keyring records with a complete run, so that a key that sealed more since
    /// the scan passed (a cachegate that had not taken the rotation) is not retired.
    #[serde(default)]
    pub seals_at_start: BTreeMap<u32, u64>,
}

/// Where a rewrap is: saved after every SCAN batch, so that an interrupted run resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The primary key it re-seals under: a rotation since starts over.
    primary: u32,
    /// What it walks, in order (keyspace patterns, or memcached nodes): a configuration that
    /// changed since starts over, so that no keyspace is skipped.
    #[serde(default)]
    over: Vec<String>,
    /// Index into the string patterns then the hash patterns.
    pattern: usize,
    cursor: String,
    tally: Tally,
}

fn save(path: &Path, cursor: &Cursor) -> Result<(), RewrapError> {
    let text = serde_json::to_string(cursor).map_err(|e| RewrapError::State(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| RewrapError::State(format!("{}: {e}", path.display())))
}

fn saved(path: &Path, primary: u32, over: &[String]) -> Option<Cursor> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Cursor>(&text)
        .ok()
        .filter(|c| c.primary == primary && c.over == over)
}

/// Runs one key's re-seal again while a writer changed it meanwhile (a sliding TTL, another
/// field of its hash), so that a busy key is not left under the old data key; still changed
/// after that, it is counted as changed (and the run is not recorded as complete).
const ATTEMPTS: usize = 5;

fn changed_again(before: &Tally, after: &Tally, attempt: usize) -> bool {
    after.changed > before.changed && attempt + 1 < ATTEMPTS
}

/// The data key id of a sealed value (its header checked by a successful open).
fn key_id(value: &[u8]) -> u32 {
    u32::from_be_bytes([value[4], value[5], value[6], value[7]])
}

fn request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    encode_command(&mut out, args.iter().copied());
    out.to_vec()
}

/// A bulk string (or nil: `None`) at `pos`, moving past it.
fn bulk(frame: &[u8], pos: &mut usize) -> Option<Option<Bytes>> {
    let rest = &frame[*pos..];
    if let Some(len) = crate::crypt::nil(rest) {
        *pos += len;
        return Some(None);
    }
    let (value, len) = crate::crypt::bulk(rest)?;
    *pos += len;
    Some(Some(Bytes::copy_from_slice(value)))
}

/// An array header's length at `pos`, moving past it.
fn array(frame: &[u8], pos: &mut usize) -> Option<usize> {
    let (kind, count, at) = crate::crypt::header(&frame[*pos..])?;
    (kind == b'*').then(|| {
        *pos += at;
        count
    })
}

async fn call(conn: &mut Conn, args: &[&[u8]]) -> Result<Bytes, RewrapError> {
    let reply = conn.roundtrip(&request(args)).await?;
    if reply.starts_with(b"-") {
        return Err(RewrapError::Refused {
            command: String::from_utf8_lossy(args[0]).into_owned(),
            reply: String::from_utf8_lossy(&reply).trim_end().to_string(),
        });
    }
    Ok(reply)
}

fn refused_unless_wrongtype(command: &[u8], reply: &[u8]) -> Result<(), RewrapError> {
    if reply.starts_with(b"-") && !reply.starts_with(b"-WRONGTYPE") {
        return Err(RewrapError::Refused {
            command: String::from_utf8_lossy(command).into_owned(),
            reply: String::from_utf8_lossy(reply).trim_end().to_string(),
        });
    }
    Ok(())
}

/// What one stored value needs: nothing (already under the primary key, or it does not open:
/// both counted here), or sealing again from this plaintext. A value in clear is sealed only
/// while the listener lets plaintext pass (`on_plaintext = "pass"`, a migration): otherwise
/// it is a value someone wrote around cachegate, which reads refuse, and sealing it would
/// make it read as genuine.
fn to_reseal(
    keys: &Keys,
    opened: Result<Bytes, OpenError>,
    value: &[u8],
    seal_clear: bool,
    tally: &mut Tally,
) -> Option<Bytes> {
    match opened {
        Ok(plain) => {
            let id = key_id(value);
            *tally.by_key.entry(id).or_default() += 1;
            if id == keys.primary.id {
                tally.current += 1;
                return None;
            }
            Some(plain)
        }
        Err(OpenError::Plaintext) if seal_clear => Some(Bytes::copy_from_slice(value)),
        Err(_) => {
            tally.failed += 1;
            None
        }
    }
}

/// Re-seals one key's value; which of the tally's counts it adds to.
async fn one(
    conn: &mut Conn,
    keys: &Keys,
    key: &Bytes,
    seal_clear: bool,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    call(conn, &[b"WATCH", key]).await?;
    // WRONGTYPE (the key became another type since the SCAN) skips it; any other error
    // (a backend user denied GET) stops the run rather than leave values behind unseen.
    let reply = conn.roundtrip(&request(&[b"GET", key])).await?;
    refused_unless_wrongtype(b"GET", &reply)?;
    let value = match bulk(&reply, &mut 0) {
        Some(Some(v)) => v,
        // Gone, or no longer a string.
        _ => {
            call(conn, &[b"UNWATCH"]).await?;
            return Ok(());
        }
    };
    let from_clear = !crate::crypt::is_sealed(&value);
    let Some(plain) = to_reseal(keys, keys.open(key, &value), &value, seal_clear, tally) else {
        call(conn, &[b"UNWATCH"]).await?;
        return Ok(());
    };
    let sealed = keys.seal(key, &plain);
    let write: [&[u8]; 4] = [b"SET", key, &sealed, b"KEEPTTL"];
    commit(conn, &write, 1, u64::from(from_clear), tally).await
}

/// Writes `values` re-sealed values (`from_clear` of them sealed for the first time) with one
/// command inside the MULTI its WATCH guards, and counts them: changed meanwhile (EXEC
/// aborted), or re-sealed.
async fn commit(
    conn: &mut Conn,
    write: &[&[u8]],
    values: u64,
    from_clear: u64,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    call(conn, &[b"MULTI"]).await?;
    call(conn, write).await?;
    let exec = call(conn, &[b"EXEC"]).await?;
    if exec.starts_with(b"*-1") || exec.starts_with(b"_") {
        tally.changed += values;
    } else {
        tally.resealed += values;
        tally.from_clear += from_clear;
    }
    Ok(())
}

/// Re-seals one hash's field values: every field not under the primary key, in one
/// `HSET` inside `MULTI` (so a hash changed meanwhile is left as it is).
async fn one_hash(
    conn: &mut Conn,
    keys: &Keys,
    key: &Bytes,
    seal_clear: bool,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    call(conn, &[b"WATCH", key]).await?;
    let reply = conn.roundtrip(&request(&[b"HGETALL", key])).await?;
    refused_unless_wrongtype(b"HGETALL", &reply)?;
    let mut pos = 0;
    let pairs = (|| {
        let n = array(&reply, &mut pos)?;
        let mut pairs = Vec::with_capacity(n / 2);
        for _ in 0..n / 2 {
            pairs.push((bulk(&reply, &mut pos)??, bulk(&reply, &mut pos)??));
        }
        Some(pairs)
    })();
    let Some(pairs) = pairs else {
        // Gone, or no longer a hash (an error reply, or a RESP3 map: the connection is RESP2).
        call(conn, &[b"UNWATCH"]).await?;
        return Ok(());
    };
    let mut writes: Vec<(Bytes, Bytes)> = Vec::new();
    let mut from_clear = 0;
    for (field, value) in pairs {
        let opened = keys.open_field(key, &field, &value);
        let Some(plain) = to_reseal(keys, opened, &value, seal_clear, tally) else {
            continue;
        };
        from_clear += u64::from(!crate::crypt::is_sealed(&value));
        let sealed = keys.seal_field(key, &field, &plain);
        writes.push((field, sealed));
    }
    if writes.is_empty() {
        call(conn, &[b"UNWATCH"]).await?;
        return Ok(());
    }
    let mut hset: Vec<&[u8]> = vec![b"HSET", key];
    for (f, v) in &writes {
        hset.push(f);
        hset.push(v);
    }
    commit(conn, &hset, writes.len() as u64, from_clear, tally).await
}

/// Rewraps one listener's keyspaces; `progress` is told the tally every thousand keys.
pub async fn rewrap(
    config: &Config,
    listener: &ListenerConfig,
    keys: &Keys,
    state: Option<&Path>,
    seals_now: BTreeMap<u32, u64>,
    mut progress: impl FnMut(&str, &Tally),
) -> Result<Tally, RewrapError> {
    let encryption = listener
        .encryption
        .as_ref()
        .ok_or_else(|| RewrapError::NoEncryption(listener.name.clone()))?;
    if let crate::config::Protocol::Memcached(mc) = &listener.protocol {
        return rewrap_memcached(config, listener, mc, keys, state, seals_now, progress).await;
    }
    let connect = |upstream: &crate::config::UpstreamConfig| {
        let pool = Pool::new(upstream, config.limits.max_reply_bytes, Protocol::Redis);
        async move { Ok::<Conn, RewrapError>(pool?.connector().connect().await?) }
    };
    let mut seed = connect(&listener.upstream).await?;
    // Where values live: every primary of a cluster (from CLUSTER SLOTS; the seed alone
    // walked only its own slots), and on each node every database that holds keys (clients
    // may SELECT on a standalone listener).
    let mut conns = Vec::new();
    let mut layout = None;
    if listener.upstream.cluster {
        let ranges = served_slots(&mut seed, &listener.upstream.address).await?;
        drop(seed);
        let mut primaries: Vec<_> = ranges.iter().map(|r| r.primary.clone()).collect();
        primaries.sort_by_key(|n| n.address());
        primaries.dedup_by_key(|n| n.address());
        for node in primaries {
            let address = node.address();
            let upstream = crate::parts::node_at(listener, &address, node.hostname)?;
            conns.push((address, connect(&upstream).await?));
        }
        no_slot_moving(&mut conns).await?;
        layout = Some(slot_owners(&ranges));
    } else {
        conns.push((listener.upstream.address.clone(), seed));
    }
    // Every database that holds keys, where clients may SELECT; database 0 alone where no
    // client can reach another (SELECT and SWAPDB refused, under any name: another
    // application's data elsewhere is none of its values) and on a cluster (which has no
    // other).
    let hidden =
        |name: &[u8]| listener.policy.visible_name(name) == crate::policy::Visibility::Hidden;
    let db0_only = hidden(b"select") && hidden(b"swapdb");
    let mut places = Vec::new();
    for (i, (_, conn)) in conns.iter_mut().enumerate() {
        let dbs = if db0_only || listener.upstream.cluster {
            vec![0]
        } else {
            databases(&call(conn, &[b"INFO", b"keyspace"]).await?)
        };
        for db in dbs {
            places.push((i, db));
        }
    }
    let spaces = &encryption.keyspaces;
    let seal_clear = encryption.on_plaintext == crate::crypt::OnPlaintext::Pass;
    let patterns: Vec<(&str, bool)> = spaces
        .patterns
        .iter()
        .map(|p| (p.as_str(), false))
        .chain(spaces.hashes.iter().map(|p| (p.as_str(), true)))
        .collect();
    // Each place, each pattern: what the saved cursor walks; with a cluster's slot owners
    // (a run that resumes after slots moved starts over: keys may have gone from a node not
    // yet walked to one already walked).
    let steps: Vec<(usize, u32, &str, bool)> = places
        .iter()
        .flat_map(|&(node, db)| patterns.iter().map(move |&(p, hash)| (node, db, p, hash)))
        .collect();
    let over: Vec<String> = steps
        .iter()
        .map(|&(node, db, p, hash)| {
            let kind = if hash { "hash" } else { "string" };
            format!("{} db{db} {kind}:{p}", conns[node].0)
        })
        .chain(layout.iter().flatten().cloned())
        .collect();
    let mut selected: Vec<Option<u32>> = vec![None; conns.len()];
    let mut at = state
        .and_then(|p| saved(p, keys.primary.id, &over))
        .unwrap_or(Cursor {
            primary: keys.primary.id,
            over,
            pattern: 0,
            cursor: "0".into(),
            tally: Tally {
                seals_at_start: seals_now.clone(),
                ..Tally::default()
            },
        });
    while at.pattern < steps.len() {
        let (node, db, pattern, hash) = steps[at.pattern];
        let conn = &mut conns[node].1;
        if selected[node] != Some(db) {
            call(conn, &[b"SELECT", db.to_string().as_bytes()]).await?;
            selected[node] = Some(db);
        }
        let kind: &[u8] = if hash { b"hash" } else { b"string" };
        let reply = call(
            conn,
            &[
                b"SCAN",
                at.cursor.as_bytes(),
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"200",
                b"TYPE",
                kind,
            ],
        )
        .await?;
        let mut pos = 0;
        let parsed = (|| {
            array(&reply, &mut pos).filter(|&n| n == 2)?;
            let next = bulk(&reply, &mut pos)??;
            let n = array(&reply, &mut pos)?;
            let mut found = Vec::with_capacity(n);
            for _ in 0..n {
                found.push(bulk(&reply, &mut pos)??);
            }
            Some((next, found))
        })();
        let (next, found) = parsed.ok_or(RewrapError::Scan)?;
        for key in &found {
            at.tally.scanned += 1;
            for attempt in 0..ATTEMPTS {
                let before = at.tally.clone();
                if hash {
                    one_hash(conn, keys, key, seal_clear, &mut at.tally).await?;
                } else {
                    one(conn, keys, key, seal_clear, &mut at.tally).await?;
                }
                if !changed_again(&before, &at.tally, attempt) {
                    break;
                }
                at.tally = before;
            }
            if at.tally.scanned.is_multiple_of(1000) {
                progress(pattern, &at.tally);
            }
        }
        if &next[..] == b"0" {
            at.pattern += 1;
            at.cursor = "0".into();
        } else {
            at.cursor = String::from_utf8_lossy(&next).into_owned();
        }
        if let Some(path) = state {
            save(path, &at)?;
        }
    }
    // Keys that moved during the walk (a resharding) could have gone from a node not yet
    // walked to one already walked: then the run is not complete, and starts over. (A fresh
    // connection to the seed: the first one would have sat idle through the walk.)
    if let Some(before) = layout {
        let settled = async {
            let mut seed = connect(&listener.upstream).await?;
            let after = served_slots(&mut seed, &listener.upstream.address).await?;
            if slot_owners(&after) != before {
                return Err(RewrapError::Layout(
                    "the cluster's slots moved during the run".into(),
                ));
            }
            no_slot_moving(&mut conns).await
        };
        if let Err(e) = settled.await {
            // Unsettled (moved, moving, unserved): this walk proves nothing, and the next
            // starts over. A connection's failure keeps the cursor, as anywhere in the walk.
            if matches!(e, RewrapError::Layout(_)) {
                if let Some(path) = state {
                    let _ = std::fs::remove_file(path);
                }
            }
            return Err(e);
        }
    }
    Ok(finish(at.tally, state, &mut progress))
}

/// Which primary serves each range of slots (replicas left out: one that fails and comes back
/// moves no key).
fn slot_owners(ranges: &[crate::upstream::cluster::topology::Range]) -> Vec<String> {
    ranges
        .iter()
        .map(|r| format!("slots {}-{} {}", r.start, r.end, r.primary.address()))
        .collect()
}

/// Every primary's own view (`CLUSTER NODES`): a node marks only its own slots migrating or
/// importing (`[slot->-id]`, `[slot-<-id]`), and a slot on its way holds keys on two nodes.
async fn no_slot_moving(conns: &mut [(String, Conn)]) -> Result<(), RewrapError> {
    for (address, conn) in conns.iter_mut() {
        let nodes = call(conn, &[b"CLUSTER", b"NODES"]).await?;
        if let Some(moving) = migrating(&nodes) {
            return Err(RewrapError::Layout(format!(
                "slot {moving} is migrating (seen on {address})"
            )));
        }
    }
    Ok(())
}

/// The cluster's slots from `CLUSTER SLOTS` of the node `seed` is connected to: every one
/// must be served by a primary cachegate can reach.
async fn served_slots(
    seed: &mut Conn,
    address: &str,
) -> Result<Vec<crate::upstream::cluster::topology::Range>, RewrapError> {
    let host = crate::config::model::host_of(address);
    let reply = call(seed, &[b"CLUSTER", b"SLOTS"]).await?;
    let ranges = crate::upstream::cluster::topology::parse_slots(&reply, &host).map_err(|e| {
        RewrapError::Refused {
            command: "CLUSTER SLOTS".into(),
            reply: e.to_string(),
        }
    })?;
    let served: usize = ranges.iter().map(|r| (r.end - r.start) as usize + 1).sum();
    if served != crate::upstream::cluster::slot::SLOTS {
        return Err(RewrapError::Layout(format!(
            "{served} of the cluster's 16384 slots are served by a primary with a known address"
        )));
    }
    Ok(ranges)
}

/// A slot `CLUSTER NODES` shows on its way (`[slot->-id]` migrating, `[slot-<-id]`
/// importing), if any.
fn migrating(nodes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(nodes).lines().find_map(|line| {
        line.split(' ')
            .skip(8)
            .find_map(|f| f.strip_prefix('[')?.split('-').next().map(str::to_string))
    })
}

/// The databases an `INFO keyspace` reply says hold keys (`db3:keys=1,...`), in order.
fn databases(info: &[u8]) -> Vec<u32> {
    let mut dbs: Vec<u32> = String::from_utf8_lossy(info)
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok())
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

/// memcached has no SCAN: each node lists its keys (`lru_crawler metadump all`), then each
/// key in an encrypted keyspace is read with `mg ... v f c t` and, when not under the primary
/// key, written back sealed with `ms ... C<cas>` (compare-and-swap: a value changed meanwhile
/// is left as it is) keeping its flags and remaining TTL. Keys are sent base64-encoded (`b`).
/// The saved cursor is per node: an interrupted run goes on from the node it was on.
async fn rewrap_memcached(
    config: &Config,
    listener: &ListenerConfig,
    mc: &crate::config::MemcachedConfig,
    keys: &Keys,
    state: Option<&Path>,
    seals_now: BTreeMap<u32, u64>,
    mut progress: impl FnMut(&str, &Tally),
) -> Result<Tally, RewrapError> {
    use base64::Engine as _;
    let encryption = listener
        .encryption
        .as_ref()
        .ok_or_else(|| RewrapError::NoEncryption(listener.name.clone()))?;
    let spaces = &encryption.keyspaces;
    let seal_clear = encryption.on_plaintext == crate::crypt::OnPlaintext::Pass;
    let over: Vec<String> = mc
        .nodes
        .iter()
        .map(|n| format!("node:{}:{}", n.host, n.port))
        .chain(spaces.patterns.iter().map(|p| format!("string:{p}")))
        .collect();
    let mut at = state
        .and_then(|p| saved(p, keys.primary.id, &over))
        .unwrap_or(Cursor {
            primary: keys.primary.id,
            over,
            pattern: 0,
            cursor: String::new(),
            tally: Tally {
                seals_at_start: seals_now.clone(),
                ..Tally::default()
            },
        });
    while at.pattern < mc.nodes.len() {
        let node = &mc.nodes[at.pattern];
        let label = format!("{}:{}", node.host, node.port);
        let upstream = crate::parts::node_upstream(listener, node)?;
        let pool = Pool::new(
            &upstream,
            config.limits.max_reply_bytes,
            Protocol::Memcached,
        )?;
        let mut conn = pool.connector().connect().await?;
        let mut found: Vec<Vec<u8>> = Vec::new();
        conn.memcached_lines(b"lru_crawler metadump all\r\n", |line| {
            let Some(rest) = line.strip_prefix(b"key=") else {
                return;
            };
            let encoded = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            let key = url_decode(encoded);
            if spaces.strings(&key) {
                found.push(key);
            }
        })
        .await?;
        for key in &found {
            at.tally.scanned += 1;
            let b64 = base64::engine::general_purpose::STANDARD.encode(key);
            for attempt in 0..ATTEMPTS {
                let before = at.tally.clone();
                one_memcached(&mut conn, keys, key, &b64, seal_clear, &mut at.tally).await?;
                if !changed_again(&before, &at.tally, attempt) {
                    break;
                }
                at.tally = before;
            }
            if at.tally.scanned.is_multiple_of(1000) {
                progress(&label, &at.tally);
            }
        }
        at.pattern += 1;
        if let Some(path) = state {
            save(path, &at)?;
        }
    }
    Ok(finish(at.tally, state, &mut progress))
}

/// `%XX` sequences decoded (memcached's metadump URL-encodes keys).
fn url_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Re-seals one memcached value; which of the tally's counts it adds to.
async fn one_memcached(
    conn: &mut Conn,
    keys: &Keys,
    key: &[u8],
    b64: &str,
    seal_clear: bool,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    use crate::protocol::memcached::Shape;
    let reply = conn
        .memcached_roundtrip(format!("mg {b64} b v f c t k\r\n").as_bytes(), Shape::Meta)
        .await?;
    if &reply[..] == b"EN\r\n" {
        // Gone since the dump.
        return Ok(());
    }
    if !reply.starts_with(b"VA ") {
        // Anything else (a node that refuses the request) stops the run rather than leave
        // values behind unseen.
        return Err(RewrapError::Memcached(
            String::from_utf8_lossy(&reply).trim_end().to_string(),
        ));
    }
    let nl = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(|| RewrapError::Memcached(String::from_utf8_lossy(&reply).into_owned()))?;
    let head = String::from_utf8_lossy(&reply[..nl]).into_owned();
    let value = &reply[nl + 2..reply.len() - 2];
    if value.is_empty() {
        tally.empty += 1;
        return Ok(());
    }
    let mut flags = "0".to_string();
    let mut cas = String::new();
    let mut ttl: i64 = -1;
    // Whether the item's key was stored in base64 (`b`): memcached shows it so with `k`, and
    // it is written back the same way (a text key rewritten with `b` came back to meta
    // clients' `k` in base64).
    let mut binary = false;
    for token in head.split(' ').skip(2) {
        match token.as_bytes().first() {
            Some(b'f') => flags = token[1..].to_string(),
            Some(b'c') => cas = token[1..].to_string(),
            Some(b't') => ttl = token[1..].parse().unwrap_or(-1),
            Some(b'b') if token.len() == 1 => binary = true,
            _ => {}
        }
    }
    let Some(plain) = to_reseal(keys, keys.open(key, value), value, seal_clear, tally) else {
        return Ok(());
    };
    let from_clear = !crate::crypt::is_sealed(value);
    let sealed = keys.seal(key, &plain);
    // The remaining TTL as an expiry: -1 is none (0 for ms); 0 left means it is expiring.
    // memcached reads an expiry over 30 days as a Unix time: a longer TTL is sent as one.
    const RELATIVE_MAX: i64 = 30 * 24 * 3600;
    let ttl = match ttl {
        -1 => 0,
        0 => 1,
        t if t > RELATIVE_MAX => crate::deadline::unix_now() + t,
        t => t,
    };
    // (A key no text line could carry goes in base64 whatever the node said.)
    let binary = binary || key.iter().any(|&b| b <= b' ' || b == 0x7f);
    let mut request = if binary {
        format!("ms {b64} {} b C{cas} F{flags} T{ttl}\r\n", sealed.len()).into_bytes()
    } else {
        // A text key: as it was stored (memcached's own listing gave it, so it is one).
        let mut r = b"ms ".to_vec();
        r.extend_from_slice(key);
        r.extend_from_slice(format!(" {} C{cas} F{flags} T{ttl}\r\n", sealed.len()).as_bytes());
        r
    };
    request.extend_from_slice(&sealed);
    request.extend_from_slice(b"\r\n");
    let stored = conn.memcached_roundtrip(&request, Shape::Meta).await?;
    match &stored[..] {
        b"HD\r\n" => {
            tally.resealed += 1;
            tally.from_clear += u64::from(from_clear);
        }
        // Changed (EX) or gone (NF) meanwhile: left as it is.
        b"EX\r\n" | b"NF\r\n" => tally.changed += 1,
        other => {
            return Err(RewrapError::Memcached(
                String::from_utf8_lossy(other).trim_end().to_string(),
            ))
        }
    }
    Ok(())
}

/// A run gone through everything: the last progress, and its cursor no longer needed.
fn finish(tally: Tally, state: Option<&Path>, progress: &mut impl FnMut(&str, &Tally)) -> Tally {
    progress("(done)", &tally);
    if let Some(path) = state {
        let _ = std::fs::remove_file(path);
    }
    tally
}

/// Where a listener's rewrap keeps its cursor: beside its keyring.
pub fn state_path(keyring: &Path) -> std::path::PathBuf {
    // `<listener>.json.rewrap`: no listener's keyring (`<name>.json`) can have that name.
    let mut name = keyring.as_os_str().to_owned();
    name.push(".rewrap");
    std::path::PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_cursor_is_trusted_only_for_the_same_key_and_keyspaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json.rewrap");
        let over = vec!["string:pii:*".to_string(), "hash:user:*".to_string()];
        let cursor = Cursor {
            primary: 7,
            over: over.clone(),
            pattern: 1,
            cursor: "42".into(),
            tally: Tally::default(),
        };
        save(&path, &cursor).unwrap();
        assert_eq!(saved(&path, 7, &over), Some(cursor));
        assert_eq!(saved(&path, 8, &over), None, "another primary key");
        let added = vec!["string:new:*".to_string(), over[0].clone(), over[1].clone()];
        assert_eq!(saved(&path, 7, &added), None, "a keyspace added in front");
        assert_eq!(
            state_path(Path::new("/d/x.json")),
            Path::new("/d/x.json.rewrap")
        );
    }

    #[test]
    fn metadump_keys_are_url_decoded() {
        assert_eq!(url_decode(b"pii%3A1"), b"pii:1");
        assert_eq!(url_decode(b"a%20b%25"), b"a b%");
        // A lone or broken escape stays as it is.
        assert_eq!(url_decode(b"x%"), b"x%");
        assert_eq!(url_decode(b"x%4"), b"x%4");
        assert_eq!(url_decode(b"x%zz"), b"x%zz");
    }
}
