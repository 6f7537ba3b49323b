//! Login, for both protocols: who a connection is when it opens (its certificate's user, or
//! `default`), and the verdict on a set of credentials (Redis `AUTH` and `HELLO ... AUTH`).
//! Pure: the sessions carry the verdicts out (replies, throttling, metrics, security events).

use std::sync::Arc;

use super::acl::{User, UserGroup};
use super::secret::TokenSet;

/// How a listener's clients log in.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Every client is authenticated as `default` from the start.
    None,
    /// `AUTH <token>`, one of one or two tokens (two during a rotation).
    Tokens(TokenSet),
    /// Redis ACL users of one group, enforced by cachegate.
    Acl(Arc<UserGroup>),
}

/// Who a connection is before any credentials.
#[derive(Debug, Clone)]
pub enum Opening {
    /// No auth on the listener: authenticated, with no user's rules.
    Open,
    /// Logged in as this user: by its certificate, or as a `default` user that needs no
    /// password.
    As { user: Arc<User>, by_cert: bool },
    /// Not logged in: `NOAUTH` until credentials are given (memcached, which has no AUTH:
    /// nothing is served).
    Out,
}

/// Who a connection is when it opens, from the user its verified certificate maps to.
///
/// The certificate's user, when it is enabled. Otherwise `default`, when it is enabled, does
/// not require a certificate of its own, and can be had without credentials: `nopass` where
/// the protocol has AUTH (Redis), always where it has none (memcached, whose clients cannot
/// give one). On memcached a certificate mapped to a disabled user gets nobody rather than
/// `default`: a disabled user's client does not keep a way in.
pub fn opening(auth: &AuthMode, cert_user: Option<&Arc<User>>, has_auth: bool) -> Opening {
    if let Some(user) = cert_user {
        if user.enabled {
            return Opening::As {
                user: user.clone(),
                by_cert: true,
            };
        }
        if !has_auth {
            return Opening::Out;
        }
    }
    match auth {
        AuthMode::None => Opening::Open,
        AuthMode::Tokens(_) => Opening::Out,
        AuthMode::Acl(group) => match group.get(b"default") {
            Some(d) if d.enabled && !d.cert_required && (d.nopass || !has_auth) => Opening::As {
                user: d.clone(),
                by_cert: false,
            },
            _ => Opening::Out,
        },
    }
}

/// Whether a session logged in as `user` (by its certificate: `by_cert`) keeps it under a
/// new configuration: the user as now configured, or why not. It does not when the user was
/// removed or disabled, when it logged in by a certificate that now maps to another user or
/// none (`was_mapped_to`, `now_mapped`), or when the user now requires a certificate the
/// session did not log in with. A session with no user keeps none.
pub fn keeps(
    auth: &AuthMode,
    user: Option<&User>,
    by_cert: bool,
    was_mapped_to: Option<&str>,
    now_mapped: Option<&User>,
) -> Result<Option<Arc<User>>, &'static str> {
    let Some(user) = user else {
        return Ok(None);
    };
    let AuthMode::Acl(group) = auth else {
        return Err("its user was removed or disabled");
    };
    let Some(new) = group.get(user.name.as_bytes()).filter(|n| n.enabled) else {
        return Err("its user was removed or disabled");
    };
    if by_cert && was_mapped_to != now_mapped.map(|u| u.name.as_str()) {
        return Err("its certificate no longer maps to its user");
    }
    if new.cert_required && !by_cert {
        return Err("its user now requires a certificate it did not log in with");
    }
    Ok(Some(new.clone()))
}

/// The verdict on `AUTH [user] secret`.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Logged in: as an ACL user (`user`), or with a token (`user` is `None`, the name
    /// `default`). `slot` is which password or token matched (1-based; 0 for `nopass`).
    LoggedIn {
        user: Option<Arc<User>>,
        name: String,
        slot: usize,
    },
    /// Wrong credentials: a failure to count and throttle. `known` says whether `attempted` is
    /// a configured user name (safe as a metric label).
    Failed { attempted: String, known: bool },
    /// The listener has no auth: answered as Redis with a passwordless `default` answers.
    NoAuth(NoAuthAnswer),
}

/// Redis's answers to AUTH when `default` has no password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAuthAnswer {
    /// `AUTH <password>`: "AUTH called without any password configured".
    WithoutPassword,
    /// `AUTH default <anything>`: OK.
    Ok,
    /// `AUTH <other user> ...`: WRONGPASS.
    WrongPass,
}

