//! `[listeners.auth]` and `[listeners.commands]`: tokens, ACL users and groups, certificate
//! users, the rename/disable policy, and the backend users cachegate provisions for them.

use super::*;

pub(super) fn auth(
    p: &mut Problems,
    key: &str,
    a: AuthFile,
    groups: &BTreeMap<String, Arc<UserGroup>>,
) -> Option<AuthMode> {
    if a.mode.as_deref() == Some("acl") {
        if !a.tokens.is_empty() {
            p.add(
                format!("{key}.tokens"),
                "tokens are for mode = \"tokens\"; ACL users have their own passwords",
            );
        }
        return match a.user_group.as_deref() {
            None => {
                p.add(
                    format!("{key}.user_group"),
                    "mode = \"acl\" needs the user group this listener accepts",
                );
                None
            }
            Some(name) => match groups.get(name) {
                Some(g) => Some(AuthMode::Acl(g.clone())),
                None => {
                    p.add(
                        format!("{key}.user_group"),
                        format!("no [user_groups] entry named `{name}`"),
                    );
                    None
                }
            },
        };
    }
    if a.user_group.is_some() {
        p.add(format!("{key}.user_group"), "is for mode = \"acl\"");
    }
    match (a.mode.as_deref(), a.tokens.len()) {
        (Some("none"), 0) => Some(AuthMode::None),
        (Some("none"), _) => {
            p.add(
                key,
                "mode = \"none\" with tokens set: remove the tokens or the mode",
            );
            None
        }
        (None | Some("tokens"), 0) => {
            p.add(
                format!("{key}.tokens"),
                "no AUTH tokens: set one (two during a rotation), or mode = \"none\" to accept clients without AUTH",
            );
            None
        }
        (None | Some("tokens"), 1..=2) => {
            let before = p.list.len();
            for (i, t) in a.tokens.iter().enumerate() {
                // Never echo the token itself.
                if !TOKEN_LEN.contains(&t.len()) {
                    p.add(
                        format!("{key}.tokens[{i}]"),
                        "must be 16 to 128 characters long",
                    );
                }
                if !t.bytes().all(|b| b.is_ascii_graphic()) {
                    p.add(
                        format!("{key}.tokens[{i}]"),
                        "may hold only printable ASCII without spaces",
                    );
                }
            }
            if a.tokens.len() == 2 && a.tokens[0] == a.tokens[1] {
                p.add(format!("{key}.tokens"), "the two tokens are the same");
            }
            (p.list.len() == before).then(|| {
                AuthMode::Tokens(TokenSet::new(
                    a.tokens.iter().map(|t| Token::new(t)).collect(),
                ))
            })
        }
        (None | Some("tokens"), n) => {
            p.add(
                format!("{key}.tokens"),
                format!("{n} tokens given: at most two are live at once (old and new during a rotation)"),
            );
            None
        }
        (Some(other), _) => {
            p.add(
                format!("{key}.mode"),
                format!("`{other}` is not one of \"tokens\", \"acl\", \"none\""),
            );
            None
        }
    }
}

/// How a Redis listener keeps scripts from running what its policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScriptsGuard {
    /// Nothing to guard: no command is refused or renamed, or no script can run.
    NotNeeded,
    BackendAcl,
    Unguarded,
}

/// Scripts run commands inside Redis, where cachegate cannot see them: with commands disabled
/// or renamed and scripting allowed, the configuration must say how that is handled, never
/// leave it silently open.
pub(super) fn scripts_guard(
    p: &mut Problems,
    key: &str,
    scripts: Option<String>,
    policy: Option<&Policy>,
    memcached: bool,
) -> Option<ScriptsGuard> {
    if memcached {
        if scripts.is_some() {
            p.add(key, "is for Redis listeners (memcached has no scripts)");
        }
        return None;
    }
    let policy = policy?;
    let exposed = !policy.is_empty() && policy.allows_scripts();
    match scripts.as_deref() {
        None if exposed => {
            p.add(
                key,
                "missing: scripts (EVAL, EVALSHA, FCALL) are allowed, and a script runs commands inside Redis, past commands.disable and commands.rename (`EVAL \"return redis.call('FLUSHALL')\" 0`). Choose one: add \"@scripting\" to commands.disable; set scripts = \"backend_acl\" (cachegate provisions a backend ACL user that denies the disabled commands and uses it for all its connections; needs upstream credentials allowed to run ACL SETUSER, as a sidecar that owns its backend has); or set scripts = \"unguarded\" to accept that scripts can run them (a managed backend where cachegate cannot create users)",
            );
            None
        }
        None => Some(ScriptsGuard::NotNeeded),
        Some("unguarded") => Some(ScriptsGuard::Unguarded),
        Some("backend_acl") => Some(ScriptsGuard::BackendAcl),
        Some(other) => {
            p.add(
                key,
                format!("`{other}` is not one of \"backend_acl\", \"unguarded\""),
            );
            None
        }
    }
}

