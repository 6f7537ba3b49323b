//! Secrets from outside the configuration file: `"${ENV_VAR}"` in place of a token or
//! password, or a `..._file` key naming a file that holds it (Kubernetes and Docker secrets:
//! `/run/secrets/...`). Resolved before the configuration is built, so everything downstream
//! sees plain values; where each came from is kept (never the value) for `cachegate check`.
//!
//! Covered: `auth.tokens[i]` and `auth.tokens_file` (one token a line), `upstream.password` and
//! `upstream.password_file`, a user's `>${VAR}` password rules and `password_file`.

use std::path::Path;

use super::file::FileConfig;
use super::Problem;

/// Where one secret came from, for `cachegate check`: its key and a description without the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    pub key: String,
    pub from: String,
}

/// Replaces `${VAR}` references and `..._file` keys by their values, reporting every problem
/// (unset variable, unreadable or empty file) with its key.
pub fn resolve(
    file: &mut FileConfig,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<SecretSource> {
    let mut sources = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem::new(key, message));
    for (i, l) in file.listeners.iter_mut().enumerate() {
        let key = format!("listeners[{i}].auth.tokens");
        for (j, token) in l.auth.tokens.iter_mut().enumerate() {
            match expand(token) {
                Ok(Some((value, var))) => {
                    *token = value;
                    sources.push(SecretSource {
                        key: format!("{key}[{j}]"),
                        from: format!("environment variable {var}"),
                    });
                }
                Ok(None) => sources.push(SecretSource {
                    key: format!("{key}[{j}]"),
                    from: "the configuration file".into(),
                }),
                Err(e) => problem(format!("{key}[{j}]"), e),
            }
        }
        if let Some(path) = l.auth.tokens_file.take() {
            let fkey = format!("listeners[{i}].auth.tokens_file");
            match read(base, &path) {
                Ok(text) => {
                    for (n, line) in text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .enumerate()
                    {
                        l.auth.tokens.push(line.to_string());
                        sources.push(SecretSource {
                            key: format!("{key}[{}]", l.auth.tokens.len() - 1),
                            from: format!("file {} (line {})", path.display(), n + 1),
                        });
                    }
                }
                Err(e) => problem(fkey, e),
            }
        }
        if let Some(up) = l.upstream.as_mut() {
            let pkey = format!("listeners[{i}].upstream.password");
            if let Some(password) = up.password.as_mut() {
                match expand(password) {
                    Ok(Some((value, var))) => {
                        *password = value;
                        sources.push(SecretSource {
                            key: pkey.clone(),
                            from: format!("environment variable {var}"),
                        });
                    }
                    Ok(None) => sources.push(SecretSource {
                        key: pkey.clone(),
                        from: "the configuration file".into(),
                    }),
                    Err(e) => problem(pkey.clone(), e),
                }
            }
            if let Some(path) = up.password_file.take() {
                if up.password.is_some() {
                    problem(
                        format!("{pkey}_file"),
                        "give the password or a file holding it, not both".into(),
                    );
                } else {
                    match read(base, &path) {
                        Ok(text) => {
                            up.password = Some(text.trim_end_matches(['\r', '\n']).to_string());
                            sources.push(SecretSource {
                                key: pkey,
                                from: format!("file {}", path.display()),
                            });
                        }
                        Err(e) => problem(format!("{pkey}_file"), e),
                    }
                }
            }
        }
    }
    for (i, u) in file.users.iter_mut().enumerate() {
        let key = format!("users[{i}]");
        if let Some(acl) = u.acl.as_mut() {
            let mut rules = Vec::new();
            for rule in acl.split_whitespace() {
                match rule.strip_prefix('>').map(expand) {
                    Some(Ok(Some((value, var)))) if value.contains(char::is_whitespace) => {
                        problem(
                            format!("{key}.acl"),
                            no_whitespace(&format!("variable {var}")),
                        );
                    }
                    Some(Ok(Some((value, var)))) => {
                        rules.push(format!(">{value}"));
                        sources.push(SecretSource {
                            key: format!("{key}.acl"),
                            from: format!("environment variable {var}"),
                        });
                    }
                    Some(Err(e)) => {
                        problem(format!("{key}.acl"), e);
                        rules.push(rule.to_string());
                    }
                    _ => rules.push(rule.to_string()),
                }
            }
            *acl = rules.join(" ");
        }
        if let Some(path) = u.password_file.take() {
            match read(base, &path) {
                Ok(text)
                    if text
                        .trim_end_matches(['\r', '\n'])
                        .contains(char::is_whitespace) =>
                {
                    problem(
                        format!("{key}.password_file"),
                        no_whitespace(&format!("file {}", path.display())),
                    );
                }
                Ok(text) => {
                    let password = text.trim_end_matches(['\r', '\n']);
                    let acl = u.acl.get_or_insert_with(String::new);
                    acl.push_str(&format!(" >{password}"));
                    sources.push(SecretSource {
                        key: format!("{key}.password_file"),
                        from: format!("file {}", path.display()),
                    });
                }
                Err(e) => problem(format!("{key}.password_file"), e),
            }
        }
    }
    sources
}

/// `${NAME}` alone: the variable's value and its name; anything else is a literal (`None`).
fn expand(value: &str) -> Result<Option<(String, String)>, String> {
    let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(None);
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "`${{{name}}}` is not an environment variable reference"
        ));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some((v, name.to_string()))),
        Ok(_) => Err(format!("environment variable {name} is empty")),
        Err(_) => Err(format!("environment variable {name} is not set")),
    }
}

fn read(base: &Path, path: &Path) -> Result<String, String> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    super::note_file(&full);
    let text = std::fs::read_to_string(&full)
        .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{} is empty", full.display()));
    }
    Ok(text)
}

/// A user's password from a file or the environment goes into an ACL rule string, which is
/// split at whitespace: a space would turn the rest of the password into rules.
fn no_whitespace(source: &str) -> String {
    format!("the password from {source} holds whitespace, which a password in ACL rules cannot (the rest would be read as rules)")
}
