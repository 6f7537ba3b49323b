//! The RESP request parser under arbitrary bytes, with small limits: it never panics, never
//! loses an incomplete request, every accepted request respects the limits, and an accepted
//! multibulk is byte for byte the canonical encoding of its arguments (it is forwarded as is).
#![no_main]

use bytes::BytesMut;
use cachegate::protocol::reply::encode_command;
use cachegate::protocol::resp::{next_request, RequestLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits {
        max_inline: 64,
        max_bulk: 32,
        max_multibulk: 8,
    };
    let authenticated = data.first().is_some_and(|b| b & 1 == 1);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match next_request(&mut buf, &limits, authenticated) {
            Ok(Some(request)) => {
                assert!(buf.len() < before, "a request consumed nothing");
                assert!(!request.args.is_empty());
                if let Some(raw) = &request.raw {
                    assert!(request.args.len() <= limits.max_multibulk);
                    assert!(request.args.iter().all(|a| a.len() <= limits.max_bulk));
                    let mut canonical = BytesMut::new();
                    encode_command(&mut canonical, request.args.iter().map(|a| &a[..]));
                    assert_eq!(
                        &raw[..],
                        &canonical[..],
                        "forwarded bytes are not canonical"
                    );
                }
            }
            Ok(None) => {
                // Empty commands may have been skipped; what is left is an incomplete request,
                // which asking again without new bytes leaves alone.
                let left = buf.len();
                assert_eq!(next_request(&mut buf, &limits, authenticated), Ok(None));
                assert_eq!(buf.len(), left, "incomplete input was consumed");
                break;
            }
            Err(_) => break,
        }
    }
});
