//! Configuration: `file` mirrors the TOML, `build` (one file per section) turns it into the
//! typed, always-valid `Config` of `model`.
//!
//! Parse, don't validate: once `load` returns a `Config`, every certificate has been read, every
//! policy built and every value range-checked. Unknown keys, bad values and unreadable files are
//! all collected and reported together, each with its key path.

pub mod build;
pub mod file;
pub mod model;
pub mod secrets;

use std::path::{Path, PathBuf};

pub use model::{
    AuthLimits, AuthMode, BackendUser, Config, Identity, Limits, ListenerConfig, ListenerTls,
    MemcachedConfig, NodeDown, Protocol, RingNode, UpstreamConfig,
};

/// The configuration used when no `--config` is given: a TLS listener on 127.0.0.1:6380 in front
/// of a Redis on 127.0.0.1:6379, with dev certificates and no AUTH (loopback only).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file, e.g. `listeners[0].tls.cert`.
    pub key: String,
    pub message: String,
    /// A certificate, key, CA or CRL file that does not exist (where the configuration will
    /// run, it may well).
    pub missing_file: bool,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            missing_file: false,
        }
    }

    pub fn is_missing_file(&self) -> bool {
        self.missing_file
    }
}

/// Everything wrong with a configuration, reported at once.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file (or "embedded default configuration").
    pub source_name: String,
    pub problems: Vec<Problem>,
    /// The files it was read from, as far as it got (a reload watches them for a fix).
    pub watched: Watched,
}

/// The files a configuration was read from (the config file first), and what they held when
/// read: a reload is due when what they hold now differs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    pub files: Vec<PathBuf>,
    /// Over every file's name and a digest of its contents as read (`None`: no file).
    pub fingerprint: Option<[u8; 32]>,
}

impl Watched {
    fn from_reads(reads: Vec<(PathBuf, Option<[u8; 32]>)>) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (path, digest) in &reads {
            ctx.update(path.as_os_str().as_encoded_bytes());
            ctx.update(&[0]);
            match digest {
                Some(d) => ctx.update(d),
                None => ctx.update(b"missing"),
            }
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        Self {
            fingerprint: (!reads.is_empty()).then_some(fingerprint),
            files: reads.into_iter().map(|(p, _)| p).collect(),
        }
    }

    /// The fingerprint of what the same files hold now.
    pub fn now(&self) -> Option<[u8; 32]> {
        let reads = self
            .files
            .iter()
            .map(|f| (f.clone(), file_digest(f)))
            .collect();
        Self::from_reads(reads).fingerprint
    }
}

/// SHA-256 of a file's contents; `None` when it cannot be read (missing, a symlink loop).
fn file_digest(path: &Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    Some(out)
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

/// Loads and validates a config file; relative paths in it are resolved against its directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path);
    let own = (path.to_path_buf(), bytes.as_ref().ok().map(|b| digest(b)));
    let text = bytes
        .and_then(|b| {
            String::from_utf8(b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem::new("(file)", format!("cannot read: {e}"))],
            watched: Watched::from_reads(vec![own.clone()]),
        })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let result = parse(&text, &name, base);
    // The files it names, as noted while parsing (each digested just before it was read: a
    // change after that shows as a difference, and reloads).
    let mut reads = vec![own];
    reads.extend(FILES_READ.with(|f| std::mem::take(&mut *f.borrow_mut())));
    reads.dedup_by(|a, b| a.0 == b.0);
    let watched = Watched::from_reads(reads);
    match result {
        Ok(mut config) => {
            config.source = Some(path.to_path_buf());
            config.watched = watched;
            Ok(config)
        }
        Err(mut e) => {
            e.watched = watched;
            Err(e)
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

thread_local! {
    /// The files the configuration being parsed on this thread names, with what each held.
    static FILES_READ: std::cell::RefCell<Vec<(PathBuf, Option<[u8; 32]>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes a file the configuration is built from, with a digest of what it holds now, just
/// before it is read (`Config::watched`).
fn note_file(path: &Path) {
    let read = (path.to_path_buf(), file_digest(path));
    FILES_READ.with(|f| f.borrow_mut().push(read));
}

/// The embedded default configuration.
pub fn default_config() -> Result<Config, ConfigError> {
    parse(
        DEFAULT_CONFIG,
        "embedded default configuration",
        Path::new("."),
    )
}

/// Parses and validates TOML text.
pub fn parse(text: &str, source_name: &str, base: &Path) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_string(),
        problems,
        watched: Watched::default(),
    };
    let mut problems = Vec::new();
    FILES_READ.with(|f| f.borrow_mut().clear());
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| fail(vec![Problem::new("(syntax)", one_line(&e.to_string()))]))?;
    // Collect every unknown key instead of stopping at the first, as `deny_unknown_fields` would.
    let file: Result<file::FileConfig, _> = serde_ignored::deserialize(deserializer, |path| {
        problems.push(Problem::new(key_path(&path), "unknown key"));
    });
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            problems.push(Problem::new("(value)", one_line(&e.to_string())));
            return Err(fail(problems));
        }
    };
    let sources = secrets::resolve(&mut file, base, &mut problems);
    let config = build::build(file, base, &mut problems);
    match config {
        Some(mut c) if problems.is_empty() => {
            c.secret_sources = sources;
            Ok(c)
        }
        _ => Err(fail(problems)),
    }
}

