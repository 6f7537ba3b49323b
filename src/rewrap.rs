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
    /// Values found under each data key before this run (hash fields counted one by one).
    pub by_key: BTreeMap<u32, u64>,
}

/// Where a rewrap is: saved after every SCAN batch, so that an interrupted run resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The primary key it re-seals under: a rotation since starts over.
    primary: u32,
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

fn saved(path: &Path, primary: u32) -> Option<Cursor> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<Cursor>(&text)
        .ok()
        .filter(|c| c.primary == primary)
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

/// Re-seals one key's value; which of the tally's counts it adds to.
async fn one(
    conn: &mut Conn,
    keys: &Keys,
    key: &Bytes,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    call(conn, &[b"WATCH", key]).await?;
    // An error reply (WRONGTYPE: the key became another type since the SCAN) skips it.
    let reply = conn.roundtrip(&request(&[b"GET", key])).await?;
    let value = match bulk(&reply, &mut 0) {
        Some(Some(v)) => v,
        // Gone, or no longer a string.
        _ => {
            call(conn, &[b"UNWATCH"]).await?;
            return Ok(());
        }
    };
    let plain = match keys.open(key, &value) {
        Ok(plain) => {
            let id = key_id(&value);
            *tally.by_key.entry(id).or_default() += 1;
            if id == keys.primary.id {
                tally.current += 1;
                call(conn, &[b"UNWATCH"]).await?;
                return Ok(());
            }
            plain
        }
        Err(OpenError::Plaintext) => {
            tally.from_clear += 1;
            value
        }
        Err(_) => {
            tally.failed += 1;
            call(conn, &[b"UNWATCH"]).await?;
            return Ok(());
        }
    };
    let sealed = keys.seal(key, &plain);
    call(conn, &[b"MULTI"]).await?;
    call(conn, &[b"SET", key, &sealed, b"KEEPTTL"]).await?;
    let exec = call(conn, &[b"EXEC"]).await?;
    if exec.starts_with(b"*-1") || exec.starts_with(b"_") {
        tally.changed += 1;
    } else {
        tally.resealed += 1;
    }
    Ok(())
}

/// Re-seals one hash's field values: every field not under the primary key, in one
/// `HSET` inside `MULTI` (so a hash changed meanwhile is left as it is).
async fn one_hash(
    conn: &mut Conn,
    keys: &Keys,
    key: &Bytes,
    tally: &mut Tally,
) -> Result<(), RewrapError> {
    call(conn, &[b"WATCH", key]).await?;
    let reply = conn.roundtrip(&request(&[b"HGETALL", key])).await?;
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
        let plain = match keys.open_field(key, &field, &value) {
            Ok(plain) => {
                let id = key_id(&value);
                *tally.by_key.entry(id).or_default() += 1;
                if id == keys.primary.id {
                    tally.current += 1;
                    continue;
                }
                plain
            }
            Err(OpenError::Plaintext) => {
                from_clear += 1;
                value
            }
            Err(_) => {
                tally.failed += 1;
                continue;
            }
        };
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
    call(conn, &[b"MULTI"]).await?;
    call(conn, &hset).await?;
    let exec = call(conn, &[b"EXEC"]).await?;
    if exec.starts_with(b"*-1") || exec.starts_with(b"_") {
        tally.changed += writes.len() as u64;
    } else {
        tally.resealed += writes.len() as u64;
        tally.from_clear += from_clear;
    }
    Ok(())
}

/// Rewraps one listener's keyspaces; `progress` is told the tally every thousand keys.
pub async fn rewrap(
    config: &Config,
    listener: &ListenerConfig,
    keys: &Keys,
    state: Option<&Path>,
    mut progress: impl FnMut(&str, &Tally),
) -> Result<Tally, RewrapError> {
    let encryption = listener
        .encryption
        .as_ref()
        .ok_or_else(|| RewrapError::NoEncryption(listener.name.clone()))?;
    let pool = Pool::new(
        &listener.upstream,
        config.limits.max_reply_bytes,
        Protocol::Redis,
    )?;
    let mut conn = pool.connector().connect().await?;
    let spaces = &encryption.keyspaces;
    let patterns: Vec<(&str, bool)> = spaces
        .patterns
        .iter()
        .map(|p| (p.as_str(), false))
        .chain(spaces.hashes.iter().map(|p| (p.as_str(), true)))
        .collect();
    let mut at = state
        .and_then(|p| saved(p, keys.primary.id))
        .unwrap_or(Cursor {
            primary: keys.primary.id,
            pattern: 0,
            cursor: "0".into(),
            tally: Tally::default(),
        });
    while at.pattern < patterns.len() {
        let (pattern, hash) = patterns[at.pattern];
        let kind: &[u8] = if hash { b"hash" } else { b"string" };
        let reply = call(
            &mut conn,
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
            if hash {
                one_hash(&mut conn, keys, key, &mut at.tally).await?;
            } else {
                one(&mut conn, keys, key, &mut at.tally).await?;
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
    progress("(done)", &at.tally);
    if let Some(path) = state {
        let _ = std::fs::remove_file(path);
    }
    Ok(at.tally)
}

/// Where a listener's rewrap keeps its cursor: beside its keyring.
pub fn state_path(keyring: &Path) -> std::path::PathBuf {
    keyring.with_extension("rewrap.json")
}
