//! `[listeners.encryption]`: the root key's source and the keyspaces to seal.

use super::*;

pub(super) fn encryption(
    p: &mut Problems,
    key: &str,
    e: crate::config::file::EncryptionFile,
    base: &Path,
) -> Option<Option<EncryptionConfig>> {
    use crate::crypt::keyring::RootKey;
    let sources = [
        e.root_key_file.is_some(),
        e.root_key_env.is_some(),
        e.root_key_command.is_some(),
    ];
    let root = match (&e.root_key_file, &e.root_key_env, &e.root_key_command) {
        _ if sources.iter().filter(|s| **s).count() > 1 => {
            p.add(
                key,
                "one of root_key_file, root_key_env and root_key_command, not several",
            );
            None
        }
        (Some(path), _, _) => {
            let full = resolve(base, path);
            match RootKey::from_file(&full) {
                Ok(k) => Some((Arc::new(k), format!("file {}", full.display()))),
                Err(why) => {
                    p.add(format!("{key}.root_key_file"), why);
                    None
                }
            }
        }
        (_, Some(var), _) => match RootKey::from_env(var) {
            Ok(k) => Some((Arc::new(k), format!("environment variable {var}"))),
            Err(why) => {
                p.add(format!("{key}.root_key_env"), why);
                None
            }
        },
        (_, _, Some(argv)) => match RootKey::from_command(argv) {
            Ok(k) => Some((
                Arc::new(k),
                format!("command {}", argv.first().map_or("", |a| a)),
            )),
            Err(why) => {
                p.add(format!("{key}.root_key_command"), why);
                None
            }
        },
        (None, None, None) => {
            p.add(
                format!("{key}.root_key_file"),
                "missing: the root key that wraps the data keys: root_key_file (`openssl rand -hex 32 > root.key`), root_key_env or root_key_command",
            );
            None
        }
    };
    let mut patterns = Vec::new();
    let mut hashes = Vec::new();
    for (i, ks) in e.keyspaces.iter().enumerate() {
        if ks.patterns.is_empty() {
            p.add(
                format!("{key}.keyspaces[{i}].patterns"),
                "at least one key pattern, e.g. \"pii:*\"",
            );
        }
        let default = ["string".to_string()];
        let types: &[String] = ks.types.as_deref().unwrap_or(&default);
        for t in types {
            match t.as_str() {
                "string" => patterns.extend(ks.patterns.iter().cloned()),
                "hash" => hashes.extend(ks.patterns.iter().cloned()),
                other => p.add(
                    format!("{key}.keyspaces[{i}].types"),
                    format!("`{other}`: \"string\" or \"hash\" (field values)"),
                ),
            }
        }
        if types.is_empty() {
            p.add(format!("{key}.keyspaces[{i}].types"), "at least one type");
        }
    }
    if e.keyspaces.is_empty() {
        p.add(
            format!("{key}.keyspaces"),
            "at least one keyspace: [[listeners.encryption.keyspaces]] patterns = [\"pii:*\"]",
        );
    }
    let on_plaintext = match e.on_plaintext.as_deref() {
        None | Some("error") => Some(crate::crypt::OnPlaintext::Error),
        Some("pass") => Some(crate::crypt::OnPlaintext::Pass),
        Some(other) => {
            p.add(
                format!("{key}.on_plaintext"),
                format!("`{other}`: \"error\" or \"pass\""),
            );
            None
        }
    };
    let bound = crate::crypt::keyring::NONCE_BOUND;
    let rotate_after_seals = match e.rotate_after_seals {
        None => Some(crate::crypt::keyring::ROTATE_AFTER_SEALS),
        Some(n) if (1..=bound / 2).contains(&n) => Some(n),
        Some(n) => {
            p.add(
                format!("{key}.rotate_after_seals"),
                format!("{n}: between 1 and 2^31 (half the 2^32 values a data key may seal with random nonces)"),
            );
            None
        }
    };
    let (root_key, root_key_source) = root?;
    Some(Some(EncryptionConfig {
        root_key,
        root_key_source,
        keyspaces: crate::crypt::plan::Keyspaces { patterns, hashes },
        on_plaintext: on_plaintext?,
        rotate_after_seals: rotate_after_seals?,
    }))
}