/// `listeners.0.tls.cret` -> `listeners[0].tls.cret`.
fn key_path(path: &serde_ignored::Path) -> String {
    let mut out = String::new();
    for part in path.to_string().split('.') {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// toml's messages span several lines with a source excerpt; keep the gist on one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter_map(|l| {
            // toml's excerpt of the offending line (`6 | auth.tokens = ["..."]`) may hold a
            // secret: only a key before its `=` is kept. Its gutter and caret line go.
            let after_number = l.trim_start_matches(|c: char| c.is_ascii_digit());
            if let Some(excerpt) = after_number.trim_start().strip_prefix('|') {
                let key = excerpt.split_once('=').map(|(k, _)| k.trim())?;
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                return bare.then(|| format!("(in `{key} = ...`)"));
            }
            (!l.is_empty() && !l.chars().all(|c| c == '^' || c == ' ')).then(|| redact(l))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parser's message with every quoted value left out (`invalid type: string "..."`, an
/// integer in backquotes): the value may be a secret put under the wrong key.
fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut inside: Option<char> = None;
    for c in line.chars() {
        match inside {
            Some(q) if c == q => {
                out.push_str("...");
                out.push(c);
                inside = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    inside = Some(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, "test.toml", Path::new("/nonexistent"))
            .unwrap_err()
            .problems
    }

    /// A syntax error's excerpt of the line would show what it holds: a token, a password.
    #[test]
    fn a_syntax_error_names_the_place_never_the_line() {
        let p = problems(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.tokens = [\"canary-secret-token-1234\" \"x\"]\n",
        );
        let text = format!("{p:?}");
        assert!(text.contains("line 3"), "{text}");
        assert!(!text.contains("canary-secret"), "{text}");
    }

    /// Nor does a value of the wrong type, nor an array's continuation line.
    #[test]
    fn a_value_error_never_quotes_the_value() {
        for text in [
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.tokens = \"canary-secret-token-1234\"\n",
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nupstream.password = 81726354\n",
            "[[listeners]]\nbind = \"127.0.0.1:0\"\nauth.tokens = [\n  \"x\"\n  \"canary-secret-token-5678\",\n]\n",
        ] {
            let p = format!("{:?}", problems(text));
            assert!(!p.contains("canary-secret") && !p.contains("81726354"), "{p}");
        }
    }

    const MINIMAL: &str = r#"
[[listeners]]
bind = "127.0.0.1:0"
auth.tokens = ["0123456789abcdef"]
upstream.address = "127.0.0.1:6379"
"#;

    #[test]
    fn cluster_settings_are_checked() {
        let keys = |extra: &str| -> Vec<String> {
            problems(&format!("{MINIMAL}{extra}"))
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        let listener = "listeners[0].upstream";
        assert!(keys("upstream.nodes = [\"127.0.0.1:7000\"]\nupstream.multiplex = true\nupstream.read_from_replicas = true\n")
            .iter()
            .any(|k| k == &format!("{listener}.read_from_replicas")));
        assert!(keys("upstream.cluster_refresh = \"5s\"\n")
            .iter()
            .any(|k| k == &format!("{listener}.cluster_refresh")));
        assert!(keys("upstream.nodes = [\"127.0.0.1:7000\"]\n")
            .iter()
            .any(|k| k == &format!("{listener}.nodes")));
        assert!(keys(
            "upstream.cluster = true\nupstream.multiplex = false\nupstream.nodes = [\"x\"]\n"
        )
        .iter()
        .any(|k| k == &format!("{listener}.multiplex")));
        assert!(
            keys("upstream.cluster = true\nupstream.nodes = [\"no-port\"]\n")
                .iter()
                .any(|k| k == &format!("{listener}.nodes[0]"))
        );
        let ok = parse(
            &format!("{MINIMAL}upstream.cluster = true\nupstream.nodes = [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\nupstream.read_from_replicas = true\n"),
            "test.toml",
            Path::new("/nonexistent"),
        )
        .unwrap_or_else(|e| panic!("{:?}", e.problems));
        let up = &ok.listeners[0].upstream;
        assert!(up.cluster && up.read_from_replicas);
        assert_eq!(up.cluster_seeds, ["127.0.0.1:7000", "127.0.0.1:7001"]);
    }

    #[test]
    fn encryption_settings_are_checked_at_once() {
        let text = format!(
            "{MINIMAL}encryption.on_plaintext = \"maybe\"\nencryption.keyspaces = [{{ patterns = [], types = [\"list\"] }}]\n"
        );
        let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
        for k in [
            "listeners[0].encryption.root_key_file",
            "listeners[0].encryption.keyspaces[0].patterns",
            "listeners[0].encryption.keyspaces[0].types",
            "listeners[0].encryption.on_plaintext",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        // memcached values are strings: a hash keyspace is refused there, and so is a bound
        // past half the nonce limit.
        let memcached = "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\nupstream.nodes = [\"127.0.0.1:11211\"]\nencryption.root_key_env = \"K\"\nencryption.keyspaces = [{ patterns = [\"k*\"], types = [\"hash\"] }]\nencryption.rotate_after_seals = 4294967296\n";
        let ps = problems(memcached);
        for (key, says) in [
            (
                "listeners[0].encryption.keyspaces",
                "memcached values are strings",
            ),
            (
                "listeners[0].encryption.rotate_after_seals",
                "between 1 and 2^31",
            ),
        ] {
            assert!(
                ps.iter().any(|p| p.key == key && p.message.contains(says)),
                "{key}: {ps:?}"
            );
        }
        // A root key file that is not 32 bytes is refused without echoing it.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.key");
        std::fs::write(&root, "canary-not-a-key").unwrap();
        let text = format!(
            "{MINIMAL}encryption.root_key_file = {root:?}\nencryption.keyspaces = [{{ patterns = [\"pii:*\"] }}]\n"
        );
        let p = format!("{:?}", problems(&text));
        assert!(p.contains("32 bytes") && !p.contains("canary"), "{p}");
    }

    #[test]
    fn a_root_key_comes_from_one_file_variable_or_command() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let spaces = "encryption.keyspaces = [{ patterns = [\"pii:*\"] }]\n";
        // A command (a KMS client) that prints it.
        let text = format!(
            "{MINIMAL}encryption.root_key_command = [\"sh\", \"-c\", \"echo {hex}\"]\n{spaces}"
        );
        let c = parse(&text, "t", Path::new("/nonexistent")).unwrap();
        let e = c.listeners[0].encryption.as_ref().unwrap();
        assert_eq!(e.root_key_source, "command sh");
        assert!(!format!("{e:?}").contains(hex));
        // A failing command: its output is not repeated.
        let text = format!(
            "{MINIMAL}encryption.root_key_command = [\"sh\", \"-c\", \"echo canary-secret; exit 3\"]\n{spaces}"
        );
        let p = format!("{:?}", problems(&text));
        assert!(
            p.contains("root_key_command") && !p.contains("canary"),
            "{p}"
        );
        // An environment variable.
        std::env::set_var("CACHEGATE_TEST_ROOT_KEY_7F3A", hex);
        let text = format!(
            "{MINIMAL}encryption.root_key_env = \"CACHEGATE_TEST_ROOT_KEY_7F3A\"\n{spaces}"
        );
        assert!(parse(&text, "t", Path::new("/nonexistent")).is_ok());
        // Not two at once.
        let text = format!(
            "{MINIMAL}encryption.root_key_env = \"CACHEGATE_TEST_ROOT_KEY_7F3A\"\nencryption.root_key_command = [\"true\"]\n{spaces}"
        );
        assert!(problems(&text)
            .iter()
            .any(|p| p.message.contains("not several")));
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = default_config().unwrap();
        assert_eq!(c.listeners.len(), 2);
        let l = &c.listeners[0];
        assert_eq!(l.bind.to_string(), "127.0.0.1:6380");
        assert_eq!(l.upstream.address, "127.0.0.1:6379");
        assert!(matches!(l.tls.as_ref().unwrap().identity, Identity::Dev));
        assert!(matches!(l.auth, AuthMode::None));
        let m = &c.listeners[1];
        assert_eq!(m.bind.to_string(), "127.0.0.1:11212");
        assert!(matches!(m.tls.as_ref().unwrap().identity, Identity::Dev));
        match &m.protocol {
            Protocol::Memcached(mc) => {
                assert_eq!(
                    (mc.nodes[0].host.as_str(), mc.nodes[0].port),
                    ("127.0.0.1", 11211)
                )
            }
            Protocol::Redis => panic!("second listener should be memcached"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL, "t", Path::new(".")).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.name, "redis-0");
        assert_eq!(l.max_connections, model::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            l.tls.as_ref().unwrap().handshake_timeout,
            model::DEFAULT_HANDSHAKE_TIMEOUT
        );
    }

    /// Backend users' passwords derive from the upstream password: without one, anyone who
    /// reaches the backend could compute them, so provisioning needs it.
    #[test]
    fn backend_users_need_an_upstream_password() {
        let found = problems(&format!(
            "{MINIMAL}[listeners.commands]\ndisable = [\"FLUSHALL\"]\nscripts = \"backend_acl\"\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "listeners[0].upstream.password");
    }

    /// The backend user's rules for refused containers: a renamed one is denied whole, and its
    /// `noscript` subcommands the listener does not refuse are allowed again (its alias runs
    /// them as the backend user); a disabled one is only denied; a mirrored user gets back only
    /// what its own rules allow (found by a reviewer: a read-only user's mirror was given
    /// `CONFIG RESETSTAT`, and a disabled `CLIENT`'s `KILL` was allowed again).
    #[test]
    fn backend_users_deny_refused_containers_and_allow_back_only_what_an_alias_needs() {
        let rules = |commands: &str| {
            let text = format!(
                "[[users]]\nname = \"default\"\nacl = \"off\"\n\
                 [[users]]\nname = \"ro\"\nacl = \"on >pw-ro ~* &* +@read +@connection +eval\"\n\
                 [[users]]\nname = \"all\"\nacl = \"on >pw-all ~* &* +@all\"\n\
                 [user_groups]\ng = [\"default\", \"ro\", \"all\"]\n\
                 [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\n\
                 auth.user_group = \"g\"\nauth.backend_users = true\n\
                 upstream.address = \"127.0.0.1:6379\"\nupstream.password = \"pw\"\n\
                 [listeners.commands]\n{commands}scripts = \"backend_acl\"\n"
            );
            let config = parse(&text, "t", Path::new(".")).unwrap();
            let up = &config.listeners[0].upstream;
            let of = |u: &model::BackendUser| u.rules.join(" ");
            let mirror = |name: &str| {
                up.mirror_users
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, u)| of(u))
                    .unwrap()
            };
            (
                of(up.backend_user.as_ref().unwrap()),
                mirror("ro"),
                mirror("all"),
            )
        };
        let (listener, ro, all) =
            rules("rename = { CONFIG = \"admin-config\" }\ndisable = [\"CONFIG|SET\"]\n");
        for (who, rules) in [("listener", &listener), ("all", &all)] {
            assert!(rules.contains("-config +config|get"), "{who}: {rules}");
            assert!(!rules.contains("+config|set"), "{who}: {rules}");
        }
        assert!(ro.contains("-config") && !ro.contains("+config|"), "{ro}");
        let (listener, ro, all) = rules("disable = [\"CONFIG\", \"CLIENT\"]\n");
        for rules in [&listener, &ro, &all] {
            assert!(
                rules.contains("-config") && rules.contains("-client"),
                "{rules}"
            );
            assert!(
                !rules.contains("+config|") && !rules.contains("+client|"),
                "{rules}"
            );
        }
    }

    /// Backend user names are built from listener and user names: two listeners whose names
    /// would provision the same backend user (one password, rules decided by the last to
    /// provision) are refused.
    #[test]
    fn backend_user_names_never_collide() {
        let listener = |name: &str| {
            format!(
                "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\n\
                 auth.user_group = \"g\"\nauth.backend_users = true\n\
                 upstream.address = \"127.0.0.1:6379\"\nupstream.password = \"pw\"\n"
            )
        };
        let users = "[[users]]\nname = \"default\"\nacl = \"off\"\n\
                     [[users]]\nname = \"b-c\"\nacl = \"on >pw-one ~app:* +@read\"\n\
                     [[users]]\nname = \"c\"\nacl = \"on >pw-two ~* +@all\"\n\
                     [user_groups]\ng = [\"default\", \"b-c\", \"c\"]\n";
        let found = problems(&format!("{users}{}{}", listener("a"), listener("a-b")));
        assert!(
            found
                .iter()
                .any(|p| p.message.contains("same backend user `cachegate-a-b-c`")),
            "{found:?}"
        );
        parse(
            &format!("{users}{}{}", listener("a"), listener("z")),
            "t",
            Path::new("."),
        )
        .unwrap();
    }

    /// A user's password from a file goes into an ACL rule string split at whitespace: one
    /// holding a space (`x ~* +@all`) would add rules, so it is refused, and never shown.
    #[test]
    fn a_password_from_a_file_cannot_add_acl_rules() {
        let dir = std::env::temp_dir().join(format!("cachegate-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "secret-start ~* +@all\n").unwrap();
        let text = "[[users]]\nname = \"default\"\nacl = \"on ~app:* +@read\"\npassword_file = \"pw\"\n\
                    [user_groups]\ng = [\"default\"]\n\
                    [[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\nauth.user_group = \"g\"\n\
                    upstream.address = \"127.0.0.1:6379\"\n";
        let found = parse(text, "t", &dir).unwrap_err().problems;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "users[0].password_file");
        assert!(found[0].message.contains("whitespace"), "{found:?}");
        assert!(!found[0].message.contains("secret-start"), "{found:?}");
    }

    /// Disabled commands next to allowed scripting are never silently open: the config says
    /// how (backend ACL user, or an explicit "unguarded"), or it is refused with the choices.
    #[test]
    fn scripts_next_to_disabled_commands_must_be_decided() {
        let with = |commands: &str| {
            format!(
                "{MINIMAL}upstream.password = \"backend-pw\"\n[listeners.commands]\n{commands}\n"
            )
        };
        let found = problems(&with("disable = [\"FLUSHALL\"]"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "listeners[0].commands.scripts");
        for choice in ["@scripting", "backend_acl", "unguarded"] {
            assert!(found[0].message.contains(choice), "{}", found[0].message);
        }
        // Scripting disabled too, or nothing refused: nothing to decide.
        parse(
            &with("disable = [\"FLUSHALL\", \"@scripting\"]"),
            "t",
            Path::new("."),
        )
        .unwrap();
        parse(&with("disable = []"), "t", Path::new(".")).unwrap();
        let c = parse(
            &with("disable = [\"FLUSHALL\", \"CONFIG|SET\"]\nscripts = \"backend_acl\""),
            "t",
            Path::new("."),
        )
        .unwrap();
        let user = c.listeners[0].upstream.backend_user.as_ref().unwrap();
        assert_eq!(user.name, "cachegate-redis-0");
        assert!(user.rules.contains(&"-flushall".to_string()));
        // CONFIG SET is `noscript`: no script can call it, nothing to deny in the backend.
        assert!(!user.rules.contains(&"-config|set".to_string()));
        assert!(!user
            .rules
            .iter()
            .any(|r| r.contains(user.password.expose())));
        parse(
            &with("disable = [\"FLUSHALL\"]\nscripts = \"unguarded\""),
            "t",
            Path::new("."),
        )
        .unwrap();
        // A renamed command is denied to the backend user too (it runs as the configured
        // upstream user); MULTI and the other commands no script can call are left alone.
        let c = parse(
            &with("rename = { FLUSHALL = \"X\", MULTI = \"Y\" }\nscripts = \"backend_acl\""),
            "t",
            Path::new("."),
        )
        .unwrap();
        let rules = &c.listeners[0].upstream.backend_user.as_ref().unwrap().rules;
        assert!(rules.contains(&"-flushall".to_string()) && !rules.contains(&"-multi".to_string()));
        let bad = problems(&with("disable = [\"KEYS\"]\nscripts = \"maybe\""));
        assert!(bad[0].message.contains("maybe"), "{bad:?}");
    }

    /// A new name that is an existing command would make clients run the renamed one when
    /// they mean that command (`FLUSHALL = "hello"` empties the cache at every connect).
    #[test]
    fn renames_cannot_shadow_commands() {
        for (rename, shadowed) in [
            ("FLUSHALL = \"hello\"", "hello"),
            ("FLUSHALL = \"GET\"", "GET"),
        ] {
            let text = format!(
                "{MINIMAL}[listeners.commands]\nrename = {{ {rename} }}\nscripts = \"unguarded\"\n"
            );
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].message.contains(shadowed), "{found:?}");
        }
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let text = format!("bogus = 1\n{MINIMAL}\n[listeners.tls]\ncret = \"x\"\n");
        let keys: Vec<_> = problems(&text).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, vec!["bogus", "listeners[0].tls.cret"]);
    }

    #[test]
    fn all_problems_at_once_with_key_paths() {
        let text = r#"
[[listeners]]
bind = "nowhere"
tls.cert = "missing-cert.pem"
tls.key = "missing-key.pem"
tls.min_version = "1.1"
auth.tokens = ["short"]
commands.disable = ["AUTH"]
"#;
        let ps = problems(text);
        let keys: Vec<_> = ps.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "listeners[0].bind",
            "listeners[0].tls.min_version",
            "listeners[0].tls.cert",
            "listeners[0].tls.key",
            "listeners[0].auth.tokens[0]",
            "listeners[0].commands.disable",
            "listeners[0].upstream",
        ] {
            assert!(keys.contains(&want), "{want} missing from {ps:#?}");
        }
        let cert = ps
            .iter()
            .find(|p| p.key == "listeners[0].tls.cert")
            .unwrap();
        assert!(
            cert.message.contains("/nonexistent/missing-cert.pem")
                && cert.message.ends_with("no such file"),
            "{}",
            cert.message
        );
    }

    #[test]
    fn tokens_are_required_unless_mode_none() {
        let text = "[[listeners]]\nbind = \"127.0.0.1:0\"\nupstream.address = \"h:1\"\n";
        let ps = problems(text);
        assert_eq!(ps[0].key, "listeners[0].auth.tokens");
        let three = MINIMAL.replace(
            "[\"0123456789abcdef\"]",
            "[\"0123456789abcdef\", \"1123456789abcdef\", \"2123456789abcdef\"]",
        );
        assert!(problems(&three)[0].message.contains("at most two"));
    }

    #[test]
    fn token_problems_never_echo_the_token() {
        let text = MINIMAL.replace("0123456789abcdef", "canary with space");
        let err = parse(&text, "t", Path::new(".")).unwrap_err().to_string();
        assert!(!err.contains("canary"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let text = MINIMAL.replace("bind = \"127.0.0.1:0\"", "bind = 5");
        let ps = problems(&text);
        assert!(ps[0].message.contains("bind"), "{ps:?}");
    }

    #[test]
    fn memcached_listener_settings_and_errors() {
        let ok = "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n\
                  upstream.nodes = [\"10.0.0.1:11211\", \"10.0.0.2:11211:3\"]\n\
                  memcached.on_node_down = \"error\"\nmemcached.eject_after = 3\n";
        let c = parse(ok, "t", Path::new(".")).unwrap();
        let Protocol::Memcached(mc) = &c.listeners[0].protocol else {
            panic!("memcached expected")
        };
        assert_eq!(mc.nodes[1].weight, 3);
        assert_eq!(mc.on_node_down, NodeDown::Error);
        assert_eq!(c.listeners[0].name, "memcached-0");

        let bad = "[[listeners]]\nprotocol = \"memcached\"\nbind = \"127.0.0.1:0\"\n\
                   auth.tokens = [\"0123456789abcdef\"]\nupstream.nodes = [\"nope\", \"h:1\", \"h:1\"]\n\
                   upstream.password = \"x\"\nmemcached.on_node_down = \"maybe\"\n\
                   [[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"none\"\nupstream.address = \"h:1\"\n\
                   memcached.max_keys = 5\n";
        let keys: Vec<_> = problems(bad).into_iter().map(|p| p.key).collect();
        for want in [
            "listeners[0].auth",
            "listeners[0].upstream.nodes[0]",
            "listeners[0].upstream.nodes[2]",
            "listeners[0].upstream",
            "listeners[0].memcached.on_node_down",
            "listeners[1].memcached",
        ] {
            assert!(
                keys.iter().any(|k| k == want),
                "{want} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn users_and_groups() {
        let ok = "[[users]]\nname = \"default\"\nacl = \"off\"\n[[users]]\nname = \"app\"\nacl = \"on >pw ~a:* +get\"\n\
                  [user_groups]\ng = [\"default\", \"app\"]\n\
                  [[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\nauth.user_group = \"g\"\nupstream.address = \"h:1\"\n";
        let c = parse(ok, "t", Path::new(".")).unwrap();
        let AuthMode::Acl(g) = &c.listeners[0].auth else {
            panic!("acl expected")
        };
        assert_eq!(g.users.len(), 2);

        let bad = "[[users]]\nname = \"app\"\nacl = \"on >canary-pw +nosuchcommand\"\n\
                   [[users]]\nname = \"ops\"\nacl = \"on %Q~x\"\n\
                   [user_groups]\ng = [\"app\", \"ghost\"]\n\
                   [[listeners]]\nbind = \"127.0.0.1:0\"\nauth.mode = \"acl\"\nauth.user_group = \"nope\"\nupstream.address = \"h:1\"\n";
        let err = parse(bad, "t", Path::new(".")).unwrap_err();
        let shown = err.to_string();
        for want in [
            "users[0].acl: user `app`: rule `+nosuchcommand`: unknown command",
            "users[1].acl: user `ops`: rule `%Q~x`",
            "user_groups.g: no [[users]] entry named `ghost`",
            "user_groups.g: every user group needs a `default` user",
            "listeners[0].auth.user_group: no [user_groups] entry named `nope`",
        ] {
            assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
        }
        assert!(!shown.contains("canary"), "{shown}");
    }

    #[test]
    fn display_lists_every_problem() {
        let err = parse("[[listeners]]\n", "x.toml", Path::new(".")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("x.toml: "), "{shown}");
        assert!(shown.contains("listeners[0].bind: missing"), "{shown}");
        assert!(shown.contains("listeners[0].upstream: missing"), "{shown}");
    }
}
