//! Secrets: client AUTH tokens and the upstream password.
//!
//! Neither type implements `Display`, and their `Debug` prints only `<redacted>`, so a secret cannot
//! reach a log line, an error message or a metric label by accident. Tokens are kept only as
//! SHA-256 digests and compared in constant time: comparing fixed-size digests also hides the
//! candidate's length, which a plain constant-time slice compare would leak.

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

/// A client AUTH token, stored as its SHA-256 digest.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    pub fn new(plain: &str) -> Self {
        Self {
            digest: sha256(plain.as_bytes()),
        }
    }

    /// Constant-time check of a candidate against this token.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.digest.ct_eq(&sha256(candidate)).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The one or two tokens a listener accepts. Two are live during a rotation (ElastiCache's
/// ROTATE); removing the old one finishes it (SET).
#[derive(Clone, Debug)]
pub struct TokenSet {
    tokens: Vec<Token>,
}

impl TokenSet {
    /// The caller (config building) guarantees one or two tokens.
    pub fn new(tokens: Vec<Token>) -> Self {
        Self { tokens }
    }

    /// Which slot (1-based) the candidate matches, if any. Every slot is compared, so the time
    /// taken does not say which slot matched or how close a guess was.
    pub fn verify(&self, candidate: &[u8]) -> Option<usize> {
        let candidate = sha256(candidate);
        let mut found = None;
        for (i, token) in self.tokens.iter().enumerate() {
            if bool::from(token.digest.ct_eq(&candidate)) && found.is_none() {
                found = Some(i + 1);
            }
        }
        found
    }
}

/// A password cachegate itself sends upstream; the plaintext is needed, so it is kept, but
/// only `expose` hands it out.
#[derive(Clone)]
pub struct Password(Box<str>);

impl Password {
    pub fn new(plain: String) -> Self {
        Self(plain.into_boxed_str())
    }

    /// The plaintext, for the one place that writes it to the upstream socket.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_reports_the_matching_slot() {
        let set = TokenSet::new(vec![
            Token::new("old-token-0123456789"),
            Token::new("new-token-0123456789"),
        ]);
        assert_eq!(set.verify(b"old-token-0123456789"), Some(1));
        assert_eq!(set.verify(b"new-token-0123456789"), Some(2));
        assert_eq!(set.verify(b"new-token-012345678"), None);
        assert_eq!(set.verify(b""), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = Token::new("canary-secret-value");
        let p = Password::new("canary-secret-value".into());
        let shown = format!("{t:?} {p:?} {:?}", TokenSet::new(vec![t.clone()]));
        assert!(!shown.contains("canary"), "{shown}");
    }
}