/// Checks `AUTH [user] secret`. `cert_user` is who the connection's certificate maps to: a
/// user that requires a certificate logs in only over a connection whose certificate is
/// theirs. Passwords and tokens are compared in constant time.
pub fn check(
    auth: &AuthMode,
    cert_user: Option<&User>,
    user: Option<&[u8]>,
    secret: &[u8],
) -> Verdict {
    let named = user.unwrap_or(b"default");
    let attempted = || String::from_utf8_lossy(named).into_owned();
    match auth {
        AuthMode::Acl(group) => {
            let cert_ok =
                |u: &User| !u.cert_required || cert_user.is_some_and(|c| c.name == u.name);
            let found = group
                .get(named)
                .filter(|u| u.enabled && cert_ok(u))
                .and_then(|u| u.check_password(secret).map(|slot| (u, slot)));
            match found {
                Some((u, slot)) => Verdict::LoggedIn {
                    name: u.name.clone(),
                    user: Some(u.clone()),
                    slot,
                },
                None => Verdict::Failed {
                    attempted: attempted(),
                    known: group.get(named).is_some(),
                },
            }
        }
        AuthMode::None if user.is_none() => Verdict::NoAuth(NoAuthAnswer::WithoutPassword),
        AuthMode::None if named == b"default" => Verdict::NoAuth(NoAuthAnswer::Ok),
        AuthMode::None => Verdict::NoAuth(NoAuthAnswer::WrongPass),
        AuthMode::Tokens(tokens) => match tokens.verify(secret) {
            Some(slot) if named == b"default" => Verdict::LoggedIn {
                user: None,
                name: "default".into(),
                slot,
            },
            _ => Verdict::Failed {
                attempted: attempted(),
                known: named == b"default",
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::Token;

    fn user(name: &str, rules: &str, cert_required: bool) -> Arc<User> {
        let mut u = User::parse(name, rules).unwrap();
        u.cert_required = cert_required;
        Arc::new(u)
    }

    fn acl(users: Vec<Arc<User>>) -> AuthMode {
        AuthMode::Acl(Arc::new(UserGroup {
            name: "g".into(),
            users,
        }))
    }

    fn logged_in_as(v: &Verdict) -> Option<(&str, usize)> {
        match v {
            Verdict::LoggedIn { name, slot, .. } => Some((name.as_str(), *slot)),
            _ => None,
        }
    }

    fn opens_as(o: &Opening) -> Option<(&str, bool)> {
        match o {
            Opening::As { user, by_cert } => Some((user.name.as_str(), *by_cert)),
            _ => None,
        }
    }

    #[test]
    fn tokens_two_valid_during_a_rotation_and_only_as_default() {
        let auth = AuthMode::Tokens(TokenSet::new(vec![
            Token::new("old-token-0123456"),
            Token::new("new-token-0123456"),
        ]));
        let ok = check(&auth, None, None, b"old-token-0123456");
        assert_eq!(logged_in_as(&ok), Some(("default", 1)));
        let ok = check(&auth, None, Some(b"default"), b"new-token-0123456");
        assert_eq!(logged_in_as(&ok), Some(("default", 2)));
        match check(&auth, None, Some(b"admin"), b"new-token-0123456") {
            Verdict::Failed { attempted, known } => {
                assert_eq!(attempted, "admin");
                assert!(!known, "not a configured name: not a metric label");
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            check(&auth, None, None, b"wrong"),
            Verdict::Failed { known: true, .. }
        ));
        assert!(matches!(opening(&auth, None, true), Opening::Out));
    }

    #[test]
    fn acl_users_by_password_enabled_only_and_certificate_bound_where_required() {
        let app = user("app", "on >app-pass +@all ~*", false);
        let ops = user("ops", "on >ops-pass +@all ~*", true);
        let off = user("gone", "off >gone-pass +@all ~*", false);
        let auth = acl(vec![app.clone(), ops.clone(), off]);
        assert_eq!(
            logged_in_as(&check(&auth, None, Some(b"app"), b"app-pass")),
            Some(("app", 1))
        );
        assert!(matches!(
            check(&auth, None, Some(b"app"), b"ops-pass"),
            Verdict::Failed { known: true, .. }
        ));
        assert!(matches!(
            check(&auth, None, Some(b"gone"), b"gone-pass"),
            Verdict::Failed { known: true, .. }
        ));
        // A certificate-required user: its password alone is not enough, nor another's
        // certificate.
        assert!(matches!(
            check(&auth, None, Some(b"ops"), b"ops-pass"),
            Verdict::Failed { .. }
        ));
        assert!(matches!(
            check(&auth, Some(&app), Some(b"ops"), b"ops-pass"),
            Verdict::Failed { .. }
        ));
        assert_eq!(
            logged_in_as(&check(&auth, Some(&ops), Some(b"ops"), b"ops-pass")),
            Some(("ops", 1))
        );
        assert!(matches!(
            check(&auth, None, Some(b"nobody"), b"x"),
            Verdict::Failed { known: false, .. }
        ));
    }

    #[test]
    fn without_auth_answers_as_redis_does() {
        let auth = AuthMode::None;
        assert!(matches!(
            check(&auth, None, None, b"x"),
            Verdict::NoAuth(NoAuthAnswer::WithoutPassword)
        ));
        assert!(matches!(
            check(&auth, None, Some(b"default"), b"x"),
            Verdict::NoAuth(NoAuthAnswer::Ok)
        ));
        assert!(matches!(
            check(&auth, None, Some(b"other"), b"x"),
            Verdict::NoAuth(NoAuthAnswer::WrongPass)
        ));
        assert!(matches!(opening(&auth, None, true), Opening::Open));
    }

    #[test]
    fn a_connection_opens_as_its_certificate_s_user_else_a_free_default() {
        let app = user("app", "on >p +@all ~*", false);
        let disabled = user("old", "off >p +@all ~*", false);
        let nopass = user("default", "on nopass +@read ~*", false);
        let auth = acl(vec![app.clone(), disabled.clone(), nopass]);
        for has_auth in [true, false] {
            assert_eq!(
                opens_as(&opening(&auth, Some(&app), has_auth)),
                Some(("app", true))
            );
            assert_eq!(
                opens_as(&opening(&auth, None, has_auth)),
                Some(("default", false))
            );
        }
        // A disabled certificate user: Redis falls back to what any client gets; memcached
        // (no AUTH to fall back on) serves nobody.
        assert_eq!(
            opens_as(&opening(&auth, Some(&disabled), true)),
            Some(("default", false))
        );
        assert!(matches!(
            opening(&auth, Some(&disabled), false),
            Opening::Out
        ));
        // `default` with a password: Redis clients must AUTH; memcached clients cannot, and
        // get `default`.
        let auth = acl(vec![user("default", "on >p +@all ~*", false)]);
        assert!(matches!(opening(&auth, None, true), Opening::Out));
        assert_eq!(
            opens_as(&opening(&auth, None, false)),
            Some(("default", false))
        );
        // Off is off everywhere.
        let auth = acl(vec![user("default", "off nopass +@all ~*", false)]);
        assert!(matches!(opening(&auth, None, true), Opening::Out));
        assert!(matches!(opening(&auth, None, false), Opening::Out));
    }

    #[test]
    fn a_session_keeps_its_user_only_while_the_configuration_still_gives_it() {
        let app = user("app", "on >p +@all ~*", false);
        let before = acl(vec![app.clone()]);
        assert_eq!(
            keeps(&before, Some(&app), false, None, None)
                .unwrap()
                .unwrap()
                .name,
            "app"
        );
        assert!(keeps(&before, None, false, None, None).unwrap().is_none());
        let gone = acl(vec![]);
        assert!(keeps(&gone, Some(&app), false, None, None).is_err());
        let off = acl(vec![user("app", "off >p +@all ~*", false)]);
        assert!(keeps(&off, Some(&app), false, None, None).is_err());
        assert!(keeps(&AuthMode::None, Some(&app), false, None, None).is_err());
        // By certificate: only while the certificate still maps to it.
        assert!(keeps(&before, Some(&app), true, Some("app"), Some(&app)).is_ok());
        assert!(keeps(&before, Some(&app), true, Some("app"), None).is_err());
        // Made certificate-bound: only a session that logged in with the certificate.
        let bound = user("app", "on >p +@all ~*", true);
        let now = acl(vec![bound.clone()]);
        assert!(keeps(&now, Some(&app), false, None, None).is_err());
        assert!(keeps(&now, Some(&app), true, Some("app"), Some(&bound)).is_ok());
    }

    #[test]
    fn a_default_user_that_requires_a_certificate_is_never_had_without_one() {
        let auth = acl(vec![user("default", "on nopass +@all ~*", true)]);
        for has_auth in [true, false] {
            assert!(
                matches!(opening(&auth, None, has_auth), Opening::Out),
                "has_auth {has_auth}"
            );
        }
        let d = match &auth {
            AuthMode::Acl(g) => g.get(b"default").unwrap().clone(),
            _ => unreachable!(),
        };
        assert_eq!(
            opens_as(&opening(&auth, Some(&d), true)),
            Some(("default", true))
        );
    }
}
