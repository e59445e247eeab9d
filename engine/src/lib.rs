//! snapsync: authoritative game-state sync over UDP.
//!
//! The server streams unordered, sequence-numbered snapshots to its clients; a lost snapshot
//! is replaced by the next one instead of being resent. Messages that must arrive travel on
//! optional reliable channels. The protocol core is sans-IO: it never opens a socket and never
//! reads the clock, so every behaviour can be tested with virtual time and a seeded
//! [`conditioner`]. [`net`] is the thin tokio driver that puts it on a real socket.
//!
//! Layers, top to bottom: [`snapshot`] (quantized, delta-compressed world state),
//! [`channel`] (reliable and unreliable messages), [`packet`] (header, acks, delivery
//! notices, estimates), [`connection`] (handshake, keep-alive, timeout), [`conditioner`]
//! (simulated bad networks).
#![warn(missing_docs, unreachable_pub)]

pub mod channel;
pub mod codec;
pub mod conditioner;
pub mod connection;
pub mod net;
pub mod packet;
pub mod replication;
mod sequence;
pub mod sim;
pub mod snapshot;

pub use connection::{
    Client, ClientConfig, ClientId, ClientState, ConnectionConfig, DisconnectReason, Event,
    SendError, Server, ServerConfig, Transmit,
};
pub use sequence::{Sequence, SequenceBuffer};
