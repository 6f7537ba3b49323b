//! Upstream reply delimiting under arbitrary bytes: never panics, the incremental scanner
//! agrees with delimiting the whole buffer at once whatever the chunking, and nesting a frame
//! up to 10,000 deep changes nothing but its length (no recursion, no stack to run out of).
#![no_main]

use cachegate::protocol::resp::{next_reply_len, ReplyKind, ReplyScanner};
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

    // The first frame, wrapped in arrays, sets or pushes as deep as the first byte says.
    if let Ok(Some((len, kind))) = next_reply_len(input, MAX) {
        let depth = usize::from(cut) * 40;
        let open: &[u8] = match cut % 3 {
            0 => b"*1\r\n",
            1 => b"~1\r\n",
            _ => b">1\r\n",
        };
        let mut nested = open.repeat(depth);
        nested.extend_from_slice(&input[..len]);
        let got = next_reply_len(&nested, usize::MAX).expect("a frame nested in arrays");
        let want_kind = match (depth, cut % 3) {
            (0, _) => kind,
            (_, 2) => ReplyKind::Push,
            _ => ReplyKind::Other,
        };
        assert_eq!(got, Some((nested.len(), want_kind)));
    }
});
