//! How many replies a command sent on the session's own connection gets, by Redis's rules, and
//! what CLIENT REPLY does to that count: decided with no I/O from the command, the protocol
//! version and the mode, so that the reply side counts exactly what the backend sends. A count
//! off by one hands every later reply to the wrong command.

use bytes::Bytes;

use crate::session::commands::Kind;

/// CLIENT REPLY's mode on the session's own connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyMode {
    On,
    Off,
    /// The next command's reply is dropped, then replies are on again.
    SkipNext,
}

/// What the backend answers a command with, and the mode after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    /// Replies the backend sends for it, before the mode applies (see `exempt`).
    pub replies: usize,
    /// CLIENT REPLY SKIP and ON: counted as they are, whatever the mode was; the mode they
    /// set applies from the next command.
    pub exempt: bool,
    pub mode: ReplyMode,
    /// RESP2 UNSUBSCRIBE, PUNSUBSCRIBE or SUNSUBSCRIBE without channels: answered once per
    /// subscription of that family (or once, saying there was none), a number the reply side
    /// knows when it gets there (`replies` counts 1 until then).
    pub answers_all: Option<Family>,
    /// RESP3 (un)subscriptions: the confirmations, pushes that are no replies but still come
    /// before the next command's reply.
    pub pushes: Option<Pushes>,
}

/// The confirmations a RESP3 (un)subscription gets as pushes. The reply side holds the
/// command's place until they have come, so that an answer cachegate makes itself (AUTH,
/// CLIENT ID) does not overtake them, as it could not on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pushes {
    /// The confirmation's kind, as Redis writes it (`subscribe`, `punsubscribe`, ...).
    pub verb: &'static [u8],
    /// How many; `None`: one per subscription of the family, or one naming none (an
    /// unsubscribe of all), known where it is answered.
    pub left: Option<usize>,
}

impl Pushes {
    fn of(name: &[u8], channels: usize) -> Option<Pushes> {
        const VERBS: [&[u8]; 6] = [
            b"subscribe",
            b"unsubscribe",
            b"psubscribe",
            b"punsubscribe",
            b"ssubscribe",
            b"sunsubscribe",
        ];
        let verb = VERBS.into_iter().find(|v| v.eq_ignore_ascii_case(name))?;
        Some(Pushes {
            verb,
            left: (channels > 0).then_some(channels),
        })
    }

    pub(super) fn family(&self) -> Option<Family> {
        Family::of(self.verb)
    }
}

/// A family of subscriptions, each left as a whole by an unsubscribe without channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Channels,
    Patterns,
    Shards,
}

impl Family {
    /// The family a (un)subscribe confirmation's kind counts in.
    pub(super) fn of(kind: &[u8]) -> Option<Family> {
        match kind {
            b"subscribe" | b"unsubscribe" => Some(Family::Channels),
            b"psubscribe" | b"punsubscribe" => Some(Family::Patterns),
            b"ssubscribe" | b"sunsubscribe" => Some(Family::Shards),
            _ => None,
        }
    }
}

