//! snapsync: authoritative game-state sync over UDP.
//!
//! The server streams unordered, sequence-numbered snapshots to its clients; a lost snapshot
//! is replaced by the next one instead of being resent. Messages that must arrive travel on
//! optional reliable channels. The protocol core is sans-IO: it never opens a socket and never
//! reads the clock, so every behaviour can be tested with virtual time and a seeded
//! [`conditioner`]. [`net`] is the thin tokio driver that puts it on a real socket.
//!
//! # A game in one page
//!
//! A game touches [`replication::Server`] and [`replication::Client`] (on a socket:
//! [`net::ReplicationServer`] and [`net::ReplicationClient`]), fills a [`snapshot::World`]
//! each tick, and reads [`replication::ServerEvent`]s and [`replication::ClientEvent`]s.
//! `examples/minimal.rs` is the whole of it; the server's loop:
//!
//! ```no_run
//! # async fn serve(mut server: snapsync::net::ReplicationServer) -> std::io::Result<()> {
//! use snapsync::replication::ServerEvent;
//! use snapsync::snapshot::{EntityId, EntityState, Transform, World};
//! let mut world = World::new();
//! let period = server.endpoint().config().quantize.tick_interval;
//! let start = tokio::time::Instant::now();
//! for tick in 1u32.. {
//!     server.drive_until(start + period * tick).await?; // receive, time out, send
//!     let now = server.now();
//!     while let Some(event) = server.poll_event() {
//!         match event {
//!             ServerEvent::ClientJoined { client } => {
//!                 let avatar = EntityId(1000 + client.0);
//!                 world.insert(avatar, EntityState::new(Transform::default()));
//!                 server.endpoint_mut().set_owned_entity(client, Some(avatar));
//!             }
//!             ServerEvent::Input { client, bytes, .. } => { /* decode, step its avatar */ }
//!             _ => {}
//!         }
//!     }
//!     // ... simulate the rest of the world ...
//!     server.endpoint_mut().tick(now, &world); // welcome, snapshots, baselines: all here
//!     server.flush();
//! }
//! # Ok(()) }
//! ```
//!
//! and the client's frame: drive, read events, send the inputs that are due (predicted at
//! once when a step function is set with [`replication::Client::set_step`]), draw
//! [`replication::Client::view`]. The library owns the rest: the welcome that carries the
//! tick rate and quantization, readiness, parts on packet sequences, delivery notices into
//! baselines, resync, redundant inputs handed over exactly once in order, the server-tick
//! estimate, and reconciliation of the predicted entity.
//!
//! # Layers
//!
//! Top to bottom: [`replication`] (the server and client a game uses), [`snapshot`]
//! (quantized, delta-compressed world state), [`channel`] (reliable and unreliable
//! messages), [`packet`] (header, acks, delivery notices, estimates), [`connection`]
//! (handshake, keep-alive, timeout), [`conditioner`] (simulated bad networks); [`net`] and
//! [`sim`] drive any endpoint on a socket or in virtual time.
//!
//! # Panics
//!
//! Never on network input: every malformed, truncated, oversized, replayed or forged datagram
//! is dropped and counted. Configurations are checked when an endpoint is built (a `Result`
//! there), so nothing built from one can panic later. A panic means a broken internal
//! invariant, and is a bug.
#![warn(missing_docs, unreachable_pub)]

pub mod channel;
pub mod codec;
pub mod conditioner;
pub mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod net;
pub mod netcode;
pub mod packet;
mod prefetch;
pub mod replication;
mod sequence;
pub mod sim;
pub mod snapshot;
mod timers;

pub use connection::{
    Client, ClientConfig, ClientId, ClientState, ConnectionConfig, DisconnectReason, Event,
    SendError, Server, ServerConfig, Transmit,
};
pub use sequence::{Sequence, SequenceBuffer};

/// The glam this crate's public types use (`Vec3`, `Quat`): build transforms with it, so a
/// game on another glam version (Bevy's, say) converts at one place instead of failing to
/// compile.
pub use glam;
