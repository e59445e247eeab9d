//! The packet layer: header codec, acks with per-packet delivery notices, link estimates.

mod ack;
mod header;
mod stats;

pub use ack::{AckTracker, DeliveryNotice};
pub use header::{
    ConnectedHeader, DenyReason, DisconnectReasonCode, HANDSHAKE_PACKET_BYTES, HeaderError,
    MAX_PACKET_BYTES, PROTOCOL_ID, Packet, PacketKind,
};
pub use stats::{IP_UDP_HEADER_BYTES, LinkStats, RttEstimator};
