//! What the demo's server and clients say to each other, above the engine.
//!
//! Snapshot parts come from `snapsync::snapshot`; around them the demo adds a welcome
//! (so a client can turn ticks into server wall time for staleness) and bot inputs. All of
//! it is encoded through `snapsync::codec`; every decode is bounded and checked.

use serde::{Deserialize, Serialize};

use crate::scene::PlayerInput;

/// How many past inputs ride along with each new one, so one lost packet loses no input.
pub const INPUT_REDUNDANCY: usize = 4;

/// Channel the demo uses for reliable control messages (and, for `udp-reliable`, for the
/// snapshot parts themselves): the engine's default ReliableOrdered channel.
pub const RELIABLE_CHANNEL: u8 = 0;

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Sent once when a client joins.
    Welcome(Welcome),
    /// A snapshot part (on streams; on `udp` parts travel as bare datagrams).
    Part(Vec<u8>),
}

/// What a client needs to know about the server's clock and scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Simulation ticks per second.
    pub tick_rate: f64,
    /// Snapshots per second.
    pub send_rate: f64,
    /// Wall-clock time of tick 0, in microseconds since the UNIX epoch. Client and server
    /// on one host share the clock, so `now - (tick0 + tick / rate)` is the age of a state.
    pub tick0_unix_micros: u64,
    /// The entity this client's inputs move, if the scene has avatars.
    pub avatar: Option<u32>,
    /// Scene name (`arena` or `cubes`): both sides derive the quantization from it.
    pub scene: String,
}

/// Client → server: the newest input and the few before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputMsg {
    /// Number of the newest input in `inputs`; the others are `newest - 1`, `newest - 2`, ...
    pub newest: u32,
    /// Newest last; at most [`INPUT_REDUNDANCY`] + 1.
    pub inputs: Vec<PlayerInput>,
    /// The client could not decode a snapshot against the baseline the server chose (e.g.
    /// parts that arrived before the welcome): send the next snapshot in full.
    pub resync: bool,
}

impl InputMsg {
    /// Decode and check an input message from the network.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let msg: InputMsg = snapsync::codec::decode(bytes).ok()?;
        if msg.inputs.is_empty() || msg.inputs.len() > INPUT_REDUNDANCY + 1 {
            return None;
        }
        if msg.inputs.iter().any(|i| !i.movement.is_finite()) {
            return None;
        }
        Some(msg)
    }

    /// The inputs numbered after `applied` (oldest first), with their numbers.
    pub fn unseen(&self, applied: Option<u32>) -> impl Iterator<Item = (u32, &PlayerInput)> {
        let n = self.inputs.len() as u32;
        let first = self.newest.wrapping_sub(n - 1);
        self.inputs
            .iter()
            .enumerate()
            .map(move |(i, input)| (first.wrapping_add(i as u32), input))
            .filter(move |(num, _)| applied.is_none_or(|a| num.wrapping_sub(a) as i32 > 0))
    }
}

/// The channels both sides configure: the engine's defaults, whose channel
/// [`RELIABLE_CHANNEL`] is reliable-ordered.
pub fn channels_config() -> snapsync::channel::ChannelsConfig {
    snapsync::channel::ChannelsConfig::default()
}

/// Wall-clock now in microseconds since the UNIX epoch.
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(x: f32) -> PlayerInput {
        PlayerInput {
            movement: glam::Vec2::new(x, 0.0),
            jump: false,
        }
    }

    #[test]
    fn redundant_inputs_apply_once_each() {
        let msg = InputMsg {
            newest: 10,
            inputs: vec![input(0.1), input(0.2), input(0.3)],
            resync: false,
        };
        let bytes = snapsync::codec::encode(&msg).unwrap();
        let back = InputMsg::decode(&bytes).unwrap();
        let nums: Vec<u32> = back.unseen(Some(8)).map(|(n, _)| n).collect();
        assert_eq!(nums, vec![9, 10]);
        assert_eq!(back.unseen(None).count(), 3);
        assert_eq!(back.unseen(Some(10)).count(), 0);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(InputMsg::decode(&[0xff; 40]).is_none());
        let too_many = InputMsg {
            newest: 1,
            inputs: vec![input(0.0); INPUT_REDUNDANCY + 2],
            resync: false,
        };
        assert!(InputMsg::decode(&snapsync::codec::encode(&too_many).unwrap()).is_none());
        let wild = InputMsg {
            newest: 1,
            inputs: vec![input(f32::NAN)],
            resync: false,
        };
        assert!(InputMsg::decode(&snapsync::codec::encode(&wild).unwrap()).is_none());
    }
}
