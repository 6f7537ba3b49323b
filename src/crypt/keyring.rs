//! The root key and the keyring file: a listener's data keys, each wrapped (AES-256-GCM) by the
//! root key, with the id of the primary one. Created with one data key on first use; only
//! wrapped keys ever reach the disk, never the backend.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{DataKey, Keys};

const SHAPE: &str =
    "a root key is 32 bytes: 64 hex digits, base64, or the raw bytes (`openssl rand -hex 32`)";

/// The root key: 32 bytes, given as 64 hex digits, as base64, or as the raw bytes.
pub struct RootKey([u8; 32]);

impl Drop for RootKey {
    fn drop(&mut self) {
        // Best effort: the bytes do not outlive the key in this struct.
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

impl RootKey {
    /// Reads the root key from a file. The error never holds the file's contents.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = Self::parse(&bytes);
        bytes.iter_mut().for_each(|b| *b = 0);
        key.ok_or_else(|| {
            format!(
                "{}: a root key is 32 bytes: 64 hex digits, base64, or the raw bytes (`openssl rand -hex 32`)",
                path.display()
            )
        })
    }

    /// A root key from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, String> {
        let value = std::env::var_os(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        Self::parse(value.as_encoded_bytes())
            .ok_or_else(|| format!("environment variable {name}: {}", SHAPE))
    }

    /// A root key printed by a command (a KMS, Vault or HSM client), within 10 seconds. Its
    /// output is never repeated in an error.
    pub fn from_command(argv: &[String]) -> Result<Self, String> {
        let (program, args) = argv
            .split_first()
            .ok_or("an empty command (a program and its arguments)")?;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{program} did not finish within 10 s"));
                }
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{program}: {e}"))?;
        let mut stdout = out.stdout;
        if !out.status.success() {
            stdout.iter_mut().for_each(|b| *b = 0);
            return Err(format!("{program} failed ({})", out.status));
        }
        let key = Self::parse(&stdout);
        stdout.iter_mut().for_each(|b| *b = 0);
        key.ok_or_else(|| format!("{program} printed no root key: {SHAPE}"))
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        let decoded = match text {
            Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>(),
            Some(t) if !t.is_empty() => base64::engine::general_purpose::STANDARD.decode(t).ok(),
            _ => None,
        };
        // Raw bytes, but not 32 printable characters: that is a passphrase, not a key.
        let raw_ok = bytes.len() == 32 && !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        let mut raw = decoded
            .filter(|d| d.len() == 32)
            .or_else(|| raw_ok.then(|| bytes.to_vec()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw);
        raw.iter_mut().for_each(|b| *b = 0);
        Some(RootKey(key))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32 bytes"))
    }

    fn wrap(&self, id: u32, material: &[u8; 32]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("random");
        let mut body = material.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label(id)),
                &mut body,
            )
            .expect("seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn unwrap(&self, id: u32, wrapped: &str) -> Option<[u8; 32]> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(wrapped)
            .ok()?;
        if bytes.len() != NONCE_LEN + 32 + 16 {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let mut body = bytes[NONCE_LEN..].to_vec();
        let plain = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label(id)),
                &mut body,
            )
            .ok()?;
        let mut key = [0u8; 32];
        key.copy_from_slice(plain);
        body.iter_mut().for_each(|b| *b = 0);
        Some(key)
    }
}

fn label(id: u32) -> Vec<u8> {
    format!("cachegate data key {id}").into_bytes()
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    primary: u32,
    keys: Vec<Wrapped>,
    /// The last `rewrap` that went through every encrypted keyspace with no failure: every
    /// value was then under `primary` (what `retire` checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rewrapped: Option<Rewrapped>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Rewrapped {
    primary: u32,
    /// Unix seconds.
    finished: u64,
    /// Each data key's seal count then: a key that sealed more since (a cachegate that had
    /// not taken the rotation) may hold values the rewrap never saw.
    #[serde(default)]
    seals: std::collections::BTreeMap<u32, u64>,
}

/// Values one data key may seal with random 96-bit nonces (NIST SP 800-38D, 8.3: at most
/// 2^32 invocations, so that the chance of a repeated nonce stays below 2^-32).
pub const NONCE_BOUND: u64 = 1 << 32;
/// cachegate rotates well before that: at a quarter of the bound, 2^30 values (about a
/// billion), where the chance that two of the key's nonces collide is about
/// n^2 / 2^97 = 2^-37. `encryption.rotate_after_seals` lowers it.
pub const ROTATE_AFTER_SEALS: u64 = 1 << 30;
const _: () = assert!(ROTATE_AFTER_SEALS <= NONCE_BOUND / 4);