/// The replies `args` (of `kind`) gets under `mode` on a RESP2 or RESP3 connection, inside
/// MULTI (`in_multi`) or not.
pub(super) fn count(
    kind: Kind,
    args: &[Bytes],
    resp3: bool,
    mode: ReplyMode,
    in_multi: bool,
) -> Counted {
    let mut counted = Counted {
        replies: 1,
        exempt: false,
        mode,
        answers_all: None,
        pushes: None,
    };
    if in_multi {
        // Queued (`+QUEUED`) or refused: one reply, whatever the command, and nothing changes
        // until EXEC (whose one reply holds theirs). cachegate refuses CLIENT REPLY inside
        // MULTI: Redis 7.0 then answers EXEC with a broken array.
        return counted;
    }
    match kind {
        // RESP3 confirms (un)subscriptions with pushes, which are no replies; RESP2 answers
        // once per channel named. SUBSCRIBE without a channel is an arity error: one reply.
        Kind::Subscribe | Kind::Unsubscribe => {
            let channels = args.len().saturating_sub(1);
            // Confirmations are pushes to Redis (a RESP2 array on a RESP2 connection): sent
            // whatever the mode, which the command still ends if it was SKIP. (An arity error
            // is a reply like any other.)
            if channels > 0 || kind == Kind::Unsubscribe {
                counted.exempt = true;
                counted.mode = under(mode, 0).1;
            }
            if !resp3 && channels == 0 && kind == Kind::Unsubscribe {
                counted.answers_all = Family::of(&args[0].to_ascii_lowercase());
            }
            if resp3 && (channels > 0 || kind == Kind::Unsubscribe) {
                counted.pushes = Pushes::of(&args[0], channels);
            }
            counted.replies = match (resp3, channels) {
                (_, 0) if kind == Kind::Subscribe => 1,
                (false, 0) => 1,
                (true, _) => 0,
                (false, n) => n,
            };
        }
        Kind::Client if args.len() == 3 && crate::auth::commands::is_word(&args[1], b"REPLY") => {
            let word = &args[2];
            if crate::auth::commands::is_word(word, b"OFF") {
                counted.mode = ReplyMode::Off;
                counted.replies = 0;
            } else if crate::auth::commands::is_word(word, b"SKIP") {
                // SKIP while OFF changes nothing (replies stay off).
                if mode != ReplyMode::Off {
                    counted.mode = ReplyMode::SkipNext;
                }
                counted.replies = 0;
                counted.exempt = true;
            } else if crate::auth::commands::is_word(word, b"ON") {
                counted.mode = ReplyMode::On;
                counted.exempt = true;
            }
            // Anything else is the backend's syntax error: one reply, under the mode.
        }
        _ => {}
    }
    counted
}

