//! Wire formats: `resp` frames requests and replies with limits; `reply` makes every reply the
//! proxy itself sends.

pub mod memcached;
pub mod name;
pub mod reply;
pub mod resp;
