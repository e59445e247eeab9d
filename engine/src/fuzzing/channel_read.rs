//! The `channel_read` target.

use std::time::{Duration, Instant};

use super::input::split_sections;
use crate::channel::{Channels, ChannelsConfig};

/// `Channels::read_packet` on a default config, fed each of the input's sections 10 ms
/// apart: every rejection counts once, and the receive queue only holds messages on a
/// configured channel within the size limit.
pub fn channel_read(data: &[u8]) {
    let base = Instant::now();
    let mut channels = Channels::new(ChannelsConfig::default());
    for (i, section) in split_sections(data).enumerate() {
        let now = base + Duration::from_millis(10 * i as u64);
        let before = channels.invalid_count();
        let result = channels.read_packet(now, section);
        assert_eq!(
            result.is_err(),
            channels.invalid_count() == before + 1,
            "every rejection counts once"
        );
        while let Some((channel, message)) = channels.receive() {
            assert!(usize::from(channel) < channels.channel_count());
            assert!(message.len() <= crate::codec::MAX_DECODE_BYTES);
        }
        channels.handle_timeout(now);
    }
}