#[derive(Serialize, Deserialize)]
struct Wrapped {
    id: u32,
    /// base64 of nonce, ciphertext and tag.
    wrapped: String,
    /// Unix seconds.
    created: u64,
    /// Values sealed under it, as the cachegates that use the keyring reported them.
    #[serde(default)]
    seals: u64,
    /// When it was retired (Unix seconds): kept wrapped in the file, never loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u64>,
}

/// The data keys in `path`, unwrapped with `root`; the file is created with one new data key
/// when it does not exist. `Ok((keys, created))`.
pub fn open_or_create(path: &Path, root: &RootKey) -> Result<(Keys, bool), String> {
    // `symlink_metadata`: a dangling link (an unmounted secret) is not "no keyring".
    let mut created = false;
    if std::fs::symlink_metadata(path).is_err() {
        let mut id = [0u8; 4];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| "no random source")?;
        // A random id: values sealed under a keyring made by mistake (a volume that was not
        // mounted) and those under the real one fail as "unknown data key", not "tampered".
        let id = u32::from_be_bytes(id).max(1);
        let file = File {
            version: 1,
            primary: id,
            keys: vec![new_key(root, id)?],
            rewrapped: None,
        };
        created = create(path, &file)?;
    }
    let file = read(path)?;
    let mut all = Vec::with_capacity(file.keys.len());
    let retired: Vec<u32> = file
        .keys
        .iter()
        .filter(|k| k.retired.is_some())
        .map(|k| k.id)
        .collect();
    for k in file.keys.iter().filter(|k| k.retired.is_none()) {
        let mut material = root.unwrap(k.id, &k.wrapped).ok_or_else(|| {
            format!(
                "the keyring {}: data key {} does not unwrap with this root key (another root key, or a damaged file)",
                path.display(),
                k.id
            )
        })?;
        let mut key = DataKey::new(k.id, &material);
        key.created = k.created;
        all.push(Arc::new(key));
        material.iter_mut().for_each(|b| *b = 0);
    }
    let primary = all
        .iter()
        .find(|k| k.id == file.primary)
        .cloned()
        .ok_or_else(|| {
            format!(
                "the keyring {}: no data key {}",
                path.display(),
                file.primary
            )
        })?;
    Ok((
        Keys {
            primary,
            all,
            retired,
        },
        created,
    ))
}

/// Where a listener's keyring is kept.
pub fn keyring_path(data_dir: &Path, listener: &str) -> std::path::PathBuf {
    data_dir.join("encryption").join(format!("{listener}.json"))
}

/// A new data key, wrapped by `root` (its material gone from memory).
fn new_key(root: &RootKey, id: u32) -> Result<Wrapped, String> {
    let mut material = [0u8; 32];
    SystemRandom::new()
        .fill(&mut material)
        .map_err(|_| "no random source")?;
    let wrapped = root.wrap(id, &material);
    material.iter_mut().for_each(|b| *b = 0);
    Ok(Wrapped {
        id,
        wrapped,
        created: crate::deadline::unix_now() as u64,
        seals: 0,
        retired: None,
    })
}

/// One data key as `cachegate keys status` shows it (never its material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    /// Unix seconds.
    pub created: u64,
    pub primary: bool,
    /// When it was retired (Unix seconds).
    pub retired: Option<u64>,
    /// Values sealed under it, as reported.
    pub seals: u64,
}

fn read(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the keyring {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the keyring {} is not valid: {e}", path.display()))
}

/// The data keys of a keyring, after checking that each unwraps with `root`.
pub fn status(path: &Path, root: &RootKey) -> Result<Vec<KeyInfo>, String> {
    let file = read(path)?;
    open_or_create(path, root)?;
    Ok(file
        .keys
        .iter()
        .map(|k| KeyInfo {
            id: k.id,
            created: k.created,
            primary: k.id == file.primary,
            retired: k.retired,
            seals: k.seals,
        })
        .collect())
}

/// Notes in the keyring that a rewrap under `primary` went through every encrypted keyspace
/// with no failure (`retire` relies on it). Nothing is noted when the primary key changed
/// meanwhile.
pub fn note_rewrapped(
    path: &Path,
    primary: u32,
    seals_at_start: &std::collections::BTreeMap<u32, u64>,
) -> Result<(), String> {
    let _lock = lock(path)?;
    let mut file = read(path)?;
    if file.primary != primary {
        return Ok(());
    }
    file.rewrapped = Some(Rewrapped {
        primary,
        finished: crate::deadline::unix_now() as u64,
        seals: seals_at_start.clone(),
    });
    replace(path, &file)
}

/// Each data key's seal count, as the keyring holds it now (a rewrap notes them as they were
/// when it began).
pub fn seal_counts(path: &Path) -> Result<std::collections::BTreeMap<u32, u64>, String> {
    Ok(read(path)?.keys.iter().map(|k| (k.id, k.seals)).collect())
}

/// Why a data key cannot be retired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetireError {
    #[error("no data key {0} in the keyring")]
    NoSuchKey(u32),
    #[error("data key {0} is the primary key: rotate first")]
    Primary(u32),
    #[error("data key {0} is retired already")]
    Retired(u32),
    #[error("no complete rewrap under the primary key {primary} is recorded: values may still be under data key {id}; run `cachegate keys rewrap` (after every cachegate has taken the rotation), or retire with --force")]
    NotRewrapped { id: u32, primary: u32 },
    #[error("data key {id} sealed {more} values since the last complete rewrap (a cachegate that has not taken the rotation?): reload every cachegate, run `cachegate keys rewrap` again, or retire with --force")]
    SealedSince { id: u32, more: u64 },
    #[error("{0}")]
    Keyring(String),
}

