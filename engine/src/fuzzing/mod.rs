//! The fuzz targets' checks, shared by the cargo-fuzz targets in `fuzz/` and their
//! property-test twins in `engine/tests/fuzz_equivalents.rs`; not API.
//!
//! One function per target takes the fuzzer's bytes, drives the entry point the target names,
//! and panics exactly when a property the target checks fails. Here, unlike the rest of the
//! crate (see the panics policy on the front page), a panic is the point: it is the oracle
//! the fuzzer and the twins look for, so these functions belong in no program. The module is
//! public only so that both callers run one copy of each check; it is hidden from the docs
//! and may change in any release.
//!
//! The inputs are framed the same way for every target that reads a sequence ([`sections`]
//! and [`steps`] build them), so a twin's strategy encodes what the fuzzer would have fed.

mod backend;
mod channel_read;
mod input;
mod netcode_packet;
mod netcode_token;
mod packet_decode;
mod replication_client;
mod replication_datagram;
mod secure_server_datagram;
mod server_datagram;
mod sim_server;
mod snapshot_read;

pub use backend::{NETCODE_SERVER_ADDR, connect_token};
pub use channel_read::channel_read;
pub use input::{sections, steps};
pub use netcode_packet::netcode_packet;
pub use netcode_token::{netcode_token, netcode_token_stats};
pub use packet_decode::packet_decode;
pub use replication_client::{default_welcome, replication_client, replication_client_stats};
pub use replication_datagram::replication_datagram;
pub use secure_server_datagram::secure_server_datagram;
pub use server_datagram::server_datagram;
pub use snapshot_read::{snapshot_read, snapshot_read_stats};
