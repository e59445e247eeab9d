//! Replication: the server and client a game uses, one layer above [`connection`],
//! [`channel`] and [`snapshot`], wiring them once.
//!
//! [`Server`] owns the connection endpoint and one [`SnapshotSender`] per client. Each tick
//! the game hands it the whole [`World`]; it quantizes it once, delta-encodes it per client
//! against the newest snapshot that client acknowledged, sends the parts, and turns the
//! packet layer's delivery notices into baselines. It also owns the rules a game should not
//! have to know: the welcome (quantization, tick rate, the client's id and owned entity, on
//! a reliable channel), readiness (no snapshot before the client can decode it), resync when
//! a client lacks a baseline, and inputs handed to the game exactly once, in tick order, at
//! most one tick's worth per tick.
//!
//! [`Client`] connects, takes its settings from the welcome, decodes snapshots, keeps the
//! interpolation buffer, estimates the server tick, sends inputs stamped with the tick they
//! are for (every input not yet acknowledged rides in every input packet, so a lost packet
//! loses no input), and predicts the entity it owns: it applies its inputs at once with the
//! game's step function, and on each snapshot rewinds to the server's state at the last
//! applied input and replays the rest. A misprediction is smoothed away instead of snapped.
//!
//! Both are sans-IO, with the same shape as every endpoint of this crate:
//! `handle_datagram`, `handle_timeout`, then drain `poll_transmit`, `poll_event`,
//! `poll_timeout`. [`crate::net`] runs them on a tokio socket; [`crate::sim`] in virtual time.
//!
//! [`connection`]: crate::connection
//! [`channel`]: crate::channel
//! [`snapshot`]: crate::snapshot
//! [`SnapshotSender`]: crate::snapshot::SnapshotSender
//! [`World`]: crate::snapshot::World

mod client;
mod config;
mod interest;
mod predict;
mod server;
pub(crate) mod wire;

#[cfg(test)]
mod scope_tests;
#[cfg(test)]
mod tests;

pub use client::{Client, ClientEvent, ClientStats, InputError, View, Welcome};
pub use config::{
    ClientConfig, ConfigError, MAX_SEND_INTERVAL_TICKS, PredictionConfig, ServerConfig,
    SnapshotDelivery,
};
pub use interest::{InterestConfig, RoomId};
pub use predict::StepFn;
pub use server::{ClientSummary, ReplicationStats, SHARE_MIN_VIEWERS, Server, ServerEvent};

use std::fmt;

use crate::connection::DisconnectReason;

/// Version of the replication layer's messages and of the snapshot parts they carry; a
/// client refuses a welcome of another, before any part is sent to it.
///
/// 2: snapshot parts code indices and deltas as Exp-Golomb codes with per-part orders.
pub const REPLICATION_VERSION: u16 = 2;

/// The number of a client input: the server tick the client produced it for. Inputs of one
/// client are numbered consecutively (a client that skips ticks skips numbers).
pub type InputTick = u32;

/// Why a replication session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The connection ended (timeout, goodbye, denial...).
    Connection(DisconnectReason),
    /// The server's welcome could not be used; the client disconnected.
    BadWelcome(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connection(r) => write!(f, "{r}"),
            Self::BadWelcome(why) => write!(f, "unusable welcome from the server: {why}"),
        }
    }
}
