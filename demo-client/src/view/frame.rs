//! The binary frame the page draws: one stream's entities at one moment, top-down.
//!
//! Little-endian, 28 bytes of header and 12 per entity (read by `view.js`):
//!
//! ```text
//! 0   u8   FRAME_KIND
//! 1   u8   stream index (0: the server's truth, then one per transport)
//! 2   u16  flags: bit 0 an owned entity is set, bit 1 connected
//! 4   f64  when, in ms since the view started (one clock for every stream)
//! 12  f32  staleness in ms (clients), tick cost in ms (truth); NaN when unknown
//! 16  u32  newest tick held (clients), tick simulated (truth); u32::MAX when none
//! 20  u32  owned entity id, u32::MAX when none
//! 24  u32  entity count
//! 28  per entity: u16 id, i16 x, i16 y, i16 z (cm), i16 yaw (1/10000 rad),
//!     u8 half extent (cm, truth only), u8 zero
//! ```
//!
//! Centimetres in an i16 cover ±327 m, more than the quantizer's ±256 m box; entity ids
//! above u16::MAX (none in the demo's scenes) are left out.

use axum::body::Bytes;
use glam::{EulerRot, Quat, Vec3};

/// First byte of an entity frame (other kinds may follow; the page ignores unknown ones).
pub(crate) const FRAME_KIND: u8 = 1;
/// Bytes before the first entity.
pub(crate) const HEADER_BYTES: usize = 28;
/// Bytes per entity.
pub(crate) const ENTITY_BYTES: usize = 12;

const FLAG_OWNED: u16 = 1;
const FLAG_CONNECTED: u16 = 2;

/// One entity as drawn from above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Drawn {
    /// Entity id.
    pub(crate) id: u32,
    /// Position, metres.
    pub(crate) position: Vec3,
    /// Orientation.
    pub(crate) rotation: Quat,
    /// Half the edge, metres (0 when the stream does not know it).
    pub(crate) half_extent: f32,
}

/// The header fields of a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FrameHeader {
    /// Stream index.
    pub(crate) stream: u8,
    /// Milliseconds since the view started.
    pub(crate) t_ms: f64,
    /// Staleness (clients) or tick cost (truth), ms.
    pub(crate) figure_ms: Option<f32>,
    /// Newest tick held, or the tick simulated.
    pub(crate) tick: Option<u32>,
    /// The client's own entity.
    pub(crate) owned: Option<u32>,
    /// Whether the stream's client is connected (always true for the truth).
    pub(crate) connected: bool,
}

fn cm(v: f32) -> i16 {
    (v * 100.0)
        .round()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// Encode a frame.
pub(crate) fn encode(
    header: &FrameHeader,
    entities: impl ExactSizeIterator<Item = Drawn>,
) -> Bytes {
    let mut b = Vec::with_capacity(HEADER_BYTES + entities.len() * ENTITY_BYTES);
    b.push(FRAME_KIND);
    b.push(header.stream);
    let mut flags = 0u16;
    if header.owned.is_some() {
        flags |= FLAG_OWNED;
    }
    if header.connected {
        flags |= FLAG_CONNECTED;
    }
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&header.t_ms.to_le_bytes());
    b.extend_from_slice(&header.figure_ms.unwrap_or(f32::NAN).to_le_bytes());
    b.extend_from_slice(&header.tick.unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(&header.owned.unwrap_or(u32::MAX).to_le_bytes());
    let count_at = b.len();
    b.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    for e in entities {
        let Ok(id) = u16::try_from(e.id) else {
            continue;
        };
        let (yaw, _, _) = e.rotation.to_euler(EulerRot::YXZ);
        b.extend_from_slice(&id.to_le_bytes());
        for v in [e.position.x, e.position.y, e.position.z] {
            b.extend_from_slice(&cm(v).to_le_bytes());
        }
        let yaw = if yaw.is_finite() { yaw } else { 0.0 };
        b.extend_from_slice(&((yaw * 10_000.0).round() as i16).to_le_bytes());
        b.push((e.half_extent * 100.0).round().clamp(0.0, 255.0) as u8);
        b.push(0);
        count += 1;
    }
    b[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn i16_at(b: &[u8], at: usize) -> i16 {
        i16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn frame_layout_matches_the_page() {
        let header = FrameHeader {
            stream: 2,
            t_ms: 1234.5,
            figure_ms: Some(41.0),
            tick: Some(77),
            owned: Some(64),
            connected: true,
        };
        let entities = [
            Drawn {
                id: 64,
                position: Vec3::new(1.25, 0.5, -3.0),
                rotation: Quat::from_rotation_y(0.5),
                half_extent: 0.5,
            },
            // Beyond u16: left out, and the count says so.
            Drawn {
                id: 70_000,
                position: Vec3::ZERO,
                rotation: Quat::IDENTITY,
                half_extent: 0.0,
            },
            // Far outside the box: clamped, not wrapped.
            Drawn {
                id: 3,
                position: Vec3::new(1000.0, 0.0, -1000.0),
                rotation: Quat::IDENTITY,
                half_extent: 9.0,
            },
        ];
        let b = encode(&header, entities.into_iter());
        assert_eq!(b.len(), HEADER_BYTES + 2 * ENTITY_BYTES);
        assert_eq!(b[0], FRAME_KIND);
        assert_eq!(b[1], 2);
        assert_eq!(
            u16::from_le_bytes([b[2], b[3]]),
            FLAG_OWNED | FLAG_CONNECTED
        );
        assert_eq!(f64::from_le_bytes(b[4..12].try_into().unwrap()), 1234.5);
        assert_eq!(f32::from_le_bytes(b[12..16].try_into().unwrap()), 41.0);
        assert_eq!(u32_at(&b, 16), 77);
        assert_eq!(u32_at(&b, 20), 64);
        assert_eq!(u32_at(&b, 24), 2);
        let e = HEADER_BYTES;
        assert_eq!(u16::from_le_bytes([b[e], b[e + 1]]), 64);
        assert_eq!(i16_at(&b, e + 2), 125);
        assert_eq!(i16_at(&b, e + 4), 50);
        assert_eq!(i16_at(&b, e + 6), -300);
        assert_eq!(i16_at(&b, e + 8), 5000);
        assert_eq!(b[e + 10], 50);
        let e = HEADER_BYTES + ENTITY_BYTES;
        assert_eq!(i16_at(&b, e + 2), i16::MAX);
        assert_eq!(i16_at(&b, e + 6), i16::MIN);
        assert_eq!(b[e + 10], 255);
    }

    #[test]
    fn empty_frame_marks_unknowns() {
        let header = FrameHeader {
            stream: 0,
            t_ms: 0.0,
            figure_ms: None,
            tick: None,
            owned: None,
            connected: false,
        };
        let b = encode(&header, std::iter::empty());
        assert_eq!(b.len(), HEADER_BYTES);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0);
        assert!(f32::from_le_bytes(b[12..16].try_into().unwrap()).is_nan());
        assert_eq!(u32_at(&b, 16), u32::MAX);
        assert_eq!(u32_at(&b, 20), u32::MAX);
    }
}
