//! Snapshot replication: the server's world reaches each client as small, unordered,
//! tick-numbered snapshots that are never resent.
//!
//! - [`QuantizedWorld::from_world`] turns the game's float [`World`] into integers once per
//!   tick ([`QuantizeConfig`]); both ends then agree bit for bit.
//! - One [`SnapshotSender`] per client encodes each tick against the newest tick that client
//!   has acknowledged in full (its baseline), under a byte budget ranked by a priority
//!   accumulator, split into parts that each fit one datagram and decode on their own.
//! - One [`SnapshotReceiver`] per client decodes parts against the baselines it holds and
//!   keeps the live view; an [`InterpolationBuffer`] turns received ticks into smooth
//!   render-time transforms.
//!
//! The wire format of a part is described in `docs/PROTOCOL.md` and at the top of `part.rs`.
//!
//! # Contract with the connection layer
//!
//! A tick becomes a baseline once every one of its packets is acknowledged, so an
//! acknowledged packet's part must have been handed to [`SnapshotReceiver::read_part`].
//!
//! ```
//! use std::time::Instant;
//! use snapsync::Sequence;
//! use snapsync::snapshot::*;
//!
//! let cfg = QuantizeConfig::default();
//! let mut sender = SnapshotSender::new(SenderConfig::default()).unwrap();
//! let mut receiver = SnapshotReceiver::new(ReceiverConfig::default()).unwrap();
//! let mut interp = InterpolationBuffer::new(InterpolationConfig::default());
//!
//! let mut world = World::new();
//! world.insert(EntityId(7), EntityState::new(Transform::default()));
//! // Once per tick on the server, shared by every client's sender.
//! let quantized = QuantizedWorld::from_world(&world, &cfg);
//! let now = Instant::now();
//! for (i, bytes) in sender.build(Tick(1), &quantized, 4000).unwrap().iter().enumerate() {
//!     let seq = Sequence(i as u16); // the packet sequence the part went out in
//!     sender.on_part_sent(Tick(1), i, seq);
//!     // ... the datagram crosses the network ...
//!     let info = receiver.read_part(now, bytes).unwrap();
//!     if info.applied {
//!         interp.push(now, info.tick, receiver.transforms());
//!     }
//!     // ... and the packet layer reports the ack.
//!     sender.on_delivery(seq, true);
//! }
//! assert_eq!(receiver.live_world(), quantized);
//! assert_eq!(sender.acked_baseline().unwrap().0, Tick(1));
//! let _draw = interp.sample(now);
//! ```

mod bits;
mod interpolation;
mod part;
mod priority;
mod quantize;
mod receiver;
mod sender;
pub(crate) mod shared;
pub(crate) mod tick_map;
mod world;

#[cfg(test)]
mod tests;

pub use bits::BitsError;
pub use interpolation::{InterpolationBuffer, InterpolationConfig, InterpolationStats};
pub(crate) use part::EncodeScratch;
pub use part::{FieldBits, MAX_PARTS_PER_SNAPSHOT};
pub(crate) use quantize::Limits;
pub use quantize::{
    MAX_AXIS_BITS, MAX_ROTATION_ERROR_RAD_9_BITS, QuantizeConfig, QuantizedRotation,
    QuantizedTransform,
};
pub use receiver::{
    DEFAULT_MAX_ENTITIES, DEFAULT_MAX_HELD_ENTITIES, PartInfo, ReceiverConfig, ReceiverStats,
    SnapshotReceiver,
};
pub(crate) use sender::{ClientWorld, Parts, PriorityWeights, SharedSnapshot, add_stats};
pub use sender::{SenderConfig, SenderStats, SnapshotSender};
pub(crate) use world::TickWorld;
pub use world::{
    EntityId, EntityState, QuantizeCache, QuantizedEntity, QuantizedWorld, Tick, Transform, World,
};

/// Why a snapshot part or a config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bit stream ended early or held an over-long varint.
    #[error("malformed part: {0}")]
    Bits(#[from] BitsError),
    /// A header field is impossible.
    #[error("bad part header: {0}")]
    BadHeader(&'static str),
    /// A count claims more entries than the part or the baseline can hold.
    #[error("count larger than the part can hold")]
    CountTooLarge,
    /// An entity index or id lies outside the baseline or the id space.
    #[error("entity index out of range")]
    IndexOutOfRange,
    /// A quantized value lies outside the configured range.
    #[error("quantized value out of range")]
    ValueOutOfRange,
    /// A spawn names an entity the baseline already holds.
    #[error("spawn of an entity the baseline already holds")]
    SpawnExists,
    /// One entity is both updated and despawned in the same part.
    #[error("entity both updated and despawned")]
    Conflict,
    /// Whole bytes were left after the last entity.
    #[error("trailing bytes after part")]
    TrailingBytes,
    /// The part was encoded against a tick this receiver does not hold.
    #[error("baseline tick {0} not held")]
    MissingBaseline(u32),
    /// The same part of the same tick arrived before.
    #[error("duplicate part")]
    Duplicate,
    /// Part header disagrees with earlier parts of its tick (baseline or part count).
    #[error("part disagrees with earlier parts of its tick")]
    Inconsistent,
    /// The part would take a snapshot or the live view beyond the receiver's
    /// [`ReceiverConfig::max_entities`].
    #[error("more entities than the receiver's limit")]
    TooManyEntities,
    /// The part's tick is too old to be of any use.
    #[error("tick {0} too old")]
    TooOld(u32),
    /// `build` was called with a tick not newer than the previous one.
    #[error("tick not newer than the last built")]
    TickNotNewer,
    /// A configuration value is unusable.
    #[error("invalid config: {0}")]
    Config(&'static str),
}