/// Retires a data key: it stays in the file (wrapped) but is never loaded again, so a value
/// still under it fails to open (`retired_key`, counted) instead of opening. Refused for the
/// primary key, and (unless `force`) unless a complete rewrap under the current primary key
/// is recorded, since that rewrap left no value under an older key.
pub fn retire(path: &Path, root: &RootKey, id: u32, force: bool) -> Result<(), RetireError> {
    let _lock = lock(path).map_err(RetireError::Keyring)?;
    let mut file = read(path).map_err(RetireError::Keyring)?;
    open_or_create(path, root).map_err(RetireError::Keyring)?;
    let primary = file.primary;
    let rewrapped = file.rewrapped.clone();
    let key = file
        .keys
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or(RetireError::NoSuchKey(id))?;
    if id == primary {
        return Err(RetireError::Primary(id));
    }
    if key.retired.is_some() {
        return Err(RetireError::Retired(id));
    }
    if !force {
        let Some(r) = rewrapped.filter(|r| r.primary == primary) else {
            return Err(RetireError::NotRewrapped { id, primary });
        };
        let then = r.seals.get(&id).copied().unwrap_or(0);
        if key.seals > then {
            return Err(RetireError::SealedSince {
                id,
                more: key.seals - then,
            });
        }
    }
    key.retired = Some(crate::deadline::unix_now() as u64);
    replace(path, &file).map_err(RetireError::Keyring)
}

/// Adds a new data key and makes it the primary one: new values are sealed under it, the
/// older keys still open theirs. Returns its id. Running cachegates take it at their next
/// reload.
pub fn rotate(path: &Path, root: &RootKey) -> Result<u32, String> {
    let _lock = lock(path)?;
    let mut file = read(path)?;
    open_or_create(path, root)?;
    let id = add_primary(&mut file, root)?;
    replace(path, &file)?;
    Ok(id)
}

/// Adds a new data key to `file` and makes it primary; its id.
fn add_primary(file: &mut File, root: &RootKey) -> Result<u32, String> {
    let random = SystemRandom::new();
    let id = loop {
        let mut id = [0u8; 4];
        random.fill(&mut id).map_err(|_| "no random source")?;
        let id = u32::from_be_bytes(id).max(1);
        if file.keys.iter().all(|k| k.id != id) {
            break id;
        }
    };
    file.keys.push(new_key(root, id)?);
    file.primary = id;
    Ok(id)
}

/// Holds the keyring's lock file (`<keyring>.lock`) while it lives: cachegates that share a
/// keyring (and `cachegate keys`) change it one at a time, so no reported seal is lost.
fn lock(path: &Path) -> Result<std::fs::File, String> {
    let lock = path.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| format!("cannot open {}: {e}", lock.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock.display()))?;
    Ok(file)
}

/// What `record_seals` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The key's seals, this report included.
    pub total: u64,
    /// The new primary key, when the report took the primary key to `rotate_after`.
    pub rotated: Option<u32>,
    /// The keyring's primary key after the report (another cachegate, or `keys rotate`, may
    /// have rotated it).
    pub primary: u32,
}

