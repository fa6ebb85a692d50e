//! portpool: run a pool of long-lived worker processes (Python first) from
//! Rust over length-prefixed MessagePack frames.

pub use portpool_protocol as protocol;
