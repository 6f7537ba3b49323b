//! The memcached request parser under arbitrary bytes, with small limits: never panics, always
//! makes progress, and accepted requests respect the limits.
#![no_main]

use bytes::BytesMut;
use cachegate::policy::Policy;
use cachegate::protocol::memcached::{Cmd, McLimits, Parsed, Parser, MEMCACHED_LINE_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = McLimits {
        max_value: 32,
        max_line: 128,
        max_keys: 4,
    };
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::from(data);
    let policy = Policy::default();
    for _ in 0..data.len() + 1 {
        let before = buf.len();
        match parser.next(&mut buf, &policy) {
            None => break,
            Some(Parsed::Request(r)) => {
                assert!(r.keys().len() <= limits.max_keys);
                assert!(r.data.as_ref().is_none_or(|d| d.len() <= limits.max_value));
                // Forwarded lines fit memcached's line limit unless they are gets, and read
                // back as the same request: the node can frame them one way only.
                let mut out = BytesMut::new();
                r.encode(&mut out, None);
                let line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
                // (memcached's limit counts the `\r` before the `\n`.)
                assert!(line_end < MEMCACHED_LINE_LIMIT || r.cmd == Cmd::Get);
                let mut again = out.clone();
                match Parser::new(limits).next(&mut again, &policy) {
                    Some(Parsed::Request(back)) => {
                        assert_eq!(back.tokens, r.tokens);
                        assert_eq!(back.data, r.data);
                    }
                    other => panic!("{out:?} re-read as {other:?}"),
                }
            }
            Some(Parsed::Fatal(_) | Parsed::Close | Parsed::CrossProtocol) => break,
            Some(Parsed::Reply(_)) => {}
        }
        assert!(buf.len() <= before);
    }
});
