//! The memcached request parser under arbitrary bytes, with small limits: never panics, always
//! makes progress, and accepted requests respect the limits.
#![no_main]

use bytes::BytesMut;
use cachegate::policy::Policy;
use cachegate::protocol::memcached::{McLimits, Parsed, Parser};
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
            }
            Some(Parsed::Fatal(_)) => break,
            Some(Parsed::Reply(_)) => {}
        }
        assert!(buf.len() <= before);
    }
});
