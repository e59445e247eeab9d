//! What the replication layer says inside the connection's payloads.
//!
//! - Server → client, control channel (reliable-ordered, after the game's channels):
//!   [`ControlMsg`] encoded with [`crate::codec`] — the welcome, owner changes, and in
//!   [`SnapshotDelivery::ReliableOrdered`](super::SnapshotDelivery) mode the parts.
//! - Server → client datagram: a snapshot part behind a one-varint prefix (LEB128): 0 when
//!   no input is acknowledged, else `zigzag(tick − input_ack) + 1`, the acknowledged
//!   [`InputTick`] relative to the part's own tick (a few ticks apart, so usually one byte);
//!   then the part (`snapshot/part.rs`).
//! - Client → server, control channel: [`ClientControl`].
//! - Client → server datagram: [`InputFrame`] encoded with [`crate::codec`].
//!
//! Every decode here takes untrusted bytes and fails cleanly.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::InputTick;
use crate::snapshot::QuantizeConfig;

/// Most bytes the part prefix can take: a varint of up to 34 bits.
pub(crate) const PART_PREFIX_MAX_BYTES: usize = 5;
/// Most inputs one input frame may carry; the decoder refuses more.
pub(crate) const MAX_INPUTS_PER_FRAME: usize = 64;

/// Server → client on the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    /// The first message of every session.
    Welcome(WelcomeWire),
    /// The entity this client owns changed.
    Owned(Option<u32>),
    /// A snapshot part, in reliable-ordered delivery mode.
    Part {
        /// As in the datagram prefix.
        input_ack: Option<InputTick>,
        /// The part.
        bytes: Vec<u8>,
    },
}

/// Client → server on the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ClientControl {
    /// The welcome was taken: snapshots may start.
    Ready,
}

/// Client → server datagram: the unacknowledged inputs, oldest first, numbered from
/// `first_tick` up, and whether the client needs a full snapshot.
///
/// Each input is a slice of the bytes it was read from (decoded with
/// [`codec::decode_borrowed`](crate::codec::decode_borrowed)): every input is resent until
/// acknowledged, so the server already has most of those it reads, and copies only the new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputFrame<'a> {
    pub(crate) resync: bool,
    pub(crate) first_tick: InputTick,
    #[serde(borrow)]
    pub(crate) inputs: InputList<'a>,
}

/// An input frame's inputs as read: at most [`MAX_INPUTS_PER_FRAME`] slices of the
/// datagram, held in place. A server reads an input frame from every player every tick; a
/// list on the heap for each would be as many allocations. On the wire a sequence of byte
/// strings, as a `Vec<&[u8]>` is; a frame that claims more inputs is refused as it is read.
#[derive(Clone, Copy)]
pub(crate) struct InputList<'a> {
    inputs: [&'a [u8]; MAX_INPUTS_PER_FRAME],
    len: usize,
}

impl<'a> InputList<'a> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.inputs[..self.len].iter().copied()
    }
}

impl std::fmt::Debug for InputList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for InputList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for InputList<'_> {}

impl Serialize for InputList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for InputList<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Inputs;
        impl<'de> serde::de::Visitor<'de> for Inputs {
            type Value = InputList<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_INPUTS_PER_FRAME} byte strings")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = InputList {
                    inputs: [&[]; MAX_INPUTS_PER_FRAME],
                    len: 0,
                };
                while let Some(input) = seq.next_element::<&'de [u8]>()? {
                    let Some(slot) = list.inputs.get_mut(list.len) else {
                        return Err(serde::de::Error::invalid_length(list.len + 1, &self));
                    };
                    *slot = input;
                    list.len += 1;
                }
                Ok(list)
            }
        }
        d.deserialize_seq(Inputs)
    }
}

#[cfg(test)]
impl<'a> FromIterator<&'a [u8]> for InputList<'a> {
    /// # Panics
    /// Past [`MAX_INPUTS_PER_FRAME`] inputs (a test's mistake).
    fn from_iter<T: IntoIterator<Item = &'a [u8]>>(iter: T) -> Self {
        let mut list = InputList {
            inputs: [&[]; MAX_INPUTS_PER_FRAME],
            len: 0,
        };
        for input in iter {
            list.inputs[list.len] = input;
            list.len += 1;
        }
        list
    }
}

