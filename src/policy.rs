//! Renamed and disabled commands: a pure decision per command name, no sockets.
//!
//! `decide` maps what the client typed to `Allow`, `Rename(real)` or `Refuse`; a refused name gets
//! exactly the error Redis gives for an unknown command (built in `protocol::reply`), so the
//! existence of a disabled command or the real name behind an alias is not revealed.
//! Subcommands can be disabled (`CONFIG|SET`): `decide_subcommand` refuses them with Redis's
//! unknown-subcommand error. They cannot be renamed (Redis's rename-command cannot either);
//! rename the container instead. `visible_name` is the inverse used when rewriting COMMAND
//! replies, subcommand names (`config|get`) included.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use bytes::Bytes;

/// The commands that run scripts server-side; `@scripting` in `commands.disable` expands to these.
pub const SCRIPTING_COMMANDS: &[&str] = &[
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
    "FUNCTION",
    "SCRIPT",
];

/// Names longer than this are never configured, so they are allowed without case-folding
/// (the same bound as `protocol::name::MAX_NAME`, which folds a request's name once).
const MAX_NAME: usize = 64;

/// Commands cachegate answers itself; renaming or disabling them would lock clients out.
const PROXY_OWNED: &[&str] = &["AUTH", "HELLO", "QUIT", "RESET"];

/// What to do with one command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward as typed.
    Allow,
    /// Forward under this real name.
    Rename(Bytes),
    /// Answer as Redis answers an unknown command; nothing is forwarded.
    Refuse,
}

/// How a real command name may be shown to clients (COMMAND replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    Shown,
    ShownAs(Bytes),
    Hidden,
}

/// One problem in `commands.disable` / `commands.rename`. `key` is where it belongs
/// (`disable`, `rename.<command>`); the text is the message `cachegate check` shows there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown command group `@{0}` (known: @scripting)")]
    UnknownGroup(String),
    #[error("`{name}` {why}")]
    BadName { name: String, why: &'static str },
    #[error("`{0}` is not `COMMAND|SUBCOMMAND`")]
    NotSubcommand(String),
    #[error("`{0}` is answered by cachegate itself and cannot be disabled")]
    OwnedDisabled(String),
    #[error("subcommands cannot be renamed (Redis's rename-command cannot either); disable `{real}` instead, or rename the whole command")]
    RenamedSubcommand { real: String },
    #[error("{what} `{name}` {why}")]
    BadRenameName {
        real: String,
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("`{upper}` is answered by cachegate itself and cannot be renamed")]
    OwnedRenamed { real: String, upper: String },
    #[error("`{upper}` is also in commands.disable; pick one")]
    RenamedAndDisabled { real: String, upper: String },
    #[error("new name `{alias}` is disabled or already used by another rename")]
    AliasTaken { real: String, alias: String },
    #[error("new name `{alias}` is itself renamed away")]
    AliasRenamedAway { real: String, alias: String },
}