/// The backend user of a `backend_acl` listener: named after it, with a password derived from
/// the configured upstream one, allowed everything but what the policy refuses.
pub(super) fn backend_user(listener: &str, up: &UpstreamConfig, policy: &Policy) -> BackendUser {
    let mut rules = vec!["~*".to_string(), "&*".into(), "+@all".into()];
    rules.extend(script_callable_denials(policy, None));
    rules.extend(own_commands());
    if up.cluster {
        // cachegate follows ASK redirections on this user's connections (clients cannot send
        // ASKING on a cluster listener, and a script gains nothing by it).
        rules.push("+asking".into());
    }
    provisioned_user(format!("cachegate-{listener}"), up, rules)
}

/// The backend user that mirrors one ACL user: its keys, channels and commands, less what the
/// listener refuses.
pub(super) fn mirror_user(
    listener: &str,
    user: &User,
    up: &UpstreamConfig,
    policy: &Policy,
) -> BackendUser {
    let mut rules = user.backend_rules();
    rules.extend(script_callable_denials(policy, Some(user)));
    rules.extend(own_commands());
    provisioned_user(format!("cachegate-{listener}-{}", user.name), up, rules)
}

/// What cachegate itself sends on these users' connections whatever the policy refuses: a
/// released connection's reset ends with ECHO, a subscribed session's unpinning with PING
/// (harmless in a script).
fn own_commands() -> [String; 2] {
    ["+echo".into(), "+ping".into()]
}

/// What the policy refuses, as backend ACL rules, for the commands a script could call (MULTI,
/// SUBSCRIBE and the other `noscript` commands never run inside one, and cachegate itself may
/// need them on its connections).
///
/// A refused container is denied whole, so that a subcommand the table does not know (a newer
/// Redis's) stays denied too. A renamed one's `noscript` subcommands are then allowed again,
/// those the listener does not refuse by themselves and (for a mirrored user) the user may run:
/// Redis judges a subcommand by its own flags, and a renamed `CONFIG GET`, which cachegate
/// sends as the backend user, was refused by Redis along with the container. A disabled
/// container has no alias that needs them: nothing is allowed again.
pub(super) fn script_callable_denials(policy: &Policy, user: Option<&User>) -> Vec<String> {
    let table = crate::auth::commands::table();
    let mut rules = Vec::new();
    for rule in policy.backend_denials() {
        let args: Vec<&str> = rule.trim_start_matches('-').split('|').collect();
        if !crate::auth::commands::script_callable(&args) {
            continue;
        }
        let subcommands = match table.lookup(&args) {
            Some((_, info)) if args.len() == 1 && policy.is_renamed(args[0].as_bytes()) => {
                &info.subcommands
            }
            _ => {
                rules.push(rule);
                continue;
            }
        };
        // (Not those the policy refuses by themselves: `CONFIG|SET` disabled stays denied.)
        let mut again: Vec<String> = subcommands
            .iter()
            .filter(|(name, info)| {
                let sub = name.split('|').nth(1).unwrap_or_default();
                !info.script_callable()
                    && !policy.refuses_subcommand(args[0].as_bytes(), sub.as_bytes())
                    && user.is_none_or(|u| u.check(&[args[0], sub]).is_ok())
            })
            .map(|(name, _)| format!("+{name}"))
            .collect();
        again.sort();
        rules.push(rule);
        rules.extend(again);
    }
    rules
}

