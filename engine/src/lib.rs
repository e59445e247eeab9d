//! snapsync: authoritative game-state sync over UDP.
//!
//! The server streams unordered, sequence-numbered snapshots to its clients; a lost snapshot
//! is replaced by the next one instead of being resent. Messages that must arrive travel on
//! optional reliable channels. The protocol core is sans-IO: it never opens a socket and never
//! reads the clock, so every behaviour can be tested with virtual time and a seeded
//! [`conditioner`]. [`net`] is the thin tokio driver that puts it on a real socket.
#![warn(missing_docs, unreachable_pub)]

pub mod channel;
pub mod codec;
pub mod conditioner;
mod sequence;
pub mod snapshot;

pub use sequence::{Sequence, SequenceBuffer};
