//! Client authentication. Secrets (`secret`) never print and compare in constant time; the
//! per-session AUTH / HELLO AUTH state machine lives in `session`, which is where the commands
//! arrive.

pub mod acl;
pub mod cert;
pub mod commands;
pub mod login;
pub mod secret;
pub mod throttle;
