//! The connection layer: handshake, session salt, keep-alive, timeout, disconnect, and the
//! per-connection state every packet passes through.
//!
//! [`Server`] serves many clients on one socket; [`Client`] connects to one server. Both are
//! sans-IO: feed them datagrams and time, drain their outputs. After every input, drain in
//! this order: [`poll_transmit`](Server::poll_transmit) until `None`, then
//! [`poll_event`](Server::poll_event) until `None`, then ask
//! [`poll_timeout`](Server::poll_timeout) when to call `handle_timeout` next.

mod client;
mod cookie;
mod established;
mod outbox;
mod server;
mod table;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use client::{Client, ClientConfig, ClientSecurity, ClientState};
pub use established::{ConnectionStats, MAX_DATAGRAM_BYTES};
pub use server::{SecureServerConfig, Security, Server, ServerConfig, ServerStats};

use crate::Sequence;
use crate::packet::{DenyReason, DisconnectReasonCode, HeaderError};

/// How many copies of a `Disconnect` packet are sent, so one loss does not turn a clean
/// goodbye into a timeout.
pub const DISCONNECT_REDUNDANCY: usize = 3;

/// Identifies a client on a server for the lifetime of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// Settings shared by both ends of an established connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Silence after which the peer is considered gone. Default 5 s: several seconds of
    /// total loss on a real network (a Wi-Fi roam, a tunnel) should survive, while a crashed
    /// peer's slot is freed quickly enough for it to reconnect.
    pub timeout: Duration,
    /// Send a keep-alive when nothing else was sent for this long. Default 100 ms (10 Hz):
    /// acks keep flowing and RTT stays fresh even when the application is quiet.
    pub keepalive_interval: Duration,
    /// Message channels, identical on both sides.
    pub channels: crate::channel::ChannelsConfig,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_millis(100),
            channels: crate::channel::ChannelsConfig::default(),
        }
    }
}

/// Why a connection configuration was refused (when the endpoint is built, so nothing built
/// from a config can fail later on network input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The channels cannot be built.
    #[error("channels: {0}")]
    Channels(#[from] crate::channel::ConfigError),
    /// The secure mode's settings are unusable.
    #[error("secure mode: {0}")]
    Secure(#[from] crate::netcode::ConfigError),
    /// The connect token does not parse.
    #[error("connect token: {0}")]
    Token(#[from] crate::netcode::TokenError),
    /// Another setting is out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

impl ConnectionConfig {
    /// Check every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid("timeout must be above zero"));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.timeout {
            return Err(ConfigError::Invalid(
                "keep-alive interval must be above zero and below the timeout",
            ));
        }
        // Builds every channel's limits, or says what is wrong with them.
        self.channels.limits()?;
        Ok(())
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Nothing valid arrived from the peer within the timeout.
    TimedOut,
    /// The local application asked to disconnect.
    Requested,
    /// The peer said goodbye, for this reason.
    Peer(DisconnectReasonCode),
    /// The server refused the connection.
    Denied(DenyReason),
    /// The server never completed the handshake within the connect timeout.
    ConnectTimedOut,
    /// The same client address completed a new handshake; the old connection is replaced.
    Replaced,
    /// Secure mode: the connect token did not parse or expired.
    TokenRefused,
    /// The stream under the connection (a TCP stream or a WebSocket) closed: nothing more
    /// can arrive, so the connection ended at once rather than at its timeout.
    StreamClosed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => write!(f, "timed out"),
            Self::Requested => write!(f, "disconnected by request"),
            Self::Peer(DisconnectReasonCode::Requested) => write!(f, "peer disconnected"),
            Self::Peer(DisconnectReasonCode::ServerShutdown) => write!(f, "server shut down"),
            Self::Peer(DisconnectReasonCode::Kicked) => write!(f, "kicked by server"),
            Self::Peer(DisconnectReasonCode::Other(c)) => write!(f, "peer disconnected (code {c})"),
            Self::Denied(r) => write!(f, "connection denied: {r}"),
            Self::ConnectTimedOut => write!(f, "server did not answer within the connect timeout"),
            Self::Replaced => write!(f, "replaced by a new connection from the same address"),
            Self::TokenRefused => write!(f, "the connect token is invalid or expired"),
            Self::StreamClosed => write!(f, "the stream under the connection closed"),
        }
    }
}

/// Something that happened on a connection, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected {
        /// The id the server gave this client.
        client_id: ClientId,
    },
    /// The connection ended; no more events follow for it.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// An unreliable datagram from the peer (e.g. a snapshot part).
    Datagram {
        /// Sequence of the packet that carried it (newer is larger, wrapping).
        sequence: Sequence,
        /// Its bytes.
        payload: Vec<u8>,
        /// The `now` of the `handle_datagram` call that received it: the arrival time, to
        /// the resolution of the caller's receive loop rather than of its event loop.
        received_at: Instant,
    },
    /// A message on a channel.
    Message {
        /// Channel index.
        channel: u8,
        /// Its bytes.
        payload: Vec<u8>,
        /// When its last piece arrived (the `now` of that `handle_datagram`).
        received_at: Instant,
    },
    /// The fate of a packet that carried a datagram sent with `send_datagram`.
    Delivery {
        /// The sequence `send_datagram` returned.
        sequence: Sequence,
        /// Acked, or lost.
        acked: bool,
    },
}

/// Why a datagram from the network was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPacket {
    /// Not a valid packet of this protocol.
    #[error("malformed: {0}")]
    Malformed(#[from] HeaderError),
    /// Connected traffic with a salt other than the session's.
    #[error("wrong session salt")]
    WrongSalt,
    /// Connected traffic from an address with no connection.
    #[error("no connection for this address")]
    UnknownPeer,
    /// A sequence already received, or too old to tell from a replay.
    #[error("replayed or stale sequence")]
    Replay,
    /// A challenge response whose cookie was not made by this server for this address.
    #[error("forged cookie")]
    ForgedCookie,
    /// A challenge response whose cookie is too old.
    #[error("expired cookie")]
    ExpiredCookie,
    /// A packet kind this side never receives (e.g. a challenge sent to a server).
    #[error("unexpected packet kind")]
    UnexpectedKind,
    /// The payload's sections did not parse, or the channels refused its channel section
    /// (the packet's acks and datagram still count).
    #[error("malformed payload")]
    BadPayload,
    /// A datagram from an address other than the server (client side).
    #[error("datagram from a stranger")]
    Stranger,
}

/// A datagram to send: `len` bytes at the start of the caller's buffer, to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// How many bytes of the buffer to send.
    pub len: usize,
}

/// Why a send was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// No such client on this server.
    #[error("unknown client")]
    UnknownClient,
    /// A datagram larger than [`MAX_DATAGRAM_BYTES`].
    #[error("datagram of {0} bytes exceeds the maximum")]
    DatagramTooLarge(usize),
    /// The channel refused the message.
    #[error(transparent)]
    Channel(#[from] crate::channel::SendError),
}

#[cfg(test)]
mod secure_tests;
#[cfg(test)]
mod tests;
