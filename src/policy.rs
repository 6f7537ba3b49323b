//! Renamed and disabled commands: a pure decision per command name, no sockets.
//!
//! `decide` maps what the client typed to `Allow`, `Rename(real)` or `Refuse`; a refused name gets
//! exactly the error Redis gives for an unknown command (built in `protocol::reply`), so the
//! existence of a disabled command or the real name behind an alias is not revealed.
//! `visible_name` is the inverse used when rewriting COMMAND replies.

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

/// Commands cachegate answers itself; renaming or disabling them would lock clients out.
const PROXY_OWNED: &[&str] = &["AUTH", "HELLO", "QUIT", "RESET"];

/// Names longer than this are never configured, so they are allowed without case-folding.
const MAX_NAME: usize = 64;

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

#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Upper-case names that are refused: disabled ones and the real names of renamed ones.
    refused: HashSet<Vec<u8>>,
    /// Upper-case alias -> real name (upper-case).
    aliases: HashMap<Vec<u8>, Bytes>,
    /// Upper-case real name -> alias as configured (lower-case, as Redis lists names).
    alias_of: HashMap<Vec<u8>, Bytes>,
    longest: usize,
}

impl Policy {
    /// Builds a policy, reporting every problem in the lists at once.
    pub fn new(disable: &[String], rename: &[(String, String)]) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut disabled: Vec<String> = Vec::new();
        for entry in disable {
            if let Some(group) = entry.strip_prefix('@') {
                if group.eq_ignore_ascii_case("scripting") {
                    disabled.extend(SCRIPTING_COMMANDS.iter().map(|s| s.to_string()));
                } else {
                    problems.push(format!(
                        "disable: unknown command group `@{group}` (known: @scripting)"
                    ));
                }
            } else if let Err(why) = check_name(entry) {
                problems.push(format!("disable: `{entry}` {why}"));
            } else {
                disabled.push(entry.to_ascii_uppercase());
            }
        }
        let mut policy = Policy::default();
        for name in &disabled {
            if PROXY_OWNED.contains(&name.as_str()) {
                problems.push(format!(
                    "disable: `{name}` is answered by cachegate itself and cannot be disabled"
                ));
            }
            policy.refused.insert(name.as_bytes().to_vec());
        }
        for (real, alias) in rename {
            let real_up = real.to_ascii_uppercase();
            let alias_up = alias.to_ascii_uppercase();
            for (what, name) in [("command", real), ("new name", alias)] {
                if let Err(why) = check_name(name) {
                    problems.push(format!("rename.{real}: {what} `{name}` {why}"));
                }
            }
            if PROXY_OWNED.contains(&real_up.as_str()) {
                problems.push(format!(
                    "rename.{real}: `{real_up}` is answered by cachegate itself and cannot be renamed"
                ));
            }
            if disabled.contains(&real_up) {
                problems.push(format!(
                    "rename.{real}: `{real_up}` is also in commands.disable; pick one"
                ));
            }
            if disabled.contains(&alias_up) || policy.aliases.contains_key(alias_up.as_bytes()) {
                problems.push(format!(
                    "rename.{real}: new name `{alias}` is disabled or already used by another rename"
                ));
            }
            if rename.iter().any(|(r, _)| r.eq_ignore_ascii_case(alias)) {
                problems.push(format!(
                    "rename.{real}: new name `{alias}` is itself renamed away"
                ));
            }
            policy.refused.insert(real_up.clone().into_bytes());
            policy.aliases.insert(
                alias_up.clone().into_bytes(),
                Bytes::from(real_up.clone().into_bytes()),
            );
            policy.alias_of.insert(
                real_up.into_bytes(),
                Bytes::from(alias.to_ascii_lowercase().into_bytes()),
            );
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

    pub fn is_empty(&self) -> bool {
        self.longest == 0
    }

    /// The decision for a command name exactly as the client sent it (any case).
    pub fn decide(&self, name: &[u8]) -> Decision {
        if name.len() > self.longest {
            return Decision::Allow;
        }
        let mut buf = [0u8; MAX_NAME];
        let upper = &mut buf[..name.len()];
        upper.copy_from_slice(name);
        upper.make_ascii_uppercase();
        if let Some(real) = self.aliases.get(&*upper) {
            Decision::Rename(real.clone())
        } else if self.refused.contains(&*upper) {
            Decision::Refuse
        } else {
            Decision::Allow
        }
    }

    /// How a real command name (as the backend lists it) may be shown to the client.
    pub fn visible_name(&self, real: &[u8]) -> Visibility {
        if real.len() > self.longest {
            return Visibility::Shown;
        }
        let upper = real.to_ascii_uppercase();
        if let Some(alias) = self.alias_of.get(&upper) {
            Visibility::ShownAs(alias.clone())
        } else if self.refused.contains(&upper) {
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
        let real = Decision::Rename(Bytes::from_static(b"FLUSHALL"));
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
    }

    #[test]
    fn empty_policy_allows_everything() {
        let p = Policy::new(&[], &[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.decide(b"FLUSHALL"), Decision::Allow);
    }
}