/// Adds `n` values sealed under data key `id` to its count in the keyring; when that is the
/// primary key and its count reaches `rotate_after`, a new data key is made primary in the
/// same change (running cachegates take it at their next reload, which the caller starts).
pub fn record_seals(
    path: &Path,
    root: &RootKey,
    id: u32,
    n: u64,
    rotate_after: u64,
) -> Result<Recorded, String> {
    let _lock = lock(path)?;
    let mut file = read(path)?;
    let Some(key) = file.keys.iter_mut().find(|k| k.id == id) else {
        return Err(format!("the keyring {}: no data key {id}", path.display()));
    };
    key.seals = key.seals.saturating_add(n);
    let total = key.seals;
    let rotated = if id == file.primary && total >= rotate_after {
        // Only with the root key the keyring is wrapped under (a cachegate still holding the
        // old one after a rotate-root must not add a key the others cannot unwrap).
        open_or_create(path, root)?;
        Some(add_primary(&mut file, root)?)
    } else {
        None
    };
    replace(path, &file)?;
    Ok(Recorded {
        total,
        rotated,
        primary: file.primary,
    })
}

/// Wraps every data key under `new` instead of `old` (seconds, whatever the data size): the
/// values are not touched. Point `root_key_file` at the new key, then reload.
pub fn rotate_root(path: &Path, old: &RootKey, new: &RootKey) -> Result<usize, String> {
    let _lock = lock(path)?;
    let mut file = read(path)?;
    for k in &mut file.keys {
        let mut material = old.unwrap(k.id, &k.wrapped).ok_or_else(|| {
            format!(
                "the keyring {}: data key {} does not unwrap with the current root key",
                path.display(),
                k.id
            )
        })?;
        k.wrapped = new.wrap(k.id, &material);
        material.iter_mut().for_each(|b| *b = 0);
    }
    replace(path, &file)?;
    Ok(file.keys.len())
}

/// Writes `file` over the keyring at `path` at once (a private temporary file renamed over it).
fn replace(path: &Path, file: &File) -> Result<(), String> {
    let tmp = temporary(path, file)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// `file`, written to a new private file beside `path`.
fn temporary(path: &Path, file: &File) -> Result<std::path::PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| "no random source")?;
    let tmp = path.with_extension(format!("tmp-{}", u64::from_be_bytes(suffix)));
    let text = serde_json::to_string_pretty(file).map_err(|e| e.to_string())?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", tmp.display()));
    }
    Ok(tmp)
}