/// The replies a command the client awaits gets under `mode`, and the mode after it.
pub(super) fn under(mode: ReplyMode, replies: usize) -> (usize, ReplyMode) {
    match mode {
        ReplyMode::On => (replies, ReplyMode::On),
        ReplyMode::Off => (0, ReplyMode::Off),
        ReplyMode::SkipNext => (0, ReplyMode::On),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::commands::{classify, words as args};
    use ReplyMode::*;

    /// The replies the backend sends for `commands`, one count per command, as the session
    /// counts them.
    fn replies(resp3: bool, commands: &[&str]) -> Vec<usize> {
        let mut mode = On;
        let mut in_multi = false;
        commands
            .iter()
            .map(|words| {
                let args = args(words);
                let name = args[0].to_ascii_lowercase();
                let kind = classify(&name, &args);
                let c = count(kind, &args, resp3, mode, in_multi);
                in_multi = match kind {
                    Kind::Multi => true,
                    Kind::Exec | Kind::Discard => false,
                    _ => in_multi,
                };
                mode = c.mode;
                if c.exempt {
                    c.replies
                } else {
                    let (n, after) = under(mode, c.replies);
                    mode = after;
                    n
                }
            })
            .collect()
    }

    #[test]
    fn subscriptions_are_answered_per_channel_in_resp2_and_by_pushes_in_resp3() {
        let resp2 = |words| replies(false, &[words])[0];
        let resp3 = |words| replies(true, &[words])[0];
        assert_eq!(resp2("SUBSCRIBE a b c"), 3);
        assert_eq!(resp3("SUBSCRIBE a b c"), 0);
        assert_eq!(resp2("SSUBSCRIBE {a}"), 1);
        // Without a channel: the arity error, a reply in both protocols.
        assert_eq!(resp2("SUBSCRIBE"), 1);
        assert_eq!(resp3("PSUBSCRIBE"), 1);
        assert_eq!(resp2("PUNSUBSCRIBE p* q*"), 2);
        assert_eq!(resp3("UNSUBSCRIBE a"), 0);
        // Confirmations come whatever CLIENT REPLY says, and a SKIP ends with the command.
        assert_eq!(
            replies(false, &["CLIENT REPLY SKIP", "UNSUBSCRIBE a b", "GET k"]),
            [0, 2, 1]
        );
        assert_eq!(
            replies(false, &["CLIENT REPLY OFF", "PUNSUBSCRIBE p", "GET k"]),
            [0, 1, 0]
        );
        assert_eq!(replies(false, &["CLIENT REPLY OFF", "SUBSCRIBE"]), [0, 0]);
        // All of them: one answer per subscription, however many that is.
        let all = |name, resp3| count(Kind::Unsubscribe, &args(name), resp3, On, false);
        let (resp2, resp3) = (all("UNSUBSCRIBE", false), all("UNSUBSCRIBE", true));
        assert_eq!(
            (resp2.replies, resp2.answers_all),
            (1, Some(Family::Channels))
        );
        assert_eq!((resp3.replies, resp3.answers_all), (0, None));
        assert_eq!(
            all("punsubscribe", false).answers_all,
            Some(Family::Patterns)
        );
        assert_eq!(all("SUnsubscribe", false).answers_all, Some(Family::Shards));
        let one = count(Kind::Unsubscribe, &args("UNSUBSCRIBE a"), false, On, false);
        assert_eq!(one.answers_all, None);
        // RESP3's confirmations are pushes, awaited in the command's place: one per channel
        // named, or one per subscription of the family (known later) for all of them.
        let pushes = |words: &str, resp3, in_multi| {
            let args = args(words);
            let kind = classify(&args[0].to_ascii_lowercase(), &args);
            count(kind, &args, resp3, On, in_multi).pushes
        };
        let awaited = |verb: &'static [u8], left| Some(Pushes { verb, left });
        assert_eq!(
            pushes("SUBSCRIBE a b", true, false),
            awaited(b"subscribe", Some(2))
        );
        assert_eq!(
            pushes("sUnsubscribe {a}", true, false),
            awaited(b"sunsubscribe", Some(1))
        );
        assert_eq!(
            pushes("PUNSUBSCRIBE", true, false),
            awaited(b"punsubscribe", None)
        );
        assert_eq!(
            awaited(b"punsubscribe", None).unwrap().family(),
            Some(Family::Patterns)
        );
        // Not in RESP2 (replies there), nor for an arity error, nor queued in MULTI.
        assert_eq!(pushes("SUBSCRIBE a b", false, false), None);
        assert_eq!(pushes("SUBSCRIBE", true, false), None);
        assert_eq!(pushes("SUBSCRIBE a", true, true), None);
    }

    #[test]
    fn client_reply_counts_as_redis_sends() {
        // OFF: nothing, not even its own +OK, until ON, whose +OK comes.
        assert_eq!(
            replies(
                false,
                &[
                    "GET k",
                    "CLIENT REPLY OFF",
                    "GET k",
                    "GET k",
                    "CLIENT REPLY ON",
                    "GET k"
                ]
            ),
            [1, 0, 0, 0, 1, 1]
        );
        // SKIP: no +OK, and the next command's reply is dropped; then on again.
        assert_eq!(
            replies(true, &["CLIENT REPLY SKIP", "GET k", "GET k"]),
            [0, 0, 1]
        );
        // SKIP while OFF: replies stay off.
        assert_eq!(
            replies(
                false,
                &[
                    "client reply off",
                    "client reply skip",
                    "GET k",
                    "GET k",
                    "client reply on"
                ]
            ),
            [0, 0, 0, 0, 1]
        );
        // SKIP after SKIP: still only the next command's reply is dropped.
        assert_eq!(
            replies(
                false,
                &["CLIENT REPLY SKIP", "CLIENT REPLY SKIP", "GET k", "GET k"]
            ),
            [0, 0, 0, 1]
        );
        // Inside MULTI every command is one +QUEUED, and EXEC one reply (its array), in both
        // protocols: a subscription's confirmations come inside it.
        for resp3 in [false, true] {
            assert_eq!(
                replies(
                    resp3,
                    &[
                        "MULTI",
                        "SUBSCRIBE a b",
                        "UNSUBSCRIBE",
                        "GET k",
                        "EXEC",
                        "GET k"
                    ]
                ),
                [1, 1, 1, 1, 1, 1]
            );
        }
        // Anything else is the backend's syntax error, under the mode.
        assert_eq!(replies(false, &["CLIENT REPLY MAYBE", "GET k"]), [1, 1]);
        assert_eq!(
            replies(false, &["CLIENT REPLY OFF", "CLIENT REPLY MAYBE", "GET k"]),
            [0, 0, 0]
        );
    }
}