/// A backend user named `name` with these rules, on, and a password derived from the upstream
/// one (HMAC-SHA256), so that every cachegate with the same configuration provisions the same
/// user and no new secret is stored.
pub(super) fn provisioned_user(
    name: String,
    up: &UpstreamConfig,
    extra_rules: Vec<String>,
) -> BackendUser {
    let key_material = up.password.as_ref().map_or("", |p| p.expose());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_material.as_bytes());
    let tag = ring::hmac::sign(&key, format!("cachegate backend user {name}").as_bytes());
    let password: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    let digest: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut rules = vec!["reset".to_string(), "on".into(), format!("#{digest}")];
    rules.extend(extra_rules);
    BackendUser {
        name,
        password: Password::new(password),
        rules,
    }
}

pub(super) fn commands(
    p: &mut Problems,
    key: &str,
    c: CommandsFile,
    memcached: bool,
) -> Option<Policy> {
    let rename: Vec<(String, String)> = c.rename.into_iter().collect();
    // A new name must not be a command already: `FLUSHALL = "hello"` would make every
    // client's HELLO on connect empty the cache (Redis's rename-command refuses it too).
    let before = p.list.len();
    for (real, alias) in &rename {
        let taken = if memcached {
            crate::protocol::memcached::is_command(alias.as_bytes())
        } else {
            crate::auth::commands::table()
                .commands
                .contains_key(&alias.to_ascii_lowercase())
        };
        if taken {
            p.add(
                format!("{key}.rename.{real}"),
                format!("new name `{alias}` is an existing command: clients would run `{real}` when they mean `{alias}`; pick an unused name"),
            );
        }
    }
    if p.list.len() > before {
        return None;
    }
    match Policy::new(&c.disable, &rename) {
        Ok(policy) => Some(policy),
        Err(errs) => {
            for e in errs {
                p.add(format!("{key}.{}", e.key()), e.to_string());
            }
            None
        }
    }
}

/// `[[users]]` and `[user_groups]`: every rule string parsed (errors name the user and the
/// token), every group resolved and holding a `default` user.
pub(super) fn user_groups(
    p: &mut Problems,
    users: Vec<crate::config::file::UserFile>,
    groups: BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Arc<UserGroup>> {
    let mut parsed: Vec<Arc<User>> = Vec::new();
    for (i, u) in users.into_iter().enumerate() {
        let key = format!("users[{i}]");
        let Some(name) = u.name.filter(|n| !n.is_empty()) else {
            p.add(format!("{key}.name"), "missing");
            continue;
        };
        if name.contains(char::is_whitespace) {
            p.add(format!("{key}.name"), "may not contain spaces");
            continue;
        }
        if parsed.iter().any(|x| x.name == name) {
            p.add(
                format!("{key}.name"),
                format!("user `{name}` is defined twice"),
            );
            continue;
        }
        match User::parse(&name, u.acl.as_deref().unwrap_or("")) {
            Ok(mut user) => {
                user.cert_required = u.cert_required.unwrap_or(false);
                parsed.push(Arc::new(user))
            }
            Err(e) => p.add(format!("{key}.acl"), format!("user `{name}`: {e}")),
        }
    }
    let mut out = BTreeMap::new();
    for (group, names) in groups {
        let key = format!("user_groups.{group}");
        let mut members = Vec::new();
        for n in &names {
            match parsed.iter().find(|u| &u.name == n) {
                Some(u) => members.push(u.clone()),
                None => p.add(&key, format!("no [[users]] entry named `{n}`")),
            }
        }
        if !names.iter().any(|n| n == "default") {
            p.add(
                &key,
                "every user group needs a `default` user (it is who AUTH <password> logs in as); give it `off` to disable it",
            );
        }
        out.insert(
            group.clone(),
            Arc::new(UserGroup {
                name: group,
                users: members,
            }),
        );
    }
    out
}

pub(super) fn cert_users(
    p: &mut Problems,
    key: &str,
    entries: Vec<crate::config::file::CertUserFile>,
) -> Vec<CertMapping> {
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let key = format!("{key}[{i}]");
        let names: Vec<(NameKind, String)> = [
            (NameKind::Cn, e.cn),
            (NameKind::Dns, e.dns),
            (NameKind::Uri, e.uri),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let Some(user) = e.user else {
            p.add(
                format!("{key}.user"),
                "missing: which user does this certificate log in as?",
            );
            continue;
        };
        match names.as_slice() {
            [(kind, value)] => out.push(CertMapping {
                kind: *kind,
                value: value.clone(),
                user,
            }),
            _ => p.add(&key, "give exactly one of `cn`, `dns`, `uri`"),
        }
    }
    out
}