/// Writes `file` at `path` unless a keyring appeared there meanwhile (another instance
/// starting at the same time on a shared volume): a private temporary file, then a hard link
/// that fails if the name exists. `Ok(true)` when this one was written.
fn create(path: &Path, file: &File) -> Result<bool, String> {
    let tmp = temporary(path, file)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_is_created_once_and_opens_only_with_its_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("redis.json");
        let root =
            RootKey::parse(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
                .unwrap();
        let (keys, created) = open_or_create(&path, &root).unwrap();
        assert!(created);
        let sealed = keys.seal(b"k", b"v");
        let (again, created) = open_or_create(&path, &root).unwrap();
        assert!(!created);
        // Nothing left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(&again.open(b"k", &sealed).unwrap()[..], b"v");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("00112233"),
            "the root key is not in the keyring"
        );
        let other = RootKey::parse(&[5u8; 32]).unwrap();
        let err = open_or_create(&path, &other).err().unwrap();
        assert!(err.contains("does not unwrap"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_adds_a_primary_key_and_a_new_root_rewraps_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let root = RootKey::parse(&[1u8; 32]).unwrap();
        let (keys, _) = open_or_create(&path, &root).unwrap();
        let old = keys.seal(b"k", b"old value");
        let id = rotate(&path, &root).unwrap();
        let (keys, _) = open_or_create(&path, &root).unwrap();
        assert_eq!(keys.primary.id, id);
        assert_eq!(keys.all.len(), 2);
        let new = keys.seal(b"k", b"new value");
        assert_eq!(u32::from_be_bytes([new[4], new[5], new[6], new[7]]), id);
        assert_eq!(&keys.open(b"k", &old).unwrap()[..], b"old value");
        let info = status(&path, &root).unwrap();
        assert_eq!(info.iter().filter(|k| k.primary).count(), 1);
        let next = RootKey::parse(&[2u8; 32]).unwrap();
        assert_eq!(rotate_root(&path, &root, &next).unwrap(), 2);
        assert!(open_or_create(&path, &root).is_err());
        let (keys, _) = open_or_create(&path, &next).unwrap();
        assert_eq!(&keys.open(b"k", &old).unwrap()[..], b"old value");
        assert_eq!(&keys.open(b"k", &new).unwrap()[..], b"new value");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["k.json", "k.lock"], "no temporary left");
    }

    #[test]
    fn a_key_is_retired_only_after_a_complete_rewrap_and_then_never_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let root = RootKey::parse(&[1u8; 32]).unwrap();
        let (keys, _) = open_or_create(&path, &root).unwrap();
        let first = keys.primary.id;
        let old = keys.seal(b"k", b"old value");
        assert_eq!(
            retire(&path, &root, first, false),
            Err(RetireError::Primary(first))
        );
        let second = rotate(&path, &root).unwrap();
        assert_eq!(
            retire(&path, &root, first, false),
            Err(RetireError::NotRewrapped {
                id: first,
                primary: second
            })
        );
        // A rewrap recorded under an older primary does not count.
        note_rewrapped(&path, first, &seal_counts(&path).unwrap()).unwrap();
        assert!(retire(&path, &root, first, false).is_err());
        note_rewrapped(&path, second, &seal_counts(&path).unwrap()).unwrap();
        // A cachegate that went on sealing under the old key after the rewrap: not retired.
        record_seals(&path, &root, first, 3, u64::MAX).unwrap();
        assert_eq!(
            retire(&path, &root, first, false),
            Err(RetireError::SealedSince { id: first, more: 3 })
        );
        note_rewrapped(&path, second, &seal_counts(&path).unwrap()).unwrap();
        retire(&path, &root, first, false).unwrap();
        assert_eq!(
            retire(&path, &root, first, false),
            Err(RetireError::Retired(first))
        );
        assert_eq!(
            retire(&path, &root, 12345, true),
            Err(RetireError::NoSuchKey(12345))
        );
        let (keys, _) = open_or_create(&path, &root).unwrap();
        assert_eq!(keys.all.len(), 1);
        assert_eq!(keys.retired, vec![first]);
        assert_eq!(
            keys.open(b"k", &old),
            Err(crate::crypt::OpenError::RetiredKey(first))
        );
        let info = status(&path, &root).unwrap();
        assert!(info.iter().any(|k| k.id == first && k.retired.is_some()));
        // A new root key re-wraps retired keys too (they stay in the file).
        let next = RootKey::parse(&[2u8; 32]).unwrap();
        assert_eq!(rotate_root(&path, &root, &next).unwrap(), 2);
        // --force skips the rewrap check (a third key, retired without a rewrap under it).
        let third = rotate(&path, &next).unwrap();
        assert!(retire(&path, &next, second, false).is_err());
        retire(&path, &next, second, true).unwrap();
        let (keys, _) = open_or_create(&path, &next).unwrap();
        assert_eq!(keys.primary.id, third);
    }

    #[test]
    fn seals_are_counted_per_key_and_the_primary_rotates_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let root = RootKey::parse(&[1u8; 32]).unwrap();
        let (keys, _) = open_or_create(&path, &root).unwrap();
        let first = keys.primary.id;
        let r = record_seals(&path, &root, first, 6, 10).unwrap();
        assert_eq!(
            r,
            Recorded {
                total: 6,
                rotated: None,
                primary: first
            }
        );
        let r = record_seals(&path, &root, first, 4, 10).unwrap();
        assert_eq!(r.total, 10);
        let second = r.rotated.expect("rotated at the bound");
        let (keys, _) = open_or_create(&path, &root).unwrap();
        assert_eq!(keys.primary.id, second);
        // Late reports for the old key are counted, and rotate nothing more.
        let r = record_seals(&path, &root, first, 5, 10).unwrap();
        assert_eq!(
            r,
            Recorded {
                total: 15,
                rotated: None,
                primary: second
            }
        );
        let info = status(&path, &root).unwrap();
        assert_eq!(info.iter().find(|k| k.id == first).unwrap().seals, 15);
        assert!(record_seals(&path, &root, 99, 1, 10).is_err());
        // At the bound, a rotation needs the keyring's own root key.
        let other = RootKey::parse(&[9u8; 32]).unwrap();
        assert!(record_seals(&path, &other, second, 100, 10).is_err());
        let (keys, _) = open_or_create(&path, &root).unwrap();
        assert_eq!(
            keys.primary.id, second,
            "nothing added under the wrong root"
        );
    }

    #[test]
    fn root_keys_are_32_bytes_in_any_of_three_spellings() {
        assert!(RootKey::parse(&[1u8; 32]).is_some());
        assert!(RootKey::parse(
            base64::engine::general_purpose::STANDARD
                .encode([2u8; 32])
                .as_bytes()
        )
        .is_some());
        assert!(RootKey::parse(b"abcd").is_none());
        assert!(RootKey::parse(&[1u8; 31]).is_none());
        assert!(
            RootKey::parse(b"correct horse battery staple 123").is_none(),
            "32 printable characters are a passphrase"
        );
    }
}
