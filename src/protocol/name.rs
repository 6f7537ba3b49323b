//! A command name folded to lower case once per request, on the stack: the policy, the
//! command table, the session's classification and the metric label all read the same copy.

/// Names longer than this are in no table and no policy (the policy refuses to configure them).
pub const MAX_NAME: usize = 64;

/// `word` lower-cased into `buf`, or `None` when it is longer than any name cachegate knows.
pub fn fold<'b>(word: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..word.len())?;
    out.copy_from_slice(word);
    out.make_ascii_lowercase();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_ascii_only_and_refuses_what_no_table_holds() {
        let mut buf = [0u8; MAX_NAME];
        assert_eq!(fold(b"GeT", &mut buf), Some(&b"get"[..]));
        assert_eq!(fold("ÉVAL".as_bytes(), &mut buf), Some("Éval".as_bytes()));
        assert_eq!(
            fold(&[b'A'; MAX_NAME], &mut buf),
            Some(&[b'a'; MAX_NAME][..])
        );
        assert_eq!(fold(&[b'A'; MAX_NAME + 1], &mut buf), None);
        assert_eq!(fold(b"", &mut buf), Some(&b""[..]));
    }
}
