//! `cachegate keys rewrap`: re-seals every string value of a listener's encrypted keyspaces
//! under the primary data key, straight on the backend (with the listener's upstream settings
//! and credentials). Values sealed under an older key are opened and sealed again; values in
//! clear (a cache being migrated) are sealed. Safe against concurrent writers: each value is
//! read under `WATCH` and written back in `MULTI`/`EXEC`, so a value changed meanwhile (by a
//! client through cachegate, which seals it itself) is left as it is. Idempotent: values
//! already under the primary key are skipped, so an interrupted run is resumed by running it
//! again.

use bytes::Bytes;

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
}

/// What a rewrap did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
    let reply = call(conn, &[b"GET", key]).await?;
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
            let id = u32::from_be_bytes([value[4], value[5], value[6], value[7]]);
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

/// Rewraps one listener's keyspaces; `progress` is told the tally every thousand keys.
pub async fn rewrap(
    config: &Config,
    listener: &ListenerConfig,
    keys: &Keys,
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
    let mut tally = Tally::default();
    for pattern in &encryption.keyspaces.patterns {
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let reply = call(
                &mut conn,
                &[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    pattern.as_bytes(),
                    b"COUNT",
                    b"200",
                    b"TYPE",
                    b"string",
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
                tally.scanned += 1;
                one(&mut conn, keys, key, &mut tally).await?;
                if tally.scanned % 1000 == 0 {
                    progress(pattern, &tally);
                }
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(tally)
}