/// An [`InputFrame`] as a client writes it, the same bytes: its inputs, a sequence of byte
/// strings, are read from wherever the client keeps them instead of from a list made for
/// each packet.
#[derive(Debug, Serialize)]
#[serde(rename = "InputFrame")]
pub(crate) struct InputFrameOut<S> {
    pub(crate) resync: bool,
    pub(crate) first_tick: InputTick,
    pub(crate) inputs: S,
}

/// The welcome as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WelcomeWire {
    pub(crate) version: u16,
    pub(crate) client_id: u32,
    pub(crate) owned: Option<u32>,
    pub(crate) server_tick: u32,
    pub(crate) send_interval_ticks: u32,
    pub(crate) ring_ticks: u32,
    pub(crate) quantize: QuantizeWire,
    pub(crate) app: Vec<u8>,
}

/// [`QuantizeConfig`] as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuantizeWire {
    position_min: [f32; 3],
    position_max: [f32; 3],
    position_resolution_m: f32,
    rotation_bits: u32,
    max_speed_mps: f32,
    velocity_resolution_mps: f32,
    tick_interval_nanos: u64,
}

impl From<&QuantizeConfig> for QuantizeWire {
    fn from(q: &QuantizeConfig) -> Self {
        Self {
            position_min: q.position_min.to_array(),
            position_max: q.position_max.to_array(),
            position_resolution_m: q.position_resolution_m,
            rotation_bits: q.rotation_bits,
            max_speed_mps: q.max_speed_mps,
            velocity_resolution_mps: q.velocity_resolution_mps,
            // A tick interval above 584 years does not fit; validate() keeps it far below.
            tick_interval_nanos: u64::try_from(q.tick_interval.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

impl From<QuantizeWire> for QuantizeConfig {
    fn from(w: QuantizeWire) -> Self {
        Self {
            position_min: w.position_min.into(),
            position_max: w.position_max.into(),
            position_resolution_m: w.position_resolution_m,
            rotation_bits: w.rotation_bits,
            max_speed_mps: w.max_speed_mps,
            velocity_resolution_mps: w.velocity_resolution_mps,
            tick_interval: Duration::from_nanos(w.tick_interval_nanos),
        }
    }
}

/// Write the prefix of a part of `tick` into `out` (cleared first).
pub(crate) fn write_part_prefix(out: &mut Vec<u8>, tick: u32, input_ack: Option<InputTick>) {
    out.clear();
    let mut v: u64 = match input_ack {
        None => 0,
        Some(a) => {
            let d = i64::from(tick) - i64::from(a);
            // Zigzag: small distances either way stay small.
            (((d << 1) ^ (d >> 63)) as u64) + 1
        }
    };
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// Split a received datagram into the prefix's code and the part; [`input_ack`] turns the
/// code into the acknowledged input once the part's tick is known.
pub(crate) fn read_part_prefix(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut rest = bytes;
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        rest = tail;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            // 33 bits of zigzag distance plus one; anything above is malformed.
            return (value <= 1 << 33).then_some((value, rest));
        }
    }
    None
}

/// The input acknowledged by prefix `code` on a part of `tick`: `Ok(None)` for none, `Err`
/// when the code names an input outside the tick range.
pub(crate) fn input_ack(code: u64, tick: u32) -> Result<Option<InputTick>, ()> {
    if code == 0 {
        return Ok(None);
    }
    let z = code - 1;
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    let ack = i64::from(tick) - d;
    u32::try_from(ack).map(Some).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, CodecError, MAX_DECODE_BYTES};
    use std::collections::VecDeque;

    /// The frame as it was laid out when each input was its own vector: the bytes on the
    /// wire must not change with the borrowing.
    #[derive(Serialize)]
    struct OwnedFrame {
        resync: bool,
        first_tick: InputTick,
        inputs: Vec<Vec<u8>>,
    }

    #[test]
    fn an_input_frame_reads_its_inputs_in_place_with_the_same_bytes_on_the_wire() {
        let inputs: Vec<Vec<u8>> = vec![vec![], vec![7], (0..=255).collect(), vec![1; 300]];
        let owned = OwnedFrame {
            resync: true,
            first_tick: 41,
            inputs: inputs.clone(),
        };
        let frame = InputFrame {
            resync: true,
            first_tick: 41,
            inputs: inputs.iter().map(Vec::as_slice).collect(),
        };
        let bytes = codec::encode(&frame).unwrap();
        assert_eq!(bytes, codec::encode(&owned).unwrap());
        let written = InputFrameOut {
            resync: true,
            first_tick: 41,
            inputs: inputs.iter().map(Vec::as_slice).collect::<VecDeque<_>>(),
        };
        assert_eq!(bytes, codec::encode(&written).unwrap());
        let read: InputFrame<'_> = codec::decode_borrowed(&bytes).unwrap();
        assert_eq!(read, frame);
        // Each input points into the datagram: nothing was copied.
        let span = bytes.as_ptr_range();
        assert!(
            read.inputs
                .iter()
                .all(|i| span.contains(&i.as_ptr()) || i.is_empty())
        );

        // Junk is refused as before: a byte too many, every truncation, a length past the
        // limit.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            codec::decode_borrowed::<InputFrame<'_>>(&longer),
            Err(CodecError::TrailingBytes(1))
        ));
        for n in 0..bytes.len() {
            assert!(codec::decode_borrowed::<InputFrame<'_>>(&bytes[..n]).is_err());
        }
        let huge = OwnedFrame {
            resync: false,
            first_tick: 0,
            inputs: vec![vec![0; MAX_DECODE_BYTES + 1]],
        };
        let bytes = codec::encode(&huge).unwrap();
        assert!(matches!(
            codec::decode_borrowed::<InputFrame<'_>>(&bytes),
            Err(CodecError::TooLarge)
        ));
        // The most inputs a frame may carry are read in place; one more is refused as it is
        // read, before any list could grow past them.
        for n in [MAX_INPUTS_PER_FRAME, MAX_INPUTS_PER_FRAME + 1, 1_000] {
            let many = OwnedFrame {
                resync: false,
                first_tick: 7,
                inputs: (0..n).map(|i| vec![i as u8; i % 3]).collect(),
            };
            let bytes = codec::encode(&many).unwrap();
            match codec::decode_borrowed::<InputFrame<'_>>(&bytes) {
                Ok(read) => {
                    assert_eq!(n, MAX_INPUTS_PER_FRAME);
                    assert_eq!(read.inputs.len(), n);
                    assert!(read.inputs.iter().eq(many.inputs.iter().map(Vec::as_slice)));
                }
                Err(e) => {
                    assert!(n > MAX_INPUTS_PER_FRAME, "{n}: {e}");
                    assert!(matches!(e, CodecError::Decode(_)), "{e}");
                }
            }
        }
    }

