//! Secure mode: a sans-IO implementation of the netcode 1.02 protocol.
//!
//! A backend that authenticated a player mints a [`ConnectToken`] with
//! [`generate_connect_token`] and hands its 2048 bytes to the client over a secure channel.
//! The [`Client`] connects with it to a [`Server`] that shares the backend's private key; from
//! then on every packet is encrypted and authenticated, replays are dropped, and either side
//! times out after the token's timeout. Both ends carry raw payloads of 1 to 1200 bytes, and
//! speak the wire format of the netcode 1.02 standard byte for byte, so they interoperate with
//! other implementations of it.
//!
//! Like the rest of the crate this module does no I/O and reads no clock. Timers run on the
//! `now: Instant` of each call; token expiry is checked against unix time in seconds, which
//! the server takes as a separate argument of [`Server::handle_datagram`] (the two clocks
//! differ in kind: `Instant` never jumps, unix time is what the backend stamped the token
//! with). After every input, drain [`poll_transmit`](Server::poll_transmit) until `None`, then
//! [`poll_event`](Server::poll_event) until `None`, then ask
//! [`poll_timeout`](Server::poll_timeout) when to call `handle_timeout` next.
//!
//! Every dropped datagram is counted by reason ([`Dropped`], [`DropCounts`]); none panics.

mod client;
mod crypto;
mod packet;
mod replay;
mod server;
mod stats;
mod token;
mod wire;

#[cfg(test)]
mod interop;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use crate::connection::Transmit;
pub use client::{Client, ClientEvent, ClientState, ClientStats};
pub use crypto::generate_key;
pub use server::{
    ClientIndex, ConfigError, DisconnectReason, Server, ServerConfig, ServerEvent, ServerStats,
};
pub use stats::{DROP_REASONS, DropCounts, Dropped};
pub use token::{
    CONNECT_TOKEN_NONCE_BYTES, ConnectToken, PrivateConnectToken, TokenError, TokenSettings,
    generate_connect_token,
};

/// "NETCODE 1.02" and a terminating zero: the version info in tokens and associated data.
pub const VERSION_INFO: [u8; 13] = *b"NETCODE 1.02\0";
/// Bytes of a connect token as the client receives it.
pub const CONNECT_TOKEN_BYTES: usize = 2048;
/// Bytes of the encrypted private part of a connect token, tag included.
pub const CONNECT_TOKEN_PRIVATE_BYTES: usize = 1024;
/// Bytes of an encrypted challenge token, tag included.
pub const CHALLENGE_TOKEN_BYTES: usize = 300;
/// Bytes of a connection request, always.
pub const CONNECTION_REQUEST_BYTES: usize = 1078;
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of an AEAD tag.
pub const MAC_BYTES: usize = 16;
/// Bytes of the application's user data in a token.
pub const USER_DATA_BYTES: usize = 256;
/// Most server addresses in one token.
pub const MAX_SERVER_ADDRESSES: usize = 32;
/// Largest payload either side sends or accepts.
pub const MAX_PAYLOAD_BYTES: usize = 1200;
/// Largest datagram either side accepts; also the least buffer `poll_transmit` writes into.
/// (The largest it sends is a full payload packet: 1 + 8 + 1200 + 16 = 1225 bytes.)
pub const MAX_PACKET_BYTES: usize = 1300;
/// Smallest valid encrypted packet: prefix, one sequence byte, one body byte, tag.
pub const MIN_ENCRYPTED_PACKET_BYTES: usize = 18;
/// Sequences remembered per connection for replay protection.
pub const REPLAY_WINDOW_PACKETS: usize = 256;
/// Copies of a disconnect packet sent, so a goodbye survives loss.
pub const DISCONNECT_PACKETS: usize = 10;
/// Most client slots a server may have. The wire names a slot and the slot count as 32-bit
/// numbers; the reference server stops at 256. One server here holds a thousand players (its
/// slots, handshakes and token history are bounded by this, and each is indexed, so a request
/// or response costs the same at 1,024 slots as at one).
pub const MAX_CLIENTS: usize = 1024;
/// How often requests, responses and keep-alives go out while nothing else does (10 Hz).
pub const SEND_INTERVAL: Duration = Duration::from_millis(100);
/// The first sequence of the server's own packets (challenges, denials). They share the
/// token's server-to-client key with the connection's packets, whose sequences start at 0, so
/// the two ranges stay apart and no nonce is used twice under one key.
pub const GLOBAL_SEQUENCE_START: u64 = 1 << 63;

/// A 32-byte key.
pub type Key = [u8; KEY_BYTES];
/// The application's 256 bytes in a token.
pub type UserData = [u8; USER_DATA_BYTES];

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// No such client on this server.
    #[error("unknown client")]
    UnknownClient,
    /// Empty payloads are not allowed by the standard.
    #[error("empty payload")]
    EmptyPayload,
    /// Over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes exceeds 1200")]
    PayloadTooLarge(usize),
}

/// The token's timeout: `None` when negative (timeouts disabled).
fn token_timeout(timeout_seconds: i32) -> Option<Duration> {
    u64::try_from(timeout_seconds).ok().map(Duration::from_secs)
}
