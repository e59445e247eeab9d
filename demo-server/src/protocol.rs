//! What the demo adds to the replication layer's welcome: the wall time of tick 0 (so a
//! client can tell the age of a state) and the scene's name. Inputs are
//! [`PlayerInput`](crate::scene::PlayerInput)s, encoded with `snapsync::codec`.

use serde::{Deserialize, Serialize};

/// The demo's part of the welcome (`ServerConfig::welcome_data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeData {
    /// Wall-clock time of tick 0, in microseconds since the UNIX epoch. Client and server
    /// on one host share the clock, so `now - (tick0 + tick / rate)` is the age of a state.
    pub tick0_unix_micros: u64,
    /// Scene name (`arena` or `cubes`).
    pub scene: String,
}

impl WelcomeData {
    /// The bytes the welcome carries.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data of bounded size: encoding cannot fail.
        snapsync::codec::encode(self).unwrap_or_default()
    }

    /// Read them back (untrusted bytes).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let d: WelcomeData = snapsync::codec::decode(bytes).ok()?;
        (d.scene.len() <= 64).then_some(d)
    }
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

    #[test]
    fn welcome_data_round_trips_and_junk_is_refused() {
        let d = WelcomeData {
            tick0_unix_micros: 42,
            scene: "arena".into(),
        };
        assert_eq!(WelcomeData::decode(&d.encode()), Some(d));
        assert_eq!(WelcomeData::decode(&[0xff; 9]), None);
    }
}