impl PolicyError {
    /// The key under `commands` the problem belongs to.
    pub fn key(&self) -> String {
        match self {
            PolicyError::UnknownGroup(_)
            | PolicyError::BadName { .. }
            | PolicyError::NotSubcommand(_)
            | PolicyError::OwnedDisabled(_) => "disable".to_string(),
            PolicyError::RenamedSubcommand { real }
            | PolicyError::BadRenameName { real, .. }
            | PolicyError::OwnedRenamed { real, .. }
            | PolicyError::RenamedAndDisabled { real, .. }
            | PolicyError::AliasTaken { real, .. }
            | PolicyError::AliasRenamedAway { real, .. } => format!("rename.{real}"),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Policy {
    // Every name is kept lower-case, as the command table spells it, so that a request's name
    // is folded once for the policy and the table alike.
    /// Names that are refused: disabled ones and the real names of renamed ones.
    refused: HashSet<Vec<u8>>,
    /// Alias -> real name.
    aliases: HashMap<Vec<u8>, Bytes>,
    /// Real name -> alias (as Redis lists names).
    alias_of: HashMap<Vec<u8>, Bytes>,
    /// `container|sub` names that are refused, and their containers.
    refused_sub: HashSet<Vec<u8>>,
    containers: HashSet<Vec<u8>>,
    longest: usize,
}

impl Policy {
    /// Builds a policy, reporting every problem in the lists at once.
    pub fn new(disable: &[String], rename: &[(String, String)]) -> Result<Self, Vec<PolicyError>> {
        let mut problems = Vec::new();
        let mut disabled: Vec<String> = Vec::new();
        let mut subcommands: Vec<String> = Vec::new();
        for entry in disable {
            if let Some(group) = entry.strip_prefix('@') {
                if group.eq_ignore_ascii_case("scripting") {
                    disabled.extend(SCRIPTING_COMMANDS.iter().map(|s| s.to_string()));
                } else {
                    problems.push(PolicyError::UnknownGroup(group.to_string()));
                }
            } else if let Err(why) = check_name(entry) {
                problems.push(PolicyError::BadName {
                    name: entry.clone(),
                    why,
                });
            } else if let Some((container, sub)) = entry.split_once('|') {
                if container.is_empty() || sub.is_empty() || sub.contains('|') {
                    problems.push(PolicyError::NotSubcommand(entry.clone()));
                } else {
                    subcommands.push(entry.to_ascii_uppercase());
                }
            } else {
                disabled.push(entry.to_ascii_uppercase());
            }
        }
        let mut policy = Policy::default();
        for name in &disabled {
            if PROXY_OWNED.contains(&name.as_str()) {
                problems.push(PolicyError::OwnedDisabled(name.clone()));
            }
            policy
                .refused
                .insert(name.to_ascii_lowercase().into_bytes());
        }
        for name in &subcommands {
            let name = name.to_ascii_lowercase();
            let (container, _) = name.split_once('|').unwrap_or((&name, ""));
            policy.containers.insert(container.as_bytes().to_vec());
            policy.refused_sub.insert(name.into_bytes());
        }
        for (real, alias) in rename {
            if real.contains('|') || alias.contains('|') {
                problems.push(PolicyError::RenamedSubcommand { real: real.clone() });
                continue;
            }
            let real_up = real.to_ascii_uppercase();
            let alias_up = alias.to_ascii_uppercase();
            for (what, name) in [("command", real), ("new name", alias)] {
                if let Err(why) = check_name(name) {
                    problems.push(PolicyError::BadRenameName {
                        real: real.clone(),
                        what,
                        name: name.clone(),
                        why,
                    });
                }
            }
            if PROXY_OWNED.contains(&real_up.as_str()) {
                problems.push(PolicyError::OwnedRenamed {
                    real: real.clone(),
                    upper: real_up.clone(),
                });
            }
            if disabled.contains(&real_up) {
                problems.push(PolicyError::RenamedAndDisabled {
                    real: real.clone(),
                    upper: real_up.clone(),
                });
            }
            let (real_low, alias_low) = (real.to_ascii_lowercase(), alias.to_ascii_lowercase());
            if disabled.contains(&alias_up) || policy.aliases.contains_key(alias_low.as_bytes()) {
                problems.push(PolicyError::AliasTaken {
                    real: real.clone(),
                    alias: alias.clone(),
                });
            }
            if rename.iter().any(|(r, _)| r.eq_ignore_ascii_case(alias)) {
                problems.push(PolicyError::AliasRenamedAway {
                    real: real.clone(),
                    alias: alias.clone(),
                });
            }
            policy.refused.insert(real_low.clone().into_bytes());
            policy.aliases.insert(
                alias_low.clone().into_bytes(),
                Bytes::from(real_low.clone()),
            );
            policy
                .alias_of
                .insert(real_low.into_bytes(), Bytes::from(alias_low));
        }
        policy.longest = policy
            .refused
            .iter()
            .chain(policy.aliases.keys())
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Whether any command that runs a script (EVAL, EVALSHA, FCALL and their _RO forms)
    /// may still run, under its name or an alias.
    pub fn allows_scripts(&self) -> bool {
        SCRIPTING_COMMANDS
            .iter()
            .filter(|c| !matches!(**c, "FUNCTION" | "SCRIPT"))
            .map(|c| c.to_ascii_lowercase())
            .any(|c| {
                !self.refused.contains(c.as_bytes()) || self.alias_of.contains_key(c.as_bytes())
            })
    }

    /// Whether anything is renamed.
    pub fn renames(&self) -> bool {
        !self.aliases.is_empty()
    }

    /// The ACL rules that deny, in the backend, what this policy refuses: `-flushall`,
    /// `-config|set`, ... (lower-case, as ACL SETUSER takes them).
    pub fn backend_denials(&self) -> Vec<String> {
        let mut rules: Vec<String> = self
            .refused
            .iter()
            .chain(self.refused_sub.iter())
            .map(|n| format!("-{}", String::from_utf8_lossy(n)))
            .collect();
        rules.sort();
        rules
    }

    /// Whether the command whose real (lower-case) name is `real` is renamed, not disabled:
    /// it runs under its alias.
    pub fn is_renamed(&self, real: &[u8]) -> bool {
        self.alias_of.contains_key(real)
    }

    /// Whether clients can run the command whose real (lower-case) name is `real` at all,
    /// under its own name or an alias.
    pub fn runs(&self, real: &[u8]) -> bool {
        !self.refused.contains(real) || self.is_renamed(real)
    }

    pub fn is_empty(&self) -> bool {
        self.longest == 0 && self.containers.is_empty()
    }

    /// The decision for a command name exactly as the client sent it (any case). A renamed
    /// command's real name comes lower-case.
    pub fn decide(&self, name: &[u8]) -> Decision {
        if name.len() > self.longest {
            return Decision::Allow;
        }
        let mut buf = [0u8; MAX_NAME];
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        self.decide_folded(lower)
    }

    /// [`Policy::decide`] for a name the caller has already folded to lower case.
    pub fn decide_folded(&self, lower: &[u8]) -> Decision {
        if lower.len() > self.longest {
            return Decision::Allow;
        }
        if let Some(real) = self.aliases.get(lower) {
            Decision::Rename(real.clone())
        } else if self.refused.contains(lower) {
            Decision::Refuse
        } else {
            Decision::Allow
        }
    }

    /// Whether a disabled subcommand is called: `real` is the command's real name (after any
    /// rename), `sub` the first argument.
    pub fn refuses_subcommand(&self, real: &[u8], sub: &[u8]) -> bool {
        // Every disabled `container|sub` is a valid name, at most MAX_NAME long (`check_name`):
        // a longer pair is none of them. Folded on the stack: this runs for every command with
        // a subcommand while some are disabled.
        let (n, m) = (real.len(), sub.len());
        if self.containers.is_empty() || n + 1 + m > MAX_NAME {
            return false;
        }
        let mut key = [0u8; MAX_NAME];
        key[..n].copy_from_slice(real);
        key[..n].make_ascii_lowercase();
        if !self.containers.contains(&key[..n]) {
            return false;
        }
        key[n] = b'|';
        key[n + 1..n + 1 + m].copy_from_slice(sub);
        key[n + 1..n + 1 + m].make_ascii_lowercase();
        self.refused_sub.contains(&key[..n + 1 + m])
    }

    /// How a real command name (as the backend lists it) may be shown to the client; for a
    /// subcommand (`config|get`), hidden with its container or when disabled itself, and
    /// shown under the container's alias when that is renamed.
    pub fn visible_name(&self, real: &[u8]) -> Visibility {
        if let Some(bar) = real.iter().position(|&b| b == b'|') {
            let (container, sub) = (&real[..bar], &real[bar + 1..]);
            if self.refuses_subcommand(container, sub) {
                return Visibility::Hidden;
            }
            return match self.visible_name(container) {
                Visibility::Hidden => Visibility::Hidden,
                Visibility::Shown => Visibility::Shown,
                Visibility::ShownAs(alias) => {
                    let mut name = alias.to_vec();
                    name.push(b'|');
                    name.extend(sub.iter().map(u8::to_ascii_lowercase));
                    Visibility::ShownAs(Bytes::from(name))
                }
            };
        }
        if real.len() > self.longest {
            return Visibility::Shown;
        }
        let lower = real.to_ascii_lowercase();
        if let Some(alias) = self.alias_of.get(&lower) {
            Visibility::ShownAs(alias.clone())
        } else if self.refused.contains(&lower) {
            Visibility::Hidden
        } else {
            Visibility::Shown
        }
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_NAME {
        Err("is longer than 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'|')
    {
        Err("may hold only letters, digits, `_`, `-` and `|`")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &["flushdb".into(), "KEYS".into(), "@scripting".into()],
            &[("FLUSHALL".into(), "ADMIN_FLUSHALL_9f2c".into())],
        )
        .unwrap()
    }

    #[test]
    fn disabled_names_are_refused_in_any_case() {
        let p = policy();
        for name in [
            "FLUSHDB", "flushdb", "FlushDb", "keys", "eval", "FCALL", "script",
        ] {
            assert_eq!(p.decide(name.as_bytes()), Decision::Refuse, "{name}");
        }
        assert_eq!(p.decide(b"GET"), Decision::Allow);
        assert_eq!(p.decide(b"KEYSX"), Decision::Allow);
    }

    #[test]
    fn renamed_commands_run_under_the_new_name_only() {
        let p = policy();
        assert_eq!(p.decide(b"FLUSHALL"), Decision::Refuse);
        assert_eq!(p.decide(b"flushall"), Decision::Refuse);
        let real = Decision::Rename(Bytes::from_static(b"flushall"));
        assert_eq!(p.decide(b"ADMIN_FLUSHALL_9f2c"), real);
        assert_eq!(p.decide(b"admin_flushall_9F2C"), real);
    }

    #[test]
    fn visibility_hides_disabled_and_renamed_away_names() {
        let p = policy();
        assert_eq!(p.visible_name(b"flushdb"), Visibility::Hidden);
        assert_eq!(
            p.visible_name(b"flushall"),
            Visibility::ShownAs(Bytes::from_static(b"admin_flushall_9f2c"))
        );
        assert_eq!(p.visible_name(b"get"), Visibility::Shown);
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = Policy::new(
            &["AUTH".into(), "@nope".into(), "bad name".into()],
            &[
                ("GET".into(), "X".into()),
                ("SET".into(), "x".into()),
                ("DEL".into(), "GET".into()),
            ],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs.contains(&PolicyError::OwnedDisabled("AUTH".into())));
        assert_eq!(errs[0], PolicyError::UnknownGroup("nope".into()));
        assert_eq!(errs[0].key(), "disable");
        let keys: Vec<String> = errs.iter().map(PolicyError::key).collect();
        assert!(keys.contains(&"rename.DEL".to_string()), "{keys:?}");
    }

    #[test]
    fn subcommands_can_be_disabled_but_not_renamed() {
        let p = Policy::new(
            &["CONFIG|SET".into(), "client|kill".into()],
            &[("CONFIG".into(), "cfg".into())],
        )
        .unwrap();
        assert!(p.refuses_subcommand(b"CONFIG", b"set"));
        assert!(p.refuses_subcommand(b"config", b"SET"));
        assert!(!p.refuses_subcommand(b"CONFIG", b"GET"));
        assert!(p.refuses_subcommand(b"CLIENT", b"Kill"));
        assert!(!p.refuses_subcommand(b"CLIENT", &[b'k'; 200]));
        assert!(!p.refuses_subcommand(&[b'c'; 200], b"kill"));
        // A disabled pair as long as a name may be (64 bytes) is refused; one byte more is
        // no pair that can be disabled.
        let sub = "s".repeat(64 - "client|".len());
        let long = Policy::new(&[format!("CLIENT|{sub}")], &[]).unwrap();
        assert!(long.refuses_subcommand(b"client", sub.as_bytes()));
        assert!(!long.refuses_subcommand(b"client", format!("{sub}s").as_bytes()));
        assert!(Policy::new(&[format!("CLIENT|{sub}s")], &[]).is_err());
        assert_eq!(p.decide(b"CONFIG"), Decision::Refuse, "renamed away");
        assert_eq!(p.visible_name(b"config|set"), Visibility::Hidden);
        assert_eq!(
            p.visible_name(b"config|get"),
            Visibility::ShownAs(Bytes::from_static(b"cfg|get"))
        );
        assert_eq!(p.visible_name(b"client|kill"), Visibility::Hidden);
        assert_eq!(p.visible_name(b"client|list"), Visibility::Shown);
        let errs = Policy::new(
            &["CONFIG|".into(), "A|B|C".into()],
            &[("CONFIG|SET".into(), "x".into())],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:#?}");
        let hidden = Policy::new(&["CONFIG".into()], &[]).unwrap();
        assert_eq!(hidden.visible_name(b"config|get"), Visibility::Hidden);
    }

    #[test]
    fn empty_policy_allows_everything() {
        let p = Policy::new(&[], &[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.decide(b"FLUSHALL"), Decision::Allow);
    }
}