    #[test]
    fn part_prefix_round_trips_and_refuses_junk() {
        let mut out = Vec::new();
        for (tick, ack) in [
            (5, None),
            (5, Some(5)),
            (100, Some(90)),
            (100, Some(110)),
            (0, Some(u32::MAX)),
            (u32::MAX, Some(0)),
        ] {
            write_part_prefix(&mut out, tick, ack);
            assert!(out.len() <= PART_PREFIX_MAX_BYTES);
            out.extend_from_slice(b"part");
            let (code, rest) = read_part_prefix(&out).unwrap();
            assert_eq!(rest, b"part");
            assert_eq!(input_ack(code, tick), Ok(ack));
        }
        write_part_prefix(&mut out, 1000, Some(994));
        assert_eq!(out.len(), 1, "a nearby input costs one byte");
        assert_eq!(read_part_prefix(&[]), None);
        assert_eq!(read_part_prefix(&[0x80]), None, "varint cut short");
        assert_eq!(
            read_part_prefix(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            None,
            "above 33 bits"
        );
        assert_eq!(
            read_part_prefix(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
        // Distance 10 back from tick 3 names a negative input: refused.
        write_part_prefix(&mut out, 13, Some(3));
        let (code, _) = read_part_prefix(&out).unwrap();
        assert_eq!(input_ack(code, 3), Err(()));
    }

    #[test]
    fn quantize_config_survives_the_wire() {
        let q = QuantizeConfig {
            position_min: glam::Vec3::new(-3.0, 0.0, -7.5),
            tick_interval: Duration::from_secs(1) / 30,
            ..QuantizeConfig::default()
        };
        assert_eq!(QuantizeConfig::from(QuantizeWire::from(&q)), q);
    }
}
