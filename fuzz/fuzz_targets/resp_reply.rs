//! Upstream reply delimiting under arbitrary bytes: never panics, and the incremental scanner
//! agrees with delimiting the whole buffer at once whatever the chunking.
#![no_main]

use cachegate::protocol::resp::{next_reply_len, ReplyScanner};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    // Whole buffer, one call per frame.
    let mut whole = Vec::new();
    let mut at = 0;
    let mut scanner = ReplyScanner::default();
    while let Ok(Some((len, _))) = scanner.next(&input[at..], MAX) {
        assert!(len > 0 && at + len <= input.len());
        whole.push(len);
        at += len;
    }
    // The same bytes fed in two pieces.
    let split = usize::from(cut).min(input.len());
    let mut pieces = Vec::new();
    let mut scanner = ReplyScanner::default();
    let mut buf = input[..split].to_vec();
    let mut fed = split;
    loop {
        match scanner.next(&buf, MAX) {
            Ok(Some((len, _))) => {
                pieces.push(len);
                buf.drain(..len);
            }
            Ok(None) if fed < input.len() => {
                buf.extend_from_slice(&input[fed..]);
                fed = input.len();
            }
            _ => break,
        }
    }
    assert_eq!(pieces, whole);
    let _ = next_reply_len(input, MAX);
});
